"""Tabular learning simulation: does sampling from q* learn faster than on- or off-policy sampling?

The derivation ends with "compared with on-policy: 2-5x sample efficiency; compared with
off-policy: much more stable learning", with no evidence. This package tests those sentences where
they can be tested exactly: tabular softmax policies, where every distribution is known and only
the sampling is random.

- `model`: configuration, vocabulary reduction, samplers and the gradient estimators;
- `learner`: the batched learner, the fair comparison (`simulate`) and its statistics;
- `evidence`: the cases and verdicts behind the verify suite's efficiency claims.
"""

from geomix_cli.simulate.model import (DEFAULT_LR_GRID, DEFAULT_SAMPLERS, DEFAULT_TARGETS,
                                       ESTIMATOR_LABELS, ESTIMATORS, FIXED_ALPHAS, NAMED_SAMPLERS,
                                       OBJECTIVES, OPTIMIZERS, ReducedPairs, SimulationConfig,
                                       ess_balance_alpha, estimator_coefficients, estimators_for,
                                       exact_gradient, gradient_estimate, importance_weights,
                                       objective_value, parse_sampler, reduce_vocabulary,
                                       sample_tokens, sampler_alpha, sampling_log_q, scatter_rows,
                                       softmax_log, softmax_start)
from geomix_cli.simulate.learner import (FINAL, BatchRun, MetricResult, PairedComparison,
                                         SamplerResult, SimulationResult, lower_median,
                                         paired_comparison, run_batch, samples_to_threshold,
                                         simulate, target_key, total_steps, wilson_interval)


def shipped_pairs_path():
    """The shipped real pairs (see `cases.real_sample_path`)."""
    from geomix_cli.cases import real_sample_path

    return real_sample_path()


from geomix_cli.simulate.evidence import (Cell, EfficiencyStudy, EvidenceCase,  # noqa: E402
                                          EvidenceConfig, comparison_cells, confirm,
                                          efficiency_study, study_cells, study_steps)
