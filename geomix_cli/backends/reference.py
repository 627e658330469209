"""The derivation's reference solver (section 6.2), reproduced verbatim in torch.

This is the *baseline* that `geomix bench` times and measures against: the class body below is the
derivation's code unchanged (comments translated), including what makes it slow and biased — float32,
`log(p + 1e-10)` on both sides, the log-ratio recomputed in every iteration (two extra logs per
pass), softmax over the whole [batch, vocab] per iteration, 20-50 passes. Do not "fix" it here:
geomix's own solvers are the fix, and bench reports the difference.

The only additions are outside the class: `reference_alpha` turns logits/log-probs into the
probabilities the derivation's code expects (softmax, as its usage example does) and counts the
iterations.
"""

from __future__ import annotations


def _make_class():
    import torch
    import torch.nn.functional as F

    class OptimalSamplingDistribution:
        """Optimal sampling distribution calculator (seed section 6.2, verbatim)."""

        def __init__(self, method='kl_symmetry', tol=1e-6, max_iter=50):
            self.method = method
            self.tol = tol
            self.max_iter = max_iter
            self.iterations = 0  # added: how many passes the bisection made

        def __call__(self, pi_theta, pi_t):
            """
            Args:
                pi_theta: [batch, vocab_size]
                pi_t: [batch, vocab_size]
            Returns:
                q_star: [batch, vocab_size]
                alpha_star: [batch]
            """
            if self.method == 'kl_symmetry':
                alpha = self._solve_kl_symmetry(pi_theta, pi_t)
            elif self.method == 'entropy':
                alpha = self._entropy_formula(pi_theta, pi_t)
            else:
                raise ValueError(f"Unknown method: {self.method}")

            q_star = self._geometric_mean(pi_theta, pi_t, alpha)
            return q_star, alpha

        def _solve_kl_symmetry(self, pi_theta, pi_t):
            """Bisection for KL symmetry"""
            batch_size = pi_theta.shape[0]
            alpha_low = torch.zeros(batch_size, device=pi_theta.device)
            alpha_high = torch.ones(batch_size, device=pi_theta.device)

            for _ in range(self.max_iter):
                self.iterations += 1  # added
                alpha_mid = (alpha_low + alpha_high) / 2

                # E_{q_alpha}[log(pi_t/pi_theta)]
                q_alpha = self._geometric_mean(pi_theta, pi_t, alpha_mid)
                log_ratio = torch.log(pi_t + 1e-10) - torch.log(pi_theta + 1e-10)
                objective = (q_alpha * log_ratio).sum(dim=-1)

                # update the bracket
                mask = objective > 0
                alpha_low = torch.where(mask, alpha_mid, alpha_low)
                alpha_high = torch.where(mask, alpha_high, alpha_mid)

                # convergence check
                if (alpha_high - alpha_low).max() < self.tol:
                    break

            return (alpha_low + alpha_high) / 2

        def _entropy_formula(self, pi_theta, pi_t):
            """Entropy-formula approximation"""
            H_theta = -(pi_theta * torch.log(pi_theta + 1e-10)).sum(dim=-1)
            H_t = -(pi_t * torch.log(pi_t + 1e-10)).sum(dim=-1)
            alpha = H_theta / (H_theta + H_t + 1e-10)
            return alpha

        def _geometric_mean(self, pi_theta, pi_t, alpha):
            """Geometric mean (batched)"""
            # alpha: [batch] -> [batch, 1]
            alpha = alpha.unsqueeze(-1)

            # in log space
            log_q = alpha * torch.log(pi_theta + 1e-10) + \
                (1 - alpha) * torch.log(pi_t + 1e-10)

            # normalise
            q = F.softmax(log_q, dim=-1)
            return q

    return OptimalSamplingDistribution


def reference_alpha(theta, target, *, kind: str = "logits", device: str = "cpu",
                    tol: float = 1e-6, max_iter: int = 50, with_q: bool = False):
    """Run the derivation's solver on [B, V] inputs; returns (alpha float64 numpy, iterations).

    kind="logits": logits or log-probabilities, turned into float32 probabilities by softmax
    (the derivation's usage example); kind="probs": probabilities, cast to float32. `with_q` also
    computes the derivation's q_star (one more pass), as its `__call__` does."""
    import numpy as np
    import torch

    from geomix_cli.backends import resolve_device

    dev = resolve_device(device)

    def prepare(values):
        t = values if isinstance(values, torch.Tensor) else torch.from_numpy(np.asarray(values))
        t = t.to(device=dev, dtype=torch.float32)
        if kind == "logits":
            t = torch.softmax(t, dim=-1)
        return t

    pi_theta, pi_t = prepare(theta), prepare(target)
    solver = _make_class()(method="kl_symmetry", tol=tol, max_iter=max_iter)
    with torch.no_grad():
        if with_q:
            _, alpha = solver(pi_theta, pi_t)
        else:
            alpha = solver._solve_kl_symmetry(pi_theta, pi_t)
    return alpha.double().cpu().numpy(), solver.iterations
