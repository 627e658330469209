"""Tests of the tabular learning simulation (`geomix_cli.simulate`) and `geomix simulate`.

Tolerances: the unbiasedness tests compare a Monte Carlo mean of M independent estimates with the
exact tabular gradient; the tolerance is Z standard errors of that mean, the standard error
estimated from the same M draws (Z = 5: with a few dozen components per test the chance of a false
alarm is below 1e-4, and the random numbers are seeded, so the test is deterministic). A power
check shows the same tolerance rejects an estimator with the wrong weights.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import log_softmax
from typer.testing import CliRunner

from geomix_cli.cli import app
from geomix_cli.core import effective_sample_size, kl_divergence, log_q_alpha, solve_alpha
from geomix_cli.errors import InputError
from geomix_cli.simulate import (CaseOutcome, EvidenceConfig, SimulationConfig, exact_gradient,
                                 ess_balance_alpha, gradient_estimate, importance_weights, judge,
                                 parse_sampler, reduce_vocabulary, sample_efficiency_evidence,
                                 sample_tokens, sampler_alpha, sampling_log_q,
                                 simulate, softmax_start)

Z = 5.0


def _pair(vocab=6, seed=0, conc=1.0):
    rng = np.random.default_rng(seed)
    return (np.log(rng.dirichlet(np.full(vocab, conc))), np.log(rng.dirichlet(np.full(vocab, conc))))


def _mc_mean(objective, log_p, log_t, alpha, n, m=40_000, seed=1, **options):
    """M independent estimates (vectorised: leading axis M), their mean and standard error."""
    log_q = log_q_alpha(log_p, log_t, alpha)
    rng = np.random.default_rng(seed)
    tokens = sample_tokens(np.broadcast_to(log_q, (m, log_q.size)), rng.random((m, n)))
    shape = (m, log_p.size)
    g = gradient_estimate(objective, np.broadcast_to(log_p, shape), np.broadcast_to(log_t, shape),
                          np.broadcast_to(log_q, shape), tokens, **options)
    return g.mean(axis=0), g.std(axis=0, ddof=1) / np.sqrt(m)


# ------------------------------------------------------------------------------------------------
# estimators


@pytest.mark.parametrize("objective", ["forward-kl", "reverse-kl"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("n", [1, 4])
def test_is_gradient_is_unbiased(objective, alpha, n):
    log_p, log_t = _pair()
    exact = exact_gradient(objective, log_p, log_t)
    mean, se = _mc_mean(objective, log_p, log_t, alpha, n)
    assert np.all(se > 0)
    assert np.all(np.abs(mean - exact) <= Z * se), (mean, exact, se)


def test_unbiased_at_alpha_star():
    log_p, log_t = _pair(seed=3)
    alpha = float(solve_alpha(log_p, log_t).alpha[0])
    for objective in ("forward-kl", "reverse-kl"):
        mean, se = _mc_mean(objective, log_p, log_t, alpha, 8, m=20_000)
        assert np.all(np.abs(mean - exact_gradient(objective, log_p, log_t)) <= Z * se)


def test_unbiasedness_check_has_power():
    """Weights computed as if q were pi_theta, while sampling from pi_t, must be rejected."""
    log_p, log_t = _pair(conc=0.5, seed=2)
    rng = np.random.default_rng(5)
    m, n = 40_000, 4
    tokens = sample_tokens(np.broadcast_to(log_t, (m, 6)), rng.random((m, n)))
    shape = (m, 6)
    g = gradient_estimate("reverse-kl", np.broadcast_to(log_p, shape), np.broadcast_to(log_t, shape),
                          np.broadcast_to(log_p, shape), tokens)  # wrong: q taken as pi_theta
    mean, se = g.mean(axis=0), g.std(axis=0, ddof=1) / np.sqrt(m)
    assert np.any(np.abs(mean - exact_gradient("reverse-kl", log_p, log_t)) > Z * se)


def test_on_policy_and_off_policy_weights_are_one():
    log_p, log_t = _pair(vocab=9, seed=4)
    log_p, log_t = log_p[None], log_t[None]
    on = sampling_log_q(log_p, log_t, np.array([1.0]))
    off = sampling_log_q(log_p, log_t, np.array([0.0]))
    y = np.arange(9)[None]
    assert_array_equal(importance_weights("reverse-kl", log_p, log_t, on), np.ones((1, 9)))
    assert_array_equal(importance_weights("forward-kl", log_p, log_t, off), np.ones((1, 9)))
    # and the on-policy reverse-kl estimate is then the plain REINFORCE-with-RLOO estimate
    g = gradient_estimate("reverse-kl", log_p, log_t, on, y)
    f = (log_p - log_t)[0]
    b = (f.sum() - f) / 8
    plain = np.einsum("n,nv->v", (f - b) / 9, np.eye(9) - np.exp(log_p))
    assert_allclose(g[0], plain, rtol=1e-12, atol=1e-15)


def test_self_normalized_and_clipped_estimates_are_consistent():
    """Biased options still converge: with many samples per estimate the mean approaches the
    exact gradient (tolerance: a few standard errors plus the O(1/N) bias, N = 512)."""
    log_p, log_t = _pair(seed=6)
    exact = exact_gradient("forward-kl", log_p, log_t)
    mean, se = _mc_mean("forward-kl", log_p, log_t, 0.5, 512, m=400, self_normalized=True)
    assert_allclose(mean, exact, atol=Z * se.max() + 0.01)
    clipped, _ = _mc_mean("forward-kl", log_p, log_t, 0.5, 64, m=400, clip=1e9)
    plain, _ = _mc_mean("forward-kl", log_p, log_t, 0.5, 64, m=400)
    assert_array_equal(clipped, plain)  # a clip above every weight changes nothing


def test_sample_tokens_follow_q():
    log_q = np.log(np.array([0.5, 0.25, 0.125, 0.0625, 0.0625]))
    m = 200_000
    tokens = sample_tokens(log_q[None], np.random.default_rng(0).random((1, m)))[0]
    freq = np.bincount(tokens, minlength=5) / m
    sd = np.sqrt(np.exp(log_q) * (1 - np.exp(log_q)) / m)
    assert np.all(np.abs(freq - np.exp(log_q)) <= Z * sd)


def test_zero_mass_tokens_are_never_sampled():
    with np.errstate(divide="ignore"):
        log_q = np.log(np.array([0.0, 0.5, 0.0, 0.5, 0.0]))
    tokens = sample_tokens(log_q[None], np.random.default_rng(1).random((1, 10_000)))
    assert set(np.unique(tokens)) <= {1, 3}


# ------------------------------------------------------------------------------------------------
# samplers


def test_kl_symmetry_sampler_uses_the_exact_solver_and_counts_fallbacks():
    log_p, log_t = _pair(vocab=12, seed=7)
    alpha, fell = sampler_alpha("kl-symmetry", log_p[None], log_t)
    assert_allclose(alpha, solve_alpha(log_p, log_t).alpha, rtol=0, atol=0)
    assert not fell.any()
    # identical rows: degenerate, no alpha*: fall back to on-policy and say so
    alpha, fell = sampler_alpha("kl-symmetry", log_t[None], log_t)
    assert fell.all() and alpha[0] == 1.0


def test_ess_balance_equalises_the_two_ess():
    log_p, log_t = _pair(vocab=30, seed=8, conc=0.3)
    alpha, ok = ess_balance_alpha(log_p, log_t)
    assert ok
    log_q = log_q_alpha(log_p, log_t, alpha)
    # bracket width 1e-9 in alpha; d log ESS / d alpha is O(10) here, so 1e-7 relative
    assert_allclose(effective_sample_size(log_p, log_q), effective_sample_size(log_t, log_q),
                    rtol=1e-7)
    alpha, ok = ess_balance_alpha(log_t, log_t)
    assert not ok and np.isnan(alpha)


def test_ess_balance_refuses_different_supports():
    """pi_t with zeros: q_alpha (alpha < 1) misses mass of pi_theta, ESS_theta(q) = 0 for every
    alpha in (0, 1), so no alpha balances the two: fall back, and count it."""
    log_p = np.log(np.full((1, 4), 0.25))
    with np.errstate(divide="ignore"):
        log_t = np.log(np.array([[0.5, 0.3, 0.2, 0.0]]))
    alpha, ok = ess_balance_alpha(log_p, log_t)
    assert not ok[0] and np.isnan(alpha[0])
    alpha, fell = sampler_alpha("ess-balance", log_p, log_t)
    assert fell[0] and alpha[0] == 1.0


def test_softmax_start_floors_zeros_below_every_real_token():
    with np.errstate(divide="ignore"):
        log_p0 = np.log(np.array([[0.6, 0.4, 0.0, 0.0]]))
    start, floored = softmax_start(log_p0)
    assert floored[0] == 2 and np.all(np.isfinite(start))
    assert_allclose(np.exp(start).sum(), 1.0, rtol=1e-14)
    assert np.all(start[0, 2:] < start[0, :2].min())
    full = np.log(np.array([[0.5, 0.5]]))
    assert_array_equal(softmax_start(full)[0], full)


def test_parse_sampler():
    assert parse_sampler("0.3") == "alpha=0.3"
    assert parse_sampler("alpha=1") == "alpha=1"
    assert parse_sampler("kl-symmetry") == "kl-symmetry"
    for bad in ("bogus", "alpha=1.5", "alpha=nan"):
        with pytest.raises(InputError):
            parse_sampler(bad)


# ------------------------------------------------------------------------------------------------
# vocabulary reduction


def test_reduce_vocabulary_keeps_mass_and_reports_it(smollm2_log_probs):
    lp, lt = smollm2_log_probs
    red = reduce_vocabulary(lp[:3], lt[:3], 32)
    assert red.log_pi_theta.shape == (3, 33) and red.merged
    assert_allclose(np.exp(red.log_pi_theta).sum(axis=1), 1.0, rtol=1e-12)
    assert_allclose(np.exp(red.log_pi_theta[:, -1]), red.merged_mass_theta, rtol=1e-9)
    # coarsening cannot increase a KL (data processing inequality); rounding slack 1e-12
    assert np.all(kl_divergence(red.log_pi_t, red.log_pi_theta)
                  <= kl_divergence(lt[:3], lp[:3]) + 1e-12)
    small = reduce_vocabulary(lp[:1, :10] - np.logaddexp.reduce(lp[:1, :10], axis=1),
                              lt[:1, :10] - np.logaddexp.reduce(lt[:1, :10], axis=1), 32)
    assert not small.merged and small.log_pi_theta.shape == (1, 10)


# ------------------------------------------------------------------------------------------------
# the simulation

TINY = SimulationConfig(samplers=("on-policy", "off-policy", "kl-symmetry"), samples_per_step=4,
                        budget=64, seeds=4, tuning_seeds=2, lr_grid=(0.3, 3.0), bootstrap=200)


@pytest.fixture(scope="module")
def tiny_pairs():
    rng = np.random.default_rng(11)
    return (log_softmax(rng.normal(0, 2, (3, 10)), axis=1),
            log_softmax(rng.normal(0, 2, (3, 10)), axis=1))


@pytest.fixture(scope="module")
def tiny_result(tiny_pairs):
    return simulate(*tiny_pairs, TINY, source="tiny")


def test_simulation_is_deterministic_given_the_seed(tiny_pairs, tiny_result):
    again = simulate(*tiny_pairs, TINY, source="tiny")
    for a, b in zip(tiny_result.results, again.results):
        assert_array_equal(a.per_seed_final_kl, b.per_seed_final_kl)
        assert a.lr == b.lr
    other = simulate(*tiny_pairs, SimulationConfig(**{**TINY.__dict__, "seed": 1}))
    assert any(not np.array_equal(a.per_seed_final_kl, b.per_seed_final_kl)
               for a, b in zip(tiny_result.results, other.results))


def test_learning_rate_is_searched_per_sampler(tiny_result):
    for r in tiny_result.results:
        assert set(r.tuning_score) == {"0.3", "3"}
        keys = {lr: (s["samples_median"], s["final_kl_median"]) for lr, s in r.tuning_score.items()}
        assert f"{r.lr:g}" == min(keys, key=keys.get)
        assert r.lr_grid == (0.3, 3.0)


def test_learning_rate_choice_differs_when_samplers_need_it():
    """On-policy forward-kl has heavy weights pi_t/pi_theta and needs a smaller step than
    off-policy (weights 1): the per-sampler search must be able to pick different rates."""
    rng = np.random.default_rng(3)
    lp = log_softmax(rng.normal(0, 3, (4, 16)), axis=1)
    lt = log_softmax(rng.normal(0, 3, (4, 16)), axis=1)
    cfg = SimulationConfig(objectives=("forward-kl",), samplers=("on-policy", "off-policy"),
                           samples_per_step=4, budget=128, seeds=4, tuning_seeds=3,
                           lr_grid=(0.1, 1.0, 10.0), bootstrap=200)
    res = simulate(lp, lt, cfg)
    assert len({r.lr for r in res.results}) > 1


def test_results_are_sane(tiny_result):
    for r in tiny_result.results:
        # off-policy reverse-kl may really get worse (weights pi_theta/pi_t are heavy-tailed)
        if r.sampler != "off-policy":
            assert r.final_kl_median < tiny_result.initial_kl[r.objective]
        assert 0 <= r.reached_fraction <= 1
        lo, hi = r.final_kl_ci
        assert lo <= r.final_kl_median <= hi
        if r.sampler == "on-policy":
            assert r.mean_alpha == 1.0
            if np.isfinite(r.samples_to_threshold_median):
                assert r.speedup_vs_on_policy == 1.0
        if r.sampler == "off-policy":
            assert r.mean_alpha == 0.0
        assert r.fallback_fraction == 0.0


def test_reverse_kl_refuses_targets_with_zeros():
    lp = np.log(np.full((1, 4), 0.25))
    with np.errstate(divide="ignore"):
        lt = np.log(np.array([[0.5, 0.5, 0.0, 0.0]]))
    with pytest.raises(InputError):
        simulate(lp, lt, SimulationConfig(objectives=("reverse-kl",)))
    res = simulate(lp, lt, SimulationConfig(**{**TINY.__dict__, "objectives": ("forward-kl",)}))
    assert np.all(np.isfinite([r.final_kl_median for r in res.results]))


@pytest.mark.parametrize("bad", [dict(objectives=("nope",)), dict(samplers=("bogus",)),
                                 dict(optimizer="rmsprop"), dict(lr_grid=(-1.0,)),
                                 dict(target_fraction=1.5), dict(seeds=1)])
def test_bad_config_is_input_error(bad):
    with pytest.raises(InputError):
        SimulationConfig(**bad).checked()


# ------------------------------------------------------------------------------------------------
# evidence and verdict


def _outcome(objective, outcome, lo, hi):
    return CaseOutcome(case="c", objective=objective, speedup=(lo + hi) / 2, speedup_ci=(lo, hi),
                       speedup_vs_off_policy=1.0, speedup_vs_off_policy_ci=(0.5, 2.0),
                       best_sampler="kl-symmetry", outcome=outcome)


def test_judge_follows_the_definitions():
    meets, fails, unsure = (_outcome("forward-kl", "meets", 2.5, 4.0),
                            _outcome("reverse-kl", "fails", 0.4, 0.9),
                            _outcome("reverse-kl", "inconclusive", 1.0, 3.0))
    assert judge([meets, meets])[0] == "holds"
    assert judge([meets, fails])[0] == "depends"
    assert judge([fails, unsure])[0] == "refuted"
    assert judge([meets, unsure])[0] == "inconclusive"
    verdict, words = judge([meets, fails])
    assert "forward-kl" in words and "reverse-kl" in words


def test_sample_efficiency_evidence_comes_from_the_simulation(tiny_pairs):
    cfg = EvidenceConfig(cases=("tiny",), simulation=TINY)
    res = sample_efficiency_evidence(cfg, sources={"tiny": tiny_pairs})
    assert res.verdict in ("holds", "depends", "refuted", "inconclusive")
    assert len(res.outcomes) == 2 and res.simulations
    for o in res.outcomes:
        q = res.simulations[0].get(o.objective, "kl-symmetry")
        assert o.speedup_ci == q.speedup_ci
        expected = ("meets" if q.speedup_ci[0] >= 2 else "fails" if q.speedup_ci[1] < 2
                    else "inconclusive")
        assert o.outcome == expected
    assert res.verdict == judge(res.outcomes)[0]
    json.dumps(res.to_json(), allow_nan=True)


# ------------------------------------------------------------------------------------------------
# CLI

CLI_TINY = ["--seeds", "3", "--tuning-seeds", "1", "--budget", "32", "-n", "4", "--lr-grid",
            "0.3,3", "--bootstrap", "100", "--no-progress"]


def test_cli_json_schema():
    result = CliRunner().invoke(app, ["simulate", "gen:dirichlet:V=8,rows=2", "--sampler",
                                      "on-policy,kl-symmetry,alpha=0.25", "--json", *CLI_TINY])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["schema_version"] == 1
    rows = payload["results"]
    assert {(r["objective"], r["sampler"]) for r in rows} == {
        (o, s) for o in ("forward-kl", "reverse-kl")
        for s in ("on-policy", "kl-symmetry", "alpha=0.25")}
    for r in rows:
        for key in ("objective", "sampler", "lr", "final_kl_median", "final_kl_ci",
                    "samples_to_threshold_median", "speedup_vs_on_policy", "speedup_ci",
                    "reached_fraction", "lr_grid"):
            assert key in r
        assert r["lr"] in (0.3, 3.0)
        assert len(r["final_kl_ci"]) == 2
    assert payload["simulation"]["lr_grid"] == [0.3, 3.0]


def test_cli_table_and_report(tmp_path):
    out = tmp_path / "sim"
    result = CliRunner().invoke(app, ["simulate", "gen:llm-like:V=12,rows=2", "--objective",
                                      "forward-kl", "--sampler", "on-policy,off-policy",
                                      "--out", str(out), *CLI_TINY])
    assert result.exit_code == 0, result.output
    assert "forward-kl" in result.stdout and "off-policy" in result.stdout
    for name in ("report.md", "results.csv", "curves.csv", "simulation.json",
                 "learning_curves.png", "speedup.png"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "simulation.json").read_text())["schema_version"] == 1


@pytest.mark.parametrize("args", [
    ["gen:dirichlet:V=8", "--sampler", "bogus"],
    ["gen:dirichlet:V=8", "--objective", "cross-entropy"],
    ["gen:dirichlet:V=8", "--optimizer", "rmsprop"],
    ["gen:dirichlet:V=8", "--lr-grid", "a,b"],
    ["no/such/file.npz"],
    ["gen:nosuchgen"],
])
def test_cli_bad_input_is_one_line_exit_2(args):
    result = CliRunner().invoke(app, ["simulate", *CLI_TINY, *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("geomix: error:")


def test_vectorised_ess_balance_agrees_with_the_exact_per_row_solve():
    # the simulation's batched Illinois solver against core.principles' per-row brentq
    from geomix_cli.core.principles import ess_balance_alpha as exact_ess_balance
    from geomix_cli.sources import load_source

    src = load_source("gen:llm-like:V=64,scale=2,noise=1,rows=12,seed=9")
    alpha, ok = ess_balance_alpha(src.log_pi_theta, src.log_pi_t)
    exact = exact_ess_balance(src.log_pi_theta, src.log_pi_t)
    assert ok.all() and (exact.status == "ok").all()
    assert_allclose(alpha, exact.alpha, rtol=0, atol=1e-8)  # the batched solver's xtol is 1e-9
