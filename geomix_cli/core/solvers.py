"""Solvers for alpha*: the root of D(alpha) = E_{q_alpha}[l] on (0, 1), one result type for all.

Per row, before any solve, `classify_rows` decides whether a root exists (theory.md, support rules):

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
from scipy.optimize import brentq as _scipy_brentq

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


def classify_rows(log_pi_theta: np.ndarray, log_pi_t: np.ndarray,
                  row_errors: list[str | None] | None = None) -> RowClassification:
    """Decide per row whether alpha* exists and is unique (one pass: both end-point limits)."""
    n_rows = log_pi_theta.shape[0]
    status = np.full(n_rows, OK, dtype=object)
    message = [""] * n_rows
    l, log_base, support = log_ratio_on_support(log_pi_theta, log_pi_t)
    at0 = tilted_moments(l, log_base, np.zeros(n_rows))
    at1 = tilted_moments(l, log_base, np.ones(n_rows))
    has_support = support.any(axis=-1)
    with np.errstate(invalid="ignore"):
        spread = (np.max(np.where(support, l, -np.inf), axis=-1)
                  - np.min(np.where(support, l, np.inf), axis=-1))
        level = np.max(np.where(support, np.abs(l), 0.0), axis=-1)
    tol = constant_ratio_tolerance(log_pi_theta, log_pi_t, support)
    same_support = np.all(np.isfinite(log_pi_theta) == np.isfinite(log_pi_t), axis=-1)
    for b in range(n_rows):
        if row_errors is not None and row_errors[b] is not None:
            status[b] = INVALID
            message[b] = row_errors[b]
        elif not has_support[b]:
            status[b] = DISJOINT
            message[b] = ("pi_theta and pi_t share no token with positive probability: Z = 0 for "
                          "every alpha in (0, 1), there is no q")
        elif spread[b] <= tol[b]:
            if level[b] <= tol[b]:
                status[b] = DEGENERATE
                message[b] = ("pi_theta = pi_t on the common support: every alpha gives the same q "
                              "and equal KLs, alpha* is not unique")
            else:
                status[b] = NO_ROOT
                message[b] = (f"l = log pi_t - log pi_theta is the constant {l[b][support[b]][0]:.6g} "
                              "on the common support: q is the same for every alpha and the KLs "
                              "never meet")
        elif not (at0.mean[b] > 0.0 and at1.mean[b] < 0.0):
            status[b] = NO_ROOT
            sign = "<" if at0.mean[b] <= 0 else ">"
            why = "supports differ" if not same_support[b] else "numerically, within rounding,"
            message[b] = (f"{why} and D(alpha) = "
                          f"KL(q||pi_theta) - KL(q||pi_t) keeps one sign on (0, 1): "
                          f"KL(q||pi_theta) {sign} KL(q||pi_t) for every alpha "
                          f"(D(0+) = {at0.mean[b]:.6g}, D(1-) = {at1.mean[b]:.6g})")
    return RowClassification(status=status, message=message, d_at_0=at0.mean, d_at_1=at1.mean,
                             var_at_0=at0.var, var_at_1=at1.var)


def _empty_solution(method: str, cls: RowClassification) -> AlphaSolution:
    n = cls.status.shape[0]
    return AlphaSolution(method=method, alpha=np.full(n, np.nan), residual=np.full(n, np.nan),
                         iterations=np.zeros(n, dtype=np.int64),
                         evaluations=np.where(cls.status == INVALID, 0, 1).astype(np.int64),
                         status=cls.status.copy(), message=list(cls.message),
                         d_at_0=cls.d_at_0, d_at_1=cls.d_at_1)


def _row_chunks(n_rows: int, n_cols: int, budget_bytes: int = 256 * 2**20):
    """Row slices whose float64 temporaries (about 8 arrays of [rows, V]) stay under the budget."""
    per_row = 8 * 8 * max(n_cols, 1)
    step = max(1, budget_bytes // per_row)
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def solve_newton(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, *, order: int = 2,
                 xtol: float = 1e-14, max_iter: int = 60,
                 row_errors: list[str | None] | None = None,
                 classification: RowClassification | None = None,
                 record_iterates: bool = False) -> AlphaSolution:
    """Safeguarded Newton (order=2) or Halley (order=3) on D(alpha), vectorised over rows.

    One pass per iterate gives D = E_q[l], D' = -Var_q(l) (and E_q[(l-D)^3] for Halley, from
    D'' = E_q[(l-D)^3]). The bracket [lo, hi] with D(lo) > 0 > D(hi) is kept; a step that leaves
    it is replaced by bisection, so convergence is guaranteed. Start: the secant between the end
    point limits D(0+), D(1-), which the classification pass already computed. Stops when the
    Newton correction |D / D'| is below `xtol` (the returned alpha is the last evaluated one, so
    `residual` is exactly D there). With `record_iterates`, sol.extra["iterates"][b] lists the
    (alpha, D) pairs evaluated for row b, in order."""
    cls = classification or classify_rows(log_pi_theta, log_pi_t, row_errors)
    sol = _empty_solution("halley" if order == 3 else "newton", cls)
    iterates: dict[int, list[tuple[float, float]]] = {}
    if record_iterates:
        sol.extra["iterates"] = iterates
    active_rows = np.flatnonzero(cls.status == OK)
    n_cols = log_pi_theta.shape[-1]
    for chunk in _row_chunks(active_rows.size, n_cols):
        rows = active_rows[chunk]
        l, log_base, _ = log_ratio_on_support(log_pi_theta[rows], log_pi_t[rows])
        d0, d1 = cls.d_at_0[rows], cls.d_at_1[rows]
        lo = np.zeros(rows.size)
        hi = np.ones(rows.size)
        alpha = np.clip(d0 / (d0 - d1), 1e-3, 1 - 1e-3)
        done = np.zeros(rows.size, dtype=bool)
        final_alpha = np.full(rows.size, np.nan)
        final_d = np.full(rows.size, np.nan)
        iters = np.zeros(rows.size, dtype=np.int64)
        for _ in range(max_iter):
            idx = np.flatnonzero(~done)
            if idx.size == 0:
                break
            m = tilted_moments(l[idx], log_base[idx], alpha[idx], order=order)
            iters[idx] += 1
            d = m.mean
            if record_iterates:
                for j, a_j, d_j in zip(idx, alpha[idx], d):
                    iterates.setdefault(int(rows[j]), []).append((float(a_j), float(d_j)))
            lo[idx] = np.where(d > 0, alpha[idx], lo[idx])
            hi[idx] = np.where(d < 0, alpha[idx], hi[idx])
            with np.errstate(divide="ignore", invalid="ignore"):
                step = d / m.var  # alpha_new = alpha - D/D' = alpha + D/Var
                if order == 3:
                    # Halley: D'' = E_q[(l-D)^3]; alpha_new = alpha - 2 D D' / (2 D'^2 - D D'')
                    step = 2.0 * d * m.var / (2.0 * m.var**2 + d * m.third)
            candidate = alpha[idx] + step
            converged = (d == 0.0) | (np.abs(step) <= xtol) | (hi[idx] - lo[idx] <= 2 * _EPS)
            bad_step = ~np.isfinite(candidate) | (candidate <= lo[idx]) | (candidate >= hi[idx])
            candidate = np.where(bad_step, 0.5 * (lo[idx] + hi[idx]), candidate)
            final_alpha[idx] = np.where(converged, alpha[idx], final_alpha[idx])
            final_d[idx] = np.where(converged, d, final_d[idx])
            done[idx] |= converged
            alpha[idx] = np.where(converged, alpha[idx], candidate)
        sol.alpha[rows] = final_alpha
        sol.residual[rows] = final_d
        sol.iterations[rows] = iters
        sol.evaluations[rows] += iters
        not_conv = ~done
        for j in np.flatnonzero(not_conv):
            sol.status[rows[j]] = "max-iter"
            sol.message[rows[j]] = f"no convergence in {max_iter} iterations"
    return sol


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
        if not info.converged:
            sol.status[b] = "max-iter"
            sol.message[b] = f"brentq: {info.flag}"
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

