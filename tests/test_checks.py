"""The claims of the verify suite, run on small families that the suite does not contain, against
independent computations written here; planted counterexamples and planted bugs must flip the
verdicts (so no verdict is hard-coded)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.optimize import brentq

from geomix_cli.cases import delta_uniform_log_probs
from geomix_cli import checks
from geomix_cli.checks import Family


def _fam(name, pt, pT):
    with np.errstate(divide="ignore"):
        return Family(name, name, np.log(np.atleast_2d(pt)), np.log(np.atleast_2d(pT)))


def _ref_alpha(pt, pT):
    def d(a):
        g = pt**a * pT ** (1 - a)
        q = g / g.sum()
        return float(np.sum(q * (np.log(pT) - np.log(pt))))

    return brentq(d, 0, 1, xtol=1e-15)


def _dirichlet(seed, n, vocab, conc, floor=1e-12):
    rng = np.random.default_rng(seed)
    pt = np.maximum(rng.dirichlet(np.full(vocab, conc), size=n), floor)
    pT = np.maximum(rng.dirichlet(np.full(vocab, conc), size=n), floor)
    return pt / pt.sum(1, keepdims=True), pT / pT.sum(1, keepdims=True)


@pytest.fixture
def rng():
    return np.random.default_rng(11)


# ------------------------------------------------------------------------------------------------
# identities: hold on fresh pairs, and a planted bug is caught (identity_failed -> exit 1)


def test_delta_identity_holds_and_catches_a_planted_bug(monkeypatch, rng):
    fams = [_fam("fresh", *_dirichlet(5, 30, 9, 0.8))]
    good = checks.claim_delta_identity(fams, rng, False)
    assert good.verdict == "holds" and not good.identity_failed
    real_kl = checks.kl_divergence
    monkeypatch.setattr(checks, "kl_divergence", lambda a, b: real_kl(a, b) + 1e-9)
    bad = checks.claim_delta_identity(fams, rng, False)
    assert bad.verdict == "refuted" and bad.identity_failed


def test_alpha_unique_catches_a_wrong_derivative(monkeypatch, rng):
    fams = [_fam("fresh", *_dirichlet(6, 10, 7, 1.0))]
    assert checks.claim_unique(fams, rng, False).verdict == "holds"
    real = checks.delta_complex_step
    monkeypatch.setattr(checks, "delta_complex_step", lambda *a: 1.01 * real(*a))
    bad = checks.claim_unique(fams, rng, False)
    assert bad.identity_failed and bad.verdict == "refuted"


def test_chernoff_identity_on_fresh_pairs(rng):
    pt, pT = _dirichlet(8, 6, 11, 0.6)
    res = checks.claim_chernoff([_fam("fresh", pt, pT)], rng, False)
    assert res.verdict == "holds"
    # independent: C = -log Z(alpha*) from probabilities, and Z is minimal at alpha*
    for i in range(6):
        a = _ref_alpha(pt[i], pT[i])
        z = lambda x: np.sum(pt[i] ** x * pT[i] ** (1 - x))  # noqa: E731
        assert z(a) <= min(z(a - 1e-4), z(a + 1e-4))
    assert res.data["max_argmin"] < 1e-5


# ------------------------------------------------------------------------------------------------
# Pareto: a planted wrong "family" is beaten by the generic optimiser


def test_pareto_flips_when_the_family_is_wrong(monkeypatch, rng):
    assert checks.claim_pareto([], np.random.default_rng(1), False).verdict == "holds"
    real = checks.log_q_alpha

    def wrong(lt, lT, alpha):  # alpha^2 instead of alpha: not the weighted-sum minimiser
        return real(lt, lT, np.asarray(alpha) ** 2)

    monkeypatch.setattr(checks, "log_q_alpha", wrong)
    res = checks.claim_pareto([], np.random.default_rng(1), False)
    assert res.verdict != "holds"
    assert res.data["max_abs_q_diff"] > 1e-3


# ------------------------------------------------------------------------------------------------
# statistical claims on families the suite does not contain


def test_test3_verdicts_follow_the_data(rng):
    near_t, _ = _dirichlet(21, 20, 30, 5.0)
    rng2 = np.random.default_rng(22)
    near_T = near_t * np.exp(rng2.normal(0, 0.01, size=near_t.shape))
    near_T /= near_T.sum(1, keepdims=True)
    near = _fam("near", near_t, near_T)
    peaked = _fam("peaked", *_dirichlet(23, 20, 30, 0.05, floor=1e-30))
    assert checks.claim_test3([near], rng, False).verdict == "holds"
    assert checks.claim_test3([peaked], rng, False).verdict == "refuted"
    both = checks.claim_test3([near, peaked], rng, False)
    assert both.verdict == "depends"
    # the per-family fraction against a direct computation
    rec = next(r for r in both.data["per_family"] if r["family"] == "peaked")
    within = []
    pt, pT = np.exp(peaked.log_pi_theta), np.exp(peaked.log_pi_t)
    for i in range(20):
        a = _ref_alpha(pt[i], pT[i])
        g = pt[i] ** a * pT[i] ** (1 - a)
        q = g / g.sum()
        e1, e2 = 1 / np.sum(pt[i] ** 2 / q), 1 / np.sum(pT[i] ** 2 / q)
        within.append(max(e1, e2) / min(e1, e2) <= 1.1)
    assert_allclose(rec["fraction_within_10pct"], np.mean(within), atol=1e-6)


def test_four_cases_holds_on_test1_and_flips_with_a_counterexample(rng):
    test1 = _fam("t1", np.array([0.7, 0.3]), np.array([0.3, 0.7]))
    assert checks.claim_four_cases([test1], rng, False).verdict == "holds"
    # q* exceeds max(pi_theta, pi_t) on a token where both agree (1/Z > 1)
    bad = _fam("agree", np.array([0.4, 0.5, 0.1]), np.array([0.4, 0.1, 0.5]))
    res = checks.claim_four_cases([test1, bad], rng, False)
    assert res.verdict in ("depends", "refuted")
    assert res.data["counterexample"]["family"] == "agree"
    # direct: q*(token 0) > 0.4 = max
    a = _ref_alpha(np.array([0.4, 0.5, 0.1]), np.array([0.4, 0.1, 0.5]))
    g = np.array([0.4, 0.5, 0.1]) ** a * np.array([0.4, 0.1, 0.5]) ** (1 - a)
    assert g[0] / g.sum() > 0.4
    assert res.data["tokens_below_min"] == 0


def test_entropy_formula_verdicts(rng):
    pt, _ = _dirichlet(31, 15, 40, 3.0)
    rng2 = np.random.default_rng(32)
    pT = pt * np.exp(rng2.normal(0, 0.05, size=pt.shape))
    pT /= pT.sum(1, keepdims=True)
    near = _fam("llm-near", pt, pT)  # the name the claim uses for close pairs
    assert checks.claim_entropy([near], rng, False).verdict == "holds"
    eps = np.array([1e-8, 1e-6])
    lt, lT = delta_uniform_log_probs(500, eps)
    extreme = Family("extreme", "extreme", lt, lT)
    res = checks.claim_entropy([near, extreme], rng, False)
    assert res.verdict == "depends"
    # independent alpha_H and alpha* for the first extreme row
    p = np.exp(lt[0])
    h = -np.sum(p * np.log(p))
    ah = h / (h + math.log(500))
    rec = next(r for r in res.data["per_family"] if r["family"] == "extreme")
    a_star = _ref_alpha(np.exp(lt[0]), np.exp(lT[0]))
    a_star2 = _ref_alpha(np.exp(lt[1]), np.exp(lT[1]))
    assert_allclose(rec["max_abs_error"], max(abs(ah - a_star), abs(
        (lambda q: (-np.sum(q * np.log(q))) / (-np.sum(q * np.log(q)) + math.log(500)))(
            np.exp(lt[1])) - a_star2)), rtol=1e-5)


def test_reference_code_verdicts(rng):
    moderate = _fam("moderate", *_dirichlet(41, 10, 20, 1.0, floor=1e-6))
    assert checks.claim_reference([moderate], rng, False).verdict == "holds"
    lt, lT = delta_uniform_log_probs(1000, np.array([1e-9]))
    tiny = Family("tiny", "tiny", lt, lT)
    res = checks.claim_reference([moderate, tiny], rng, False)
    assert res.verdict == "depends"
    assert res.data["inexact_on"] == ["tiny"]


def test_test2_reproduction_is_real():
    res = checks.claim_test2([], None, False)
    assert res.verdict in ("depends", "holds", "refuted")
    both = res.data["reproduces_both"]
    assert both, "no (V, eps) reproduces 0.34 / 0.002"
    for rec in both:
        vocab, eps = rec["V"], rec["eps_for_0.34"]
        pt = np.full(vocab, eps / (vocab - 1))
        pt[0] = 1 - eps
        pT = np.full(vocab, 1 / vocab)
        # eps is rounded to 6 digits in the record: alpha* moves by < 1e-5
        assert_allclose(_ref_alpha(pt, pT), 0.34, atol=1e-5)
        h = -np.sum(pt * np.log(pt))
        assert round(h / (h + math.log(vocab)), 3) == 0.002
    # verdict 'depends' exactly when alpha* is on both sides of 0.5 somewhere on the sweep
    above = res.data["points_above_half"]
    assert (res.verdict == "depends") == (0 < above < res.data["points"])


def test_boundary_values_counts_no_root(rng):
    same = _fam("same", *_dirichlet(51, 20, 6, 1.0))
    res = checks.claim_boundary([same], rng, False, 0)
    assert res.data["sign_failures"] == 0
    ce = res.data["counterexample"]
    assert ce["status"] == "no-root" and ce["D0"] < 0 and ce["D1"] < 0
    # independent: D(0+) on the common support {0, 1} of the counterexample
    pt, pT = np.array([0.6, 0.4]), np.array([0.1, 0.2])
    w = pT / pT.sum()
    assert_allclose(ce["D0"], np.sum(w * (np.log(pT) - np.log(pt))), rtol=1e-5)
    assert res.verdict == "depends"


def test_suite_is_deterministic_per_claim():
    fams = [_fam("fresh", *_dirichlet(61, 8, 10, 1.0))]
    a = checks.claim_four_cases(fams, np.random.default_rng(0), False).to_json()
    b = checks.claim_four_cases(fams, np.random.default_rng(0), False).to_json()
    assert a == b
    p1 = checks.claim_pareto([], np.random.default_rng(5), False).to_json()
    p2 = checks.claim_pareto([], np.random.default_rng(5), False).to_json()
    assert p1 == p2


def test_sample_efficiency_untested_without_simulation(monkeypatch):
    import geomix_cli.simulate as sim

    monkeypatch.delattr(sim, "sample_efficiency_evidence")
    res = checks.claim_sample_efficiency([], None, False, 0)
    assert res.verdict == "untested" and "simulation" in res.evidence
