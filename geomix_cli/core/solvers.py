"""Solvers for alpha*: the root of D(alpha) = E_{q_alpha}[l] on (0, 1), one result type for all.

Per row, before any solve, the classification decides whether a root exists (docs/derivation.md,
"Support rules"):

- `disjoint-support`: S is empty, Z = 0, there is no q at all;
- `degenerate`: l is 0 on S, every alpha gives the same q and equal KLs: alpha* is not unique;
- `no-root`: l is a non-zero constant on S, or D(0+) and D(1-) have the same sign: D keeps one
  sign on (0, 1) and no alpha equalises the KLs;
- `ok`: D(0+) > 0 > D(1-); D is strictly decreasing (D' = -Var_q(l) < 0), so the root is unique.

Rows that failed validation arrive as `invalid` and are never computed on. Only `ok` rows get an
alpha; every other row reports NaN (null in JSON) with a message saying what is true instead.

The classification and the Newton / Halley iteration are `core.kernel`'s (the same code runs on
torch tensors in `backends.torch_backend`); this module runs them over a numpy batch in
cache-sized blocks of rows (each block classified and solved to the end while it is in cache),
on up to `worker_count()` threads. Inputs must be normalised log-probabilities: rows that are not
(raw logits) are refused with InputError, never solved into a wrong alpha.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geomix_cli.core import kernel
from geomix_cli.core.arrays import numpy_namespace
from geomix_cli.core.family import (entropy_formula_alpha, log_ratio_on_support, map_row_blocks,
                                    row_blocks, tilted_moments)
from geomix_cli.core import rules, single_row
from geomix_cli.core.validation import input_logprob_tolerance
from geomix_cli.core.kernel import (DEGENERATE, DISJOINT, INVALID, MAX_ITER, NO_ROOT, OK,  # noqa: F401
                                    STATUSES)

EXACT_METHODS = ("newton", "halley", "brentq")
METHODS = EXACT_METHODS + ("bisection", "entropy")
DEFAULT_METHOD = "newton"

_EPS = np.finfo(np.float64).eps


@dataclass
class AlphaSolution:
    """Result of a batched solve (arrays over rows), in the spirit of scipy's RootResults.

    alpha:       the root (NaN unless status == 'ok'); for 'entropy' the heuristic alpha_H,
                 for 'bisection' the reference code's answer.
    residual:    D(alpha) = KL(q||pi_theta) - KL(q||pi_t) at the returned alpha (float64).
    iterations:  solver iterations per row (0 for rows not solved).
    evaluations: passes over the row's V entries (including classification).
    status, message: see module doc.
    d_at_0, d_at_1: the limits D(0+) and D(1-) on the common support (NaN if undefined).
    """

    method: str
    alpha: np.ndarray
    residual: np.ndarray
    iterations: np.ndarray
    evaluations: np.ndarray
    status: np.ndarray
    message: list[str]
    d_at_0: np.ndarray
    d_at_1: np.ndarray
    extra: dict = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return int(self.alpha.shape[0])

    @property
    def converged(self) -> np.ndarray:
        return self.status == OK

    def row(self, i: int) -> dict:
        return {"row": i, "status": str(self.status[i]), "alpha": float(self.alpha[i]),
                "residual": float(self.residual[i]), "iterations": int(self.iterations[i]),
                "evaluations": int(self.evaluations[i]), "message": self.message[i]}

    @classmethod
    def concatenate(cls, parts: "list[AlphaSolution]") -> "AlphaSolution":
        """The solutions of consecutive row chunks as one (same method; `extra` is not merged)."""
        arrays = ("alpha", "residual", "iterations", "evaluations", "status", "d_at_0", "d_at_1")
        return cls(method=parts[0].method,
                   **{name: np.concatenate([getattr(p, name) for p in parts]) for name in arrays},
                   message=[m for p in parts for m in p.message])

    @classmethod
    def from_rows(cls, method: str, rows: dict) -> "AlphaSolution":
        """From the host arrays of `kernel.solve_block` (one block or several concatenated)."""
        return cls(method=method, alpha=rows["alpha"], residual=rows["residual"],
                   iterations=rows["iterations"], evaluations=rows["evaluations"],
                   status=rows["status"], message=list(rows["message"]), d_at_0=rows["d_at_0"],
                   d_at_1=rows["d_at_1"])


@dataclass(frozen=True)
class RowClassification:
    status: np.ndarray
    message: list[str]
    d_at_0: np.ndarray
    d_at_1: np.ndarray
    var_at_0: np.ndarray
    var_at_1: np.ndarray


def constant_ratio_tolerance(log_pi_theta: np.ndarray, log_pi_t: np.ndarray,
                             support: np.ndarray) -> np.ndarray:
    """Spread of l below which it counts as constant on S (`rules.constant_tolerance` with the
    largest |log pi_theta| + |log pi_t| on S)."""
    with np.errstate(invalid="ignore"):
        scale = np.max(np.where(support, np.abs(log_pi_theta) + np.abs(log_pi_t), 0.0), axis=-1)
    return rules.constant_tolerance(_EPS, scale)


def hermite_start(d0, d1, v0, v1) -> np.ndarray:
    """Newton's start from the end points alone: the root in (0, 1) of the cubic Hermite
    interpolant of D with D(0) = d0 > 0, D(1) = d1 < 0, D'(0) = -v0, D'(1) = -v1, clipped to
    [1e-3, 1 - 1e-3] (`rules.hermite_start` on [0, 1]; the solvers start short rows from the
    tighter bracket of their first pass's grid)."""
    d0, d1, v0, v1 = (np.asarray(v, dtype=np.float64) for v in (d0, d1, v0, v1))
    return rules.hermite_start(rules._RowArrays, np.zeros_like(d0), np.ones_like(d0), d0, d1,
                               v0, v1)


def _as_rows(log_pi_theta, log_pi_t):
    """float64 [B, V] arrays, and the normalisation tolerance of the inputs as given."""
    a = np.atleast_2d(np.asarray(log_pi_theta, dtype=np.float64))
    b = np.atleast_2d(np.asarray(log_pi_t, dtype=np.float64))
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.ndim != 2:
        raise ValueError(f"expected [V] or [B, V] log-probabilities, got shape {a.shape}")
    return a, b, input_logprob_tolerance(log_pi_theta, a.shape[-1])


def _invalid_mask(n_rows: int, row_errors: list[str | None] | None) -> np.ndarray | None:
    if row_errors is None:
        return None
    if len(row_errors) != n_rows:
        raise ValueError(f"row_errors has {len(row_errors)} entries for {n_rows} rows")
    return np.array([e is not None for e in row_errors], dtype=bool)


def _concat_rows(parts: list[dict]) -> dict:
    out = {}
    for key in parts[0]:
        if key == "message":
            out[key] = [m for p in parts for m in p[key]]
        else:
            out[key] = np.concatenate([p[key] for p in parts])
    return out


def run_blocks(log_pi_theta, log_pi_t, row_errors, tolerance, fn) -> dict:
    """`fn(prep_args)` on every cache-sized block of rows (threads for many blocks); the per-row
    host arrays of all blocks joined. fn receives (block, theta_rows, t_rows, invalid, errors)."""
    n_rows, n_cols = log_pi_theta.shape
    invalid = _invalid_mask(n_rows, row_errors)

    def one_block(block):
        return fn(block, log_pi_theta[block], log_pi_t[block],
                  None if invalid is None else invalid[block],
                  None if row_errors is None else row_errors[block])

    # the first pass evaluates rules.grid_size(V) alphas per row at once: blocks of rows small
    # enough that its [grid, rows, V] buffers stay cache-sized too
    blocks = list(row_blocks(n_rows, n_cols * rules.grid_size(n_cols)))
    parts = map_row_blocks(one_block, blocks)
    return parts[0] if len(parts) == 1 else _concat_rows(parts)


def classify_rows(log_pi_theta: np.ndarray, log_pi_t: np.ndarray,
                  row_errors: list[str | None] | None = None) -> RowClassification:
    """Decide per row whether alpha* exists and is unique (one pass per end point: D(0+), D(1-)).

    invalid (row_errors) > disjoint-support (S empty) > l constant on S (degenerate when the
    constant is 0 within rounding, else no-root) > no-root (D(0+), D(1-) of the same sign) > ok."""
    theta, target, tolerance = _as_rows(log_pi_theta, log_pi_t)
    xp = numpy_namespace()

    def classify(block, a, b, invalid, errors):
        with kernel.ignore_fp(xp):
            prep = kernel.prepare_pair(xp, a, b, check_tolerance=tolerance, skip=invalid,
                                       row_offset=block.start, reuse=True,
                                       end_point_entropies=False)
            status = kernel.row_status(prep, invalid)
            d0, d1 = prep.d0.copy(), prep.d1.copy()
            if invalid is not None:
                d0[invalid] = d1[invalid] = np.nan
            return dict(status=status, message=kernel.row_messages(prep, status, errors),
                        d0=d0, d1=d1, v0=prep.v0, v1=prep.v1)

    rows = run_blocks(theta, target, row_errors, tolerance, classify)
    return RowClassification(status=rows["status"], message=list(rows["message"]),
                             d_at_0=rows["d0"], d_at_1=rows["d1"], var_at_0=rows["v0"],
                             var_at_1=rows["v1"])


def _empty_solution(method: str, cls: RowClassification) -> AlphaSolution:
    n = cls.status.shape[0]
    return AlphaSolution(method=method, alpha=np.full(n, np.nan), residual=np.full(n, np.nan),
                         iterations=np.zeros(n, dtype=np.int64),
                         evaluations=np.where(cls.status == INVALID, 0, 1).astype(np.int64),
                         status=cls.status.copy(), message=list(cls.message),
                         d_at_0=cls.d_at_0, d_at_1=cls.d_at_1)


def solve_blocks(log_pi_theta, log_pi_t, *, order: int = 2, xtol: float = 1e-14,
                 max_iter: int = 60, row_errors=None, diagnostics: bool = False,
                 iterates: dict | None = None, lane: bool = True) -> dict:
    """`kernel.solve_block` over the batch's cache-sized row blocks: the per-row host arrays.
    lane: False where the caller already tried the small-call lane on the row (api.solve)."""
    theta, target, tolerance = _as_rows(log_pi_theta, log_pi_t)
    if lane and theta.shape[0] == 1 and row_errors is None:
        # one row: the small-call lane (the same numbers; None where the row needs this path)
        rows = single_row.solve_row(theta, target, order=order, xtol=xtol, max_iter=max_iter,
                                    check_tolerance=tolerance, diagnostics=diagnostics,
                                    iterates=iterates)
        if rows is not None:
            return rows
    xp = numpy_namespace()

    def solve(block, a, b, invalid, errors):
        return kernel.solve_block(xp, a, b, invalid=invalid, row_errors=errors, order=order,
                                  xtol=xtol, max_iter=max_iter, check_tolerance=tolerance,
                                  diagnostics=diagnostics, iterates=iterates,
                                  row_labels=np.arange(block.start, block.stop),
                                  row_offset=block.start)

    return run_blocks(theta, target, row_errors, tolerance, solve)


def solve_newton(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, *, order: int = 2,
                 xtol: float = 1e-14, max_iter: int = 60,
                 row_errors: list[str | None] | None = None,
                 record_iterates: bool = False) -> AlphaSolution:
    """Safeguarded Newton (order=2) or Halley (order=3) on D(alpha), vectorised over rows
    (`kernel.newton`).

    One pass per iterate gives D = E_q[l], D' = -Var_q(l) (and E_q[(l-D)^3] for Halley, from
    D'' = E_q[(l-D)^3]). The bracket [lo, hi] with D(lo) > 0 > D(hi) is kept; a step that leaves
    it is replaced by bisection, so convergence is guaranteed. Start: the root of the cubic
    Hermite interpolant of D from D(0+), D(1-) and D' = -Var at both ends (`hermite_start`), all
    of which the classification pass already computed. Stops when the Newton correction |D / D'|
    is below `xtol` or has reached float64's rounding floor (the returned alpha is the last
    evaluated one, so `residual` is exactly D there). With `record_iterates`,
    sol.extra["iterates"][b] lists the (alpha, D) pairs evaluated for row b, in order.

    Rows are processed in cache-sized blocks, each classified and solved to the end while its
    arrays are in cache, blocks on up to `worker_count()` threads."""
    iterates: dict[int, list[tuple[float, float]]] | None = {} if record_iterates else None
    rows = solve_blocks(log_pi_theta, log_pi_t, order=order, xtol=xtol, max_iter=max_iter,
                        row_errors=row_errors, iterates=iterates)
    sol = AlphaSolution.from_rows("halley" if order == 3 else "newton", rows)
    if record_iterates:
        sol.extra["iterates"] = iterates
    return sol


def _scipy_brentq(*args, **kwargs):
    """scipy.optimize.brentq, imported on first use (importing scipy.optimize takes ~0.3 s, which
    every `geomix` process paid at start-up when it was imported with the core)."""
    from scipy.optimize import brentq

    return brentq(*args, **kwargs)


def solve_brentq(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, *, xtol: float = 1e-15,
                 row_errors: list[str | None] | None = None,
                 classification: RowClassification | None = None) -> AlphaSolution:
    """scipy.optimize.brentq on D(alpha) over [0, 1], one row at a time: the exact reference.

    D at 0 and 1 is the continuous extension from inside (0, 1) (moments on the common support);
    D is `kernel.moments`' mean with the same re-centring as the Newton solver."""
    log_pi_theta, log_pi_t, _ = _as_rows(log_pi_theta, log_pi_t)
    cls = classification or classify_rows(log_pi_theta, log_pi_t, row_errors)
    sol = _empty_solution("brentq", cls)
    xp = numpy_namespace()
    for b in np.flatnonzero(cls.status == OK):
        with kernel.ignore_fp(xp):
            prep = kernel.prepare_pair(xp, log_pi_theta[b:b + 1], log_pi_t[b:b + 1],
                                       end_points=False)

        def delta(alpha: float) -> float:
            with kernel.ignore_fp(xp):
                _, mean, _, _ = kernel.moments(xp, prep.l, prep.log_base, np.array([alpha]),
                                               order=1, supported=True)
            return float(mean[0] - prep.shift[0])

        root, info = _scipy_brentq(delta, 0.0, 1.0, xtol=xtol, rtol=4 * _EPS, maxiter=200,
                                   full_output=True, disp=False)
        sol.alpha[b] = root
        sol.residual[b] = delta(root)
        sol.iterations[b] = info.iterations
        sol.evaluations[b] += info.function_calls
        if not info.converged:  # never a number called alpha* on a row that is not 'ok'
            sol.status[b] = MAX_ITER
            sol.message[b] = f"brentq: {info.flag} (last iterate {root!r})"
            sol.alpha[b] = np.nan
    return sol


def solve_bisection_reference(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, *,
                              tol: float = 1e-6, max_iter: int = 50, smoothing: float = 1e-10,
                              row_errors: list[str | None] | None = None,
                              classification: RowClassification | None = None,
                              record_iterates: bool = False) -> AlphaSolution:
    """The derivation's reference solver (section 6.2), reproduced faithfully as a baseline.

    float32 probabilities; log(p + 1e-10) on both sides; q = softmax(alpha log(pi_theta + 1e-10)
    + (1 - alpha) log(pi_t + 1e-10)); objective = sum q (log(pi_t + 1e-10) - log(pi_theta + 1e-10));
    bisection on [0, 1] for the whole batch, stopping when max(hi - lo) < tol or after max_iter;
    returns (lo + hi) / 2. Its epsilon and float32 bias alpha*; measure, do not trust.
    With `record_iterates`, sol.extra["iterates"][b] lists (mid, float32 objective) per step."""
    log_pi_theta, log_pi_t, _ = _as_rows(log_pi_theta, log_pi_t)
    cls = classification or classify_rows(log_pi_theta, log_pi_t, row_errors)
    sol = _empty_solution("bisection", cls)
    rows = np.flatnonzero(cls.status == OK)
    if rows.size == 0:
        return sol
    f32 = np.float32
    p_theta = np.exp(log_pi_theta[rows]).astype(f32)
    p_t = np.exp(log_pi_t[rows]).astype(f32)
    log_theta = np.log(p_theta + f32(smoothing))
    log_t = np.log(p_t + f32(smoothing))
    log_ratio = log_t - log_theta
    lo = np.zeros(rows.size, dtype=f32)
    hi = np.ones(rows.size, dtype=f32)
    n_iter = 0
    for _ in range(max_iter):
        n_iter += 1
        mid = (lo + hi) / f32(2)
        logits = mid[:, None] * log_theta + (f32(1) - mid[:, None]) * log_t
        q = np.exp(logits - logits.max(axis=1, keepdims=True))
        q /= q.sum(axis=1, keepdims=True, dtype=f32)
        objective = (q * log_ratio).sum(axis=1, dtype=f32)
        if record_iterates:
            for j, b in enumerate(rows):
                sol.extra.setdefault("iterates", {}).setdefault(int(b), []).append(
                    (float(mid[j]), float(objective[j])))
        mask = objective > 0
        lo = np.where(mask, mid, lo)
        hi = np.where(mask, hi, mid)
        if (hi - lo).max() < tol:
            break
    alpha = ((lo + hi) / f32(2)).astype(np.float64)
    sol.alpha[rows] = alpha
    l, log_base, _ = log_ratio_on_support(log_pi_theta[rows], log_pi_t[rows])
    sol.residual[rows] = tilted_moments(l, log_base, alpha).mean
    sol.iterations[rows] = n_iter
    sol.evaluations[rows] += n_iter
    return sol


def solve_entropy_formula(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, *,
                          row_errors: list[str | None] | None = None,
                          classification: RowClassification | None = None) -> AlphaSolution:
    """The heuristic alpha_H = H(pi_theta) / (H(pi_theta) + H(pi_t)) — not a root of D.

    Reported for rows with status 'ok' (where alpha* exists to compare against); `residual` is
    D(alpha_H), the KL gap it leaves."""
    log_pi_theta, log_pi_t, _ = _as_rows(log_pi_theta, log_pi_t)
    cls = classification or classify_rows(log_pi_theta, log_pi_t, row_errors)
    sol = _empty_solution("entropy", cls)
    rows = np.flatnonzero(cls.status == OK)
    if rows.size:
        alpha = entropy_formula_alpha(log_pi_theta[rows], log_pi_t[rows])
        l, log_base, _ = log_ratio_on_support(log_pi_theta[rows], log_pi_t[rows])
        sol.alpha[rows] = alpha
        sol.residual[rows] = tilted_moments(l, log_base, np.nan_to_num(alpha)).mean
        sol.iterations[rows] = 0
    return sol


def solve_alpha(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, method: str = DEFAULT_METHOD, *,
                row_errors: list[str | None] | None = None, **options) -> AlphaSolution:
    """Solve alpha* for every row of [B, V] log-probabilities with the named method.

    The rows must be normalised log-probabilities (log_softmax of logits): a row whose logsumexp
    is off 0 by more than the dtype's tolerance is refused with InputError (raw logits used to
    give a wrong alpha with status 'ok'); `geomix_cli.api.solve(..., kind='logits')` takes logits."""
    if method in ("newton", "halley"):
        return solve_newton(log_pi_theta, log_pi_t, order=3 if method == "halley" else 2,
                            row_errors=row_errors, **options)
    if method == "brentq":
        return solve_brentq(log_pi_theta, log_pi_t, row_errors=row_errors, **options)
    if method == "bisection":
        return solve_bisection_reference(log_pi_theta, log_pi_t, row_errors=row_errors, **options)
    if method == "entropy":
        return solve_entropy_formula(log_pi_theta, log_pi_t, row_errors=row_errors, **options)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
