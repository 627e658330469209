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
- `prepare_pair`: l and log_base = log pi_t on S, the support rules' numbers, and one pass
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

from geomix_cli.core.arrays import host, host64, is_numpy, rmax, rmin, rsum, to_device_like
from geomix_cli.core.passes import _device, _eps_of, _grid_alphas, moments, scratch
from geomix_cli.core.rules import (DEGENERATE, DISJOINT, GRID_ELEMENTS, INVALID,  # noqa: F401
                                   MASKED, MAX_ITER, NO_ROOT, OK, STATUSES, _STATUS_NAMES,
                                   _RowArrays, _RowScalars, constant_tolerance, family_numbers,
                                   grid_size, hermite_start, newton_update, row_namespace,
                                   status_code)
from geomix_cli.errors import InputError

EPS64 = float(np.finfo(np.float64).eps)

# Rows whose max|l| exceeds this are not re-centred (expm1 loses its edge there, and Var_q(l) is
# then large enough that a 1e-16 shift of l does not move alpha* visibly).
RECENTRE_MAX_ABS_L = 1.0


def ignore_fp(xp):
    """numpy: silence the floating-point warnings of log 0, 0/0 on empty supports, exp overflow
    (all handled by the support rules); torch never warns."""
    if is_numpy(xp):
        return np.errstate(divide="ignore", invalid="ignore", over="ignore")
    import contextlib

    return contextlib.nullcontext()


def _host_dtype(x):
    """numpy's float32 or float64 for an array's dtype (numpy or torch)."""
    dtype = x.dtype
    if isinstance(dtype, np.dtype):
        return np.float32 if dtype == np.float32 else np.float64
    return np.float32 if dtype.itemsize == 4 else np.float64


# ------------------------------------------------------------------------------------------------
# one pass


# ------------------------------------------------------------------------------------------------
# preparation and the support rules

@dataclass
class Prepared:
    """One block of rows ready for the iteration: arrays in the inputs' library, numbers on the host.

    z_theta, z_t: the validated rows (log-probabilities when lse_* is None, else shifted logits);
    l, log_base: work dtype; support: None when every row has full support on both sides.
    shift: subtracted from the raw mean of l (D = mean - shift); log_z_shift: added to the raw
    log_z (log Z(alpha) = raw + log_z_shift + alpha * shift)."""

    xp: object
    z_theta: object
    z_t: object
    lse_theta: np.ndarray | None
    lse_t: np.ndarray | None
    l: object
    log_base: object
    support: object
    eps: float
    shift: np.ndarray
    log_z_shift: np.ndarray
    spread: np.ndarray
    level: np.ndarray
    tol: np.ndarray
    tol_flat: np.ndarray
    has_support: np.ndarray
    same_support: np.ndarray
    theta_off_support: np.ndarray
    t_off_support: np.ndarray
    d0: np.ndarray | None = None
    d1: np.ndarray | None = None
    v0: np.ndarray | None = None
    v1: np.ndarray | None = None
    shifted: bool = False               # some row has a non-zero shift
    reuse: bool = False                 # numpy scratch buffers (see `scratch`) for the passes
    entropy: tuple | None = None        # (H_theta, H_t, sum w_theta, sum w_t) from the first pass
    entropy_rows: np.ndarray | None = None  # the rows where `entropy` holds (None: all)
    grid: np.ndarray | None = None      # alphas of the first pass (0 and 1 at least)
    d_grid: np.ndarray | None = None    # D there, [grid, n]
    v_grid: np.ndarray | None = None    # Var there

    @property
    def n(self) -> int:
        return int(self.shift.shape[0])

    @property
    def precision(self) -> str:
        return "float64" if self.eps < 1e-10 else "float32"

    def log_z(self, raw, alpha, rows=slice(None)):
        """log Z(alpha) from a pass's raw log_z (host float64 arrays over `rows`)."""
        if not self.shifted:
            return raw
        return raw + self.log_z_shift[rows] + alpha * self.shift[rows]

    def rows_of(self, rows):
        """(l, log_base) of some rows (all of them without a copy)."""
        if rows.size == self.n:
            return self.l, self.log_base
        index = to_device_like(rows, self.l, self.xp)
        return self.l[index], self.log_base[index]


    def log_probs(self, which: str, rows=None):
        """log pi_theta or log pi_t of the rows (a new array unless normalised and all rows)."""
        xp = self.xp
        z, lse = (self.z_theta, self.lse_theta) if which == "theta" else (self.z_t, self.lse_t)
        if rows is not None and rows.size != self.n:
            z = z[to_device_like(rows, z, xp)]
            lse = None if lse is None else lse[rows]
        if lse is None:
            return z
        return z - to_device_like(lse[:, None].astype(_host_dtype(z)), z, xp)


def prepare_pair(xp, z_theta, z_t, lse_theta=None, lse_t=None, *, work_dtype=None,
                 end_points: bool = True, grid_points: int = 2, recentre: bool = True,
                 check_tolerance=None, skip=None, names=("log_pi_theta", "log_pi_t"),
                 row_offset: int = 0, reuse: bool = False) -> Prepared:
    """l, log_base and the per-row numbers of the support rules for one block of rows.

    z_theta, z_t: [n, V] in the preparation dtype; lse_theta, lse_t: None for log-probabilities,
    else host float64 log-normalisers of shifted logits (see the module doc). work_dtype: dtype of
    l and log_base (default z's). end_points: also D and Var at `grid_points` equally spaced
    alphas from 0 to 1 in one pass: the end points D(0+), D(1-) (for every row), and for small
    blocks interior points that bracket the root more tightly (`grid_size`).
    check_tolerance: refuse (InputError) rows of supposed log-probabilities whose logsumexp is
    further than this from 0 on either side -- raw logits passed where log-probabilities belong
    (rows in `skip` are not checked); the end-point passes give this for free on full supports.
    reuse: l and the first pass's buffers are this thread's scratch (`scratch`): valid until the
    next block is prepared on the thread (the solvers' own loops; never for results)."""
    n = int(z_theta.shape[0])
    work = work_dtype if work_dtype is not None else z_theta.dtype
    eps = _eps_of(xp, work)
    normalised = lse_theta is None
    if reuse:
        l = scratch(xp, "l", tuple(z_theta.shape), z_theta)
        xp.subtract(z_t, z_theta, out=l)
    else:
        l = z_t - z_theta
    shifted = not normalised          # D = mean - shift with a shift that is not all 0
    if normalised:
        shift = np.zeros(n)
        log_z_shift = shift
        lse_sum = 0.0
    else:
        lse_theta = np.asarray(lse_theta, dtype=np.float64)
        lse_t = np.asarray(lse_t, dtype=np.float64)
        c = lse_t - lse_theta
        c_hi = c.astype(_host_dtype(l))
        shift = c - c_hi.astype(np.float64)
        log_z_shift = -lse_t
        lse_sum = lse_theta + lse_t
        l -= to_device_like(c_hi[:, None], l, xp)
    if l.dtype != work:
        l = xp.astype(l, work)
    l_max, l_min = host64(rmax(xp, l), rmin(xp, l))
    spread = l_max - l_min
    dense = math.isfinite(float(spread.sum()))  # no -inf on either side (else inf or NaN)
    if dense:
        support = None
        full_rows = None
        log_base = z_t if z_t.dtype == work else xp.astype(z_t, work)
        has_support = np.ones(n, dtype=bool)
        same_support = has_support
        theta_off = t_off = np.zeros(n, dtype=bool)
        if reuse:
            pair_sum = scratch(xp, "tmp", tuple(z_theta.shape), z_theta)
            xp.add(z_theta, z_t, out=pair_sum)
        else:
            pair_sum = z_theta + z_t
        (low_sum,) = host64(rmin(xp, pair_sum))
        scale = lse_sum - low_sum
        level = np.maximum(np.abs(l_max), np.abs(l_min))
    else:
        fin_theta, fin_t = xp.isfinite(z_theta), xp.isfinite(z_t)
        support = fin_theta & fin_t
        l = xp.where(support, l, 0.0)
        log_base = xp.where(support, z_t if z_t.dtype == work else xp.astype(z_t, work), -math.inf)
        l_max, l_min, low_sum, flags = host64(
            rmax(xp, xp.where(support, l, -math.inf)), rmin(xp, xp.where(support, l, math.inf)),
            rmin(xp, xp.where(support, z_theta + z_t, math.inf)),
            xp.astype(xp.stack([xp.any(support, axis=-1), xp.all(fin_theta == fin_t, axis=-1),
                                xp.any(fin_theta & ~support, axis=-1),
                                xp.any(fin_t & ~support, axis=-1),
                                xp.all(support, axis=-1)]), l.dtype))
        has_support, same_support, theta_off, t_off, full_rows = (flags.reshape(5, n) > 0.5)
        del fin_theta, fin_t
        spread = l_max - l_min
        # |log pi_theta| + |log pi_t| = lse_theta + lse_t - (z_theta + z_t), since log p <= 0
        scale = np.where(has_support, lse_sum - low_sum, 0.0)
        level = np.where(has_support, np.maximum(np.abs(l_max), np.abs(l_min)), 0.0)
    # l is "constant" / D "within rounding of 0" below 64 eps (1 + max_S |log pi_theta| + |log pi_t|),
    # a bound on the rounding of l = log pi_t - log pi_theta. In float32 D's rounding is relative
    # to l itself (l is built from differences of the inputs, its constant part corrected in
    # float64): 64 eps32 max|l|.
    tol = constant_tolerance(eps, scale)
    tol_flat = tol if eps < 1e-10 else 64.0 * eps * level
    prep = Prepared(xp=xp, z_theta=z_theta, z_t=z_t, lse_theta=lse_theta, lse_t=lse_t, l=l,
                    log_base=log_base, support=support, eps=eps, shift=shift,
                    log_z_shift=log_z_shift, spread=spread, level=level, tol=tol,
                    tol_flat=tol_flat, has_support=has_support, same_support=same_support,
                    theta_off_support=theta_off, t_off_support=t_off, shifted=shifted,
                    reuse=reuse)
    if normalised and recentre and eps < 1e-10:
        near = level <= RECENTRE_MAX_ABS_L
        if near.any():
            rows = np.flatnonzero(same_support & has_support & near)
            if rows.size:
                shift = shift.copy()
                shift[rows] += recentring_constant(prep, rows)
                prep.shift = shift
                prep.shifted = True
    if end_points:
        alpha = _grid_alphas(max(2, int(grid_points)), n, _host_dtype(l))
        shape = tuple(alpha.shape) + (int(l.shape[-1]),)
        buf = scratch(xp, "buf", shape, l) if reuse else xp.empty(shape, dtype=l.dtype,
                                                                     device=_device(xp, l))
        tmp = scratch(xp, "tmp", shape, l) if reuse else None
        lz, mean, var, _ = moments(xp, l, log_base, to_device_like(alpha, l, xp), buf=buf,
                                   tmp=tmp, supported=bool(has_support.all()), bounded=True)
        if l.dtype == z_theta.dtype and (full_rows is None or full_rows.any()):
            # buf[0] and buf[-1] hold the weights at alpha = 0 and 1: pi_t and pi_theta up to a
            # constant on rows with full supports, so both entropies come with this pass:
            # H(pi) = lse - E_w[z], z the rows as given (log-probabilities: lse = 0). Rows with
            # zeros have theirs computed apart (`entropies`), whatever block they are in.
            prep.entropy = _end_point_entropies(xp, buf, z_theta, z_t, lse_theta, lse_t,
                                                None if tmp is None else tmp[0])
            prep.entropy_rows = full_rows
        lz, mean, var = host64(lz, mean, var)
        prep.grid = alpha[:, 0].astype(np.float64)
        prep.d_grid = mean - prep.shift if prep.shifted else mean
        prep.v_grid = var
        prep.d0, prep.d1, prep.v0, prep.v1 = prep.d_grid[0], prep.d_grid[-1], var[0], var[-1]
        lz0, lz1 = lz[0], lz[-1]
    if check_tolerance is not None and normalised:
        if dense and end_points:
            # log sum pi_t = log Z(0); log sum pi_theta = log sum exp(log pi_t - l) = log Z(1)
            sums = (lz1, lz0)
        else:
            sums = _full_logsumexp(xp, z_theta), _full_logsumexp(xp, z_t)
        if skip is not None or not max(np.abs(sums[0]).max(), np.abs(sums[1]).max()) \
                <= check_tolerance:
            _refuse_unnormalised(sums, check_tolerance, skip, names, row_offset)
    return prep


def _end_point_entropies(xp, buf, z_theta, z_t, lse_theta, lse_t, tmp):
    """(H(pi_theta), H(pi_t), sum w1, sum w0) from the first pass's weights at alpha = 1, 0."""
    out = []
    for w, z, lse in ((buf[-1], z_theta, lse_theta), (buf[0], z_t, lse_t)):
        prod = xp.multiply(w, z) if tmp is None else xp.multiply(w, z, out=tmp)
        total, weighted = host64(rsum(xp, w), rsum(xp, prod))
        h = -(weighted / total) + (0.0 if lse is None else lse)
        out.append((h + 0.0, total))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def _full_logsumexp(xp, z):
    peak = rmax(xp, z, keepdims=True)
    peak = xp.where(xp.isfinite(peak), peak, 0.0)
    (out,) = host64(peak[:, 0] + xp.log(rsum(xp, xp.exp(z - peak))))
    return out


def _refuse_unnormalised(sums, tolerance, skip, names, row_offset):
    for name, lse in zip(names, sums):
        bad = ~(np.abs(lse) <= tolerance)
        if skip is not None:
            bad &= ~skip
        if bad.any():
            b = int(np.flatnonzero(bad)[0])
            more = " (and other rows)" if bad.sum() > 1 else ""
            raise InputError(
                f"row {row_offset + b}: not normalised log-probabilities: logsumexp = "
                f"{lse[b]:.6g}, more than {tolerance:.1e} from 0{more}. This function takes "
                "log-probabilities; for logits call geomix_cli.api.solve(..., kind='logits') or "
                "log-softmax them first", key=name)


def recentring_constant(prep: Prepared, rows: np.ndarray) -> np.ndarray:
    """`recentring_constant_rows` for some rows of a prepared block (float64 log-probabilities)."""
    l, _ = prep.rows_of(rows)
    return recentring_constant_rows(prep.xp, prep.log_probs("theta", rows), l)


def recentring_constant_rows(xp, log_pi_theta, l) -> np.ndarray:
    """The constant error of l on rows whose supports coincide (float64 log-probabilities).

    With equal supports sum_y pi_theta(y) e^{l(y)} = sum_y pi_t(y) = 1 exactly. Normalised float64
    log-probabilities each carry a constant error of a few ulps of their log-normaliser (~1e-15),
    which shifts l by a constant c, D = E_q[l] by c and alpha* by c / Var_q(l): 2.4e-9 for pairs
    with C ~ 1e-8 (Var ~ 1e-7), against a 50-digit reference. c = log(sum pi_theta e^l /
    sum pi_theta), computed as log1p(sum pi_theta expm1(l) / sum pi_theta), is accurate to about
    eps max|l|; removing it leaves alpha* good to ~1e-13 there. (l is 0 off the support.)"""
    pi_theta = xp.exp(log_pi_theta)
    terms = xp.expm1(l)
    terms *= pi_theta
    numerator, denominator = host64(rsum(xp, terms), rsum(xp, pi_theta))
    return np.log1p(numerator / denominator)


def row_status(prep: Prepared, invalid: np.ndarray | None = None) -> np.ndarray:
    """Status per row (`status_code`), as strings."""
    ns = row_namespace(prep.n)
    v = ns.values
    with np.errstate(invalid="ignore"):
        code = status_code(ns, v(prep.d0), v(prep.d1), v(prep.spread), v(prep.level),
                           v(prep.tol), v(prep.tol_flat), v(prep.has_support),
                           False if invalid is None else v(invalid))
    if ns is _RowScalars:
        return _STATUS_NAMES[[code]]
    return _STATUS_NAMES[code]


def row_messages(prep: Prepared, status: np.ndarray, row_errors=None) -> list[str]:
    """What is true instead, for every row that is not 'ok' (empty for 'ok')."""
    message = [""] * prep.n
    if not (status != OK).any():
        return message
    d0, d1 = prep.d0, prep.d1
    constant_no_root = [b for b in np.flatnonzero(status == NO_ROOT)
                        if prep.spread[b] <= prep.tol[b]]
    first = dict(zip(constant_no_root, _first_l(prep, np.array(constant_no_root, dtype=np.int64))))
    for b in np.flatnonzero(status != OK):
        if status[b] == INVALID:
            message[b] = row_errors[b] if row_errors is not None else "invalid row"
        elif status[b] == DISJOINT:
            message[b] = ("pi_theta and pi_t share no token with positive probability: Z = 0 for "
                          "every alpha in (0, 1), there is no q")
        elif status[b] == DEGENERATE and prep.spread[b] <= prep.tol[b]:
            message[b] = ("pi_theta = pi_t on the common support: every alpha gives the same q "
                          "and equal KLs, alpha* is not unique")
        elif status[b] == DEGENERATE:
            message[b] = (f"pi_theta and pi_t are equal to within {prep.precision} rounding: "
                          f"|KL(q||pi_theta) - KL(q||pi_t)| <= {prep.tol_flat[b]:.1e} for every "
                          f"alpha (D(0+) = {d0[b]:.3g}, D(1-) = {d1[b]:.3g}), alpha* is not "
                          "determined")
        elif b in first:
            message[b] = (f"l = log pi_t - log pi_theta is the constant {first[b]:.6g} "
                          "on the common support: q is the same for every alpha and the KLs "
                          "never meet")
        else:
            sign = "<" if d0[b] <= 0 else ">"
            why = ("supports differ" if not prep.same_support[b]
                   else "numerically, within rounding,")
            message[b] = (f"{why} and D(alpha) = "
                          f"KL(q||pi_theta) - KL(q||pi_t) keeps one sign on (0, 1): "
                          f"KL(q||pi_theta) {sign} KL(q||pi_t) for every alpha "
                          f"(D(0+) = {d0[b]:.6g}, D(1-) = {d1[b]:.6g})")
    return message


def _first_l(prep: Prepared, rows: np.ndarray) -> np.ndarray:
    """l at the first token of S, for rows where l is constant on S (for their message)."""
    if rows.size == 0:
        return np.zeros(0)
    l, log_base = prep.rows_of(rows)
    l, log_base = host(l).astype(np.float64), host(log_base)
    first = np.argmax(np.isfinite(log_base), axis=-1)
    return l[np.arange(rows.size), first] - prep.shift[rows]


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
    """`newton` for a block's single row: the same start and steps, on Python floats."""
    xp = prep.xp
    ns = _RowScalars
    d_grid = prep.d_grid[:, row].tolist()
    k = next(i for i in range(1, len(d_grid)) if d_grid[i] <= 0.0)
    v_lo, v_hi = prep.v_grid[k - 1:k + 1, row].tolist()
    lo, hi = float(prep.grid[k - 1]), float(prep.grid[k])
    alpha = hermite_start(ns, lo, hi, d_grid[k - 1], d_grid[k], v_lo, v_hi)
    last_step = step_before = 1.0
    prev_size = math.inf
    shift, log_z_shift = float(prep.shift[row]), float(prep.log_z_shift[row])
    eps = prep.eps
    iterations = 0
    converged = False
    a_eval = d = log_z = math.nan
    for _ in range(max_iter):
        a_eval = float(work_np(alpha))
        raw = moments(xp, l, log_base, to_device_like(np.array([a_eval], dtype=work_np), l, xp),
                      order=order, buf=buf, tmp=tmp, supported=True, bounded=True)
        values = [float(v[0]) for v in host64(*raw[:order + 1])]
        log_z, d, var = values[0], values[1] - shift, values[2]
        iterations += 1
        if iterates is not None:
            iterates.setdefault(label, []).append((a_eval, d))
        lo, hi, alpha, converged, step, size = newton_update(
            ns, a_eval, d, var, values[3] if order == 3 else None, lo, hi, step_before,
            last_step, prev_size, xtol=xtol, eps=eps)
        step_before, last_step, prev_size = last_step, step, size
        if converged:
            break
    if not converged:
        a_eval = d = log_z = math.nan
    return NewtonResult(alpha=np.array([a_eval]), delta=np.array([d]),
                        log_z=np.array([log_z + log_z_shift + a_eval * shift]),
                        iterations=np.array([iterations], dtype=np.int64),
                        converged=np.array([bool(converged)]))


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
    xp = prep.xp
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
    del xp
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
    xp = prep.xp
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
    del xp
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
                            row_offset=row_offset, reuse=is_numpy(xp))
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
