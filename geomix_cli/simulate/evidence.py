"""The learning evidence behind the verify suite's efficiency claims.

The derivation's efficiency statements are about RL with importance weights pi_theta / q: they are
judged on the reverse-KL objective (`reverse-kl`); forward-KL (distillation) is run as context.
`efficiency_study(config)` simulates every case (the same fair comparison as `geomix simulate`:
every estimator, every sampler, learning rates tuned per metric on separate seeds, 48+ paired
evaluation seeds), and `comparison_cells` turns it into one row per comparison:

- `sample-efficiency`: q* (kl-symmetry) against on-policy, samples to each target (the speed-up,
  on-policy / q*) and the final KL at the budget (context), per case and estimator;
- `off-policy-unstable`: q* against off-policy, final KL at the budget (off-policy / q*);
- `alpha-star-best`: q* against each fixed alpha of the sweep, final KL (alpha / q*).

Each row says whether the ratio's CI lies at or above the claimed factor ('meets'), entirely below
it ('contradicts'), or straddles it ('inconclusive'). `confirm` reruns chosen rows with fresh
random numbers (new tuning and evaluation seeds): a repaired claim is checked there, not on the
data it was read from. numpy only; no printing, no files (cases are loaded through io).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from geomix_cli.simulate.learner import (FINAL, PairedComparison, SimulationResult, lower_median,
                                         paired_comparison, simulate, target_key, total_steps)
from geomix_cli.simulate.model import SimulationConfig, estimators_for

REAL_CASE = "real"
JUDGED = "reverse-kl"
CONTEXT = "forward-kl"
Q_STAR = "kl-symmetry"
SWEEP = ("alpha=0.25", "alpha=0.5", "alpha=0.75")


@dataclass(frozen=True)
class EvidenceCase:
    """One simulated case: a source spec ('real' = the shipped SmolLM2 pairs) with its rows,
    budget (samples per prompt) and vocabulary reduction."""

    name: str
    spec: str
    budget: int
    top_k: int = 16
    rows: str | None = None


@dataclass(frozen=True)
class EvidenceConfig:
    """The cases and the simulation settings. `small()` is the verify default, `thorough()` the
    --thorough one. `simulation` is the judged (reverse-KL) setting; `context_samplers` and
    `context_estimators` the forward-KL context run."""

    cases: tuple[EvidenceCase, ...]
    simulation: SimulationConfig
    context_samplers: tuple[str, ...] = ("on-policy", Q_STAR, "off-policy")
    context_estimators: tuple[str, ...] = ("unbiased", "sn")
    context_seeds: int = 24  # forward KL is context, not judged
    confirm_seed_offset: int = 1

    @classmethod
    def small(cls) -> "EvidenceConfig":
        return cls(
            cases=(EvidenceCase("real SmolLM2 (close)", REAL_CASE, 2048, top_k=16, rows="0:4"),
                   EvidenceCase("llm-like (moderate)", "gen:llm-like:V=16,rows=4,noise=1,seed=1",
                                2048),
                   EvidenceCase("llm-like (far)", "gen:llm-like:V=16,rows=4,noise=3,seed=1",
                                4096)),
            simulation=SimulationConfig(
                objectives=(JUDGED,), samplers=("on-policy", Q_STAR, "off-policy") + SWEEP,
                samples_per_step=8, seeds=48, tuning_seeds=3, grid_extensions=3,
                lr_grid=(0.1, 0.3, 1.0, 3.0, 10.0), bootstrap=1000, final_kl_only=SWEEP))

    @classmethod
    def thorough(cls) -> "EvidenceConfig":
        return cls(
            cases=(EvidenceCase("real SmolLM2 (close)", REAL_CASE, 8192, top_k=32),
                   EvidenceCase("llm-like (moderate)", "gen:llm-like:V=32,rows=8,noise=1,seed=1",
                                4096, top_k=32),
                   EvidenceCase("llm-like (far)", "gen:llm-like:V=32,rows=8,noise=3,seed=1",
                                8192, top_k=32),
                   EvidenceCase("dirichlet (far)", "gen:dirichlet:V=16,rows=8,seed=2", 8192),
                   EvidenceCase("near point mass", "gen:delta-uniform:V=32,eps=0.01,rows=2",
                                8192, top_k=32)),
            simulation=SimulationConfig(
                objectives=(JUDGED,), samplers=("on-policy", Q_STAR, "off-policy") + SWEEP,
                samples_per_step=8, seeds=96, tuning_seeds=4, grid_extensions=3,
                lr_grid=(0.1, 0.3, 1.0, 3.0, 10.0), bootstrap=1000, final_kl_only=SWEEP),
            context_seeds=48)

    def case_config(self, case: EvidenceCase, *, context: bool = False,
                    estimators: tuple[str, ...] | None = None,
                    samplers: tuple[str, ...] | None = None, seed_offset: int = 0
                    ) -> SimulationConfig:
        sim = self.simulation
        cfg = replace(sim, budget=case.budget, top_k=case.top_k, seed=sim.seed + seed_offset)
        if context:
            cfg = replace(cfg, objectives=(CONTEXT,), samplers=self.context_samplers,
                          estimators=self.context_estimators, seeds=self.context_seeds)
        if estimators is not None:
            cfg = replace(cfg, estimators=estimators)
        if samplers is not None:
            cfg = replace(cfg, samplers=samplers)
        return cfg.checked()


@dataclass
class CaseRun:
    case: EvidenceCase
    source: str
    log_pi_theta: np.ndarray
    log_pi_t: np.ndarray
    judged: SimulationResult
    context: SimulationResult | None


@dataclass
class EfficiencyStudy:
    config: EvidenceConfig
    runs: list[CaseRun]
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"cases": [{"case": r.case.name, "source": r.source, "budget": r.case.budget,
                           "top_k": r.case.top_k, "initial_kl": r.judged.initial_kl[JUDGED],
                           "simulation": r.judged.summary(),
                           "context": r.context.summary() if r.context else None}
                          for r in self.runs], "skipped": self.skipped}


def load_case(case: EvidenceCase):
    """(source label, log_pi_theta, log_pi_t) of a case, or None with a reason."""
    from geomix_cli.sources import load_source

    if case.spec == REAL_CASE:
        from geomix_cli.cases import real_sample_path

        path = real_sample_path()
        if path is None:
            return None, "the shipped real pairs are not installed"
        pairs = load_source(str(path), rows=case.rows)
        source = f"the shipped SmolLM2 pairs, rows {case.rows or 'all'}"
    else:
        pairs = load_source(case.spec)
        source = case.spec
    valid = pairs.valid_rows
    if not valid.any():
        return None, "no valid row"
    return (source, pairs.log_pi_theta[valid], pairs.log_pi_t[valid]), None


def study_steps(config: EvidenceConfig) -> int:
    """Learner steps of `efficiency_study` without grid extensions (for a progress bar)."""
    total = 0
    for case in config.cases:
        total += total_steps(config.case_config(case))
        total += total_steps(config.case_config(case, context=True))
    return total


def efficiency_study(config: EvidenceConfig | None = None, *,
                     progress: Callable[[int], None] | None = None) -> EfficiencyStudy:
    """Simulate every case on the judged objective and on the forward-KL context."""
    config = config or EvidenceConfig.small()
    study = EfficiencyStudy(config, [])
    for case in config.cases:
        loaded, why = load_case(case)
        if loaded is None:
            study.skipped.append(f"{case.name}: {why}")
            continue
        source, lt, lT = loaded
        if not np.all(np.isfinite(lT)):
            study.skipped.append(f"{case.name}: pi_t has zeros (reverse KL is +inf)")
            continue
        judged = simulate(lt, lT, config.case_config(case), source=source, progress=progress)
        context = simulate(lt, lT, config.case_config(case, context=True), source=source,
                           progress=progress)
        study.runs.append(CaseRun(case, source, lt, lT, judged, context))
    return study


# ------------------------------------------------------------------------------------------------
# comparison cells


@dataclass
class Cell:
    """One comparison: `sampler` against `reference` on one case, estimator and metric.

    ratio: median(reference) / median(sampler) (> 1: the sampler is better; for samples to a
    target, the speed-up), with its paired bootstrap CI; wins: seeds where the sampler beats the
    reference; outcome against `factor`: 'meets' (CI lower end >= factor), 'contradicts' (CI upper
    end < factor), 'inconclusive', or 'not reached' (neither reached the target)."""

    claim: str
    case: str
    initial_kl: float
    estimator: str
    metric: str
    sampler: str
    reference: str
    factor: float
    comparison: PairedComparison
    outcome: str
    judged: bool = True
    strict: bool = False    # 'meets' needs the CI strictly above the factor ("better than")

    @property
    def key(self) -> tuple:
        return (self.claim, self.case, self.estimator, self.metric, self.sampler, self.reference)

    # the comparison's numbers, by name
    ratio = property(lambda self: self.comparison.ratio)
    ratio_ci = property(lambda self: self.comparison.ratio_ci)
    wins = property(lambda self: self.comparison.wins)
    ties = property(lambda self: self.comparison.ties)
    losses = property(lambda self: self.comparison.losses)
    win_ci = property(lambda self: self.comparison.win_ci)
    win_fraction = property(lambda self: self.comparison.win_fraction)

    def record(self) -> dict:
        return {"case": self.case, "initial_kl": self.initial_kl, "estimator": self.estimator,
                "metric": self.metric, "sampler": self.sampler, "reference": self.reference,
                "factor": self.factor, "ratio": self.ratio, "ratio_ci": list(self.ratio_ci),
                "wins": self.wins, "ties": self.ties, "losses": self.losses,
                "win_fraction": self.win_fraction, "win_ci": list(self.win_ci),
                "outcome": self.outcome, "judged": self.judged, "strict": self.strict}


def outcome_of(ratio: float, ci: tuple[float, float], factor: float, *,
               strict: bool = False) -> str:
    """'meets' (CI lower end >= factor; > factor when `strict`, for "better than"), 'contradicts'
    (CI upper end < factor), 'inconclusive', or 'not reached'."""
    lo, hi = ci
    if np.isnan(ratio):  # both medians censored: neither reached the target
        return "not reached"
    above = lo > factor if strict else lo >= factor     # (NaN: False; +inf: the reference
    if above or (np.isnan(lo) and np.isinf(ratio) and ratio > 0):  # never finished: meets)
        return "meets"
    if hi < factor:
        return "contradicts"
    return "inconclusive"


def _boot(config: SimulationConfig) -> np.ndarray:
    return np.random.default_rng([config.seed, 104729]).integers(
        0, config.seeds, size=(config.bootstrap, config.seeds))


def _cell(claim, name, sim, estimator, metric, sampler, reference, factor, *, judged=True,
          strict=False) -> Cell:
    ref = sim.get(JUDGED, estimator, reference).metric(metric).per_seed
    oth = sim.get(JUDGED, estimator, sampler).metric(metric).per_seed
    comp = _compare(sim, metric, ref, oth)
    return Cell(claim, name, float(sim.initial_kl[JUDGED]), estimator, metric, sampler, reference,
                factor, comp, outcome_of(comp.ratio, comp.ratio_ci, factor, strict=strict),
                judged, strict)


def _compare(sim, metric, ref, other) -> PairedComparison:
    cfg = sim.config
    return paired_comparison(ref, other, _boot(cfg), cfg,
                             censored_at=None if metric == FINAL else
                             float(cfg.budget + cfg.samples_per_step))


def planted_cells(study: EfficiencyStudy, cells: list[Cell], speedup: float) -> list[Cell]:
    """The controls of the efficiency claims: each cell's judgement (paired bootstrap CI, outcome
    against its factor) on a planted sampler whose true speed-up over the reference is `speedup`:
    the compared sampler's own per-seed values (its seed-to-seed noise, paired with the
    reference's as in the real comparison), rescaled so that the ratio of medians is exactly
    `speedup` (lower is better for every metric; a never-reached or diverged seed stays +inf).
    1: no effect, which must not meet a factor above 1 nor "better than" (strict); 3 x the
    factor: an effect the judgement must detect. Where a median is not finite and positive the
    reference's own values divided by `speedup` stand in."""
    runs = {r.case.name: r.judged for r in study.runs}
    out = []
    for c in cells:
        sim = runs[c.case]
        ref = sim.get(JUDGED, c.estimator, c.reference).metric(c.metric).per_seed
        other = sim.get(JUDGED, c.estimator, c.sampler).metric(c.metric).per_seed
        med_ref, med_other = float(lower_median(ref)), float(lower_median(other))
        if 0.0 < med_ref < np.inf and 0.0 < med_other < np.inf:
            planted = other * (med_ref / (speedup * med_other))
        else:
            planted = ref / speedup
        comp = _compare(sim, c.metric, ref, planted)
        out.append(replace(c, sampler=f"planted {speedup:g}x {c.reference}", comparison=comp,
                           outcome=outcome_of(comp.ratio, comp.ratio_ci, c.factor,
                                              strict=c.strict)))
    return out


def comparison_cells(name: str, sim: SimulationResult) -> dict[str, list[Cell]]:
    """The rows of the three efficiency claims for one case (see the module doc)."""
    cfg = sim.config
    targets = [target_key(t) for t in cfg.targets]
    out: dict[str, list[Cell]] = {"sample-efficiency": [], "off-policy-unstable": [],
                                  "alpha-star-best": []}
    for est in estimators_for(JUDGED, cfg.estimators):
        for metric in targets + [FINAL]:
            out["sample-efficiency"].append(_cell("sample-efficiency", name, sim, est, metric,
                                                  Q_STAR, "on-policy", 2.0,
                                                  judged=metric != FINAL))
        if "off-policy" in cfg.samplers:
            out["off-policy-unstable"].append(_cell("off-policy-unstable", name, sim, est, FINAL,
                                                    Q_STAR, "off-policy", 2.0))
        for alpha in [s for s in cfg.samplers if s not in (Q_STAR,)]:
            # q* as the sampler, alpha as the reference: ratio = final KL(alpha) / final KL(q*)
            out["alpha-star-best"].append(_cell("alpha-star-best", name, sim, est, FINAL, Q_STAR,
                                                alpha, 1.0, strict=True))
    return out


def study_cells(study: EfficiencyStudy) -> dict[str, list[Cell]]:
    cells: dict[str, list[Cell]] = {}
    for run in study.runs:
        for claim, rows in comparison_cells(run.case.name, run.judged).items():
            cells.setdefault(claim, []).extend(rows)
    return cells


def confirm(study: EfficiencyStudy, cells: list[Cell], *,
            progress: Callable[[int], None] | None = None) -> list[Cell]:
    """The same cells measured again with fresh random numbers (seed + confirm_seed_offset: new
    tuning and evaluation seeds), each (case, estimator) simulated with only the samplers its
    cells need. Returned in the order of `cells`."""
    config = study.config
    groups: dict[tuple[str, str], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.case, c.estimator), []).append(c)
    runs = {run.case.name: run for run in study.runs}
    again: dict[tuple, Cell] = {}
    for (case, estimator), wanted in groups.items():
        run = runs[case]
        samplers = tuple(dict.fromkeys([s for c in wanted for s in (c.reference, c.sampler)]))
        cfg = config.case_config(run.case, estimators=(estimator,), samplers=samplers,
                                 seed_offset=config.confirm_seed_offset)
        sim = simulate(run.log_pi_theta, run.log_pi_t, cfg, source=run.source, progress=progress)
        for c in wanted:
            again[c.key + (c.factor,)] = _cell(c.claim, c.case, sim, c.estimator, c.metric,
                                               c.sampler, c.reference, c.factor, judged=c.judged,
                                               strict=c.strict)
    return [again[c.key + (c.factor,)] for c in cells]
