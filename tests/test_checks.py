"""The claims of the verify suite, run on small families that the suite does not contain, against
independent computations written here; planted counterexamples and planted bugs must flip the
verdicts (so no verdict is hard-coded), and every verdict must come with its clause."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.optimize import brentq

from geomix_cli import checks
from geomix_cli.cases import delta_uniform_log_probs
from geomix_cli.checks import Family, experiments, foundations, methods, rule
from geomix_cli.checks.rule import ClaimResult, SuiteResult
from geomix_cli.core.principles import four_cases
from geomix_cli.core.rules import NO_ROOT, OK


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


def _near(seed, n, vocab, noise):
    pt, _ = _dirichlet(seed, n, vocab, 5.0)
    pT = pt * np.exp(np.random.default_rng(seed + 1).normal(0, noise, size=pt.shape))
    return pt, pT / pT.sum(1, keepdims=True)


@pytest.fixture
def rng():
    return np.random.default_rng(11)


# ------------------------------------------------------------------------------------------------
# the rule


def test_clause_and_verdict_must_agree():
    ClaimResult("x", "c", "refuted", "e", clause="R2")
    with pytest.raises(ValueError):
        ClaimResult("x", "c", "holds", "e", clause="R1")


def test_summary_line_counts_clauses_and_geomix_own_claims_apart():
    claims = [ClaimResult("a", "", "holds", "", clause="H"),
              ClaimResult("b", "", "refuted", "", clause="R1"),
              ClaimResult("c", "", "refuted", "", clause="R2"),
              ClaimResult("d", "", "untested", "", clause="U"),
              ClaimResult("own", "", "holds", "", clause="H", own=True)]
    res = SuiteResult("s", "d", 0, False, claims)
    line = res.summary_line()
    assert line.startswith("the derivation's 4 claims: 1 holds (H 1), 2 refuted (R1 1, R2 1), "
                           "1 untested (U 1)")
    assert "geomix's own claim (own): 1 holds (H 1)" in line
    assert res.verdict_counts(own=False) == {"holds": 1, "refuted": 2, "depends": 0,
                                             "untested": 1}
    assert res.to_json()["own_verdict_counts"]["holds"] == 1


def test_most_rule_needs_more_than_half_overall_and_in_most_families():
    assert rule.most_rule({"a": 0.9, "b": 0.8, "c": 0.1}, {"a": 10, "b": 10, "c": 10})[0]
    # more than half overall, but only one family of three has a majority
    assert not rule.most_rule({"a": 1.0, "b": 0.4, "c": 0.4}, {"a": 100, "b": 10, "c": 10})[0]
    assert not rule.most_rule({"a": 0.5}, {"a": 10})[0]  # exactly half is not most


def test_decade_bound_is_a_margin_and_a_floor():
    assert rule.decade_bound(3.2e-9) == 1e-8
    assert rule.decade_bound(3.4e-9) == 1e-7  # 3x margin
    assert rule.decade_bound(2e-16, floor=1e-13) == 1e-13
    assert rule.decade_bound(0.0, floor=1e-13) == 1e-13
    assert rule.below(8.09, floor=100.0) == "< 1e+02"


# ------------------------------------------------------------------------------------------------
# identities: hold on fresh pairs, and a planted bug is caught (identity_failed -> exit 1)


def test_delta_identity_holds_and_catches_a_planted_bug(monkeypatch, rng):
    fams = [_fam("fresh", *_dirichlet(5, 30, 9, 0.8))]
    good = checks.claim_delta_identity(fams, rng, False)
    assert good.verdict == "holds" and good.clause == "H" and not good.identity_failed
    assert good.data["control_min_error"] > 1e4  # the wrong-sign control fails the bound
    real_kl = foundations.kl_divergence
    monkeypatch.setattr(foundations, "kl_divergence", lambda a, b: real_kl(a, b) + 1e-9)
    bad = checks.claim_delta_identity(fams, rng, False)
    assert bad.verdict == "refuted" and bad.identity_failed


def test_alpha_unique_catches_a_wrong_derivative(monkeypatch, rng):
    fams = [_fam("fresh", *_dirichlet(6, 10, 7, 1.0))]
    good = checks.claim_unique(fams, rng, False)
    assert good.verdict == "holds" and good.data["control_detected"] > 0
    real = foundations.delta_complex_step
    monkeypatch.setattr(foundations, "delta_complex_step", lambda *a: 1.01 * real(*a))
    bad = checks.claim_unique(fams, rng, False)
    assert bad.identity_failed and bad.verdict == "refuted"


def test_chernoff_identity_on_fresh_pairs(rng):
    pt, pT = _dirichlet(8, 6, 11, 0.6)
    res = checks.claim_chernoff([_fam("fresh", pt, pT)], rng, False)
    assert res.verdict == "holds" and res.own
    for i in range(6):  # independent: Z is minimal at alpha*
        a = _ref_alpha(pt[i], pT[i])
        z = lambda x: np.sum(pt[i] ** x * pT[i] ** (1 - x))  # noqa: E731
        assert z(a) <= min(z(a - 1e-4), z(a + 1e-4))
    assert res.data["argmin_within_1e-5"] and res.data["control_min_gap"] > 1e4


def test_pareto_flips_when_the_family_is_wrong(monkeypatch):
    good = checks.claim_pareto([], np.random.default_rng(1), False)
    assert good.verdict == "holds" and good.data["control_dominated"] > 0
    real = foundations.log_q_alpha

    def wrong(lt, lT, alpha):  # alpha^2 instead of alpha: not the weighted-sum minimiser
        return real(lt, lT, np.asarray(alpha) ** 2)

    monkeypatch.setattr(foundations, "log_q_alpha", wrong)
    res = checks.claim_pareto([], np.random.default_rng(1), False)
    assert res.verdict != "holds" and res.data["max_abs_q_diff_below"] > 1e-3


# ------------------------------------------------------------------------------------------------
# boundary values and existence


def test_boundary_values_hold_whenever_the_pair_differs(rng):
    same = _fam("same", *_dirichlet(51, 20, 6, 1.0))
    res = checks.claim_boundary([same], rng, False, 0)
    assert res.verdict == "holds" and res.clause == "H" and res.data["failures"] == 0
    sets = {r["pairs"]: r for r in res.data["per_set"]}
    # different supports: the literal end values are infinite, as the KLs are
    assert sets["partial overlap (3 zeros each side)"]["infinite_D0"] > 0
    ce = sets["theory counterexample"]
    assert ce["as_claimed"] == 1 and ce["infinite_D0"] == 1  # KL(pi_t||pi_theta) = +inf > 0


def test_root_existence_is_refuted_and_the_repair_predicts_the_solver(rng):
    same = _fam("same", *_dirichlet(52, 20, 6, 1.0))
    res = checks.claim_root_existence([same], rng, False, 0)
    assert res.verdict == "refuted" and res.clause == "R1"
    ce = res.data["counterexample"]
    assert ce["status"] == "no-root" and ce["D0_plus"] < 0 and ce["D1_minus"] < 0
    # independent: D(0+) on the common support {0, 1} of the counterexample
    pt, pT = np.array([0.6, 0.4]), np.array([0.1, 0.2])
    w = pT / pT.sum()
    assert_allclose(ce["D0_plus"], np.sum(w * (np.log(pT) - np.log(pt))), rtol=1e-5)
    assert res.repaired.confirmed and res.data["limit_rule_mismatches"] == 0
    assert res.data["partial_no_root"] > 0


# ------------------------------------------------------------------------------------------------
# statistical claims on families the suite does not contain


def test_test3_verdicts_follow_the_data(rng):
    near = _fam("near", *_near(21, 20, 30, 0.01))
    peaked = _fam("peaked", *_dirichlet(23, 20, 30, 0.05, floor=1e-30))
    held = [_fam("near (held out)", *_near(31, 20, 30, 0.01))]
    good = checks.claim_test3([near], rng, False, held)
    assert good.verdict == "holds" and good.clause == "H"
    bad = checks.claim_test3([peaked], rng, False, held)
    assert bad.verdict == "refuted" and bad.clause == "R2"
    # the control: planted balanced pairs from the same family pass the same rule
    assert bad.data["control_planted_balanced"]["rule_met"]
    assert "can pass" in bad.control
    both = checks.claim_test3([near, peaked], rng, False, held)
    assert both.verdict == "refuted"  # 50% overall, 1 of 2 families: not "most"
    assert both.repaired is not None and both.repaired.confirmed
    # the per-family fraction against a direct computation
    rec = next(r for r in both.data["per_family"] if r["family"] == "peaked")
    pt, pT = np.exp(peaked.log_pi_theta), np.exp(peaked.log_pi_t)
    within = []
    for i in range(20):
        a = _ref_alpha(pt[i], pT[i])
        g = pt[i] ** a * pT[i] ** (1 - a)
        q = g / g.sum()
        e1, e2 = 1 / np.sum(pt[i] ** 2 / q), 1 / np.sum(pT[i] ** 2 / q)
        within.append(max(e1, e2) / min(e1, e2) <= 1.1)
    assert_allclose(rec["fraction_within_10pct"], np.mean(within), atol=1e-4)


def _four_case_family():
    """The planted six-token pair of four-cases' positive control, checked here to put tokens in
    all four cases and meet them at q* (an independent brentq solve)."""
    theta, target = (np.exp(v[0]) for v in experiments._FOUR_CASE_PAIR)
    a = _ref_alpha(theta, target)
    g = theta ** a * target ** (1 - a)
    fc = four_cases(np.log(theta), np.log(target), np.log(g / g.sum()))
    assert np.all(fc.counts > 0) and np.array_equal(fc.meeting, fc.counts)
    return _fam("four", theta, target)


def test_four_cases_holds_on_test1_and_is_refuted_by_a_counterexample(rng):
    test1 = _fam("t1", np.array([0.7, 0.3]), np.array([0.3, 0.7]))
    # test1 alone has tokens in cases 2 and 3 only; with a pair that puts tokens in all four
    # cases and meets them (found by search, checked below through four_cases) it holds
    four = _four_case_family()
    assert checks.claim_four_cases([test1], rng, False).verdict == "untested"
    res = checks.claim_four_cases([test1, four], rng, False)
    assert min(res.data["tokens"]) > 0 and (res.verdict, res.clause) == ("holds", "H")
    # q* exceeds max(pi_theta, pi_t) on a token where both agree (1/Z > 1)
    bad = _fam("agree", np.array([0.4, 0.5, 0.1]), np.array([0.4, 0.1, 0.5]))
    res = checks.claim_four_cases([test1, bad], rng, False)
    assert res.verdict == "refuted" and res.clause == "R1"
    assert res.data["counterexample"]["family"] == "agree"
    a = _ref_alpha(np.array([0.4, 0.5, 0.1]), np.array([0.4, 0.1, 0.5]))
    g = np.array([0.4, 0.5, 0.1]) ** a * np.array([0.4, 0.1, 0.5]) ** (1 - a)
    assert g[0] / g.sum() > 0.4  # independent: q*(token 0) > 0.4 = max
    # the repaired bound min <= q* <= max e^C holds; the unrepaired cap is what fails
    assert res.repaired.confirmed and res.data["tokens_above_max_times_exp_C"] == 0
    assert res.data["tokens_above_max"] > 0 and res.data["tokens_below_min"] == 0
    # the controls ran through the same token test: a point mass on the least likely token fails
    # some (5 tokens: 2 of test1, 3 of "agree"); the planted pairs pass every token through the
    # whole pipeline (5 mirrored two-token pairs and the six-token pair of all four cases)
    assert res.data["control_tokens"] == 5 and res.data["control_point_mass_meeting"] < 5
    assert res.data["control_mirrored_tokens"] == 16 == res.data["control_mirrored_meeting"]


def test_four_cases_verdicts_follow_their_controls(rng, monkeypatch):
    """Without a failing control a supported claim is untested; without a passing one a
    contradicted claim is untested too (rule.universal_verdict / refuted_verdict)."""
    from geomix_cli.checks import experiments

    test1 = _fam("t1", np.array([0.7, 0.3]), np.array([0.3, 0.7]))
    bad = _fam("agree", np.array([0.4, 0.5, 0.1]), np.array([0.4, 0.1, 0.5]))
    real = experiments.four_cases

    def every_q_meets(lt, lT, lq, threshold=None):
        out = real(lt, lT, lq, threshold=threshold)
        out.meeting = out.counts.copy()
        return out

    four = _four_case_family()   # all four cases populated
    assert checks.claim_four_cases([test1, four], rng, False).clause == "H"
    monkeypatch.setattr(experiments, "four_cases", every_q_meets)    # the point mass passes too
    res = checks.claim_four_cases([test1, four], rng, False)
    assert not res.data["empty_cases"] and (res.verdict, res.clause) == ("untested", "U")

    def planted_always_fail(lt, lT, lq, threshold=None):
        out = real(lt, lT, lq, threshold=threshold)
        if lt.shape[-1] == 2 and np.allclose(np.exp(lt[:, 0]), [0.6, 0.7, 0.8, 0.9, 0.99]):
            out.meeting = out.meeting * 0     # the positive control, the mirrored pairs
        return out

    monkeypatch.setattr(experiments, "four_cases", planted_always_fail)
    res = checks.claim_four_cases([test1, bad], rng, False)
    assert (res.verdict, res.clause) == ("untested", "U")


def test_four_cases_with_an_empty_case_is_untested(rng):
    """At a threshold no probability reaches, every token is in case 4: 'all four cases' is not
    tested, whatever case 4 shows."""
    test1 = _fam("t1", np.array([0.7, 0.3]), np.array([0.3, 0.7]))
    res = checks.claim_four_cases([test1], rng, False, threshold=0.95)
    assert res.data["tokens"][:3] == [0, 0, 0] and res.data["empty_cases"] == [
        "case 1", "case 2", "case 3"]
    assert (res.verdict, res.clause) == ("untested", "U")
    assert "No token is in case 1, case 2, case 3 at this threshold" in res.control


def test_entropy_formula_depends_when_the_stated_conditions_are_right(rng):
    near = _fam("near", *_near(31, 15, 40, 0.02))  # close, equal entropies: approximates
    lt, lT = delta_uniform_log_probs(500, np.array([1e-8, 1e-6]))
    extreme = Family("extreme", "extreme", lt, lT)  # entropies far apart: fails
    res = checks.claim_entropy([near, extreme], rng, False, [])
    assert res.verdict == "depends" and res.clause == "D"
    # independent alpha_H and alpha* for the first extreme row
    p = np.exp(lt[0])
    h = -np.sum(p * np.log(p))
    ah = h / (h + math.log(500))
    rec = next(r for r in res.data["per_family"] if r["family"] == "extreme")
    assert rec["max_abs_error"] >= abs(ah - _ref_alpha(np.exp(lt[0]), np.exp(lT[0]))) - 1e-5
    assert rec["extreme_beyond_0.05"] == 1.0


def test_entropy_formula_is_refuted_by_a_close_pair_it_misses(rng):
    near = _fam("near", *_near(31, 15, 40, 0.02))
    # close in C but both peaked with different entropies: the formula misses
    pt = np.array([0.97, 0.01, 0.01, 0.01])
    pT = np.array([0.985, 0.005, 0.005, 0.005])
    tricky = _fam("tricky", pt, pT)
    lt, lT = delta_uniform_log_probs(500, np.array([1e-8, 1e-6]))
    extreme = Family("extreme", "extreme", lt, lT)  # entropies far apart: fails, as stated
    res = checks.claim_entropy([near, tricky, extreme], rng, False, [])
    rec = next(r for r in res.data["per_family"] if r["family"] == "tricky")
    assert rec["close_pairs"] == 1 and rec["close_within_0.05"] == 0.0
    assert res.verdict == "refuted" and res.clause == "R1"
    # planted errors that follow the stated conditions give 'depends' through the same rule
    assert res.data["control_planted_depends"] and "can return it" in res.control


def test_reference_code_verdicts(rng):
    moderate = _fam("moderate", *_dirichlet(41, 10, 20, 1.0, floor=1e-6))
    assert checks.claim_reference([moderate], rng, False).verdict == "holds"
    lt, lT = delta_uniform_log_probs(1000, np.array([1e-9]))
    res = checks.claim_reference([moderate, Family("tiny", "tiny", lt, lT)], rng, False)
    assert res.verdict == "refuted" and res.data["inexact_on"] == ["tiny"]
    assert res.repaired.confirmed  # the float64 port without smoothing is within 1e-6


def test_test2_reproduction_and_the_closed_form_condition():
    res = checks.claim_test2([], None, False)
    both = res.data["reproduces_both"]
    assert both, "no (V, eps) reproduces 0.34 / 0.002"
    for rec in both:
        vocab, eps = rec["V"], rec["eps_for_0.34"]
        pt = np.full(vocab, eps / (vocab - 1))
        pt[0] = 1 - eps
        pT = np.full(vocab, 1 / vocab)
        assert_allclose(_ref_alpha(pt, pT), 0.34, atol=1e-3)  # eps kept to 4 digits
    assert (res.verdict == "refuted") == (res.data["points_above_half"] > 0)
    assert res.repaired.confirmed and res.data["closed_form_mismatches"] == 0
    # the closed form, independently: D(1/2) changes sign at eps_half(V) for V = 10
    half = {r["V"]: r["eps_where_alpha_star_is_half"] for r in res.data[
        "eps_where_alpha_star_is_half"]}
    pt = np.full(10, half[10] / 9)
    pt[0] = 1 - half[10]
    assert_allclose(_ref_alpha(pt, np.full(10, 0.1)), 0.5, atol=1e-3)


# ------------------------------------------------------------------------------------------------
# methods: passes to a true accuracy


def test_passes_needed_counts_until_the_estimate_stays_within():
    errs = np.array([[1e-2, 1e-7, 1e-3, 1e-8, 1e-9],   # leaves the band once: needs pass 4
                     [1e-7, 1e-8, 1e-9, 1e-9, 1e-9],   # within from pass 1
                     [1e-2, 1e-2, 1e-2, 1e-2, 1e-2]])  # never
    assert list(methods.passes_needed(errs, 1e-6)) == [4.0, 1.0, np.inf]


def test_bisection_and_newton_reach_the_exact_root():
    pt, pT = _dirichlet(71, 5, 12, 0.7)
    fam = _fam("f", pt, pT)
    from geomix_cli.core.family import log_ratio_on_support

    l, lb, _ = log_ratio_on_support(fam.log_pi_theta, fam.log_pi_t)
    ref = np.array([_ref_alpha(pt[i], pT[i]) for i in range(5)])
    bis = methods.bisection_errors(l, lb, ref, 40)
    assert methods.bisection_bound(1e-6) == 19  # ceil(log2(1e6)) - 1: the midpoint halves once more
    assert np.all(methods.passes_needed(bis, 1e-6) <= methods.bisection_bound(1e-6))
    # the bound is tight: a sound bisection needs every one of those passes on these rows
    assert np.any(methods.passes_needed(bis, 1e-6) == methods.bisection_bound(1e-6))
    newt = methods.newton_errors(l, lb, ref, 30, 0.5)
    assert np.all(methods.passes_needed(newt, 1e-12) <= 12)


def test_complexity_holds_and_its_control_fails(rng):
    fams = [_fam("f", *_dirichlet(72, 6, 12, 0.7))]
    lt, lT = delta_uniform_log_probs(1000, np.array([1e-9, 1e-6]))
    fams.append(Family("tiny", "tiny", lt, lT))
    res = checks.claim_complexity(fams, rng, False)
    assert res.verdict == "holds" and res.data["cases_over_bound"] == 0
    assert res.data["reference_never_within_1e-6"]  # the reference code fails the same test
    assert res.data["control_quarter_cut_over_bound"] > 0  # the planted slow method is caught
    # a sound bisection reaches the derivation's count with one pass to spare on most cases
    assert res.data["cases_at_sound_minimum"] > 0


def test_a_check_whose_control_passes_is_untested_not_holds_or_refuted():
    from geomix_cli.checks.rule import universal_verdict

    assert universal_verdict(True, True) == ("holds", "H")
    assert universal_verdict(True, False) == ("untested", "U")
    assert universal_verdict(False, True) == ("refuted", "R1")
    assert universal_verdict(False, False) == ("refuted", "R1")


def test_test1_with_a_control_that_cannot_fail_is_untested(rng, monkeypatch):
    # make every solve return Test 1's answer: the evidence "holds", but so does the control
    real = experiments.solve_alpha

    def fixed(lt, lT, method):
        sol = real(lt, lT, method)
        sol.alpha[:] = 0.5
        return sol

    monkeypatch.setattr(experiments, "solve_alpha", fixed)
    monkeypatch.setattr(experiments, "log_q_alpha",
                        lambda lt, lT, a: np.log(np.full(lt.shape, 0.5)))
    res = checks.claim_test1([], rng, False)
    assert res.verdict == "untested" and res.clause == "U"


def test_entropy_start_verdict_follows_the_measured_passes(rng):
    fams = [_fam("f", *_dirichlet(73, 8, 12, 0.7)), _fam("near", *_near(74, 8, 30, 0.02))]
    res = checks.claim_entropy_start(fams, rng, False, None, [])
    rows = res.data["per_family"]
    counted = res.data["counted_solvers"]
    slower = [(r["family"], s) for r in rows for s, a, b in (
        ("Newton", "newton_from_entropy", "newton_from_half"),
        ("bisection", "bisection_entropy_pivot", "bisection")) if r[a] > r[b]]
    assert len(slower) == len(res.data["slower"]) + len(res.data["slower_not_counted"])
    assert len(res.data["slower"]) == sum(s in counted for _, s in slower)
    # these fixtures are slower with the entropy start (bisection on f, Newton on near): refuted
    assert any(s in counted for _, s in slower)
    assert (res.verdict, res.clause) == ("refuted", "R1")



def test_entropy_start_counts_a_solver_only_where_the_informed_start_passes(rng, monkeypatch):
    """The planted starts run through the same comparison: Newton from alpha* itself and
    bisection from the best non-1/2 first pivot (chosen knowing alpha*) are never slower and
    faster somewhere (the comparison can say 'speeds up'); the far start is slower (it can say
    'does not'). A solver whose informed start fails is not counted, in either direction."""
    from geomix_cli.checks import methods

    fams = [_fam("f", *_dirichlet(73, 8, 12, 0.7)), _fam("near", *_near(74, 8, 30, 0.02))]
    res = checks.claim_entropy_start(fams, rng, False, None, [])
    planted = res.data["planted_starts"]
    for solver in ("Newton", "bisection"):
        assert planted[f"{solver}/informed"]["slower"] == 0, solver
        assert planted[f"{solver}/informed"]["faster"] > 0, solver
        assert planted[f"{solver}/far"]["slower"] > 0, solver
    assert res.data["counted_solvers"] == ["Newton", "bisection"]
    # a pivot at alpha* itself is no informed pivot for bisection: the midpoint estimate then has
    # alpha* on the edge of every later bracket (error exactly half the bracket each pass)
    fam, idx, l, log_base, astar, _, _ = methods._method_rows(fams[:1], False)[0]
    errors = methods.bisection_errors(l, log_base, astar, 12, first=astar)
    assert_allclose(errors[:, 1:] / errors[:, :-1], 0.5, rtol=1e-9)
    # with bisection's informed start slower somewhere, its slowdowns and speed-ups are listed
    # apart and neither decides the verdict
    real = methods._planted_starts

    def bisection_fails(rows_in, rows, acc):
        out = real(rows_in, rows, acc)
        out["bisection", "informed"] = [1, 0]
        return out

    monkeypatch.setattr(methods, "_planted_starts", bisection_fails)
    res = checks.claim_entropy_start(fams, rng, False, None, [])
    assert res.data["counted_solvers"] == ["Newton"]
    assert not any(s.startswith("bisection") for s in res.data["slower"])
    assert all(solver == "Newton" for solver, _ in res.data["faster"])
    assert [s.split(" (")[0] for s in res.data["slower_not_counted"]] == ["bisection on f"]
    assert (res.verdict, res.clause) == ("refuted", "R1")    # Newton on near is slower



# ------------------------------------------------------------------------------------------------
# optional claims and determinism


def test_optional_claim_is_untested_without_its_extra_and_runs_with_it(monkeypatch):
    fams = [_fam("f", *_dirichlet(81, 3, 5, 1.0))]
    claim = checks.OPTIONAL_CLAIMS["sequence-ess-balance"]
    res = checks.suite._optional_result(claim, (), fams, None, False)
    assert res.verdict == "untested" and res.clause == "U"
    assert "Tested by `geomix verify verify_alpha_theory --with models`" in res.evidence
    # asked for, but no check registered: still untested, and it says so (nothing computed)
    import dataclasses

    monkeypatch.setattr(type(claim), "available", lambda self: True)
    res = checks.suite._optional_result(dataclasses.replace(claim, maker=None), ("models",),
                                        fams, None, False)
    assert res.verdict == "untested" and "no check" in res.evidence
    monkeypatch.undo()
    # a registered maker runs only when asked for (and when its modules import)
    made = ClaimResult("opt", "s", "holds", "computed", clause="H")
    opt = checks.OptionalClaim("opt", "s", "sec", "models", ("numpy",), lambda *a: made)
    assert checks.suite._optional_result(opt, ("models",), fams, None, False) is made
    assert checks.suite._optional_result(opt, (), fams, None, False).verdict == "untested"
    missing = checks.OptionalClaim("opt", "s", "sec", "models", ("no_such_module_xyz",),
                                   lambda *a: made)
    assert "not importable" in checks.suite._optional_result(
        missing, ("models",), fams, None, False).evidence


def test_an_optional_claim_whose_evidence_fails_is_untested_and_the_suite_goes_on():
    from geomix_cli.errors import InputError

    def broken(*args):
        raise InputError("model.gguf: not a GGUF file")

    fams = [_fam("f", *_dirichlet(82, 3, 5, 1.0))]
    opt = checks.OptionalClaim("opt", "s", "sec", "models", ("numpy",), broken)
    res = checks.suite._optional_result(opt, ("models",), fams, None, False)
    assert res.verdict == "untested" and "not a GGUF file" in res.evidence


def test_claims_are_deterministic_given_their_rng():
    fams = [_fam("fresh", *_dirichlet(61, 8, 10, 1.0))]
    a = checks.claim_four_cases(fams, np.random.default_rng(0), False).to_json()
    b = checks.claim_four_cases(fams, np.random.default_rng(0), False).to_json()
    assert a == b
    p1 = checks.claim_pareto([], np.random.default_rng(5), False).to_json()
    p2 = checks.claim_pareto([], np.random.default_rng(5), False).to_json()
    assert p1 == p2


def test_every_claim_id_is_registered_once():
    ids = checks.claim_ids()
    assert len(ids) == len(set(ids))
    assert ids[-1] == "sequence-ess-balance"
    assert {"boundary-values", "root-existence", "entropy-start-speedup", "off-policy-unstable",
            "alpha-star-best"} <= set(ids)


def test_root_existence_repaired_check_is_independent_of_the_solver(monkeypatch):
    # the repaired claim is checked against sums computed apart from the solver: a classifier
    # that claims a root everywhere must fail it (before, the check reused the classifier's own
    # limits and could not fail)
    real = foundations.classify_rows

    def always_a_root(lt, lT):
        cls = real(lt, lT)
        cls.status[cls.status == NO_ROOT] = OK
        return cls

    honest = foundations.claim_root_existence([], np.random.default_rng(0), False, 0)
    assert honest.repaired.confirmed and honest.data["grid_mismatches"] == 0
    monkeypatch.setattr(foundations, "classify_rows", always_a_root)
    fooled = foundations.claim_root_existence([], np.random.default_rng(0), False, 0)
    assert not fooled.repaired.confirmed
    assert fooled.data["limit_rule_mismatches"] > 0 and fooled.data["grid_mismatches"] > 0


def test_independent_root_evidence_on_the_theory_counterexample():
    with np.errstate(divide="ignore"):
        lt = np.log(np.array([[0.6, 0.4, 0.0]]))
    lT = np.log(np.array([[0.1, 0.2, 0.7]]))
    d0, d1, root = foundations._independent_root_evidence(lt, lT)
    # on S = {0, 1}: pi_t|S = (1/3, 2/3), l = (log(1/6), log(1/2))
    assert_allclose(d0, [(math.log(1 / 6) + 2 * math.log(1 / 2)) / 3], rtol=1e-14)
    assert_allclose(d1, [0.6 * math.log(1 / 6) + 0.4 * math.log(1 / 2)], rtol=1e-14)
    assert not root[0]


def test_entropy_start_holds_only_with_controls_that_can_fail(rng, monkeypatch):
    from geomix_cli.checks import methods

    row = {"family": "f", "rows": 3, "newton_from_half": 3.0, "newton_from_entropy": 2.0,
           "newton_from_hermite": 2.0, "bisection": 18.0, "bisection_entropy_pivot": 17.0,
           "median_abs_alpha_H_error": 0.01}
    monkeypatch.setattr(methods, "_start_table", lambda rows_in, acc: [dict(row)])
    monkeypatch.setattr(methods, "_method_rows", lambda fams, thorough: [])

    def planted(informed_slower, far_slower):
        return lambda rows_in, rows, acc: {
            (s, p): ([informed_slower, 1] if p == "informed" else [far_slower, 0])
            for s in ("Newton", "bisection") for p in ("informed", "far")}

    monkeypatch.setattr(methods, "_planted_starts", planted(0, 1))
    assert methods.claim_entropy_start([], rng, False).clause == "H"
    monkeypatch.setattr(methods, "_planted_starts", planted(0, 0))   # far start never slower
    assert methods.claim_entropy_start([], rng, False).clause == "U"
    monkeypatch.setattr(methods, "_planted_starts", planted(1, 1))   # informed start slower
    assert methods.claim_entropy_start([], rng, False).clause == "U"
    # equal iterations are not "fewer iterations": no "holds"
    equal = dict(row, newton_from_entropy=3.0)
    monkeypatch.setattr(methods, "_start_table", lambda rows_in, acc: [equal])
    monkeypatch.setattr(methods, "_planted_starts", planted(0, 1))
    res = methods.claim_entropy_start([], rng, False)
    assert res.clause == "U" and res.data["equal"] == ["Newton on f (3)"]
    # and a counted solver slower with the entropy start refutes it
    slow = dict(row, newton_from_entropy=4.0)
    monkeypatch.setattr(methods, "_start_table", lambda rows_in, acc: [slow])
    assert methods.claim_entropy_start([], rng, False).clause == "R1"


def test_four_cases_refutation_needs_planted_tokens_in_the_failing_case(rng, monkeypatch):
    """The positive control must reach the case that fails: with planted pairs only in cases 2
    and 3, a counterexample in case 1 leaves the claim untested."""
    from geomix_cli.checks import experiments

    bad = _fam("agree", np.array([0.4, 0.5, 0.1]), np.array([0.4, 0.1, 0.5]))
    res = checks.claim_four_cases([bad], rng, False)
    assert (res.verdict, res.clause) == ("refuted", "R1")
    assert res.data["counterexample"]["case"] == 1
    two = tuple(np.log(np.array([v])) for v in ((0.7, 0.3), (0.3, 0.7)))
    monkeypatch.setattr(experiments, "_FOUR_CASE_PAIR", two)
    res = checks.claim_four_cases([bad], rng, False)
    assert (res.verdict, res.clause) == ("untested", "U")


def test_reference_code_holds_only_with_a_failing_planted_control(rng, monkeypatch):
    """Where the reference is within 1e-6 everywhere, 'holds' needs the same comparison to fail a
    planted worse solver (the float64 bisection stopped after 16 passes)."""
    from geomix_cli.checks import methods

    mirrored = Family("t1", "t1", np.log(np.array([[0.7, 0.3], [0.6, 0.4]])),
                      np.log(np.array([[0.3, 0.7], [0.4, 0.6]])))
    res = methods.claim_reference([mirrored], rng, False)
    assert res.data["per_family"][0]["max_abs_error"] <= methods.REF_TOL
    assert res.data["float64_bisection_16_passes_max_error"] > methods.REF_TOL
    assert (res.verdict, res.clause) == ("holds", "H")
    real = methods.bisection_errors
    monkeypatch.setattr(methods, "bisection_errors",
                        lambda *a, **k: real(*a, **k) * 0.0)       # a comparison that cannot fail
    assert methods.claim_reference([mirrored], rng, False).clause == "U"


def test_root_existence_is_never_holds_when_the_counterexample_is_missed(rng, monkeypatch):
    from geomix_cli.checks import foundations

    real = foundations.classify_rows

    def blind(theta, t, *a, **k):                  # a classifier that always finds a root
        out = real(theta, t, *a, **k)
        out.status[:] = "ok"
        return out

    monkeypatch.setattr(foundations, "classify_rows", blind)
    fams = [_fam("f", *_dirichlet(91, 3, 6, 1.0))]
    res = foundations.claim_root_existence(fams, rng, False, 0)
    assert (res.verdict, res.clause) == ("untested", "U")
