"""The batched learner, the fair comparison and its statistics.

`simulate(log_pi_theta, log_pi_t, config)` runs, per objective:

1. tuning: every (estimator, sampler) at every learning rate of the grid on `tuning_seeds` seeds
   that are disjoint from the evaluation seeds, in one numpy batch. Each metric (samples to each
   target, final KL at the budget) gets its own learning rate: the best of the grid for that
   metric. A choice at the grid's edge extends the grid by the grid's own ratio (up to
   `grid_extensions` times); a choice still at the edge is flagged.
2. evaluation: every (estimator, sampler) at each of its chosen learning rates on the same
   `seeds` evaluation seeds, with the same sample budget and the same uniform random numbers
   (common random numbers), again in one batch. So every comparison is paired by seed.
3. statistics per metric: median with a bootstrap CI over seeds; against on-policy (same
   estimator, same metric): the ratio of medians with a paired bootstrap CI (conservative under
   censoring) and the fraction of seeds where the sampler beats on-policy, with a Wilson CI.

numpy only; no printing, no files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from geomix_cli.errors import InputError
from geomix_cli.simulate.model import (FIXED_ALPHAS, SimulationConfig, _lse,
                                       estimator_coefficients, estimators_for, importance_weights,
                                       kl_symmetry_alpha_warm,
                                       objective_value, reduce_vocabulary, sample_tokens,
                                       sampler_alpha, softmax_start)

FINAL = "final-kl"
LOGIT_GRID = 2.0**16  # logits live on multiples of 2^-16 (stochastic rounding; see run_batch)
TUNING_SEED_BASE = 1_000_000  # tuning seeds are 1_000_000 + i: disjoint from evaluation seeds


def target_key(fraction: float) -> str:
    return f"target={fraction:g}"


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


def _rows(run_index: np.ndarray, k: int) -> np.ndarray:
    """Rows of the flattened [R * K, V] arrays that belong to the given runs."""
    return (np.asarray(run_index)[:, None] * k + np.arange(k)).ravel()


def run_batch(objective: str, log_p0: np.ndarray, log_t: np.ndarray, samplers: Sequence[str],
              estimators: Sequence[str], lrs: Sequence[float], seed_ids: Sequence[int],
              config: SimulationConfig, progress: Callable[[int], None] | None = None) -> BatchRun:
    """Run R learners at once (run r: samplers[r], estimators[r], lrs[r], seed seed_ids[r]).

    Runs that share a seed id draw the same uniforms at every step (common random numbers).
    Every array is [R * K, V] (run-major); the only Python loops are over steps and over the
    distinct samplers and estimators."""
    samplers, estimators = np.array(list(samplers)), np.array(list(estimators))
    runs = samplers.size
    k, vocab = log_t.shape
    rows_total = runs * k
    n = config.samples_per_step
    start = np.round(np.where(np.isfinite(log_p0), log_p0, -745.0) * LOGIT_GRID) / LOGIT_GRID
    theta = np.broadcast_to(start, (runs, k, vocab)).reshape(rows_total, vocab).copy()
    log_t_m = np.broadcast_to(log_t, (runs, k, vocab)).reshape(rows_total, vocab)
    lr_m = np.repeat(np.asarray(lrs, dtype=np.float64), k)[:, None]
    dynamic = {}
    alpha = np.ones(rows_total)
    for s in dict.fromkeys(samplers.tolist()):
        rows = _rows(np.flatnonzero(samplers == s), k)
        if s in FIXED_ALPHAS or s.startswith("alpha="):
            alpha[rows] = sampler_alpha(s, log_t[:1], log_t)[0][0]
        else:
            dynamic[s] = rows
    est_rows = {e: _rows(np.flatnonzero(estimators == e), k)
                for e in dict.fromkeys(estimators.tolist())}
    unique_seeds, seed_pos = np.unique(np.asarray(seed_ids), return_inverse=True)
    generators = [np.random.default_rng([config.seed, 7919, int(s)]) for s in unique_seeds]
    steps = config.steps
    kl = np.empty((runs, steps + 1))
    alpha_sum = np.zeros(rows_total)
    fallback = np.zeros(rows_total)
    fell = np.zeros(rows_total, dtype=bool)
    diverged = np.zeros(runs, dtype=bool)
    offsets = (np.arange(rows_total) * vocab)[:, None]
    m = v = None
    if config.optimizer == "adam":
        m, v = np.zeros_like(theta), np.zeros_like(theta)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    with np.errstate(all="ignore"):  # runs at a too-large lr may hit extreme policies
        for step in range(steps + 1):
            log_p = theta - _lse(theta)[:, None]
            p = np.exp(log_p)
            if objective == "forward-kl":
                value = np.sum(np.where(np.isfinite(log_t_m), np.exp(log_t_m) * (log_t_m - log_p),
                                        0.0), axis=1)
            else:
                value = np.sum(p * (log_p - log_t_m), axis=1)
            value = value.reshape(runs, k).mean(axis=1)
            kl[:, step] = np.where(diverged | ~np.isfinite(value), np.inf, value)
            if step == steps:
                break
            for s, rows in dynamic.items():
                if s == "kl-symmetry" and step > 0:  # warm start from the last step's alpha*
                    alpha[rows], fell[rows] = kl_symmetry_alpha_warm(
                        log_p[rows], log_t_m[rows], np.where(fell[rows], np.nan, alpha[rows]))
                else:
                    alpha[rows], fell[rows] = sampler_alpha(s, log_p[rows], log_t_m[rows])
            log_q = np.where((alpha == 0.0)[:, None], log_t_m, log_p)
            mid = np.flatnonzero((alpha > 0.0) & (alpha < 1.0))
            if mid.size:
                a = alpha[mid, None]
                inner = np.where(np.isfinite(log_t_m[mid]),
                                 a * log_p[mid] + (1.0 - a) * log_t_m[mid], -np.inf)
                log_q[mid] = inner - _lse(inner)[:, None]
            uniforms = np.stack([gen.random((k, n)) for gen in generators])[seed_pos]
            tokens = sample_tokens(log_q, uniforms.reshape(rows_total, n))
            flat = offsets + tokens
            log_p_y, log_t_y = log_p.ravel()[flat], log_t_m.ravel()[flat]
            w = importance_weights(objective, log_p_y, log_t_y, log_q.ravel()[flat])
            if config.clip is not None:
                w = np.minimum(w, config.clip)
            f = log_p_y - log_t_y if objective == "reverse-kl" else None
            coef = np.empty_like(w)
            for e, rows in est_rows.items():
                coef[rows] = estimator_coefficients(objective, e, w[rows],
                                                    None if f is None else f[rows])
            grad = (np.bincount(flat.ravel(), weights=coef.ravel(), minlength=rows_total * vocab)
                    .reshape(rows_total, vocab) - p * np.sum(coef, axis=1, keepdims=True))
            if m is not None:
                m = beta1 * m + (1 - beta1) * grad
                v = beta2 * v + (1 - beta2) * grad * grad
                t = step + 1
                grad = (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps)
            # The logits are kept on a grid of 2^-16 by stochastic rounding (unbiased; its noise,
            # ~1e-5 per logit, is far below every target). Why: exp/log differ in their last bit
            # between CPUs (numpy's AVX-512 kernels vs libm), and at learning rates where the
            # dynamics are chaotic a 1e-16 difference grows into a different run. On the grid,
            # such a difference changes the run only if it moves an update across a rounding
            # boundary (probability ~1e-16 |update| / 2^-16 per logit and step), so runs are
            # bitwise the same on every machine with overwhelming probability.
            snap = np.stack([gen.random((k, vocab)) for gen in generators])[seed_pos]
            new_theta = np.floor((theta - lr_m * grad) * LOGIT_GRID
                                 + snap.reshape(rows_total, vocab)) / LOGIT_GRID
            new_theta -= np.max(new_theta, axis=1, keepdims=True)  # exact: all on the grid
            finite = np.all(np.isfinite(new_theta).reshape(runs, -1), axis=1)
            diverged |= ~finite
            keep = np.repeat(finite, k)[:, None]
            theta = np.where(keep, new_theta, theta)
            alpha_sum += alpha
            fallback += fell
            if progress is not None:
                progress(1)
    kl[~np.isfinite(kl)] = np.inf
    return BatchRun(kl=kl, mean_alpha=(alpha_sum / steps).reshape(runs, k).mean(axis=1),
                    fallback_fraction=(fallback / steps).reshape(runs, k).mean(axis=1),
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


def quantile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    a = (1 - confidence) / 2
    lo, hi = np.quantile(values, [a, 1 - a], method="inverted_cdf")
    return float(lo), float(hi)


def ratio(num, den):
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.asarray(num, dtype=np.float64) / np.asarray(den, dtype=np.float64)
    return np.where(np.isinf(num) & np.isinf(den), np.nan, r)


def wilson_interval(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (sound near 0 and 1, unlike the normal
    approximation)."""
    from scipy.stats import norm

    if n == 0:
        return (float("nan"), float("nan"))
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends, not rounding
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return float(lo), float(hi)


@dataclass
class PairedComparison:
    """Sampler B against reference A on the same seeds, one metric (lower is better).

    ratio = median(A) / median(B) (> 1: B is better; for samples to a target, the speed-up), with a
    paired bootstrap CI; for censored samples (+inf = not reached within the budget) the CI is
    conservative: for its lower end a censored A counts as budget + N (the ratio can only be
    larger), for its upper end a censored B counts as budget + N. wins / ties / losses: seeds where
    B is strictly better / equal / worse than A on the same seed (both censored = tie);
    win_ci: Wilson CI of wins / seeds."""

    ratio: float
    ratio_ci: tuple[float, float]
    wins: int
    ties: int
    losses: int
    win_ci: tuple[float, float]

    @property
    def seeds(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def win_fraction(self) -> float:
        return self.wins / self.seeds if self.seeds else float("nan")

    def record(self) -> dict:
        return {"ratio": self.ratio, "ratio_ci": list(self.ratio_ci), "wins": self.wins,
                "ties": self.ties, "losses": self.losses, "win_fraction": self.win_fraction,
                "win_ci": list(self.win_ci)}


def paired_comparison(ref: np.ndarray, other: np.ndarray, boot: np.ndarray,
                      config: SimulationConfig, *, censored_at: float | None = None
                      ) -> PairedComparison:
    """Compare per-seed values `other` against `ref` (same seeds, lower is better); `boot` holds
    bootstrap resamples of seed indices [B, seeds]. censored_at: the value a censored (+inf)
    count is known to exceed (budget + N) for samples-to-target, None for final KL."""
    med_ref = float(lower_median(ref))
    med = float(lower_median(other))
    point = float(ratio(med_ref, med))
    ref_boot = lower_median(ref[boot], axis=1)
    oth_boot = lower_median(other[boot], axis=1)
    if censored_at is not None:
        low = ratio(np.where(np.isinf(ref_boot), censored_at, ref_boot), oth_boot)
        high = ratio(ref_boot, np.where(np.isinf(oth_boot), censored_at, oth_boot))
    else:
        low = high = ratio(ref_boot, oth_boot)
    a = (1 - config.confidence) / 2
    lo = float(np.quantile(low[~np.isnan(low)], a, method="inverted_cdf")) if (
        ~np.isnan(low)).any() else float("nan")
    hi = float(np.quantile(high[~np.isnan(high)], 1 - a, method="inverted_cdf")) if (
        ~np.isnan(high)).any() else float("nan")
    both_inf = np.isinf(ref) & np.isinf(other)
    wins = int(np.sum((other < ref) & ~both_inf))
    losses = int(np.sum((other > ref) & ~both_inf))
    ties = int(ref.size - wins - losses)
    return PairedComparison(point, (lo, hi), wins, ties, losses,
                            wilson_interval(wins, int(ref.size), config.confidence))


# ------------------------------------------------------------------------------------------------
# results


@dataclass
class MetricResult:
    """One metric of one (objective, estimator, sampler) over the evaluation seeds.

    metric: 'final-kl' (KL after the budget) or 'target=F' (samples per prompt until the KL first
    falls to F x the initial KL; +inf = not reached: censored). lr: the learning rate tuned for
    this metric; lr_at_grid_edge: still at the searched grid's edge after the extensions."""

    metric: str
    lr: float
    lr_at_grid_edge: bool
    median: float
    median_ci: tuple[float, float]
    reached_fraction: float
    vs_on_policy: PairedComparison | None
    per_seed: np.ndarray

    def record(self) -> dict:
        return {"metric": self.metric, "lr": self.lr, "lr_at_grid_edge": self.lr_at_grid_edge,
                "median": self.median, "median_ci": list(self.median_ci),
                "reached_fraction": self.reached_fraction,
                "vs_on_policy": self.vs_on_policy.record() if self.vs_on_policy else None}


@dataclass
class SamplerResult:
    """One (objective, estimator, sampler): the tuned learning rate and the result of every metric
    (`metrics[metric]`), the searched grid, and the learning curves at the final-KL learning rate
    (median and 25-75% band over seeds)."""

    objective: str
    estimator: str
    sampler: str
    lr_grid: tuple[float, ...]
    metrics: dict
    tuning_score: dict
    mean_alpha: float
    fallback_fraction: float
    diverged_runs: int
    samples: np.ndarray
    curve_median: np.ndarray
    curve_low: np.ndarray
    curve_high: np.ndarray

    def metric(self, key: str) -> MetricResult:
        return self.metrics[key]

    def record(self, *, tuning: bool = True) -> dict:
        out = {"objective": self.objective, "estimator": self.estimator, "sampler": self.sampler,
               "lr_grid": list(self.lr_grid),
               "metrics": {k: m.record() for k, m in self.metrics.items()},
               "mean_alpha": self.mean_alpha, "fallback_fraction": self.fallback_fraction,
               "diverged_runs": self.diverged_runs}
        if tuning:
            out["tuning_score"] = self.tuning_score
        else:
            # the report's copy: whether a row near pi_theta = pi_t counts as 'degenerate' (and
            # falls back to alpha = 1) is decided at rounding level, so these two diagnostics are
            # given at a precision that does not vary between machines
            out["mean_alpha"] = float(f"{self.mean_alpha:.3g}")
            del out["fallback_fraction"]
            out["fallback_fraction_below"] = float(max(1e-3, 10.0 ** np.ceil(
                np.log10(max(3 * self.fallback_fraction, 1e-300)))))
        return out


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
    target_kl: dict  # objective -> {target key: absolute KL}
    horizon: dict = field(default_factory=dict)  # (objective, estimator) -> lowest-target check
    floored_tokens: int = 0  # tokens with pi_theta0 = 0, started just above 0 (softmax_start)
    results: list[SamplerResult] = field(default_factory=list)

    def get(self, objective: str, estimator: str, sampler: str) -> SamplerResult:
        for r in self.results:
            if (r.objective, r.estimator, r.sampler) == (objective, estimator, sampler):
                return r
        raise KeyError((objective, estimator, sampler))

    def metric_keys(self) -> list[str]:
        return [target_key(t) for t in self.config.targets] + [FINAL]

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
            "estimators": list(cfg.estimators), "targets": list(cfg.targets),
            "samples_per_step": cfg.samples_per_step, "budget": cfg.budget, "steps": cfg.steps,
            "seeds": cfg.seeds, "tuning_seeds": cfg.tuning_seeds, "lr_grid": list(cfg.grid),
            "grid_extensions": cfg.grid_extensions, "optimizer": cfg.optimizer, "clip": cfg.clip,
            "seed": cfg.seed, "bootstrap": cfg.bootstrap, "confidence": cfg.confidence,
            "initial_kl": self.initial_kl, "target_kl": self.target_kl,
            "horizon": [dict(objective=o, estimator=e, **h) for (o, e), h in self.horizon.items()],
        }

    def to_json(self, *, tuning: bool = True) -> dict:
        return {"schema_version": 2, "simulation": self.summary(),
                "results": [r.record(tuning=tuning) for r in self.results]}


# ------------------------------------------------------------------------------------------------
# the fair comparison


def _metric_values(kl: np.ndarray, thresholds: dict, n: int) -> dict:
    """Per-run values of every metric from curves kl [R, steps + 1]."""
    out = {key: samples_to_threshold(kl, thr, n) for key, thr in thresholds.items()}
    out[FINAL] = kl[:, -1]
    return out


def _tuning_key(values: dict, metric: str, rows: np.ndarray) -> tuple[float, float]:
    """Lower is better: (median samples to the target, median final KL) or (median final KL, 0)."""
    final = float(np.median(values[FINAL][rows]))
    if metric == FINAL:
        return (final, 0.0)
    return (float(lower_median(values[metric][rows])), final)


def _edge_extension(grid: list[float], chosen: dict) -> list[float]:
    """New learning rates beyond the grid's edge when some metric chose an edge value."""
    grid = sorted(grid)
    new = []
    if len(grid) == 1:
        lo_ratio = hi_ratio = 3.0
    else:
        lo_ratio, hi_ratio = grid[1] / grid[0], grid[-1] / grid[-2]
    picks = set(chosen.values())
    if grid[0] in picks:
        new.append(float(f"{grid[0] / lo_ratio:.3g}"))
    if grid[-1] in picks:
        new.append(float(f"{grid[-1] * hi_ratio:.3g}"))
    return new


def total_steps(config: SimulationConfig) -> int:
    """Learner steps `simulate` reports through `progress` without grid extensions (each
    extension round adds `steps`): one tuning and one evaluation batch per objective."""
    config = config.checked()
    return len(config.objectives) * 2 * config.steps


def simulate(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, config: SimulationConfig | None = None,
             *, source: str = "", progress: Callable[[int], None] | None = None) -> SimulationResult:
    """Run the whole fair comparison on K prompts ([K, V] float64 log-probabilities).

    `progress(n)` is called with the number of learner steps just done."""
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
                              merged_mass_t=red.merged_mass_t, initial_kl={}, target_kl={},
                              floored_tokens=int(floored.sum()))
    n = config.samples_per_step
    tune_seeds = np.arange(config.tuning_seeds) + TUNING_SEED_BASE
    eval_seeds = np.arange(config.seeds)
    boot = np.random.default_rng([config.seed, 104729]).integers(
        0, config.seeds, size=(config.bootstrap, config.seeds))
    censored_at = float(config.budget + n)
    for objective in config.objectives:
        kl0 = float(objective_value(objective, log_p0, log_t).mean())
        thresholds = {target_key(t): t * kl0 for t in config.targets}
        result.initial_kl[objective] = kl0
        result.target_kl[objective] = dict(thresholds)
        metrics = list(thresholds) + [FINAL]
        combos = [(e, s) for e in estimators_for(objective, config.estimators)
                  for s in config.samplers]
        # 1. tuning (with grid extensions at the edges)
        grids = {c: list(config.grid) for c in combos}
        scores: dict = {c: {} for c in combos}  # combo -> lr -> metric -> key
        pending = [(c, lr) for c in combos for lr in config.grid]
        chosen: dict = {}
        for round_ in range(config.grid_extensions + 1):
            runs = [(c, lr, sd) for c, lr in pending for sd in tune_seeds]
            batch = run_batch(objective, log_p0, log_t, [r[0][1] for r in runs],
                              [r[0][0] for r in runs], [r[1] for r in runs], [r[2] for r in runs],
                              config, progress)
            values = _metric_values(batch.kl, thresholds, n)
            for j, (c, lr) in enumerate(pending):
                rows = np.arange(j * tune_seeds.size, (j + 1) * tune_seeds.size)
                scores[c][lr] = {mk: _tuning_key(values, mk, rows) for mk in metrics}
            chosen = {c: {mk: min(sorted(grids[c]), key=lambda lr: scores[c][lr][
                mk if c[1] not in config.final_kl_only else FINAL]) for mk in metrics}
                for c in combos}
            if round_ == config.grid_extensions:
                break
            pending = []
            for c in combos:
                for lr in _edge_extension(grids[c], chosen[c]):
                    if lr not in grids[c]:
                        grids[c].append(lr)
                        pending.append((c, lr))
            if not pending:
                break
        edge = {c: {mk: chosen[c][mk] in (min(grids[c]), max(grids[c])) for mk in metrics}
                for c in combos}
        # 2. evaluation: each combo at each of its chosen learning rates, the same seeds
        plan = [(c, lr) for c in combos for lr in sorted(set(chosen[c].values()))]
        runs = [(c, lr, sd) for c, lr in plan for sd in eval_seeds]
        batch = run_batch(objective, log_p0, log_t, [r[0][1] for r in runs],
                          [r[0][0] for r in runs], [r[1] for r in runs], [r[2] for r in runs],
                          config, progress)
        values = _metric_values(batch.kl, thresholds, n)
        rows_of = {key: np.arange(j * eval_seeds.size, (j + 1) * eval_seeds.size)
                   for j, key in enumerate(plan)}
        # 3. statistics, paired against on-policy with the same estimator
        for c in combos:
            estimator, sampler = c
            ref = (estimator, "on-policy")
            metric_results = {}
            for mk in metrics:
                rows = rows_of[(c, chosen[c][mk])]
                vals = values[mk][rows]
                ref_vals = values[mk][rows_of[(ref, chosen[ref][mk])]]
                comp = None
                if sampler != "on-policy":
                    comp = paired_comparison(ref_vals, vals, boot, config,
                                             censored_at=None if mk == FINAL else censored_at)
                med = (float(np.median(vals)) if mk == FINAL else float(lower_median(vals)))
                boot_med = (np.median(vals[boot], axis=1) if mk == FINAL
                            else lower_median(vals[boot], axis=1))
                metric_results[mk] = MetricResult(
                    metric=mk, lr=float(chosen[c][mk]), lr_at_grid_edge=bool(edge[c][mk]),
                    median=med, median_ci=quantile_interval(boot_med, config.confidence),
                    reached_fraction=float(np.mean(np.isfinite(vals))), vs_on_policy=comp,
                    per_seed=vals)
            final_rows = rows_of[(c, chosen[c][FINAL])]
            curve = batch.kl[final_rows]
            result.results.append(SamplerResult(
                objective=objective, estimator=estimator, sampler=sampler,
                lr_grid=tuple(sorted(grids[c])), metrics=metric_results,
                tuning_score={f"{lr:g}": {mk: list(scores[c][lr][mk]) for mk in metrics}
                              for lr in sorted(grids[c])},
                mean_alpha=float(np.mean(batch.mean_alpha[final_rows])),
                fallback_fraction=float(np.mean(batch.fallback_fraction[final_rows])),
                diverged_runs=int(np.sum(batch.diverged[final_rows])),
                samples=np.arange(config.steps + 1) * n, curve_median=np.median(curve, axis=0),
                curve_low=np.quantile(curve, 0.25, axis=0, method="inverted_cdf"),
                curve_high=np.quantile(curve, 0.75, axis=0, method="inverted_cdf")))
        # the horizon: how many steps the budget leaves after the lowest target is reached
        lowest = target_key(min(config.targets))
        for estimator in estimators_for(objective, config.estimators):
            meds = {s: result.get(objective, estimator, s).metric(lowest).median
                    for s in config.samplers}
            best = min(meds, key=lambda s: meds[s])
            reached = bool(np.isfinite(meds[best]))
            spare = config.steps - int(meds[best]) // n if reached else None
            result.horizon[(objective, estimator)] = {
                "lowest_target": lowest, "fastest_sampler": best,
                "median_steps_to_lowest_target": int(meds[best]) // n if reached else None,
                "spare_steps": spare, "reached": reached}
    return result
