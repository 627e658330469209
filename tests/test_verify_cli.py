"""`geomix verify`: one default run (module-scoped, to a tmp folder), then its outputs; --list,
bad input, exit codes, atomic report writing."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from geomix_cli import checks
from geomix_cli.cli import app

CLAIM_IDS = ["theorem1-pareto", "delta-kl-identity", "boundary-values", "alpha-unique",
             "chernoff-identity", "test1-symmetric", "test2-extreme", "test3-ess-balance",
             "entropy-formula", "four-cases", "complexity", "reference-code-exact",
             "sample-efficiency"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("verify") / "report"
    res = CliRunner().invoke(app, ["verify", "verify_alpha_theory", "--out", str(out), "--json"])
    return res, out


def test_exit_code_and_json(run):
    res, out = run
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["schema_version"] == 1 and data["suite"] == "verify_alpha_theory"
    assert [c["id"] for c in data["claims"]] == CLAIM_IDS
    for c in data["claims"]:
        assert {"id", "claim", "verdict", "evidence", "data"} <= set(c)
        assert c["verdict"] in ("holds", "refuted", "depends", "untested")
        assert len(c["evidence"]) > 80 and c["claim"]
        assert c["identity_failed"] is False
    # results.json on disk is the same document
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["claims"] == data["claims"]


def test_report_files(run):
    _, out = run
    for name in ("report.md", "results.json", "test2_alpha_sweep.png", "test3_ess_scatter.png",
                 "delta_iterates.png", "four_cases.png", "test2_sweep.csv",
                 "test3_ess_balance.csv", "reference_code.csv"):
        assert (out / name).is_file(), name
        assert (out / name).stat().st_size > 200, name
    text = (out / "report.md").read_text()
    for cid in CLAIM_IDS:
        assert f"## `{cid}`" in text
    assert text.count("**What would change the verdict.**") == len(CLAIM_IDS)
    assert "![" in text
    # no temporary folders left beside the report
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp")]


def test_verdicts_are_consistent_with_their_data(run):
    data = {c["id"]: c for c in json.loads(run[0].stdout)["claims"]}
    # identities: the evidence numbers are below their bounds
    d = data["delta-kl-identity"]["data"]
    assert d["max_error_in_eps_scale"] <= d["bound"]
    # boundary-values: the no-root example of docs/derivation.md has no root -> not 'holds'
    b = data["boundary-values"]
    assert b["data"]["counterexample"]["status"] == "no-root"
    assert b["verdict"] == "depends"
    # reference code on the real float16 rows: error well above its 1e-6 tolerance
    ref = {r["family"]: r for r in data["reference-code-exact"]["data"]["per_family"]}
    assert ref["real-smollm2"]["max_abs_error"] > 1e-4
    assert data["reference-code-exact"]["verdict"] in ("depends", "refuted")
    # test 3: at least one family within the band, one outside -> depends
    t3 = data["test3-ess-balance"]["data"]
    assert t3["holds_for"] and t3["fails_for"]
    assert data["test3-ess-balance"]["verdict"] == "depends"
    assert data["test1-symmetric"]["data"]["max_difference"] < 1e-12


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
        claim = checks.ClaimResult("tiny", "a claim", "holds", "evidence " * 20,
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
