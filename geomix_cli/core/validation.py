"""Turn raw arrays (probabilities or logits) into normalised float64 log-probabilities.

Two levels of refusal:
- structural problems (empty, > 2 dims, non-numeric dtype, shape mismatch) raise `InputError`:
  nothing can be computed;
- value problems confined to a row (NaN, +inf, negative probability, a sum that is off, a row
  with no mass) are returned per row, so a batch with one bad row still solves the others.

No epsilon smoothing: zero probabilities become log 0 = -inf and are handled exactly downstream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geomix_cli.core.family import BLOCK_ELEMENTS, _logsumexp_2d, row_blocks, worker_count
from geomix_cli.errors import InputError

PROBS = "probs"
LOGITS = "logits"

# ml_dtypes' bfloat16 (used by torch/safetensors exports) has numpy kind 'V'; we accept it by name.
_WIDENABLE_NAMES = {"bfloat16"}


def storage_eps(dtype_name: str) -> float:
    """Machine epsilon of the dtype the values were stored in (bfloat16: 2**-7)."""
    if dtype_name == "bfloat16":
        return 2.0**-7
    dtype = np.dtype(dtype_name)
    if np.issubdtype(dtype, np.floating):
        return float(np.finfo(dtype).eps)
    return 0.0  # integers are exact


_FLOAT32_EPS = float(np.finfo(np.float32).eps)


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


@dataclass(frozen=True)
class LogProbRows:
    """Validated rows: `log_p[b, v]` = log probability (float64, -inf where zero).

    `row_errors[b]` is None for a good row, else the reason the row cannot be used (its `log_p`
    row is then a placeholder uniform row, never to be reported)."""

    log_p: np.ndarray
    row_errors: list[str | None]
    storage_dtype: str


def _as_float64_2d(values, name: str, file: str | None) -> tuple[np.ndarray, str]:
    arr = np.asarray(values)
    dtype_name = arr.dtype.name
    if arr.dtype.kind == "b" or arr.dtype.kind in "cOUSMm" or (
        arr.dtype.kind == "V" and dtype_name not in _WIDENABLE_NAMES
    ):
        raise InputError(f"non-numeric dtype {dtype_name}; expected real floating-point values",
                         file=file, key=name)
    if arr.ndim == 0 or arr.size == 0:
        raise InputError(f"empty array (shape {arr.shape})", file=file, key=name)
    if arr.ndim > 2:
        raise InputError(f"{arr.ndim} dimensions (shape {arr.shape}); expected [V], [B, V] or, in "
                         "a file, [B, T, V]",
                         file=file, key=name)
    wide = arr.astype(np.float64)
    if wide.ndim == 1:
        wide = wide[None, :]
    return np.ascontiguousarray(wide), dtype_name


def validate_rows(values, kind: str, *, name: str, file: str | None = None,
                  renormalize: bool = False, storage_dtype: str | None = None) -> LogProbRows:
    """Validate one array of probabilities or logits, shape [V] or [B, V].

    Logits may be any real numbers or -inf (zero mass); each row becomes log_softmax(row).
    Probabilities must be finite, >= 0 and sum to 1 within `sum_tolerance(dtype, V)` (any positive
    sum with `renormalize`); each row becomes log(p) - log(sum p).
    """
    if kind not in (PROBS, LOGITS):
        raise ValueError(f"kind must be {PROBS!r} or {LOGITS!r}")
    x, dtype_name = _as_float64_2d(values, name, file)
    dtype_name = storage_dtype or dtype_name
    n_rows = x.shape[0]
    errors: list[str | None] = [None] * n_rows

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kind == LOGITS:
            log_p = _log_softmax_in_place(x, errors)
        else:
            nan_rows = np.isnan(x).any(axis=1)
            posinf_rows = np.isposinf(x).any(axis=1)
            neginf_rows = np.isneginf(x).any(axis=1)
            negative_rows = (x < 0).any(axis=1)
            bad = nan_rows | posinf_rows | neginf_rows | negative_rows
            sums = np.where(bad[:, None], 1.0, x).sum(axis=1)
            tol = sum_tolerance(dtype_name, x.shape[1])
            for b in range(n_rows):
                if nan_rows[b]:
                    errors[b] = _first_bad(x[b], np.isnan, "NaN")
                elif posinf_rows[b] or neginf_rows[b]:
                    errors[b] = _first_bad(x[b], np.isinf, "infinite probability")
                elif negative_rows[b]:
                    errors[b] = _first_bad(x[b], lambda r: r < 0, "negative probability")
                elif not sums[b] > 0:
                    errors[b] = "all probabilities are 0 (no mass)"
                elif not renormalize and abs(sums[b] - 1.0) > tol:
                    errors[b] = (f"probabilities sum to {sums[b]:.9g}, off from 1 by more than "
                                 f"{tol:.1e} (the tolerance for {dtype_name}); pass --renormalize "
                                 "to rescale")
            good = np.array([e is None for e in errors])
            safe = np.where(good[:, None], x, 1.0)
            log_p = np.log(safe) - np.log(safe.sum(axis=1, keepdims=True))
    bad_rows = np.array([e is not None for e in errors])
    if bad_rows.any():
        log_p[bad_rows] = -np.log(x.shape[1])
    return LogProbRows(log_p=log_p, row_errors=errors, storage_dtype=dtype_name)


def _log_softmax_in_place(x: np.ndarray, errors: list) -> np.ndarray:
    """Logit rows -> log_softmax, overwriting `x` (validate_rows' own float64 copy), in
    cache-sized blocks of rows: one finiteness scan per block, and only rows that are not all
    finite are looked at further (NaN, +inf, or no finite logit: `errors[b]` is set and the row
    becomes 0 before the softmax, a placeholder). Same operations as
    `shifted = x - max(x); shifted - logsumexp(shifted)`, so the same numbers."""
    buf = None
    for block in row_blocks(*x.shape):
        xb = x[block]
        finite = np.isfinite(xb).all(axis=1)
        if not finite.all():
            for i in np.flatnonzero(~finite):
                b = block.start + i
                row = xb[i]
                if np.isnan(row).any():
                    errors[b] = _first_bad(row, np.isnan, "NaN")
                elif np.isposinf(row).any():
                    errors[b] = _first_bad(row, np.isposinf, "+inf logit")
                elif not np.isfinite(row).any():
                    errors[b] = "every logit is -inf (no probability mass)"
                if errors[b] is not None:
                    row[:] = 0.0
        # Subtract the row's maximum first: x - logsumexp(x) directly would carry a rounding
        # error of eps * |x| (large for shifted logits), x - max(x) only eps * |log p|.
        xb -= np.max(xb, axis=1, keepdims=True)
        if buf is None or buf.shape != xb.shape:
            buf = np.empty_like(xb)
        xb -= _logsumexp_2d(xb, buf)[:, None]
    return x


def _first_bad(row: np.ndarray, predicate, what: str) -> str:
    idx = np.flatnonzero(predicate(row))
    return f"{what} at column {int(idx[0])}" + (f" (and {idx.size - 1} more)" if idx.size > 1 else "")


def validate_pair(theta, target, kind: str, *, names: tuple[str, str] = ("pi_theta", "pi_t"),
                  file: str | None = None, renormalize: bool = False,
                  storage_dtype: str | None = None) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Validate both sides of a pair; shapes must match exactly (never broadcast).

    Returns (log_pi_theta, log_pi_t, row_errors) with float64 arrays of shape [B, V]."""
    a = np.asarray(theta)
    b = np.asarray(target)
    if a.shape != b.shape:
        raise InputError(f"shape {a.shape} of '{names[0]}' differs from shape {b.shape} of "
                         f"'{names[1]}' (rows are never broadcast)", file=file, key=names[1])
    options = dict(file=file, renormalize=renormalize, storage_dtype=storage_dtype)
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
    errors: list[str | None] = []
    for e_theta, e_t in zip(rows_theta.row_errors, rows_t.row_errors):
        if e_theta is not None:
            errors.append(f"key '{names[0]}': {e_theta}")
        elif e_t is not None:
            errors.append(f"key '{names[1]}': {e_t}")
        else:
            errors.append(None)
    return rows_theta.log_p, rows_t.log_p, errors
