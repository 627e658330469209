"""`geomix regress`: the CI regression over cases/ (values on every change), planted drifts,
malformed files, changed sources, --update (on copies in tmp_path) and the golden verdicts."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from geomix_cli.cli import app
from geomix_cli.errors import EXIT_BAD_INPUT, EXIT_REGRESSION

CASES = Path(__file__).resolve().parents[1] / "cases"
runner = CliRunner()


def regress(*args):
    return runner.invoke(app, ["regress", *map(str, args)])


@pytest.fixture
def cases_copy(tmp_path) -> Path:
    dest = tmp_path / "cases"
    shutil.copytree(CASES, dest)
    return dest


def _edit(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


def test_values_regression_on_shipped_cases():
    """The CI check: every shipped case, every exact method, within the derived tolerances."""
    result = regress("--no-verdicts", "--cases", CASES, "--json")
    assert result.exit_code == 0, result.stderr + result.stdout
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["mismatches"] == []
    assert {"newton", "halley", "brentq"} <= set(report["methods"])
    n_cases = len(list(CASES.glob("*.json")))
    assert len(report["cases"]) == n_cases * len(report["methods"])
    assert all(row["ok"] for row in report["cases"])


def test_table_output_names_cases_and_methods():
    result = regress("--no-verdicts", "--cases", CASES, "--case", "derivation-test1-two-point",
                     "--method", "newton")
    assert result.exit_code == 0, result.stderr
    assert "derivation-test1-two-point" in result.stdout and "newton" in result.stdout
    assert "everything matches" in result.stdout


@pytest.mark.parametrize("case_id,row", [("derivation-test1-two-point", 0), ("smollm2-real-rows", 2),
                                          ("near-identical", 1)])
def test_planted_alpha_change_fails(cases_copy, case_id, row):
    path = cases_copy / f"{case_id}.json"
    original = json.loads(path.read_text())["expected"][row]["alpha"]
    _edit(path, lambda d: d["expected"][row].update(alpha=original + 1e-4))
    result = regress("--no-verdicts", "--cases", cases_copy, "--case", case_id)
    assert result.exit_code == EXIT_REGRESSION
    expected_text = f"case {case_id}, row {row}, field alpha (newton): expected {original + 1e-4!r}"
    assert expected_text in result.stderr
    assert "got " + repr(original)[:8] in result.stderr  # the recomputed value, near the original
    assert result.stderr.strip().splitlines()[-1].startswith("geomix: error: ")


def test_changed_status_and_json_mismatch(cases_copy):
    _edit(cases_copy / "partial-overlap.json",
          lambda d: d["expected"][1].update(status="ok", alpha=0.4))
    result = regress("--no-verdicts", "--cases", cases_copy, "--case", "partial-overlap",
                     "--method", "brentq", "--json")
    assert result.exit_code == EXIT_REGRESSION
    report = json.loads(result.stdout)
    fields = {(m["row"], m["field"], m["method"]) for m in report["mismatches"]}
    assert fields == {(1, "status", "brentq"), (1, "alpha", "brentq")}


@pytest.mark.parametrize("content,words", [
    ("{not json", "invalid JSON at line 1"),
    (json.dumps({"schema_version": 1, "id": "bad"}), "key 'description': missing key"),
    ("[1, 2]", "a case file holds one JSON object"),
])
def test_malformed_case_file_is_a_one_line_refusal(cases_copy, content, words):
    (cases_copy / "bad.json").write_text(content)
    result = regress("--no-verdicts", "--cases", cases_copy)
    assert result.exit_code == EXIT_BAD_INPUT
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.json" in lines[0] and words in lines[0]


def test_malformed_expected_row_names_key_and_row(cases_copy):
    _edit(cases_copy / "one-hot.json", lambda d: d["expected"][2].pop("ess_target"))
    result = regress("--no-verdicts", "--cases", cases_copy)
    assert result.exit_code == EXIT_BAD_INPUT
    assert "one-hot.json, key 'expected', row 2: missing field 'ess_target'" in result.stderr


def test_changed_source_fails_and_update_refuses(cases_copy):
    path = cases_copy / "v2-asymmetric.json"
    _edit(path, lambda d: d["source"].update(pi_t=[[0.25, 0.75], [0.5, 0.5]]))
    result = regress("--no-verdicts", "--cases", cases_copy, "--case", "v2-asymmetric")
    assert result.exit_code == EXIT_REGRESSION
    assert "field source_sha256" in result.stderr and "the source changed" in result.stderr
    before = path.read_bytes()
    refused = regress("--update", "--no-verdicts", "--cases", cases_copy, "--case",
                      "v2-asymmetric")
    assert refused.exit_code == EXIT_BAD_INPUT
    assert "v2-asymmetric" in refused.stderr and "nothing was written" in refused.stderr
    assert path.read_bytes() == before
    accepted = regress("--update", "--accept-source-change", "--no-verdicts", "--cases",
                       cases_copy, "--case", "v2-asymmetric")
    assert accepted.exit_code == 0, accepted.stderr
    assert "v2-asymmetric row 0 alpha:" in accepted.stdout  # the diff is shown
    assert regress("--no-verdicts", "--cases", cases_copy, "--case",
                   "v2-asymmetric").exit_code == 0


def test_update_rewrites_from_the_reference_only(cases_copy):
    path = cases_copy / "dirichlet-v6.json"
    good = json.loads(path.read_text())
    _edit(path, lambda d: d["expected"][1].update(alpha=0.123, chernoff=9.0))
    other = cases_copy / "one-hot.json"
    other_bytes = other.read_bytes()
    result = regress("--update", "--no-verdicts", "--cases", cases_copy, "--case", "dirichlet-v6")
    assert result.exit_code == 0, result.stderr
    assert f"dirichlet-v6 row 1 alpha: 0.123 -> {good['expected'][1]['alpha']!r}" in result.stdout
    assert json.loads(path.read_text())["expected"] == good["expected"]
    assert json.loads(path.read_text())["description"] == good["description"]
    assert other.read_bytes() == other_bytes
    again = regress("--update", "--no-verdicts", "--cases", cases_copy, "--case", "dirichlet-v6")
    assert "no golden value or verdict changed" in again.stdout


def test_update_keeps_values_the_user_added(cases_copy):
    path = cases_copy / "derivation-test1-two-point.json"
    _edit(path, lambda d: d.update(reviewed_by="someone", description="mine"))
    result = regress("--update", "--no-verdicts", "--cases", cases_copy, "--case",
                     "derivation-test1-two-point")
    assert result.exit_code == 0, result.stderr
    data = json.loads(path.read_text())
    assert data["reviewed_by"] == "someone" and data["description"] == "mine"


# ---------------------------------------------------------------------------------------------
# verdicts, against a suite result built here (the real suite takes about a minute)


@pytest.fixture
def fake_suite(monkeypatch):
    verdicts = {"test1-symmetric": "holds", "test2-extreme": "depends"}

    def run_suite(name, *, thorough=False, seed=0, progress=None):
        claims = [types.SimpleNamespace(id=k, claim="", verdict=v, evidence="", data={})
                  for k, v in verdicts.items()]
        return types.SimpleNamespace(suite=name, claims=claims)

    module = types.ModuleType("geomix_cli.checks")
    module.run_suite = run_suite
    monkeypatch.setitem(sys.modules, "geomix_cli.checks", module)
    return verdicts


def test_changed_verdict_fails(cases_copy, fake_suite):
    (cases_copy / "verdicts").mkdir(exist_ok=True)
    golden = cases_copy / "verdicts" / "verify_alpha_theory.json"
    golden.write_text(json.dumps({"test1-symmetric": "holds", "test2-extreme": "refuted"}))
    result = regress("--no-values", "--cases", cases_copy)
    assert result.exit_code == EXIT_REGRESSION
    assert ("claim test2-extreme (verify): expected refuted, got depends (verdict changed)"
            in result.stderr)
    fake_suite["test2-extreme"] = "refuted"
    assert regress("--no-values", "--cases", cases_copy).exit_code == 0


def test_missing_golden_verdicts_fail_then_update_writes_them(cases_copy, fake_suite):
    shutil.rmtree(cases_copy / "verdicts", ignore_errors=True)
    result = regress("--no-values", "--cases", cases_copy)
    assert result.exit_code == EXIT_REGRESSION and "no golden verdict file" in result.stderr
    updated = regress("--update", "--no-values", "--cases", cases_copy)
    assert updated.exit_code == 0, updated.stderr
    assert "claim test2-extreme: null -> depends" in updated.stdout
    written = json.loads((cases_copy / "verdicts" / "verify_alpha_theory.json").read_text())
    assert written == fake_suite
    assert regress("--no-values", "--cases", cases_copy).exit_code == 0


def test_nothing_to_do_is_refused():
    result = regress("--no-values", "--no-verdicts", "--cases", CASES)
    assert result.exit_code == EXIT_BAD_INPUT


def test_new_case_is_filled_in_by_update(cases_copy):
    path = cases_copy / "my-pair.json"
    path.write_text(json.dumps({"schema_version": 1, "id": "my-pair", "description": "mine",
                                "source": {"type": "inline", "kind": "probs",
                                           "pi_theta": [0.5, 0.5], "pi_t": [0.9, 0.1]}}))
    refused = regress("--no-verdicts", "--cases", cases_copy, "--case", "my-pair")
    assert refused.exit_code == EXIT_BAD_INPUT
    assert "missing key" in refused.stderr and "--update --case my-pair" in refused.stderr
    filled = regress("--update", "--no-verdicts", "--cases", cases_copy, "--case", "my-pair")
    assert filled.exit_code == 0, filled.stderr
    assert "my-pair: new case, 1 expected row(s)" in filled.stdout
    data = json.loads(path.read_text())
    assert data["produced_by"]["script"] == "scripts/make_golden.py"
    assert data["expected"][0]["status"] == "ok"
    # symmetric in the sense of swap: (0.5, 0.5) vs (0.9, 0.1); alpha* strictly inside (0, 1)
    assert 0.0 < data["expected"][0]["alpha"] < 1.0
    assert regress("--no-verdicts", "--cases", cases_copy, "--case", "my-pair").exit_code == 0


def test_update_accepts_a_source_with_more_rows(cases_copy):
    path = cases_copy / "derivation-test1-two-point.json"
    _edit(path, lambda d: d["source"].update(pi_theta=[[0.7, 0.3], [0.6, 0.4]],
                                             pi_t=[[0.3, 0.7], [0.4, 0.6]]))
    result = regress("--update", "--accept-source-change", "--no-verdicts", "--cases",
                     cases_copy, "--case", "derivation-test1-two-point")
    assert result.exit_code == 0, result.stderr
    assert "1 -> 2 expected rows" in result.stdout
    assert regress("--no-verdicts", "--cases", cases_copy, "--case",
                   "derivation-test1-two-point").exit_code == 0


@pytest.mark.slow
def test_verdicts_of_the_real_suite_match_the_golden_file():
    """The verdict half of the CI regression: a fresh verify_alpha_theory run (~40 s) must give
    the verdicts in cases/verdicts/verify_alpha_theory.json."""
    result = regress("--no-values", "--cases", CASES, "--json")
    assert result.exit_code == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)["verdicts"]["verify_alpha_theory"]
    assert report["changed"] == [] and report["golden"] == report["fresh"]
    assert len(report["golden"]) >= 10


def test_hand_written_case_without_schema_version_gets_a_hint(cases_copy):
    """The first error a newcomer meets names the keys a case file starts with and the recipe."""
    path = cases_copy / "mine.json"
    path.write_text(json.dumps({"id": "mine", "source": {"type": "inline", "kind": "probs",
                                                         "pi_theta": [0.5, 0.5],
                                                         "pi_t": [0.9, 0.1]}}))
    result = regress("--no-verdicts", "--cases", cases_copy, "--case", "mine")
    assert result.exit_code == EXIT_BAD_INPUT
    (line,) = result.stderr.strip().splitlines()
    assert "key 'schema_version': missing key" in line
    for words in ('"schema_version": 1', '"id": "mine"', '"description"', '"source"',
                  "geomix regress --update --case mine", "docs/regress.md"):
        assert words in line
    doc = (Path(__file__).resolve().parents[1] / "docs" / "regress.md").read_text()
    assert "## Adding your own case" in doc
