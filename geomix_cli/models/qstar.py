"""(policy logits, target logits) -> q* logits, per row: a plain function and a LogitsProcessor.

    log q_alpha = log_softmax(alpha * log pi_theta + (1 - alpha) * log pi_t)

with alpha per row chosen by a *sampler*:

- `kl-symmetry`: the exact alpha* with KL(q*||pi_theta) = KL(q*||pi_t) (Newton on
  D(alpha) = E_q[log pi_t - log pi_theta], float64), i.e. q* is the Chernoff point;
- `entropy`: the derivation's heuristic alpha_H = H(pi_theta) / (H(pi_theta) + H(pi_t));
- `on-policy` (alpha = 1: q = pi_theta), `off-policy` (alpha = 0: q = pi_t), `fixed:A`.

Rows where alpha* does not exist get a documented stand-in, never a silent one (their `status`
says what happened): `degenerate` (pi_theta = pi_t on the common support: every alpha gives the
same q) uses 0.5; `no-root` (D keeps one sign on (0, 1), which for full-support softmax rows
happens only within rounding of an end point) uses the end point D approaches 0 at (0 when
D(0+) <= 0, 1 when D(1-) >= 0); `disjoint-support` (no q exists) samples on-policy (alpha = 1).
Invalid rows (NaN or +inf logits) are refused.

Example (any two models with one vocabulary; the processor runs the target model itself):

    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList
    from geomix_cli.models.qstar import QStarLogitsProcessor

    tok = AutoTokenizer.from_pretrained(folder)
    policy = AutoModelForCausalLM.from_pretrained(folder)
    target = AutoModelForCausalLM.from_pretrained(target_folder)
    ids = tok(["Name three primary colors."], return_tensors="pt")
    steer = tok(["Answer like a pirate. Name three primary colors."], return_tensors="pt")
    qstar = QStarLogitsProcessor(target, steer.input_ids, steer.attention_mask)
    out = policy.generate(**ids, do_sample=True, top_k=0, max_new_tokens=32,
                          logits_processor=LogitsProcessorList([qstar]))
    qstar.history[0]["alpha"]   # alpha* of each row at the first generated token

The per-row solve lives in `_solve_alpha` only, so that it can move to the public array API in one
place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from geomix_cli.errors import InputError

SAMPLERS = ("kl-symmetry", "entropy", "on-policy", "off-policy")
SAMPLER_HELP = "kl-symmetry, entropy, on-policy, off-policy or fixed:A with A in [0, 1]"


@dataclass(frozen=True)
class Sampler:
    """How alpha is chosen per row: `name` in SAMPLERS or 'fixed' (with `alpha`)."""

    name: str
    alpha: float | None = None

    @property
    def label(self) -> str:
        return f"fixed:{self.alpha:g}" if self.name == "fixed" else self.name


def parse_sampler(text: str | Sampler) -> Sampler:
    """'kl-symmetry' | 'entropy' | 'on-policy' | 'off-policy' | 'fixed:A' -> Sampler."""
    if isinstance(text, Sampler):
        return text
    name = str(text).strip().lower()
    if name in SAMPLERS:
        return Sampler(name)
    if name.startswith("fixed:"):
        try:
            alpha = float(name.split(":", 1)[1])
        except ValueError:
            alpha = math.nan
        if not 0.0 <= alpha <= 1.0:
            raise InputError(f"sampler '{text}': A in fixed:A must be a number in [0, 1]")
        return Sampler("fixed", alpha)
    raise InputError(f"unknown sampler '{text}'; choose {SAMPLER_HELP}")


def _solve_alpha(log_pi_theta, log_pi_t):
    """alpha* per row of normalised float64 log-probabilities [N, V] (torch, any device):
    (alpha [N] float64 tensor, NaN where there is no root; statuses (numpy str array);
    D(0+) and D(1-) [N] float64 tensors). The one place that calls the solver."""
    import torch

    from geomix_cli.backends import solve_alpha_device

    device = log_pi_theta.device
    sol = solve_alpha_device(log_pi_theta, log_pi_t, "newton", device=str(device),
                             compute_dtype="float64", kind="logits")

    def tensor(values):
        return torch.as_tensor(values, dtype=torch.float64, device=device)

    return tensor(sol.alpha), sol.status, tensor(sol.d_at_0), tensor(sol.d_at_1)


def log_softmax64(logits, temperature: float = 1.0):
    """Row log-softmax in float64 (logits / temperature first), with a check for NaN / +inf."""
    import torch

    x = logits.detach().to(torch.float64)
    if temperature != 1.0:
        x = x / temperature
    bad = torch.isnan(x).any(dim=-1) | torch.isposinf(x).any(dim=-1) | torch.isneginf(x).all(
        dim=-1)
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0, 0])
        raise InputError(f"row {row} of the logits has NaN, +inf or no finite entry")
    return torch.log_softmax(x, dim=-1)


def log_geometric_mean(log_pi_theta, log_pi_t, alpha):
    """log q_alpha [N, V] from normalised log-probabilities and alpha [N] (torch, float64).

    alpha = 1 and 0 give pi_theta and pi_t exactly; in between q lives on the common support."""
    import torch

    a = alpha.to(log_pi_theta.dtype)[:, None]
    inner = a * log_pi_theta + (1.0 - a) * log_pi_t
    unnorm = torch.where(a == 1.0, log_pi_theta, torch.where(a == 0.0, log_pi_t, inner))
    return unnorm - torch.logsumexp(unnorm, dim=-1, keepdim=True)


def entropy_alpha(log_pi_theta, log_pi_t):
    """alpha_H = H(pi_theta) / (H(pi_theta) + H(pi_t)) per row (0.5 where both are 0)."""
    import torch

    def entropy(lp):
        return -torch.where(lp > -math.inf, lp.exp() * lp, torch.zeros_like(lp)).sum(dim=-1)

    h_theta, h_t = entropy(log_pi_theta), entropy(log_pi_t)
    total = h_theta + h_t
    return torch.where(total > 0, h_theta / torch.where(total > 0, total, 1.0),
                       torch.full_like(total, 0.5))


def kl_rows(log_p, log_q):
    """KL(p||q) per row (0 log 0 = 0; +inf where q = 0 < p)."""
    import torch

    terms = torch.where(log_p > -math.inf, log_p.exp() * (log_p - log_q),
                        torch.zeros_like(log_p))
    return terms.sum(dim=-1)


def ess_rows(log_pi, log_q):
    """ESS_pi(q) = 1 / sum pi^2 / q per row (0 when q misses mass of pi)."""
    import torch

    terms = torch.where(log_pi > -math.inf, 2.0 * log_pi - log_q,
                        torch.full_like(log_pi, -math.inf))
    return torch.exp(-torch.logsumexp(terms, dim=-1))


@dataclass
class QStarRows:
    """The sampling distribution per row and what chose it (torch tensors over rows)."""

    log_q: object          # [N, V] float64
    alpha: object          # [N] the alpha used
    alpha_star: object     # [N] the exact alpha* (NaN where it does not exist)
    status: list           # per row: the alpha* status (ok, degenerate, no-root, ...)
    log_pi_theta: object   # [N, V] float64, normalised
    log_pi_t: object       # [N, V] float64, normalised (after the target temperature)


def alpha_for(sampler: Sampler, log_pi_theta, log_pi_t, alpha_star, status, d_at_0, d_at_1):
    """The alpha each row samples with, for one sampler (float64 [N])."""
    import torch

    n = log_pi_theta.shape[0]
    f64 = {"dtype": torch.float64, "device": log_pi_theta.device}
    if sampler.name == "on-policy":
        return torch.ones(n, **f64)
    if sampler.name == "off-policy":
        return torch.zeros(n, **f64)
    if sampler.name == "fixed":
        return torch.full((n,), float(sampler.alpha), **f64)
    if sampler.name == "entropy":
        return entropy_alpha(log_pi_theta, log_pi_t)
    return kl_symmetry_alpha(alpha_star, status, d_at_0, d_at_1)


def kl_symmetry_alpha(alpha_star, status, d_at_0, d_at_1):
    """alpha* where it exists, else the stand-ins of the module doc (degenerate 0.5, no-root the
    end point, disjoint-support 1)."""
    import torch

    alpha = alpha_star.clone()
    for i, s in enumerate(status):
        if s == "ok":
            continue
        if s == "degenerate":
            alpha[i] = 0.5
        elif s == "no-root":
            alpha[i] = 0.0 if float(d_at_0[i]) <= 0.0 else 1.0 if float(d_at_1[i]) >= 0.0 else 0.5
        elif s == "disjoint-support":
            alpha[i] = 1.0
        else:
            raise InputError(f"row {i}: no sampling distribution (status {s})")
    return alpha.to(torch.float64)


def q_star_rows(policy_logits, target_logits, *, sampler: str | Sampler = "kl-symmetry",
                target_temperature: float = 1.0) -> QStarRows:
    """The sampler's q per row from two logit tensors [N, V] (or [V]); see the module doc."""
    import torch

    sampler = parse_sampler(sampler)
    if tuple(policy_logits.shape) != tuple(target_logits.shape):
        raise InputError(f"policy logits {tuple(policy_logits.shape)} and target logits "
                         f"{tuple(target_logits.shape)} differ in shape (one shared vocabulary)")
    squeeze = policy_logits.dim() == 1
    if squeeze:
        policy_logits, target_logits = policy_logits[None], target_logits[None]
    log_theta = log_softmax64(policy_logits)
    log_t = log_softmax64(target_logits.to(policy_logits.device), target_temperature)
    with torch.no_grad():
        alpha_star, status, d0, d1 = _solve_alpha(log_theta, log_t)
        alpha = alpha_for(sampler, log_theta, log_t, alpha_star, status, d0, d1)
        log_q = log_geometric_mean(log_theta, log_t, alpha)
    rows = QStarRows(log_q=log_q, alpha=alpha, alpha_star=alpha_star, status=list(status),
                     log_pi_theta=log_theta, log_pi_t=log_t)
    if squeeze:
        rows.log_q, rows.alpha, rows.alpha_star = rows.log_q[0], rows.alpha[0], rows.alpha_star[0]
        rows.log_pi_theta, rows.log_pi_t = rows.log_pi_theta[0], rows.log_pi_t[0]
    return rows


def q_star_logits(policy_logits, target_logits, *, sampler: str | Sampler = "kl-symmetry",
                  target_temperature: float = 1.0):
    """(q logits [N, V] in the policy logits' dtype and device, alpha used [N] float64).

    The returned logits are log q (normalised), so `softmax(q_logits)` is q and
    `torch.distributions.Categorical(logits=q_logits)` samples from it."""
    rows = q_star_rows(policy_logits, target_logits, sampler=sampler,
                       target_temperature=target_temperature)
    return rows.log_q.to(policy_logits.dtype), rows.alpha


_PROCESSOR_CLASS = None

PROCESSOR_DOC = """A transformers LogitsProcessor: the policy's scores become log q, per row.

    QStarLogitsProcessor(target_model, target_input_ids, target_attention_mask=None, *,
                         sampler="kl-symmetry", target_temperature=1.0)

    The policy is the model `generate` runs; this processor runs `target_model` itself (with its
    own KV cache) on `target_input_ids` (its prompts, left- or right-padded, with
    `target_attention_mask`) followed by the tokens the policy generates, and combines the two
    next-token distributions with the sampler's alpha (module doc). One target prompt per
    generated row (with `num_return_sequences=k` each target prompt is repeated k times, as
    generate does with the policy's). `history` keeps, per step, alpha, alpha* and the statuses.
    Use it with `do_sample=True` and no warper after it (top-k / top-p would change q), and one
    processor per `generate` call (it holds that call's target cache). The class is built on first use (it subclasses transformers.LogitsProcessor, imported then)."""


def __getattr__(name: str):
    # PEP 562: `from geomix_cli.models.qstar import QStarLogitsProcessor` builds the class only
    # then, so importing this module never imports transformers.
    if name == "QStarLogitsProcessor":
        return _processor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _processor_class():
    global _PROCESSOR_CLASS
    if _PROCESSOR_CLASS is not None:
        return _PROCESSOR_CLASS
    from geomix_cli.models.loading import import_transformers

    base = import_transformers().LogitsProcessor

    class QStarLogitsProcessor(base):
        __doc__ = PROCESSOR_DOC

        def __init__(self, target_model, target_input_ids, target_attention_mask=None, *,
                     sampler="kl-symmetry", target_temperature=1.0):
            import torch

            from geomix_cli.models.sampling import IncrementalLM

            self.sampler = parse_sampler(sampler)
            self.target_temperature = float(target_temperature)
            ids = torch.as_tensor(target_input_ids)
            if ids.dim() == 1:
                ids = ids[None]
            mask = (torch.ones_like(ids) if target_attention_mask is None
                    else torch.as_tensor(target_attention_mask))
            self._prompts = [ids[r][mask[r].bool()].tolist() for r in range(ids.shape[0])]
            self._lm = IncrementalLM(target_model)
            self._seen = None
            self._target_logits = None
            self.history: list[dict] = []

        def __call__(self, input_ids, scores):
            if self._seen is None:
                rows = input_ids.shape[0]
                if rows % len(self._prompts):
                    raise InputError(f"generate has {rows} rows but {len(self._prompts)} target "
                                     "prompts were given (need one per row, or a divisor)")
                repeat = rows // len(self._prompts)
                prompts = [p for p in self._prompts for _ in range(repeat)]
                self._target_logits = self._lm.start(prompts)
            else:
                new = input_ids[:, self._seen:]
                for k in range(new.shape[1]):
                    self._target_logits = self._lm.step(new[:, k])
            self._seen = input_ids.shape[1]
            rows = q_star_rows(scores, self._target_logits.to(scores.device),
                               sampler=self.sampler, target_temperature=self.target_temperature)
            self.history.append({"alpha": rows.alpha.cpu(), "alpha_star": rows.alpha_star.cpu(),
                                 "status": rows.status})
            return rows.log_q.to(scores.dtype)

    QStarLogitsProcessor.__module__ = __name__
    _PROCESSOR_CLASS = QStarLogitsProcessor
    return _PROCESSOR_CLASS
