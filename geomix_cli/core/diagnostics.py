"""Per-row diagnostics of a solve: KLs, Chernoff information, ESS, entropies at the returned alpha."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geomix_cli.core import kernel
from geomix_cli.core.arrays import numpy_namespace
from geomix_cli.core.family import entropy_ratio
from geomix_cli.core.solvers import (DEGENERATE, EXACT_METHODS, INVALID, OK, AlphaSolution,
                                     _as_rows, run_blocks, solve_alpha, solve_blocks)

ROW_FIELDS = ("row", "status", "alpha", "kl_q_theta", "kl_q_target", "chernoff", "log_z",
              "ess_theta", "ess_target", "alpha_entropy", "iterations", "residual", "message")


@dataclass
class RowDiagnostics:
    """Arrays over rows. For 'ok' rows everything is evaluated at the solution's alpha.

    chernoff = -log Z(alpha*) = KL(q*||pi_theta) = KL(q*||pi_t) (the Chernoff information), only
    for exact methods; for 'degenerate' rows (same q for every alpha) it is -log Z of that q.
    Rows with another status carry NaN (null in JSON), and their message says why."""

    solution: AlphaSolution
    kl_q_theta: np.ndarray
    kl_q_target: np.ndarray
    chernoff: np.ndarray
    log_z: np.ndarray
    ess_theta: np.ndarray
    ess_target: np.ndarray
    alpha_entropy: np.ndarray
    entropy_theta: np.ndarray
    entropy_target: np.ndarray

    def records(self, row_labels=None) -> list[dict]:
        """One plain dict per row with the JSON schema's fields (NaN kept; the writer nulls it)."""
        sol = self.solution
        out = []
        for i in range(sol.n_rows):
            out.append({
                "row": int(row_labels[i]) if row_labels is not None else i,
                "status": str(sol.status[i]),
                "alpha": float(sol.alpha[i]),
                "kl_q_theta": float(self.kl_q_theta[i]),
                "kl_q_target": float(self.kl_q_target[i]),
                "chernoff": float(self.chernoff[i]),
                "log_z": float(self.log_z[i]),
                "ess_theta": float(self.ess_theta[i]),
                "ess_target": float(self.ess_target[i]),
                "alpha_entropy": float(self.alpha_entropy[i]),
                "iterations": int(sol.iterations[i]),
                "residual": float(sol.residual[i]),
                "message": sol.message[i],
            })
        return out

    @classmethod
    def from_rows(cls, solution: AlphaSolution, rows: dict) -> "RowDiagnostics":
        """From `kernel.diagnose_block`'s host arrays: KL >= 0 and log Z <= 0 (Hoelder) hold
        exactly, so what rounding puts on the wrong side of 0 (about eps, e.g. for identical rows)
        is clamped, which also turns -0.0 into 0.0; C = -log Z for exact methods' 'ok' rows and
        for degenerate rows."""
        status = solution.status
        with np.errstate(invalid="ignore"):
            kl_theta = np.maximum(rows["kl_q_theta"], 0.0) + 0.0
            kl_t = np.maximum(rows["kl_q_t"], 0.0) + 0.0
            log_z = np.minimum(rows["log_z"], 0.0) + 0.0
            h_theta, h_t = rows["entropy_theta"], rows["entropy_t"]
            alpha_h = entropy_ratio(h_theta, h_t)   # NaN on invalid rows (their entropies are)
        is_ok = status == OK
        if is_ok.all() and solution.method in EXACT_METHODS and np.isfinite(solution.alpha).all():
            chernoff = -log_z + 0.0  # -(0.0) is -0.0
        else:
            usable = is_ok & np.isfinite(solution.alpha)
            chernoff = np.full(solution.n_rows, np.nan)
            if solution.method in EXACT_METHODS:
                chernoff[usable] = -log_z[usable]
            degenerate = status == DEGENERATE
            chernoff[degenerate] = -log_z[degenerate]
            chernoff = chernoff + 0.0
        return cls(solution=solution, kl_q_theta=kl_theta, kl_q_target=kl_t, chernoff=chernoff,
                   log_z=log_z, ess_theta=rows["ess_theta"], ess_target=rows["ess_t"],
                   alpha_entropy=alpha_h, entropy_theta=h_theta, entropy_target=h_t)


def diagnose(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, solution: AlphaSolution) -> RowDiagnostics:
    """Evaluate the family at each row's alpha (degenerate rows at alpha = 1/2, where q is the
    same as anywhere) and collect the per-row report quantities (`kernel.diagnose_block`, on
    cache-sized row blocks). Rows are [B, V] or one [V] of normalised log-probabilities (others
    are refused with InputError)."""
    theta, target, tolerance = _as_rows(log_pi_theta, log_pi_t)
    xp = numpy_namespace()
    status, alpha = solution.status, solution.alpha

    def one_block(block, a, b, invalid, errors):
        with kernel.ignore_fp(xp):
            prep = kernel.prepare_pair(xp, a, b, end_points=False, reuse=True)
            return kernel.diagnose_block(prep, status[block], alpha[block],
                                         check_tolerance=tolerance, row_offset=block.start)

    errors = [None if s != INVALID else "invalid" for s in status]
    rows = run_blocks(theta, target, errors, tolerance, one_block)
    return RowDiagnostics.from_rows(solution, rows)


def solve_and_diagnose(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, method: str = "newton", *,
                       row_errors: list[str | None] | None = None, **options) -> RowDiagnostics:
    """`diagnose(log_pi_theta, log_pi_t, solve_alpha(...))` with the same numbers, in one go for
    newton / halley: each cache-sized block is classified, solved and evaluated while it is in
    cache, and the family at alpha* reuses the iteration's last pass (its log Z and D)."""
    if method not in ("newton", "halley"):
        sol = solve_alpha(log_pi_theta, log_pi_t, method, row_errors=row_errors, **options)
        return diagnose(log_pi_theta, log_pi_t, sol)
    rows = solve_blocks(log_pi_theta, log_pi_t, order=3 if method == "halley" else 2,
                        row_errors=row_errors, diagnostics=True, **options)
    return RowDiagnostics.from_rows(AlphaSolution.from_rows(method, rows), rows)
