"""Turn raw arrays (probabilities, logits or log-probabilities) into normalised log-probabilities.

Two levels of refusal:
- structural problems (empty, too many dims, non-numeric dtype, shape mismatch) raise `InputError`:
  nothing can be computed;
- value problems confined to a row (NaN, +inf, negative probability, a sum that is off, a row
  with no mass, log-probabilities that are not normalised) are returned per row, so a batch with
  one bad row still solves the others.

No epsilon smoothing: zero probabilities become log 0 = -inf and are handled exactly downstream.

`normalise_rows` is written over the array API (numpy or torch, the same code): the numpy entry
points here (`validate_rows`, `validate_pair`, used by io and the API on arrays) and the torch
backend (the API on tensors, `--device`) validate with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from geomix_cli.core.arrays import dtype_name as name_of_dtype
from geomix_cli.core.arrays import host, host64, is_numpy, numpy_namespace, rmax, rmin, rsum
from geomix_cli.core.family import BLOCK_ELEMENTS, row_blocks, worker_count
from geomix_cli.errors import InputError

PROBS = "probs"
LOGITS = "logits"
LOGPROBS = "logprobs"
KINDS = (LOGITS, LOGPROBS, PROBS)

RENORMALIZE_HINT = "pass --renormalize to rescale"

# ml_dtypes' bfloat16 (used by torch/safetensors exports) has numpy kind 'V'; we accept it by name.
_WIDENABLE_NAMES = {"bfloat16"}


@lru_cache(maxsize=64)
def storage_eps(dtype_name: str) -> float:
    """Machine epsilon of the dtype the values were stored in (bfloat16: 2**-7)."""
    if dtype_name == "bfloat16":
        return 2.0**-7
    dtype = np.dtype(dtype_name)
    if np.issubdtype(dtype, np.floating):
        return float(np.finfo(dtype).eps)
    return 0.0  # integers are exact


_FLOAT32_EPS = float(np.finfo(np.float32).eps)


@lru_cache(maxsize=256)
def sum_tolerance(dtype_name: str, vocab_size: int = 1) -> float:
    """How far a probability row may sum from 1 before it is refused (without --renormalize).

        tol = max(2 eps_storage, 8 sqrt(V) eps_float32, 1e-6)

    Storing a normalised row in a dtype perturbs each entry by at most eps/2 relative, hence the
    sum by at most eps/2 (2 eps leaves room). Whoever normalised the row most likely did it in
    float32 (a softmax on an accelerator): its sum carries an accumulation error that grows like
    sqrt(V) eps_float32 (measured: torch.softmax in float32 over V = 50,000 sums off by 4.6e-6,
    over V = 150,000 by 3e-5), whatever dtype the row was stored in afterwards. Text formats and
    float64 get at least 1e-6, so six printed decimals still pass. Real mistakes (logits or counts
    passed as probabilities) are off by far more than any of these.
    """
    return max(2.0 * storage_eps(dtype_name), 8.0 * np.sqrt(max(vocab_size, 1)) * _FLOAT32_EPS,
               1e-6)


@lru_cache(maxsize=256)
def logprob_tolerance(dtype_name: str, vocab_size: int = 1) -> float:
    """How far logsumexp of a row of log-probabilities may be from 0 (kind 'logprobs').

        tol = max(sum_tolerance(dtype, V), eps_storage (1 + log V))

    Rounding each log p to the storage dtype moves it by up to eps/2 |log p|, so p by that
    fraction and the sum by up to eps/2 sum p |log p| = eps/2 H(p) <= eps/2 log V. A float32
    log_softmax passes easily (V = 151,936: 3.7e-4); bfloat16 log-probabilities cannot be checked
    more finely than ~0.1 at that V, float16 ~0.013. Raw logits are off by their logsumexp,
    typically several units."""
    return max(sum_tolerance(dtype_name, vocab_size),
               storage_eps(dtype_name) * (1.0 + math.log(max(vocab_size, 1))))


@dataclass(frozen=True)
class LogProbRows:
    """Validated rows: `log_p[b, v]` = log probability (float64, -inf where zero).

    `row_errors[b]` is None for a good row, else the reason the row cannot be used (its `log_p`
    row is then a placeholder uniform row, never to be reported)."""

    log_p: np.ndarray
    row_errors: list[str | None]
    storage_dtype: str


def check_numeric_dtype(dtype_name: str, kind_char: str, *, name: str, file: str | None) -> None:
    if kind_char == "b" or kind_char in "cOUSMm" or (kind_char == "V"
                                                       and dtype_name not in _WIDENABLE_NAMES):
        raise InputError(f"non-numeric dtype {dtype_name}; expected real floating-point values",
                         file=file, key=name)


def _check_structure(arr: np.ndarray, name: str, file: str | None) -> None:
    kind_char = arr.dtype.kind
    if kind_char != "f":  # (floats pass: no name needed, and numpy's dtype.name costs ~2 us)
        check_numeric_dtype(name_of_dtype(arr.dtype), kind_char, name=name, file=file)
    if arr.ndim == 0 or arr.size == 0:
        raise InputError(f"empty array (shape {arr.shape})", file=file, key=name)
    if arr.ndim > 2:
        raise InputError(f"{arr.ndim} dimensions (shape {arr.shape}); expected [V], [B, V] or, in "
                         "a file, [B, T, V]",
                         file=file, key=name)


def _as_float64_2d(values, name: str, file: str | None) -> tuple[np.ndarray, str]:
    arr = np.asarray(values)
    stored = name_of_dtype(arr.dtype)
    _check_structure(arr, name, file)
    wide = arr.astype(np.float64)
    if wide.ndim == 1:
        wide = wide[None, :]
    return np.ascontiguousarray(wide), stored


# ------------------------------------------------------------------------------------------------
# the one implementation (numpy or torch)

_GOOD, _NAN, _POSINF, _NO_LOGIT, _INF_PROB, _NEGATIVE, _NO_MASS, _OFF_SUM, _UNNORMALISED = range(9)


def normalise_rows(xp, x, kind: str, *, tolerance: float, dtype_name: str,
                   renormalize: bool = False, normalise: bool = True,
                   hint: str = RENORMALIZE_HINT):
    """Validate and normalise a block of rows [n, V] *in place* (x must be the caller's own copy).

    logits / logprobs: z = x - max(x), lse = log sum exp(z) (scipy's algorithm: the entries equal
    to the maximum are taken out of the sum, lse = log1p(s / m) + log m), accumulated in float64;
    'logprobs' rows whose logsumexp is further than `tolerance` from 0 are refused.
    probs: finite, >= 0, summing to 1 within `tolerance` (any positive sum with `renormalize`);
    z = log x, lse = log sum x.
    normalise: z -= lse in place (log-probabilities; returned lse None); else z and lse are
    returned apart (the float32 path keeps the normalisers in float64).
    Returns (z, lse, errors): errors[b] is None or the reason row b is refused (its z is then a
    placeholder uniform row)."""
    n, vocab = int(x.shape[0]), int(x.shape[1])
    errors: list[str | None] = [None] * n
    if kind in (LOGITS, LOGPROBS):
        peak = rmax(xp, x, keepdims=True)
        (peak_h,) = host64(peak[:, 0])
        if not np.isfinite(peak_h).all():   # NaN (propagates through max), +inf, all -inf
            codes = np.full(n, _GOOD)
            codes[np.isneginf(peak_h)] = _NO_LOGIT
            codes[np.isposinf(peak_h)] = _POSINF
            codes[np.isnan(peak_h)] = _NAN
            errors = _messages(x, codes, kind, None, tolerance, dtype_name, hint)
            x[_index(xp, codes != _GOOD, x)] = 0.0
            peak = xp.where(xp.isfinite(peak), peak, 0.0)
            peak_h = np.where(np.isfinite(peak_h), peak_h, 0.0)
        x -= peak
        at_peak = x == 0.0                          # the entries equal to the row maximum
        e = xp.exp(x)
        e[at_peak] = 0.0
        s, count = host64(rsum(xp, e, dtype=xp.float64), rsum(xp, at_peak))
        del e, at_peak
        lse = np.log1p(s / count) + np.log(count)
        if kind == LOGPROBS:
            total = peak_h + lse
            off = ~(np.abs(total) <= tolerance)
            for b in np.flatnonzero(off):
                if errors[b] is None:
                    errors[b] = (f"log-probabilities are not normalised: logsumexp = "
                                 f"{total[b]:.6g}, off from 0 by more than {tolerance:.1e} (the "
                                 f"tolerance for {dtype_name} at V = {vocab}); logits are "
                                 "normalised with kind='logits'")
    else:
        total_h, low_h = host64(rsum(xp, x, dtype=xp.float64), rmin(xp, x))
        if not _plainly_good(total_h, low_h, tolerance, renormalize):
            with np.errstate(invalid="ignore"):
                good = (low_h >= 0.0) & (total_h > 0.0) & np.isfinite(total_h)
                if not renormalize:
                    good &= np.abs(total_h - 1.0) <= tolerance
                if not good.all():
                    codes = np.full(n, _GOOD)
                    if not renormalize:
                        codes[~(np.abs(total_h - 1.0) <= tolerance)] = _OFF_SUM
                    codes[~(total_h > 0)] = _NO_MASS
                    codes[low_h < 0] = _NEGATIVE
                    codes[~np.isfinite(total_h)] = _INF_PROB   # split into NaN / inf on the host
                    errors = _messages(x, codes, kind, total_h, tolerance, dtype_name, hint)
                    bad = codes != _GOOD
                    x[_index(xp, bad, x)] = 1.0
                    total_h = np.where(bad, float(vocab), total_h)
        _log_in_place(xp, x)
        lse = np.log(total_h)
    if not normalise:
        return x, lse, errors
    x -= _column(xp, lse, x)
    return x, None, errors


def normalise_plain_rows(x: np.ndarray, kind: str, tolerance: float) -> bool:
    """`normalise_rows(np, x, kind, tolerance=tolerance)` for the plain case only, in place on
    a float64 [n, V] copy (C-contiguous): True when every row is plainly good -- probabilities all
    > 0 summing to 1 within `tolerance`, finite logits with no -inf, log-probabilities whose
    logsumexp is within `tolerance` of 0 -- and x then holds the same log-probabilities, to the
    last bit (the same operations; tests/test_single_row.py); False (x then undefined) for any
    other row, which `validate_pair` must judge and explain. No floating-point state is touched:
    nothing in the plain case can warn. For the small-call lane, where the general validation's
    bookkeeping is most of a short row's cost."""
    if kind == PROBS:
        total = _ADD(x, -1, np.float64)
        if not float(_MIN(x, None)) > 0.0:
            return False
        for t in total.tolist():
            if not abs(t - 1.0) <= tolerance:
                return False
        np.log(x, out=x)
        x -= np.log(total)[:, None]
        return True
    peak = _MAX(x, -1, None, None, True)
    if not (abs(float(_MAX(np.absolute(peak), None))) < math.inf
            and float(_MIN(x, None)) > -math.inf):
        return False                                 # NaN, +-inf anywhere
    x -= peak
    at_peak = x == 0.0                               # the entries equal to the row maximum
    e = np.exp(x)
    e[at_peak] = 0.0
    s, count = _ADD(e, -1, np.float64), _ADD(at_peak, -1)
    lse = np.log1p(s / count) + np.log(count)
    if kind == LOGPROBS and not float(_MAX(np.absolute(peak[:, 0] + lse), None)) <= tolerance:
        return False
    x -= lse[:, None]
    return True


_ADD, _MIN, _MAX = np.add.reduce, np.minimum.reduce, np.maximum.reduce


def _plainly_good(total: np.ndarray, low: np.ndarray, tolerance: float, renormalize: bool) -> bool:
    """Every probability row >= 0 with a sum within `tolerance` of 1 (< 1: so also positive and
    finite), in two reductions: the common case, decided without the per-row flags (NaN: no)."""
    if renormalize or not tolerance < 1.0:
        return False
    return (float(np.minimum.reduce(low, None)) >= 0.0
            and float(np.maximum.reduce(np.absolute(total - 1.0), None)) <= tolerance)


def _index(xp, mask: np.ndarray, like):
    if is_numpy(xp):
        return mask
    return xp.asarray(mask, device=like.device)


def _column(xp, values: np.ndarray, like):
    if is_numpy(xp):
        return values[:, None] if like.dtype == np.float64 else values[:, None].astype(like.dtype)
    col = values[:, None].astype(np.float32 if like.dtype.itemsize == 4 else np.float64)
    return xp.asarray(col, device=like.device)


def _log_in_place(xp, x) -> None:
    if is_numpy(xp):
        with np.errstate(divide="ignore"):
            np.log(x, out=x)
    else:
        x.log_()


def _messages(x, codes, kind, totals, tolerance, dtype_name, hint) -> list[str | None]:
    errors: list[str | None] = [None] * int(codes.shape[0])
    for b in np.flatnonzero(codes != _GOOD):
        code = codes[b]
        if code == _NO_LOGIT:
            errors[b] = "every logit is -inf (no probability mass)"
        elif code == _NO_MASS:
            errors[b] = "all probabilities are 0 (no mass)"
        elif code == _OFF_SUM:
            errors[b] = (f"probabilities sum to {totals[b]:.9g}, off from 1 by more than "
                         f"{tolerance:.1e} (the tolerance for {dtype_name}); {hint}")
        else:  # a look at the row itself says where
            row = host(x[int(b)]).astype(np.float64)
            if code == _NAN or (code == _INF_PROB and np.isnan(row).any()):
                errors[b] = _first_bad(row, np.isnan, "NaN")
            elif code == _POSINF:
                errors[b] = _first_bad(row, np.isposinf, "+inf logit")
            elif code == _INF_PROB:
                errors[b] = _first_bad(row, np.isinf, "infinite probability")
            else:
                errors[b] = _first_bad(row, lambda r: r < 0, "negative probability")
    return errors


def _first_bad(row: np.ndarray, predicate, what: str) -> str:
    idx = np.flatnonzero(predicate(row))
    return f"{what} at column {int(idx[0])}" + (f" (and {idx.size - 1} more)" if idx.size > 1 else "")


@lru_cache(maxsize=256)
def tolerance_for(kind: str, dtype_name: str, vocab_size: int) -> float:
    return logprob_tolerance(dtype_name, vocab_size) if kind == LOGPROBS else sum_tolerance(
        dtype_name, vocab_size)


def input_logprob_tolerance(values, vocab_size: int) -> float:
    """The normalisation check of the low-level functions that take log-probabilities (core's
    solvers, family_point, diagnose): judged at float32's tolerance for float64 arrays
    (log-probabilities often come from a float32 log_softmax), at the array's own for narrower
    ones. Raw logits are off by their logsumexp, typically several units."""
    dtype = getattr(values, "dtype", None)
    name = "float64" if dtype is None else name_of_dtype(dtype)
    return logprob_tolerance(name if name in ("float16", "bfloat16") else "float32", vocab_size)


# ------------------------------------------------------------------------------------------------
# numpy entry points


def validate_rows(values, kind: str, *, name: str, file: str | None = None,
                  renormalize: bool = False, storage_dtype: str | None = None,
                  hint: str = RENORMALIZE_HINT) -> LogProbRows:
    """Validate one array of probabilities, logits or log-probabilities, shape [V] or [B, V].

    Logits may be any real numbers or -inf (zero mass); each row becomes log_softmax(row).
    Log-probabilities ('logprobs') are logits whose logsumexp must be within
    `logprob_tolerance(dtype, V)` of 0; they are then normalised exactly the same way.
    Probabilities must be finite, >= 0 and sum to 1 within `sum_tolerance(dtype, V)` (any positive
    sum with `renormalize`); each row becomes log(p) - log(sum p).
    The work runs on cache-sized blocks of rows, in place on one float64 copy.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}")
    x, dtype_name = _as_float64_2d(values, name, file)
    dtype_name = storage_dtype or dtype_name
    tolerance = tolerance_for(kind, dtype_name, x.shape[1])
    xp = numpy_namespace()
    errors: list[str | None] = []
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for block in row_blocks(*x.shape):
            _, _, block_errors = normalise_rows(xp, x[block], kind, tolerance=tolerance,
                                                dtype_name=dtype_name, renormalize=renormalize,
                                                hint=hint)
            errors.extend(block_errors)
    return LogProbRows(log_p=x, row_errors=errors, storage_dtype=dtype_name)


def validate_pair(theta, target, kind: str, *, names: tuple[str, str] = ("pi_theta", "pi_t"),
                  file: str | None = None, renormalize: bool = False,
                  storage_dtype: str | None = None,
                  hint: str = RENORMALIZE_HINT) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Validate both sides of a pair; shapes must match exactly (never broadcast).

    Returns (log_pi_theta, log_pi_t, row_errors) with float64 arrays of shape [B, V]."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}")
    a = np.asarray(theta)
    b = np.asarray(target)
    if a.shape != b.shape:
        raise InputError(f"shape {a.shape} of '{names[0]}' differs from shape {b.shape} of "
                         f"'{names[1]}' (rows are never broadcast)", file=file, key=names[1])
    if 2 * a.size <= BLOCK_ELEMENTS and a.dtype == b.dtype:
        # a small pair: both sides as one block (one pass of numpy calls for the pair)
        _check_structure(a, names[0], file)
        _check_structure(b, names[1], file)
        vocab = a.shape[-1]
        x = np.empty((2, a.size // vocab, vocab))
        x[0] = a
        x[1] = b
        storage = storage_dtype or name_of_dtype(a.dtype)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            _, _, errors = normalise_rows(
                numpy_namespace(), x.reshape(-1, vocab), kind,
                tolerance=tolerance_for(kind, storage, vocab), dtype_name=storage,
                renormalize=renormalize, hint=hint)
        n = x.shape[1]
        return x[0], x[1], pair_errors(errors[:n], errors[n:], names)
    options = dict(file=file, renormalize=renormalize, storage_dtype=storage_dtype, hint=hint)
    if a.size >= 4 * BLOCK_ELEMENTS and worker_count() >= 2:
        # both sides at once on two threads (numpy releases the GIL in its loops); errors are
        # raised in the same order as one after the other: pi_theta's first
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=2) as pool:
            future_theta = pool.submit(validate_rows, a, kind, name=names[0], **options)
            future_t = pool.submit(validate_rows, b, kind, name=names[1], **options)
            rows_theta = future_theta.result()
            rows_t = future_t.result()
    else:
        rows_theta = validate_rows(a, kind, name=names[0], **options)
        rows_t = validate_rows(b, kind, name=names[1], **options)
    return rows_theta.log_p, rows_t.log_p, pair_errors(rows_theta.row_errors,
                                                       rows_t.row_errors, names)


def pair_errors(errors_theta, errors_t, names) -> list[str | None]:
    """One reason per row, naming the side: pi_theta's first."""
    if not any(errors_theta) and not any(errors_t):
        return [None] * len(errors_theta)
    out: list[str | None] = []
    for e_theta, e_t in zip(errors_theta, errors_t):
        if e_theta is not None:
            out.append(f"key '{names[0]}': {e_theta}")
        elif e_t is not None:
            out.append(f"key '{names[1]}': {e_t}")
        else:
            out.append(None)
    return out
