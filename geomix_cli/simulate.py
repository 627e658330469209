"""Tabular learning simulation: does sampling from q* learn faster than on- or off-policy sampling?

The derivation ends with "compared with on-policy: 2-5x sample efficiency" and gives no evidence.
This module tests the statement where it can be tested exactly: tabular softmax policies, where
every distribution is known and only the sampling is random. numpy/scipy only; no printing, no
files (sources are loaded by `geomix_cli.io`; `sample_efficiency_evidence` asks io for its cases).

Setting (one prompt x; K prompts are simulated at once, and many runs at once):
    pi_theta = softmax(theta_x), theta_x initialised to log pi_theta0(.|x) from the source;
    pi_t(.|x) fixed. Each step draws N tokens y_1..y_N ~ q (the sampler), forms an
    importance-weighted estimate g of the gradient of the objective wrt theta_x, and updates
    theta_x (Adam or SGD).

Objectives and their importance-sampling (IS) estimators (e_y is the one-hot vector of y):

  forward-kl  L = KL(pi_t || pi_theta)   (distillation / SFT)
      exact:     grad L = pi_theta - pi_t
      weights:   w_i = pi_t(y_i) / q(y_i)
      estimator: g = -(1/N) sum_i w_i (e_{y_i} - pi_theta)            (unbiased for any q > 0
                 on supp(pi_t); with q = pi_t (off-policy) every w_i = 1)
  reverse-kl  L = KL(pi_theta || pi_t) = -E_{pi_theta}[r], r = log(pi_t / pi_theta)
                 (the RL objective with reward log(pi_t/pi_ref), beta = 1)
      exact:     grad L = pi_theta * (f - E_{pi_theta}[f]),  f = log pi_theta - log pi_t
      weights:   w_i = pi_theta(y_i) / q(y_i)
      estimator: g = (1/N) sum_i w_i (f(y_i) - b_i) (e_{y_i} - pi_theta)   (score function)
                 with the leave-one-out baseline b_i = (1/(N-1)) sum_{j != i} w_j f(y_j)
                 (RLOO): b_i does not depend on y_i and E_q[w (e_y - pi_theta)] = 0, so g stays
                 unbiased; with q = pi_theta (on-policy) every w_i = 1. N = 1: b = 0.

Options practitioners use (both make the estimators biased, only consistent):
  self_normalized: w_i -> w_i / sum_j w_j (and, for reverse-kl, b = sum_j wbar_j f(y_j));
  clip = c:        w_i -> min(w_i, c) (PPO-style truncation of the importance ratio).

Samplers (alpha per prompt and per step, q_alpha ∝ pi_theta^alpha pi_t^(1-alpha), computed in
log space by `core.family.log_q_alpha`):
  on-policy 1 · off-policy 0 · half 0.5 · alpha=A fixed · entropy: H(pi_theta)/(H(pi_theta)+H(pi_t))
  kl-symmetry: alpha* re-solved every step with the exact Newton solver; rows whose status is not
      'ok' (degenerate, no-root: e.g. once pi_theta equals pi_t to rounding, or pi_t has zeros)
      fall back to alpha = 1 and are counted (`fallback_fraction`);
  ess-balance: the alpha with ESS_theta(q) = ESS_t(q), ESS_pi(q) = 1 / sum pi^2/q, found by
      vectorised bisection on log ESS_theta - log ESS_t (negative at 0, positive at 1); rows
      without a sign change fall back to alpha = 1 and are counted.

Fairness: every sampler gets its own learning rate, the best of a grid on separate tuning seeds
(criterion: median samples to reach the target, ties and 'never reached' broken by median final
KL), then all samplers run on the same evaluation seeds, with the same sample budget and the
same uniform random numbers (common random numbers: inverse-CDF sampling from the same u).

Large vocabularies: each prompt keeps the `top_k` tokens with the largest max(pi_theta0, pi_t)
and merges the rest into one 'other' token (mass merged on each side is reported). The merged
problem is a coarsening: its KLs are <= the full ones (data processing inequality).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
from scipy.special import logsumexp

from geomix_cli.core.family import entropy_formula_alpha, kl_divergence, log_q_alpha
from geomix_cli.core.solvers import OK, solve_alpha
from geomix_cli.errors import InputError

OBJECTIVES = ("forward-kl", "reverse-kl")
NAMED_SAMPLERS = ("on-policy", "off-policy", "kl-symmetry", "entropy", "half", "ess-balance")
DEFAULT_SAMPLERS = NAMED_SAMPLERS
OPTIMIZERS = ("adam", "sgd")
DEFAULT_LR_GRID = {"adam": (0.003, 0.01, 0.03, 0.1, 0.3), "sgd": (0.1, 0.3, 1.0, 3.0, 10.0)}
FIXED_ALPHAS = {"on-policy": 1.0, "off-policy": 0.0, "half": 0.5}
CLAIM = "compared with on-policy: 2-5x sample efficiency"
CLAIM_LOW, CLAIM_HIGH = 2.0, 5.0


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
    target_fraction: the target KL is this fraction of the initial KL (mean over prompts).
    lr_grid: None -> DEFAULT_LR_GRID[optimizer]."""

    objectives: tuple[str, ...] = OBJECTIVES
    samplers: tuple[str, ...] = DEFAULT_SAMPLERS
    samples_per_step: int = 8
    budget: int = 1024
    seeds: int = 24
    tuning_seeds: int = 4
    lr_grid: tuple[float, ...] | None = None
    optimizer: str = "sgd"
    self_normalized: bool = False
    clip: float | None = None
    target_fraction: float = 0.25
    top_k: int = 64
    seed: int = 0
    bootstrap: int = 1000
    confidence: float = 0.95

    @property
    def steps(self) -> int:
        return max(1, self.budget // self.samples_per_step)

    @property
    def grid(self) -> tuple[float, ...]:
        return tuple(self.lr_grid) if self.lr_grid else DEFAULT_LR_GRID[self.optimizer]

    def checked(self) -> "SimulationConfig":
        """Validate and canonicalise (raises InputError on bad values)."""
        for obj in self.objectives:
            if obj not in OBJECTIVES:
                raise InputError(f"unknown objective '{obj}'; choose from {', '.join(OBJECTIVES)}")
        if not self.objectives:
            raise InputError("no objective given")
        samplers = tuple(dict.fromkeys(parse_sampler(s) for s in self.samplers))
        if "on-policy" not in samplers:
            samplers = ("on-policy",) + samplers  # the reference of every speed-up
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimizer '{self.optimizer}'; choose from adam, sgd")
        if self.samples_per_step < 1 or self.budget < self.samples_per_step:
            raise InputError("need samples_per_step >= 1 and budget >= samples_per_step")
        if self.seeds < 2 or self.tuning_seeds < 1:
            raise InputError("need at least 2 evaluation seeds and 1 tuning seed")
        if not all(np.isfinite(lr) and lr > 0 for lr in self.grid):
            raise InputError("learning rates must be positive numbers")
        if self.clip is not None and not self.clip > 0:
            raise InputError("clip must be > 0")
        if not 0.0 < self.target_fraction < 1.0:
            raise InputError("target_fraction must lie in (0, 1)")
        if self.top_k < 1:
            raise InputError("top_k must be >= 1")
        if not 0.5 < self.confidence < 1.0 or self.bootstrap < 100:
            raise InputError("need confidence in (0.5, 1) and at least 100 bootstrap resamples")
        return replace(self, samplers=samplers, lr_grid=self.grid)


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
    """Keep per row the top_k tokens by max(pi_theta, pi_t); merge the rest into one token."""
    log_pi_theta = np.atleast_2d(np.asarray(log_pi_theta, dtype=np.float64))
    log_pi_t = np.atleast_2d(np.asarray(log_pi_t, dtype=np.float64))
    rows, vocab = log_pi_theta.shape
    if vocab <= top_k + 1:
        zeros = np.zeros(rows)
        return ReducedPairs(log_pi_theta, log_pi_t, vocab, vocab, False, zeros, zeros.copy())
    score = np.maximum(log_pi_theta, log_pi_t)
    keep = np.argpartition(-score, top_k - 1, axis=1)[:, :top_k]
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


def gradient_estimate(objective: str, log_p: np.ndarray, log_t: np.ndarray, log_q: np.ndarray,
                      tokens: np.ndarray, *, self_normalized: bool = False,
                      clip: float | None = None) -> np.ndarray:
    """IS estimate of the gradient from sampled `tokens` [..., N] (see module doc).

    log_p, log_t, log_q: [..., V]; returns [..., V]."""
    vocab = log_p.shape[-1]
    log_p_y = np.take_along_axis(log_p, tokens, axis=-1)
    log_t_y = np.take_along_axis(log_t, tokens, axis=-1)
    log_q_y = np.take_along_axis(log_q, tokens, axis=-1)
    w = importance_weights(objective, log_p_y, log_t_y, log_q_y)
    if clip is not None:
        w = np.minimum(w, clip)
    n = tokens.shape[-1]
    if self_normalized:
        total = np.sum(w, axis=-1, keepdims=True)
        coef = np.where(total > 0, w / np.where(total > 0, total, 1.0), 0.0)
    else:
        coef = w / n
    if objective == "reverse-kl":
        with np.errstate(invalid="ignore"):
            f = np.where(w > 0, log_p_y - log_t_y, 0.0)
        if self_normalized:
            baseline = np.sum(coef * f, axis=-1, keepdims=True)
        elif n > 1:
            wf = w * f
            baseline = (np.sum(wf, axis=-1, keepdims=True) - wf) / (n - 1)
        else:
            baseline = 0.0
        coef = coef * (f - baseline)
    else:
        coef = -coef
    onehot = tokens[..., None] == np.arange(vocab)
    scattered = np.einsum("...n,...nv->...v", coef, onehot)
    return scattered - np.exp(log_p) * np.sum(coef, axis=-1, keepdims=True)


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


def _lse(x: np.ndarray) -> np.ndarray:
    """logsumexp over the last axis, the plain max-shift form. Not core.family.logsumexp: that one
    works in cache-sized blocks for vocabulary-scale batches, and on the simulation's small
    [prompts, k] arrays, called every step, it costs ~1.6x more per call (same numbers to ~1 ulp)."""
    peak = np.max(x, axis=-1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.exp(x - peak), axis=-1)) + peak[..., 0]


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


# ------------------------------------------------------------------------------------------------
# the batched learner


@dataclass
class BatchRun:
    """Curves of one batched run: kl[r, t] = objective (mean over prompts) after t steps of run r
    (t = 0 is the start); +inf from the step where a run diverged (an update with non-finite
    parameters: the run is frozen and counted in `diverged`)."""

    kl: np.ndarray
    mean_alpha: np.ndarray
    fallback_fraction: np.ndarray
    diverged: np.ndarray


def run_batch(objective: str, log_p0: np.ndarray, log_t: np.ndarray, samplers: Sequence[str],
              lrs: Sequence[float], seed_ids: Sequence[int], config: SimulationConfig,
              progress: Callable[[int], None] | None = None) -> BatchRun:
    """Run R = len(samplers) learners at once (run r: samplers[r], lrs[r], seed seed_ids[r]).

    Runs that share a seed id draw the same uniforms at every step (common random numbers).
    All arrays are [R, K, V]; the only Python loops are over steps, samplers and seed ids."""
    samplers = list(samplers)
    runs = len(samplers)
    lrs = np.asarray(lrs, dtype=np.float64)[:, None, None]
    seed_ids = np.asarray(seed_ids)
    k, vocab = log_t.shape
    n = config.samples_per_step
    theta = np.broadcast_to(log_p0, (runs, k, vocab)).copy()
    theta = np.where(np.isfinite(theta), theta, -745.0)  # softmax logits must be finite
    log_t_b = np.broadcast_to(log_t, (runs, k, vocab))
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    groups = {s: np.flatnonzero(np.array(samplers) == s) for s in dict.fromkeys(samplers)}
    unique_seeds = np.unique(seed_ids)
    generators = {int(s): np.random.default_rng([config.seed, 7919, int(s)]) for s in unique_seeds}
    steps = config.steps
    kl = np.empty((runs, steps + 1))
    alpha_sum = np.zeros(runs)
    fallback = np.zeros(runs)
    diverged = np.zeros(runs, dtype=bool)
    log_p = softmax_log(theta)
    kl[:, 0] = objective_value(objective, log_p, log_t_b).mean(axis=1)
    for step in range(1, steps + 1):
        alpha = np.empty((runs, k))
        fell = np.zeros((runs, k), dtype=bool)
        with np.errstate(all="ignore"):  # runs at a too-large lr may hit extreme policies
            for sampler, idx in groups.items():
                alpha[idx], fell[idx] = sampler_alpha(sampler, log_p[idx], log_t)
        log_q = sampling_log_q(log_p, log_t_b, alpha)
        u_by_seed = {s: gen.random((k, n)) for s, gen in generators.items()}
        uniforms = np.stack([u_by_seed[int(s)] for s in seed_ids])
        tokens = sample_tokens(log_q, uniforms)
        grad = gradient_estimate(objective, log_p, log_t_b, log_q, tokens,
                                 self_normalized=config.self_normalized, clip=config.clip)
        if config.optimizer == "adam":
            m = beta1 * m + (1 - beta1) * grad
            v = beta2 * v + (1 - beta2) * grad * grad
            update = (m / (1 - beta1**step)) / (np.sqrt(v / (1 - beta2**step)) + eps)
        else:
            update = grad
        new_theta = theta - lrs * update
        new_theta -= np.max(new_theta, axis=-1, keepdims=True)  # softmax-invariant recentring
        finite = np.all(np.isfinite(new_theta), axis=(1, 2))
        diverged |= ~finite
        theta = np.where(finite[:, None, None], new_theta, theta)
        log_p = softmax_log(theta)
        value = objective_value(objective, log_p, log_t_b).mean(axis=1)
        kl[:, step] = np.where(diverged, np.inf, value)  # a diverged run stays at +inf
        alpha_sum += alpha.mean(axis=1)
        fallback += fell.mean(axis=1)
        if progress is not None:
            progress(1)
    kl[~np.isfinite(kl)] = np.inf
    return BatchRun(kl=kl, mean_alpha=alpha_sum / steps, fallback_fraction=fallback / steps,
                    diverged=diverged)


# ------------------------------------------------------------------------------------------------
# statistics


def lower_median(x: np.ndarray, axis=-1) -> np.ndarray:
    """The lower median (an observed value, no interpolation), so +inf ('not reached') counts as
    a very large value rather than poisoning an average of two middle values."""
    return np.quantile(x, 0.5, axis=axis, method="inverted_cdf")


def samples_to_threshold(kl: np.ndarray, threshold: float, samples_per_step: int) -> np.ndarray:
    """Samples per prompt until the curve first reaches <= threshold; +inf if never (censored)."""
    hit = kl <= threshold
    first = np.argmax(hit, axis=-1)
    return np.where(hit.any(axis=-1), first * samples_per_step, np.inf).astype(np.float64)


def _quantiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    a = (1 - confidence) / 2
    lo, hi = np.quantile(values, [a, 1 - a], method="inverted_cdf")
    return float(lo), float(hi)


def _speedup_ci(ref_boot: np.ndarray, boot: np.ndarray, config: SimulationConfig):
    """Bootstrap CI of median(on-policy) / median(sampler), conservative under censoring.

    A run that never reached the target has an unknown count > budget. For the lower bound, an
    on-policy 'not reached' counts as budget + N (the smallest value it can have: the ratio can only
    be larger); for the upper bound, a sampler 'not reached' counts as budget + N (the ratio can
    only be smaller). So neither end claims more than the censored data show."""
    floor = float(config.budget + config.samples_per_step)
    low = _ratio(np.where(np.isinf(ref_boot), floor, ref_boot), boot)
    high = _ratio(ref_boot, np.where(np.isinf(boot), floor, boot))
    a = (1 - config.confidence) / 2
    lo = float(np.quantile(low, a, method="inverted_cdf"))
    hi = float(np.quantile(high, 1 - a, method="inverted_cdf"))
    return lo, hi


def _ratio(num, den):
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.asarray(num, dtype=np.float64) / np.asarray(den, dtype=np.float64)
    return np.where(np.isinf(num) & np.isinf(den), np.nan, r)


# ------------------------------------------------------------------------------------------------
# results


@dataclass
class SamplerResult:
    """One (objective, sampler) after a fair learning-rate choice; numbers over evaluation seeds.

    samples_*: samples per prompt (inf = target not reached within the budget: censored);
    speedup_vs_on_policy = median samples (on-policy) / median samples (this sampler), with a
    paired bootstrap CI over seeds (conservative under censoring, see `_speedup_ci`); inf when
    only on-policy never reached the target (then speedup_lower_bound = (budget + N) / median
    samples of this sampler), 0 when only this sampler never did (then speedup_upper_bound =
    median samples of on-policy / (budget + N)), NaN when neither did."""

    objective: str
    sampler: str
    lr: float
    lr_grid: tuple[float, ...]
    tuning_score: dict
    final_kl_median: float
    final_kl_ci: tuple[float, float]
    samples_to_threshold_median: float
    samples_to_threshold_ci: tuple[float, float]
    reached_fraction: float
    speedup_vs_on_policy: float
    speedup_ci: tuple[float, float]
    speedup_lower_bound: float | None
    speedup_upper_bound: float | None
    final_kl_ratio_vs_on_policy: float
    mean_alpha: float
    fallback_fraction: float
    diverged_runs: int
    samples: np.ndarray  # x axis of the curves (samples per prompt)
    curve_median: np.ndarray
    curve_low: np.ndarray  # 25% of seeds
    curve_high: np.ndarray  # 75% of seeds
    per_seed_samples: np.ndarray
    per_seed_final_kl: np.ndarray

    def record(self) -> dict:
        return {
            "objective": self.objective, "sampler": self.sampler, "lr": self.lr,
            "lr_grid": list(self.lr_grid), "tuning_score": self.tuning_score,
            "final_kl_median": self.final_kl_median, "final_kl_ci": list(self.final_kl_ci),
            "samples_to_threshold_median": self.samples_to_threshold_median,
            "samples_to_threshold_ci": list(self.samples_to_threshold_ci),
            "reached_fraction": self.reached_fraction,
            "speedup_vs_on_policy": self.speedup_vs_on_policy,
            "speedup_ci": list(self.speedup_ci),
            "speedup_lower_bound": self.speedup_lower_bound,
            "speedup_upper_bound": self.speedup_upper_bound,
            "final_kl_ratio_vs_on_policy": self.final_kl_ratio_vs_on_policy,
            "mean_alpha": self.mean_alpha, "fallback_fraction": self.fallback_fraction,
            "diverged_runs": self.diverged_runs,
        }


@dataclass
class SimulationResult:
    source: str
    config: SimulationConfig
    n_prompts: int
    vocab_size: int
    reduced_vocab: int
    merged: bool
    merged_mass_theta: np.ndarray
    merged_mass_t: np.ndarray
    initial_kl: dict
    threshold: dict
    floored_tokens: int = 0  # tokens with pi_theta0 = 0, started just above 0 (softmax_start)
    results: list[SamplerResult] = field(default_factory=list)

    def get(self, objective: str, sampler: str) -> SamplerResult:
        for r in self.results:
            if r.objective == objective and r.sampler == sampler:
                return r
        raise KeyError((objective, sampler))

    def summary(self) -> dict:
        cfg = self.config
        return {
            "source": self.source, "prompts": self.n_prompts, "vocab_size": self.vocab_size,
            "simulated_vocab": self.reduced_vocab,
            "top_k": cfg.top_k if self.merged else None,
            "merged_mass_theta_max": float(np.max(self.merged_mass_theta)),
            "merged_mass_t_max": float(np.max(self.merged_mass_t)),
            "floored_tokens": self.floored_tokens,
            "objectives": list(cfg.objectives), "samplers": list(cfg.samplers),
            "samples_per_step": cfg.samples_per_step, "budget": cfg.budget, "steps": cfg.steps,
            "seeds": cfg.seeds, "tuning_seeds": cfg.tuning_seeds, "lr_grid": list(cfg.grid),
            "optimizer": cfg.optimizer, "self_normalized": cfg.self_normalized, "clip": cfg.clip,
            "target_fraction": cfg.target_fraction, "seed": cfg.seed,
            "bootstrap": cfg.bootstrap, "confidence": cfg.confidence,
            "initial_kl": self.initial_kl, "target_kl": self.threshold,
        }

    def to_json(self) -> dict:
        return {"schema_version": 1, "simulation": self.summary(),
                "results": [r.record() for r in self.results]}


def _tuning_key(samples: np.ndarray, final: np.ndarray) -> tuple[float, float]:
    return float(lower_median(samples)), float(np.median(final))


def simulate(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, config: SimulationConfig | None = None,
             *, source: str = "", progress: Callable[[int], None] | None = None) -> SimulationResult:
    """Run the whole fair comparison on K prompts ([K, V] float64 log-probabilities).

    `progress(n)` is called with the number of learner steps just done (total: `total_steps`)."""
    config = (config or SimulationConfig()).checked()
    log_pi_theta = np.atleast_2d(np.asarray(log_pi_theta, dtype=np.float64))
    log_pi_t = np.atleast_2d(np.asarray(log_pi_t, dtype=np.float64))
    if log_pi_theta.shape != log_pi_t.shape or log_pi_theta.ndim != 2:
        raise InputError(f"pairs must be [K, V] of equal shapes, got {log_pi_theta.shape} and "
                         f"{log_pi_t.shape}")
    red = reduce_vocabulary(log_pi_theta, log_pi_t, config.top_k)
    log_p0, floored = softmax_start(red.log_pi_theta)
    log_t = red.log_pi_t
    if "reverse-kl" in config.objectives and not np.all(np.isfinite(log_t)):
        raise InputError("reverse-kl needs pi_t > 0 on every token (KL(pi_theta||pi_t) is +inf "
                         "for a softmax policy otherwise); use forward-kl")
    result = SimulationResult(source=source, config=config, n_prompts=log_t.shape[0],
                              vocab_size=red.original_vocab, reduced_vocab=log_t.shape[1],
                              merged=red.merged, merged_mass_theta=red.merged_mass_theta,
                              merged_mass_t=red.merged_mass_t, initial_kl={}, threshold={},
                              floored_tokens=int(floored.sum()))
    samplers, grid, n = list(config.samplers), list(config.grid), config.samples_per_step
    tune_seeds = np.arange(config.tuning_seeds) + 1_000_000  # disjoint from evaluation seeds
    eval_seeds = np.arange(config.seeds)
    rng = np.random.default_rng([config.seed, 104729])
    for objective in config.objectives:
        kl0 = float(objective_value(objective, log_p0, log_t).mean())
        threshold = config.target_fraction * kl0
        result.initial_kl[objective] = kl0
        result.threshold[objective] = threshold
        # 1. tuning: every sampler x lr x tuning seed in one batch
        combos = [(s, lr, sd) for s in samplers for lr in grid for sd in tune_seeds]
        tune = run_batch(objective, log_p0, log_t, [c[0] for c in combos], [c[1] for c in combos],
                         [c[2] for c in combos], config, progress)
        chosen, scores = {}, {}
        for s in samplers:
            keyed = {}
            for lr in grid:
                idx = [i for i, c in enumerate(combos) if c[0] == s and c[1] == lr]
                keyed[lr] = _tuning_key(samples_to_threshold(tune.kl[idx], threshold, n),
                                        tune.kl[idx, -1])
            chosen[s] = min(grid, key=lambda lr: keyed[lr])
            scores[s] = {f"{lr:g}": {"samples_median": keyed[lr][0], "final_kl_median": keyed[lr][1]}
                         for lr in grid}
        # 2. evaluation: every sampler at its own lr, the same evaluation seeds
        combos = [(s, chosen[s], sd) for s in samplers for sd in eval_seeds]
        ev = run_batch(objective, log_p0, log_t, [c[0] for c in combos], [c[1] for c in combos],
                       [c[2] for c in combos], config, progress)
        n_seeds = len(eval_seeds)
        boot = rng.integers(0, n_seeds, size=(config.bootstrap, n_seeds))
        per = {}
        for j, s in enumerate(samplers):
            sl = slice(j * n_seeds, (j + 1) * n_seeds)
            per[s] = (ev.kl[sl], samples_to_threshold(ev.kl[sl], threshold, n), sl)
        ref_curve, ref_samples, _ = per["on-policy"]
        ref_med = float(lower_median(ref_samples))
        ref_final = float(np.median(ref_curve[:, -1]))
        ref_boot = lower_median(ref_samples[boot], axis=1)
        for s in samplers:
            curve, samp, sl = per[s]
            med = float(lower_median(samp))
            boot_med = lower_median(samp[boot], axis=1)
            final = curve[:, -1]
            speed = float(_ratio(ref_med, med))
            lower_bound = upper_bound = None
            if np.isinf(ref_med) and np.isfinite(med) and med > 0:
                lower_bound = float((config.budget + n) / med)
            if np.isinf(med) and np.isfinite(ref_med):
                upper_bound = float(ref_med / (config.budget + n))
            result.results.append(SamplerResult(
                objective=objective, sampler=s, lr=float(chosen[s]), lr_grid=tuple(grid),
                tuning_score=scores[s],
                final_kl_median=float(np.median(final)),
                final_kl_ci=_quantiles(np.median(final[boot], axis=1), config.confidence),
                samples_to_threshold_median=med,
                samples_to_threshold_ci=_quantiles(boot_med, config.confidence),
                reached_fraction=float(np.mean(np.isfinite(samp))),
                speedup_vs_on_policy=speed,
                speedup_ci=_speedup_ci(ref_boot, boot_med, config),
                speedup_lower_bound=lower_bound, speedup_upper_bound=upper_bound,
                final_kl_ratio_vs_on_policy=float(_ratio(ref_final, np.median(final))),
                mean_alpha=float(np.mean(ev.mean_alpha[sl])),
                fallback_fraction=float(np.mean(ev.fallback_fraction[sl])),
                diverged_runs=int(np.sum(ev.diverged[sl])),
                samples=np.arange(config.steps + 1) * n,
                curve_median=np.median(curve, axis=0),
                curve_low=np.quantile(curve, 0.25, axis=0, method="inverted_cdf"),
                curve_high=np.quantile(curve, 0.75, axis=0, method="inverted_cdf"),
                per_seed_samples=samp, per_seed_final_kl=final))
    return result


def total_steps(config: SimulationConfig) -> int:
    """Learner steps `simulate` reports through `progress` (one step advances every run at once)."""
    config = config.checked()
    return len(config.objectives) * 2 * config.steps


# ------------------------------------------------------------------------------------------------
# evidence for the verify suite's `sample-efficiency` claim

SHIPPED_PAIRS = "smollm2_sample.npz"
REAL_CASE = "real"  # in EvidenceConfig.cases: the shipped real SmolLM2 pairs


@dataclass(frozen=True)
class EvidenceConfig:
    """Cases (source specs; 'real' = the shipped SmolLM2 pairs, located by `shipped_pairs_path`)
    and the simulation settings used on each. `small()` is the verify default (about 15 s on
    2 cores), `thorough()` the --thorough one."""

    cases: tuple[str, ...]
    simulation: SimulationConfig
    real_rows: str | None = None  # row selection for the real pairs

    @classmethod
    def small(cls) -> "EvidenceConfig":
        return cls(cases=(REAL_CASE, "gen:llm-like:V=32,rows=4,seed=1",
                          "gen:dirichlet:V=16,rows=4,seed=2"),
                   simulation=SimulationConfig(samplers=("on-policy", "off-policy", "kl-symmetry"),
                                               samples_per_step=8, budget=768, seeds=12,
                                               tuning_seeds=3, lr_grid=(0.3, 1.0, 3.0),
                                               target_fraction=0.5, top_k=32, bootstrap=500),
                   real_rows="0:6")

    @classmethod
    def thorough(cls) -> "EvidenceConfig":
        return cls(cases=(REAL_CASE, "gen:llm-like:V=64,rows=8,seed=1",
                          "gen:dirichlet:V=20,rows=8,seed=2",
                          "gen:zipf:V=64,rows=8,noise=1,seed=3",
                          "gen:temperature:V=64,rows=8,tau=0.6,seed=4",
                          "gen:delta-uniform:V=64,eps=0.05,rows=2"),
                   simulation=SimulationConfig(samplers=("on-policy", "off-policy", "kl-symmetry",
                                                         "ess-balance", "entropy", "half"),
                                               samples_per_step=8, budget=1024, seeds=24,
                                               tuning_seeds=4, top_k=64),
                   real_rows=None)


@dataclass
class CaseOutcome:
    """q* (kl-symmetry) against on-policy on one case and objective.

    outcome: 'meets' (speed-up CI lower end >= 2), 'fails' (CI upper end < 2), 'inconclusive'."""

    case: str
    objective: str
    speedup: float
    speedup_ci: tuple[float, float]
    speedup_vs_off_policy: float
    speedup_vs_off_policy_ci: tuple[float, float]
    best_sampler: str
    outcome: str

    def record(self) -> dict:
        return {"case": self.case, "objective": self.objective, "speedup_vs_on_policy": self.speedup,
                "speedup_ci": list(self.speedup_ci),
                "speedup_vs_off_policy": self.speedup_vs_off_policy,
                "speedup_vs_off_policy_ci": list(self.speedup_vs_off_policy_ci),
                "fastest_sampler": self.best_sampler, "outcome": self.outcome}


@dataclass
class SampleEfficiencyResult:
    """Verdict on "compared with on-policy: 2-5x sample efficiency", computed from the simulation.

    verdict: 'holds' (q* reaches the target >= 2x faster than on-policy, with confidence, on every
    case and objective tried), 'depends' (on some, and significantly < 2x on others: `conditions`
    says which), 'refuted' (on none, and significantly < 2x on at least one: a counterexample),
    'inconclusive' (no case significantly below 2x, but not all at or above it: more seeds or
    budget needed). A speed-up above 5x counts as meeting 'at least 2x' (noted in `conditions`)."""

    claim: str
    verdict: str
    conditions: str
    outcomes: list[CaseOutcome]
    simulations: list[SimulationResult]
    skipped: list[str]
    config: EvidenceConfig

    def to_json(self) -> dict:
        return {"claim": self.claim, "verdict": self.verdict, "conditions": self.conditions,
                "cases": [o.record() for o in self.outcomes], "skipped": self.skipped,
                "simulation": self.simulations[0].summary() if self.simulations else None,
                "simulations": [s.summary() for s in self.simulations]}


def shipped_pairs_path():
    """The shipped real pairs (see `cases.real_sample_path`)."""
    from geomix_cli.cases import real_sample_path

    return real_sample_path()


def _fastest(sim: SimulationResult, objective: str) -> str:
    rows = [r for r in sim.results if r.objective == objective]
    return min(rows, key=lambda r: (r.samples_to_threshold_median, r.final_kl_median)).sampler


def _fmt_ratio(value: float, ci: tuple[float, float]) -> str:
    def f(x):
        return "inf" if np.isinf(x) else "n/a" if np.isnan(x) else f"{x:.2g}"
    if np.isnan(value):
        return f"n/a (neither reached the target) [{f(ci[0])}, {f(ci[1])}]"
    if np.isinf(value):
        return f"unbounded (on-policy never reached the target) [{f(ci[0])}, {f(ci[1])}]"
    return f"{f(value)}x [{f(ci[0])}, {f(ci[1])}]"


def judge(outcomes: list[CaseOutcome]) -> tuple[str, str]:
    """(verdict, conditions in words) from per-case outcomes (see SampleEfficiencyResult)."""
    meets = [o for o in outcomes if o.outcome == "meets"]
    fails = [o for o in outcomes if o.outcome == "fails"]
    if not outcomes:
        return "inconclusive", "no case could be simulated"
    if len(meets) == len(outcomes):
        verdict = "holds"
    elif meets and fails:
        verdict = "depends"
    elif fails:
        verdict = "refuted"
    else:
        verdict = "inconclusive"

    def describe(group):
        return "; ".join(f"{o.objective} on {o.case}: {_fmt_ratio(o.speedup, o.speedup_ci)}"
                         for o in group)

    parts = []
    if meets:
        parts.append(f"q* (kl-symmetry) reached the target KL at least 2x faster than on-policy "
                     f"sampling (95% CI of the speed-up >= 2) for {describe(meets)}")
    if fails:
        parts.append(f"it did not (CI of the speed-up entirely below 2) for {describe(fails)}")
    rest = [o for o in outcomes if o.outcome == "inconclusive"]
    if rest:
        parts.append(f"inconclusive (CI straddles 2) for {describe(rest)}")
    above = [o for o in meets if o.speedup_ci[0] > CLAIM_HIGH]
    if above:
        parts.append("the speed-up exceeds the claimed 5x where on-policy sampling barely learns "
                     f"({describe(above)})")
    by_obj = {}
    for o in outcomes:
        by_obj.setdefault(o.objective, set()).add(o.outcome)
    for obj, kinds in by_obj.items():
        if kinds == {"meets"} and len(by_obj) > 1:
            parts.append(f"the condition is the objective: it holds for {obj} on every case")
        if kinds == {"fails"} and len(by_obj) > 1:
            parts.append(f"for {obj} on-policy sampling was never beaten 2x")
    worse_than_off = [o for o in outcomes if o.speedup_vs_off_policy_ci[1] < 1]
    if worse_than_off:
        parts.append("off-policy sampling was significantly faster than q* for "
                     + ", ".join(f"{o.objective} on {o.case}" for o in worse_than_off))
    fastest = sorted({f"{o.objective} on {o.case}: {o.best_sampler}" for o in outcomes})
    parts.append("fastest sampler per case: " + "; ".join(fastest))
    return verdict, ". ".join(p[0].upper() + p[1:] for p in parts) + "."


def sample_efficiency_evidence(config: EvidenceConfig | None = None, *,
                               sources: dict | None = None,
                               progress: Callable[[int], None] | None = None
                               ) -> SampleEfficiencyResult:
    """Run the fair simulation on every case and judge the derivation's 2-5x claim.

    config: EvidenceConfig.small() by default (the verify default run), .thorough() for --thorough.
    sources: optional {case name: (log_pi_theta [K, V], log_pi_t [K, V])} to use instead of
    loading `config.cases` (which are loaded through `geomix_cli.sources.load_source`; 'real' is the
    shipped SmolLM2 sample, skipped with a note in `skipped` if it is not installed).
    progress(n): learner steps done; `evidence_total_steps(config)` bounds the total."""
    config = config or EvidenceConfig.small()
    if "kl-symmetry" not in config.simulation.samplers:
        raise InputError("the evidence needs the kl-symmetry sampler")
    skipped: list[str] = []
    loaded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if sources is not None:
        loaded = {str(k): v for k, v in sources.items()}
    else:
        from geomix_cli.sources import load_source

        for case in config.cases:
            if case == REAL_CASE:
                path = shipped_pairs_path()
                if path is None:
                    skipped.append(f"{REAL_CASE}: {SHIPPED_PAIRS} is not installed")
                    continue
                pairs = load_source(str(path), rows=config.real_rows)
                name = f"real SmolLM2 pairs ({pairs.n_rows} prompts)"
            else:
                pairs = load_source(case)
                name = case
            valid = pairs.valid_rows
            if not valid.any():
                skipped.append(f"{case}: no valid row")
                continue
            loaded[name] = (pairs.log_pi_theta[valid], pairs.log_pi_t[valid])
    sims, outcomes = [], []
    sim_cfg = config.simulation.checked()
    for name, (log_theta, log_t) in loaded.items():
        cfg = sim_cfg
        if "reverse-kl" in cfg.objectives and not np.all(np.isfinite(log_t)):
            cfg = replace(cfg, objectives=tuple(o for o in cfg.objectives if o != "reverse-kl"))
            skipped.append(f"{name}: reverse-kl (pi_t has zeros, KL(pi_theta||pi_t) = inf)")
            if not cfg.objectives:
                continue
        sim = simulate(log_theta, log_t, cfg, source=name, progress=progress)
        sims.append(sim)
        for objective in cfg.objectives:
            q = sim.get(objective, "kl-symmetry")
            off = sim.get(objective, "off-policy") if "off-policy" in cfg.samplers else None
            lo, hi = q.speedup_ci
            outcome = ("meets" if lo >= CLAIM_LOW else "fails" if hi < CLAIM_LOW
                       else "inconclusive")
            if off is not None:
                v_off = float(_ratio(off.samples_to_threshold_median, q.samples_to_threshold_median))
                n_seeds = cfg.seeds
                rng = np.random.default_rng([cfg.seed, 15485863])
                boot = rng.integers(0, n_seeds, size=(cfg.bootstrap, n_seeds))
                ci_off = _speedup_ci(lower_median(off.per_seed_samples[boot], axis=1),
                                     lower_median(q.per_seed_samples[boot], axis=1), cfg)
            else:
                v_off, ci_off = float("nan"), (float("nan"), float("nan"))
            outcomes.append(CaseOutcome(case=name, objective=objective,
                                        speedup=q.speedup_vs_on_policy, speedup_ci=(lo, hi),
                                        speedup_vs_off_policy=v_off, speedup_vs_off_policy_ci=ci_off,
                                        best_sampler=_fastest(sim, objective), outcome=outcome))
    verdict, conditions = judge(outcomes)
    return SampleEfficiencyResult(claim=CLAIM, verdict=verdict, conditions=conditions,
                                  outcomes=outcomes, simulations=sims, skipped=skipped,
                                  config=config)


def evidence_total_steps(config: EvidenceConfig | None = None) -> int:
    """Upper bound on the learner steps of `sample_efficiency_evidence` (a case whose reverse-kl
    run is refused, pi_t with zeros, takes fewer)."""
    config = config or EvidenceConfig.small()
    n_cases = len(config.cases)
    return n_cases * total_steps(config.simulation)
