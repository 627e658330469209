"""The torch backend: device, dtype and chunking around `core.kernel`, the one implementation.

The mathematics -- validation (`core.validation.normalise_rows`), classification, the safeguarded
Newton / Halley iteration and the diagnostics (`core.kernel`) -- is the numpy solver's own code,
written over the array API and run here on torch tensors. What this module adds:

- rows of any leading shape [..., V] (numpy arrays or tensors of any float dtype, bfloat16
  included) flattened to [N, V] in C order and moved to the device in chunks whose temporaries
  (about `ARRAYS_PER_ROW` arrays of [rows, V]) fit `max_memory_bytes` (on CPU also capped at
  cache size, like numpy's row blocks);
- the dtype policy: each chunk is prepared in float64 when the inputs or the compute dtype are
  float64, else in float32; the normalisers are accumulated in float64 either way and, in float32,
  kept apart from the logits (see `core.kernel`'s module doc: a float32 logsumexp alone is off by
  ~1.6e-6, which moved alpha by 1.5e-5 on the real SmolLM2 rows); the iteration's [rows, V]
  arrays are in the compute dtype, every per-row number float64 on the host;
- torch's intra-op threads on CPU (one by default: chunks are cache-sized, and OpenMP threads
  spinning on a busy machine made a solve 30x slower in our measurements).

Everything runs under `torch.no_grad()`: no autograd graph is built or kept.
"""

from __future__ import annotations

import math

import numpy as np

from geomix_cli.backends import DEFAULT_MAX_MEMORY, import_torch, resolve_device
from geomix_cli.core import kernel
from geomix_cli.core.arrays import namespace
from geomix_cli.core.solvers import AlphaSolution
from geomix_cli.core.validation import (KINDS, LOGITS, normalise_rows, pair_errors,
                                        tolerance_for)
from geomix_cli.errors import InputError

CPU_BLOCK_ELEMENTS = 1 << 18  # a few [rows, V] arrays of this size stay in a CPU's cache
# live [rows, V] arrays at the peak of a chunk: both prepared sides, l, log_base, the two
# scratch buffers of a pass, the compacted l / log_base of the rows still iterating, and a
# temporary of the preparation (an estimate, see tests/test_torch_backend.py)
ARRAYS_PER_ROW = 10


def compute_dtype_of(torch, compute_dtype):
    """torch.float32 / torch.float64 for a name or a torch dtype; InputError otherwise."""
    if isinstance(compute_dtype, torch.dtype):
        dtype = compute_dtype
    else:
        names = {"float32": torch.float32, "float64": torch.float64, "fp32": torch.float32,
                 "fp64": torch.float64, "double": torch.float64, "float": torch.float32}
        if str(compute_dtype) not in names:
            raise InputError(f"compute dtype '{compute_dtype}' is not supported; use float32 or "
                             "float64 (inputs may be float16/bfloat16: they are widened)")
        dtype = names[str(compute_dtype)]
    if dtype not in (torch.float32, torch.float64):
        raise InputError(f"compute dtype {dtype} is too narrow: accumulation is in float32 at "
                         "least (float16/bfloat16 inputs are widened)")
    return dtype


def _rows_of(values, torch):
    """[..., V] -> [N, V] (numpy stays numpy, a tensor stays a tensor) and the leading shape."""
    if isinstance(values, torch.Tensor):
        if values.dim() == 0:
            raise InputError("expected [V] or [..., V] values, got a scalar")
        lead = tuple(values.shape[:-1])
        return values.reshape(-1, values.shape[-1]), lead
    arr = np.asarray(values)
    if arr.ndim == 0:
        raise InputError("expected [V] or [..., V] values, got a scalar")
    if arr.dtype.kind not in "fiu":
        raise InputError(f"non-numeric dtype {arr.dtype.name}; expected floating-point values")
    return arr.reshape(-1, arr.shape[-1]), tuple(arr.shape[:-1])


def _chunk(values, start: int, stop: int, torch, device, dtype):
    """Rows [start, stop) on the device in `dtype`, always a copy of our own (validation
    normalises it in place: never the caller's tensor)."""
    part = values[start:stop]
    if not isinstance(part, torch.Tensor):
        part = torch.from_numpy(np.ascontiguousarray(part))
    return part.to(device=device, dtype=dtype, copy=True)


def chunk_rows_for(vocab: int, itemsize: int, max_memory_bytes: int) -> int:
    """Rows per chunk so that ARRAYS_PER_ROW [rows, V] arrays fit the budget (at least 1)."""
    return max(1, int(max_memory_bytes) // (ARRAYS_PER_ROW * itemsize * max(vocab, 1)))


def _plan(torch, theta_rows, target_rows, device, compute_dtype, max_memory_bytes):
    """(device, compute dtype, preparation dtype, rows per chunk, budget, itemsize)."""
    dev = resolve_device(device)
    dtype = compute_dtype_of(torch, compute_dtype)
    n_rows, vocab = int(theta_rows.shape[0]), int(theta_rows.shape[1])
    if tuple(theta_rows.shape) != tuple(target_rows.shape):
        raise InputError(f"shapes differ: {tuple(theta_rows.shape)} vs "
                         f"{tuple(target_rows.shape)} (rows are never broadcast)")
    if vocab == 0 or n_rows == 0:
        raise InputError(f"empty input (shape {tuple(theta_rows.shape)})")
    budget = int(max_memory_bytes) if max_memory_bytes else DEFAULT_MAX_MEMORY
    input_dtype = str(getattr(theta_rows, "dtype", "")).replace("torch.", "")
    prep_dtype = torch.float64 if (dtype == torch.float64 or input_dtype == "float64") \
        else torch.float32
    itemsize = torch.finfo(prep_dtype).bits // 8
    step = chunk_rows_for(vocab, itemsize, budget)
    if dev.type == "cpu":  # on CPU, chunks that stay in cache are faster (and within budget)
        step = min(step, max(1, CPU_BLOCK_ELEMENTS // vocab))
    return dev, dtype, prep_dtype, step, budget, itemsize, input_dtype


def _validated_chunks(torch, theta_rows, target_rows, *, dev, prep_dtype, step, kind,
                      storage_dtype, renormalize, names, hint, row_errors=None):
    """Per chunk of rows on the device: (start, stop, xp, z_theta, z_t, lse_theta, lse_t,
    errors), validated by `core.validation.normalise_rows` (log-probabilities when prepared in
    float64, else shifted logits with float64 normalisers)."""
    n_rows, vocab = int(theta_rows.shape[0]), int(theta_rows.shape[1])
    options = dict(kind=kind, tolerance=tolerance_for(kind, storage_dtype, vocab),
                   dtype_name=storage_dtype, renormalize=renormalize,
                   normalise=prep_dtype == torch.float64)
    if hint is not None:
        options["hint"] = hint
    for start in range(0, n_rows, step):
        stop = min(n_rows, start + step)
        x = _chunk(theta_rows, start, stop, torch, dev, prep_dtype)
        y = _chunk(target_rows, start, stop, torch, dev, prep_dtype)
        xp = namespace(x)
        z_theta, lse_theta, errors_theta = normalise_rows(xp, x, **options)
        z_t, lse_t, errors_t = normalise_rows(xp, y, **options)
        errors = pair_errors(errors_theta, errors_t, names)
        if row_errors is not None:
            errors = [g if g is not None else e for g, e in zip(row_errors[start:stop], errors)]
        yield start, stop, xp, z_theta, z_t, lse_theta, lse_t, errors


def prepared_chunks(theta_rows, target_rows, *, kind: str = LOGITS, device: str = "cpu",
                    compute_dtype="float32", max_memory_bytes: int | None = None,
                    renormalize: bool = False, storage_dtype: str | None = None,
                    names: tuple[str, str] = ("pi_theta", "pi_t"), hint: str | None = None):
    """(start, stop, kernel.Prepared, errors) per device chunk of [N, V] rows (tensors or numpy
    arrays), for the family at a given alpha (`geomix_cli.api`). Invalid rows are placeholders
    (uniform) with their reason in `errors`. Under torch.no_grad()."""
    torch = import_torch()
    dev, dtype, prep_dtype, step, _, _, input_dtype = _plan(
        torch, theta_rows, target_rows, device, compute_dtype, max_memory_bytes)
    with torch.no_grad():
        for start, stop, xp, z_theta, z_t, lse_theta, lse_t, errors in _validated_chunks(
                torch, theta_rows, target_rows, dev=dev, prep_dtype=prep_dtype, step=step,
                kind=kind, storage_dtype=storage_dtype or input_dtype, renormalize=renormalize,
                names=names, hint=hint):
            with kernel.ignore_fp(xp):
                prep = kernel.prepare_pair(xp, z_theta, z_t, lse_theta, lse_t, work_dtype=dtype,
                                           end_points=False)
            yield start, stop, prep, errors


def solve_alpha_torch(log_pi_theta, log_pi_t, *, method: str = "newton", device: str = "cpu",
                      compute_dtype="float32", max_memory_bytes: int | None = None,
                      row_errors: list[str | None] | None = None, kind: str = LOGITS,
                      xtol: float | None = None, max_iter: int = 60,
                      threads: int | None = 1, diagnostics: bool = False,
                      renormalize: bool = False, storage_dtype: str | None = None,
                      names: tuple[str, str] = ("pi_theta", "pi_t"),
                      hint: str | None = None):
    """alpha* per row with torch on `device`; returns the numpy solvers' `AlphaSolution` (or, with
    `diagnostics`, the `RowDiagnostics` that `core.diagnose` would give).

    log_pi_theta, log_pi_t: numpy arrays or torch tensors (any float dtype, bfloat16 included) of
      shape [V], [B, V] or [..., V] (leading axes are flattened to rows, in C order).
    kind: "logits" (default: any reals or -inf, each row log-softmaxed; log-probabilities are
      logits too), "logprobs" (rows whose logsumexp is off 0 by more than the dtype's tolerance are
      invalid), "probs" (each row must sum to 1 within the dtype's tolerance, or `renormalize`).
    method: "newton" (D' = -Var) or "halley" (also the third moment, same pass).
    compute_dtype: "float32" (default) or "float64" (or a torch dtype); agreement with the
      float64 numpy solve is about 1e-6 in alpha for float32, 1e-12 for float64.
    max_memory_bytes: budget for the chunk temporaries (default 1 GiB).
    threads: torch intra-op threads while solving on CPU (default 1); None leaves torch's setting
      alone. Restored afterwards.
    row_errors: per-row reasons a row is invalid (from io's validation); the values are still
      checked here (NaN, +inf, no mass, off sums) and the two reasons joined, io's first.
    Returns numpy arrays; `extra` records backend, device, compute dtype, chunking and the
    estimated temporaries."""
    torch = import_torch()
    if method not in ("newton", "halley"):
        raise InputError(f"the torch backend solves with newton or halley, not '{method}'")
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}, not '{kind}'")
    order = 3 if method == "halley" else 2
    theta_rows, lead = _rows_of(log_pi_theta, torch)
    target_rows, lead_t = _rows_of(log_pi_t, torch)
    if lead != lead_t:
        raise InputError(f"shapes differ: {tuple(getattr(log_pi_theta, 'shape', ()))} vs "
                         f"{tuple(getattr(log_pi_t, 'shape', ()))} (rows are never broadcast)")
    dev, dtype, prep_dtype, step, budget, itemsize, input_dtype = _plan(
        torch, theta_rows, target_rows, device, compute_dtype, max_memory_bytes)
    n_rows, vocab = int(theta_rows.shape[0]), int(theta_rows.shape[1])
    if row_errors is not None and len(row_errors) != n_rows:
        raise InputError(f"row_errors has {len(row_errors)} entries for {n_rows} rows")
    parts = []
    saved_threads = torch.get_num_threads()
    if dev.type == "cpu" and threads is not None and threads != saved_threads:
        torch.set_num_threads(int(threads))
    try:
        with torch.no_grad():
            for start, stop, xp, z_theta, z_t, lse_theta, lse_t, errors in _validated_chunks(
                    torch, theta_rows, target_rows, dev=dev, prep_dtype=prep_dtype, step=step,
                    kind=kind, storage_dtype=storage_dtype or input_dtype,
                    renormalize=renormalize, names=names, hint=hint, row_errors=row_errors):
                invalid = np.array([e is not None for e in errors], dtype=bool)
                parts.append(kernel.solve_block(
                    xp, z_theta, z_t, lse_theta, lse_t, invalid=invalid, row_errors=errors,
                    order=order, xtol=xtol, max_iter=max_iter, work_dtype=dtype,
                    diagnostics=diagnostics, row_offset=start))
    finally:
        if torch.get_num_threads() != saved_threads:
            torch.set_num_threads(saved_threads)
    from geomix_cli.core.solvers import _concat_rows

    rows = parts[0] if len(parts) == 1 else _concat_rows(parts)
    sol = AlphaSolution.from_rows(method, rows)
    sol.extra.update({
        "backend": "torch", "device": str(dev), "compute_dtype": str(dtype).replace("torch.", ""),
        "chunk_rows": step, "chunks": math.ceil(n_rows / step), "max_memory_bytes": budget,
        "temporaries_bytes_estimate": ARRAYS_PER_ROW * itemsize * vocab * min(step, n_rows),
        "row_shape": lead,
    })
    if not diagnostics:
        return sol
    from geomix_cli.core.diagnostics import RowDiagnostics

    return RowDiagnostics.from_rows(sol, rows)
