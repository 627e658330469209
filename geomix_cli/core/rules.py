"""The per-row rules of the solver, written once over a tiny namespace: numpy arrays over the
rows of a block (`_RowArrays`) or one row's Python floats (`_RowScalars`, so that a single row costs
microseconds of arithmetic instead of dozens of numpy calls on arrays of length 1). They run on the
host whatever array library holds the rows (`core.kernel` fetches the per-row numbers once per
pass): the support rules (`status_code`), the start (`hermite_start`), the safeguarded step
(`newton_update`) and the family's numbers at alpha (`family_numbers`).
"""

from __future__ import annotations

import math

import numpy as np

OK = "ok"
DEGENERATE = "degenerate"
NO_ROOT = "no-root"
DISJOINT = "disjoint-support"
INVALID = "invalid"
MAX_ITER = "max-iter"
MASKED = "masked"  # positions the caller's mask leaves out (geomix_cli.api): never computed on
STATUSES = (OK, DEGENERATE, NO_ROOT, DISJOINT, INVALID)


class _RowArrays:
    """The per-row rules below on numpy arrays over rows."""

    where = staticmethod(np.where)
    abs = staticmethod(np.abs)
    isfinite = staticmethod(np.isfinite)
    minimum = staticmethod(np.minimum)
    maximum = staticmethod(np.maximum)
    logical_not = staticmethod(np.logical_not)

    @staticmethod
    def exp(x):
        with np.errstate(over="ignore"):
            return np.exp(x)

    @staticmethod
    def values(x):
        return x

    @staticmethod
    def array(x):
        return x

    @staticmethod
    def divide(a, b):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.divide(a, b)

    @staticmethod
    def bisect_cubic(d, a, b, c, steps):
        """[low, high] around the root in [0, 1] of d + u (a + u (b + u c)) (positive at 0)
        after `steps` bisections, one per row. Up to SCALAR_BISECTION_ROWS rows, row by row on
        Python floats (`_RowScalars.bisect_cubic`: the same operations, so the same bits; 48
        steps cost ~11 numpy calls each over the rows, ~4 us a row on floats)."""
        if (d.ndim == 1 and d.shape[0] <= SCALAR_BISECTION_ROWS
                and all(isinstance(x, np.ndarray) and x.dtype == np.float64
                        and x.shape == d.shape for x in (d, a, b, c))):
            brackets = [_RowScalars.bisect_cubic(*row, steps)
                        for row in zip(d.tolist(), a.tolist(), b.tolist(), c.tolist())]
            low, high = np.array(brackets, dtype=np.float64).reshape(-1, 2).T
            return low, high
        low, high = 0.0 * d, 0.0 * d + 1.0
        for _ in range(steps):
            mid = 0.5 * (low + high)
            positive = d + mid * (a + mid * (b + mid * c)) > 0
            low = np.where(positive, mid, low)
            high = np.where(positive, high, mid)
        return low, high


class _RowScalars:
    """The same rules on one row's Python floats: a single row (the common small call) costs a
    few microseconds of arithmetic instead of dozens of numpy calls on arrays of length 1."""

    abs = staticmethod(abs)
    isfinite = staticmethod(math.isfinite)
    minimum = staticmethod(min)
    maximum = staticmethod(max)

    @staticmethod
    def logical_not(x):
        return not x

    @staticmethod
    def exp(x):
        # numpy's exp, not math.exp: the two may differ in the last bit, and a row must get the
        # same numbers alone as in a batch (below 709 it cannot overflow: no error state to set)
        if x < 709.0:
            return float(np.exp(x))
        with np.errstate(over="ignore"):
            return float(np.exp(x))

    @staticmethod
    def values(x):
        """The row's number from a host array of one row."""
        return float(x[0])

    @staticmethod
    def array(x):
        return np.array([x])

    @staticmethod
    def where(condition, a, b):
        return a if condition else b

    @staticmethod
    def bisect_cubic(d, a, b, c, steps):
        """`_RowArrays.bisect_cubic` on one row's floats: the same operations in the same order
        (IEEE double either way), so the same bits, at ~0.1 us a step instead of ~3 us."""
        low, high = 0.0 * d, 0.0 * d + 1.0
        for _ in range(steps):
            mid = 0.5 * (low + high)
            if d + mid * (a + mid * (b + mid * c)) > 0.0:   # (float to float: the fast compare)
                low = mid
            else:
                high = mid
        return low, high

    @staticmethod
    def divide(a, b):
        try:
            return a / b
        except ZeroDivisionError:
            if a != a or a == 0.0:
                return math.nan
            return math.copysign(math.inf, a) * math.copysign(1.0, b)


# Bisection steps on the Hermite cubic: u to 2^-48 of the bracket, far below where Newton starts.
# (Fewer were tried: 40 already cost 252 of 1,946 test rows 2-3 more Newton passes, mostly
# two-point rows, whose cubic's root is their alpha* to a few ulps.)
CUBIC_STEPS = 48
# Blocks of up to this many rows bisect the cubic row by row on floats: 23 us for 2 rows, 156 us
# for 32, 224 us for 48 against ~230-250 us for the array steps at any of these (crossover ~55)
SCALAR_BISECTION_ROWS = 48


def row_namespace(n: int):
    return _RowScalars if n == 1 else _RowArrays


def constant_tolerance(eps: float, scale):
    """Spread of l below which it counts as constant on S (and D as within rounding of 0): the
    rounding of l = log pi_t - log pi_theta, a few ulps of the largest |log pi_theta| + |log pi_t|
    on S (`scale`). (Scaling by max|l| instead is wrong: identical distributions have l ~ 0 but
    log p far from 0, and their rounding noise then looks like a real, non-constant l.)"""
    return 64.0 * eps * (1.0 + scale)


# A pass over a short row costs the same few dozen numpy calls whatever its length, so for short
# rows the first pass evaluates D at more alphas than the two end points: a tighter bracket for
# the Hermite start, and one or two Newton passes fewer. The number depends on V only, so a
# row's result never depends on the batch it is solved in (a batch = a loop of single solves,
# to the last bit). GRID_ELEMENTS: below this many elements a block counts as short (one stacked
# entropy pass in `kernel`, fresh arrays instead of the scratch cache in the one-row lane).
GRID_ELEMENTS = 4096
# (alphas, up to this V): measured on 30 random rows per length (docs/benchmarks.md, "Small
# calls, second round"): more alphas than these cost more in the first pass's exp than the Newton
# passes they save (17 alphas up to V = 240 made a V = 100 row 10% and a 512 x 100 batch 2.6x
# slower).
GRID_POINTS = ((9, 32), (5, 128), (3, 1365))  # point counts 2^k + 1: dyadic alphas, the same in
# float32 and float64 (`prepare` keeps the grid as float64 whatever the pass's dtype)


def grid_size(vocab: int) -> int:
    """Alphas in the first pass: 9, 5 or 3 equally spaced ones up to V = 32, 128, 1,365, else 2
    (the end points)."""
    for points, largest in GRID_POINTS:
        if vocab <= largest:
            return points
    return 2


_STATUS_NAMES = np.array([OK, NO_ROOT, DEGENERATE, DISJOINT, INVALID], dtype=object)


def root_inside(d0: float, d1: float, spread: float, tol: float, tol_flat: float) -> bool:
    """`status_code(...) == 0` for one valid row with a non-empty support, on floats: D changes
    sign, l is not constant on S, and D(0+), D(1-) are not both within rounding of 0 (the same
    comparisons, without the codes of the other statuses)."""
    return (d0 > 0.0 and d1 < 0.0 and not spread <= tol
            and not (abs(d0) <= tol_flat and abs(d1) <= tol_flat))


def status_code(ns, d0, d1, spread, level, tol, tol_flat, has_support, invalid):
    """The support rules as a code per row (an index into _STATUS_NAMES): invalid >
    disjoint-support (S empty) > l constant on S (degenerate when the constant is 0 within
    rounding, else no-root) > D(0+), D(1-) both within rounding of 0 (degenerate) > D(0+), D(1-) of
    the same sign (no-root) > ok.

    D is non-increasing, so D(0+) and D(1-) both within rounding of 0 put D within rounding of 0 on
    all of (0, 1): the KLs are equal to the working precision for every alpha (a pair identical up
    to ~1e-8 in the logits, C ~ 1e-17). Its "root" would be rounding noise (alphas from 0.01 to
    0.93 were reported for such pairs), its "no root" a false claim."""
    constant = spread <= tol
    zero = level <= tol
    flat = (ns.abs(d0) <= tol_flat) & (ns.abs(d1) <= tol_flat)
    code = ns.where((d0 > 0.0) & (d1 < 0.0), 0, 1)
    code = ns.where(constant & ns.logical_not(zero), 1, code)
    code = ns.where((constant & zero) | flat, 2, code)
    code = ns.where(has_support, code, 3)
    return ns.where(invalid, 4, code)


def hermite_start(ns, lo, hi, d_lo, d_hi, v_lo, v_hi):
    """Starting alpha in [lo, hi] (D(lo) > 0 >= D(hi)) from what the first pass already knows:
    the root of the cubic Hermite interpolant of D on [lo, hi] with D' = -Var at both ends, found
    by 48 bisection steps on the cubic (so a sign change is always kept), clipped to
    [1e-3, 1 - 1e-3]; where the variances are not finite, the secant.

    With the end points only (lo, hi = 0, 1), on the real SmolLM2 rows it starts 5-100x closer to
    alpha* than the secant (errors 1e-4..0.2 instead of 0.008..0.36), which saves about one pass
    per row; on the 1/8- to 1/2-wide brackets of short rows (`GRID_POINTS`) it starts close
    enough for two or three Newton passes.
    `ns`: `_RowArrays` (arrays over rows) or `_RowScalars` (one row's floats: microseconds)."""
    h = hi - lo
    secant = ns.divide(d_lo, d_lo - d_hi)            # u = (alpha - lo) / h
    a = -v_lo * h
    r1 = d_hi - d_lo - a
    c = (-v_hi * h - a) - 2.0 * r1
    b = r1 - c
    low, high = ns.bisect_cubic(d_lo, a, b, c, CUBIC_STEPS)
    u = ns.where(ns.isfinite(v_lo) & ns.isfinite(v_hi), 0.5 * (low + high), secant)
    start = lo + h * u
    start = ns.where(ns.isfinite(start), start, 0.5 * (lo + hi))
    return ns.minimum(ns.maximum(start, 1e-3), 1.0 - 1e-3)


def newton_update(ns, alpha, d, var, third, lo, hi, step_before, last_step, prev_size, *,
                  xtol: float, eps: float):
    """One safeguarded Newton (third None) or Halley step from `alpha`, where D = d, Var = var.

    Returns (lo, hi, next alpha, converged, |next - alpha|, |step|): the bracket keeps
    D(lo) > 0 > D(hi); a step that leaves it, or that is not below half the step before last
    (creeping: Numerical Recipes' rtsafe rule), is replaced by bisection. Converged: the
    correction is <= xtol, the bracket has collapsed (2 eps), or -- in float32 only -- the
    correction stopped shrinking below sqrt(eps) (float32's rounding floor: more passes cannot
    improve it). In float64 sqrt(eps) = 1.5e-8 is far above the floor, and a row converging
    linearly there would stop 1e-9 short: float64 runs to xtol or the collapsed bracket."""
    lo = ns.where(d > 0.0, alpha, lo)
    hi = ns.where(d < 0.0, alpha, hi)
    if third is None:   # Newton: alpha_new = alpha - D / D' = alpha + D / Var
        step = ns.divide(d, var)
    else:               # Halley: alpha_new = alpha - 2 D D' / (2 D'^2 - D D''), D'' = E(l-D)^3
        step = ns.divide(2.0 * d * var, 2.0 * var * var + d * third)
    candidate = alpha + step
    size = ns.abs(step)
    stall = math.sqrt(eps) if eps > 1e-10 else 0.0
    # where Var underflows to 0, D is flat to working precision (q is a point mass there) and the
    # step says nothing: Halley's is then 0 (2 D Var / (D E(l-D)^3)), which would read as
    # converged far from the root. Such a row bisects and is never converged by its step size.
    curved = var > 0.0
    converged = ((d == 0.0) | ((size <= xtol) & curved) | (hi - lo <= 2.0 * eps)
                 | ((size <= stall) & (size >= 0.5 * prev_size) & curved))
    inside = (candidate > lo) & (candidate < hi) & (size <= 0.5 * step_before) & curved
    candidate = ns.where(inside, candidate, 0.5 * (lo + hi))
    return lo, hi, candidate, converged, ns.abs(candidate - alpha), size


def family_numbers(ns, alpha, log_z, delta, log_z_above, log_z_below, theta_off, t_off):
    """(log Z, D, KL(q||pi_theta), KL(q||pi_t), ESS_theta, ESS_t) at alpha in (0, 1) from
    log Z(alpha), D(alpha), log Z(2 - alpha) and log Z(-alpha):
    KL(q||pi_theta) = (1 - alpha) D - log Z, KL(q||pi_t) = -alpha D - log Z,
    ESS_theta = 1 / (Z(alpha) Z(2 - alpha)), ESS_t = 1 / (Z(alpha) Z(-alpha)), 0 for a side with
    mass outside S."""
    ess_theta = ns.where(theta_off, 0.0, ns.exp(-(log_z + log_z_above)))
    ess_t = ns.where(t_off, 0.0, ns.exp(-(log_z + log_z_below)))
    return (log_z, delta, (1.0 - alpha) * delta - log_z, -alpha * delta - log_z, ess_theta,
            ess_t)
