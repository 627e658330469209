"""The torch backend: classification + safeguarded Newton (or Halley) on D(alpha), in row chunks.

Same mathematics, statuses and messages as `core.solvers.classify_rows` / `solve_newton`:

    l = log pi_t - log pi_theta on S = supp(pi_theta) ∩ supp(pi_t),  log_base = log pi_t on S
    w(alpha) = exp(log_base - alpha l - peak),  D = sum w l / sum w,  D' = -Var_q(l)

Per chunk of rows: one pass normalises both sides (logsumexp), builds l and log_base, and gives
both end-point limits D(0+), D(1-) and the constant-l test (the classification); then each
Newton iterate is one pass (max, exp, three sums). Rows are processed in chunks so that the
chunk's temporaries (about `ARRAYS_PER_ROW` arrays of [rows, V] in the compute dtype) stay under
`max_memory_bytes`; nothing of size B x V is allocated beyond that.

Accumulation is in the compute dtype (float32 by default, float64 when asked; float16/bfloat16
inputs are widened chunk by chunk). Sums use torch's reductions (cascade summation on CPU, tree
reductions on CUDA), not BLAS dot products, whose plain float32 accumulation over 10^5 terms
would cost digits.

Stopping: like numpy, a row stops when the Newton correction |D/D'| <= xtol (default 1e-14 in
float64, 2 eps in float32) or when the bracket has collapsed; in addition a row stops when the
correction no longer shrinks (|step_k| >= |step_{k-1}| / 2 while below sqrt(eps)): it has reached
the rounding floor of the compute dtype and more passes cannot improve it. The returned alpha is
the last evaluated one (rounded to the compute dtype) and `residual` is D there, computed in the
compute dtype.
"""

from __future__ import annotations

import math

import numpy as np

from geomix_cli.backends import DEFAULT_MAX_MEMORY, import_torch, resolve_device
from geomix_cli.core.solvers import (DEGENERATE, DISJOINT, INVALID, NO_ROOT, OK, AlphaSolution,
                                     hermite_start)
from geomix_cli.errors import InputError

CPU_BLOCK_ELEMENTS = 1 << 18  # a few [rows, V] arrays of this size stay in a CPU's cache
ARRAYS_PER_ROW = 9  # live [rows, V] temporaries at the peak of a chunk (measured, see tests)


def _torch_dtype(torch, compute_dtype):
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
    part = values[start:stop]
    if not isinstance(part, torch.Tensor):
        part = torch.from_numpy(np.ascontiguousarray(part))
    return part.to(device=device, dtype=dtype, non_blocking=True)


def chunk_rows_for(vocab: int, itemsize: int, max_memory_bytes: int) -> int:
    """Rows per chunk so that ARRAYS_PER_ROW [rows, V] arrays fit the budget (at least 1)."""
    return max(1, int(max_memory_bytes) // (ARRAYS_PER_ROW * itemsize * max(vocab, 1)))


def solve_alpha_torch(log_pi_theta, log_pi_t, *, method: str = "newton", device: str = "cpu",
                      compute_dtype="float32", max_memory_bytes: int | None = None,
                      row_errors: list[str | None] | None = None, kind: str = "logits",
                      xtol: float | None = None, max_iter: int = 60,
                      threads: int | None = 1) -> AlphaSolution:
    """alpha* per row with torch on `device`; returns the numpy solvers' `AlphaSolution`.

    log_pi_theta, log_pi_t: numpy arrays or torch tensors (any float dtype, bfloat16 included) of
      shape [V], [B, V] or [..., V] (leading axes are flattened to rows, in C order). With
      kind="logits" (default) they are logits or log-probabilities (each row is log-softmaxed);
      with kind="probs", probabilities (each row is renormalised; 0 is an exact zero).
    method: "newton" (D' = -Var) or "halley" (also the third moment, same pass).
    compute_dtype: "float32" (default) or "float64" (or a torch dtype); agreement with the
      float64 numpy solve is about 1e-6 in alpha for float32, 1e-12 for float64.
    max_memory_bytes: budget for the chunk temporaries (default 1 GiB).
    threads: torch intra-op threads while solving on CPU (default 1: the chunks are cache-sized,
      too small to split, and OpenMP threads spinning on a busy machine made a solve 30x slower
      in our measurements); None leaves torch's setting alone. Restored afterwards.
    row_errors: per-row reasons a row is invalid (from io's validation); None checks here for
      NaN, +inf and rows without mass.
    Returns an AlphaSolution with numpy arrays; `extra` records backend, device, compute dtype,
    chunking and the estimated temporaries."""
    torch = import_torch()
    if method not in ("newton", "halley"):
        raise InputError(f"the torch backend solves with newton or halley, not '{method}'")
    if kind not in ("logits", "probs"):
        raise InputError(f"kind must be 'logits' or 'probs', not '{kind}'")
    dev = resolve_device(device)
    dtype = _torch_dtype(torch, compute_dtype)
    order = 3 if method == "halley" else 2
    eps = float(torch.finfo(dtype).eps)
    if xtol is None:
        xtol = 1e-14 if dtype == torch.float64 else 2.0 * eps
    theta_rows, lead = _rows_of(log_pi_theta, torch)
    target_rows, lead_t = _rows_of(log_pi_t, torch)
    if tuple(theta_rows.shape) != tuple(target_rows.shape) or lead != lead_t:
        raise InputError(f"shapes differ: {tuple(getattr(log_pi_theta, 'shape', ()))} vs "
                         f"{tuple(getattr(log_pi_t, 'shape', ()))} (rows are never broadcast)")
    n_rows, vocab = int(theta_rows.shape[0]), int(theta_rows.shape[1])
    if vocab == 0 or n_rows == 0:
        raise InputError(f"empty input (shape {tuple(theta_rows.shape)})")
    if row_errors is not None and len(row_errors) != n_rows:
        raise InputError(f"row_errors has {len(row_errors)} entries for {n_rows} rows")
    budget = int(max_memory_bytes) if max_memory_bytes else DEFAULT_MAX_MEMORY
    wide_input = str(getattr(theta_rows, "dtype", "")).endswith("float64")
    prep_dtype = torch.float64 if (dtype == torch.float64 or wide_input) else torch.float32
    itemsize = torch.finfo(prep_dtype).bits // 8
    step = chunk_rows_for(vocab, itemsize, budget)
    if dev.type == "cpu":  # on CPU, chunks that stay in cache are faster (and within budget)
        step = min(step, max(1, CPU_BLOCK_ELEMENTS // vocab))

    out = {
        "alpha": np.full(n_rows, np.nan), "residual": np.full(n_rows, np.nan),
        "iterations": np.zeros(n_rows, dtype=np.int64),
        "evaluations": np.zeros(n_rows, dtype=np.int64),
        "d_at_0": np.full(n_rows, np.nan), "d_at_1": np.full(n_rows, np.nan),
    }
    status = np.full(n_rows, OK, dtype=object)
    message = [""] * n_rows
    saved_threads = torch.get_num_threads()
    if dev.type == "cpu" and threads is not None and threads != saved_threads:
        torch.set_num_threads(int(threads))
    try:
        _run_chunks(torch, theta_rows, target_rows, row_errors, n_rows, step, dev, prep_dtype,
                    dtype, kind, order, xtol, max_iter, eps, out, status, message)
    finally:
        if torch.get_num_threads() != saved_threads:
            torch.set_num_threads(saved_threads)
    sol = AlphaSolution(method=method, alpha=out["alpha"], residual=out["residual"],
                        iterations=out["iterations"], evaluations=out["evaluations"],
                        status=status, message=message, d_at_0=out["d_at_0"],
                        d_at_1=out["d_at_1"])
    sol.extra.update({
        "backend": "torch", "device": str(dev), "compute_dtype": str(dtype).replace("torch.", ""),
        "chunk_rows": step, "chunks": math.ceil(n_rows / step), "max_memory_bytes": budget,
        "temporaries_bytes_estimate": ARRAYS_PER_ROW * itemsize * vocab * min(step, n_rows),
        "row_shape": lead,
    })
    return sol


def _run_chunks(torch, theta_rows, target_rows, row_errors, n_rows, step, dev, prep_dtype, dtype,
                kind, order, xtol, max_iter, eps, out, status, message):
    with torch.no_grad():
        for start in range(0, n_rows, step):
            stop = min(n_rows, start + step)
            x = _chunk(theta_rows, start, stop, torch, dev, prep_dtype)
            y = _chunk(target_rows, start, stop, torch, dev, prep_dtype)
            errs = None if row_errors is None else row_errors[start:stop]
            _solve_chunk(torch, x, y, errs, kind, order, xtol, max_iter, eps,
                         slice(start, stop), out, status, message, dtype)
            del x, y


def _moments(torch, l, log_base, alpha_col, order: int):
    """(log Z, mean, var, third|None) of l under q ∝ exp(log_base - alpha l), one pass."""
    s = torch.addcmul(log_base, l, alpha_col, value=-1.0)
    peak = s.amax(dim=-1, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    w = s.sub_(peak).exp_()
    z = w.sum(dim=-1)
    t = torch.mul(w, l)
    mean = t.sum(dim=-1) / z
    torch.sub(l, mean[:, None], out=t)  # t = l - mean
    if order >= 3:
        dev2 = t * t
        var = (dev2 * w).sum(dim=-1) / z
        third = (dev2.mul_(t).mul_(w)).sum(dim=-1) / z
        del dev2
    else:
        var = t.square_().mul_(w).sum(dim=-1) / z
        third = None
    log_z = peak[:, 0] + torch.log(z)
    return log_z, mean, var, third


def _lse64(torch, v, peak):
    """Row logsumexp with the sum of exponentials accumulated in float64 (`peak`: the row max,
    finite for every row that reaches here)."""
    total = torch.exp(v - peak[:, None]).sum(dim=-1, dtype=torch.float64)
    return peak.to(torch.float64) + torch.log(total)


def _solve_chunk(torch, x, y, errs, kind, order, xtol, max_iter, eps, where, out, status,
                 message, work_dtype):
    """x, y: the chunk in the preparation dtype (float64 when the inputs or the compute dtype are
    float64, else float32); l and log_base are then kept in `work_dtype` for the iterations."""
    n = x.shape[0]
    # ---- one pass: validity, normalisation, l and log_base, both end points -------------------
    if kind == "probs":
        neg = (x < 0).any(dim=-1) | (y < 0).any(dim=-1)
        x = torch.log(x)
        y = torch.log(y)
    else:
        neg = torch.zeros(n, dtype=torch.bool, device=x.device)
    # one max per row tells NaN (propagates), +inf, or no mass (-inf) apart
    peak_x, peak_y = x.amax(dim=-1), y.amax(dim=-1)
    nan = torch.isnan(peak_x) | torch.isnan(peak_y)
    posinf = torch.isposinf(peak_x) | torch.isposinf(peak_y)
    nomass = torch.isneginf(peak_x) | torch.isneginf(peak_y)
    bad = nan | posinf | nomass | neg
    if bool(bad.any()):
        x = torch.where(bad[:, None], torch.zeros_like(x), x)
        y = torch.where(bad[:, None], torch.zeros_like(y), y)
        peak_x, peak_y = x.amax(dim=-1), y.amax(dim=-1)
    # Normalisers in float64 (a float32 logsumexp is off by ~1e-6, which shifts D and so alpha
    # by 1e-6 / Var). Only the difference c = lse_t - lse_theta enters l; it is applied as
    # c_hi (rounded to the working dtype, per token) + c_lo (a constant, corrected on D in float64).
    lse_x = _lse64(torch, x, peak_x)
    lse_y = _lse64(torch, y, peak_y)
    c = lse_y - lse_x
    c_hi = c.to(x.dtype)
    c_lo = c - c_hi.to(torch.float64)
    # log_base only needs to be log pi_t up to a per-row constant (q is normalised)
    shift_y = peak_y[:, None]
    dense = bool((x.amin() > -math.inf) & (y.amin() > -math.inf))
    if dense:  # no zero probability anywhere in the chunk: S is every token (the usual case)
        has_support = torch.ones(n, dtype=torch.bool, device=x.device)
        same_support = has_support
        # |log pi_theta| + |log pi_t| = lse_x + lse_y - (x + y) since log p <= 0
        scale = (lse_x + lse_y) - (x + y).amin(dim=-1).to(torch.float64)
        l = (y - x).sub_(c_hi[:, None]).to(work_dtype)
        del x
        log_base = (y - shift_y).to(work_dtype)
        del y
        l_max, l_min = l.amax(dim=-1), l.amin(dim=-1)
        spread = l_max - l_min
        level = torch.maximum(l_max.abs(), l_min.abs())
    else:
        fin_x, fin_y = torch.isfinite(x), torch.isfinite(y)
        support = fin_x & fin_y
        same_support = (fin_x == fin_y).all(dim=-1)
        del fin_x, fin_y
        scale = torch.where(support, (x - lse_x[:, None].to(x.dtype)).abs()
                            + (y - lse_y[:, None].to(y.dtype)).abs(),
                            torch.zeros_like(x)).amax(dim=-1)
        l = torch.where(support, (y - x).sub_(c_hi[:, None]), torch.zeros_like(x)).to(work_dtype)
        del x
        log_base = torch.where(support, y - shift_y, torch.full_like(y, -math.inf)).to(work_dtype)
        del y
        has_support = support.any(dim=-1)
        spread = (torch.where(support, l, torch.full_like(l, -math.inf)).amax(dim=-1)
                  - torch.where(support, l, torch.full_like(l, math.inf)).amin(dim=-1))
        level = torch.where(support, l.abs(), torch.zeros_like(l)).amax(dim=-1)
        del support
    zeros = torch.zeros(n, 1, dtype=l.dtype, device=l.device)
    _, d0, v0, _ = _moments(torch, l, log_base, zeros, 2)
    _, d1, v1, _ = _moments(torch, l, log_base, zeros + 1.0, 2)
    d0 = d0.to(torch.float64) - c_lo
    d1 = d1.to(torch.float64) - c_lo
    tol = 64.0 * eps * (1.0 + scale)
    # D(0+), D(1-) "within rounding of 0": numpy's float64 tolerance in float64; in float32 the
    # rounding of D = E_q[l] is relative to l itself (l is built from differences of the inputs,
    # its constant part corrected in float64), so 64 eps32 max|l| -- a float32 solve cannot
    # resolve alpha for pairs closer than that (numpy in float64 may still report 'ok')
    tol_flat = tol if eps < 1e-10 else 64.0 * eps * level.to(torch.float64)
    precision = "float64" if eps < 1e-10 else "float32"

    host = {k: v.double().cpu().numpy() for k, v in dict(
        d0=d0, d1=d1, v0=v0, v1=v1, spread=spread, level=level, tol=tol,
        tol_flat=tol_flat).items()}
    has_support_h = has_support.cpu().numpy()
    same_support_h = same_support.cpu().numpy()
    bad_h = bad.cpu().numpy()
    why_bad = {"nan": nan.cpu().numpy(), "posinf": posinf.cpu().numpy(),
               "nomass": nomass.cpu().numpy(), "neg": neg.cpu().numpy()}
    rows = np.arange(where.start, where.stop)
    ok_local = np.zeros(n, dtype=bool)
    first_l = None
    for j, b in enumerate(rows):
        d_0, d_1 = host["d0"][j], host["d1"][j]
        if errs is not None and errs[j] is not None:
            status[b], message[b] = INVALID, errs[j]
            continue
        if errs is None and bad_h[j]:
            status[b] = INVALID
            message[b] = ("negative probability in the row" if why_bad["neg"][j] else
                          "NaN in the row" if why_bad["nan"][j] else
                          "+inf logit or probability in the row" if why_bad["posinf"][j] else
                          "no probability mass on one side")
            continue
        out["evaluations"][b] = 1
        out["d_at_0"][b], out["d_at_1"][b] = d_0, d_1
        if not has_support_h[j]:
            status[b] = DISJOINT
            out["d_at_0"][b] = out["d_at_1"][b] = np.nan
            message[b] = ("pi_theta and pi_t share no token with positive probability: Z = 0 for "
                          "every alpha in (0, 1), there is no q")
        elif (host["spread"][j] <= host["tol"][j] and host["level"][j] <= host["tol"][j]) or (
                abs(d_0) <= host["tol_flat"][j] and abs(d_1) <= host["tol_flat"][j]):
            # as core.solvers._status_codes: l ~ 0 on S, or D(0+) and D(1-) both within
            # rounding of 0 (D is monotone, so D is within rounding of 0 on all of (0, 1))
            status[b] = DEGENERATE
            if host["spread"][j] <= host["tol"][j]:
                message[b] = ("pi_theta = pi_t on the common support: every alpha gives the same q "
                              "and equal KLs, alpha* is not unique")
            else:
                message[b] = (f"pi_theta and pi_t are equal to within {precision} rounding: "
                              f"|KL(q||pi_theta) - KL(q||pi_t)| <= {host['tol_flat'][j]:.1e} for "
                              f"every alpha (D(0+) = {d_0:.3g}, D(1-) = {d_1:.3g}), alpha* is "
                              "not determined")
        elif host["spread"][j] <= host["tol"][j]:
            if first_l is None:
                first_l = l[torch.arange(n, device=l.device),
                            torch.isfinite(log_base).to(l.dtype).argmax(dim=-1)]
                first_l = first_l.double().cpu().numpy()
            status[b] = NO_ROOT
            message[b] = (f"l = log pi_t - log pi_theta is the constant {first_l[j]:.6g} "
                          "on the common support: q is the same for every alpha and the KLs "
                          "never meet")
        elif not (d_0 > 0.0 and d_1 < 0.0):
            status[b] = NO_ROOT
            sign = "<" if d_0 <= 0 else ">"
            why = "supports differ" if not same_support_h[j] else "numerically, within rounding,"
            message[b] = (f"{why} and D(alpha) = "
                          f"KL(q||pi_theta) - KL(q||pi_t) keeps one sign on (0, 1): "
                          f"KL(q||pi_theta) {sign} KL(q||pi_t) for every alpha "
                          f"(D(0+) = {d_0:.6g}, D(1-) = {d_1:.6g})")
        else:
            ok_local[j] = True
    if not ok_local.any():
        return
    # ---- Newton / Halley on the rows with a root -----------------------------------------------
    sel = torch.from_numpy(np.flatnonzero(ok_local)).to(l.device)
    if int(sel.numel()) < n:
        l = l.index_select(0, sel)
        log_base = log_base.index_select(0, sel)
    f64 = dict(dtype=torch.float64, device=l.device)
    d0 = d0.index_select(0, sel)
    d1 = d1.index_select(0, sel)
    c_lo = c_lo.index_select(0, sel)
    m = int(sel.numel())
    lo = torch.zeros(m, **f64)
    hi = torch.ones(m, **f64)
    ok_idx = np.flatnonzero(ok_local)
    alpha = torch.from_numpy(hermite_start(host["d0"][ok_idx], host["d1"][ok_idx],
                                           host["v0"][ok_idx], host["v1"][ok_idx])).to(**f64)
    done = torch.zeros(m, dtype=torch.bool, device=l.device)
    final_alpha = torch.full((m,), math.nan, **f64)
    final_d = torch.full((m,), math.nan, **f64)
    iters = torch.zeros(m, dtype=torch.int64, device=l.device)
    prev_step = torch.full((m,), math.inf, **f64)
    last_step = torch.ones(m, **f64)     # rtsafe's dx, dxold (as core.solvers._newton_block)
    step_before = torch.ones(m, **f64)
    stall_level = math.sqrt(eps)
    for _ in range(max_iter):
        if bool(done.all()):
            break
        alpha_c = alpha.to(l.dtype)
        alpha_eval = alpha_c.to(torch.float64)
        _, mean, var, third = _moments(torch, l, log_base, alpha_c[:, None], order)
        d = mean.to(torch.float64) - c_lo
        v = var.to(torch.float64)
        live = ~done
        iters += live.to(torch.int64)
        lo = torch.where(live & (d > 0), alpha_eval, lo)
        hi = torch.where(live & (d < 0), alpha_eval, hi)
        if order == 3:
            t3 = third.to(torch.float64)
            newton = 2.0 * d * v / (2.0 * v * v + d * t3)
        else:
            newton = d / v
        candidate = alpha_eval + newton
        size = newton.abs()
        converged = ((d == 0) | (size <= xtol) | (hi - lo <= 2 * eps)
                     | ((size <= stall_level) & (size >= 0.5 * prev_step)))
        converged &= live
        bad_step = ~torch.isfinite(candidate) | (candidate <= lo) | (candidate >= hi)
        # a step not below half the step before last is creeping: bisect (rtsafe rule)
        slow = size > 0.5 * step_before
        candidate = torch.where(bad_step | slow, 0.5 * (lo + hi), candidate)
        step_before = torch.where(live, last_step, step_before)
        last_step = torch.where(live, (candidate - alpha_eval).abs(), last_step)
        final_alpha = torch.where(converged, alpha_eval, final_alpha)
        final_d = torch.where(converged, d, final_d)
        prev_step = torch.where(live, size, prev_step)
        done |= converged
        alpha = torch.where(done, alpha, candidate)
    idx = rows[np.flatnonzero(ok_local)]
    out["alpha"][idx] = final_alpha.cpu().numpy()
    out["residual"][idx] = final_d.cpu().numpy()
    iters_h = iters.cpu().numpy()
    out["iterations"][idx] = iters_h
    out["evaluations"][idx] += iters_h
    for j in np.flatnonzero(~done.cpu().numpy()):
        status[idx[j]] = "max-iter"
        message[idx[j]] = f"no convergence in {max_iter} iterations"
