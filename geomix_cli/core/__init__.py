"""The mathematics of the geometric-mean family: no printing, no files, no torch at import.

kernel.py (the one algorithm, over the array API: numpy or torch) -> family.py (the family in log
space, numpy) -> solvers over batches (solvers.py) -> per-row diagnostics (diagnostics.py);
input arrays are checked by validation.py. Every entry point that solves or evaluates the family
takes normalised log-probabilities and refuses rows that are not (raw logits); the Python API
for logits, probabilities, torch tensors and masks is `geomix_cli.api`.
"""

import numpy as np

from geomix_cli.core.diagnostics import (ROW_FIELDS, RowDiagnostics, diagnose,
                                         solve_and_diagnose)
from geomix_cli.core.family import (FamilyPoint, TiltedMoments, common_support,
                                    effective_sample_size, entropy, entropy_formula_alpha,
                                    family_point, kl_divergence, log_q_alpha,
                                    log_ratio_on_support, tilted_moments)
from geomix_cli.core.kernel import MASKED, MAX_ITER
from geomix_cli.core.solvers import (DEFAULT_METHOD, DEGENERATE, DISJOINT, EXACT_METHODS, INVALID,
                                     METHODS, NO_ROOT, OK, STATUSES, AlphaSolution,
                                     RowClassification, classify_rows, solve_alpha, solve_brentq,
                                     solve_newton, solve_bisection_reference,
                                     solve_entropy_formula)
from geomix_cli.core.validation import (LOGITS, LOGPROBS, PROBS, LogProbRows, validate_pair,
                                        validate_rows)


def chernoff_information(log_pi_theta, log_pi_t):
    """Chernoff information C = -min_alpha log Z(alpha) = -log Z(alpha*) per row, for [B, V]
    log-probabilities (NaN where alpha* does not exist; degenerate rows: -log Z of the common q)."""
    log_pi_theta = np.atleast_2d(np.asarray(log_pi_theta, dtype=np.float64))
    log_pi_t = np.atleast_2d(np.asarray(log_pi_t, dtype=np.float64))
    return solve_and_diagnose(log_pi_theta, log_pi_t).chernoff


__all__ = [name for name in dir() if not name.startswith("_")]
