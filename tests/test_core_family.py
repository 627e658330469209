"""The family kernel (core/family.py) and the per-row diagnostics, against direct formulas."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import log_softmax, rel_entr

from geomix_cli.core import (diagnose, effective_sample_size, entropy, entropy_formula_alpha,
                             family_point, kl_divergence, log_q_alpha, log_ratio_on_support,
                             solve_alpha, tilted_moments)

from conftest import EPS64, random_logit_pair

RTOL = 64 * EPS64


def logp(p) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(p, dtype=np.float64))


# ------------------------------------------------------------------------------------------------
# log q_alpha


def test_log_q_alpha_is_exactly_the_end_points_including_mass_outside_the_common_support():
    lt, lT = logp([0.6, 0.4, 0.0]), logp([0.1, 0.2, 0.7])
    assert_array_equal(log_q_alpha(lt, lT, 1.0), lt)
    assert_array_equal(log_q_alpha(lt, lT, 0.0), lT)


def test_log_q_alpha_inside_lives_on_the_common_support_no_zero_to_the_zero():
    # pi_theta(2) = 0 < pi_t(2): 0**0 == 1 would put mass there for alpha -> 0; the family must not
    lt, lT = logp([0.6, 0.4, 0.0]), logp([0.1, 0.2, 0.7])
    for alpha in (1e-12, 0.3, 1 - 1e-12):
        q = np.exp(log_q_alpha(lt, lT, alpha))
        assert q[2] == 0.0
        expected = np.array([0.6, 0.4]) ** alpha * np.array([0.1, 0.2]) ** (1 - alpha)
        assert_allclose(q[:2], expected / expected.sum(), rtol=RTOL)


def test_log_q_alpha_does_not_underflow_where_powers_would():
    rng = np.random.default_rng(3)
    lt = log_softmax(rng.normal(0, 400, size=300))
    lT = log_softmax(rng.normal(0, 400, size=300))
    with np.errstate(under="ignore"):
        powers = np.exp(lt) ** 0.5 * np.exp(lT) ** 0.5
    assert np.count_nonzero(powers) < 300  # the naive product loses tokens ...
    log_q = log_q_alpha(lt, lT, 0.5)
    assert np.all(np.isfinite(log_q))  # ... the log-space family keeps every one
    assert_allclose(np.exp(log_q).sum(), 1.0, rtol=RTOL)


def test_log_q_alpha_batched_alpha_per_row():
    rng = np.random.default_rng(4)
    lt = log_softmax(rng.normal(size=(3, 7)), axis=-1)
    lT = log_softmax(rng.normal(size=(3, 7)), axis=-1)
    alphas = np.array([0.1, 0.5, 0.9])
    batched = log_q_alpha(lt, lT, alphas)
    for i, a in enumerate(alphas):
        assert_allclose(batched[i], log_q_alpha(lt[i], lT[i], a), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# divergences, entropy, ESS


def test_kl_divergence_matches_scipy_rel_entr_with_zero_conventions():
    p = np.array([0.5, 0.5, 0.0])
    q = np.array([0.25, 0.25, 0.5])
    assert_allclose(kl_divergence(logp(p), logp(q)), rel_entr(p, q).sum(), rtol=RTOL)
    # q = 0 < p: infinite
    assert kl_divergence(logp(q), logp(p)) == np.inf


def test_entropy_of_uniform_and_point_mass():
    assert_allclose(entropy(logp(np.full(8, 1 / 8))), np.log(8), rtol=RTOL)
    h = entropy(logp([1.0, 0.0, 0.0]))
    assert h == 0.0 and not np.signbit(h)  # +0.0: a point mass printed as "-0.0" was a bug


def test_entropy_formula_alpha_values_and_undefined_case():
    # H(pi_theta) = log 2, H(pi_t) = log 4 = 2 log 2: alpha_H = 1/3
    lt, lT = logp([0.5, 0.5, 0.0, 0.0]), logp([0.25, 0.25, 0.25, 0.25])
    assert_allclose(entropy_formula_alpha(lt, lT), 1 / 3, rtol=RTOL)
    point = logp([1.0, 0.0])
    assert np.isnan(entropy_formula_alpha(point, point))  # 0 / 0: undefined, not a number
    a = entropy_formula_alpha(point, logp([0.5, 0.5]))
    assert a == 0.0 and not np.signbit(a)


def test_effective_sample_size_against_the_direct_formula():
    rng = np.random.default_rng(5)
    for _ in range(5):
        pi = rng.dirichlet(np.ones(20))
        q = rng.dirichlet(np.ones(20))
        direct = 1.0 / np.sum(pi**2 / q)
        assert_allclose(effective_sample_size(logp(pi), logp(q)), direct, rtol=RTOL)
    # q misses mass of pi: no sample from q can estimate that part
    assert effective_sample_size(logp([0.5, 0.5]), logp([1.0, 0.0])) == 0.0


# ------------------------------------------------------------------------------------------------
# tilted moments and family points


def test_tilted_moments_against_direct_sums_on_the_common_support():
    rng = np.random.default_rng(6)
    theta, target = random_logit_pair(rng, 50, 2.0, zero_fraction=0.2)
    lt, lT = log_softmax(theta), log_softmax(target)
    l, base, support = log_ratio_on_support(lt, lT)
    alpha = 0.37
    m = tilted_moments(l, base, alpha, order=3)
    s = alpha * lt[support] + (1 - alpha) * lT[support]
    z = np.exp(s).sum()
    q = np.exp(s) / z
    ls = (lT - lt)[support]
    mean = np.sum(q * ls)
    assert_allclose(m.log_z, np.log(z), rtol=RTOL, atol=RTOL)
    assert_allclose(m.mean, mean, rtol=1e-12, atol=1e-14)
    assert_allclose(m.var, np.sum(q * (ls - mean) ** 2), rtol=1e-12)
    assert_allclose(m.third, np.sum(q * (ls - mean) ** 3), rtol=1e-10, atol=1e-14)


def test_tilted_moments_of_an_empty_support():
    l, base, _ = log_ratio_on_support(logp([1.0, 0.0]), logp([0.0, 1.0]))
    m = tilted_moments(l, base, 0.5)
    assert m.log_z == -np.inf and np.isnan(m.mean)


def test_family_point_end_points_are_the_distributions_themselves():
    lt, lT = logp([0.6, 0.4, 0.0]), logp([0.1, 0.2, 0.7])
    at_one = family_point(lt[None], lT[None], 1.0)
    at_zero = family_point(lt[None], lT[None], 0.0)
    assert at_one.kl_q_theta[0] == 0.0 and at_one.log_z[0] == 0.0
    assert_allclose(at_one.kl_q_target, kl_divergence(lt, lT), rtol=RTOL)
    # pi_t puts 0.7 where pi_theta has none: KL(pi_t||pi_theta) = inf, and ESS_theta(pi_t) = 1/sum..
    assert at_zero.kl_q_theta[0] == np.inf and at_zero.kl_q_target[0] == 0.0
    assert_allclose(at_one.ess_theta, 1.0, rtol=RTOL)
    assert at_one.ess_target[0] == 0.0  # pi_theta misses pi_t's third token


def test_family_point_interior_kls_equal_the_direct_divergences():
    rng = np.random.default_rng(7)
    theta, target = random_logit_pair(rng, 40, 3.0, zero_fraction=0.1)
    lt, lT = log_softmax(theta), log_softmax(target)
    for alpha in (0.05, 0.5, 0.95):
        point = family_point(lt[None], lT[None], alpha)
        log_q = log_q_alpha(lt, lT, alpha)
        scale = 1 + np.max(np.abs(np.where(np.isfinite(log_q), log_q, 0)))
        assert_allclose(point.kl_q_theta, kl_divergence(log_q, lt), rtol=0,
                        atol=64 * EPS64 * scale)
        assert_allclose(point.kl_q_target, kl_divergence(log_q, lT), rtol=0,
                        atol=64 * EPS64 * scale)


# ------------------------------------------------------------------------------------------------
# diagnostics


def test_diagnostics_of_a_degenerate_row_report_c_and_never_a_negative_or_minus_zero_kl():
    # log(0.2), log(0.8) round so that the computed log Z was +5.6e-17 and C = -5.6e-17
    lt = logp([[0.2, 0.8], [0.5, 0.5]])
    diag = diagnose(lt, lt.copy(), solve_alpha(lt, lt.copy()))
    assert list(diag.solution.status) == ["degenerate", "degenerate"]
    assert np.all(np.isnan(diag.solution.alpha))
    for values in (diag.chernoff, diag.kl_q_theta, diag.kl_q_target, diag.log_z):
        assert np.all(values == 0.0) and not np.any(np.signbit(values))


def test_degenerate_row_on_a_partial_support_reports_its_chernoff_information():
    # pi_theta = pi_t = 1/2 on the one common token: q = (1, 0, 0) for every alpha and
    # KL(q||pi_theta) = KL(q||pi_t) = log 2 = -log Z
    lt, lT = logp([[0.5, 0.5, 0.0]]), logp([[0.5, 0.0, 0.5]])
    diag = diagnose(lt, lT, solve_alpha(lt, lT))
    assert diag.solution.status[0] == "degenerate"
    assert_allclose(diag.chernoff, np.log(2), rtol=RTOL)
    assert_allclose(diag.kl_q_theta, np.log(2), rtol=RTOL)
    assert_allclose(diag.kl_q_target, np.log(2), rtol=RTOL)


def test_records_have_the_schema_fields_and_null_like_nan_for_rows_without_alpha():
    from geomix_cli.core import ROW_FIELDS

    lt = logp([[0.7, 0.3], [1.0, 0.0]])
    lT = logp([[0.3, 0.7], [0.0, 1.0]])
    records = diagnose(lt, lT, solve_alpha(lt, lT)).records(np.array([10, 11]))
    assert [tuple(r) for r in records] == [ROW_FIELDS, ROW_FIELDS]
    assert [r["row"] for r in records] == [10, 11]
    assert records[1]["status"] == "disjoint-support"
    assert np.isnan(records[1]["alpha"]) and np.isnan(records[1]["chernoff"])
    assert records[1]["message"]


@pytest.mark.parametrize("method", ["bisection", "entropy"])
def test_non_exact_methods_never_report_a_chernoff_information(method):
    lt, lT = logp([[0.7, 0.3]]), logp([[0.2, 0.8]])
    diag = diagnose(lt, lT, solve_alpha(lt, lT, method))
    assert np.isfinite(diag.solution.alpha[0])
    assert np.isnan(diag.chernoff[0])


def test_chernoff_information_is_the_common_kl_at_alpha_star_and_min_of_minus_log_z():
    from scipy.optimize import minimize_scalar

    from geomix_cli.core import chernoff_information, family_point, solve_alpha

    rng = np.random.default_rng(21)
    log_theta = np.log(rng.dirichlet(np.ones(7), size=3))
    log_t = np.log(rng.dirichlet(np.ones(7), size=3))
    c = chernoff_information(log_theta, log_t)
    at_star = family_point(log_theta, log_t, solve_alpha(log_theta, log_t).alpha)
    assert_allclose(c, at_star.kl_q_theta, rtol=1e-12)
    assert_allclose(c, at_star.kl_q_target, rtol=1e-12)
    for b in range(3):  # C = max_alpha -log Z(alpha), found without the solver
        def log_z(a, b=b):
            return family_point(log_theta[b], log_t[b], a).log_z
        best = minimize_scalar(log_z, bounds=(0, 1), method="bounded",
                               options={"xatol": 1e-10})
        assert_allclose(c[b], -best.fun, rtol=1e-10)
