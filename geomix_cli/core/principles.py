"""Principles for choosing alpha on the geometric-mean family, the four behaviour cases of the
derivation, importance-weight summaries, and the numerical helpers of the verify suite.

numpy/scipy only; no printing, no files.

ESS along the family. With M(s) = log sum_{y in S} pi_theta(y) exp(s l(y)) (the cumulant generating
function of l under pi_theta, restricted to the common support S), for alpha in (0, 1):

    Z(alpha)                 = exp(M(1 - alpha))
    log ESS_theta(q_alpha)   = -M(1 - alpha) - M(alpha - 1)      (if pi_theta has no mass off S)
    log ESS_t(q_alpha)       = -M(1 - alpha) - M(1 + alpha)      (if pi_t has no mass off S)
    g(alpha) := log ESS_theta - log ESS_t = M(1 + alpha) - M(alpha - 1)

M is convex (strictly unless l is constant on S), so g'(alpha) = M'(1 + alpha) - M'(alpha - 1) > 0:
g is strictly increasing, g(0) = -log(1 + chi2(pi_theta||pi_t)) <= 0 and
g(1) = log(1 + chi2(pi_t||pi_theta)) >= 0 when the supports coincide. Hence the ESS-balance alpha
exists and is unique exactly when the supports coincide and l is not constant; it is found with a
bracketing solver (brentq) on g. Also ESS_theta(q_alpha) increases and ESS_t(q_alpha) decreases in
alpha, so min(ESS_theta, ESS_t) is maximised at the crossing: max-min-ess should equal ess-balance.
`max_min_ess_alpha` computes it independently (a grid and a bounded scalar optimiser on the ESS
computed from q itself) so that this equality is measured, not assumed.

When the supports differ, an ESS whose distribution puts mass off S is 0 for every alpha in (0, 1)
(q_alpha lives on S): no alpha in (0, 1) balances them, status `no-root`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geomix_cli.core.family import (common_support, effective_sample_size, entropy_formula_alpha,
                                    kl_divergence, log_q_alpha, log_ratio_on_support,
                                    tilted_moments)
from geomix_cli.core.solvers import (DEGENERATE, DISJOINT, NO_ROOT, OK, classify_rows,
                                     solve_alpha)

PRINCIPLES = ("kl-symmetry", "entropy", "bisection", "half", "ess-balance", "max-min-ess")
PRINCIPLE_HELP = {
    "kl-symmetry": "exact alpha*: KL(q||pi_theta) = KL(q||pi_t) (safeguarded Newton)",
    "entropy": "the derivation's heuristic H(pi_theta) / (H(pi_theta) + H(pi_t))",
    "bisection": "the derivation's reference code (float32, +1e-10 smoothing, tol 1e-6)",
    "half": "alpha = 0.5",
    "ess-balance": "ESS_theta(q) = ESS_t(q), solved exactly (brentq on log ESS_theta - log ESS_t)",
    "max-min-ess": "maximises min(ESS_theta(q), ESS_t(q)) (grid + bounded scalar optimiser)",
}


# ----------------------------------------------------------------------------------------------
# ESS along the family


def _cgf(log_pi_theta_s: np.ndarray, l_s: np.ndarray, s: float) -> float:
    """M(s) = log sum_S pi_theta exp(s l), for one row restricted to S."""
    from scipy.special import logsumexp

    return float(logsumexp(log_pi_theta_s + s * l_s))


def log_ess_along_family(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, alpha):
    """(log ESS_theta(q_alpha), log ESS_t(q_alpha)) for one row at each alpha (array), computed
    from q_alpha itself (exact at the end points, -inf where an ESS is 0)."""
    alpha = np.atleast_1d(np.asarray(alpha, dtype=np.float64))
    rows_t = np.broadcast_to(log_pi_theta, (alpha.size, log_pi_theta.shape[-1]))
    rows_p = np.broadcast_to(log_pi_t, (alpha.size, log_pi_t.shape[-1]))
    log_q = log_q_alpha(rows_t, rows_p, alpha)
    with np.errstate(divide="ignore"):
        return (np.log(effective_sample_size(rows_t, log_q)),
                np.log(effective_sample_size(rows_p, log_q)))


@dataclass
class PrincipleSolution:
    """alpha per row for one principle, with a status and message like AlphaSolution.

    `residual`: the quantity the principle sets to 0 (D(alpha) for kl-symmetry, log ESS_theta -
    log ESS_t for ess-balance), NaN where it has none."""

    principle: str
    alpha: np.ndarray
    status: np.ndarray
    message: list[str]
    residual: np.ndarray
    evaluations: np.ndarray
    extra: dict = field(default_factory=dict)


def _support_status(log_pi_theta: np.ndarray, log_pi_t: np.ndarray):
    """Per row: None when both distributions live on S (ESS balance is well posed), else
    (status, message)."""
    cls = classify_rows(log_pi_theta, log_pi_t)
    sup = common_support(log_pi_theta, log_pi_t)
    out = []
    for b in range(log_pi_theta.shape[0]):
        theta_off = bool(np.any(np.isfinite(log_pi_theta[b]) & ~sup[b]))
        t_off = bool(np.any(np.isfinite(log_pi_t[b]) & ~sup[b]))
        if cls.status[b] == DISJOINT:
            out.append((DISJOINT, cls.message[b]))
        elif theta_off or t_off:
            who = ("both pi_theta and pi_t put" if theta_off and t_off else
                   "pi_theta puts" if theta_off else "pi_t puts")
            out.append((NO_ROOT, f"{who} mass outside the common support, where q_alpha is 0 "
                        "for every alpha in (0, 1): the corresponding ESS is 0 there and no "
                        "alpha in (0, 1) balances the two ESS"))
        elif cls.status[b] == DEGENERATE:
            out.append((DEGENERATE, "pi_theta = pi_t: both ESS are 1 for every alpha, the "
                        "balance point is not unique"))
        elif cls.status[b] == NO_ROOT:
            out.append((NO_ROOT, cls.message[b]))
        else:
            out.append(None)
    return out


def ess_balance_alpha(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, *,
                      xtol: float = 1e-14) -> PrincipleSolution:
    """The alpha where ESS_theta(q_alpha) = ESS_t(q_alpha), exactly: brentq on
    g(alpha) = M(1 + alpha) - M(alpha - 1) (see the module doc: g is strictly increasing, with
    g(0) <= 0 <= g(1) when the supports coincide, so the root exists and is unique)."""
    from scipy.optimize import brentq

    log_pi_theta = np.atleast_2d(log_pi_theta)
    log_pi_t = np.atleast_2d(log_pi_t)
    n = log_pi_theta.shape[0]
    alpha = np.full(n, np.nan)
    residual = np.full(n, np.nan)
    evaluations = np.zeros(n, dtype=np.int64)
    status = np.full(n, OK, dtype=object)
    message = [""] * n
    for b, verdict in enumerate(_support_status(log_pi_theta, log_pi_t)):
        if verdict is not None:
            status[b], message[b] = verdict
            continue
        l, _, sup = log_ratio_on_support(log_pi_theta[b], log_pi_t[b])
        lt, ls = log_pi_theta[b][sup], l[sup]

        def g(a: float) -> float:
            return _cgf(lt, ls, 1.0 + a) - _cgf(lt, ls, a - 1.0)

        g0, g1 = g(0.0), g(1.0)
        if g0 == 0.0 or g1 == 0.0:
            root = 0.0 if g0 == 0.0 else 1.0
            calls = 2
        elif not (g0 < 0.0 < g1):
            status[b] = NO_ROOT
            message[b] = (f"log ESS_theta - log ESS_t keeps one sign on [0, 1] (g(0) = {g0:.6g}, "
                          f"g(1) = {g1:.6g})")
            continue
        else:
            root, info = brentq(g, 0.0, 1.0, xtol=xtol, rtol=4 * np.finfo(float).eps,
                                maxiter=200, full_output=True, disp=False)
            calls = info.function_calls + 2
        alpha[b] = root
        residual[b] = g(root)
        evaluations[b] = calls
    return PrincipleSolution("ess-balance", alpha, status, message, residual, evaluations)


def max_min_ess_alpha(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, *, grid: int = 33,
                      xatol: float = 1e-12) -> PrincipleSolution:
    """argmax_alpha min(ESS_theta(q_alpha), ESS_t(q_alpha)) on [0, 1], from the ESS of q itself:
    the best point of a grid, refined by a bounded scalar optimiser between its neighbours.
    `residual` is log ESS_theta - log ESS_t at the optimum; extra["min_ess"] the optimum value."""
    from scipy.optimize import minimize_scalar

    log_pi_theta = np.atleast_2d(log_pi_theta)
    log_pi_t = np.atleast_2d(log_pi_t)
    n = log_pi_theta.shape[0]
    alpha = np.full(n, np.nan)
    residual = np.full(n, np.nan)
    best_value = np.full(n, np.nan)
    evaluations = np.zeros(n, dtype=np.int64)
    status = np.full(n, OK, dtype=object)
    message = [""] * n
    cls = classify_rows(log_pi_theta, log_pi_t)
    alphas = np.linspace(0.0, 1.0, grid)
    for b in range(n):
        if cls.status[b] == DISJOINT:
            status[b], message[b] = DISJOINT, cls.message[b]
            continue
        if cls.status[b] == DEGENERATE:
            status[b] = DEGENERATE
            message[b] = "pi_theta = pi_t: min ESS is 1 for every alpha, the maximiser is not unique"
            continue
        e_theta, e_t = log_ess_along_family(log_pi_theta[b], log_pi_t[b], alphas)
        values = np.minimum(e_theta, e_t)
        i = int(np.argmax(values))
        calls = grid
        lo, hi = alphas[max(i - 1, 0)], alphas[min(i + 1, grid - 1)]

        def neg_min(a: float) -> float:
            et, ep = log_ess_along_family(log_pi_theta[b], log_pi_t[b], a)
            v = min(float(et[0]), float(ep[0]))
            return -v if np.isfinite(v) else 1e300

        a_best, v_best = alphas[i], values[i]
        if np.isfinite(v_best):
            res = minimize_scalar(neg_min, bounds=(lo, hi), method="bounded",
                                  options={"xatol": xatol, "maxiter": 500})
            calls += int(res.nfev)
            if -res.fun >= v_best:
                a_best, v_best = float(res.x), -float(res.fun)
        else:
            status[b] = NO_ROOT
            message[b] = "min(ESS_theta, ESS_t) is 0 for every alpha in [0, 1]"
            continue
        et, ep = log_ess_along_family(log_pi_theta[b], log_pi_t[b], a_best)
        alpha[b] = a_best
        residual[b] = float(et[0] - ep[0])
        best_value[b] = float(np.exp(v_best))
        evaluations[b] = calls
    return PrincipleSolution("max-min-ess", alpha, status, message, residual, evaluations,
                             extra={"min_ess": best_value})


def solve_principle(log_pi_theta: np.ndarray, log_pi_t: np.ndarray,
                    principle: str) -> PrincipleSolution:
    """alpha per row for a named principle (see PRINCIPLES)."""
    log_pi_theta = np.atleast_2d(np.asarray(log_pi_theta, dtype=np.float64))
    log_pi_t = np.atleast_2d(np.asarray(log_pi_t, dtype=np.float64))
    if principle == "ess-balance":
        return ess_balance_alpha(log_pi_theta, log_pi_t)
    if principle == "max-min-ess":
        return max_min_ess_alpha(log_pi_theta, log_pi_t)
    if principle == "half":
        cls = classify_rows(log_pi_theta, log_pi_t)
        ok = np.isin(cls.status, [OK, NO_ROOT, DEGENERATE])
        l, log_base, _ = log_ratio_on_support(log_pi_theta, log_pi_t)
        residual = np.where(ok, tilted_moments(l, log_base, np.full(len(ok), 0.5)).mean, np.nan)
        return PrincipleSolution("half", np.where(ok, 0.5, np.nan), cls.status.copy(),
                                 list(cls.message), residual, np.zeros(len(ok), dtype=np.int64))
    method = {"kl-symmetry": "newton", "entropy": "entropy", "bisection": "bisection"}.get(principle)
    if method is None:
        raise ValueError(f"unknown principle {principle!r}; choose from {', '.join(PRINCIPLES)}")
    sol = solve_alpha(log_pi_theta, log_pi_t, method)
    return PrincipleSolution(principle, sol.alpha, sol.status, sol.message, sol.residual,
                             sol.evaluations)


# ----------------------------------------------------------------------------------------------
# The four behaviour cases (section 1.3 of the derivation)

# the derivation's "within 10%" for ESS_theta(q) and ESS_t(q): max / min <= ESS_BAND_RATIO
ESS_BAND = 0.10
ESS_BAND_RATIO = 1.0 + ESS_BAND

CASE_KEYS = ("case1", "case2", "case3", "case4")  # the cases' column prefixes in tables
CASE_NAMES = ("1 large/large: maintained", "2 small/large: boosted, not beyond pi_t",
              "3 large/small: suppressed, not below pi_t", "4 small/small: rarely sampled")
CASE_EXPECTATIONS = (
    "min(pi_theta, pi_t) <= q <= max(pi_theta, pi_t)",
    "pi_theta < q <= pi_t",
    "pi_t <= q < pi_theta",
    "q < threshold",
)


@dataclass
class FourCases:
    """Per row (arrays [B, 4], cases 1..4 in columns):

    counts: tokens in each case; mass_q / mass_theta / mass_t: the probability each puts on the
    case; meeting: tokens meeting the case's expectation (CASE_EXPECTATIONS); fraction:
    meeting / counts (NaN for an empty case); threshold: the per-row threshold used.

    A token is 'large' under a distribution when its probability is >= threshold (default the
    uniform level 1 / V, V = the tokens where pi_theta or pi_t is positive). Tokens where both are
    0 do not exist for the problem and are not counted. Comparisons use a relative slack of
    `rel_tol` (rounding), so q = pi_t exactly counts as 'not beyond'."""

    counts: np.ndarray
    mass_q: np.ndarray
    mass_theta: np.ndarray
    mass_t: np.ndarray
    meeting: np.ndarray
    threshold: np.ndarray

    @property
    def fraction(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.meeting / np.maximum(self.counts, 1), np.nan)

    @property
    def fraction_all(self) -> np.ndarray:
        return self.meeting.sum(axis=1) / np.maximum(self.counts.sum(axis=1), 1)


def four_cases(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, log_q: np.ndarray, *,
               threshold: float | None = None, rel_tol: float = 1e-9) -> FourCases:
    """Classify every token of every row into the four cases and check each case's expectation."""
    log_pi_theta = np.atleast_2d(log_pi_theta)
    log_pi_t = np.atleast_2d(log_pi_t)
    log_q = np.atleast_2d(log_q)
    exists = np.isfinite(log_pi_theta) | np.isfinite(log_pi_t)
    n_tokens = exists.sum(axis=1)
    if threshold is None:
        thr = 1.0 / np.maximum(n_tokens, 1)
    else:
        thr = np.full(log_pi_theta.shape[0], float(threshold))
    p_theta, p_t, q = np.exp(log_pi_theta), np.exp(log_pi_t), np.exp(log_q)
    big_theta = p_theta >= thr[:, None]
    big_t = p_t >= thr[:, None]
    masks = [big_theta & big_t, ~big_theta & big_t, big_theta & ~big_t, ~big_theta & ~big_t]
    masks = [m & exists for m in masks]
    lo = np.minimum(p_theta, p_t) * (1 - rel_tol)
    hi = np.maximum(p_theta, p_t) * (1 + rel_tol)
    meets = [
        (q >= lo) & (q <= hi),
        (q > p_theta) & (q <= p_t * (1 + rel_tol)),
        (q < p_theta) & (q >= p_t * (1 - rel_tol)),
        q < thr[:, None],
    ]
    counts = np.stack([m.sum(axis=1) for m in masks], axis=1)
    meeting = np.stack([(m & e).sum(axis=1) for m, e in zip(masks, meets)], axis=1)
    mass = lambda p: np.stack([np.where(m, p, 0.0).sum(axis=1) for m in masks], axis=1)  # noqa: E731
    return FourCases(counts=counts, mass_q=mass(q), mass_theta=mass(p_theta), mass_t=mass(p_t),
                     meeting=meeting, threshold=thr)


# ----------------------------------------------------------------------------------------------
# Importance weights w = pi_theta / q

WEIGHT_QUANTILES = (0.01, 0.05, 0.5, 0.95, 0.99)


def importance_weight_summary(log_pi_theta: np.ndarray, log_q: np.ndarray,
                              quantiles=WEIGHT_QUANTILES) -> dict:
    """Per row, the importance weights w = pi_theta / q over supp(q), as a sample from q sees them:
    min, max, the q-weighted quantiles, E_q[w] (pi_theta's mass on supp(q); 1 for full support)
    and E_q[w^2] = 1 / ESS_theta(q) (when pi_theta lives on supp(q)). Arrays over rows."""
    from scipy.special import logsumexp

    log_pi_theta = np.atleast_2d(log_pi_theta)
    log_q = np.atleast_2d(log_q)
    n = log_pi_theta.shape[0]
    out = {"w_min": np.full(n, np.nan), "w_max": np.full(n, np.nan),
           "w_mean_q": np.full(n, np.nan), "w_second_moment_q": np.full(n, np.nan)}
    for qq in quantiles:
        out[f"w_q{qq:g}"] = np.full(n, np.nan)
    for b in range(n):
        sup = np.isfinite(log_q[b])
        if not sup.any():
            continue
        with np.errstate(divide="ignore"):
            log_w = log_pi_theta[b][sup] - log_q[b][sup]
        w = np.exp(log_w)
        qv = np.exp(log_q[b][sup])
        order = np.argsort(w, kind="stable")
        cum = np.cumsum(qv[order])
        cum /= cum[-1]
        out["w_min"][b] = w.min()
        out["w_max"][b] = w.max()
        out["w_mean_q"][b] = float(np.sum(qv * w))
        out["w_second_moment_q"][b] = float(np.exp(logsumexp(log_q[b][sup] + 2 * log_w)))
        for qq in quantiles:
            k = min(int(np.searchsorted(cum, qq, side="left")), w.size - 1)
            out[f"w_q{qq:g}"][b] = w[order][k]
    return out


# ----------------------------------------------------------------------------------------------
# Helpers of the verify suite (Pareto front, identities, root counting)


def weighted_objective(log_q: np.ndarray, log_pi_theta: np.ndarray, log_pi_t: np.ndarray,
                       alpha: float) -> float:
    """alpha KL(q||pi_theta) + (1 - alpha) KL(q||pi_t) for one row."""
    return float(alpha * kl_divergence(log_q, log_pi_theta)
                 + (1 - alpha) * kl_divergence(log_q, log_pi_t))


def weighted_sum_minimiser(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, alpha: float,
                           rng: np.random.Generator, *, gtol: float = 1e-12, restarts: int = 3):
    """Minimise alpha KL(q||pi_theta) + (1 - alpha) KL(q||pi_t) over the simplex with a generic
    optimiser (BFGS over softmax parameters, analytic gradient), knowing nothing of the geometric
    mean: the best of `restarts` runs (the uniform start, then random starts). Full-support rows.
    Returns (log q found, objective, result of the best run)."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    log_pi_theta = np.asarray(log_pi_theta, dtype=np.float64)
    log_pi_t = np.asarray(log_pi_t, dtype=np.float64)
    c = alpha * log_pi_theta + (1 - alpha) * log_pi_t  # objective = sum q (log q - c)

    def fun(x):
        log_q = x - logsumexp(x)
        q = np.exp(log_q)
        r = log_q - c
        value = float(np.sum(q * r))
        grad = q * (r - value)  # d/dx_j of sum q (log q - c) for q = softmax(x)
        return value, grad

    best = None
    for k in range(restarts):
        x0 = np.zeros(log_pi_theta.shape) if k == 0 else rng.normal(0.0, 2.0,
                                                                     size=log_pi_theta.shape)
        res = minimize(fun, x0, jac=True, method="BFGS", options={"gtol": gtol, "maxiter": 5000})
        if best is None or res.fun < best.fun:
            best = res
    res = best
    log_q = res.x - logsumexp(res.x)
    return log_q, weighted_objective(log_q, log_pi_theta, log_pi_t, alpha), res


def front_kls(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, alphas: np.ndarray):
    """(KL(q_alpha||pi_theta), KL(q_alpha||pi_t)) along the family for one row, computed directly
    from q_alpha (sums over tokens, not the closed forms)."""
    rows_t = np.broadcast_to(log_pi_theta, (alphas.size, log_pi_theta.shape[-1]))
    rows_p = np.broadcast_to(log_pi_t, (alphas.size, log_pi_t.shape[-1]))
    log_q = log_q_alpha(rows_t, rows_p, alphas)
    return kl_divergence(log_q, rows_t), kl_divergence(log_q, rows_p)


def dominance_margin(cand_theta: np.ndarray, cand_t: np.ndarray, front_theta: np.ndarray,
                     front_t: np.ndarray) -> np.ndarray:
    """For each candidate (KL to pi_theta, KL to pi_t): min over front points of
    max(cand_theta - front_theta, cand_t - front_t). A negative margin means the candidate is
    strictly better on both objectives than some front point (it dominates it); >= 0 means it
    dominates none of the listed front points."""
    d1 = cand_theta[:, None] - front_theta[None, :]
    d2 = cand_t[:, None] - front_t[None, :]
    return np.min(np.maximum(d1, d2), axis=1)


def count_sign_changes(values: np.ndarray) -> int:
    """Sign changes of a sequence (zeros skipped)."""
    s = np.sign(values)
    s = s[s != 0]
    return int(np.sum(s[1:] != s[:-1]))


def log_z_along(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, alpha) -> np.ndarray:
    """log Z(alpha) = logsumexp_S(alpha log pi_theta + (1 - alpha) log pi_t), computed directly
    (not from the tilted moments), for one row at each alpha."""
    from scipy.special import logsumexp

    alpha = np.atleast_1d(np.asarray(alpha, dtype=np.float64))
    sup = common_support(log_pi_theta, log_pi_t)
    a = alpha[:, None]
    return logsumexp(a * log_pi_theta[sup][None, :] + (1 - a) * log_pi_t[sup][None, :], axis=1)


def argmin_log_z(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, *, xatol: float = 1e-12) -> float:
    """argmin over [0, 1] of log Z(alpha) by a bounded scalar optimiser (independent of D)."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda a: float(log_z_along(log_pi_theta, log_pi_t, a)[0]),
                          bounds=(0.0, 1.0), method="bounded",
                          options={"xatol": xatol, "maxiter": 500})
    return float(res.x)


def bisection_iterations(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, tol: float,
                         max_iter: int = 200) -> tuple[int, float]:
    """Plain float64 bisection on D over [0, 1] (exact D, no smoothing) until hi - lo < tol, for
    one row; returns (passes, alpha). Measures what the derivation's method costs."""
    l, log_base, _ = log_ratio_on_support(np.atleast_2d(log_pi_theta), np.atleast_2d(log_pi_t))
    lo, hi, n = 0.0, 1.0, 0
    while hi - lo >= tol and n < max_iter:
        mid = 0.5 * (lo + hi)
        d = float(tilted_moments(l, log_base, np.array([mid])).mean[0])
        n += 1
        if d > 0:
            lo = mid
        else:
            hi = mid
    return n, 0.5 * (lo + hi)



_CS_STEP = 1e-30


def delta_complex_step(l: np.ndarray, log_base: np.ndarray, alpha) -> np.ndarray:
    """dD/dalpha by the complex step Im D(alpha + i h) / h (no subtraction, so exact to rounding),
    with D(alpha) = sum w l / sum w, w = exp(log_base - alpha l): an independent check of
    D' = -Var_q(l). Row-wise over [B, V]."""
    a = np.asarray(alpha, dtype=np.float64)[..., None] + 1j * _CS_STEP
    with np.errstate(invalid="ignore", over="ignore"):
        s = log_base - a * l
        peak = np.max(np.where(np.isfinite(log_base), s.real, -np.inf), axis=-1, keepdims=True)
        w = np.where(np.isfinite(log_base), np.exp(s - peak), 0.0)
        d = np.sum(w * l, axis=-1) / np.sum(w, axis=-1)
    return d.imag / _CS_STEP


def log_z_complex_step(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, alpha) -> np.ndarray:
    """d/dalpha log Z(alpha) by the complex step, with log Z = log sum_S pi_theta^alpha
    pi_t^(1-alpha) summed directly from the two rows (no log-ratio, no tilted moments)."""
    a = np.asarray(alpha, dtype=np.float64)[..., None] + 1j * _CS_STEP
    sup = common_support(log_pi_theta, log_pi_t)
    with np.errstate(invalid="ignore", over="ignore"):
        s = np.where(sup, a * np.where(sup, log_pi_theta, 0.0)
                     + (1 - a) * np.where(sup, log_pi_t, 0.0), -np.inf)
        peak = np.max(s.real, axis=-1, keepdims=True)
        w = np.where(sup, np.exp(s - peak), 0.0)
        log_z = np.log(np.sum(w, axis=-1)) + peak[..., 0]
    return log_z.imag / _CS_STEP


def principle_metrics(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, sol: PrincipleSolution, *,
                      threshold: float | None = None) -> dict:
    """Per row, at the principle's alpha: both KLs (summed directly over tokens), |KL gap|, the
    pair's Chernoff information C = -log Z(alpha*) (NaN where alpha* does not exist), both ESS,
    min ESS, and the fraction of tokens meeting their four-case expectation. Arrays over rows;
    NaN where the principle gave no alpha."""
    log_pi_theta = np.atleast_2d(log_pi_theta)
    log_pi_t = np.atleast_2d(log_pi_t)
    n = log_pi_theta.shape[0]
    nan = np.full(n, np.nan)
    out = {k: nan.copy() for k in ("kl_q_theta", "kl_q_target", "kl_gap", "chernoff",
                                   "ess_theta", "ess_target", "min_ess", "four_case_fraction")}
    exact = solve_alpha(log_pi_theta, log_pi_t, "newton")
    has_star = exact.status == OK
    if has_star.any():
        l, log_base, _ = log_ratio_on_support(log_pi_theta[has_star], log_pi_t[has_star])
        out["chernoff"][has_star] = -tilted_moments(l, log_base, exact.alpha[has_star]).log_z
    use = np.isfinite(sol.alpha)
    if not use.any():
        return out
    lt, lT = log_pi_theta[use], log_pi_t[use]
    log_q = log_q_alpha(lt, lT, sol.alpha[use])
    kl_theta = kl_divergence(log_q, lt)
    kl_t = kl_divergence(log_q, lT)
    e_theta = effective_sample_size(lt, log_q)
    e_t = effective_sample_size(lT, log_q)
    fc = four_cases(lt, lT, log_q, threshold=threshold)
    out["kl_q_theta"][use] = kl_theta
    out["kl_q_target"][use] = kl_t
    out["kl_gap"][use] = np.abs(kl_theta - kl_t)
    out["ess_theta"][use] = e_theta
    out["ess_target"][use] = e_t
    out["min_ess"][use] = np.minimum(e_theta, e_t)
    out["four_case_fraction"][use] = fc.fraction_all
    return out


def check_rows(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, *,
               threshold: float | None = None, row_errors=None) -> dict:
    """What `geomix check` reports per row, at q* (the exact alpha*): status, alpha*, alpha_H,
    the Chernoff information C = KL(q*||pi_theta), the four-case counts / q-mass / fraction
    meeting, ESS_theta(q*), ESS_t(q*), their ratio max/min, and the importance weights
    w = pi_theta / q*. Rows without alpha* carry NaN."""
    log_pi_theta = np.atleast_2d(log_pi_theta)
    log_pi_t = np.atleast_2d(log_pi_t)
    n = log_pi_theta.shape[0]
    sol = solve_alpha(log_pi_theta, log_pi_t, "newton", row_errors=row_errors)
    ok = sol.status == OK
    nan = np.full(n, np.nan)
    out = {"status": sol.status, "message": sol.message, "alpha": sol.alpha,
           "alpha_entropy": np.where(ok, entropy_formula_alpha(log_pi_theta, log_pi_t), np.nan),
           "chernoff": nan.copy(),
           "ess_theta": nan.copy(), "ess_target": nan.copy(), "ess_ratio": nan.copy(),
           "counts": np.zeros((n, 4), dtype=np.int64), "mass_q": np.full((n, 4), np.nan),
           "mass_theta": np.full((n, 4), np.nan), "mass_t": np.full((n, 4), np.nan),
           "meeting": np.zeros((n, 4), dtype=np.int64), "threshold": nan.copy()}
    weights = importance_weight_summary(np.zeros((n, 1)), np.full((n, 1), -np.inf))
    if ok.any():
        lt, lT = log_pi_theta[ok], log_pi_t[ok]
        log_q = log_q_alpha(lt, lT, sol.alpha[ok])
        e_t = effective_sample_size(lt, log_q)
        e_T = effective_sample_size(lT, log_q)
        out["chernoff"][ok] = np.maximum(kl_divergence(log_q, lt), 0.0)  # = KL(q*||pi_t)
        out["ess_theta"][ok] = e_t
        out["ess_target"][ok] = e_T
        out["ess_ratio"][ok] = np.maximum(e_t, e_T) / np.minimum(e_t, e_T)
        fc = four_cases(lt, lT, log_q, threshold=threshold)
        for key in ("counts", "mass_q", "mass_theta", "mass_t", "meeting"):
            out[key][ok] = getattr(fc, key)
        out["threshold"][ok] = fc.threshold
        w = importance_weight_summary(lt, log_q)
        for key in weights:
            weights[key][ok] = w[key]
    out["weights"] = weights
    return out
