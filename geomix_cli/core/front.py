"""The mathematics behind the pictures: the exact Pareto front, its marked points, a cloud of
other distributions, D(alpha) with solver iterates, and a four-case summary.

Everything here is numpy/scipy only and works on ONE row (`[V]` float64 log-probabilities, -inf
where a probability is 0), except `four_case_summary`, which also accepts a batch.

The Pareto front (docs/derivation.md#claim-theorem1-pareto) is the curve
    alpha -> (KL(q_alpha||pi_theta), KL(q_alpha||pi_t)),  alpha in [0, 1],
with KL(q||pi_theta) = (1-alpha) D - log Z and KL(q||pi_t) = -alpha D - log Z. Along it
    d KL(q||pi_theta)/d alpha = -(1-alpha) Var_q(l) <= 0,
    d KL(q||pi_t)/d alpha = alpha Var_q(l) >= 0,
so KL(q||pi_theta) grows and KL(q||pi_t) shrinks as alpha goes from 1 (pi_theta) to 0 (pi_t).

The curve is sampled adaptively in alpha: starting from a uniform grid, the intervals next to a
vertex where the polyline turns by more than `max_turn_deg` (in the plane scaled to a unit box)
are split at their midpoints, and so is any chord longer than `max_segment` of the box. So points
crowd where the curve bends and stay sparse where it is straight.

End points: for alpha in (0, 1), q_alpha lives on the common support S. The curve's end points at
alpha = 0 and 1 are the limits from inside (0, 1); they are pi_t and pi_theta themselves when the
two supports coincide. When they differ, the true pi_theta / pi_t can sit off the curve (even at
infinite KL); `ParetoFront.marks` reports them exactly, with `finite` saying whether they can be
drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import logsumexp

from geomix_cli.core.family import (entropy, entropy_formula_alpha, kl_divergence,
                                    log_ratio_on_support, tilted_moments)
from geomix_cli.core.solvers import (DEGENERATE, DISJOINT, INVALID, NO_ROOT, OK, classify_rows,
                                     constant_ratio_tolerance, solve_alpha)

NEG_INF = -np.inf

# marked-point keys (stable: the plots and the reports refer to them)
MARK_THETA = "pi_theta"
MARK_TARGET = "pi_t"
MARK_STAR = "q_star"
MARK_ENTROPY = "entropy"
MARK_HALF = "half"

CLOUD_MIXTURE = "arithmetic mixture"
CLOUD_PERTURBED = "perturbed front point"
CLOUD_DIRICHLET = "Dirichlet draw near the front"
CLOUD_KINDS = (CLOUD_MIXTURE, CLOUD_PERTURBED, CLOUD_DIRICHLET)


# ----------------------------------------------------------------------------------------------
# result types


@dataclass(frozen=True)
class FrontValues:
    """The family evaluated at several alphas of one row (arrays of the same length)."""

    alpha: np.ndarray
    kl_q_theta: np.ndarray
    kl_q_target: np.ndarray
    log_z: np.ndarray
    delta: np.ndarray
    var_l: np.ndarray
    ess_theta: np.ndarray
    ess_target: np.ndarray


@dataclass(frozen=True)
class MarkedPoint:
    """A labelled point of the picture. `alpha` is NaN for points that are not q_alpha."""

    key: str
    label: str
    alpha: float
    kl_q_theta: float
    kl_q_target: float

    @property
    def finite(self) -> bool:
        return bool(np.isfinite(self.kl_q_theta) and np.isfinite(self.kl_q_target))


@dataclass(frozen=True)
class Cloud:
    """Other distributions on the same vocabulary and their two KLs (finite ones only)."""

    kind: np.ndarray  # one of CLOUD_KINDS per point
    kl_q_theta: np.ndarray
    kl_q_target: np.ndarray

    def __len__(self) -> int:
        return int(self.kind.shape[0])


@dataclass(frozen=True)
class ParetoFront:
    """The exact front of one row, ready to draw or to write as CSV.

    status/message: the row's classification (solvers.classify_rows). `drawable` is False when
    there is no curve to draw: disjoint supports (no q at all), or l constant on S (degenerate /
    constant-ratio no-root: every alpha gives the same q, the 'front' is one point), or an
    invalid row. A 'no-root' row with a real curve IS drawable; it just has no q* mark.
    values: the curve (alpha decreasing from 1 to 0, i.e. from pi_theta to pi_t).
    marks: MARK_* -> MarkedPoint (q_star only when status == 'ok').
    zoom: the curve sampled densely (alpha decreasing) around q* and the marks near it, for a
    close-up of where they sit (None when there is nothing to zoom on; see _zoom_values)."""

    status: str
    message: str
    vocab_size: int
    values: FrontValues | None
    marks: dict = field(default_factory=dict)
    cloud: Cloud | None = None
    alpha_star: float = float("nan")
    chernoff: float = float("nan")
    alpha_entropy: float = float("nan")
    same_support: bool = True
    zoom: FrontValues | None = None

    @property
    def drawable(self) -> bool:
        return self.values is not None and self.values.alpha.size >= 2

    def columns(self) -> dict[str, np.ndarray]:
        """The curve as named columns (for --data): alpha, kl_q_theta, kl_q_target, log_z, delta,
        ess_theta, ess_target."""
        v = self.values
        if v is None:
            return {name: np.empty(0) for name in ("alpha", "kl_q_theta", "kl_q_target", "log_z",
                                                   "delta", "ess_theta", "ess_target")}
        return {"alpha": v.alpha, "kl_q_theta": v.kl_q_theta, "kl_q_target": v.kl_q_target,
                "log_z": v.log_z, "delta": v.delta, "ess_theta": v.ess_theta,
                "ess_target": v.ess_target}


@dataclass(frozen=True)
class DeltaCurve:
    """D(alpha) = KL(q||pi_theta) - KL(q||pi_t) on a grid, with solver iterates.

    iterates[method]: array [k, 2] of (alpha, D as the solver saw it) in order; for 'bisection'
    D is the reference code's float32, 1e-10-smoothed objective, not the exact D.
    solved[method]: the alpha each method returned (NaN if none)."""

    status: str
    message: str
    alpha: np.ndarray
    delta: np.ndarray
    alpha_star: float
    d_at_0: float
    d_at_1: float
    iterates: dict = field(default_factory=dict)
    solved: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FourCaseSummary:
    """Per behaviour case (docs/derivation.md#claim-four-cases), totalled over the rows given; the cases and
    their expectations are those of core.principles (CASE_NAMES, CASE_EXPECTATIONS).

    counts: tokens per case (summed over rows); mass_q: q mass per case, averaged over rows;
    meeting: tokens meeting the expectation (summed); fraction_meeting = meeting / counts (NaN
    for an empty case); threshold: the 'large' threshold (mean over rows; default 1/V);
    n_rows: rows used."""

    labels: tuple
    expectations: tuple
    counts: np.ndarray
    mass_q: np.ndarray
    meeting: np.ndarray
    fraction_meeting: np.ndarray
    threshold: float
    n_rows: int


# ----------------------------------------------------------------------------------------------
# the family along alpha, for one row


class _Row:
    """One row restricted to the common support S, with what every evaluation needs."""

    def __init__(self, log_pi_theta: np.ndarray, log_pi_t: np.ndarray):
        self.log_pi_theta = np.asarray(log_pi_theta, dtype=np.float64)
        self.log_pi_t = np.asarray(log_pi_t, dtype=np.float64)
        l, log_base, support = log_ratio_on_support(self.log_pi_theta, self.log_pi_t)
        self.support = support
        self.l = l[support]
        self.log_base = log_base[support]  # log pi_t on S
        self.log_theta_s = self.log_pi_theta[support]
        # mass of each side outside S: if positive, ESS of that side under q_alpha (on S) is 0
        with np.errstate(divide="ignore"):
            self.theta_off_s = bool(np.any(np.isfinite(self.log_pi_theta) & ~support))
            self.t_off_s = bool(np.any(np.isfinite(self.log_pi_t) & ~support))

    def evaluate(self, alphas, chunk: int = 0) -> FrontValues:
        alphas = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
        n_s = max(self.l.size, 1)
        step = chunk or max(1, int(2_000_000 // n_s))
        parts = []
        for start in range(0, alphas.size, step):
            a = alphas[start:start + step]
            m = tilted_moments(self.l, self.log_base, a)
            log_q = self.log_base[None, :] - a[:, None] * self.l[None, :] - m.log_z[:, None]
            with np.errstate(invalid="ignore", over="ignore"):
                ess_theta = np.exp(-logsumexp(2.0 * self.log_theta_s[None, :] - log_q, axis=-1))
                ess_t = np.exp(-logsumexp(2.0 * self.log_base[None, :] - log_q, axis=-1))
            if self.theta_off_s:
                ess_theta = np.zeros_like(ess_theta)
            if self.t_off_s:
                ess_t = np.zeros_like(ess_t)
            parts.append((a, (1.0 - a) * m.mean - m.log_z, -a * m.mean - m.log_z, m.log_z,
                          m.mean, m.var, ess_theta, ess_t))
        cols = [np.concatenate(c) for c in zip(*parts)]
        # KLs are >= 0 mathematically; clip the last-ulp negatives of near-identical rows
        cols[1] = np.maximum(cols[1], 0.0)
        cols[2] = np.maximum(cols[2], 0.0)
        return FrontValues(*cols)


def family_values(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, alphas) -> FrontValues:
    """The family of one row at the given alphas (limits from inside (0, 1) at 0 and 1)."""
    return _Row(log_pi_theta, log_pi_t).evaluate(alphas)


def _sorted_values(values: FrontValues, order: np.ndarray) -> FrontValues:
    return FrontValues(*(getattr(values, f)[order] for f in FrontValues.__dataclass_fields__))


def _merge(a: FrontValues, b: FrontValues) -> FrontValues:
    merged = FrontValues(*(np.concatenate([getattr(a, f), getattr(b, f)])
                           for f in FrontValues.__dataclass_fields__))
    return _sorted_values(merged, np.argsort(merged.alpha, kind="stable"))


def adaptive_front_values(row: _Row, *, n_initial: int = 17, max_turn_deg: float = 1.5,
                          max_segment: float = 0.05, min_segment: float = 1e-4,
                          max_points: int = 600, max_rounds: int = 40,
                          include=()) -> FrontValues:
    """Sample the curve adaptively in alpha (alpha ascending); the alphas in `include` (e.g.
    alpha*) are part of the starting grid, so the curve passes exactly through them.

    In the (KL, KL) plane scaled to a unit box, wherever the polyline turns by more than
    `max_turn_deg` at a vertex (the curve bends there), both intervals next to that vertex are
    split at their alpha midpoints; any chord longer than `max_segment` (arc length) is split
    too. Bends are refined only down to chords of `min_segment` (below that they are invisible
    and their angles are rounding noise). Stops when nothing needs splitting or at
    `max_points`. Result: the drawn polyline turns by at most `max_turn_deg` per vertex, with
    points crowding where the curve bends."""
    grid = np.linspace(0.0, 1.0, n_initial)
    for extra in include:
        if np.isfinite(extra) and 0.0 <= extra <= 1.0:
            grid = np.append(grid[np.abs(grid - extra) > 1e-9], extra)
    values = row.evaluate(np.sort(grid))
    max_turn = np.radians(max_turn_deg)
    for _ in range(max_rounds):
        x, y = values.kl_q_theta, values.kl_q_target
        a = values.alpha
        turn = turning_angles(x, y)  # at vertices 1..n-2
        sx = max(float(np.ptp(x)), 1e-300)
        sy = max(float(np.ptp(y)), 1e-300)
        length = np.hypot(np.diff(x) / sx, np.diff(y) / sy)  # per interval
        bent = np.zeros(a.size - 1, dtype=bool)
        sharp = turn > max_turn
        bent[:-1] |= sharp  # interval left of vertex v is v-1 ... (vertex v = i+1)
        bent[1:] |= sharp
        split = ((bent & (length > min_segment)) | (length > max_segment)) \
            & ((a[1:] - a[:-1]) > 1e-9)
        budget = max_points - a.size
        if not split.any() or budget <= 0:
            break
        chosen = np.flatnonzero(split)
        if chosen.size > budget:  # keep the longest offenders
            chosen = chosen[np.argsort(-length[chosen], kind="stable")[:budget]]
        mids = row.evaluate(0.5 * (a[chosen] + a[chosen + 1]))
        values = _merge(values, mids)
    return values


def turning_angles(kl_q_theta: np.ndarray, kl_q_target: np.ndarray) -> np.ndarray:
    """Turning angle (radians) at each interior vertex of the polyline, in the plane scaled to a
    unit box: small everywhere means the drawn polyline looks smooth."""
    x = np.asarray(kl_q_theta) / max(float(np.ptp(kl_q_theta)), 1e-300)
    y = np.asarray(kl_q_target) / max(float(np.ptp(kl_q_target)), 1e-300)
    dx, dy = np.diff(x), np.diff(y)
    heading = np.arctan2(dy, dx)
    turn = np.diff(heading)
    return np.abs((turn + np.pi) % (2 * np.pi) - np.pi)


# ----------------------------------------------------------------------------------------------
# the front of one row


def _as_row(log_pi_theta, log_pi_t) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(log_pi_theta, dtype=np.float64)
    b = np.asarray(log_pi_t, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"one row of log-probabilities expected, got shapes {a.shape}, {b.shape}")
    return a, b


def pareto_front(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, *, cloud: bool = True,
                 n_initial: int = 17, max_turn_deg: float = 1.5, max_segment: float = 0.05,
                 max_points: int = 600, cloud_size: int = 150, seed: int = 0,
                 row_error: str | None = None) -> ParetoFront:
    """The exact Pareto front of one row, its marked points and (optionally) a cloud.

    log_pi_theta, log_pi_t: [V] normalised log-probabilities. row_error: a validation error for
    this row (then nothing is computed; status 'invalid'). The curve's values are ordered by
    alpha DEcreasing (from pi_theta at alpha = 1 to pi_t at alpha = 0), so KL(q||pi_theta)
    increases along it."""
    log_pi_theta, log_pi_t = _as_row(log_pi_theta, log_pi_t)
    vocab = int(log_pi_theta.shape[0])
    cls = classify_rows(log_pi_theta[None], log_pi_t[None],
                        None if row_error is None else [row_error])
    status, message = str(cls.status[0]), cls.message[0]
    if status in (INVALID, DISJOINT):
        return ParetoFront(status=status, message=message, vocab_size=vocab, values=None)
    same_support = bool(np.all(np.isfinite(log_pi_theta) == np.isfinite(log_pi_t)))
    row = _Row(log_pi_theta, log_pi_t)
    marks = _end_marks(log_pi_theta, log_pi_t)
    alpha_h = float(entropy_formula_alpha(log_pi_theta, log_pi_t))
    constant_l = float(np.ptp(row.l)) <= float(constant_ratio_tolerance(
        log_pi_theta[None], log_pi_t[None], row.support[None])[0])
    if status == DEGENERATE or (status == NO_ROOT and constant_l):
        # every alpha gives the same q: the front is a single point, nothing to draw
        point = row.evaluate([0.5])
        chernoff = float(-point.log_z[0]) if status == DEGENERATE else float("nan")
        marks[MARK_HALF] = MarkedPoint(MARK_HALF, "q (the same for every alpha)", 0.5,
                                       float(point.kl_q_theta[0]), float(point.kl_q_target[0]))
        return ParetoFront(status=status, message=message, vocab_size=vocab, values=None,
                           marks=marks, chernoff=chernoff, alpha_entropy=alpha_h,
                           same_support=same_support)
    alpha_star = chernoff = float("nan")
    if status == OK:
        sol = solve_alpha(log_pi_theta[None], log_pi_t[None], "newton")
        if str(sol.status[0]) == OK:
            alpha_star = float(sol.alpha[0])
            star = row.evaluate([alpha_star])
            chernoff = float(-star.log_z[0])
            marks[MARK_STAR] = MarkedPoint(
                MARK_STAR, f"q* (α* = {alpha_star:.4f}, C = {chernoff:.4g} nats)", alpha_star,
                float(star.kl_q_theta[0]), float(star.kl_q_target[0]))
    # alpha* is in the starting grid: the drawn line passes through the q* marker
    values = adaptive_front_values(row, n_initial=n_initial, max_turn_deg=max_turn_deg,
                                   max_segment=max_segment, max_points=max_points,
                                   include=(alpha_star,))
    if np.isfinite(alpha_h):
        p = row.evaluate([alpha_h])
        marks[MARK_ENTROPY] = MarkedPoint(MARK_ENTROPY, f"entropy formula (α_H = {alpha_h:.4f})",
                                          alpha_h, float(p.kl_q_theta[0]),
                                          float(p.kl_q_target[0]))
    half = row.evaluate([0.5])
    marks[MARK_HALF] = MarkedPoint(MARK_HALF, "α = 0.5", 0.5, float(half.kl_q_theta[0]),
                                   float(half.kl_q_target[0]))
    values = _sorted_values(values, np.argsort(-values.alpha, kind="stable"))
    zoom = _zoom_values(row, values, marks)
    cloud_result = None
    if cloud:
        cloud_result = cloud_points(log_pi_theta, log_pi_t, values, n_points=cloud_size,
                                    seed=seed)
    return ParetoFront(status=status, message=message, vocab_size=vocab, values=values,
                       marks=marks, cloud=cloud_result, alpha_star=alpha_star, chernoff=chernoff,
                       alpha_entropy=alpha_h, same_support=same_support, zoom=zoom)


def _zoom_values(row: _Row, values: FrontValues, marks: dict) -> FrontValues | None:
    """A dense stretch of the curve around q* and the marks near it (alpha_H, alpha = 0.5 when
    within 15% of the front's extent from q* in the plane), for a close-up; None when there is
    no q* or when that stretch would cover more than a third of the front's extent (then the
    whole front already shows it)."""
    star = marks.get(MARK_STAR)
    if star is None:
        return None
    sx = max(float(np.ptp(values.kl_q_theta)), 1e-300)
    sy = max(float(np.ptp(values.kl_q_target)), 1e-300)
    near = [star.alpha]
    for key in (MARK_ENTROPY, MARK_HALF):
        m = marks.get(key)
        if m is not None and np.hypot((m.kl_q_theta - star.kl_q_theta) / sx,
                                      (m.kl_q_target - star.kl_q_target) / sy) <= 0.15:
            near.append(m.alpha)
    lo, hi = min(near), max(near)
    margin = max(0.6 * (hi - lo), 0.01)
    zoom = row.evaluate(np.linspace(min(1.0, hi + margin), max(0.0, lo - margin), 121))
    if max(np.ptp(zoom.kl_q_theta) / sx, np.ptp(zoom.kl_q_target) / sy) > 1 / 3:
        return None
    return zoom


def _end_marks(log_pi_theta: np.ndarray, log_pi_t: np.ndarray) -> dict:
    """pi_theta = (0, KL(pi_theta||pi_t)) and pi_t = (KL(pi_t||pi_theta), 0), exactly (they may
    be inf)."""
    kl_theta_t = float(kl_divergence(log_pi_theta, log_pi_t))
    kl_t_theta = float(kl_divergence(log_pi_t, log_pi_theta))
    return {
        MARK_THETA: MarkedPoint(MARK_THETA, "π_θ (α = 1, on-policy)", 1.0, 0.0, kl_theta_t),
        MARK_TARGET: MarkedPoint(MARK_TARGET, "π_t (α = 0, off-policy)", 0.0, kl_t_theta, 0.0),
    }


# ----------------------------------------------------------------------------------------------
# the cloud: other distributions, which the front must not be dominated by


def cloud_points(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, front: FrontValues, *,
                 n_points: int = 150, seed: int = 0) -> Cloud:
    """Other distributions and their (KL(c||pi_theta), KL(c||pi_t)), finite ones only:

    - arithmetic mixtures (1-t) pi_theta + t pi_t, t on a grid in (0, 1) (about 1/5 of the points);
    - perturbed front points: log q_alpha + sigma z (z standard normal on S), renormalised;
    - Dirichlet draws near front points: Dirichlet(kappa q_alpha) on S.
    sigma and kappa are drawn so that the divergence from the front point is between about 1%
    and 30% of the front's scale (its larger end-point KL), so the cloud sits near the front at the
    scale of the picture. Deterministic given `seed`."""
    log_pi_theta, log_pi_t = _as_row(log_pi_theta, log_pi_t)
    rng = np.random.default_rng(seed)
    row = _Row(log_pi_theta, log_pi_t)
    scale = float(max(np.max(front.kl_q_theta), np.max(front.kl_q_target), 1e-12))
    n_mix = max(1, n_points // 5)
    n_each = max(1, (n_points - n_mix) // 2)
    kinds, xs, ys = [], [], []

    # arithmetic mixtures on the full vocabulary
    t = np.linspace(0.0, 1.0, n_mix + 2)[1:-1]
    with np.errstate(divide="ignore"):
        log_mix = np.logaddexp(np.log1p(-t)[:, None] + log_pi_theta[None, :],
                               np.log(t)[:, None] + log_pi_t[None, :])
    xs.append(kl_divergence(log_mix, log_pi_theta[None, :]))
    ys.append(kl_divergence(log_mix, log_pi_t[None, :]))
    kinds.append(np.full(n_mix, CLOUD_MIXTURE, dtype=object))

    # perturbations and Dirichlet draws near random front points, on S
    base_alpha = rng.uniform(0.0, 1.0, size=2 * n_each)
    spread = np.exp(rng.uniform(np.log(0.005), np.log(0.3), size=2 * n_each)) * scale
    m = tilted_moments(row.l, row.log_base, base_alpha)
    log_q = row.log_base[None, :] - base_alpha[:, None] * row.l[None, :] - m.log_z[:, None]
    # perturbation: KL(q'||q) ~ sigma^2 / 2 for small sigma
    sigma = np.minimum(np.sqrt(2.0 * spread[:n_each]), 3.0)
    z = rng.standard_normal((n_each, row.l.size))
    log_p = log_q[:n_each] + sigma[:, None] * z
    log_p -= logsumexp(log_p, axis=-1, keepdims=True)
    # Dirichlet(kappa q): KL(draw||q) ~ (K_eff - 1) / (2 kappa), K_eff = exp(H(q)) as a first
    # guess; many tiny components make the draws rougher than that, so kappa is recalibrated
    # (KL ~ 1/kappa) until the draw's KL from its front point is within 3x of its target
    log_qd = log_q[n_each:]
    target = spread[n_each:]
    kappa = np.maximum(np.exp(entropy(log_qd)) - 1.0, 1.0) / (2.0 * target)
    log_d = np.full_like(log_qd, NEG_INF)
    pending = np.ones(n_each, dtype=bool)
    for attempt in range(6):
        idx = np.flatnonzero(pending)
        if idx.size == 0:
            break
        draws = rng.gamma(np.maximum(kappa[idx, None] * np.exp(log_qd[idx]), 1e-300))
        total = draws.sum(axis=-1, keepdims=True)
        drawn = total[:, 0] > 0  # all shapes tiny can underflow every gamma draw to 0
        with np.errstate(divide="ignore", invalid="ignore"):
            cand = np.log(draws) - np.log(np.where(total > 0, total, 1.0))
        kl = np.where(drawn, kl_divergence(cand, log_qd[idx]), np.nan)
        good = drawn & np.isfinite(kl) & (kl <= 3.0 * target[idx]) & (kl >= target[idx] / 3.0)
        if attempt == 5:
            good = drawn & np.isfinite(kl) & (kl > 0) & (kl <= 3.0 * target[idx])
        log_d[idx[good]] = cand[good]
        pending[idx[good]] = False
        # KL ~ 1/kappa: too far -> raise kappa; too close -> lower it; nothing drawn -> raise it
        ratio = np.where(drawn & np.isfinite(kl) & (kl > 0), kl / target[idx], 10.0)
        kappa[idx] *= np.clip(ratio, 0.1, 1e4)
    log_d = log_d[~pending]
    for log_c, kind in ((log_p, CLOUD_PERTURBED), (log_d, CLOUD_DIRICHLET)):
        full = np.full((log_c.shape[0], log_pi_theta.size), NEG_INF)
        full[:, row.support] = log_c
        xs.append(kl_divergence(full, log_pi_theta[None, :]))
        ys.append(kl_divergence(full, log_pi_t[None, :]))
        kinds.append(np.full(log_c.shape[0], kind, dtype=object))
    x, y, kind = np.concatenate(xs), np.concatenate(ys), np.concatenate(kinds)
    finite = np.isfinite(x) & np.isfinite(y)
    return Cloud(kind=kind[finite], kl_q_theta=np.maximum(x[finite], 0.0),
                 kl_q_target=np.maximum(y[finite], 0.0))


# ----------------------------------------------------------------------------------------------
# D(alpha) with solver iterates


def delta_curve(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, *, n_grid: int = 401,
                methods: tuple = ("newton", "bisection")) -> DeltaCurve:
    """D(alpha) = E_{q_alpha}[l] on a uniform grid of alpha in [0, 1] (limits from inside at the
    ends), plus the alphas at which each solver evaluated it (solvers' record_iterates)."""
    log_pi_theta, log_pi_t = _as_row(log_pi_theta, log_pi_t)
    cls = classify_rows(log_pi_theta[None], log_pi_t[None])
    status, message = str(cls.status[0]), cls.message[0]
    empty = np.empty(0)
    if status in (DISJOINT, INVALID):
        return DeltaCurve(status=status, message=message, alpha=empty, delta=empty,
                          alpha_star=float("nan"), d_at_0=float("nan"), d_at_1=float("nan"))
    row = _Row(log_pi_theta, log_pi_t)
    grid = np.linspace(0.0, 1.0, n_grid)
    delta = tilted_moments(row.l, row.log_base, grid).mean
    iterates, solved = {}, {}
    alpha_star = float("nan")
    if status == OK:
        for method in methods:
            options = {"record_iterates": True} if method in ("newton", "halley",
                                                              "bisection") else {}
            sol = solve_alpha(log_pi_theta[None], log_pi_t[None], method, **options)
            pairs = sol.extra.get("iterates", {}).get(0, [])
            iterates[method] = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
            solved[method] = float(sol.alpha[0])
        sol = solve_alpha(log_pi_theta[None], log_pi_t[None], "newton")
        alpha_star = float(sol.alpha[0])
    return DeltaCurve(status=status, message=message, alpha=grid, delta=delta,
                      alpha_star=alpha_star, d_at_0=float(cls.d_at_0[0]),
                      d_at_1=float(cls.d_at_1[0]), iterates=iterates, solved=solved)


# ----------------------------------------------------------------------------------------------
# four behaviour cases (claim 10): totals over rows for the bar chart. The per-token analysis is
# principles.four_cases (the verify suite's); this only sums it over the rows of a batch.


def four_case_summary(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, alpha, *,
                      threshold: float | None = None) -> FourCaseSummary:
    """The four cases of principles.four_cases under q_alpha, totalled over rows.

    log_pi_theta, log_pi_t: [V] or [B, V]; alpha: scalar or one per row (rows with a NaN alpha,
    i.e. without alpha*, are skipped). threshold: 'large' means p >= threshold; default 1/V."""
    from geomix_cli.core.family import log_q_alpha
    from geomix_cli.core.principles import CASE_EXPECTATIONS, CASE_NAMES, four_cases

    lt = np.atleast_2d(np.asarray(log_pi_theta, dtype=np.float64))
    lg = np.atleast_2d(np.asarray(log_pi_t, dtype=np.float64))
    alpha = np.broadcast_to(np.asarray(alpha, dtype=np.float64), lt.shape[:1])
    rows = np.flatnonzero(np.isfinite(alpha))
    if rows.size == 0:
        nan4 = np.full(4, np.nan)
        return FourCaseSummary(labels=CASE_NAMES, expectations=CASE_EXPECTATIONS,
                               counts=np.zeros(4, dtype=np.int64), mass_q=nan4,
                               meeting=np.zeros(4, dtype=np.int64), fraction_meeting=nan4,
                               threshold=float("nan"), n_rows=0)
    log_q = log_q_alpha(lt[rows], lg[rows], alpha[rows])
    cases = four_cases(lt[rows], lg[rows], log_q, threshold=threshold)
    counts = cases.counts.sum(axis=0)
    meeting = cases.meeting.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(counts > 0, meeting / np.maximum(counts, 1), np.nan)
    return FourCaseSummary(labels=CASE_NAMES, expectations=CASE_EXPECTATIONS, counts=counts,
                           mass_q=cases.mass_q.mean(axis=0), meeting=meeting,
                           fraction_meeting=fraction, threshold=float(np.mean(cases.threshold)),
                           n_rows=int(rows.size))


def entropy_formula_error(alpha_entropy, alpha_star) -> np.ndarray:
    """alpha_H - alpha* per row (NaN where either is missing): how far the derivation's entropy
    heuristic lands from the exact root (docs/derivation.md#claim-entropy-formula)."""
    return np.asarray(alpha_entropy, dtype=np.float64) - np.asarray(alpha_star, dtype=np.float64)
