"""The alpha* solvers: known values from independent computations, statuses, agreement.

Every expected number here comes from an independent computation (mpmath at 40 digits, or scipy's
brentq on probabilities written in conftest.py), never from the code under test. Tolerances follow
from float64 eps and each row's conditioning (conftest.alpha_tolerance)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.optimize import brentq
from scipy.special import log_softmax

from geomix_cli.core import (DEFAULT_METHOD, EXACT_METHODS, METHODS, classify_rows, diagnose,
                             entropy_formula_alpha, log_q_alpha, solve_alpha,
                             solve_bisection_reference)
from geomix_cli.core.validation import validate_pair

from conftest import (EPS64, alpha_tolerance, assert_rows_close, log_scale, mpmath_alpha,
                      random_logit_pair, reference_alpha_brentq, reference_delta, tilted_var)

EPS32 = float(np.finfo(np.float32).eps)


def logp(p) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(p, dtype=np.float64))


def solve_probs(theta, target, method=DEFAULT_METHOD):
    lt, lT = np.atleast_2d(logp(theta)), np.atleast_2d(logp(target))
    return lt, lT, solve_alpha(lt, lT, method)


# ------------------------------------------------------------------------------------------------
# the derivation's Test 1 and the support examples of docs/derivation.md


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_seed_test_1_symmetric_two_point(method):
    lt, lT, sol = solve_probs([0.7, 0.3], [0.3, 0.7], method)
    assert sol.status[0] == "ok"
    # by symmetry (swap + relabel) alpha* = 1/2 exactly; float64 resolves it to a few eps
    assert_allclose(sol.alpha, 0.5, rtol=0, atol=8 * EPS64)
    q = np.exp(log_q_alpha(lt[0], lT[0], sol.alpha[0]))
    assert_allclose(q, [0.5, 0.5], rtol=0, atol=8 * EPS64)
    # importance weight of the boosted token y2: pi_theta(y2) / q(y2) = 0.3 / 0.5
    assert_allclose(0.3 / q[1], 0.6, rtol=16 * EPS64)
    diag = diagnose(lt, lT, sol)
    # C = -log Z(1/2) = -log(2 sqrt(0.21))
    assert_allclose(diag.chernoff, -np.log(2 * np.sqrt(0.21)), rtol=64 * EPS64)


@pytest.mark.parametrize("method", METHODS)
def test_theory_support_example_has_no_root_with_d_negative_on_the_whole_interval(method):
    theta, target = [0.6, 0.4, 0.0], [0.1, 0.2, 0.7]
    lt, lT, sol = solve_probs(theta, target, method)
    assert sol.status[0] == "no-root"
    assert np.isnan(sol.alpha[0])
    # D(0+), D(1-): E[l] under pi_t resp. pi_theta restricted to S = {0, 1} and renormalised
    l = np.log([0.1 / 0.6, 0.2 / 0.4])
    assert_allclose(sol.d_at_0, np.dot([1 / 3, 2 / 3], l), rtol=64 * EPS64)
    assert_allclose(sol.d_at_1, np.dot([0.6, 0.4], l), rtol=64 * EPS64)
    grid = np.linspace(0.0, 1.0, 51)
    assert max(reference_delta(lt[0], lT[0], a) for a in grid) < 0  # independent check of "<0"
    assert "differ" in sol.message[0] and "<" in sol.message[0]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("theta, target, status", [
    ([0.2, 0.3, 0.5], [0.2, 0.3, 0.5], "degenerate"),          # identical
    ([1.0, 0.0, 0.0], [1.0, 0.0, 0.0], "degenerate"),          # the same one-hot
    ([0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5], "disjoint-support"),
    ([1.0, 0.0], [0.0, 1.0], "disjoint-support"),              # two different one-hots
    ([0.25, 0.25, 0.5, 0.0], [0.125, 0.125, 0.25, 0.5], "no-root"),  # l = log 1/2 on S
    ([1.0, 0.0, 0.0], [0.2, 0.3, 0.5], "no-root"),             # one-hot vs full: S one token
    ([0.7, 0.3], [0.3, 0.7], "ok"),
])
def test_statuses_of_the_support_rules(method, theta, target, status):
    lt, lT, sol = solve_probs(theta, target, method)
    assert sol.status[0] == status
    assert np.isnan(sol.alpha[0]) == (status != "ok")  # never a number called alpha* otherwise
    assert bool(sol.message[0]) == (status != "ok")


def test_degenerate_row_reports_q_and_c_but_no_alpha():
    lt, lT, sol = solve_probs([0.2, 0.3, 0.5], [0.2, 0.3, 0.5])
    diag = diagnose(lt, lT, sol)
    assert np.isnan(sol.alpha[0])
    assert diag.chernoff[0] == 0.0
    assert_allclose(diag.ess_theta, 1.0, rtol=8 * EPS64)


def test_pairs_equal_to_within_rounding_are_degenerate_not_no_root_nor_a_noise_alpha():
    # Regression: logits differing by ~1e-8 (C ~ 1e-17, far below what float64 log-probs resolve)
    # came out 'no-root' ("numerically, within rounding") for 177 of 200 rows and 'ok' with
    # alphas from 0.01 to 0.93 for the rest. D(0+) and D(1-) both within rounding of 0 mean the
    # KLs are equal to float64 resolution for every alpha.
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 3.0, size=(50, 1000))
    lt, lT = log_softmax(x, axis=1), log_softmax(x + 1e-8 * rng.normal(size=x.shape), axis=1)
    sol = solve_alpha(lt, lT)
    assert list(sol.status) == ["degenerate"] * 50
    assert np.all(np.isnan(sol.alpha))
    assert "within float64 rounding" in sol.message[0]
    diag = diagnose(lt, lT, sol)
    assert np.all((diag.chernoff >= 0) & (diag.chernoff < 1e-12))
    # a pair 1e-4 apart is resolved (C ~ 1e-9): see the mpmath test above
    near = solve_alpha(lt, log_softmax(x + 1e-4 * rng.normal(size=x.shape), axis=1))
    assert list(near.status) == ["ok"] * 50


def test_identical_distributions_as_shifted_logits_are_degenerate_not_no_root():
    # Regression: the constant-l tolerance was 64 eps (1 + max|l|); with l ~ 0 but |log p| ~ 1e3
    # the rounding of log_softmax made l look non-constant and rows came out 'no-root'.
    rng = np.random.default_rng(11)
    x = rng.normal(0.0, 100.0, size=(4, 500))
    lt, lT, errors = validate_pair(x, x + 3.7, "logits")
    sol = solve_alpha(lt, lT, row_errors=errors)
    assert list(sol.status) == ["degenerate"] * 4


# ------------------------------------------------------------------------------------------------
# known values: mpmath (40 digits) and the in-test float64 brentq


def _small_cases():
    """Small rows whose alpha* mpmath computes: probabilities with zeros, logits of extreme range."""
    rng = np.random.default_rng(2024)
    cases = []
    for vocab in (2, 3, 5, 8):
        for conc in (0.3, 1.0):
            p = rng.dirichlet(np.full(vocab, conc))
            r = rng.dirichlet(np.full(vocab, conc))
            cases.append((p, r, False))
    for vocab, scale in ((4, 30.0), (6, 200.0), (8, 5.0)):
        theta, target = random_logit_pair(rng, vocab, scale)
        cases.append((theta, target, True))
    # partial support with a root: zeros on both sides, common support of 3 tokens
    cases.append((np.array([0.5, 0.3, 0.2, 0.0, 0.0]), np.array([0.1, 0.3, 0.4, 0.2, 0.0]),
                  False))
    cases.append((np.array([0.0, 0.6, 0.1, 0.3]), np.array([0.2, 0.1, 0.4, 0.3]), False))
    return cases


def _log_probs(raw, logits):
    if logits:
        return log_softmax(raw)
    with np.errstate(divide="ignore"):
        return np.log(raw) - np.log(raw.sum())


@pytest.mark.parametrize("case", range(len(_small_cases())))
def test_exact_methods_against_mpmath(case):
    theta, target, logits = _small_cases()[case]
    lt, lT = _log_probs(theta, logits), _log_probs(target, logits)
    if not (reference_delta(lt, lT, 0.0) > 0 > reference_delta(lt, lT, 1.0)):
        pytest.skip("no root for this draw")  # statuses are tested elsewhere
    expected = mpmath_alpha(theta, target, logits=logits)
    tol = alpha_tolerance(lt, lT, expected)
    for method in EXACT_METHODS:
        sol = solve_alpha(lt, lT, method)
        assert sol.status[0] == "ok", method
        assert_rows_close(sol.alpha, expected, tol, err_msg=method)
    # and the in-test float64 reference agrees with mpmath to the same tolerance
    assert_rows_close(reference_alpha_brentq(lt, lT), expected, tol)


def test_near_identical_pair_with_tiny_chernoff_information():
    import mpmath

    rng = np.random.default_rng(5)
    theta = rng.normal(0.0, 2.0, size=8)
    target = theta + 1e-4 * rng.normal(size=8)  # C ~ 1e-9
    lt, lT = log_softmax(theta), log_softmax(target)
    expected = mpmath_alpha(theta, target, logits=True)
    tol = alpha_tolerance(lt, lT, expected)
    for method in EXACT_METHODS:
        sol = solve_alpha(lt, lT, method)
        assert sol.status[0] == "ok"
        assert_rows_close(sol.alpha, expected, tol, err_msg=method)
    # C = -log Z(alpha*) in 40 digits (C is stationary in alpha: alpha's error does not matter)
    with mpmath.workdps(40):
        def mp_logsoftmax(row):
            v = [mpmath.mpf(float(x)) for x in row]
            lse = mpmath.log(mpmath.fsum(mpmath.exp(x) for x in v))
            return [x - lse for x in v]
        a, b = mp_logsoftmax(theta), mp_logsoftmax(target)
        alpha = mpmath.mpf(expected)
        c_exact = float(-mpmath.log(mpmath.fsum(mpmath.exp(alpha * x + (1 - alpha) * y)
                                                for x, y in zip(a, b))))
    assert 1e-10 < c_exact < 1e-7
    diag = diagnose(lt, lT, solve_alpha(lt, lT))
    # log Z is a sum of V terms of size ~1 cancelling to ~1e-9: absolute error ~ eps * log scale
    atol = 64 * EPS64 * (1 + log_scale(lt, lT))
    assert_rows_close(diag.chernoff, c_exact, atol)
    assert_rows_close(diag.kl_q_theta, c_exact, atol)
    assert_rows_close(diag.kl_q_target, c_exact, atol)


# ------------------------------------------------------------------------------------------------
# agreement on real and synthetic vocab-scale rows


def test_real_rows_brentq_newton_halley_agree_to_1e12_and_match_the_independent_solve(
        smollm2_log_probs, smollm2_reference_alpha):
    lt, lT = smollm2_log_probs
    alphas = {}
    for method in EXACT_METHODS:
        sol = solve_alpha(lt, lT, method)
        assert list(sol.status) == ["ok"] * 12, method
        alphas[method] = sol.alpha
    assert_allclose(alphas["newton"], alphas["brentq"], rtol=0, atol=1e-12)
    assert_allclose(alphas["halley"], alphas["brentq"], rtol=0, atol=1e-12)
    # the bar: 1e-9 or better against an independent float64 solve (the conditioning
    # bound is tighter still on these rows)
    tol = np.minimum(alpha_tolerance(lt, lT, smollm2_reference_alpha), 1e-9)
    for method in EXACT_METHODS:
        assert_rows_close(alphas[method], smollm2_reference_alpha, tol, err_msg=method)


@pytest.mark.parametrize("spec", [
    "gen:llm-like:V=2000,rows=6,seed=1",
    "gen:llm-like:V=500,rows=4,scale=10,noise=3,seed=2",
    "gen:temperature:V=2000,rows=4,tau=0.3,seed=3",
    "gen:temperature:V=800,rows=4,tau=2.5,seed=4",
    "gen:zipf:V=3000,rows=4,s=1.2,noise=0.5,seed=5",
    "gen:dirichlet:V=60,rows=12,conc=0.5,zeros=5,seed=6",
    "gen:dirichlet:V=200,rows=8,conc=1,zeros=30,seed=7",
    "gen:delta-uniform:V=1000,eps=0.001",
    "gen:delta-uniform:V=50000,eps=1e-6",
])
def test_exact_methods_agree_on_synthetic_families(spec):
    from geomix_cli.sources import load_source

    pairs = load_source(spec)
    lt, lT = pairs.log_pi_theta, pairs.log_pi_t
    sols = {m: solve_alpha(lt, lT, m) for m in EXACT_METHODS}
    ok = sols["brentq"].status == "ok"
    assert ok.any()
    for m in EXACT_METHODS:
        assert_array_equal(sols[m].status, sols["brentq"].status)
    reference = np.array([reference_alpha_brentq(a, b) for a, b in zip(lt[ok], lT[ok])])
    # 1e-12, or the row's float64 resolution where that is coarser
    tol = np.maximum(1e-12, alpha_tolerance(lt[ok], lT[ok], reference))
    for m in ("newton", "halley"):
        assert_rows_close(sols[m].alpha[ok], sols["brentq"].alpha[ok], tol, err_msg=m)
    for m in EXACT_METHODS:
        assert_rows_close(sols[m].alpha[ok], reference, tol, err_msg=m)


def test_batched_solve_equals_a_loop_of_single_row_solves():
    from geomix_cli.sources import load_source

    pairs = load_source("gen:dirichlet:V=40,rows=30,conc=0.7,zeros=4,seed=9")
    lt, lT = pairs.log_pi_theta, pairs.log_pi_t
    for method in EXACT_METHODS:
        batch = solve_alpha(lt, lT, method)
        singles = [solve_alpha(lt[i:i + 1], lT[i:i + 1], method) for i in range(lt.shape[0])]
        assert_array_equal(batch.status, [s.status[0] for s in singles])
        ok = batch.status == "ok"
        loop_alpha = np.array([s.alpha[0] for s in singles])
        tol = alpha_tolerance(lt[ok], lT[ok], batch.alpha[ok], factor=4.0, floor=1e-15)
        assert_rows_close(batch.alpha[ok], loop_alpha[ok], tol, err_msg=method)


def test_one_bad_row_never_changes_the_others():
    rng = np.random.default_rng(12)
    theta = rng.dirichlet(np.ones(30), size=5)
    target = rng.dirichlet(np.ones(30), size=5)
    clean = validate_pair(theta, target, "probs")
    spoiled_theta = theta.copy()
    spoiled_theta[2, 7] = np.nan
    spoiled = validate_pair(spoiled_theta, target, "probs")
    assert spoiled[2][2] is not None and all(e is None for i, e in enumerate(spoiled[2]) if i != 2)
    for method in METHODS:
        a = diagnose(clean[0], clean[1], solve_alpha(clean[0], clean[1], method,
                                                    row_errors=clean[2]))
        b = diagnose(spoiled[0], spoiled[1], solve_alpha(spoiled[0], spoiled[1], method,
                                                         row_errors=spoiled[2]))
        assert b.solution.status[2] == "invalid" and np.isnan(b.solution.alpha[2])
        assert "NaN at column 7" in b.solution.message[2]
        others = [0, 1, 3, 4]
        assert_array_equal(b.solution.alpha[others], a.solution.alpha[others])
        assert_array_equal(b.chernoff[others], a.chernoff[others])
        assert_array_equal(b.solution.status[others], a.solution.status[others])


# ------------------------------------------------------------------------------------------------
# the derivation's reference bisection and the entropy heuristic


def _smoothed_root(log_theta, log_t, smoothing=1e-10):
    """Root of the derivation's reference objective in float64: its float32 probabilities, + 1e-10 before logs."""
    p = np.exp(log_theta).astype(np.float32).astype(np.float64)
    r = np.exp(log_t).astype(np.float32).astype(np.float64)
    ls_theta, ls_t = np.log(p + smoothing), np.log(r + smoothing)
    root = brentq(lambda a: reference_delta(ls_theta, ls_t, a), 0.0, 1.0, xtol=1e-15)
    bound = 4 * EPS32 * (1 + np.max(np.abs(ls_t - ls_theta))) / tilted_var(ls_theta, ls_t, root)[0]
    return root, bound


def test_reference_bisection_error_is_its_tolerance_plus_the_smoothing_bias(
        smollm2_log_probs, smollm2_reference_alpha):
    lt, lT = smollm2_log_probs
    sol = solve_bisection_reference(lt, lT)
    # it stops when the bracket is below tol = 1e-6: ceil(log2(1 / 1e-6)) = 20 halvings
    assert_array_equal(sol.iterations, int(np.ceil(np.log2(1e6))))
    half_bracket = 2.0**-21
    errors = np.abs(sol.alpha - smollm2_reference_alpha)
    for i in range(12):
        smoothed, f32_bound = _smoothed_root(lt[i], lT[i])
        # what it computes: the root of the smoothed float32 objective, to its own tolerance
        assert abs(sol.alpha[i] - smoothed) <= half_bracket + f32_bound
        bias = abs(smoothed - smollm2_reference_alpha[i])
        if bias > 10 * (half_bracket + f32_bound):
            # where the smoothing matters, the baseline is measurably wrong
            assert errors[i] >= bias - (half_bracket + f32_bound) > 0
    # the temperature rows (9-11 of the sample) have tokens far below 1e-10: bias ~ 1e-4 .. 1e-3
    assert errors[9:].min() > 1e-4


def test_entropy_method_is_the_formula_and_its_residual_the_kl_gap():
    rng = np.random.default_rng(13)
    theta = rng.dirichlet(np.ones(10), size=3)
    target = rng.dirichlet(np.full(10, 0.2), size=3)
    lt, lT = logp(theta), logp(target)
    sol = solve_alpha(lt, lT, "entropy")
    h_theta = -np.sum(theta * np.log(theta), axis=1)
    h_t = -np.sum(target * np.log(target), axis=1)
    assert_allclose(sol.alpha, h_theta / (h_theta + h_t), rtol=64 * EPS64)
    assert_allclose(sol.alpha, entropy_formula_alpha(lt, lT), rtol=0, atol=0)
    gaps = [reference_delta(lt[i], lT[i], sol.alpha[i]) for i in range(3)]
    assert_allclose(sol.residual, gaps, rtol=1e-12, atol=1e-15)


def test_newton_residual_is_d_at_the_returned_alpha(smollm2_log_probs):
    lt, lT = smollm2_log_probs
    sol = solve_alpha(lt[:4], lT[:4], "newton")
    expected = [reference_delta(lt[i], lT[i], sol.alpha[i]) for i in range(4)]
    assert_rows_close(sol.residual, expected, 64 * EPS64 * (1 + log_scale(lt[:4], lT[:4])))


def test_classification_limits_are_the_restricted_expectations():
    theta = np.array([[0.5, 0.3, 0.2, 0.0]])
    target = np.array([[0.1, 0.3, 0.4, 0.2]])
    cls = classify_rows(logp(theta), logp(target))
    l = np.log(target[0, :3] / theta[0, :3])
    assert_allclose(cls.d_at_0, np.dot(target[0, :3] / target[0, :3].sum(), l), rtol=1e-14)
    assert_allclose(cls.d_at_1, np.dot(theta[0, :3], l), rtol=1e-14)


def test_solve_alpha_refuses_unknown_method_and_mismatched_shapes():
    lt = logp([[0.5, 0.5]])
    with pytest.raises(ValueError, match="unknown method"):
        solve_alpha(lt, lt, "secant")
    with pytest.raises(ValueError, match="shapes differ"):
        solve_alpha(lt, logp([[0.2, 0.3, 0.5]]))


@pytest.mark.parametrize("seed, zero_fraction", [(39, 0.0), (127, 0.1)])
def test_newton_and_halley_do_not_creep_on_rows_where_q_is_nearly_a_point_mass(seed,
                                                                                zero_fraction):
    """Regression: logits of scale 300 make q_alpha a near point mass over most of (0, 1), with
    D and Var ~ 1e-43; Halley's step ~ 2 Var / E(l-D)^3 crept ~4e-3 per iteration and the row
    ended 'max-iter' after 60; Newton's D / Var overflowed with a RuntimeWarning on stderr."""
    import warnings

    rng = np.random.default_rng(seed)
    vocab = int(rng.integers(2, 200))
    theta, target = random_logit_pair(rng, vocab, 300.0, zero_fraction=zero_fraction,
                                      noise=900.0)
    lt, lT = log_softmax(theta), log_softmax(target)
    expected = reference_alpha_brentq(lt, lT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning may reach a user's terminal
        for method in ("newton", "halley"):
            sol = solve_alpha(lt, lT, method)
            assert sol.status[0] == "ok", method
            assert sol.iterations[0] < 60
            assert_rows_close(sol.alpha, expected,
                              np.maximum(1e-12, alpha_tolerance(lt, lT, expected)), method)


@pytest.mark.parametrize("method", ["brentq", "newton", "halley"])
def test_a_solve_that_does_not_converge_reports_no_alpha(method, monkeypatch):
    """Iteration budgets too small to converge: status 'max-iter', alpha NaN (the last iterate
    is not an alpha*), the message says why."""
    import geomix_cli.core.solvers as solvers

    lt, lT = logp([[0.7, 0.2, 0.1]]), logp([[0.1, 0.3, 0.6]])
    options = {}
    if method == "brentq":
        original = solvers._scipy_brentq
        monkeypatch.setattr(solvers, "_scipy_brentq",
                            lambda *a, **k: original(*a, **{**k, "maxiter": 1}))
    else:
        options["max_iter"] = 1
    sol = solve_alpha(lt, lT, method, **options)
    assert sol.status[0] == "max-iter"
    assert np.isnan(sol.alpha[0]) and sol.message[0]
    assert np.isnan(diagnose(lt, lT, sol).chernoff[0])


def test_halley_does_not_stop_where_the_variance_underflows():
    # logits of scale 1000 (log-probabilities down to -1e4): on most of (0, 1) q_alpha is a point
    # mass to working precision, Var_q(l) underflows to 0 and Halley's step 2 D Var / (2 Var^2 +
    # D E(l-D)^3) is exactly 0, which once read as converged (alpha off by up to 0.05, status ok;
    # found by hypothesis). Such rows bisect now; every exact method agrees with brentq.
    from scipy.special import log_softmax

    rng = np.random.default_rng(2026)
    lt = log_softmax(rng.normal(0, 1000, (400, 77)), axis=1)
    lT = log_softmax(rng.normal(0, 1000, (400, 77)), axis=1)
    brent = solve_alpha(lt, lT, "brentq")
    ok = brent.status == "ok"
    assert ok.sum() > 300
    for method in ("newton", "halley"):
        sol = solve_alpha(lt, lT, method)
        assert_array_equal(sol.status, brent.status)
        assert_allclose(sol.alpha[ok], brent.alpha[ok], rtol=0, atol=1e-12,
                                   err_msg=method)
