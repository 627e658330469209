"""Property tests (hypothesis) of the identities in docs/derivation.md ("Identities used as tests").

Rows are drawn with partial supports (zeros = -inf logits), logit scales from 0.05 to 300 and
V from 2 to ~200. Every tolerance is derived from float64 eps, the size of the logs involved
(conftest.log_scale) and, for alpha, the row's conditioning 1 / Var_q(l) (conftest.alpha_tolerance).
"""

from __future__ import annotations

import math
import os

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.testing import assert_allclose, assert_array_equal
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp

from geomix_cli.core import (diagnose, effective_sample_size, family_point, kl_divergence,
                             log_q_alpha, solve_alpha)
from geomix_cli.core.validation import validate_pair

from conftest import (EPS64, alpha_tolerance, assert_rows_close, log_scale, random_logit_pair,
                      reference_delta, tilted_var)

# 60 examples keep the file fast on a shared machine; GEOMIX_HYPOTHESIS_EXAMPLES=1000 for a soak.
PROPERTY_SETTINGS = settings(max_examples=int(os.environ.get("GEOMIX_HYPOTHESIS_EXAMPLES", 60)),
                             deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------------
# strategies


@st.composite
def generated_pairs(draw):
    """Vocabulary-sized logit pairs from a seeded generator (hypothesis picks the regime)."""
    vocab = draw(st.integers(2, 200))
    scale = draw(st.sampled_from([0.05, 1.0, 5.0, 30.0, 300.0]))
    relative_noise = draw(st.sampled_from([0.01, 0.3, 1.0, 3.0]))
    zero_fraction = draw(st.sampled_from([0.0, 0.0, 0.1, 0.4]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    return random_logit_pair(rng, vocab, scale, zero_fraction=zero_fraction,
                             noise=scale * relative_noise)


@st.composite
def small_pairs(draw):
    """Small rows drawn element by element, so hypothesis can shrink to a minimal failing row."""
    vocab = draw(st.integers(2, 6))
    element = st.one_of(st.floats(-60.0, 60.0, allow_nan=False, allow_subnormal=False),
                        st.just(-np.inf))
    theta = draw(arrays(np.float64, vocab, elements=element))
    target = draw(arrays(np.float64, vocab, elements=element))
    assume(np.isfinite(theta).any() and np.isfinite(target).any())
    return theta, target


logit_pairs = st.one_of(generated_pairs(), small_pairs())


def as_log_probs(theta, target):
    return log_softmax(theta), log_softmax(target)


def solved(theta, target, method="newton"):
    lt, lT = as_log_probs(theta, target)
    sol = solve_alpha(lt, lT, method)
    return lt, lT, sol


# ------------------------------------------------------------------------------------------------
# symmetries


@PROPERTY_SETTINGS
@given(logit_pairs)
def test_swap_symmetry(pair):
    """alpha*(pi_theta, pi_t) = 1 - alpha*(pi_t, pi_theta); the status is swap-invariant."""
    theta, target = pair
    lt, lT, sol = solved(theta, target)
    swapped = solve_alpha(lT, lt)
    assert swapped.status[0] == sol.status[0]
    if sol.status[0] == "ok":
        tol = alpha_tolerance(lt, lT, sol.alpha[0])
        assert_rows_close(swapped.alpha, 1.0 - sol.alpha, tol)


@PROPERTY_SETTINGS
@given(logit_pairs, st.randoms(use_true_random=False))
def test_permutation_invariance(pair, random):
    theta, target = pair
    order = np.array(random.sample(range(theta.size), theta.size))
    lt, lT, sol = solved(theta, target)
    permuted = solve_alpha(lt[order], lT[order])
    assert permuted.status[0] == sol.status[0]
    if sol.status[0] == "ok":
        assert_rows_close(permuted.alpha, sol.alpha, alpha_tolerance(lt, lT, sol.alpha[0]))


@PROPERTY_SETTINGS
@given(logit_pairs, st.integers(-2000, 2000), st.integers(-2000, 2000))
def test_logit_shift_invariance(pair, shift_theta, shift_target):
    """Adding a constant to either row of logits changes nothing. The logits are put on a 2**-10
    grid so that x + c is exact in float64: the shifted input is the same distribution, exactly,
    and any difference comes from geomix's own arithmetic."""
    theta, target = (np.round(x * 1024.0) / 1024.0 for x in pair)
    lt, lT, errors = validate_pair(theta, target, "logits")
    assume(errors == [None])
    sol = solve_alpha(lt, lT)
    lt_s, lT_s, errors_s = validate_pair(theta + shift_theta, target + shift_target, "logits")
    shifted = solve_alpha(lt_s, lT_s, row_errors=errors_s)
    assert shifted.status[0] == sol.status[0]
    if sol.status[0] == "ok":
        assert_rows_close(shifted.alpha, sol.alpha, alpha_tolerance(lt, lT, sol.alpha[0]))


# ------------------------------------------------------------------------------------------------
# identities at alpha*


@PROPERTY_SETTINGS
@given(logit_pairs)
def test_kls_are_equal_at_alpha_star_and_equal_the_chernoff_information(pair):
    """KL(q*||pi_theta) = KL(q*||pi_t) = C = -log Z(alpha*), also by direct summation."""
    lt, lT, sol = solved(*pair)
    assume(sol.status[0] == "ok")
    diag = diagnose(lt, lT, sol)
    log_q = log_q_alpha(lt, lT, sol.alpha[0])
    atol = 128 * EPS64 * (1 + 2 * float(log_scale(lt, lT)))
    # KL(q||pi_theta) - KL(q||pi_t) = D(alpha) and C - KL(q||pi_theta) = -(1 - alpha) D(alpha):
    # at the returned alpha, D is what the stopping rule leaves, Var_q(l) * |alpha - alpha*|, with
    # |alpha - alpha*| <= 1e-13 (the solvers' xtol, with room) or the row's float64 resolution
    # (Var * alpha_tolerance written out, so that Var = 0 does not give 0 * inf)
    var = tilted_var(lt, lT, sol.alpha[0])[0]
    gap = atol + var * 1e-13 + 64 * EPS64 * (1 + float(log_scale(lt, lT)))
    assert_allclose(diag.kl_q_theta, diag.kl_q_target, rtol=0, atol=gap)
    assert_allclose(diag.chernoff, diag.kl_q_theta, rtol=0, atol=gap)
    assert_allclose(diag.chernoff, -diag.log_z, rtol=0, atol=atol)
    assert_allclose(diag.kl_q_theta, kl_divergence(log_q, lt), rtol=0, atol=atol)
    assert_allclose(diag.kl_q_target, kl_divergence(log_q, lT), rtol=0, atol=atol)
    assert diag.chernoff[0] >= 0.0


def _log_z(lt, lT, alpha):
    support = np.isfinite(lt) & np.isfinite(lT)
    return logsumexp(alpha * lt[support] + (1 - alpha) * lT[support])


@PROPERTY_SETTINGS
@given(logit_pairs)
def test_alpha_star_minimises_z(pair):
    """alpha* = argmin Z: log Z(alpha* +- h) is not below log Z(alpha*), strictly above where
    Var h^2 / 2 exceeds the rounding; scipy's minimize_scalar on log Z finds the same point."""
    lt, lT, sol = solved(*pair)
    assume(sol.status[0] == "ok")
    alpha = sol.alpha[0]
    z_tol = 64 * EPS64 * (1 + float(log_scale(lt, lT)))
    at_star = _log_z(lt, lT, alpha)
    var = tilted_var(lt, lT, alpha)[0]
    for h in (1e-3, 1e-6):
        for a in (alpha - h, alpha + h):
            if 0.0 < a < 1.0:
                other = _log_z(lt, lT, a)
                assert other >= at_star - z_tol
                if var * h * h / 2 > 10 * z_tol:
                    assert other > at_star
    result = minimize_scalar(lambda a: _log_z(lt, lT, a), bounds=(0.0, 1.0), method="bounded",
                             options={"xatol": 1e-12})
    assert at_star <= result.fun + z_tol
    # values within z_tol of the minimum are indistinguishable: |a - alpha*| < 2 sqrt(z_tol / Var);
    # fminbound itself stops within about 2 sqrt(eps) |a|
    if var > 0:  # Var = 0 in float64: log Z is flat to rounding, every nearby alpha is a minimiser
        bound = 2 * np.sqrt(z_tol / var) + 4 * (np.sqrt(EPS64) + 1e-12)
        assert abs(result.x - alpha) <= bound


@PROPERTY_SETTINGS
@given(logit_pairs, st.floats(0.01, 0.99))
def test_d_is_the_kl_difference_and_the_tilted_mean(pair, alpha):
    """D(alpha) = KL(q||pi_theta) - KL(q||pi_t) = E_q[l], with the KL formulas
    KL(q||pi_theta) = (1-alpha) D - log Z, KL(q||pi_t) = -alpha D - log Z."""
    lt, lT = as_log_probs(*pair)
    assume((np.isfinite(lt) & np.isfinite(lT)).any())
    point = family_point(lt[None], lT[None], alpha)
    log_q = log_q_alpha(lt, lT, alpha)
    direct_theta = kl_divergence(log_q, lt)
    direct_t = kl_divergence(log_q, lT)
    atol = 128 * EPS64 * (1 + 2 * float(log_scale(lt, lT)))
    assert_allclose(point.kl_q_theta, direct_theta, rtol=0, atol=atol)
    assert_allclose(point.kl_q_target, direct_t, rtol=0, atol=atol)
    assert_allclose(point.delta, direct_theta - direct_t, rtol=0, atol=2 * atol)
    assert_allclose(point.delta, reference_delta(lt, lT, alpha), rtol=0, atol=atol)


@PROPERTY_SETTINGS
@given(logit_pairs, st.floats(0.05, 0.95))
def test_d_prime_is_minus_the_variance(pair, alpha):
    """D'(alpha) = -Var_q(l), against a central difference with a derived error bound:
    truncation h^2/6 |D'''| (D''' = -kappa_4, |kappa_4| <= mu_4 + 3 Var^2) plus rounding
    2 dD / (2h)."""
    lt, lT = as_log_probs(*pair)
    assume((np.isfinite(lt) & np.isfinite(lT)).any())
    var = tilted_var(lt, lT, alpha)[0]
    h = 1e-4 / (1 + np.sqrt(var))
    d_plus = family_point(lt[None], lT[None], alpha + h).delta[0]
    d_minus = family_point(lt[None], lT[None], alpha - h).delta[0]
    slope = (d_plus - d_minus) / (2 * h)
    mu4 = max(_fourth_central_moment(lt, lT, a) for a in (alpha - h, alpha, alpha + h))
    d_rounding = 64 * EPS64 * (1 + 2 * float(log_scale(lt, lT)))
    bound = h * h / 6 * (mu4 + 3 * var**2) * 2 + d_rounding / h
    assert_allclose(slope, -var, rtol=0, atol=bound)
    assert family_point(lt[None], lT[None], alpha).delta[0] >= d_plus - d_rounding  # decreasing


def _fourth_central_moment(lt, lT, alpha):
    support = np.isfinite(lt) & np.isfinite(lT)
    s = alpha * lt[support] + (1 - alpha) * lT[support]
    q = np.exp(s - logsumexp(s))
    l = lT[support] - lt[support]
    return float(np.sum(q * (l - np.sum(q * l)) ** 4))


@PROPERTY_SETTINGS
@given(logit_pairs)
def test_ess_formula_against_the_direct_sum(pair):
    """ESS_pi(q*) = 1 / sum_y pi(y)^2 / q(y), summed here term by term (math.fsum) with each term
    exp(2 log pi - log q), so that the underflow of pi or q at extreme logit scales cannot turn
    the reference into 0/0; a term with q = 0 < pi is +inf (ESS 0)."""
    lt, lT, sol = solved(*pair)
    assume(sol.status[0] == "ok")
    diag = diagnose(lt, lT, sol)
    log_q = log_q_alpha(lt, lT, sol.alpha[0])
    rtol = 64 * EPS64 * (1 + 3 * float(log_scale(lt, lT)))
    for log_pi, reported in ((lt, diag.ess_theta), (lT, diag.ess_target)):
        with np.errstate(over="ignore", invalid="ignore"):
            terms = [math.exp(min(2 * a - b, 700.0)) if b > -np.inf else math.inf
                     for a, b in zip(log_pi, log_q) if a > -np.inf]
        expected = 1.0 / math.fsum(terms) if math.inf not in terms else 0.0
        assert_allclose(reported, expected, rtol=rtol, atol=1e-300)
        assert 0.0 <= reported[0] <= 1.0 + rtol


@PROPERTY_SETTINGS
@given(logit_pairs, st.floats(0.001, 0.999))
def test_z_at_most_one_and_q_at_least_the_smaller_probability(pair, alpha):
    """Hoelder: Z(alpha) <= 1, hence q_alpha(y) >= min(pi_theta(y), pi_t(y)) on the common support."""
    lt, lT = as_log_probs(*pair)
    support = np.isfinite(lt) & np.isfinite(lT)
    assume(support.any())
    tol = 64 * EPS64 * (1 + float(log_scale(lt, lT)))
    assert family_point(lt[None], lT[None], alpha).log_z[0] <= tol
    log_q = log_q_alpha(lt, lT, alpha)
    assert np.all(log_q[support] >= np.minimum(lt, lT)[support] - tol)
    assert np.all(log_q[~support] == -np.inf)


@PROPERTY_SETTINGS
@given(logit_pairs)
def test_exact_methods_agree_on_every_ok_row(pair):
    lt, lT, newton = solved(*pair)
    brent = solve_alpha(lt, lT, "brentq")
    halley = solve_alpha(lt, lT, "halley")
    assert_array_equal(brent.status, newton.status)
    assert_array_equal(halley.status, newton.status)
    if newton.status[0] == "ok":
        tol = np.maximum(1e-12, alpha_tolerance(lt, lT, brent.alpha[0]))
        assert_rows_close(newton.alpha, brent.alpha, tol, "newton")
        assert_rows_close(halley.alpha, brent.alpha, tol, "halley")
