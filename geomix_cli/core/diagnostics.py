"""Per-row diagnostics of a solve: KLs, Chernoff information, ESS, entropies at the returned alpha."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from geomix_cli.core.family import entropy, entropy_ratio, family_point
from geomix_cli.core.solvers import DEGENERATE, EXACT_METHODS, OK, AlphaSolution

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


def diagnose(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, solution: AlphaSolution) -> RowDiagnostics:
    """Evaluate the family at each row's alpha (degenerate rows at alpha = 1/2, where q is the
    same as anywhere) and collect the per-row report quantities. Rows are [B, V] or one [V]."""
    log_pi_theta = np.atleast_2d(np.asarray(log_pi_theta, dtype=np.float64))
    log_pi_t = np.atleast_2d(np.asarray(log_pi_t, dtype=np.float64))
    n_rows = solution.n_rows
    nan = np.full(n_rows, np.nan)
    status = solution.status
    usable = (status == OK) & np.isfinite(solution.alpha)
    degenerate = status == DEGENERATE
    where = usable | degenerate
    values = {f.name: nan.copy() for f in fields(FamilyFields)}
    if where.any():
        alpha = np.where(degenerate, 0.5, solution.alpha)[where]
        if where.all():  # no copy of the batch (family_point works on it in row blocks)
            point = family_point(log_pi_theta, log_pi_t, alpha)
        else:
            point = family_point(log_pi_theta[where], log_pi_t[where], alpha)
        for name in values:
            values[name][where] = getattr(point, name)
    # KL >= 0 and log Z <= 0 (Hoelder) hold exactly; what rounding puts on the wrong side of 0
    # (about eps, e.g. for identical rows) is clamped, which also turns -0.0 into 0.0.
    with np.errstate(invalid="ignore"):
        for name in ("kl_q_theta", "kl_q_target"):
            values[name] = np.where(values[name] < 0.0, 0.0, values[name]) + 0.0
        values["log_z"] = np.where(values["log_z"] > 0.0, 0.0, values["log_z"]) + 0.0
    chernoff = nan.copy()
    if solution.method in EXACT_METHODS:
        chernoff[usable] = -values["log_z"][usable]
    chernoff[degenerate] = -values["log_z"][degenerate]
    chernoff = chernoff + 0.0  # -(0.0) is -0.0
    valid = status != "invalid"
    h_theta_all = entropy(log_pi_theta)  # each entropy once (entropy_formula_alpha recomputed both)
    h_t_all = entropy(log_pi_t)
    h_theta = np.where(valid, h_theta_all, np.nan)
    h_t = np.where(valid, h_t_all, np.nan)
    alpha_h = np.where(valid, entropy_ratio(h_theta_all, h_t_all), np.nan)
    return RowDiagnostics(solution=solution, kl_q_theta=values["kl_q_theta"],
                          kl_q_target=values["kl_q_target"], chernoff=chernoff,
                          log_z=values["log_z"], ess_theta=values["ess_theta"],
                          ess_target=values["ess_target"], alpha_entropy=alpha_h,
                          entropy_theta=h_theta, entropy_target=h_t)


@dataclass
class FamilyFields:  # the FamilyPoint fields copied into diagnostics
    kl_q_theta: float
    kl_q_target: float
    log_z: float
    ess_theta: float
    ess_target: float
