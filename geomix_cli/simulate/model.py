"""The tabular learning model: configuration, vocabulary reduction, samplers and the
importance-sampling gradient estimators. numpy/scipy only; no printing, no files.

Setting (one prompt x; K prompts are simulated at once, and many runs at once):
    pi_theta = softmax(theta_x), theta_x initialised to log pi_theta0(.|x) from the source;
    pi_t(.|x) fixed. Each step draws N tokens y_1..y_N ~ q (the sampler), forms an
    importance-weighted estimate g of the gradient of the objective wrt theta_x, and updates
    theta_x (SGD or Adam).

Objectives (e_y is the one-hot vector of y):

  reverse-kl  L = KL(pi_theta || pi_t) = E_{pi_theta}[f], f = log pi_theta - log pi_t
                 (the RL objective with reward log(pi_t/pi_ref), beta = 1: the derivation's setting)
      exact:     grad L = pi_theta * (f - E_{pi_theta}[f])
      weights:   w_i = pi_theta(y_i) / q(y_i)
  forward-kl  L = KL(pi_t || pi_theta)   (distillation / SFT; context only)
      exact:     grad L = pi_theta - pi_t
      weights:   w_i = pi_t(y_i) / q(y_i)

Estimators: g = sum_i c_i (e_{y_i} - pi_theta), with (wbar_i = w_i / sum_j w_j)

  unbiased  reverse: c_i = (w_i / N) (f_i - b_i), b_i = sum_{j != i} w_j f_j / (N - 1)  (RLOO)
            forward: c_i = -w_i / N
            b_i does not depend on y_i and E_q[w (e_y - pi_theta)] = 0, so g is unbiased.
  sn-loo    reverse: c_i = (w_i / N) (f_i - b_i), b_i = sum_{j != i} w_j f_j / sum_{j != i} w_j
            (a self-normalised leave-one-out baseline: the other samples' self-normalised
            estimate of E_{pi_theta}[f]; b_i still does not depend on y_i, so g stays unbiased).
            Forward-KL has no reward to baseline: sn-loo is not run there.
  sn        reverse: c_i = wbar_i (f_i - b), b = sum_j wbar_j f_j;  forward: c_i = -wbar_i
            (plain self-normalised weights; biased, consistent).
  With q = pi_theta (reverse) or q = pi_t (forward) every w_i is exactly 1. `clip = C` truncates
  w_i at C before any of this (PPO-style).

Samplers (alpha per prompt and per step, q_alpha ∝ pi_theta^alpha pi_t^(1-alpha) in log space):
  on-policy 1 · off-policy 0 · half 0.5 · alpha=A fixed · entropy: H(pi_theta)/(H(pi_theta)+H(pi_t))
  kl-symmetry: alpha* re-solved every step with the exact Newton solver; rows whose status is not
      'ok' fall back to alpha = 1 and are counted (`fallback_fraction`);
  ess-balance: the alpha with ESS_theta(q) = ESS_t(q) (vectorised Illinois regula falsi); rows
      without a sign change fall back to alpha = 1 and are counted.

Large vocabularies: each prompt keeps the `top_k` tokens with the largest max(pi_theta0, pi_t)
(ties broken by token index, so the choice is the same on every machine) and merges the rest into
one 'other' token. The merged problem is a coarsening: its KLs are <= the full ones.

Determinism: every sum here is a fixed sequential or pairwise numpy reduction and the scatter of
the gradient is `np.bincount` (sequential), never a BLAS call whose blocking depends on the
machine's thread count.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.special import logsumexp

from geomix_cli.core.family import entropy_formula_alpha, kl_divergence, log_q_alpha
from geomix_cli.core.solvers import OK, solve_alpha
from geomix_cli.errors import InputError

OBJECTIVES = ("reverse-kl", "forward-kl")
NAMED_SAMPLERS = ("on-policy", "off-policy", "kl-symmetry", "entropy", "half", "ess-balance")
DEFAULT_SAMPLERS = NAMED_SAMPLERS
ESTIMATORS = ("unbiased", "sn-loo", "sn")
ESTIMATOR_LABELS = {"unbiased": "unbiased (RLOO)",
                    "sn-loo": "unbiased, self-normalised LOO baseline",
                    "sn": "self-normalised weights"}
OPTIMIZERS = ("sgd", "adam")
DEFAULT_LR_GRID = {"adam": (0.003, 0.01, 0.03, 0.1, 0.3), "sgd": (0.1, 0.3, 1.0, 3.0, 10.0)}
DEFAULT_TARGETS = (0.5, 0.25, 0.1, 0.05, 0.02, 0.01)
FIXED_ALPHAS = {"on-policy": 1.0, "off-policy": 0.0, "half": 0.5}


def estimators_for(objective: str, estimators) -> tuple[str, ...]:
    """The estimators run for an objective: forward-KL has no reward, so no sn-loo."""
    return tuple(e for e in estimators if not (objective == "forward-kl" and e == "sn-loo"))


# ------------------------------------------------------------------------------------------------
# configuration


def parse_sampler(name: str) -> str:
    """Canonical sampler name: a named sampler, or 'alpha=A' for a fixed A in [0, 1]
    ('0.3' and 'alpha=0.3' both give 'alpha=0.3'). Unknown names raise InputError."""
    text = str(name).strip()
    if text in NAMED_SAMPLERS:
        return text
    body = text[len("alpha="):] if text.startswith("alpha=") else text
    try:
        value = float(body)
    except ValueError:
        raise InputError(f"unknown sampler '{text}'; choose from {', '.join(NAMED_SAMPLERS)} "
                         "or a fixed alpha like alpha=0.3") from None
    if not (0.0 <= value <= 1.0) or not np.isfinite(value):
        raise InputError(f"sampler alpha={body} must lie in [0, 1]")
    return f"alpha={value:g}"


@dataclass(frozen=True)
class SimulationConfig:
    """Everything a simulation run depends on (the same config and seed give the same numbers).

    budget: samples per prompt for each run (steps = budget // samples_per_step).
    targets: target KLs as fractions of the initial KL (mean over prompts); each target, and the
        final KL at the budget, gets its own tuned learning rate.
    lr_grid: None -> DEFAULT_LR_GRID[optimizer]; a choice at the grid's edge extends the grid by
        its own ratio, up to `grid_extensions` times, and is flagged if still at the edge."""

    objectives: tuple[str, ...] = OBJECTIVES
    samplers: tuple[str, ...] = DEFAULT_SAMPLERS
    estimators: tuple[str, ...] = ESTIMATORS
    targets: tuple[float, ...] = DEFAULT_TARGETS
    samples_per_step: int = 8
    budget: int = 2048
    seeds: int = 48
    tuning_seeds: int = 4
    lr_grid: tuple[float, ...] | None = None
    grid_extensions: int = 2
    final_kl_only: tuple[str, ...] = ()  # samplers tuned and evaluated for the final KL only
    optimizer: str = "sgd"
    clip: float | None = None
    top_k: int = 64
    seed: int = 0
    bootstrap: int = 1000
    confidence: float = 0.95

    @property
    def steps(self) -> int:
        return max(1, self.budget // self.samples_per_step)

    @property
    def grid(self) -> tuple[float, ...]:
        return tuple(sorted(self.lr_grid)) if self.lr_grid else DEFAULT_LR_GRID[self.optimizer]

    def checked(self) -> "SimulationConfig":
        """Validate and canonicalise (raises InputError on bad values)."""
        if not self.objectives:
            raise InputError("no objective given")
        for obj in self.objectives:
            if obj not in OBJECTIVES:
                raise InputError(f"unknown objective '{obj}'; choose from {', '.join(OBJECTIVES)}")
        if not self.estimators:
            raise InputError("no estimator given")
        for est in self.estimators:
            if est not in ESTIMATORS:
                raise InputError(f"unknown estimator '{est}'; choose from {', '.join(ESTIMATORS)}")
        samplers = tuple(dict.fromkeys(parse_sampler(s) for s in self.samplers))
        if "on-policy" not in samplers:
            samplers = ("on-policy",) + samplers  # the reference of every comparison
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimizer '{self.optimizer}'; choose from sgd, adam")
        if self.samples_per_step < 1 or self.budget < self.samples_per_step:
            raise InputError("need samples_per_step >= 1 and budget >= samples_per_step")
        if self.seeds < 2 or self.tuning_seeds < 1:
            raise InputError("need at least 2 evaluation seeds and 1 tuning seed")
        if not all(np.isfinite(lr) and lr > 0 for lr in self.grid):
            raise InputError("learning rates must be positive numbers")
        if self.grid_extensions < 0:
            raise InputError("grid_extensions must be >= 0")
        if self.clip is not None and not self.clip > 0:
            raise InputError("clip must be > 0")
        if not self.targets or not all(0.0 < t < 1.0 for t in self.targets):
            raise InputError("targets must be fractions in (0, 1) of the initial KL")
        if self.top_k < 1:
            raise InputError("top_k must be >= 1")
        if not 0.5 < self.confidence < 1.0 or self.bootstrap < 100:
            raise InputError("need confidence in (0.5, 1) and at least 100 bootstrap resamples")
        targets = tuple(sorted(set(float(t) for t in self.targets), reverse=True))
        estimators = tuple(dict.fromkeys(self.estimators))
        final_only = tuple(parse_sampler(x) for x in self.final_kl_only)
        return replace(self, samplers=samplers, lr_grid=self.grid, targets=targets,
                       estimators=estimators, final_kl_only=final_only)


# ------------------------------------------------------------------------------------------------
# vocabulary reduction


@dataclass(frozen=True)
class ReducedPairs:
    """Rows restricted to top_k tokens plus one merged 'other' token (last column).

    merged_mass_theta / merged_mass_t: per prompt, the mass of pi_theta0 / pi_t in 'other'
    (0 when nothing was merged, then there is no 'other' column)."""

    log_pi_theta: np.ndarray
    log_pi_t: np.ndarray
    original_vocab: int
    top_k: int
    merged: bool
    merged_mass_theta: np.ndarray
    merged_mass_t: np.ndarray


def reduce_vocabulary(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, top_k: int) -> ReducedPairs:
    """Keep per row the top_k tokens by max(pi_theta, pi_t); merge the rest into one token.

    Ties (float16 logits have many) are broken by token index with a stable sort: a selection
    algorithm (argpartition) may pick different tied tokens on different CPUs."""
    log_pi_theta = np.atleast_2d(np.asarray(log_pi_theta, dtype=np.float64))
    log_pi_t = np.atleast_2d(np.asarray(log_pi_t, dtype=np.float64))
    rows, vocab = log_pi_theta.shape
    if vocab <= top_k + 1:
        zeros = np.zeros(rows)
        return ReducedPairs(log_pi_theta, log_pi_t, vocab, vocab, False, zeros, zeros.copy())
    score = np.maximum(log_pi_theta, log_pi_t)
    keep = np.sort(np.argsort(-score, axis=1, kind="stable")[:, :top_k], axis=1)
    kept_theta = np.take_along_axis(log_pi_theta, keep, axis=1)
    kept_t = np.take_along_axis(log_pi_t, keep, axis=1)
    mask = np.ones_like(log_pi_theta, dtype=bool)
    np.put_along_axis(mask, keep, False, axis=1)
    with np.errstate(divide="ignore"):
        other_theta = logsumexp(np.where(mask, log_pi_theta, -np.inf), axis=1)
        other_t = logsumexp(np.where(mask, log_pi_t, -np.inf), axis=1)
    red_theta = np.concatenate([kept_theta, other_theta[:, None]], axis=1)
    red_t = np.concatenate([kept_t, other_t[:, None]], axis=1)
    # renormalise away rounding of the split sums
    red_theta -= logsumexp(red_theta, axis=1, keepdims=True)
    red_t -= logsumexp(red_t, axis=1, keepdims=True)
    return ReducedPairs(red_theta, red_t, vocab, top_k, True, np.exp(other_theta),
                        np.exp(other_t))


# ------------------------------------------------------------------------------------------------
# the estimators (exposed for tests and for anyone who wants to check them)


def _lse(x: np.ndarray) -> np.ndarray:
    """logsumexp over the last axis, the plain max-shift form. Not core.family.logsumexp: that one
    works in cache-sized blocks for vocabulary-scale batches, and on the simulation's small
    [runs, prompts, k] arrays, called every step, it costs ~1.6x more per call."""
    peak = np.max(x, axis=-1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.exp(x - peak), axis=-1)) + peak[..., 0]


def softmax_log(theta: np.ndarray) -> np.ndarray:
    return theta - _lse(theta)[..., None]


def softmax_start(log_p0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The initial softmax policy: a softmax has no zeros, so tokens with pi_theta0 = 0 start at
    the row's smallest positive log-probability minus log V (below every real token), and the row
    is renormalised. Returns (log pi_theta at the start, number of floored tokens per row)."""
    zero = ~np.isfinite(log_p0)
    if not zero.any():
        return log_p0, np.zeros(log_p0.shape[0], dtype=np.int64)
    floor = np.min(np.where(zero, np.inf, log_p0), axis=-1, keepdims=True) - np.log(log_p0.shape[-1])
    theta = np.where(zero, floor, log_p0)
    return softmax_log(theta), zero.sum(axis=-1)


def exact_gradient(objective: str, log_p: np.ndarray, log_t: np.ndarray) -> np.ndarray:
    """Exact gradient wrt the logits theta of the objective (rows along the last axis)."""
    p = np.exp(log_p)
    if objective == "forward-kl":
        return p - np.exp(log_t)
    if objective == "reverse-kl":
        f = log_p - log_t
        return p * (f - np.sum(p * f, axis=-1, keepdims=True))
    raise ValueError(objective)


def objective_value(objective: str, log_p: np.ndarray, log_t: np.ndarray) -> np.ndarray:
    """forward-kl: KL(pi_t||pi_theta); reverse-kl: KL(pi_theta||pi_t) (row-wise)."""
    if objective == "forward-kl":
        return kl_divergence(log_t, log_p)
    return kl_divergence(log_p, log_t)


def importance_weights(objective: str, log_p_y, log_t_y, log_q_y) -> np.ndarray:
    """forward-kl: pi_t(y)/q(y); reverse-kl: pi_theta(y)/q(y) (0 where q(y) = 0)."""
    num = log_t_y if objective == "forward-kl" else log_p_y
    with np.errstate(invalid="ignore", over="ignore"):
        w = np.exp(num - log_q_y)
    return np.where(np.isfinite(log_q_y), w, 0.0)


def estimator_coefficients(objective: str, estimator: str, w: np.ndarray,
                           f: np.ndarray | None = None) -> np.ndarray:
    """The coefficients c_i of g = sum_i c_i (e_{y_i} - pi_theta) (see the module doc).

    w: importance weights [..., N]; f: log pi_theta - log pi_t at the samples (reverse-kl)."""
    n = w.shape[-1]
    total = np.sum(w, axis=-1, keepdims=True)
    if estimator in ("unbiased", "sn-loo"):
        coef = w / n
    elif estimator == "sn":
        coef = np.where(total > 0, w / np.where(total > 0, total, 1.0), 0.0)
    else:
        raise ValueError(f"unknown estimator {estimator!r}")
    if objective == "forward-kl":
        if estimator == "sn-loo":
            raise ValueError("sn-loo needs a reward: reverse-kl only")
        return -coef
    f = np.where(w > 0, f, 0.0)
    wf = w * f
    if estimator == "unbiased":
        baseline = (np.sum(wf, axis=-1, keepdims=True) - wf) / (n - 1) if n > 1 else 0.0
    elif estimator == "sn":
        baseline = np.sum(coef * f, axis=-1, keepdims=True)
    else:  # sn-loo: the self-normalised mean of f over the other samples
        rest = total - w
        baseline = np.where(rest > 0, (np.sum(wf, axis=-1, keepdims=True) - wf)
                            / np.where(rest > 0, rest, 1.0), 0.0)
    return coef * (f - baseline)


def scatter_rows(coef: np.ndarray, tokens: np.ndarray, vocab: int) -> np.ndarray:
    """out[..., v] = sum_i coef[..., i] [tokens[..., i] == v], by a sequential bincount (the same
    numbers on every machine)."""
    lead = tokens.shape[:-1]
    rows = int(np.prod(lead))
    index = (np.arange(rows)[:, None] * vocab + tokens.reshape(rows, -1)).ravel()
    out = np.bincount(index, weights=coef.reshape(-1), minlength=rows * vocab)
    return out.reshape(*lead, vocab)


def gradient_estimate(objective: str, log_p: np.ndarray, log_t: np.ndarray, log_q: np.ndarray,
                      tokens: np.ndarray, *, estimator: str = "unbiased",
                      clip: float | None = None) -> np.ndarray:
    """IS estimate of the gradient from sampled `tokens` [..., N] (see the module doc).

    log_p, log_t, log_q: [..., V]; returns [..., V]."""
    log_p_y = np.take_along_axis(log_p, tokens, axis=-1)
    log_t_y = np.take_along_axis(log_t, tokens, axis=-1)
    log_q_y = np.take_along_axis(log_q, tokens, axis=-1)
    w = importance_weights(objective, log_p_y, log_t_y, log_q_y)
    if clip is not None:
        w = np.minimum(w, clip)
    with np.errstate(invalid="ignore"):
        f = log_p_y - log_t_y if objective == "reverse-kl" else None
    coef = estimator_coefficients(objective, estimator, w, f)
    return (scatter_rows(coef, tokens, log_p.shape[-1])
            - np.exp(log_p) * np.sum(coef, axis=-1, keepdims=True))


def sampling_log_q(log_p: np.ndarray, log_t: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """log q_alpha for sampling, exactly log pi_theta at alpha = 1 and log pi_t at alpha = 0 (not
    renormalised again), so that on-policy weights pi_theta/q and off-policy weights pi_t/q are
    exactly 1."""
    log_q = log_q_alpha(log_p, log_t, alpha)
    a = np.asarray(alpha)[..., None]
    return np.where(a == 1.0, log_p, np.where(a == 0.0, log_t, log_q))


def sample_tokens(log_q: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling: tokens [..., N] from log_q [..., V] and uniforms [..., N] in [0, 1)."""
    cdf = np.cumsum(np.exp(log_q), axis=-1)
    cdf /= cdf[..., -1:]
    tokens = np.sum(cdf[..., None, :] <= uniforms[..., :, None], axis=-1)
    return np.minimum(tokens, log_q.shape[-1] - 1)


# ------------------------------------------------------------------------------------------------
# samplers


def ess_balance_alpha(log_p: np.ndarray, log_t: np.ndarray, *, xtol: float = 1e-9,
                      max_iter: int = 60):
    """alpha with ESS_theta(q_alpha) = ESS_t(q_alpha), vectorised over rows.

    Root of g(alpha) = log ESS_theta(q_alpha) - log ESS_t(q_alpha), log ESS_pi(q) = -log sum pi^2/q,
    by the Illinois variant of regula falsi (a bracketing method: the bracket [lo, hi] with
    g(lo) < 0 < g(hi) is kept, so it cannot diverge; superlinear). g(0) <= 0 <= g(1) because
    ESS_t(pi_t) = ESS_theta(pi_theta) = 1. Stops when the bracket is below `xtol` or g = 0.
    Returns (alpha, ok): rows without a strict sign change (pi_theta = pi_t) or with different
    supports (then one ESS is 0 for every alpha in (0, 1)) get NaN, ok False."""
    log_t = np.broadcast_to(log_t, log_p.shape)
    support = np.isfinite(log_p) & np.isfinite(log_t)
    two_p = np.where(np.isfinite(log_p), 2 * log_p, -np.inf)
    two_t = np.where(np.isfinite(log_t), 2 * log_t, -np.inf)

    def g_of(log_q, rows=slice(None)):
        with np.errstate(invalid="ignore"):
            return _lse(two_t[rows] - log_q) - _lse(two_p[rows] - log_q)

    def g_at(alpha, rows):
        a = alpha[..., None]
        with np.errstate(invalid="ignore"):
            s = np.where(support[rows], a * log_p[rows] + (1 - a) * log_t[rows], -np.inf)
        return g_of(s - _lse(s)[..., None], rows)

    shape = log_p.shape[:-1]
    flat = int(np.prod(shape))
    with np.errstate(invalid="ignore", divide="ignore"):
        g_lo = g_of(log_t).reshape(flat)
        g_hi = g_of(log_p).reshape(flat)
    # where the supports differ, the side with the larger support has ESS = 0 for every alpha in
    # (0, 1) (q lives on the common support): no alpha balances the two
    same_support = np.all(np.isfinite(log_p) == np.isfinite(log_t), axis=-1).reshape(flat)
    ok = (g_lo < 0) & (g_hi > 0) & same_support
    support, two_p, two_t = (x.reshape(flat, -1) for x in (support, two_p, two_t))
    log_p, log_t = log_p.reshape(flat, -1), log_t.reshape(flat, -1)
    lo, hi = np.zeros(flat), np.ones(flat)
    g_lo = np.where(ok, g_lo, -1.0)
    g_hi = np.where(ok, g_hi, 1.0)
    g_lo = np.where(np.isfinite(g_lo), g_lo, -1e300)  # pi_t with zeros: ESS_theta(pi_t) = 0
    side = np.zeros(flat, dtype=np.int8)  # which end stayed last time (Illinois halving)
    active = np.flatnonzero(ok)
    for _ in range(max_iter):
        if active.size == 0:
            break
        a, b, ga, gb = lo[active], hi[active], g_lo[active], g_hi[active]
        mid = a - ga * (b - a) / (gb - ga)
        mid = np.where((mid > a) & (mid < b), mid, 0.5 * (a + b))
        gm = g_at(mid, active)
        neg = gm < 0
        last = side[active]
        # Illinois: when the same end survives twice, halve its function value
        g_hi[active] = np.where(neg, np.where(last == 1, 0.5 * gb, gb), gm)
        g_lo[active] = np.where(neg, gm, np.where(last == -1, 0.5 * ga, ga))
        lo[active] = np.where(neg, mid, a)
        hi[active] = np.where(neg, b, mid)
        side[active] = np.where(neg, 1, -1)
        done = (gm == 0) | (hi[active] - lo[active] <= xtol)
        lo[active] = np.where(gm == 0, mid, lo[active])
        hi[active] = np.where(gm == 0, mid, hi[active])
        active = active[~done]
    alpha = np.where(ok, 0.5 * (lo + hi), np.nan)
    return alpha.reshape(shape), ok.reshape(shape)


def kl_symmetry_alpha_warm(log_p: np.ndarray, log_t: np.ndarray, previous: np.ndarray, *,
                           xtol: float = 1e-13, max_iter: int = 30):
    """alpha* for rows [M, V] whose previous alpha* is known (the learner moves a little per step):
    safeguarded Newton on D(alpha) = E_q[l] started at `previous`, D' = -Var_q(l), the bracket
    [lo, hi] with D(lo) > 0 > D(hi) kept (a step leaving it bisects). Converged rows stop when
    |D / D'| <= xtol, the same rule as core's solver. Rows with a non-finite log-ratio, no
    convergence, or Var = 0 are solved again by core's `solve_alpha` (which also gives the
    status); returns (alpha, fell_back) like `sampler_alpha`."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        l = log_t - log_p
        finite = np.all(np.isfinite(l), axis=1)
        alpha = np.clip(np.where(np.isfinite(previous), previous, 0.5), 1e-9, 1 - 1e-9)
        lo, hi = np.zeros(alpha.size), np.ones(alpha.size)
        done = ~finite
        for _ in range(max_iter):
            idx = np.flatnonzero(~done)
            if idx.size == 0:
                break
            a = alpha[idx, None]
            s = log_t[idx] - a * l[idx]
            w = np.exp(s - np.max(s, axis=1, keepdims=True))
            z = np.sum(w, axis=1)
            d = np.sum(w * l[idx], axis=1) / z
            var = np.sum(w * (l[idx] - d[:, None]) ** 2, axis=1) / z
            lo[idx] = np.where(d > 0, alpha[idx], lo[idx])
            hi[idx] = np.where(d < 0, alpha[idx], hi[idx])
            step = d / var
            converged = (d == 0.0) | (np.abs(step) <= xtol)
            candidate = alpha[idx] + step
            bad = ~np.isfinite(candidate) | (candidate <= lo[idx]) | (candidate >= hi[idx])
            candidate = np.where(bad, 0.5 * (lo[idx] + hi[idx]), candidate)
            alpha[idx] = np.where(converged, alpha[idx], candidate)
            done[idx] |= converged | (var == 0.0)
            stuck = var == 0.0
            alpha[idx[stuck]] = np.nan
        redo = ~finite | ~done | ~np.isfinite(alpha)
    fell = np.zeros(alpha.size, dtype=bool)
    if redo.any():
        sol = solve_alpha(log_p[redo], log_t[redo], "newton")
        bad = (sol.status != OK) | ~np.isfinite(sol.alpha)
        alpha[redo] = np.where(bad, 1.0, sol.alpha)
        fell[redo] = bad
    return alpha, fell


def sampler_alpha(sampler: str, log_p: np.ndarray, log_t: np.ndarray):
    """alpha per row for a sampler; returns (alpha, fell_back) with fell_back True where the rule
    gave no alpha and alpha = 1 (on-policy) was used instead."""
    shape = log_p.shape[:-1]
    none = np.zeros(shape, dtype=bool)
    if sampler in FIXED_ALPHAS:
        return np.full(shape, FIXED_ALPHAS[sampler]), none
    if sampler.startswith("alpha="):
        return np.full(shape, float(sampler[6:])), none
    if sampler == "entropy":
        alpha = entropy_formula_alpha(log_p, np.broadcast_to(log_t, log_p.shape))
        bad = ~np.isfinite(alpha)
        return np.where(bad, 1.0, alpha), bad
    if sampler == "kl-symmetry":
        vocab = log_p.shape[-1]
        flat_p = log_p.reshape(-1, vocab)
        flat_t = np.broadcast_to(log_t, log_p.shape).reshape(-1, vocab)
        sol = solve_alpha(flat_p, flat_t, "newton")
        bad = (sol.status != OK) | ~np.isfinite(sol.alpha)
        alpha = np.where(bad, 1.0, sol.alpha)
        return alpha.reshape(shape), bad.reshape(shape)
    if sampler == "ess-balance":
        alpha, ok = ess_balance_alpha(log_p, np.broadcast_to(log_t, log_p.shape))
        return np.where(ok, alpha, 1.0), ~ok
    raise InputError(f"unknown sampler '{sampler}'")
