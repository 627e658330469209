"""core.principles against independent computations written here (plain numpy/scipy from
probabilities): ESS balance, max-min ESS, the four behaviour cases, importance weights."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from scipy.optimize import brentq
from scipy.special import log_softmax

from geomix_cli.core.principles import (PRINCIPLES, ess_balance_alpha, four_cases,
                                        importance_weight_summary, max_min_ess_alpha,
                                        solve_principle)


def _ref_ess(p: np.ndarray, q: np.ndarray) -> float:
    """ESS_p(q) = 1 / sum p^2 / q from probabilities (inf terms where q = 0 < p)."""
    with np.errstate(divide="ignore"):
        return 1.0 / np.sum(np.where(p > 0, p * p / q, 0.0))


def _ref_q(p_theta, p_t, alpha):
    g = p_theta**alpha * p_t ** (1 - alpha)
    return g / g.sum()


def _ref_log_ess_gap(p_theta, p_t, alpha):
    q = _ref_q(p_theta, p_t, alpha)
    return np.log(_ref_ess(p_theta, q)) - np.log(_ref_ess(p_t, q))


def _ref_ess_balance(p_theta, p_t):
    """Brute force: a 2001-point grid locates the sign change, brentq refines it."""
    grid = np.linspace(0.0, 1.0, 2001)
    g = np.array([_ref_log_ess_gap(p_theta, p_t, a) for a in grid])
    changes = np.flatnonzero(np.sign(g[:-1]) != np.sign(g[1:]))
    assert changes.size == 1, "reference: expected exactly one sign change"
    i = changes[0]
    return brentq(lambda a: _ref_log_ess_gap(p_theta, p_t, a), grid[i], grid[i + 1],
                  xtol=1e-15, rtol=1e-15)


def _pairs(seed, n, vocab, conc):
    rng = np.random.default_rng(seed)
    pt = rng.dirichlet(np.full(vocab, conc), size=n)
    pT = rng.dirichlet(np.full(vocab, conc), size=n)
    # keep full support in float64 (Dirichlet(0.3) can underflow a coordinate to 0)
    pt = np.maximum(pt, 1e-12)
    pT = np.maximum(pT, 1e-12)
    return pt / pt.sum(1, keepdims=True), pT / pT.sum(1, keepdims=True)


@pytest.mark.parametrize("vocab,conc", [(2, 1.0), (7, 1.0), (30, 0.3), (200, 2.0)])
def test_ess_balance_matches_brute_force(vocab, conc):
    pt, pT = _pairs(1234 + vocab, 6, vocab, conc)
    sol = ess_balance_alpha(np.log(pt), np.log(pT))
    assert list(sol.status) == ["ok"] * 6
    ref = np.array([_ref_ess_balance(a, b) for a, b in zip(pt, pT)])
    # both are roots of the same smooth increasing function; the reference evaluates it from
    # probabilities (rounding ~1e-14 relative), the slope is O(1) -> 1e-9 leaves room
    assert_allclose(sol.alpha, ref, rtol=0, atol=1e-9)
    # and at that alpha the two ESS are equal (computed here from q)
    for a, b, al in zip(pt, pT, sol.alpha):
        q = _ref_q(a, b, al)
        assert_allclose(_ref_ess(a, q), _ref_ess(b, q), rtol=1e-9)


def test_ess_balance_real_rows(smollm2_log_probs):
    lt, lT = smollm2_log_probs
    lt, lT = lt[:4], lT[:4]
    sol = ess_balance_alpha(lt, lT)
    assert list(sol.status) == ["ok"] * 4
    for i in range(4):
        pt, pT = np.exp(lt[i]), np.exp(lT[i])
        q = _ref_q(pt, pT, sol.alpha[i])
        # V = 49152 sums: the two ESS agree to summation rounding
        assert_allclose(_ref_ess(pt, q), _ref_ess(pT, q), rtol=1e-8)


def test_max_min_ess_equals_ess_balance():
    pt, pT = _pairs(99, 8, 12, 0.5)
    bal = ess_balance_alpha(np.log(pt), np.log(pT))
    mm = max_min_ess_alpha(np.log(pt), np.log(pT))
    # the max-min optimum sits on a kink; the bounded optimiser resolves it to ~1e-9
    assert_allclose(mm.alpha, bal.alpha, rtol=0, atol=1e-6)
    # brute force: min ESS on a fine grid never beats the optimum found
    grid = np.linspace(0, 1, 1001)
    for i in range(8):
        best = max(min(_ref_ess(pt[i], _ref_q(pt[i], pT[i], a)),
                       _ref_ess(pT[i], _ref_q(pt[i], pT[i], a))) for a in grid)
        assert mm.extra["min_ess"][i] >= best - 1e-12


def test_ess_balance_statuses():
    with np.errstate(divide="ignore"):
        # pi_theta puts mass where pi_t has none: ESS_theta(q) = 0 on (0, 1)
        lt = np.log(np.array([[0.5, 0.3, 0.2]]))
        lT = np.log(np.array([[0.6, 0.4, 0.0]]))
        sol = ess_balance_alpha(lt, lT)
        assert sol.status[0] == "no-root" and np.isnan(sol.alpha[0])
        assert "outside the common support" in sol.message[0]
        # identical: degenerate
        sol = ess_balance_alpha(lt, lt)
        assert sol.status[0] == "degenerate" and np.isnan(sol.alpha[0])
        # disjoint
        a = np.log(np.array([[1.0, 0.0]]))
        b = np.log(np.array([[0.0, 1.0]]))
        assert ess_balance_alpha(a, b).status[0] == "disjoint-support"


def test_solve_principle_all_names_and_half_residual():
    pt, pT = _pairs(5, 3, 6, 1.0)
    for name in PRINCIPLES:
        sol = solve_principle(np.log(pt), np.log(pT), name)
        assert sol.alpha.shape == (3,)
        assert np.all((sol.alpha >= 0) & (sol.alpha <= 1))
    half = solve_principle(np.log(pt), np.log(pT), "half")
    for i in range(3):
        q = _ref_q(pt[i], pT[i], 0.5)
        d = np.sum(q * (np.log(pT[i]) - np.log(pt[i])))
        assert_allclose(half.residual[i], d, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError):
        solve_principle(np.log(pt), np.log(pT), "nonsense")


def _ref_four_cases(p_theta, p_t, q, thr):
    """A direct loop over tokens (the expectations of the derivation's section 1.3)."""
    counts, meet = [0] * 4, [0] * 4
    mass = [0.0] * 4
    for a, b, c in zip(p_theta, p_t, q):
        if a == 0 and b == 0:
            continue
        big_a, big_b = a >= thr, b >= thr
        case = 0 if big_a and big_b else 1 if big_b else 2 if big_a else 3
        ok = [min(a, b) <= c <= max(a, b), a < c <= b, b <= c < a, c < thr][case]
        counts[case] += 1
        meet[case] += int(ok)
        mass[case] += c
    return counts, meet, mass


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 40), st.floats(0.1, 3.0))
def test_four_cases_against_loop(seed, vocab, conc):
    rng = np.random.default_rng(seed)
    pt = rng.dirichlet(np.full(vocab, conc))
    pT = rng.dirichlet(np.full(vocab, conc))
    q = rng.dirichlet(np.full(vocab, 1.0))  # any q: the classification does not need q*
    with np.errstate(divide="ignore"):
        fc = four_cases(np.log(pt), np.log(pT), np.log(q), rel_tol=0.0)
    n_exist = int(np.sum((pt > 0) | (pT > 0)))
    counts, meet, mass = _ref_four_cases(pt, pT, q, 1.0 / n_exist)
    assert_array_equal(fc.counts[0], counts)
    assert_array_equal(fc.meeting[0], meet)
    assert_allclose(fc.mass_q[0], mass, rtol=1e-12, atol=1e-15)
    assert fc.counts[0].sum() == n_exist


def test_four_cases_threshold_is_settable():
    pt = np.array([0.5, 0.3, 0.15, 0.05])
    pT = np.array([0.1, 0.2, 0.3, 0.4])
    q = np.array([0.25, 0.25, 0.25, 0.25])
    low = four_cases(np.log(pt), np.log(pT), np.log(q), threshold=0.01)
    assert low.counts[0].tolist() == [4, 0, 0, 0]  # everything large
    high = four_cases(np.log(pt), np.log(pT), np.log(q), threshold=0.9)
    assert high.counts[0].tolist() == [0, 0, 0, 4]  # everything small
    # default: the uniform level 1/4
    default = four_cases(np.log(pt), np.log(pT), np.log(q))
    assert_allclose(default.threshold, [0.25], rtol=0)
    counts, meet, _ = _ref_four_cases(pt, pT, q, 0.25)
    assert default.counts[0].tolist() == counts and default.meeting[0].tolist() == meet


def test_importance_weight_summary_direct():
    rng = np.random.default_rng(3)
    pt = rng.dirichlet(np.ones(50))
    q = rng.dirichlet(np.ones(50))
    s = importance_weight_summary(np.log(pt), np.log(q))
    w = pt / q
    assert_allclose(s["w_min"][0], w.min(), rtol=1e-12)
    assert_allclose(s["w_max"][0], w.max(), rtol=1e-12)
    assert_allclose(s["w_mean_q"][0], 1.0, rtol=1e-12)  # E_q[pi/q] = 1 on full support
    assert_allclose(s["w_second_moment_q"][0], np.sum(pt**2 / q), rtol=1e-12)
    # q-weighted median: the smallest w whose cumulative q-mass reaches 1/2
    order = np.argsort(w)
    cum = np.cumsum(q[order])
    expected = w[order][np.searchsorted(cum / cum[-1], 0.5)]
    assert_allclose(s["w_q0.5"][0], expected, rtol=1e-12)


def test_real_rows_principles_exact(smollm2_log_probs):
    """compare-alpha must be exact on vocab-scale rows: the kl-symmetry alpha equalises the KLs
    and the ess-balance alpha equalises the ESS, both checked from q here."""
    lt, lT = smollm2_log_probs
    lt, lT = lt[8:10], lT[8:10]
    kl = solve_principle(lt, lT, "kl-symmetry")
    for i in range(2):
        a = kl.alpha[i]
        s = a * lt[i] + (1 - a) * lT[i]
        log_q = log_softmax(s)
        q = np.exp(log_q)
        kl_theta = np.sum(q * (log_q - lt[i]))
        kl_t = np.sum(q * (log_q - lT[i]))
        assert_allclose(kl_theta, kl_t, rtol=1e-10)
