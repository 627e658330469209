"""The small-call lane: one row of numpy float64 log-probabilities, start to finish, with its
per-row numbers as Python floats.

A single short row costs the general path (`kernel.prepare_pair` -> `kernel.solve_block`) a few
hundred microseconds of bookkeeping around a few dozen microseconds of arithmetic: per-row arrays
of length 1, the `Prepared` record, support masks, status and message arrays. This lane runs the
same computation for the common case -- one row, numpy, float64, both supports full, a root in
(0, 1) -- and declines (returns None) everything else, which then takes the general path:
rows with zeros, rows without a root (statuses and messages are the general path's), rows that
fail the normalisation check, rows that do not converge, passes whose Z leaves [1e-280, 1e280].

Exactness: the lane gives the general path's numbers to the last bit, not merely to a few ulps
(tests/test_single_row.py compares them with assert_array_equal on rows of every grid size, all
kinds, Newton and Halley, with and without diagnostics). It does the same floating-point
operations on the same values in the same order: the passes are `passes.row_moments` /
`rows_moments` (the products, pairwise row sums, numpy's log and the divisions of
`passes.moments`, in fewer calls), the support rules (`rules.root_inside`, which is
`rules.status_code`'s 'ok' on floats, and `rules.constant_tolerance`), the start and the steps (`kernel.newton_one_row`:
`rules.hermite_start`, `rules.newton_update`), the family's numbers (`rules.family_numbers`),
the re-centring (`prepare.recentring_constant_rows`) and the end-point entropies (the operations
of `prepare._end_point_entropies`, both products summed in one reduction). What is specific is the
order of the calls for one row (`kernel.prepare_pair`'s dense branch, `kernel.solve_block`,
`kernel._family_interior`), written here once more on floats -- keep the two in step: the
row-for-row tests fail when they drift -- and, with diagnostics, log Z at 2 - alpha* and -alpha*
evaluated in the last Newton pass (`newton_one_row(family=...)`), which saves a pass.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from geomix_cli.core.kernel import FAMILY_FIELDS, newton_one_row
from geomix_cli.core.prepare import EPS64, RECENTRE_MAX_ABS_L, recentring_constant_rows
from geomix_cli.core.passes import _grid_alphas, _grid_values, rows_moments, scratch
from geomix_cli.core.rules import (GRID_ELEMENTS, _RowScalars, constant_tolerance,
                                   family_numbers, grid_size, root_inside)

_OK = np.array(["ok"], dtype=object)



def solve_row(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, *, order: int = 2,
              xtol: float | None = None, max_iter: int = 60, check_tolerance=None,
              diagnostics: bool = False, iterates: dict | None = None) -> dict | None:
    """`kernel.solve_block(np, log_pi_theta, log_pi_t, ...)` for one [1, V] row of float64
    log-probabilities (C-contiguous), or None where the general path must take the row (see the
    module doc). Returns the same host arrays (one entry each) as `solve_block`."""
    numbers = solve_row_numbers(log_pi_theta[0], log_pi_t[0], order=order, xtol=xtol,
                                max_iter=max_iter, check_tolerance=check_tolerance,
                                diagnostics=diagnostics, iterates=iterates)
    if numbers is None:
        return None
    out = {name: np.array([value]) for name, value in numbers.items()}
    out["iterations"] = out["iterations"].astype(np.int64)
    out.update(status=_OK.copy(), message=[""],
               evaluations=np.array([1 + numbers["iterations"]], dtype=np.int64))
    return out


def solve_row_numbers(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, **options) -> dict | None:
    """`solve_row` on one row [V] (float64, C-contiguous), its numbers as Python floats in a dict
    (alpha, residual, iterations, d_at_0, d_at_1, log_z_at_alpha; with `diagnostics` also
    kernel.FAMILY_FIELDS and both entropies; iterations an int), or None.
    The lane sets no floating-point state and trips no overflow, invalid or divide flag; under a
    caller's np.seterr(under="raise") an underflow in a pass raises, and such a row is declined
    too (the general path then meets the caller's error state as before). `finite`: the caller
    knows that both rows hold finite log-probabilities (validation's plain case)."""
    try:
        return _solve_row_numbers(log_pi_theta, log_pi_t, **options)
    except FloatingPointError:
        return None


def _solve_row_numbers(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, *, order: int = 2,
                      xtol: float | None = None, max_iter: int = 60, check_tolerance=None,
                      diagnostics: bool = False, iterates: dict | None = None,
                      finite: bool = False) -> dict | None:
    eps = EPS64
    if xtol is None:
        xtol = 1e-14
    vocab = log_pi_theta.shape[-1]
    # lse_theta + lse_t = 0 (normalised): the scale of the rounding of l; -inf (a zero on either
    # side) or NaN: the general path (so l below is finite, and no floating-point state is set)
    small = GRID_ELEMENTS >= 3 * vocab               # short rows: fresh arrays cost less
    if finite and small:  # l and the sum side by side: the extremes of both in two reductions
        both = np.empty((2, vocab))
        np.subtract(log_pi_t, log_pi_theta, out=both[0])
        np.add(log_pi_theta, log_pi_t, out=both[1])
        (l_max, _), (l_min, lowest) = _MAX(both, -1).tolist(), _MIN(both, -1).tolist()
        scale = 0.0 - lowest
        if not scale < math.inf:  # (logits spanning ~1e308 reach -inf in normalisation)
            return None
        l = both[:1]
    else:                 # the sum first: a zero on both sides must not reach the difference
        l = np.empty((1, vocab)) if small else scratch(np, "l", (1, vocab), log_pi_theta)
        np.add(log_pi_theta, log_pi_t, out=l[0])
        scale = 0.0 - _MIN(l[0]).item()
        if not scale < math.inf:
            return None
        np.subtract(log_pi_t, log_pi_theta, out=l[0])
        l_max, l_min = _MAX(l[0]).item(), _MIN(l[0]).item()
    l_row = l[0]
    spread = l_max - l_min
    level = max(abs(l_max), abs(l_min))
    tol = constant_tolerance(eps, scale)
    shift = 0.0
    if level <= RECENTRE_MAX_ABS_L:
        shift = 0.0 + float(recentring_constant_rows(np, log_pi_theta[None], l)[0])
    points, alphas, values = _lane_grid(vocab)
    # the first pass (`kernel.prepare_pair`'s): w, w l, w l^2 at the grid's alphas, one reduction
    buf = np.empty((3, points, vocab)) if small else scratch(np, "buf", (3, points, vocab), l)
    first = rows_moments(l_row, log_pi_t, alphas, buf)
    if first is None:                                # a Z out of range: the shifted pass there
        return None
    lz, mean, var, _, z = first
    if check_tolerance is not None and not (abs(lz[0]) <= check_tolerance
                                            and abs(lz[-1]) <= check_tolerance):
        return None                                  # refused by the general path, with its text
    d_grid = [m - shift for m in mean] if shift != 0.0 else mean
    v_grid = var
    d0, d1 = d_grid[0], d_grid[-1]
    if not root_inside(d0, d1, spread, tol, tol):
        return None                                  # no root: statuses and messages over there
    if diagnostics:   # `prepare._end_point_entropies`: the weights at alpha = 0 and 1 are pi_t,
        # pi_theta up to Z(0), Z(1): H = -(sum w z) / sum w, both products in one reduction
        products = buf[1][:2]
        np.multiply(buf[0][-1], log_pi_theta, out=products[0])
        np.multiply(buf[0][0], log_pi_t, out=products[1])
        weighted_theta, weighted_t = _SUM(products, -1).tolist()
        z_theta, z_t = z[-1], z[0]
        entropy_theta = -(weighted_theta / z_theta) + 0.0 + 0.0
        entropy_t = -(weighted_t / z_t) + 0.0 + 0.0
    # the family's alphas 2 - alpha and -alpha cannot overflow a weight while 2 max|l| < 700:
    # then the last Newton pass evaluates them too (no floating-point state to set)
    family = {} if diagnostics and level < 350.0 else None
    a, d, log_z, iterations, converged = newton_one_row(
        np, l, log_pi_t[None], np.empty((order + 1, 1, vocab)) if small
        else scratch(np, "buf", (order + 1, 1, vocab), l), None, np.float64,
        values, d_grid, v_grid, shift, 0.0, eps, order=order, xtol=xtol,
        max_iter=max_iter, iterates=iterates, fused=True, family=family)
    if not (converged and 0.0 < a < 1.0):
        return None
    out = dict(alpha=a, residual=d, iterations=iterations, d_at_0=d0, d_at_1=d1,
               log_z_at_alpha=log_z)
    if diagnostics:
        numbers = _family_row(l, log_pi_t, a, log_z, d, shift, family)
        if numbers is None:
            return None
        out.update(numbers, entropy_theta=entropy_theta, entropy_t=entropy_t)
    return out


@lru_cache(maxsize=64)
def _lane_grid(vocab: int) -> tuple:
    """(points, the first pass's alphas [points, 1], the same as a list of floats) for a row of
    length `vocab`: `grid_size` and the cached grids of `passes`, looked up once."""
    points = grid_size(vocab)
    return points, _grid_alphas(points, 1, np.float64), _grid_values(points).tolist()


def _family_row(l, log_base, a: float, log_z: float, delta: float, shift: float,
                known: dict) -> dict | None:
    """`kernel._family_interior` for the row at its alpha* (log Z and D known from the last
    pass): log Z at 2 - alpha and -alpha (`known` from the last Newton pass, else one pass),
    then `family_numbers`."""
    if known:
        above, below = known["above"], known["below"]
    else:
        others = np.array([[2.0 - a], [-a]])
        with np.errstate(over="ignore"):             # out of range: None below
            raw = rows_moments(l[0], log_base, others,
                               scratch(np, "buf", (1, 2, l.shape[-1]), l), order=0)
        if raw is None:
            return None
        above, below = raw[0]
    if shift != 0.0:
        above, below = above + 0.0 + (2.0 - a) * shift, below + 0.0 + (-a) * shift
    numbers = family_numbers(_RowScalars, a, log_z, delta, above, below, False, False)
    return dict(zip(FAMILY_FIELDS, numbers))


_MAX, _MIN, _SUM = np.maximum.reduce, np.minimum.reduce, np.add.reduce
