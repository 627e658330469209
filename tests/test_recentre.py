"""l = log pi_t - log pi_theta is re-centred where the supports coincide, so that the constant
rounding of the two float64 log-normalisers does not move alpha* on near-identical pairs."""

import json
from pathlib import Path

import numpy as np
from numpy.testing import assert_allclose, assert_array_equal

from geomix_cli.core import solve_alpha
from geomix_cli.core.family import RECENTRE_MAX_ABS_L, common_support, recentre_log_ratio
from geomix_cli.sources import load_source

CASES = Path(__file__).resolve().parents[1] / "cases"
EPS = np.finfo(np.float64).eps


def test_near_identical_pairs_match_the_50_digit_reference():
    case = json.loads((CASES / "near-identical.json").read_text())
    src = load_source(case["source"]["spec"])
    expected = np.array([row["alpha"] for row in case["expected"]])
    for method in ("newton", "brentq"):
        alpha = solve_alpha(src.log_pi_theta, src.log_pi_t, method).alpha
        # C ~ 1e-8, Var_q(l) ~ 1e-7: without re-centring these were 2.4e-9 off (all methods)
        assert_allclose(alpha, expected, rtol=0, atol=5e-12)


def test_recentred_ratio_satisfies_the_normalisation_identity():
    src = load_source("gen:llm-like:V=2000,scale=3,noise=0.01,rows=4,seed=11")
    a, b = src.log_pi_theta, src.log_pi_t
    support = common_support(a, b)
    l = np.where(support, b - a, 0.0)
    recentre_log_ratio(l, a, b, support)
    # sum pi_theta e^l / sum pi_theta = 1, i.e. its log1p-form is 0 to rounding
    pi_theta = np.exp(a)
    residual = np.log1p(np.sum(pi_theta * np.expm1(l), axis=1) / np.sum(pi_theta, axis=1))
    assert np.all(np.abs(residual) <= 8 * EPS * np.max(np.abs(l), axis=1))


def test_rows_with_different_supports_or_large_ratios_are_untouched():
    with np.errstate(divide="ignore"):
        a = np.log(np.array([[0.5, 0.5, 0.0], [0.9, 0.05, 0.05]]))
        b = np.log(np.array([[0.25, 0.25, 0.5], [1e-3, 0.5, 0.499]]))
    support = common_support(a, b)
    l = np.where(support, b - a, 0.0)
    assert np.max(np.abs(l[1])) > RECENTRE_MAX_ABS_L
    before = l.copy()
    recentre_log_ratio(l, a, b, support)
    assert_array_equal(l, before)
