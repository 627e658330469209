"""Solvers for alpha*: the root of D(alpha) = E_{q_alpha}[l] on (0, 1), one result type for all.

Per row, before any solve, `classify_rows` decides whether a root exists (docs/derivation.md, "Support rules"):

- `disjoint-support`: S is empty, Z = 0, there is no q at all;
- `degenerate`: l is 0 on S, every alpha gives the same q and equal KLs: alpha* is not unique;
- `no-root`: l is a non-zero constant on S, or D(0+) and D(1-) have the same sign: D keeps one
  sign on (0, 1) and no alpha equalises the KLs;
- `ok`: D(0+) > 0 > D(1-); D is strictly decreasing (D' = -Var_q(l) < 0), so the root is unique.

Rows that failed validation arrive as `invalid` and are never computed on. Only `ok` rows get an
alpha; every other row reports NaN (null in JSON) with a message saying what is true instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geomix_cli.core.family import (entropy_formula_alpha, log_ratio_on_support,
                                    tilted_moments)

OK = "ok"
DEGENERATE = "degenerate"
NO_ROOT = "no-root"
DISJOINT = "disjoint-support"
INVALID = "invalid"
STATUSES = (OK, DEGENERATE, NO_ROOT, DISJOINT, INVALID)

EXACT_METHODS = ("newton", "halley", "brentq")
METHODS = EXACT_METHODS + ("bisection", "entropy")
DEFAULT_METHOD = "newton"

_EPS = np.finfo(np.float64).eps


@dataclass
class AlphaSolution:
    """Result of a batched solve (arrays over rows), in the spirit of scipy's RootResults.

    alpha:       the root (NaN unless status == 'ok'); for 'entropy' the heuristic alpha_H,
                 for 'bisection' the reference code's answer.
    residual:    D(alpha) = KL(q||pi_theta) - KL(q||pi_t) at the returned alpha (float64).
    iterations:  solver iterations per row (0 for rows not solved).
    evaluations: passes over the row's V entries (including classification).
    status, message: see module doc.
    d_at_0, d_at_1: the limits D(0+) and D(1-) on the common support (NaN if undefined).
    """

    method: str
    alpha: np.ndarray
    residual: np.ndarray
    iterations: np.ndarray
    evaluations: np.ndarray
    status: np.ndarray
    message: list[str]
    d_at_0: np.ndarray
    d_at_1: np.ndarray
    extra: dict = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return int(self.alpha.shape[0])

    @property
    def converged(self) -> np.ndarray:
        return self.status == OK

    def row(self, i: int) -> dict:
        return {"row": i, "status": str(self.status[i]), "alpha": float(self.alpha[i]),
                "residual": float(self.residual[i]), "iterations": int(self.iterations[i]),
                "evaluations": int(self.evaluations[i]), "message": self.message[i]}

    @classmethod
    def concatenate(cls, parts: "list[AlphaSolution]") -> "AlphaSolution":
        """The solutions of consecutive row chunks as one (same method; `extra` is not merged)."""
        arrays = ("alpha", "residual", "iterations", "evaluations", "status", "d_at_0", "d_at_1")
        return cls(method=parts[0].method,
                   **{name: np.concatenate([getattr(p, name) for p in parts]) for name in arrays},
                   message=[m for p in parts for m in p.message])


@dataclass(frozen=True)
class RowClassification:
    status: np.ndarray
    message: list[str]
    d_at_0: np.ndarray
    d_at_1: np.ndarray
    var_at_0: np.ndarray
    var_at_1: np.ndarray


def constant_ratio_tolerance(log_pi_theta: np.ndarray, log_pi_t: np.ndarray,
                             support: np.ndarray) -> np.ndarray:
    """Spread of l below which it counts as constant on S: the rounding of log pi_t - log pi_theta,
    a few ulps of the largest |log pi_theta| + |log pi_t| on S.

    (Scaling by max|l| instead is wrong: identical distributions have l ~ 0 but log p far from 0,
    and their rounding noise then looks like a real, non-constant l.)"""
    with np.errstate(invalid="ignore"):
        scale = np.max(np.where(support, np.abs(log_pi_theta) + np.abs(log_pi_t), 0.0), axis=-1)
    return 64.0 * _EPS * (1.0 + scale)


# Cache blocking: the classification and every Newton pass run on blocks of rows small enough that
# a block's few [rows, V] float64 arrays stay in the CPU cache (2 MiB each), and a block is solved
# to the end (classification, then every iterate) before the next one is read. On a 2-core EPYC
# this makes a pass about 3x cheaper than the same numpy operations over the whole batch.
_BLOCK_ELEMENTS = 1 << 18


def _row_blocks(n_rows: int, n_cols: int):
    step = max(1, _BLOCK_ELEMENTS // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def _block_moments(l: np.ndarray, log_base: np.ndarray, alpha: np.ndarray, buf: np.ndarray,
                   tmp: np.ndarray, order: int = 2):
    """`family.tilted_moments` (same formulas: centred moments of l under q_alpha) for one block,
    computed in two preallocated [rows, V] buffers. Returns (log_z, mean, var, third|None)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        np.multiply(l, -alpha[:, None], out=buf)
        buf += log_base
        peak = buf.max(axis=-1, keepdims=True)
        peak[~np.isfinite(peak)] = 0.0
        buf -= peak
        np.exp(buf, out=buf)                      # w
        z = buf.sum(axis=-1)
        np.multiply(buf, l, out=tmp)
        mean = tmp.sum(axis=-1) / z
        np.subtract(l, mean[:, None], out=tmp)    # l - mean
        buf *= tmp
        buf *= tmp                                # w (l - mean)^2
        var = buf.sum(axis=-1) / z
        third = None
        if order >= 3:
            buf *= tmp
            third = buf.sum(axis=-1) / z
        log_z = peak[:, 0] + np.log(z)
    return log_z, mean, var, third


def _classify_block(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, buf=None, tmp=None):
    """The per-row numbers classify_rows decides on, for one block of rows; also returns the
    block's (l, log_base) so that a solver can go on with them while they are in cache."""
    n = log_pi_theta.shape[0]
    l, log_base, support = log_ratio_on_support(log_pi_theta, log_pi_t)
    if buf is None or buf.shape != l.shape:
        buf, tmp = np.empty_like(l), np.empty_like(l)
    _, d0, v0, _ = _block_moments(l, log_base, np.zeros(n), buf, tmp)
    _, d1, v1, _ = _block_moments(l, log_base, np.ones(n), buf, tmp)
    has_support = support.any(axis=-1)
    with np.errstate(invalid="ignore"):
        spread = (np.max(np.where(support, l, -np.inf), axis=-1)
                  - np.min(np.where(support, l, np.inf), axis=-1))
        level = np.max(np.where(support, np.abs(l), 0.0), axis=-1)
    tol = constant_ratio_tolerance(log_pi_theta, log_pi_t, support)
    same_support = np.all(np.isfinite(log_pi_theta) == np.isfinite(log_pi_t), axis=-1)
    first = np.where(has_support, l[np.arange(n), np.argmax(support, axis=-1)], np.nan)
    numbers = dict(d0=d0, d1=d1, v0=v0, v1=v1, has_support=has_support, spread=spread,
                   level=level, tol=tol, same_support=same_support, first_l=first)
    return numbers, l, log_base, buf, tmp


def _status_codes(numbers: dict, invalid: np.ndarray) -> np.ndarray:
    """Vectorised status per row, in the order of the rules in classify_rows' messages."""
    status = np.full(invalid.shape[0], OK, dtype=object)
    with np.errstate(invalid="ignore"):
        constant = numbers["spread"] <= numbers["tol"]
        zero = numbers["level"] <= numbers["tol"]
        sign_change = (numbers["d0"] > 0.0) & (numbers["d1"] < 0.0)
        # D is non-increasing, so D(0+) and D(1-) both within rounding of 0 put D within rounding
        # of 0 on all of (0, 1): the KLs are equal to float64 resolution for every alpha (a pair
        # identical up to ~1e-8 in the logits, C ~ 1e-17). Its "root" would be rounding noise
        # (alphas from 0.01 to 0.93 were reported for such pairs), its "no root" a false claim.
        flat = (np.abs(numbers["d0"]) <= numbers["tol"]) & (np.abs(numbers["d1"]) <= numbers["tol"])
    status[~sign_change] = NO_ROOT
    status[constant & ~zero] = NO_ROOT
    status[(constant & zero) | flat] = DEGENERATE
    status[~numbers["has_support"]] = DISJOINT
    status[invalid] = INVALID
    return status


def _concat_numbers(parts: list[dict]) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def _finish_classification(numbers: dict, status: np.ndarray,
                           row_errors: list[str | None] | None) -> RowClassification:
    n_rows = status.shape[0]
    message = [""] * n_rows
    d0, d1 = numbers["d0"], numbers["d1"]
    for b in np.flatnonzero(status != OK):
        if status[b] == INVALID:
            message[b] = row_errors[b]
        elif status[b] == DISJOINT:
            message[b] = ("pi_theta and pi_t share no token with positive probability: Z = 0 for "
                          "every alpha in (0, 1), there is no q")
        elif status[b] == DEGENERATE and numbers["spread"][b] <= numbers["tol"][b]:
            message[b] = ("pi_theta = pi_t on the common support: every alpha gives the same q "
                          "and equal KLs, alpha* is not unique")
        elif status[b] == DEGENERATE:
            message[b] = (f"pi_theta and pi_t are equal to within float64 rounding: "
                          f"|KL(q||pi_theta) - KL(q||pi_t)| <= {numbers['tol'][b]:.1e} for every "
                          f"alpha (D(0+) = {d0[b]:.3g}, D(1-) = {d1[b]:.3g}), alpha* is not "
                          "determined")
        elif numbers["spread"][b] <= numbers["tol"][b]:
            message[b] = (f"l = log pi_t - log pi_theta is the constant {numbers['first_l'][b]:.6g} "
                          "on the common support: q is the same for every alpha and the KLs "
                          "never meet")
        else:
            sign = "<" if d0[b] <= 0 else ">"
            why = ("supports differ" if not numbers["same_support"][b]
                   else "numerically, within rounding,")
            message[b] = (f"{why} and D(alpha) = "
                          f"KL(q||pi_theta) - KL(q||pi_t) keeps one sign on (0, 1): "
                          f"KL(q||pi_theta) {sign} KL(q||pi_t) for every alpha "
                          f"(D(0+) = {d0[b]:.6g}, D(1-) = {d1[b]:.6g})")
    return RowClassification(status=status, message=message, d_at_0=d0, d_at_1=d1,
                             var_at_0=numbers["v0"], var_at_1=numbers["v1"])


def _invalid_mask(n_rows: int, row_errors: list[str | None] | None) -> np.ndarray:
    if row_errors is None:
        return np.zeros(n_rows, dtype=bool)
    return np.array([e is not None for e in row_errors], dtype=bool)


def classify_rows(log_pi_theta: np.ndarray, log_pi_t: np.ndarray,
                  row_errors: list[str | None] | None = None) -> RowClassification:
    """Decide per row whether alpha* exists and is unique (one pass: both end-point limits).

    invalid (row_errors) > disjoint-support (S empty) > l constant on S (degenerate when the
    constant is 0 within rounding, else no-root) > no-root (D(0+), D(1-) of the same sign) > ok."""
    n_rows = log_pi_theta.shape[0]
    parts = []
    buf = tmp = None
    for block in _row_blocks(n_rows, log_pi_theta.shape[-1]):
        numbers, _, _, buf, tmp = _classify_block(log_pi_theta[block], log_pi_t[block], buf, tmp)
        parts.append(numbers)
    numbers = _concat_numbers(parts)
    status = _status_codes(numbers, _invalid_mask(n_rows, row_errors))
    return _finish_classification(numbers, status, row_errors)


def _empty_solution(method: str, cls: RowClassification) -> AlphaSolution:
    n = cls.status.shape[0]
    return AlphaSolution(method=method, alpha=np.full(n, np.nan), residual=np.full(n, np.nan),
                         iterations=np.zeros(n, dtype=np.int64),
                         evaluations=np.where(cls.status == INVALID, 0, 1).astype(np.int64),
                         status=cls.status.copy(), message=list(cls.message),
                         d_at_0=cls.d_at_0, d_at_1=cls.d_at_1)


def hermite_start(d0, d1, v0, v1, *, steps: int = 48):
    """Starting alpha from what the classification pass already knows: the root in (0, 1) of the
    cubic Hermite interpolant of D with D(0) = d0 > 0, D(1) = d1 < 0, D'(0) = -v0, D'(1) = -v1
    (found by bisection on the cubic, so a sign change is always kept), clipped to
    [1e-3, 1 - 1e-3]. Where the variances are not finite, the secant d0 / (d0 - d1).

    On the real SmolLM2 rows it starts 5-100x closer to alpha* than the secant (errors 1e-4..0.2
    instead of 0.008..0.36), which saves about one pass per row."""
    d0, d1 = np.asarray(d0, dtype=np.float64), np.asarray(d1, dtype=np.float64)
    v0, v1 = np.asarray(v0, dtype=np.float64), np.asarray(v1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        secant = d0 / (d0 - d1)
        a = -v0
        r1 = d1 - d0 - a
        c = (-v1 - a) - 2.0 * r1
        b = r1 - c
        lo, hi = np.zeros_like(d0), np.ones_like(d0)
        for _ in range(steps):
            mid = 0.5 * (lo + hi)
            positive = d0 + mid * (a + mid * (b + mid * c)) > 0
            lo = np.where(positive, mid, lo)
            hi = np.where(positive, hi, mid)
        start = np.where(np.isfinite(v0) & np.isfinite(v1), 0.5 * (lo + hi), secant)
    return np.clip(np.where(np.isfinite(start), start, 0.5), 1e-3, 1 - 1e-3)


def _newton_block(l, log_base, d0, d1, buf, tmp, *, order, xtol, max_iter, rows, iterates,
                  v0=None, v1=None):
    """Safeguarded Newton/Halley for the rows of one block (all with a root).
    Returns (alpha, D at alpha, iterations, converged)."""
    n = l.shape[0]
    lo = np.zeros(n)
    hi = np.ones(n)
    if v0 is None or v1 is None:
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha = np.clip(d0 / (d0 - d1), 1e-3, 1 - 1e-3)
    else:
        alpha = hermite_start(d0, d1, v0, v1)
    done = np.zeros(n, dtype=bool)
    final_alpha = np.full(n, np.nan)
    final_d = np.full(n, np.nan)
    iters = np.zeros(n, dtype=np.int64)
    # sizes of the last two steps taken (rtsafe's dx, dxold), to catch a creeping Newton/Halley
    last_step = np.ones(n)
    step_before = np.ones(n)
    for _ in range(max_iter):
        idx = np.flatnonzero(~done)
        if idx.size == 0:
            break
        if idx.size == n:
            _, d, var, third = _block_moments(l, log_base, alpha, buf[:n], tmp[:n], order)
        else:
            _, d, var, third = _block_moments(l[idx], log_base[idx], alpha[idx], buf[:idx.size],
                                              tmp[:idx.size], order)
        iters[idx] += 1
        if iterates is not None:
            for j, a_j, d_j in zip(idx, alpha[idx], d):
                iterates.setdefault(int(rows[j]), []).append((float(a_j), float(d_j)))
        lo[idx] = np.where(d > 0, alpha[idx], lo[idx])
        hi[idx] = np.where(d < 0, alpha[idx], hi[idx])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            step = d / var  # alpha_new = alpha - D/D' = alpha + D/Var
            if order == 3:
                # Halley: D'' = E_q[(l-D)^3]; alpha_new = alpha - 2 D D' / (2 D'^2 - D D'')
                step = 2.0 * d * var / (2.0 * var**2 + d * third)
            candidate = alpha[idx] + step
        converged = (d == 0.0) | (np.abs(step) <= xtol) | (hi[idx] - lo[idx] <= 2 * _EPS)
        bad_step = ~np.isfinite(candidate) | (candidate <= lo[idx]) | (candidate >= hi[idx])
        # A step that is not below half the step before last is creeping (e.g. q nearly a point
        # mass: Var and D ~ 1e-43, Halley's step ~ 2 Var / E(l-D)^3 stays ~1e-3 for 60
        # iterations): bisect instead (Numerical Recipes' rtsafe rule), so the bracket shrinks.
        slow = np.abs(step) > 0.5 * step_before[idx]
        candidate = np.where(bad_step | slow, 0.5 * (lo[idx] + hi[idx]), candidate)
        step_before[idx] = last_step[idx]
        last_step[idx] = np.abs(candidate - alpha[idx])
        final_alpha[idx] = np.where(converged, alpha[idx], final_alpha[idx])
        final_d[idx] = np.where(converged, d, final_d[idx])
        done[idx] |= converged
        alpha[idx] = np.where(converged, alpha[idx], candidate)
    return final_alpha, final_d, iters, done


def solve_newton(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, *, order: int = 2,
                 xtol: float = 1e-14, max_iter: int = 60,
                 row_errors: list[str | None] | None = None,
                 classification: RowClassification | None = None,
                 record_iterates: bool = False) -> AlphaSolution:
    """Safeguarded Newton (order=2) or Halley (order=3) on D(alpha), vectorised over rows.

    One pass per iterate gives D = E_q[l], D' = -Var_q(l) (and E_q[(l-D)^3] for Halley, from
    D'' = E_q[(l-D)^3]). The bracket [lo, hi] with D(lo) > 0 > D(hi) is kept; a step that leaves
    it is replaced by bisection, so convergence is guaranteed. Start: the root of the cubic
    Hermite interpolant of D from D(0+), D(1-) and D' = -Var at both ends (`hermite_start`), all
    of which the classification pass already computed. Stops when the
    Newton correction |D / D'| is below `xtol` (the returned alpha is the last evaluated one, so
    `residual` is exactly D there). With `record_iterates`, sol.extra["iterates"][b] lists the
    (alpha, D) pairs evaluated for row b, in order.

    Rows are processed in cache-sized blocks, each classified and solved to the end while its
    arrays are in cache (when `classification` is given, only the solve runs)."""
    n_rows, n_cols = log_pi_theta.shape[0], log_pi_theta.shape[-1]
    iterates: dict[int, list[tuple[float, float]]] | None = {} if record_iterates else None
    results = []  # (rows, alpha, d, iters, converged)
    buf = tmp = None
    if classification is None:
        invalid = _invalid_mask(n_rows, row_errors)
        parts = []
        for block in _row_blocks(n_rows, n_cols):
            numbers, l, log_base, buf, tmp = _classify_block(log_pi_theta[block],
                                                             log_pi_t[block], buf, tmp)
            parts.append(numbers)
            ok = np.flatnonzero(_status_codes(numbers, invalid[block]) == OK)
            if ok.size == 0:
                continue
            rows = np.arange(block.start, block.stop)[ok]
            if ok.size < l.shape[0]:
                l, log_base = l[ok], log_base[ok]
            results.append((rows, *_newton_block(
                l, log_base, numbers["d0"][ok], numbers["d1"][ok], buf, tmp, order=order,
                xtol=xtol, max_iter=max_iter, rows=rows, iterates=iterates,
                v0=numbers["v0"][ok], v1=numbers["v1"][ok])))
        numbers = _concat_numbers(parts)
        cls = _finish_classification(numbers, _status_codes(numbers, invalid), row_errors)
    else:
        cls = classification
        active_rows = np.flatnonzero(cls.status == OK)
        for chunk in _row_blocks(active_rows.size, n_cols):
            rows = active_rows[chunk]
            l, log_base, _ = log_ratio_on_support(log_pi_theta[rows], log_pi_t[rows])
            if buf is None or buf.shape != l.shape:
                buf, tmp = np.empty_like(l), np.empty_like(l)
            results.append((rows, *_newton_block(
                l, log_base, cls.d_at_0[rows], cls.d_at_1[rows], buf, tmp, order=order,
                xtol=xtol, max_iter=max_iter, rows=rows, iterates=iterates,
                v0=cls.var_at_0[rows], v1=cls.var_at_1[rows])))
    sol = _empty_solution("halley" if order == 3 else "newton", cls)
    if record_iterates:
        sol.extra["iterates"] = iterates
    for rows, final_alpha, final_d, iters, done in results:
        sol.alpha[rows] = final_alpha
        sol.residual[rows] = final_d
        sol.iterations[rows] = iters
        sol.evaluations[rows] += iters
        for j in np.flatnonzero(~done):
            sol.status[rows[j]] = "max-iter"
            sol.message[rows[j]] = f"no convergence in {max_iter} iterations"
    return sol


def _scipy_brentq(*args, **kwargs):
    """scipy.optimize.brentq, imported on first use (importing scipy.optimize takes ~0.3 s, which
    every `geomix` process paid at start-up when it was imported with the core)."""
    from scipy.optimize import brentq

    return brentq(*args, **kwargs)


def solve_brentq(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, *, xtol: float = 1e-15,
                 row_errors: list[str | None] | None = None,
                 classification: RowClassification | None = None) -> AlphaSolution:
    """scipy.optimize.brentq on D(alpha) over [0, 1], one row at a time: the exact reference.

    D at 0 and 1 is the continuous extension from inside (0, 1) (moments on the common support)."""
    cls = classification or classify_rows(log_pi_theta, log_pi_t, row_errors)
    sol = _empty_solution("brentq", cls)
    for b in np.flatnonzero(cls.status == OK):
        l, log_base, _ = log_ratio_on_support(log_pi_theta[b], log_pi_t[b])

        def delta(alpha: float) -> float:
            return float(tilted_moments(l, log_base, alpha).mean)

        root, info = _scipy_brentq(delta, 0.0, 1.0, xtol=xtol, rtol=4 * _EPS, maxiter=200,
                                   full_output=True, disp=False)
        sol.alpha[b] = root
        sol.residual[b] = delta(root)
        sol.iterations[b] = info.iterations
        sol.evaluations[b] += info.function_calls
        if not info.converged:  # never a number called alpha* on a row that is not 'ok'
            sol.status[b] = "max-iter"
            sol.message[b] = f"brentq: {info.flag} (last iterate {root!r})"
            sol.alpha[b] = np.nan
    return sol


def solve_bisection_reference(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, *,
                              tol: float = 1e-6, max_iter: int = 50, smoothing: float = 1e-10,
                              row_errors: list[str | None] | None = None,
                              classification: RowClassification | None = None,
                              record_iterates: bool = False) -> AlphaSolution:
    """The derivation's reference solver (section 6.2), reproduced faithfully as a baseline.

    float32 probabilities; log(p + 1e-10) on both sides; q = softmax(alpha log(pi_theta + 1e-10)
    + (1 - alpha) log(pi_t + 1e-10)); objective = sum q (log(pi_t + 1e-10) - log(pi_theta + 1e-10));
    bisection on [0, 1] for the whole batch, stopping when max(hi - lo) < tol or after max_iter;
    returns (lo + hi) / 2. Its epsilon and float32 bias alpha*; measure, do not trust.
    With `record_iterates`, sol.extra["iterates"][b] lists (mid, float32 objective) per step."""
    cls = classification or classify_rows(log_pi_theta, log_pi_t, row_errors)
    sol = _empty_solution("bisection", cls)
    rows = np.flatnonzero(cls.status == OK)
    if rows.size == 0:
        return sol
    f32 = np.float32
    p_theta = np.exp(log_pi_theta[rows]).astype(f32)
    p_t = np.exp(log_pi_t[rows]).astype(f32)
    log_theta = np.log(p_theta + f32(smoothing))
    log_t = np.log(p_t + f32(smoothing))
    log_ratio = log_t - log_theta
    lo = np.zeros(rows.size, dtype=f32)
    hi = np.ones(rows.size, dtype=f32)
    n_iter = 0
    for _ in range(max_iter):
        n_iter += 1
        mid = (lo + hi) / f32(2)
        logits = mid[:, None] * log_theta + (f32(1) - mid[:, None]) * log_t
        q = np.exp(logits - logits.max(axis=1, keepdims=True))
        q /= q.sum(axis=1, keepdims=True, dtype=f32)
        objective = (q * log_ratio).sum(axis=1, dtype=f32)
        if record_iterates:
            for j, b in enumerate(rows):
                sol.extra.setdefault("iterates", {}).setdefault(int(b), []).append(
                    (float(mid[j]), float(objective[j])))
        mask = objective > 0
        lo = np.where(mask, mid, lo)
        hi = np.where(mask, hi, mid)
        if (hi - lo).max() < tol:
            break
    alpha = ((lo + hi) / f32(2)).astype(np.float64)
    sol.alpha[rows] = alpha
    l, log_base, _ = log_ratio_on_support(log_pi_theta[rows], log_pi_t[rows])
    sol.residual[rows] = tilted_moments(l, log_base, alpha).mean
    sol.iterations[rows] = n_iter
    sol.evaluations[rows] += n_iter
    return sol


def solve_entropy_formula(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, *,
                          row_errors: list[str | None] | None = None,
                          classification: RowClassification | None = None) -> AlphaSolution:
    """The heuristic alpha_H = H(pi_theta) / (H(pi_theta) + H(pi_t)) — not a root of D.

    Reported for rows with status 'ok' (where alpha* exists to compare against); `residual` is
    D(alpha_H), the KL gap it leaves."""
    cls = classification or classify_rows(log_pi_theta, log_pi_t, row_errors)
    sol = _empty_solution("entropy", cls)
    rows = np.flatnonzero(cls.status == OK)
    if rows.size:
        alpha = entropy_formula_alpha(log_pi_theta[rows], log_pi_t[rows])
        l, log_base, _ = log_ratio_on_support(log_pi_theta[rows], log_pi_t[rows])
        sol.alpha[rows] = alpha
        sol.residual[rows] = tilted_moments(l, log_base, np.nan_to_num(alpha)).mean
        sol.iterations[rows] = 0
    return sol


def solve_alpha(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, method: str = DEFAULT_METHOD, *,
                row_errors: list[str | None] | None = None, **options) -> AlphaSolution:
    """Solve alpha* for every row of [B, V] log-probabilities with the named method."""
    log_pi_theta = np.atleast_2d(np.asarray(log_pi_theta, dtype=np.float64))
    log_pi_t = np.atleast_2d(np.asarray(log_pi_t, dtype=np.float64))
    if log_pi_theta.shape != log_pi_t.shape:
        raise ValueError(f"shapes differ: {log_pi_theta.shape} vs {log_pi_t.shape}")
    if method == "newton":
        return solve_newton(log_pi_theta, log_pi_t, order=2, row_errors=row_errors, **options)
    if method == "halley":
        return solve_newton(log_pi_theta, log_pi_t, order=3, row_errors=row_errors, **options)
    if method == "brentq":
        return solve_brentq(log_pi_theta, log_pi_t, row_errors=row_errors, **options)
    if method == "bisection":
        return solve_bisection_reference(log_pi_theta, log_pi_t, row_errors=row_errors, **options)
    if method == "entropy":
        return solve_entropy_formula(log_pi_theta, log_pi_t, row_errors=row_errors, **options)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")

