"""geomix for training code: alpha*, log q*, importance weights and diagnostics on numpy arrays or
torch tensors, one call per batch.

    from geomix_cli import api as gx

    res = gx.solve(policy_logits, target_logits, mask=attention_mask)    # [..., V] -> [...]
    res.alpha, res.chernoff, res.kl_q_theta, res.ess_theta, res.status
    log_q = gx.geometric_mean(policy_logits, target_logits, res.alpha)  # log q*, [..., V]
    w = gx.importance_weights(policy_logits, target_logits, res.alpha, tokens)  # pi/q* at tokens

Contracts (docs/api.md has the full text):

- Inputs are explicit: `kind="logits"` (default; any reals or -inf, normalised here),
  `"logprobs"` (checked: a row whose logsumexp is off 0 by more than its dtype's tolerance is
  refused), `"probs"` (>= 0, summing to 1 within the dtype's tolerance, or `renormalize=True`).
  Never a silent assumption: raw logits passed as log-probabilities are refused, not solved.
- Any leading shape [..., V] with the vocabulary on `dim` (default -1); an optional `mask` of the
  leading shape (1/True = real, 0/False = padded): masked positions are never validated or
  computed on, and get status "masked" and no number.
- numpy in, numpy out (float64); torch in, torch out on the input's device, in the compute dtype
  (float32 for float32 / float16 / bfloat16 tensors, with float64 accumulation of the
  normalisers; float64 for float64 tensors; `compute_dtype` to choose). No autograd graph: every
  result is a constant (computed under torch.no_grad()).
- The same numbers, statuses and messages as `geomix solve --json`: the same code runs (numpy:
  `core.diagnostics.solve_and_diagnose`; torch: `backends.torch_backend`, the same kernel).
- Errors are `InputError` (a ValueError) for bad input, `UnavailableError` for a missing torch or
  device; a row that fails validation raises by default (`on_invalid="raise"`), or gets status
  "invalid" with its reason (`on_invalid="status"`, what the CLI does).

Only numpy is imported here; torch is used only when the caller hands us tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from geomix_cli.core.arrays import dtype_name, is_torch_tensor
from geomix_cli.core.diagnostics import solve_and_diagnose
from geomix_cli.core.kernel import (DEGENERATE, DISJOINT, INVALID, MASKED, MAX_ITER, NO_ROOT, OK)
from geomix_cli.core import single_row
from geomix_cli.core.solvers import solve_alpha, solve_blocks
from geomix_cli.core.validation import KINDS, LOGITS, LOGPROBS, PROBS  # noqa: F401
from geomix_cli.core.validation import (input_logprob_tolerance, normalise_plain_rows,
                                        tolerance_for, validate_pair)
from geomix_cli.errors import InputError, UnavailableError

__all__ = ["solve", "geometric_mean", "importance_weights", "diagnostics", "SolveResult",
           "Diagnostics", "Weights", "InputError", "UnavailableError", "KINDS", "METHODS",
           "STATUSES"]

METHODS = ("newton", "halley", "brentq", "bisection", "entropy")
STATUSES = (OK, DEGENERATE, NO_ROOT, DISJOINT, INVALID, MAX_ITER, MASKED)
MASKED_MESSAGE = "masked out by the caller's mask: not computed"
API_HINT = "pass renormalize=True to rescale"
NAMES = ("theta", "target")


# ------------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class SolveResult:
    """The solve of every position, shaped like the inputs' leading dimensions.

    Arrays are numpy (float64) for numpy inputs, torch tensors on the input's device in the
    compute dtype for torch inputs; `status` and `message` are numpy string arrays either way.
    Rows that are not 'ok' carry NaN (and iterations 0 when never solved).

    alpha:        alpha*, the root of D(alpha) = KL(q||pi_theta) - KL(q||pi_t) (method 'entropy':
                  the heuristic alpha_H; 'bisection': the derivation's reference code's answer)
    chernoff:     C = -log Z(alpha*) = KL(q*||pi_theta) = KL(q*||pi_t), in nats (exact methods;
                  degenerate rows: -log Z of their common q)
    kl_q_theta, kl_q_t: KL(q||pi_theta), KL(q||pi_t) at alpha
    log_z:        log Z(alpha) <= 0
    ess_theta, ess_t: ESS_pi(q) = 1 / sum pi^2 / q in [0, 1] (None with diagnostics=False)
    alpha_entropy: H(pi_theta) / (H(pi_theta) + H(pi_t)) (None with diagnostics=False)
    residual:     D(alpha), evaluated at the returned alpha
    iterations:   solver iterations (int64)
    status:       'ok', 'degenerate', 'no-root', 'disjoint-support', 'invalid', 'max-iter',
                  'masked'; message: what is true instead (empty for 'ok')
    ok:           status == 'ok', as a boolean array of the inputs' library and device
    """

    alpha: object
    chernoff: object
    kl_q_theta: object
    kl_q_t: object
    log_z: object
    ess_theta: object
    ess_t: object
    alpha_entropy: object
    residual: object
    iterations: object
    status: np.ndarray
    message: np.ndarray
    ok: object
    method: str
    kind: str
    compute_dtype: str
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def shape(self) -> tuple:
        return tuple(self.status.shape)

    def __repr__(self) -> str:
        counts = {}
        for s in np.asarray(self.status).reshape(-1):
            counts[str(s)] = counts.get(str(s), 0) + 1
        summary = ", ".join(f"{k}: {v}" for k, v in counts.items())
        return (f"SolveResult(shape={self.shape}, method={self.method!r}, kind={self.kind!r}, "
                f"compute_dtype={self.compute_dtype!r}, status={{{summary}}})")


@dataclass(frozen=True)
class Diagnostics:
    """The family at a given alpha per position (shaped like the leading dimensions).

    log_z: log Z(alpha); delta: D(alpha) = KL(q||pi_theta) - KL(q||pi_t) = E_q[l];
    kl_q_theta, kl_q_t, ess_theta, ess_t as in SolveResult; entropy_theta, entropy_t: H(pi) in
    nats; alpha_entropy: H(pi_theta) / (H(pi_theta) + H(pi_t)). status: 'ok', 'invalid', 'masked',
    'disjoint-support' (alpha in (0, 1) and no common token: there is no q)."""

    alpha: object
    log_z: object
    delta: object
    kl_q_theta: object
    kl_q_t: object
    ess_theta: object
    ess_t: object
    entropy_theta: object
    entropy_t: object
    alpha_entropy: object
    status: np.ndarray
    message: np.ndarray


class Weights(tuple):
    """(theta, t): pi_theta(y) / q(y) and pi_t(y) / q(y) at the tokens (or their logs)."""

    __slots__ = ()

    def __new__(cls, theta, t):
        return super().__new__(cls, (theta, t))

    @property
    def theta(self):
        return self[0]

    @property
    def t(self):
        return self[1]

    def __repr__(self) -> str:
        return f"Weights(theta={self[0]!r}, t={self[1]!r})"


# ------------------------------------------------------------------------------------------------
# inputs


@dataclass
class _Pair:
    library: str                 # "numpy" or "torch"
    theta: object                # [N, V] rows (numpy array or tensor), vocabulary last
    target: object
    lead: tuple                  # leading shape
    vocab: int
    keep: np.ndarray | None      # host bool [N]: rows to compute (None: all)
    storage_dtype: str
    device: object = None
    dim: int = -1
    ndim: int = 1

    @property
    def n_rows(self) -> int:
        return int(math.prod(self.lead))

    @property
    def kept(self) -> np.ndarray | None:
        return None if self.keep is None else np.flatnonzero(self.keep)

    def rows(self):
        """The rows to compute on: all of them, or the unmasked ones (a copy)."""
        if self.keep is None:
            return self.theta, self.target
        index = self.kept
        if self.library == "torch":
            import torch

            index = torch.as_tensor(index, device=self.theta.device)
        return self.theta[index], self.target[index]

    def position(self, row: int) -> tuple:
        """The leading-shape position of computed row `row` (an index into rows())."""
        flat = int(row) if self.keep is None else int(self.kept[row])
        return tuple(int(i) for i in np.unravel_index(flat, self.lead)) if self.lead else ()


def _pair(theta, target, kind: str, mask, dim: int) -> _Pair:
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(map(repr, KINDS))}, not {kind!r}")
    torch_theta, torch_target = is_torch_tensor(theta), is_torch_tensor(target)
    if torch_theta != torch_target:
        raise InputError("theta and target must be the same array type (both numpy arrays or "
                         "both torch tensors); convert one with torch.as_tensor or .cpu().numpy()")
    if torch_theta:
        if theta.device != target.device:
            raise InputError(f"theta is on {theta.device} and target on {target.device}: put "
                             "both on one device")
        for name, value in zip(NAMES, (theta, target)):
            if value.is_complex() or value.dtype == _torch().bool:
                raise InputError(f"non-numeric dtype {str(value.dtype).replace('torch.', '')}; "
                                 "expected real floating-point values", key=name)
        library = "torch"
        theta, target = theta.detach(), target.detach()
        storage = str(theta.dtype).replace("torch.", "")
    else:
        library = "numpy"
        theta, target = np.asarray(theta), np.asarray(target)
        for name, value in zip(NAMES, (theta, target)):
            if value.dtype.kind not in "fiu" and value.dtype.name != "bfloat16":
                raise InputError(f"non-numeric dtype {value.dtype.name}; expected real "
                                 "floating-point values", key=name)
        storage = dtype_name(theta.dtype)
    if tuple(theta.shape) != tuple(target.shape):
        raise InputError(f"shape {tuple(theta.shape)} of theta differs from shape "
                         f"{tuple(target.shape)} of target (rows are never broadcast)",
                         key="target")
    ndim = len(theta.shape)
    if ndim == 0:
        raise InputError("expected [..., V] values, got a scalar", key="theta")
    if not -ndim <= dim < ndim:
        raise InputError(f"dim {dim} is out of range for {ndim} dimensions")
    axis = dim % ndim
    if axis != ndim - 1:
        if library == "torch":
            theta, target = theta.movedim(axis, -1), target.movedim(axis, -1)
        else:
            theta, target = np.moveaxis(theta, axis, -1), np.moveaxis(target, axis, -1)
    lead = tuple(int(s) for s in theta.shape[:-1])
    vocab = int(theta.shape[-1])
    if vocab == 0:
        raise InputError(f"empty vocabulary (shape {tuple(theta.shape)})", key="theta")
    n_rows = int(math.prod(lead))
    theta = theta.reshape(n_rows, vocab)
    target = target.reshape(n_rows, vocab)
    keep = _mask(mask, lead)
    return _Pair(library=library, theta=theta, target=target, lead=lead, vocab=vocab, keep=keep,
                 storage_dtype=storage, device=getattr(theta, "device", None), dim=axis,
                 ndim=ndim)


def _mask(mask, lead: tuple) -> np.ndarray | None:
    """Host bool [N] (True = compute) from a mask of the leading shape; None when nothing is
    masked."""
    if mask is None:
        return None
    values = mask.detach().cpu().numpy() if is_torch_tensor(mask) else np.asarray(mask)
    if tuple(values.shape) != lead:
        raise InputError(f"mask of shape {tuple(values.shape)} does not match the leading shape "
                         f"{lead} of the inputs (one entry per position)", key="mask")
    if values.dtype != bool:
        if values.dtype.kind not in "fiu" or not np.all((values == 0) | (values == 1)):
            raise InputError("mask must hold booleans or 0/1 (1 = real, 0 = padded)", key="mask")
        values = values != 0
    keep = values.reshape(-1)
    return None if keep.all() else keep


def _torch():
    from geomix_cli.backends import import_torch

    return import_torch()


def _compute_dtype(pair: _Pair, compute_dtype) -> str:
    if pair.library == "numpy":
        if compute_dtype not in (None, "float64"):
            raise InputError("numpy inputs are solved in float64; compute_dtype applies to torch "
                             "tensors")
        return "float64"
    if compute_dtype is None:
        return "float64" if pair.storage_dtype == "float64" else "float32"
    name = str(compute_dtype).replace("torch.", "")
    if name not in ("float32", "float64"):
        raise InputError(f"compute_dtype must be 'float32' or 'float64', not {compute_dtype!r} "
                         "(float16/bfloat16 inputs are computed in float32 or float64)")
    return name


def _check_on_invalid(on_invalid: str) -> None:
    if on_invalid not in ("raise", "status"):
        raise InputError(f"on_invalid must be 'raise' or 'status', not {on_invalid!r}")


def _raise_first_invalid(pair: _Pair, errors) -> None:
    bad = [i for i, e in enumerate(errors) if e is not None]
    if bad:
        more = f" (and {len(bad) - 1} more positions)" if len(bad) > 1 else ""
        position = pair.position(bad[0])
        where = f"position {list(position)}" if position else "the row"
        raise InputError(f"{where}: {errors[bad[0]]}{more}; pass on_invalid='status' to get "
                         "status 'invalid' for such positions and the others solved")


# ------------------------------------------------------------------------------------------------
# outputs


def _scatter(pair: _Pair, values: np.ndarray, fill, dtype=None) -> np.ndarray:
    """Per computed row -> per position of the leading shape (masked positions get `fill`)."""
    if pair.keep is None and isinstance(values, np.ndarray) and (dtype is None
                                                                 or values.dtype == dtype):
        return values.reshape(pair.lead)
    values = np.asarray(values) if dtype is None else np.asarray(values, dtype=dtype)
    if pair.keep is not None:
        full = np.full(pair.n_rows, fill, dtype=values.dtype if dtype is None else dtype)
        full[pair.keep] = values
        values = full
    return values.reshape(pair.lead)


def _to_library(pair: _Pair, values: np.ndarray, dtype: str):
    if pair.library == "numpy":
        return values
    torch = _torch()
    return torch.as_tensor(np.ascontiguousarray(values), device=pair.device,
                           dtype=getattr(torch, dtype))


# ------------------------------------------------------------------------------------------------
# solve


def solve(theta, target, *, kind: str = LOGITS, mask=None, dim: int = -1,
          method: str = "newton", compute_dtype: str | None = None, renormalize: bool = False,
          on_invalid: str = "raise", diagnostics: bool = True,
          max_memory: int | None = None) -> SolveResult:
    """alpha*, the Chernoff information, both KLs, both ESS and alpha_H at every position.

    theta, target: pi_theta and pi_t as `kind` ('logits', 'logprobs', 'probs'), numpy arrays or
      torch tensors of the same shape [..., V] (the vocabulary on `dim`).
    mask: optional, of the leading shape: 1/True = real, 0/False = padded (status 'masked').
    method: 'newton' (default), 'halley', 'brentq' (exact); 'bisection' (the derivation's
      reference code), 'entropy' (the heuristic). torch tensors: newton and halley run on the
      device; the others on the host in float64 (results moved back).
    compute_dtype: torch only: 'float32' (default for float32 / float16 / bfloat16 inputs:
      alpha to ~1e-6) or 'float64' (default for float64 inputs: ~1e-12).
    renormalize: rescale probability rows whose sum is off (kind 'probs').
    on_invalid: 'raise' (default: InputError naming the first bad position) or 'status'
      (status 'invalid' with the reason; the other positions are solved).
    diagnostics: False skips the ESS and entropy passes (ess_theta, ess_t, alpha_entropy None).
    max_memory: torch only: bytes of temporaries per chunk (default 1 GiB).
    Returns a SolveResult (no autograd graph)."""
    if (type(theta) is np.ndarray and type(target) is np.ndarray and mask is None
            and method in ("newton", "halley") and compute_dtype in (None, "float64")
            and not renormalize and on_invalid in ("raise", "status") and kind in KINDS
            and theta.shape == target.shape and theta.dtype == target.dtype
            and theta.dtype.kind == "f" and theta.ndim >= 1 and 0 < theta.shape[-1] == theta.size
            and dim in (-1, theta.ndim - 1)):
        # one row of numpy floats (a training step's small call): the small-call lane
        result = _solve_one_row(theta, target, kind, method, diagnostics)
        if result is not None:
            return result
        lane_tried = True     # the general path need not try the lane on this row again
    else:
        lane_tried = False
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    _check_on_invalid(on_invalid)
    pair = _pair(theta, target, kind, mask, dim)
    work = _compute_dtype(pair, compute_dtype)
    kept = pair.n_rows if pair.keep is None else int(pair.keep.sum())
    if kept == 0:
        rows = None
    elif pair.library == "torch" and method in ("newton", "halley"):
        rows = _solve_torch(pair, kind, method, work, renormalize, on_invalid, diagnostics,
                            max_memory)
    else:
        rows = _solve_numpy(pair, kind, method, renormalize, on_invalid, diagnostics,
                            lane=not lane_tried)
    return _solve_result(pair, rows, method, kind, work, diagnostics)


def _solve_numpy(pair, kind, method, renormalize, on_invalid, diagnostics, *,
                 lane: bool = True) -> dict:
    theta, target = pair.rows()
    if pair.library == "torch":  # non-device methods on the host, in float64
        theta = theta.detach().cpu().double().numpy()
        target = target.detach().cpu().double().numpy()
    log_theta, log_t, errors = validate_pair(theta, target, kind, names=NAMES,
                                             renormalize=renormalize,
                                             storage_dtype=pair.storage_dtype, hint=API_HINT)
    row_errors = None
    if any(errors):
        if on_invalid == "raise":
            _raise_first_invalid(pair, errors)
        row_errors = errors
    if method in ("newton", "halley") and not diagnostics:
        rows = solve_blocks(log_theta, log_t, order=3 if method == "halley" else 2,
                            row_errors=row_errors, lane=lane)
        return _lean_rows(rows)
    if not diagnostics:
        sol = solve_alpha(log_theta, log_t, method, row_errors=row_errors)
        diag = None
    else:
        lane_option = {"lane": lane} if method in ("newton", "halley") else {}
        diag = solve_and_diagnose(log_theta, log_t, method, row_errors=row_errors, **lane_option)
        sol = diag.solution
    return _rows_of(sol, diag, log_theta, log_t)


def _solve_one_row(theta: np.ndarray, target: np.ndarray, kind: str, method: str,
                   diagnostics: bool) -> SolveResult | None:
    """One row of numpy floats ([..., V] with one position) solved to 'ok' by the small-call lane:
    validation's plain case (`normalise_plain_rows`) and `single_row.solve_row_numbers`, the
    result built from Python floats -- the same numbers as the general path (`_solve_numpy` +
    `_solve_result`, to the last bit: tests/test_single_row.py), without its per-row arrays and
    records. None (the general path, with its statuses, messages and errors) for a row that is
    not plainly valid or not 'ok'."""
    vocab = theta.shape[-1]
    x = np.empty((2, vocab))
    x[0] = theta
    x[1] = target
    if not normalise_plain_rows(x, kind, tolerance_for(kind, dtype_name(theta.dtype), vocab)):
        return None
    row = single_row.solve_row_numbers(
        x[0], x[1], order=3 if method == "halley" else 2,
        check_tolerance=input_logprob_tolerance(x, vocab), diagnostics=diagnostics,
        finite=True)
    if row is None:
        return None
    alpha = row["alpha"]
    if diagnostics:   # RowDiagnostics.from_rows on floats: KL >= 0, log Z <= 0 clamped
        log_z = min(row["log_z"], 0.0) + 0.0
        kl_theta = max(row["kl_q_theta"], 0.0) + 0.0
        kl_t = max(row["kl_q_t"], 0.0) + 0.0
        h_theta, h_t = row["entropy_theta"], row["entropy_t"]
        alpha_h = h_theta / (h_theta + h_t) if h_theta + h_t > 0 else math.nan
        extra = {"ess_theta": np.array(row["ess_theta"]), "ess_t": np.array(row["ess_t"]),
                 "alpha_entropy": np.array(alpha_h)}
    else:             # _lean_rows on floats: from the last pass's log Z and D
        delta = row["residual"]
        log_z = min(row["log_z_at_alpha"], 0.0) + 0.0
        kl_theta = max((1.0 - alpha) * delta - log_z, 0.0) + 0.0
        kl_t = max(-alpha * delta - log_z, 0.0) + 0.0
        extra = {"ess_theta": None, "ess_t": None, "alpha_entropy": None}
    values = {"alpha": np.array(alpha), "chernoff": np.array(-log_z + 0.0),
              "kl_q_theta": np.array(kl_theta), "kl_q_t": np.array(kl_t),
              "log_z": np.array(log_z), **extra, "residual": np.array(row["residual"]),
              "iterations": np.array(row["iterations"], dtype=np.int64),
              "status": np.array(OK), "message": np.array("")}
    lead = theta.shape[:-1]
    if lead:          # [1, ..., 1, V]: every array of the leading shape
        values = {name: None if value is None else value.reshape(lead)
                  for name, value in values.items()}
        values["ok"] = np.ones(lead, dtype=bool)
    else:             # `status == OK` on a 0-d array: numpy's bool scalar
        values["ok"] = np.True_
    values.update(method=method, kind=kind, compute_dtype="float64", extra={})
    return _frozen(SolveResult, values)


def _frozen(cls, fields: dict):
    """cls(**fields) for a frozen dataclass without its __init__ (which sets each of
    SolveResult's 17 fields through object.__setattr__: a tenth of a short row's call); `fields`
    must name every field."""
    obj = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj


def _solve_torch(pair, kind, method, work, renormalize, on_invalid, diagnostics,
                 max_memory) -> dict:
    from geomix_cli.backends.torch_backend import solve_alpha_torch

    theta, target = pair.rows()
    out = solve_alpha_torch(theta, target, method=method, device=str(pair.device),
                            compute_dtype=work, max_memory_bytes=max_memory, kind=kind,
                            renormalize=renormalize, storage_dtype=pair.storage_dtype,
                            names=NAMES, hint=API_HINT, diagnostics=True)
    sol = out.solution
    if on_invalid == "raise":
        _raise_first_invalid(pair, [m if s == INVALID else None
                                    for s, m in zip(sol.status, sol.message)])
    return _rows_of(sol, out, None, None)


def _lean_rows(rows: dict) -> dict:
    """Without diagnostics: C and both KLs from the iteration's last pass (log Z and D there)."""
    alpha, delta = rows["alpha"], rows["residual"]
    log_z = rows["log_z_at_alpha"]
    with np.errstate(invalid="ignore"):
        log_z = np.minimum(log_z, 0.0) + 0.0
        return dict(status=rows["status"], message=rows["message"], alpha=alpha,
                    chernoff=-log_z + 0.0,
                    kl_q_theta=np.maximum((1.0 - alpha) * delta - log_z, 0.0) + 0.0,
                    kl_q_t=np.maximum(-alpha * delta - log_z, 0.0) + 0.0, log_z=log_z,
                    ess_theta=None, ess_t=None, alpha_entropy=None, residual=delta,
                    iterations=rows["iterations"])


def _rows_of(sol, diag, log_theta, log_t) -> dict:
    if diag is None:
        from geomix_cli.core.diagnostics import diagnose

        diag = diagnose(log_theta, log_t, sol)
        out = _rows_of(sol, diag, None, None)
        out.update(ess_theta=None, ess_t=None, alpha_entropy=None)
        return out
    return dict(status=sol.status, message=sol.message, alpha=sol.alpha, chernoff=diag.chernoff,
                kl_q_theta=diag.kl_q_theta, kl_q_t=diag.kl_q_target, log_z=diag.log_z,
                ess_theta=diag.ess_theta, ess_t=diag.ess_target,
                alpha_entropy=diag.alpha_entropy, residual=sol.residual,
                iterations=sol.iterations)


_FLOAT_FIELDS = ("alpha", "chernoff", "kl_q_theta", "kl_q_t", "log_z", "ess_theta", "ess_t",
                 "alpha_entropy", "residual")


def _solve_result(pair, rows, method, kind, work, diagnostics) -> SolveResult:
    if rows is None:  # every position masked
        n = 0
        rows = {name: np.zeros(n) for name in _FLOAT_FIELDS}
        rows.update(status=np.zeros(n, dtype=object), message=[],
                    iterations=np.zeros(n, dtype=np.int64))
        if not diagnostics:
            rows.update(ess_theta=None, ess_t=None, alpha_entropy=None)
    values = {}
    for name in _FLOAT_FIELDS:
        if rows[name] is None:
            values[name] = None
        else:
            values[name] = _to_library(pair, _scatter(pair, rows[name], np.nan, np.float64), work)
    status = _scatter(pair, np.asarray(rows["status"], dtype=object), MASKED,
                      dtype=object).astype(str)
    message = _scatter(pair, np.asarray(rows["message"], dtype=object), MASKED_MESSAGE,
                       dtype=object).astype(str)
    iterations = _to_library(pair, _scatter(pair, rows["iterations"], 0, np.int64), "int64")
    ok = _to_library(pair, status == OK, "bool")
    return SolveResult(**values, iterations=iterations, status=status, message=message, ok=ok,
                       method=method, kind=kind, compute_dtype=work)


# ------------------------------------------------------------------------------------------------
# the family at a given alpha: log q, importance weights, diagnostics


def _alpha_rows(pair: _Pair, alpha) -> np.ndarray:
    """alpha per computed row (host float64) from a scalar or an array of the leading shape
    (numpy or torch); NaN (e.g. from a masked or no-root position) passes through."""
    values = alpha.detach().cpu().double().numpy() if is_torch_tensor(alpha) \
        else np.asarray(alpha, dtype=np.float64)
    if values.ndim == 0:
        values = np.full(pair.n_rows, float(values))
    elif tuple(values.shape) != pair.lead:
        raise InputError(f"alpha of shape {tuple(values.shape)} does not match the leading "
                         f"shape {pair.lead} (one alpha per position, or a scalar)", key="alpha")
    values = values.reshape(-1)
    if np.any((values < 0.0) | (values > 1.0)):
        raise InputError("alpha must lie in [0, 1] (NaN for positions without one)", key="alpha")
    return values if pair.keep is None else values[pair.keep]


def _blocks(pair: _Pair, kind, work, renormalize, on_invalid, max_memory):
    """(start, stop, prep, errors) over the computed rows, in the kernel's form (numpy: cache-
    sized row blocks of validated float64 log-probabilities; torch: device chunks)."""
    from geomix_cli.core import kernel

    theta, target = pair.rows()
    if pair.library == "numpy":
        from geomix_cli.core.family import row_blocks
        from geomix_cli.core.validation import validate_pair

        log_theta, log_t, errors = validate_pair(theta, target, kind, names=NAMES,
                                                 renormalize=renormalize,
                                                 storage_dtype=pair.storage_dtype, hint=API_HINT)
        if on_invalid == "raise":
            _raise_first_invalid(pair, errors)
        for block in row_blocks(*log_theta.shape):
            with kernel.ignore_fp(np):
                prep = kernel.prepare_pair(np, log_theta[block], log_t[block], end_points=False)
            yield block.start, block.stop, prep, errors[block]
        return
    from geomix_cli.backends.torch_backend import prepared_chunks

    for start, stop, prep, errors in prepared_chunks(
            theta, target, kind=kind, device=str(pair.device), compute_dtype=work,
            max_memory_bytes=max_memory, renormalize=renormalize,
            storage_dtype=pair.storage_dtype, names=NAMES, hint=API_HINT):
        if on_invalid == "raise":
            _raise_first_invalid(pair, [None] * start + list(errors))
        yield start, stop, prep, errors


def _no_grad(pair: _Pair):
    if pair.library == "torch":
        return _torch().no_grad()
    import contextlib

    return contextlib.nullcontext()


def geometric_mean(theta, target, alpha, *, kind: str = LOGITS, mask=None, dim: int = -1,
                   compute_dtype: str | None = None, renormalize: bool = False,
                   on_invalid: str = "raise", max_memory: int | None = None):
    """log q_alpha = log normalise(pi_theta^alpha pi_t^(1-alpha)), the inputs' shape and layout.

    alpha: a scalar or one per position (e.g. `solve(...).alpha`); NaN alpha, masked and invalid
    positions give NaN rows. Computed as log pi_t - alpha l - log Z(alpha) on the common support
    (-inf off it); alpha = 1 and 0 give log pi_theta and log pi_t exactly. numpy in, float64
    numpy out; torch in, torch out on the device in the compute dtype (no autograd graph)."""
    from geomix_cli.core import kernel

    _check_on_invalid(on_invalid)
    pair = _pair(theta, target, kind, mask, dim)
    work = _compute_dtype(pair, compute_dtype)
    alpha_rows = _alpha_rows(pair, alpha)
    with _no_grad(pair):
        out = _empty_rows(pair, work)
        kept = pair.kept
        for start, stop, prep, errors in _blocks(pair, kind, work, renormalize, on_invalid,
                                                 max_memory):
            with kernel.ignore_fp(prep.xp):
                values = kernel.log_q(prep, np.arange(stop - start), alpha_rows[start:stop])
            bad = [i for i, e in enumerate(errors) if e is not None]
            if bad:
                values[_index(pair, np.array(bad))] = math.nan
            target_rows = np.arange(start, stop) if kept is None else kept[start:stop]
            out[_index(pair, target_rows)] = values
        return _rows_to_layout(pair, out)


def _empty_rows(pair: _Pair, work: str):
    if pair.library == "numpy":
        return np.full((pair.n_rows, pair.vocab), np.nan)
    torch = _torch()
    return torch.full((pair.n_rows, pair.vocab), math.nan, dtype=getattr(torch, work),
                      device=pair.device)


def _index(pair: _Pair, rows: np.ndarray):
    if pair.library == "numpy":
        return rows
    return _torch().as_tensor(rows, device=pair.device)


def _rows_to_layout(pair: _Pair, rows):
    """[N, V] -> the inputs' shape, the vocabulary back on its dim."""
    shaped = rows.reshape(*pair.lead, pair.vocab)
    if pair.dim != pair.ndim - 1:
        if pair.library == "torch":
            return shaped.movedim(-1, pair.dim)
        return np.moveaxis(shaped, -1, pair.dim)
    return shaped


def importance_weights(theta, target, alpha, tokens, *, kind: str = LOGITS, mask=None,
                       dim: int = -1, log: bool = False, compute_dtype: str | None = None,
                       renormalize: bool = False, on_invalid: str = "raise",
                       max_memory: int | None = None) -> Weights:
    """Importance weights of tokens drawn from q_alpha: (pi_theta(y) / q(y), pi_t(y) / q(y)).

    tokens: integers in [0, V), of the leading shape (one token per position) or the leading
    shape plus one axis (k tokens per position). log=True returns log weights. On the common
    support log w_theta = log Z(alpha) - (1 - alpha) l(y) and log w_t = log Z(alpha) + alpha l(y)
    (l = log pi_t - log pi_theta); a token outside it (q(y) = 0: never drawn from q) gives +inf
    for a side with mass there, NaN (0/0) for a side without. Masked, invalid and NaN-alpha
    positions give NaN. The weights' mean under q is 1 for each side (sum_y q pi/q = 1)."""
    from geomix_cli.core import kernel

    _check_on_invalid(on_invalid)
    pair = _pair(theta, target, kind, mask, dim)
    work = _compute_dtype(pair, compute_dtype)
    alpha_rows = _alpha_rows(pair, alpha)
    index, per_row, single = _token_rows(pair, tokens)
    with _no_grad(pair):
        shape = (pair.n_rows, per_row)
        if pair.library == "numpy":
            w_theta, w_t = np.full(shape, np.nan), np.full(shape, np.nan)
        else:
            torch = _torch()
            w_theta = torch.full(shape, math.nan, dtype=getattr(torch, work), device=pair.device)
            w_t = torch.full_like(w_theta, math.nan)
        kept = pair.kept
        for start, stop, prep, errors in _blocks(pair, kind, work, renormalize, on_invalid,
                                                 max_memory):
            target_rows = np.arange(start, stop) if kept is None else kept[start:stop]
            block_tokens = index[_index(pair, target_rows)]
            with kernel.ignore_fp(prep.xp):
                a, b = kernel.log_weights(prep, np.arange(stop - start), alpha_rows[start:stop],
                                          block_tokens)
            if pair.library == "torch":
                a, b = a.to(w_theta.dtype), b.to(w_theta.dtype)
            bad = [i for i, e in enumerate(errors) if e is not None]
            if bad:
                a[_index(pair, np.array(bad))] = math.nan
                b[_index(pair, np.array(bad))] = math.nan
            w_theta[_index(pair, target_rows)] = a
            w_t[_index(pair, target_rows)] = b
        if not log:
            w_theta = np.exp(w_theta) if pair.library == "numpy" else w_theta.exp()
            w_t = np.exp(w_t) if pair.library == "numpy" else w_t.exp()
        out_shape = pair.lead if single else pair.lead + (per_row,)
        return Weights(w_theta.reshape(out_shape), w_t.reshape(out_shape))


def _token_rows(pair: _Pair, tokens):
    """Tokens as [N, k] integer rows of the inputs' library and device, k, and whether one token
    per position was given."""
    if is_torch_tensor(tokens):
        host = tokens.detach().cpu().numpy()
    else:
        host = np.asarray(tokens)
    if host.dtype.kind not in "iu":
        raise InputError(f"tokens must be integers, not {host.dtype.name}", key="tokens")
    shape = tuple(host.shape)
    if shape == pair.lead:
        single, per_row = True, 1
    elif shape[:-1] == pair.lead and len(shape) == len(pair.lead) + 1:
        single, per_row = False, int(shape[-1])
    else:
        raise InputError(f"tokens of shape {shape} match neither the leading shape {pair.lead} "
                         f"nor it plus one axis of samples", key="tokens")
    rows = host.reshape(pair.n_rows, per_row).astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= pair.vocab):
        raise InputError(f"tokens must lie in [0, {pair.vocab}) (the vocabulary)", key="tokens")
    if pair.library == "torch":
        return _torch().as_tensor(rows, device=pair.device), per_row, single
    return rows, per_row, single


def diagnostics(theta, target, alpha, *, kind: str = LOGITS, mask=None, dim: int = -1,
                compute_dtype: str | None = None, renormalize: bool = False,
                on_invalid: str = "raise", max_memory: int | None = None) -> Diagnostics:
    """The family at a given alpha per position (a fixed alpha schedule, alpha_H, or alpha*):
    log Z, D, both KLs, both ESS, both entropies and alpha_H. Same conventions as `solve`."""
    from geomix_cli.core import kernel

    _check_on_invalid(on_invalid)
    pair = _pair(theta, target, kind, mask, dim)
    work = _compute_dtype(pair, compute_dtype)
    alpha_rows = _alpha_rows(pair, alpha)
    n = alpha_rows.shape[0]
    fields = kernel.FAMILY_FIELDS + ("entropy_theta", "entropy_t")
    rows = {name: np.full(n, np.nan) for name in fields}
    status = np.full(n, OK, dtype=object)
    message = np.full(n, "", dtype=object)
    with _no_grad(pair):
        for start, stop, prep, errors in _blocks(pair, kind, work, renormalize, on_invalid,
                                                 max_memory):
            local = np.arange(stop - start)
            with kernel.ignore_fp(prep.xp):
                fam = kernel.family_at(prep, local, alpha_rows[start:stop])
                h_theta, h_t, _, _ = kernel.entropies(prep)
            for name in kernel.FAMILY_FIELDS:
                rows[name][start:stop] = fam[name]
            rows["entropy_theta"][start:stop] = h_theta
            rows["entropy_t"][start:stop] = h_t
            interior = (alpha_rows[start:stop] > 0) & (alpha_rows[start:stop] < 1)
            for i in np.flatnonzero(~prep.has_support & interior):
                status[start + i] = DISJOINT
                message[start + i] = ("pi_theta and pi_t share no token with positive "
                                      "probability: Z = 0, there is no q")
            for i, e in enumerate(errors):
                if e is not None:
                    status[start + i], message[start + i] = INVALID, e
    invalid = status == INVALID
    for name in fields:
        rows[name][invalid] = np.nan
    for name in kernel.FAMILY_FIELDS:  # no q: nothing to evaluate (entropies still are)
        rows[name][status == DISJOINT] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        h_sum = rows["entropy_theta"] + rows["entropy_t"]
        rows["alpha_entropy"] = np.where(h_sum > 0, rows["entropy_theta"] / h_sum, np.nan)
    values = {name: _to_library(pair, _scatter(pair, rows[name], np.nan, np.float64), work)
              for name in rows}
    return Diagnostics(alpha=_to_library(pair, _scatter(pair, alpha_rows, np.nan, np.float64),
                                         work),
                       log_z=values["log_z"], delta=values["delta"],
                       kl_q_theta=values["kl_q_theta"], kl_q_t=values["kl_q_t"],
                       ess_theta=values["ess_theta"], ess_t=values["ess_t"],
                       entropy_theta=values["entropy_theta"], entropy_t=values["entropy_t"],
                       alpha_entropy=values["alpha_entropy"],
                       status=_scatter(pair, status, MASKED, dtype=object).astype(str),
                       message=_scatter(pair, message, MASKED_MESSAGE, dtype=object).astype(str))
