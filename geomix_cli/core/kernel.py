"""The one implementation of the solver mathematics, written once over the array API standard.

numpy (the CLI, `geomix_cli.api` on arrays) and torch (`--device`, the API on tensors) run this same
code on a block of rows [n, V]; the batching around it (cache-sized row blocks on threads for numpy,
device chunks under a memory budget for torch) lives in `core.solvers` and
`backends.torch_backend`, the adapters (API, CLI) above those. Arrays are never named here: `xp` is
the inputs' namespace (`core.arrays.namespace`).

    l(y)        = log pi_t(y) - log pi_theta(y)         on S = supp(pi_theta) ∩ supp(pi_t)
    q_alpha     ∝ exp(log pi_t - alpha l)               (on S)
    D(alpha)    = E_q[l] = KL(q||pi_theta) - KL(q||pi_t),   D' = -Var_q(l)
    log Z(alpha)= log sum_S pi_t exp(-alpha l)

Per block:
- `prepare_pair` (in `core.prepare`): l and log_base = log pi_t on S, the support rules' numbers, and one pass
  (`passes.moments`) giving D and Var at the end points D(0+), D(1-) and, for short rows, at
  interior alphas of a grid that brackets the root (`rules.grid_size`);
- `row_status`, `row_messages`: the status of every row from those numbers (docs/derivation.md's support
  rules, `rules.status_code`; on the host);
- `newton`: safeguarded Newton / Halley on the rows with a root (`rules.hermite_start`,
  `rules.newton_update`), one pass per iterate;
- `family_at`, `entropies`, `log_q`, `log_weights`: the family at a given alpha;
- `solve_block`: all of it for one block.

Precision. The [n, V] arrays are in the *work dtype*: float64 for numpy, float32 or float64 on
torch. Every per-row number (alpha, the bracket, D, Var, log Z) is float64 on the host, where the
iteration's bookkeeping runs (one transfer per pass on a GPU). Inputs come either normalised
(float64 log-probabilities, `lse` None) or as shifted logits z with their float64 log-normalisers
lse (the float32 path: a float32 logsumexp is off by ~1e-6, which moves alpha by 1e-6 / Var). In the
second case only c = lse_t - lse_theta enters l: its part representable in the inputs' dtype is
subtracted from l, the rest (`shift`) from D in float64, and log pi_t = z_t - lse_t enters log Z as
a float64 constant. Where the supports coincide (float64 only) the constant rounding error of the
two log-normalisers is removed the same way (`recentring_constant`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from geomix_cli.core.arrays import host, host64, is_numpy, rmax, rsum, to_device_like
from geomix_cli.core.passes import moments, row_moments, scratch
# the preparation lives in core.prepare; its names are re-exported here, where callers find the
# rest of the implementation (kernel.prepare_pair, kernel.ignore_fp, ...)
from geomix_cli.core.prepare import (RECENTRE_MAX_ABS_L, Prepared,  # noqa: F401
                                     _host_dtype, _refuse_unnormalised, ignore_fp, prepare_pair,
                                     recentring_constant_rows, row_messages, row_status)
from geomix_cli.core.rules import (DEGENERATE, DISJOINT, GRID_ELEMENTS, INVALID,  # noqa: F401
                                   MASKED, MAX_ITER, NO_ROOT, OK, STATUSES, _RowArrays,
                                   _RowScalars, family_numbers, grid_size, hermite_start,
                                   newton_update, row_namespace)


# A one-row Newton pass after a step this small is expected to be the last (the next correction
# ~ M step^2, M = |Var'| / (2 Var), below xtol): `newton_one_row` evaluates the family's two other
# alphas with it. M is ~1 (median; 0.17-5.4 from the 10th to the 90th percentile on 480 random
# rows): 1e-7 wasted a three-alpha pass or needed a separate one on 23 of them, 1e-6 on 77.
FAMILY_STEP = 1e-7


# ------------------------------------------------------------------------------------------------
# the iteration

def start_bracket(prep: "Prepared", rows: np.ndarray):
    """(lo, hi, D(lo), D(hi), Var(lo), Var(hi)) per row: the first interval of the first pass's
    grid on which D changes sign (the whole [0, 1] with the end points only)."""
    d_grid, v_grid = prep.d_grid[:, rows], prep.v_grid[:, rows]
    k = np.maximum(np.argmax(d_grid <= 0.0, axis=0), 1)   # D(0+) > 0 > D(1-) on these rows
    cols = np.arange(rows.size)
    return (prep.grid[k - 1], prep.grid[k], d_grid[k - 1, cols], d_grid[k, cols],
            v_grid[k - 1, cols], v_grid[k, cols])


@dataclass
class NewtonResult:
    """Host arrays over the solved rows: alpha (the last evaluated), D and log Z there (exact
    evaluations, not extrapolations), iterations, and whether each row converged."""

    alpha: np.ndarray
    delta: np.ndarray
    log_z: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray


def newton(prep: Prepared, rows: np.ndarray, *, order: int = 2, xtol: float | None = None,
           max_iter: int = 60, iterates: dict | None = None, row_labels=None) -> NewtonResult:
    """Safeguarded Newton (order 2) or Halley (order 3) on D(alpha) for `rows` (each with a root).

    One pass per iterate gives D = E_q[l], D' = -Var_q(l) (and E_q[(l - D)^3] = D'' for Halley);
    the step is `newton_update`, the start `hermite_start` on the bracket of the first pass
    (`start_bracket`), so convergence is guaranteed. xtol: default 1e-14 in float64, 2 eps in
    float32. The returned alpha is the last evaluated one (rounded to the work dtype), so D and
    log Z there are exact evaluations. Rows that converge leave the arrays (compacted), so later
    passes only read the rest. The per-row rules run on the host: on arrays over rows, or on
    Python floats for a single row."""
    xp = prep.xp
    eps = prep.eps
    if xtol is None:
        xtol = 1e-14 if eps < 1e-10 else 2.0 * eps
    m = int(rows.size)
    l, log_base = prep.rows_of(rows)
    if prep.reuse:
        buf, tmp = scratch(xp, "buf", tuple(l.shape), l), scratch(xp, "tmp", tuple(l.shape), l)
    else:
        buf, tmp = xp.empty_like(l), xp.empty_like(l)
    work_np = _host_dtype(l)
    labels = rows if row_labels is None else row_labels[rows]
    if m == 1:
        return _newton_row(prep, int(rows[0]), l, log_base, buf, tmp, work_np,
                           order=order, xtol=xtol, max_iter=max_iter, iterates=iterates,
                           label=int(labels[0]))
    shift = prep.shift[rows]
    log_z_shift = prep.log_z_shift[rows]
    out = NewtonResult(alpha=np.full(m, np.nan), delta=np.full(m, np.nan),
                       log_z=np.full(m, np.nan), iterations=np.zeros(m, dtype=np.int64),
                       converged=np.zeros(m, dtype=bool))
    ns = _RowArrays
    lo, hi, d_lo, d_hi, v_lo, v_hi = start_bracket(prep, rows)
    alpha = hermite_start(ns, lo, hi, d_lo, d_hi, v_lo, v_hi)
    last_step, step_before = np.ones(m), np.ones(m)  # rtsafe's dx, dxold
    prev_size = np.full(m, np.inf)
    active = np.arange(m)
    for _ in range(max_iter):
        k = active.size
        a_eval = alpha.astype(work_np).astype(np.float64) if work_np is np.float32 else alpha
        raw = moments(xp, l, log_base, to_device_like(a_eval.astype(work_np, copy=False), l, xp),
                      order=order, buf=buf[:k], tmp=tmp[:k], supported=True, bounded=True)
        log_z, mean, var, *third = host64(*[r for r in raw if r is not None])
        d = mean - shift
        out.iterations[active] += 1
        if iterates is not None:
            for label, a_j, d_j in zip(labels[active], a_eval, d):
                iterates.setdefault(int(label), []).append((float(a_j), float(d_j)))
        lo, hi, candidate, converged, step, size = newton_update(
            ns, a_eval, d, var, third[0] if third else None, lo, hi, step_before, last_step,
            prev_size, xtol=xtol, eps=eps)
        step_before, last_step, prev_size = last_step, step, size
        if converged.any():
            done = active[converged]
            out.alpha[done] = a_eval[converged]
            out.delta[done] = d[converged]
            out.log_z[done] = (log_z[converged] + log_z_shift[converged]
                               + a_eval[converged] * shift[converged])
            out.converged[done] = True
            keep = np.flatnonzero(~converged)
            if keep.size == 0:
                break
            active, candidate, lo, hi = active[keep], candidate[keep], lo[keep], hi[keep]
            step_before, last_step, prev_size = step_before[keep], last_step[keep], prev_size[keep]
            shift, log_z_shift = shift[keep], log_z_shift[keep]
            keep_dev = to_device_like(keep, l, xp)
            l, log_base = l[keep_dev], log_base[keep_dev]
        alpha = candidate
    return out


def _newton_row(prep: Prepared, row: int, l, log_base, buf, tmp, work_np, *, order, xtol,
                max_iter, iterates, label) -> NewtonResult:
    """`newton` for a block's single row: `newton_one_row` on its numbers."""
    alpha, d, log_z, iterations, converged = newton_one_row(
        prep.xp, l, log_base, buf, tmp, work_np, prep.grid, prep.d_grid[:, row].tolist(),
        prep.v_grid[:, row].tolist(), float(prep.shift[row]), float(prep.log_z_shift[row]),
        prep.eps, order=order, xtol=xtol, max_iter=max_iter, iterates=iterates, label=label)
    return NewtonResult(alpha=np.array([alpha]), delta=np.array([d]), log_z=np.array([log_z]),
                        iterations=np.array([iterations], dtype=np.int64),
                        converged=np.array([converged]))


def newton_one_row(xp, l, log_base, buf, tmp, work_np, grid, d_grid: list, v_grid: list,
                   shift: float, log_z_shift: float, eps: float, *, order: int, xtol: float,
                   max_iter: int, iterates: dict | None = None, label: int = 0,
                   fused: bool = False, family: dict | None = None):
    """`newton` for one row [1, V], its bookkeeping on Python floats (the same rules, start and
    steps as over arrays: `hermite_start`, `newton_update` on `_RowScalars`).

    grid, d_grid, v_grid: the first pass's alphas and D, Var there (floats); shift, log_z_shift:
    as in `Prepared`; fused: buf is `moments`' fused scratch ((order + 1, 1, V); tmp unused).
    family: a dict to receive the raw log Z at 2 - alpha and -alpha of the returned alpha
    (keys "above", "below"; float64 numpy rows in the fused layout only): a pass expected to be
    the last (the step before it below FAMILY_STEP, so Newton's quadratic convergence puts the
    next correction under xtol) evaluates those two alphas with it, in the same numpy calls; the
    dict stays empty when the last pass was not expected.
    Returns (alpha, D, log Z, iterations, converged) as Python numbers; alpha, D and log Z are
    NaN when the row did not converge."""
    ns = _RowScalars
    k = 1
    while d_grid[k] > 0.0:                       # the first grid point past the root
        k += 1
    lo, hi = float(grid[k - 1]), float(grid[k])
    alpha = hermite_start(ns, lo, hi, d_grid[k - 1], d_grid[k], v_grid[k - 1], v_grid[k])
    last_step = step_before = 1.0
    prev_size = math.inf
    iterations = 0
    converged = False
    a_eval = d = log_z = math.nan
    third = None
    # one float64 numpy row in the fused layout: the lean pass (the same bits, fewer calls)
    lean = fused and work_np is np.float64 and isinstance(l, np.ndarray)
    if lean:
        l_row, base_row, buf_row = l[0], log_base[0], buf[:, 0]
    point = None
    family_buf = None
    if family is not None and lean:
        family_buf = np.empty((3 + order, l.shape[-1]))
    for _ in range(max_iter):
        raw = None
        family_now = None
        if lean:
            a_eval = alpha                       # a float64 already
            if family_buf is not None and last_step <= FAMILY_STEP:
                raw = row_moments(l_row, base_row, np.array([[a_eval], [2.0 - a_eval],
                                                             [-a_eval]]), family_buf, order)
                if raw is not None:              # the moments at a_eval: row_moments' bits
                    family_now = raw[4][1:]
            if raw is None:
                raw = row_moments(l_row, base_row, a_eval, buf_row, order)
        if raw is None:
            if point is None:
                point = np.empty(1, dtype=work_np)
            point[0] = alpha
            a_eval = float(point[0])             # alpha rounded to the work dtype
            # (a lean pass declined: Z out of range, so this one may take log 0 before it redoes
            # the pass with the shift; the one-row lane runs outside the blocks' ignore_fp)
            with ignore_fp(xp):
                raw = moments(xp, l, log_base, to_device_like(point, l, xp), order=order,
                              buf=buf, tmp=tmp, supported=True, bounded=True, fused=fused)
            raw = [float(v[0]) for v in host64(*raw[:order + 1])] + [None] * (3 - order)
        log_z, d, var, third = raw[0], raw[1] - shift, raw[2], raw[3]
        iterations += 1
        if iterates is not None:
            iterates.setdefault(label, []).append((a_eval, d))
        lo, hi, alpha, converged, step, size = newton_update(
            ns, a_eval, d, var, third, lo, hi, step_before, last_step, prev_size, xtol=xtol,
            eps=eps)
        step_before, last_step, prev_size = last_step, step, size
        if converged:
            if family_now is not None:
                family["above"], family["below"] = family_now
            break
    if not converged:
        return math.nan, math.nan, math.nan, iterations, False
    return a_eval, d, log_z + log_z_shift + a_eval * shift, iterations, True


# ------------------------------------------------------------------------------------------------
# the family at a given alpha


FAMILY_FIELDS = ("log_z", "delta", "kl_q_theta", "kl_q_t", "ess_theta", "ess_t")


def family_at(prep: Prepared, rows: np.ndarray, alpha: np.ndarray, *, known=None) -> dict:
    """log Z, D, KL(q||pi_theta), KL(q||pi_t), ESS_theta(q), ESS_t(q) at one alpha per row.

    For alpha in (0, 1), on S:  KL(q||pi_theta) = (1 - alpha) D - log Z,  KL(q||pi_t) = -alpha D -
    log Z, and ESS_pi(q) = 1 / sum pi^2 / q = 1 / (Z(alpha) Z(2 - alpha)) for pi_theta,
    1 / (Z(alpha) Z(-alpha)) for pi_t (log Z at both in one pass), or 0 when pi puts mass outside
    S (where q = 0). At alpha = 0 and 1 the family is pi_t and pi_theta themselves (possibly with
    mass outside S): computed directly (KLs may be +inf). `known`: (log_z, delta) already
    evaluated at these alphas (by the iteration's last pass), so that pass is not repeated."""
    k = int(rows.size)
    alpha = np.asarray(alpha, dtype=np.float64)
    interior = (alpha > 0.0) & (alpha < 1.0)
    if interior.all():
        return _family_interior(prep, rows, alpha, known)
    out = {name: np.full(k, np.nan) for name in FAMILY_FIELDS}
    inner = np.flatnonzero(interior)
    if inner.size:
        part = _family_interior(prep, rows[inner], alpha[inner],
                                None if known is None else tuple(v[inner] for v in known))
        for name in FAMILY_FIELDS:
            out[name][inner] = part[name]
    ends = np.flatnonzero(~interior & np.isfinite(alpha))
    for j, value in zip(ends, _end_points(prep, rows[ends], alpha[ends])):
        for name in FAMILY_FIELDS:
            out[name][j] = value[name]
    return out


def _family_interior(prep: Prepared, rows: np.ndarray, a: np.ndarray, known) -> dict:
    xp = prep.xp
    l, log_base = prep.rows_of(rows)
    supported = bool(prep.has_support[rows].all())
    work_np = _host_dtype(l)
    if known is None:
        raw_log_z, mean, _, _ = moments(xp, l, log_base, to_device_like(a.astype(work_np), l, xp),
                                        order=1, supported=supported, bounded=True)
        raw_log_z, mean = host64(raw_log_z, mean)
        log_z = prep.log_z(raw_log_z, a, rows)
        delta = mean - prep.shift[rows] if prep.shifted else mean
    else:
        log_z, delta = (np.asarray(v, dtype=np.float64) for v in known)
    others = np.stack([2.0 - a, -a])
    buf = scratch(xp, "buf", (2,) + tuple(l.shape), l) if prep.reuse else None
    (raw,) = host64(moments(xp, l, log_base, to_device_like(others.astype(work_np), l, xp),
                            order=0, supported=supported, buf=buf, bounded=True)[0])
    ns = row_namespace(rows.size)
    v = ns.values
    numbers = family_numbers(ns, v(a), v(log_z), v(delta),
                             v(prep.log_z(raw[0], others[0], rows)),
                             v(prep.log_z(raw[1], others[1], rows)),
                             v(prep.theta_off_support[rows]), v(prep.t_off_support[rows]))
    return {name: ns.array(value) for name, value in zip(FAMILY_FIELDS, numbers)}


def _end_points(prep: Prepared, rows: np.ndarray, alpha: np.ndarray) -> list[dict]:
    """family_at for alpha in {0, 1}: q is pi_t or pi_theta itself (mass outside S included).
    log Z = 0; KL(q||pi_theta) at alpha = 0 is KL(pi_t||pi_theta) (+inf where pi_t > 0 = pi_theta);
    ESS of q for the other side is 1 / sum pi_other^2 / q (0 where q misses its mass)."""
    log_theta = host(prep.log_probs("theta", rows)).astype(np.float64)
    log_t = host(prep.log_probs("t", rows)).astype(np.float64)
    out = []
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for j, a in enumerate(alpha):
            log_q, log_other = (log_theta[j], log_t[j]) if a == 1.0 else (log_t[j], log_theta[j])
            q = np.exp(log_q)
            kl_other = float(np.sum(np.where(log_q > -np.inf, q * (log_q - log_other), 0.0)))
            terms = np.where(log_other > -np.inf, 2.0 * log_other - log_q, -np.inf)
            peak = np.max(terms)
            ess_other = 0.0 if peak == np.inf else float(
                np.exp(-(peak + np.log(np.sum(np.exp(terms - peak))))))
            if a == 1.0:
                rec = dict(kl_q_theta=0.0, kl_q_t=kl_other, ess_theta=1.0, ess_t=ess_other)
            else:
                rec = dict(kl_q_theta=kl_other, kl_q_t=0.0, ess_theta=ess_other, ess_t=1.0)
            rec["log_z"] = 0.0
            rec["delta"] = rec["kl_q_theta"] - rec["kl_q_t"]
            out.append(rec)
    return out


def entropy_rows(xp, log_p, *, full_support: bool = False, out=None):
    """(H, sum p) per row of log-probabilities, host float64: H = -sum p log p in nats
    (0 log 0 = 0); the sum is the normalisation check that comes with the same pass. `out`:
    scratch of log_p's shape for p."""
    p = xp.exp(log_p) if out is None else xp.exp(log_p, out=out)
    total = rsum(xp, p)
    p *= log_p                                       # NaN where p = 0 (0 * -inf)
    if not full_support:
        p = xp.where(xp.isfinite(log_p), p, 0.0)
    h, total = host64(rsum(xp, p), total)
    return 0.0 - h, total  # 0.0 - sum, not -sum: a point mass must give +0.0, not -0.0


def entropies(prep: Prepared, rows: np.ndarray | None = None):
    """(H(pi_theta), H(pi_t), sum pi_theta, sum pi_t) per row of a prepared block (both sides in
    one pass for small blocks)."""
    xp = prep.xp
    if prep.entropy is not None and (rows is None or rows.size == prep.n):
        if prep.entropy_rows is None:
            return prep.entropy
        apart = np.flatnonzero(~prep.entropy_rows)
        out = [np.array(v, dtype=np.float64) for v in prep.entropy]
        for value, part in zip(out, entropies(prep, apart) if apart.size else ()):
            value[apart] = part
        return tuple(out)
    full = prep.support is None
    log_theta, log_t = prep.log_probs("theta", rows), prep.log_probs("t", rows)
    if log_theta.shape[0] * log_theta.shape[1] <= GRID_ELEMENTS:
        h, total = entropy_rows(xp, xp.stack([log_theta, log_t]), full_support=full)
        return h[0], h[1], total[0], total[1]
    out = scratch(xp, "tmp", tuple(log_theta.shape), log_theta) if prep.reuse else None
    h_theta, total_theta = entropy_rows(xp, log_theta, full_support=full, out=out)
    h_t, total_t = entropy_rows(xp, log_t, full_support=full, out=out)
    return h_theta, h_t, total_theta, total_t


def log_q(prep: Prepared, rows: np.ndarray, alpha: np.ndarray):
    """log q_alpha of the rows, [k, V] in the work dtype (a new array): on S
    log q = log_base - alpha l - log sum_S exp(log_base - alpha l) (never products of powers), -inf
    off S; alpha = 1 and 0 give log pi_theta and log pi_t themselves (mass outside S included);
    NaN alpha gives a NaN row."""
    xp = prep.xp
    alpha = np.asarray(alpha, dtype=np.float64)
    l, log_base = prep.rows_of(rows)
    work_np = _host_dtype(l)
    a = np.where((alpha > 0.0) & (alpha < 1.0), alpha, 0.5)
    out = xp.empty_like(l)
    xp.multiply(l, -to_device_like(a.astype(work_np), l, xp)[:, None], out=out)
    out += log_base
    peak = rmax(xp, out, keepdims=True)
    peak = xp.where(xp.isfinite(peak), peak, 0.0)
    out -= peak + xp.log(rsum(xp, xp.exp(out - peak)))[:, None]
    for value, which in ((1.0, "theta"), (0.0, "t")):
        at = np.flatnonzero(alpha == value)
        if at.size:
            log_p = xp.astype(prep.log_probs(which, rows[at]), out.dtype)
            peak = rmax(xp, log_p, keepdims=True)
            log_p = log_p - (peak + xp.log(rsum(xp, xp.exp(log_p - peak)))[:, None])
            out[to_device_like(at, out, xp)] = log_p
    missing = np.flatnonzero(~np.isfinite(alpha))
    if missing.size:
        out[to_device_like(missing, out, xp)] = math.nan
    return out


def log_weights(prep: Prepared, rows: np.ndarray, alpha: np.ndarray, tokens):
    """(log pi_theta(y) / q(y), log pi_t(y) / q(y)) at tokens y ([k, m] integers, device) of the
    rows' q_alpha, in float64. On S: log w_theta = log Z(alpha) - (1 - alpha) l(y), log w_t =
    log Z(alpha) + alpha l(y). Where q(y) = 0 (y outside S): +inf for a side with mass at y, NaN
    (0/0) for a side without; alpha = 0, 1: q is pi_t or pi_theta itself; NaN alpha: NaN."""
    xp = prep.xp
    alpha = np.asarray(alpha, dtype=np.float64)
    l, log_base = prep.rows_of(rows)
    work_np = _host_dtype(l)
    interior = (alpha > 0.0) & (alpha < 1.0)
    a = np.where(interior, alpha, 0.5)
    raw, _, _, _ = moments(xp, l, log_base, to_device_like(a.astype(work_np), l, xp), order=0,
                           supported=False)
    (raw,) = host64(raw)
    log_z = prep.log_z(raw, a, rows)
    f64 = xp.float64
    l_y = xp.astype(xp.take_along_axis(l, tokens, axis=-1), f64) \
        - to_device_like(prep.shift[rows][:, None], l, xp, np.float64)
    theta_y = xp.astype(xp.take_along_axis(prep.log_probs("theta", rows), tokens, axis=-1), f64)
    t_y = xp.astype(xp.take_along_axis(prep.log_probs("t", rows), tokens, axis=-1), f64)
    a_col = to_device_like(a[:, None], l, xp, np.float64)
    z_col = to_device_like(log_z[:, None], l, xp, np.float64)
    w_theta = z_col - (1.0 - a_col) * l_y
    w_t = z_col + a_col * l_y
    inside = xp.isfinite(theta_y) & xp.isfinite(t_y)
    w_theta = xp.where(inside, w_theta, theta_y - (-math.inf))   # +inf or NaN (-inf + inf)
    w_t = xp.where(inside, w_t, t_y - (-math.inf))
    ends = np.flatnonzero(~interior)
    if ends.size:
        index = to_device_like(ends, w_t, xp)
        theta_e, t_e = theta_y[index], t_y[index]
        at_one = to_device_like(alpha[ends][:, None] == 1.0, w_t, xp)
        log_q_y = xp.where(at_one, theta_e, t_e)
        nan = to_device_like(~np.isfinite(alpha[ends])[:, None], w_t, xp)
        w_theta[index] = xp.where(nan, math.nan, theta_e - log_q_y)
        w_t[index] = xp.where(nan, math.nan, t_e - log_q_y)
    return w_theta, w_t


# ------------------------------------------------------------------------------------------------
# one block, start to finish


def solve_block(xp, z_theta, z_t, lse_theta=None, lse_t=None, *, invalid=None, row_errors=None,
                order: int = 2, xtol: float | None = None, max_iter: int = 60, work_dtype=None,
                check_tolerance=None, diagnostics: bool = False, iterates: dict | None = None,
                row_labels=None, names=("log_pi_theta", "log_pi_t"), row_offset: int = 0) -> dict:
    """Classify every row, solve the rows with a root, and (with `diagnostics`) evaluate the family
    at each row's alpha (degenerate rows at 1/2, where q is the same as anywhere) with entropies.

    invalid: host bool [n] (rows that failed validation: never reported on), with their reasons
    in row_errors. Returns host arrays over the n rows: status, message, alpha, residual,
    iterations, evaluations, d_at_0, d_at_1, and with diagnostics log_z, delta, kl_q_theta,
    kl_q_t, ess_theta, ess_t, entropy_theta, entropy_t."""
    n = int(z_theta.shape[0])
    with ignore_fp(xp):
        prep = prepare_pair(xp, z_theta, z_t, lse_theta, lse_t, work_dtype=work_dtype,
                            grid_points=grid_size(int(z_theta.shape[-1])),
                            check_tolerance=check_tolerance, skip=invalid, names=names,
                            row_offset=row_offset, reuse=is_numpy(xp),
                            end_point_entropies=diagnostics)
        status = row_status(prep, invalid)
        is_ok = status == OK
        all_ok = bool(is_ok.all())
        ok = np.arange(n) if all_ok else np.flatnonzero(is_ok)
        res = None
        if ok.size:
            res = newton(prep, ok, order=order, xtol=xtol, max_iter=max_iter, iterates=iterates,
                         row_labels=row_labels)
        if all_ok:
            alpha, residual, log_z, iterations = res.alpha, res.delta, res.log_z, res.iterations
            message = [""] * n
        else:
            alpha, residual, log_z = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
            iterations = np.zeros(n, dtype=np.int64)
            if res is not None:
                alpha[ok], residual[ok], log_z[ok], iterations[ok] = (res.alpha, res.delta,
                                                                      res.log_z, res.iterations)
            message = row_messages(prep, status, row_errors)
        if res is not None and not res.converged.all():
            status = status.copy()
            for b in ok[~res.converged]:
                status[b] = MAX_ITER
                message[b] = f"no convergence in {max_iter} iterations"
                alpha[b] = np.nan
            all_ok = False
        evaluations = 1 + iterations
        d_at_0, d_at_1 = prep.d0, prep.d1
        if invalid is not None and invalid.any():
            evaluations = np.where(invalid, 0, evaluations)
            d_at_0, d_at_1 = np.where(invalid, np.nan, d_at_0), np.where(invalid, np.nan, d_at_1)
        out = dict(status=status, message=message, alpha=alpha, residual=residual,
                   iterations=iterations, evaluations=evaluations, d_at_0=d_at_0, d_at_1=d_at_1,
                   log_z_at_alpha=log_z)
        if diagnostics:
            out.update(diagnose_block(prep, status, alpha, known_log_z=log_z,
                                      known_delta=residual, all_ok=all_ok))
    return out


def diagnose_block(prep: Prepared, status: np.ndarray, alpha: np.ndarray, *, known_log_z=None,
                   known_delta=None, check_tolerance=None, names=("log_pi_theta", "log_pi_t"),
                   row_offset: int = 0, all_ok: bool | None = None) -> dict:
    """The family at each 'ok' row's alpha and each degenerate row's 1/2, and both entropies of
    every valid row. Host arrays over the block's rows (NaN where not evaluated).
    check_tolerance: refuse rows that are not normalised log-probabilities (from the entropy
    pass's sums, at no extra cost). all_ok: every row is 'ok' with a finite alpha (when known)."""
    n = prep.n
    if all_ok is None:
        all_ok = bool(((status == OK) & np.isfinite(alpha)).all())
    if all_ok:
        known = None if known_log_z is None else (known_log_z, known_delta)
        out = family_at(prep, np.arange(n), alpha, known=known)
        valid = None
    else:
        out = {name: np.full(n, np.nan) for name in FAMILY_FIELDS}
        usable = (status == OK) & np.isfinite(alpha)
        for rows, values, known in (
                (np.flatnonzero(usable), alpha, (known_log_z, known_delta)),
                (np.flatnonzero(status == DEGENERATE), None, None)):
            if rows.size == 0:
                continue
            at = np.full(rows.size, 0.5) if values is None else values[rows]
            if known is not None and (known[0] is None
                                      or not np.all(np.isfinite(known[0][rows]))):
                known = None
            fam = family_at(prep, rows, at,
                            known=None if known is None else (known[0][rows], known[1][rows]))
            for name in FAMILY_FIELDS:
                out[name][rows] = fam[name]
        valid = status != INVALID
    h_theta, h_t, total_theta, total_t = entropies(prep)
    if check_tolerance is not None and prep.lse_theta is None:
        with np.errstate(divide="ignore"):
            _refuse_unnormalised((np.log(total_theta), np.log(total_t)), check_tolerance,
                                 None if valid is None else ~valid, names, row_offset)
    if valid is not None and not valid.all():
        h_theta, h_t = np.where(valid, h_theta, np.nan), np.where(valid, h_t, np.nan)
    out["entropy_theta"] = h_theta
    out["entropy_t"] = h_t
    return out
