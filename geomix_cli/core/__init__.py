"""Pure numpy/scipy mathematics of the geometric-mean family: no printing, no files, no torch.

Kernel (family.py) -> solvers over batches (solvers.py) -> per-row diagnostics (diagnostics.py);
input arrays are checked by validation.py.
"""

import numpy as np

from geomix_cli.core.diagnostics import ROW_FIELDS, RowDiagnostics, diagnose
from geomix_cli.core.family import (FamilyPoint, TiltedMoments, common_support,
                                    effective_sample_size, entropy, entropy_formula_alpha,
                                    family_point, kl_divergence, log_q_alpha,
                                    log_ratio_on_support, tilted_moments)
from geomix_cli.core.solvers import (DEFAULT_METHOD, DEGENERATE, DISJOINT, EXACT_METHODS, INVALID,
                                     METHODS, NO_ROOT, OK, STATUSES, AlphaSolution,
                                     RowClassification, classify_rows, solve_alpha, solve_brentq,
                                     solve_newton, solve_bisection_reference,
                                     solve_entropy_formula)
from geomix_cli.core.validation import LOGITS, PROBS, LogProbRows, validate_pair, validate_rows


def chernoff_information(log_pi_theta, log_pi_t):
    """Chernoff information C = -min_alpha log Z(alpha) = -log Z(alpha*) per row, for [B, V]
    log-probabilities (NaN where alpha* does not exist; degenerate rows: -log Z of the common q)."""
    log_pi_theta = np.atleast_2d(np.asarray(log_pi_theta, dtype=np.float64))
    log_pi_t = np.atleast_2d(np.asarray(log_pi_t, dtype=np.float64))
    return diagnose(log_pi_theta, log_pi_t, solve_alpha(log_pi_theta, log_pi_t)).chernoff


__all__ = [name for name in dir() if not name.startswith("_")]
