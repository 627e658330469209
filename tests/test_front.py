"""core.front: the exact Pareto front, its marks, the cloud, D(alpha) with iterates, four cases.

References are computed here from probabilities / log-probabilities with plain numpy or mpmath
(direct sums p log(p/q)), never from geomix's closed forms.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import log_softmax, logsumexp

from conftest import EPS64, reference_alpha_brentq
from geomix_cli.core.front import (CLOUD_KINDS, MARK_ENTROPY, MARK_HALF, MARK_STAR, MARK_TARGET,
                                   MARK_THETA, delta_curve, entropy_formula_error,
                                   family_values, four_case_summary, pareto_front,
                                   turning_angles)


def direct_front(log_p_theta: np.ndarray, log_p_t: np.ndarray, alphas: np.ndarray):
    """(KL(q||pi_theta), KL(q||pi_t)) by direct sums over tokens, q from its definition."""
    support = np.isfinite(log_p_theta) & np.isfinite(log_p_t)
    a, b = log_p_theta[support], log_p_t[support]
    s = alphas[:, None] * a[None, :] + (1.0 - alphas[:, None]) * b[None, :]
    log_q = s - logsumexp(s, axis=1, keepdims=True)
    q = np.exp(log_q)
    return np.sum(q * (log_q - a), axis=1), np.sum(q * (log_q - b), axis=1)


def kl_direct(log_p: np.ndarray, log_q: np.ndarray) -> float:
    keep = np.isfinite(log_p)
    return float(np.sum(np.exp(log_p[keep]) * (log_p[keep] - log_q[keep])))


def sum_tolerance(vocab: int, log_p_theta, log_p_t) -> float:
    """Rounding of a V-term sum of q (log q - log p): about V eps times the largest |log p|
    (generous: a few ulps per term, terms of size up to max |log p|)."""
    scale = 1.0 + np.max(np.abs(np.concatenate([log_p_theta[np.isfinite(log_p_theta)],
                                                log_p_t[np.isfinite(log_p_t)]])))
    return 8.0 * np.sqrt(vocab) * EPS64 * scale + 1e-15


@pytest.fixture(scope="module")
def real_fronts(smollm2_log_probs):
    lt, lT = smollm2_log_probs
    return {r: pareto_front(lt[r], lT[r], cloud=False) for r in (0, 7, 11)}


# --------------------------------------------------------------------------------------------
# the curve is the exact front


@pytest.mark.parametrize("row", [0, 7, 11])
def test_front_values_equal_direct_sums_on_real_rows(real_fronts, smollm2_log_probs, row):
    lt, lT = smollm2_log_probs
    front = real_fronts[row]
    assert front.status == "ok" and front.drawable
    v = front.values
    x, y = direct_front(lt[row], lT[row], v.alpha)
    tol = sum_tolerance(lt.shape[1], lt[row], lT[row])
    assert_allclose(v.kl_q_theta, x, rtol=0, atol=tol)
    assert_allclose(v.kl_q_target, y, rtol=0, atol=tol)
    # D = KL(q||pi_theta) - KL(q||pi_t) column, and log Z = -(alpha x + (1-alpha) y) (Theorem 1:
    # the weighted objective at its minimiser is -log Z)
    assert_allclose(v.delta, x - y, rtol=0, atol=2 * tol)
    assert_allclose(v.log_z, -(v.alpha * x + (1 - v.alpha) * y), rtol=0, atol=2 * tol)


def test_front_against_mpmath_on_a_small_row():
    import mpmath

    rng = np.random.default_rng(3)
    p_theta = rng.dirichlet(np.full(12, 0.7))
    p_t = rng.dirichlet(np.full(12, 0.7))
    front = pareto_front(np.log(p_theta), np.log(p_t), cloud=False)
    picks = front.values.alpha[:: max(1, front.values.alpha.size // 9)]
    got = family_values(np.log(p_theta), np.log(p_t), picks)
    with mpmath.workdps(40):
        pt = [mpmath.mpf(float(v)) for v in p_theta]
        pT = [mpmath.mpf(float(v)) for v in p_t]
        for k, alpha in enumerate(picks):
            a = mpmath.mpf(float(alpha))
            w = [x ** a * y ** (1 - a) for x, y in zip(pt, pT)]
            z = mpmath.fsum(w)
            q = [wi / z for wi in w]
            kl_theta = mpmath.fsum(qi * mpmath.log(qi / x) for qi, x in zip(q, pt))
            kl_t = mpmath.fsum(qi * mpmath.log(qi / y) for qi, y in zip(q, pT))
            # float64 inputs taken exactly; a 12-term float64 sum: ~1e-15 absolute
            assert_allclose(got.kl_q_theta[k], float(kl_theta), rtol=0, atol=1e-14)
            assert_allclose(got.kl_q_target[k], float(kl_t), rtol=0, atol=1e-14)


def test_front_is_monotone_and_runs_from_pi_theta_to_pi_t(real_fronts, smollm2_log_probs):
    lt, lT = smollm2_log_probs
    for row, front in real_fronts.items():
        v = front.values
        assert v.alpha[0] == 1.0 and v.alpha[-1] == 0.0
        assert np.all(np.diff(v.alpha) < 0)
        # alpha decreasing: KL(q||pi_theta) increases, KL(q||pi_t) decreases, strictly
        assert np.all(np.diff(v.kl_q_theta) > 0), row
        assert np.all(np.diff(v.kl_q_target) < 0), row
        # end points are pi_theta = (0, KL(pi_theta||pi_t)) and pi_t = (KL(pi_t||pi_theta), 0)
        tol = sum_tolerance(lt.shape[1], lt[row], lT[row])
        assert_allclose(v.kl_q_theta[0], 0.0, atol=tol)
        assert_allclose(v.kl_q_target[-1], 0.0, atol=tol)
        assert_allclose(v.kl_q_target[0], kl_direct(lt[row], lT[row]), rtol=0, atol=tol)
        assert_allclose(v.kl_q_theta[-1], kl_direct(lT[row], lt[row]), rtol=0, atol=tol)
        assert_allclose(front.marks[MARK_THETA].kl_q_target, kl_direct(lt[row], lT[row]),
                        rtol=0, atol=tol)
        assert_allclose(front.marks[MARK_TARGET].kl_q_theta, kl_direct(lT[row], lt[row]),
                        rtol=0, atol=tol)


def test_marks_q_star_on_the_diagonal_and_the_other_marks(real_fronts, smollm2_log_probs):
    lt, lT = smollm2_log_probs
    for row, front in real_fronts.items():
        star = front.marks[MARK_STAR]
        ref_alpha = reference_alpha_brentq(lt[row], lT[row])
        # alpha* is determined to ~1e-13 on these rows (tests/test_solvers.py conditioning)
        assert_allclose(star.alpha, ref_alpha, rtol=0, atol=1e-11)
        x, y = direct_front(lt[row], lT[row], np.array([ref_alpha]))
        tol = sum_tolerance(lt.shape[1], lt[row], lT[row])
        assert_allclose([star.kl_q_theta, star.kl_q_target], [x[0], y[0]], rtol=0, atol=tol)
        assert_allclose(star.kl_q_theta, star.kl_q_target, rtol=0, atol=tol)
        assert_allclose(front.chernoff, star.kl_q_theta, rtol=0, atol=tol)
        # the curve passes through q* itself
        assert star.alpha in front.values.alpha
        # entropy-formula alpha, computed here from the entropies
        h = [-np.sum(np.exp(r) * r) for r in (lt[row], lT[row])]
        assert_allclose(front.marks[MARK_ENTROPY].alpha, h[0] / (h[0] + h[1]), rtol=1e-12)
        xe, ye = direct_front(lt[row], lT[row], np.array([h[0] / (h[0] + h[1])]))
        assert_allclose(front.marks[MARK_ENTROPY].kl_q_theta, xe[0], rtol=0, atol=tol)
        xh, yh = direct_front(lt[row], lT[row], np.array([0.5]))
        assert_allclose([front.marks[MARK_HALF].kl_q_theta, front.marks[MARK_HALF].kl_q_target],
                        [xh[0], yh[0]], rtol=0, atol=tol)


def test_swapping_the_pair_mirrors_the_front():
    rng = np.random.default_rng(5)
    lt = log_softmax(rng.normal(0, 2, 40))
    lT = log_softmax(rng.normal(0, 2, 40))
    f = pareto_front(lt, lT, cloud=False)
    g = family_values(lT, lt, 1.0 - f.values.alpha)
    assert_allclose(g.kl_q_theta, f.values.kl_q_target, rtol=0, atol=1e-13)
    assert_allclose(g.kl_q_target, f.values.kl_q_theta, rtol=0, atol=1e-13)
    swapped = pareto_front(lT, lt, cloud=False)
    assert_allclose(swapped.alpha_star, 1.0 - f.alpha_star, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# adaptive sampling


def test_adaptive_sampling_crowds_points_where_the_curve_bends():
    # a sharp temperature pair: the front bends in a narrow range of alpha
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 5.0, 500)
    lt, lT = log_softmax(logits), log_softmax(logits / 0.05)
    front = pareto_front(lt, lT, cloud=False)
    v = front.values
    n = v.alpha.size
    assert 40 <= n <= 600
    box_x, box_y = np.ptp(v.kl_q_theta), np.ptp(v.kl_q_target)
    seg = np.hypot(np.diff(v.kl_q_theta) / box_x, np.diff(v.kl_q_target) / box_y)
    turn = np.degrees(turning_angles(v.kl_q_theta, v.kl_q_target))
    # only vertices whose two chords are longer than 1e-4 of the box (visible bends)
    visible = (seg[:-1] > 1e-4) & (seg[1:] > 1e-4)
    assert turn[visible].max() <= 1.5 + 1e-9
    # a uniform grid with the same number of points turns by far more somewhere
    u = family_values(lt, lT, np.linspace(1.0, 0.0, n))
    assert np.degrees(turning_angles(u.kl_q_theta, u.kl_q_target)).max() > 5 * 1.5
    # points are much denser (in alpha) where the curve bends: around the vertex where the
    # uniform grid turns most, the adaptive sampling has several times the median density
    spacing = -np.diff(v.alpha)
    assert spacing.max() / spacing.min() >= 8
    u_turn = turning_angles(u.kl_q_theta, u.kl_q_target)
    windows = [(u.alpha[j + 2], u.alpha[j]) for j in range(u_turn.size)]  # around vertex j+1
    counts = np.array([np.sum((v.alpha >= lo) & (v.alpha <= hi)) for lo, hi in windows])
    assert counts[np.argmax(u_turn)] >= 3 * np.median(counts)


# --------------------------------------------------------------------------------------------
# the cloud: nothing dominates the front


def _cloud_pair(case: int):
    rng = np.random.default_rng(100 + case)
    if case < 3:
        return log_softmax(rng.normal(0, 2.0, 60)), log_softmax(rng.normal(0, 2.0, 60))
    # peaked: a sharp temperature pair (Dirichlet draws near pi_theta underflow to all-zero
    # gamma draws; those once came back as a point at (0, 0), dominating the whole front)
    logits = rng.normal(0.0, 5.0, 500)
    return log_softmax(logits), log_softmax(logits / 0.05)


@pytest.mark.parametrize("case", [0, 1, 2, 3])
def test_no_cloud_point_dominates_a_front_point(case):
    lt, lT = _cloud_pair(case)
    front = pareto_front(lt, lT, cloud=True, cloud_size=150, seed=case)
    cloud, v = front.cloud, front.values
    assert len(cloud) >= 100 and set(cloud.kind.tolist()) == set(CLOUD_KINDS)
    # no cloud distribution is pi_theta or pi_t themselves: both KLs are clearly positive
    assert np.all(cloud.kl_q_theta + cloud.kl_q_target > 1e-6 * front.chernoff)
    assert np.all(np.isfinite(cloud.kl_q_theta)) and np.all(cloud.kl_q_target >= 0)
    cx, cy = cloud.kl_q_theta[:, None], cloud.kl_q_target[:, None]
    fx, fy = v.kl_q_theta[None, :], v.kl_q_target[None, :]
    dominates = (cx <= fx) & (cy <= fy) & ((cx < fx) | (cy < fy))
    assert not dominates.any()
    # stronger (Theorem 1): for every front alpha, the weighted objective of each cloud point
    # is >= the front's, up to rounding
    a = v.alpha[None, :]
    gap = a * cx + (1 - a) * cy - (a * fx + (1 - a) * fy)
    assert gap.min() >= -1e-12
    # the cloud is near the front (not a test that cannot fail): shift the front outwards by 10%
    # of its scale and some cloud points dominate the shifted points
    shift = 0.1 * max(np.ptp(v.kl_q_theta), np.ptp(v.kl_q_target))
    sx, sy = fx + shift, fy + shift
    assert ((cx <= sx) & (cy <= sy)).any()


def test_cloud_is_deterministic_given_the_seed():
    rng = np.random.default_rng(9)
    lt = log_softmax(rng.normal(0, 1.0, 30))
    lT = log_softmax(rng.normal(0, 1.0, 30))
    a = pareto_front(lt, lT, seed=4).cloud
    b = pareto_front(lt, lT, seed=4).cloud
    c = pareto_front(lt, lT, seed=5).cloud
    assert_array_equal(a.kl_q_theta, b.kl_q_theta)
    assert not np.array_equal(a.kl_q_theta, c.kl_q_theta)


def test_mixture_cloud_points_are_the_arithmetic_mixtures():
    rng = np.random.default_rng(11)
    p = rng.dirichlet(np.ones(8))
    r = rng.dirichlet(np.ones(8))
    front = pareto_front(np.log(p), np.log(r), cloud_size=50)
    sel = front.cloud.kind == "arithmetic mixture"
    n_mix = int(sel.sum())
    t = np.linspace(0, 1, n_mix + 2)[1:-1]
    expect_x = [np.sum(m * np.log(m / p)) for m in ((1 - ti) * p + ti * r for ti in t)]
    expect_y = [np.sum(m * np.log(m / r)) for m in ((1 - ti) * p + ti * r for ti in t)]
    assert_allclose(front.cloud.kl_q_theta[sel], expect_x, rtol=0, atol=1e-14)
    assert_allclose(front.cloud.kl_q_target[sel], expect_y, rtol=0, atol=1e-14)


# --------------------------------------------------------------------------------------------
# rows without a front


def test_rows_without_a_curve_are_not_drawable():
    neg = -np.inf
    disjoint = pareto_front(np.array([0.0, neg]), np.array([neg, 0.0]))
    assert disjoint.status == "disjoint-support" and not disjoint.drawable
    same = pareto_front(np.log([0.2, 0.3, 0.5]), np.log([0.2, 0.3, 0.5]))
    assert same.status == "degenerate" and not same.drawable
    assert_allclose(same.chernoff, 0.0, atol=1e-15)
    constant = pareto_front(np.log([0.25, 0.25, 0.5]), np.array([np.log(0.5), np.log(0.5), neg]))
    assert constant.status == "no-root" and not constant.drawable
    invalid = pareto_front(np.log([0.5, 0.5]), np.log([0.5, 0.5]), row_error="sums to 2")
    assert invalid.status == "invalid" and not invalid.drawable
    assert invalid.columns()["alpha"].size == 0


def test_no_root_row_is_drawn_without_q_star():
    # docs/derivation.md's no-root example: on S = {0, 1}, l < 0 everywhere, D < 0 on (0, 1)
    lt = np.array([np.log(0.6), np.log(0.4), -np.inf])
    lT = np.log(np.array([0.1, 0.2, 0.7]))
    front = pareto_front(lt, lT)
    assert front.status == "no-root" and front.drawable and not front.same_support
    assert MARK_STAR not in front.marks and np.isnan(front.alpha_star)
    v = front.values
    assert np.all(v.kl_q_theta < v.kl_q_target)  # never meets the diagonal
    x, y = direct_front(lt, lT, v.alpha)
    assert_allclose(v.kl_q_theta, x, rtol=0, atol=1e-14)
    assert_allclose(v.kl_q_target, y, rtol=0, atol=1e-14)
    # pi_t puts mass where pi_theta has none: KL(pi_t||pi_theta) = inf, the mark is not finite
    assert not front.marks[MARK_TARGET].finite and front.marks[MARK_THETA].finite


# --------------------------------------------------------------------------------------------
# D(alpha) with iterates


def test_delta_curve_and_iterates(smollm2_log_probs):
    lt, lT = smollm2_log_probs
    row = 3
    curve = delta_curve(lt[row], lT[row], n_grid=101)
    assert curve.status == "ok"
    x, y = direct_front(lt[row], lT[row], curve.alpha)
    tol = sum_tolerance(lt.shape[1], lt[row], lT[row])
    assert_allclose(curve.delta, x - y, rtol=0, atol=2 * tol)
    ref = reference_alpha_brentq(lt[row], lT[row])
    assert_allclose(curve.alpha_star, ref, rtol=0, atol=1e-11)
    newton, bisect = curve.iterates["newton"], curve.iterates["bisection"]
    assert 2 <= len(newton) <= 8
    assert_allclose(newton[-1, 0], ref, rtol=0, atol=1e-11)
    # Newton's D values are the exact D at its alphas
    xn, yn = direct_front(lt[row], lT[row], newton[:, 0])
    assert_allclose(newton[:, 1], xn - yn, rtol=0, atol=2 * tol)
    # the reference bisection: first midpoint 0.5, about 20 passes to 1e-6, ends within its
    # float32 / 1e-10-smoothing bias (docs/derivation.md#claim-reference-code-exact) of alpha*
    assert bisect[0, 0] == 0.5 and 18 <= len(bisect) <= 50
    assert abs(curve.solved["bisection"] - ref) < 1e-4
    assert abs(curve.solved["newton"] - ref) < 1e-11


def test_delta_curve_without_root():
    lt = np.array([np.log(0.6), np.log(0.4), -np.inf])
    lT = np.log(np.array([0.1, 0.2, 0.7]))
    curve = delta_curve(lt, lT)
    assert curve.status == "no-root" and curve.iterates == {} and np.isnan(curve.alpha_star)
    assert np.all(curve.delta < 0)
    neg = -np.inf
    none = delta_curve(np.array([0.0, neg]), np.array([neg, 0.0]))
    assert none.status == "disjoint-support" and none.alpha.size == 0


# --------------------------------------------------------------------------------------------
# four cases, entropy error


def test_four_case_summary_on_test_1():
    # pi_theta = (0.7, 0.3), pi_t = (0.3, 0.7), alpha* = 0.5, q* = (0.5, 0.5), threshold 1/2:
    # token 0 is case 3 (large, small): 0.3 <= 0.5 < 0.7 meets; token 1 is case 2: meets
    lt, lT = np.log([0.7, 0.3]), np.log([0.3, 0.7])
    s = four_case_summary(lt, lT, 0.5)
    assert_array_equal(s.counts, [0, 1, 1, 0])
    assert_array_equal(s.meeting, [0, 1, 1, 0])
    assert_allclose(s.mass_q, [0.0, 0.5, 0.5, 0.0], rtol=0, atol=1e-15)
    assert np.isnan(s.fraction_meeting[0]) and np.isnan(s.fraction_meeting[3])
    assert_allclose(s.fraction_meeting[1:3], [1.0, 1.0])
    assert s.threshold == 0.5 and s.n_rows == 1


def test_four_case_summary_totals_rows_and_skips_rows_without_alpha():
    lt = np.log(np.array([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    lT = np.log(np.array([[0.1, 0.2, 0.7], [0.1, 0.2, 0.7], [0.8, 0.1, 0.1]]))
    s = four_case_summary(lt, lT, np.array([0.5, 0.5, np.nan]))
    one = four_case_summary(lt[0], lT[0], 0.5)
    assert s.n_rows == 2
    assert_array_equal(s.counts, 2 * one.counts)
    assert_allclose(s.mass_q, one.mass_q, rtol=1e-15)
    # by hand: threshold 1/3; token 0 (0.7, 0.1) case 3, token 1 (0.2, 0.2) case 4,
    # token 2 (0.1, 0.7) case 2
    assert_array_equal(one.counts, [0, 1, 1, 1])


def test_entropy_formula_error_is_the_difference():
    assert_allclose(entropy_formula_error([0.4, np.nan], [0.5, 0.3]), [-0.1, np.nan], atol=1e-15)
