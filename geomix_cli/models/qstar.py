"""(policy logits, target logits) -> q* logits, per row: a plain function and a LogitsProcessor.

    log q_alpha = log normalise(pi_theta^alpha pi_t^(1 - alpha))

with alpha per row chosen by a *sampler*:

- `kl-symmetry`: the exact alpha* with KL(q*||pi_theta) = KL(q*||pi_t), i.e. q* is the Chernoff
  point;
- `entropy`: the derivation's heuristic alpha_H = H(pi_theta) / (H(pi_theta) + H(pi_t));
- `on-policy` (alpha = 1: q = pi_theta), `off-policy` (alpha = 0: q = pi_t), `fixed:A`.

Every number comes from the public array API (`geomix_cli.api`, the code behind `geomix solve`),
on the logits' device, in float64, without an autograd graph: `gx.solve` (kind "logits": the API
normalises; alpha*, its status, C, alpha_H), `gx.geometric_mean` (log q), `gx.diagnostics` (the
KLs and ESS of a q at any alpha) and `gx.importance_weights` (pi / q at drawn tokens).

Rows where alpha* does not exist get a documented stand-in under `kl-symmetry`, never a silent one
(their `status` says what happened): `degenerate` (pi_theta = pi_t on the common support: every
alpha gives the same q) uses 0.5; `no-root` (D(alpha) = KL(q||pi_theta) - KL(q||pi_t) keeps one
sign on (0, 1), which for full-support softmax rows happens only within rounding of an end point)
uses the end point where D comes closest to 0: 0 when D <= 0, 1 when D > 0 (D is non-increasing,
so its sign at alpha = 1/2 is its sign on all of (0, 1)); `disjoint-support` (no q exists in
between) samples on-policy (alpha = 1). The entropy heuristic is 0/0 when both distributions are
point masses: alpha_H = 0.5 there.

Rows for which nothing is sampleable get no alpha and no q (alpha NaN, a NaN row of log q,
`has_q` False), never a made-up one: with `on_invalid="status"` an invalid row (NaN or +inf
logits, no finite entry: status 'invalid' with the reason in `message`), a `max-iter` row under
`kl-symmetry` (no alpha*, and no rule to stand in for it), an interior alpha on disjoint supports
(`entropy`, `fixed:A`), and positions masked by the caller. The other rows of the batch are
computed as usual. The sampler ends such a sequence (its end reason says why); the processor
leaves that row's scores as generate gave them and warns.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from geomix_cli.errors import InputError

SAMPLERS = ("kl-symmetry", "entropy", "on-policy", "off-policy")
SAMPLER_HELP = "kl-symmetry, entropy, on-policy, off-policy or fixed:A with A in [0, 1]"
# How the models layer calls the API: raw logits (normalised there), solved in float64.
API_OPTIONS = {"kind": "logits", "compute_dtype": "float64"}
# alpha* stand-ins of kl-symmetry (module doc); no-root is decided per row by the sign of D.
STAND_IN = {"degenerate": 0.5, "disjoint-support": 1.0}


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


def prepare_logits(policy_logits, target_logits, target_temperature: float = 1.0):
    """(theta, target): both logit tensors detached, as float64 on the policy's device, the
    target's divided by `target_temperature`. Validation (NaN, +inf, no finite entry) is the
    API's, row by row."""
    import torch

    if tuple(policy_logits.shape) != tuple(target_logits.shape):
        raise InputError(f"policy logits {tuple(policy_logits.shape)} and target logits "
                         f"{tuple(target_logits.shape)} differ in shape (one shared vocabulary)")
    theta = policy_logits.detach().to(torch.float64)
    target = target_logits.detach().to(device=theta.device, dtype=torch.float64)
    if target_temperature != 1.0:
        target = target / target_temperature
    return theta, target


def _flat(values):
    return values.reshape(-1)


def _no_root_end_points(theta, target, rows: np.ndarray):
    """alpha (0 or 1) for `no-root` rows (host bool [N] over the flattened positions): the end
    point where D comes closest to 0. D is non-increasing and keeps one sign on (0, 1) there, so
    its sign at 1/2 decides: D <= 0 -> 0, D > 0 -> 1 (NaN if D could not be evaluated)."""
    import torch

    from geomix_cli import api as gx

    lead = tuple(theta.shape[:-1])
    mask = torch.as_tensor(rows.reshape(lead), device=theta.device)
    delta = _flat(gx.diagnostics(theta, target, 0.5, mask=mask, on_invalid="status",
                                 **API_OPTIONS).delta)
    end = (delta > 0.0).to(torch.float64)
    return end.masked_fill(torch.isnan(delta), math.nan)


def kl_symmetry_alpha(theta, target, solution):
    """alpha* where it exists, else the stand-ins of the module doc (degenerate 0.5, no-root the
    end point, disjoint-support 1); NaN for every other status (invalid, max-iter, masked).
    Flat float64 [N] over the positions of `solution` (a `gx.solve` result for theta, target)."""
    import torch

    status = solution.status.reshape(-1)
    alpha = _flat(solution.alpha).clone()
    for name, value in STAND_IN.items():
        rows = torch.as_tensor(status == name, device=alpha.device)
        alpha = alpha.masked_fill(rows, value)
    no_root = status == "no-root"
    if no_root.any():
        rows = torch.as_tensor(no_root, device=alpha.device)
        alpha = torch.where(rows, _no_root_end_points(theta, target, no_root), alpha)
    return alpha


def alpha_for(samplers, row_sampler, theta, target, solution):
    """The alpha each position samples with: flat float64 [N] on the logits' device.

    samplers: Sampler objects; row_sampler: which one each position uses (an index per flattened
    position: an int tensor, array or list). NaN where the position has no alpha: an invalid or
    masked position for every sampler, and under kl-symmetry every status without a stand-in."""
    import torch

    status = solution.status.reshape(-1)
    n = status.size
    device = theta.device
    which = torch.as_tensor(row_sampler, device=device).reshape(-1)
    if which.numel() == 1 and n != 1:
        which = which.expand(n)
    alpha = torch.full((n,), math.nan, dtype=torch.float64, device=device)
    for k, sampler in enumerate(samplers):
        rows = which == k
        if not bool(rows.any()):
            continue
        if sampler.name == "kl-symmetry":
            values = kl_symmetry_alpha(theta, target, solution)
        elif sampler.name == "entropy":
            values = _flat(solution.alpha_entropy)
            both_point_masses = torch.isnan(values) & torch.as_tensor(
                ~np.isin(status, ("invalid", "masked")), device=device)
            values = values.masked_fill(both_point_masses, 0.5)
        else:
            value = {"on-policy": 1.0, "off-policy": 0.0}.get(sampler.name, sampler.alpha)
            values = torch.full((n,), float(value), dtype=torch.float64, device=device)
        alpha = torch.where(rows, values.to(torch.float64), alpha)
    # no q from an invalid row (or a position the caller masked), whatever the sampler
    unusable = torch.as_tensor(np.isin(status, ("invalid", "masked")), device=device)
    return alpha.masked_fill(unusable, math.nan)


@dataclass
class QStarRows:
    """The sampling distribution per position and what chose it (torch, float64, on the logits'
    device; the leading shape of the logits).

    log_q:      [..., V] log q_alpha (a NaN row where `has_q` is False)
    alpha:      [...] the alpha used (NaN where there is none)
    alpha_star: [...] the exact alpha* (NaN where it does not exist: see `status`)
    status, message: numpy string arrays [...]: the alpha* status per position (`gx.solve`'s:
                ok, degenerate, no-root, disjoint-support, invalid, max-iter, masked) and what is
                true instead
    has_q:      [...] bool: whether the position has a q to sample from
    solution:   the `gx.solve` result itself (C, both KLs and both ESS at alpha*, alpha_H, ...)
    theta, target: [..., V] the float64 logits given to the API (the target's divided by the
                temperature), for further API calls on the same pair
    """

    log_q: object
    alpha: object
    alpha_star: object
    status: np.ndarray
    message: np.ndarray
    has_q: object
    solution: object
    theta: object
    target: object


def q_star_rows(policy_logits, target_logits, *, sampler: str | Sampler = "kl-symmetry",
                target_temperature: float = 1.0, mask=None, on_invalid: str = "raise",
                samplers=None, row_sampler=None) -> QStarRows:
    """The sampler's q per position from two logit tensors [..., V]; see the module doc.

    mask: optional, of the leading shape (1 = real, 0 = padded: status 'masked', no q).
    on_invalid: 'raise' (default: InputError naming the first invalid position) or 'status'
    (status 'invalid', no q; the other positions are computed).
    samplers, row_sampler: several samplers in one batch (a list of Sampler and, per flattened
    position, the index of its sampler) in place of `sampler`."""
    import torch

    from geomix_cli import api as gx

    if samplers is None:
        samplers, row_sampler = [parse_sampler(sampler)], 0
    theta, target = prepare_logits(policy_logits, target_logits, target_temperature)
    with torch.no_grad():
        solution = gx.solve(theta, target, mask=mask, on_invalid=on_invalid, **API_OPTIONS)
        alpha = alpha_for(samplers, row_sampler, theta, target, solution)
        alpha = alpha.reshape(tuple(theta.shape[:-1]))
        log_q = gx.geometric_mean(theta, target, alpha, mask=mask, on_invalid="status",
                                  **API_OPTIONS)
        has_q = ~torch.isnan(log_q).any(dim=-1)
        alpha = alpha.masked_fill(~has_q, math.nan)
    return QStarRows(log_q=log_q, alpha=alpha, alpha_star=solution.alpha,
                     status=solution.status, message=solution.message, has_q=has_q,
                     solution=solution, theta=theta, target=target)


def q_star_logits(policy_logits, target_logits, *, sampler: str | Sampler = "kl-symmetry",
                  target_temperature: float = 1.0, mask=None, on_invalid: str = "raise"):
    """(q logits [..., V] in the policy logits' dtype and device, alpha used [...] float64).

    The returned logits are log q (normalised), so `softmax(q_logits)` is q and
    `torch.distributions.Categorical(logits=q_logits)` samples from it. With
    on_invalid='status' a position without q is a NaN row (see `q_star_rows`)."""
    rows = q_star_rows(policy_logits, target_logits, sampler=sampler,
                       target_temperature=target_temperature, mask=mask, on_invalid=on_invalid)
    return rows.log_q.to(policy_logits.dtype), rows.alpha


def without_q_summary(rows: QStarRows) -> str:
    """'invalid 1 (key 'target': NaN at column 3)' for the positions without q ('' if none)."""
    missing = ~rows.has_q.detach().cpu().numpy()
    if not missing.any():
        return ""
    status, message = rows.status[missing], rows.message[missing]
    parts = []
    for name in dict.fromkeys(status.tolist()):
        first = message[status == name][0]
        parts.append(f"{name} {int((status == name).sum())}" + (f" ({first})" if first else ""))
    return ", ".join(parts)


_PROCESSOR_CLASS = None

PROCESSOR_DOC = """A transformers LogitsProcessor: the policy's scores become log q, per row.

    QStarLogitsProcessor(target_model, target_input_ids, target_attention_mask=None, *,
                         sampler="kl-symmetry", target_temperature=1.0)

    The policy is the model `generate` runs; this processor runs `target_model` itself (with its
    own KV cache) on `target_input_ids` (its prompts, left- or right-padded, with
    `target_attention_mask`) followed by the tokens the policy generates, and combines the two
    next-token distributions with the sampler's alpha (module doc), through the public API
    (`gx.solve`, `gx.geometric_mean`). One target prompt per generated row (with
    `num_return_sequences=k` each target prompt is repeated k times, as generate does with the
    policy's). `history` keeps, per step, alpha, alpha* (float64 CPU tensors), the statuses and
    messages (lists) and `has_q` (bool tensor).

    One bad row never stops the batch: a row without q (invalid logits on either side, or no
    alpha under the sampler; module doc) keeps the scores generate gave it, its history entry
    says why (alpha NaN, its status and message), and a RuntimeWarning names it. (If those scores
    are themselves NaN, generate fails as it would without the processor.)
    Use it with `do_sample=True` and no warper after it (top-k / top-p would change q), and one
    processor per `generate` call (it holds that call's target cache). The class is built on
    first use (it subclasses transformers.LogitsProcessor, imported then)."""


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
            import torch

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
            rows = q_star_rows(scores, self._target_logits, sampler=self.sampler,
                               target_temperature=self.target_temperature, on_invalid="status")
            self.history.append({"alpha": rows.alpha.cpu(), "alpha_star": rows.alpha_star.cpu(),
                                 "status": rows.status.tolist(),
                                 "message": rows.message.tolist(), "has_q": rows.has_q.cpu()})
            missing = without_q_summary(rows)
            if missing:
                import warnings

                warnings.warn(f"QStarLogitsProcessor, step {len(self.history) - 1}: rows "
                              f"without q keep generate's scores: {missing}", RuntimeWarning,
                              stacklevel=2)
            return torch.where(rows.has_q[:, None], rows.log_q.to(scores.dtype), scores)

    QStarLogitsProcessor.__module__ = __name__
    _PROCESSOR_CLASS = QStarLogitsProcessor
    return _PROCESSOR_CLASS
