"""`geomix solve` through typer's CliRunner: every bad input of issue 2, the JSON schema, batches
with bad rows, options, chunking, and the package entry points."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose

from geomix_cli.cli import app
from geomix_cli.core import ROW_FIELDS

from conftest import EPS64, REPO_ROOT, SMOLLM2_SAMPLE, reference_alpha_brentq

SCHEMA_FIELDS = ["row", "status", "alpha", "kl_q_theta", "kl_q_target", "chernoff", "log_z",
                 "ess_theta", "ess_target", "alpha_entropy", "iterations", "residual", "message"]


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity literals (not valid JSON)."""
    def refuse(name):
        raise AssertionError(f"non-JSON constant {name} in output")
    return json.loads(text, parse_constant=refuse)


def assert_refused(result, *fragments):
    """A refusal: exit code neither 0 nor 1, exactly one line on stderr naming what is given in
    `fragments`, nothing on stdout, no traceback anywhere."""
    assert result.exit_code not in (0, 1), (result.exit_code, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("geomix: error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == ""
    assert "Traceback" not in result.stderr + result.stdout


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


# ------------------------------------------------------------------------------------------------
# every bad input of the issue


def _bad_inputs():
    """(name, builder(tmp_path) -> (argv, fragments the error line must contain))."""
    p = np.array([0.5, 0.5])
    cases = {}

    def case(fn):
        cases[fn.__name__] = fn
        return fn

    @case
    def missing_file(tmp):
        f = str(tmp / "nope.npz")
        return [f], [f, "no such file"]

    @case
    def unknown_format(tmp):
        f = tmp / "pairs.txt"
        f.write_text("0.5 0.5")
        return [str(f)], [str(f), "unknown format '.txt'"]

    @case
    def unknown_generator(tmp):
        return ["gen:nope:V=3"], ["gen:nope:V=3", "unknown generator 'nope'"]

    @case
    def unknown_generator_parameter(tmp):
        return ["gen:zipf:q=3"], ["gen:zipf:q=3", "unknown parameter 'q'"]

    @case
    def non_numeric_generator_parameter(tmp):
        return ["gen:zipf:V=ten"], ["gen:zipf:V=ten", "V='ten' is not a number"]

    @case
    def missing_key(tmp):
        f = save_npz(tmp / "m.npz", pi_theta=p, target=p)
        return [f], [f, "key 'pi_t'", "missing key"]

    @case
    def no_known_keys(tmp):
        f = save_npz(tmp / "m.npz", a=p, b=p)
        return [f], [f, "missing keys", "found: a, b"]

    @case
    def pickled_objects_in_npz(tmp):
        f = str(tmp / "pickled.npz")
        np.savez(f, pi_theta=np.array([{"p": 0.5}, None], dtype=object), pi_t=p)
        return [f], [f, "key 'pi_theta'", "pickled"]

    @case
    def empty_array(tmp):
        f = save_npz(tmp / "e.npz", pi_theta=np.zeros((0,)), pi_t=np.zeros((0,)))
        return [f], [f, "key 'pi_theta'", "empty array"]

    @case
    def four_dimensions(tmp):
        x = np.full((1, 1, 2, 2), 0.5)
        f = save_npz(tmp / "d.npz", pi_theta=x, pi_t=x)
        return [f], [f, "key 'pi_theta'", "4 dimensions"]

    @case
    def shapes_differ(tmp):
        f = save_npz(tmp / "s.npz", pi_theta=p, pi_t=np.full(4, 0.25))
        return [f], [f, "key 'pi_t'", "never broadcast"]

    @case
    def string_dtype(tmp):
        f = save_npz(tmp / "u.npz", pi_theta=np.array(["0.5", "0.5"]), pi_t=p)
        return [f], [f, "key 'pi_theta'", "non-numeric dtype"]

    @case
    def bool_dtype(tmp):
        f = save_npz(tmp / "b.npz", pi_theta=np.array([True, False]), pi_t=p)
        return [f], [f, "key 'pi_theta'", "non-numeric dtype bool"]

    @case
    def complex_dtype(tmp):
        f = save_npz(tmp / "c.npz", pi_theta=p, pi_t=p.astype(complex))
        return [f], [f, "key 'pi_t'", "non-numeric dtype complex128"]

    @case
    def nan_probability(tmp):
        f = save_npz(tmp / "n.npz", pi_theta=p, pi_t=np.array([np.nan, 1.0]))
        return [f], [f, "key 'pi_t'", "row 0", "NaN at column 0"]

    @case
    def plus_inf_logit(tmp):
        f = save_npz(tmp / "i.npz", logits_theta=np.array([0.0, np.inf]), logits_t=np.zeros(2))
        return [f], [f, "key 'logits_theta'", "row 0", "+inf logit at column 1"]

    @case
    def infinite_probability(tmp):
        f = save_npz(tmp / "i.npz", pi_theta=np.array([np.inf, 0.0]), pi_t=p)
        return [f], [f, "key 'pi_theta'", "row 0", "infinite probability"]

    @case
    def negative_probability(tmp):
        f = save_npz(tmp / "neg.npz", pi_theta=np.array([1.2, -0.2]), pi_t=p)
        return [f], [f, "key 'pi_theta'", "row 0", "negative probability at column 1"]

    @case
    def sum_off(tmp):
        f = save_npz(tmp / "sum.npz", pi_theta=np.array([0.5, 0.6]), pi_t=p)
        return [f], [f, "key 'pi_theta'", "row 0", "sum to 1.1", "--renormalize"]

    @case
    def all_minus_inf_logits(tmp):
        f = save_npz(tmp / "ninf.npz", logits_theta=np.array([-np.inf, -np.inf]),
                     logits_t=np.zeros(2))
        return [f], [f, "key 'logits_theta'", "row 0", "every logit is -inf"]

    @case
    def row_out_of_range(tmp):
        f = save_npz(tmp / "r.npz", pi_theta=p, pi_t=p)
        return [f, "--rows", "5"], [f, "row 5 does not exist"]

    @case
    def row_selection_garbage(tmp):
        f = save_npz(tmp / "r.npz", pi_theta=p, pi_t=p)
        return [f, "--rows", "1-3"], [f, "row selection '1-3'"]

    @case
    def unknown_method(tmp):
        f = save_npz(tmp / "r.npz", pi_theta=p, pi_t=p)
        return [f, "--method", "secant"], ["unknown method 'secant'"]

    @case
    def logits_and_probs_together(tmp):
        f = save_npz(tmp / "r.npz", pi_theta=p, pi_t=p)
        return [f, "--logits", "--probs"], ["exclude each other"]

    @case
    def both_kinds_of_keys(tmp):
        f = save_npz(tmp / "both.npz", pi_theta=p, pi_t=p, logits_theta=p, logits_t=p)
        return [f], [f, "--probs or --logits"]

    @case
    def corrupt_npz(tmp):
        f = tmp / "bad.npz"
        f.write_bytes(b"PK\x03\x04 this is not a zip archive")
        return [str(f)], [str(f), "cannot read as npz"]

    @case
    def corrupt_json(tmp):
        f = tmp / "bad.json"
        f.write_text('{"pi_theta": [0.5, 0.5], "pi_t": [0.5, ')
        return [str(f)], [str(f), "invalid JSON at line 1"]

    @case
    def json_non_numeric_value(tmp):
        f = tmp / "nn.json"
        f.write_text('{"pi_theta": [0.5, "half"], "pi_t": [0.5, 0.5]}')
        return [str(f)], [str(f), "key 'pi_theta'", "non-numeric value"]

    @case
    def json_ragged_rows(tmp):
        f = tmp / "rag.json"
        f.write_text('{"pi_theta": [[0.5, 0.5], [1.0]], "pi_t": [[0.5, 0.5], [0.5, 0.5]]}')
        return [str(f)], [str(f), "key 'pi_theta'", "row 1", "ragged"]

    @case
    def json_not_an_object(tmp):
        f = tmp / "list.json"
        f.write_text("[0.5, 0.5]")
        return [str(f)], [str(f), "expected a JSON object"]

    @case
    def corrupt_csv(tmp):
        f = tmp / "bad.csv"
        f.write_text("pi_theta,pi_t\n0.5,0.5\n0.5,0.5,0.1,0.2\n")
        return [str(f)], [str(f), "cannot read as csv"]

    @case
    def csv_non_numeric_cell(tmp):
        f = tmp / "cell.csv"
        f.write_text("row,pi_theta,pi_t\n0,0.5,0.5\n0,0.5,0.5\n1,0.2,abc\n1,0.8,0.3\n")
        return [str(f)], [str(f), "key 'pi_t'", "non-numeric value 'abc' at data line 3"]

    @case
    def csv_ragged_rows(tmp):
        f = tmp / "rag.csv"
        f.write_text("row,pi_theta,pi_t\n0,0.5,0.5\n0,0.5,0.5\n1,1.0,1.0\n")
        return [str(f)], [str(f), "key 'row'", "row 1", "row has 1 tokens where row 0 has 2"]

    @case
    def csv_empty(tmp):
        f = tmp / "empty.csv"
        f.write_text("pi_theta,pi_t\n")
        return [str(f)], [str(f), "no data rows"]

    @case
    def parquet_non_numeric_cell(tmp):
        import pandas as pd

        f = tmp / "cell.parquet"
        pd.DataFrame({"pi_theta": ["0.5", "x"], "pi_t": [0.5, 0.5]}).to_parquet(f)
        return [str(f)], [str(f), "key 'pi_theta'", "non-numeric value 'x' at data line 2"]

    @case
    def parquet_ragged_rows(tmp):
        import pandas as pd

        f = tmp / "rag.parquet"
        pd.DataFrame({"row": [0, 0, 1], "pi_theta": [0.5, 0.5, 1.0],
                      "pi_t": [0.5, 0.5, 1.0]}).to_parquet(f)
        return [str(f)], [str(f), "key 'row'", "row 1"]

    @case
    def corrupt_parquet(tmp):
        f = tmp / "bad.parquet"
        f.write_bytes(b"PAR1 not really parquet PAR1")
        return [str(f)], [str(f), "cannot read as parquet"]

    @case
    def corrupt_safetensors_header(tmp):
        f = tmp / "bad.safetensors"
        f.write_bytes((10**9).to_bytes(8, "little") + b"{}")
        return [str(f)], [str(f), "corrupt safetensors header"]

    @case
    def truncated_safetensors(tmp):
        header = json.dumps({"pi_theta": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]},
                             "pi_t": {"dtype": "F64", "shape": [2], "data_offsets": [16, 32]}})
        f = tmp / "trunc.safetensors"
        f.write_bytes(len(header).to_bytes(8, "little") + header.encode() + b"\0" * 20)
        return [str(f)], [str(f), "key 'pi_t'", "do not lie within the 20 data bytes"]

    @case
    def safetensors_unsupported_dtype(tmp):
        header = json.dumps({"pi_theta": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]},
                             "pi_t": {"dtype": "F64", "shape": [1], "data_offsets": [8, 16]}})
        f = tmp / "c.safetensors"
        f.write_bytes(len(header).to_bytes(8, "little") + header.encode() + b"\0" * 16)
        return [str(f)], [str(f), "key 'pi_theta'", "unsupported safetensors dtype C64"]

    @case
    def corrupt_pt(tmp):
        f = tmp / "bad.pt"
        f.write_bytes(b"\x80\x02 definitely not a torch file")
        return [str(f)], [str(f), "cannot load with torch.load(weights_only=True)"]

    @case
    def pt_with_pickled_object(tmp):
        torch = pytest.importorskip("torch")
        import collections

        f = tmp / "obj.pt"
        torch.save({"pi_theta": collections.Counter(a=1), "pi_t": torch.tensor([0.5, 0.5])}, f)
        return [str(f)], [str(f), "key 'pi_theta'", "holds a Counter, expected a tensor"]

    @case
    def pt_not_a_dict(tmp):
        torch = pytest.importorskip("torch")
        f = tmp / "t.pt"
        torch.save(torch.tensor([0.5, 0.5]), f)
        return [str(f)], [str(f), "expected a dict of tensors"]

    return cases


BAD_INPUTS = _bad_inputs()


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
@pytest.mark.parametrize("json_flag", [False, True])
def test_bad_input_is_refused_with_one_line(name, json_flag, tmp_path, runner):
    argv, fragments = BAD_INPUTS[name](tmp_path)
    result = runner.invoke(app, ["solve", *argv, *(["--json"] if json_flag else [])])
    assert_refused(result, *fragments)


def test_sum_off_is_accepted_with_renormalize(tmp_path, runner):
    f = save_npz(tmp_path / "sum.npz", pi_theta=np.array([0.7, 0.4]), pi_t=np.array([0.3, 0.7]))
    result = runner.invoke(app, ["solve", f, "--renormalize", "--json"])
    assert result.exit_code == 0, result.stderr
    row = strict_json(result.stdout)["rows"][0]
    lt, lT = np.log(np.array([0.7, 0.4]) / 1.1), np.log([0.3, 0.7])
    assert_allclose(row["alpha"], reference_alpha_brentq(lt, lT), rtol=0, atol=1e-13)


# ------------------------------------------------------------------------------------------------
# batches with bad rows, schema, statuses


def test_batch_with_one_bad_row_exits_3_and_reports_every_row(tmp_path, runner):
    rng = np.random.default_rng(0)
    theta = rng.dirichlet(np.ones(8), size=4)
    target = rng.dirichlet(np.ones(8), size=4)
    clean = save_npz(tmp_path / "clean.npz", pi_theta=theta, pi_t=target)
    theta_bad = theta.copy()
    theta_bad[2, 5] = -0.01
    f = save_npz(tmp_path / "batch.npz", pi_theta=theta_bad, pi_t=target)
    result = runner.invoke(app, ["solve", f, "--json"])
    assert result.exit_code == 3, result.stderr
    payload = strict_json(result.stdout)
    assert [r["row"] for r in payload["rows"]] == [0, 1, 2, 3]
    bad = payload["rows"][2]
    assert bad["status"] == "invalid" and bad["alpha"] is None
    assert "pi_theta" in bad["message"] and "negative probability at column 5" in bad["message"]
    warnings = result.stderr.splitlines()
    assert len(warnings) == 1 and "row 2" in warnings[0] and f in warnings[0]
    # the other rows are exactly what a batch without the bad row gives
    reference = strict_json(runner.invoke(app, ["solve", clean, "--json"]).stdout)
    for i in (0, 1, 3):
        assert payload["rows"][i] == reference["rows"][i]


def test_json_schema_and_nulls(tmp_path, runner):
    theta = np.array([[0.7, 0.3, 0.0], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.6, 0.4, 0.0]])
    target = np.array([[0.3, 0.7, 0.0], [0.2, 0.3, 0.5], [0.0, 0.5, 0.5], [0.1, 0.2, 0.7]])
    f = save_npz(tmp_path / "statuses.npz", pi_theta=theta, pi_t=target)
    result = runner.invoke(app, ["solve", f, "--json"])
    assert result.exit_code == 0, result.stderr
    # regression: identical rows printed C = -0.0, a point mass alpha_entropy = -0.0
    assert re.search(r"-0\.0(?![0-9])", result.stdout) is None
    payload = strict_json(result.stdout)
    assert payload["schema_version"] == 1
    assert payload["source"] == f and payload["method"] == "newton"
    assert list(ROW_FIELDS) == SCHEMA_FIELDS
    for row in payload["rows"]:
        assert list(row) == SCHEMA_FIELDS
    statuses = [r["status"] for r in payload["rows"]]
    assert statuses == ["ok", "degenerate", "disjoint-support", "no-root"]
    ok, degenerate, disjoint, no_root = payload["rows"]
    assert ok["alpha"] == pytest.approx(0.5, abs=8 * EPS64) and ok["message"] == ""
    assert degenerate["alpha"] is None and degenerate["chernoff"] == 0.0
    assert disjoint["alpha"] is None and disjoint["chernoff"] is None
    assert disjoint["alpha_entropy"] is not None  # the heuristic is defined, alpha* is not
    assert no_root["alpha"] is None and "D(0+)" in no_root["message"]
    for row in payload["rows"][1:]:
        assert row["message"]


@pytest.mark.parametrize("method", ["newton", "halley", "brentq", "bisection", "entropy"])
def test_every_method_through_the_cli(method, runner):
    result = runner.invoke(app, ["solve", "gen:two-point:theta=0.7,target=0.3", "--method",
                                 method, "--json"])
    assert result.exit_code == 0, result.stderr
    payload = strict_json(result.stdout)
    assert payload["method"] == method
    row = payload["rows"][0]
    # symmetric pair: every method, even the heuristic, gives 1/2 up to its own accuracy
    tolerance = {"bisection": 2.0**-21, "entropy": 8 * EPS64}.get(method, 8 * EPS64)
    assert row["alpha"] == pytest.approx(0.5, abs=tolerance)
    assert (row["chernoff"] is None) == (method in ("bisection", "entropy"))


def test_real_rows_with_a_row_selection(runner, smollm2_reference_alpha):
    result = runner.invoke(app, ["solve", str(SMOLLM2_SAMPLE), "--rows", "0,9:11", "--json"])
    assert result.exit_code == 0, result.stderr
    rows = strict_json(result.stdout)["rows"]
    assert [r["row"] for r in rows] == [0, 9, 10]
    for r in rows:
        assert r["status"] == "ok"
        assert abs(r["alpha"] - smollm2_reference_alpha[r["row"]]) <= 1e-12
        assert r["kl_q_theta"] == pytest.approx(r["chernoff"], rel=1e-9)


def test_human_table(runner):
    result = runner.invoke(app, ["solve", "gen:dirichlet:V=6,rows=3,zeros=2,seed=3"])
    assert result.exit_code == 0, result.stderr
    assert "alpha*" in result.stdout and "status" in result.stdout
    assert result.stderr == ""


def test_logits_flag_reads_log_probabilities_stored_under_probability_keys(tmp_path, runner):
    log_theta, log_t = np.log([0.7, 0.3]), np.log([0.3, 0.7])
    f = save_npz(tmp_path / "lp.npz", pi_theta=log_theta, pi_t=log_t)
    refused = runner.invoke(app, ["solve", f])
    assert_refused(refused, "negative probability")
    result = runner.invoke(app, ["solve", f, "--logits", "--json"])
    assert result.exit_code == 0, result.stderr
    assert strict_json(result.stdout)["rows"][0]["alpha"] == pytest.approx(0.5, abs=8 * EPS64)


def test_chunked_solve_equals_one_block(tmp_path, runner, monkeypatch):
    """A batch larger than one chunk (with a bad row in a later chunk) gives the same rows as one
    block: the chunks' solutions are merged in order."""
    import geomix_cli.commands.solve as solve_command

    rng = np.random.default_rng(4)
    theta = rng.dirichlet(np.full(20, 0.5), size=23)
    target = rng.dirichlet(np.full(20, 0.5), size=23)
    theta[17, 3] = np.nan
    f = save_npz(tmp_path / "big.npz", pi_theta=theta, pi_t=target)
    whole = runner.invoke(app, ["solve", f, "--json"])
    monkeypatch.setattr(solve_command, "CHUNK_ELEMENTS", 100)  # 5 rows per chunk, 5 chunks
    chunked = runner.invoke(app, ["solve", f, "--json"])
    assert whole.exit_code == chunked.exit_code == 3
    a, b = strict_json(whole.stdout)["rows"], strict_json(chunked.stdout)["rows"]
    assert [r["row"] for r in b] == list(range(23))
    assert b[17]["status"] == "invalid"
    for ra, rb in zip(a, b):
        assert ra["status"] == rb["status"] and ra["message"] == rb["message"]
        if ra["alpha"] is not None:
            assert abs(ra["alpha"] - rb["alpha"]) <= 4 * EPS64
            assert abs(ra["chernoff"] - rb["chernoff"]) <= 4 * EPS64


# ------------------------------------------------------------------------------------------------
# entry points and import hygiene


def test_python_dash_m_help():
    result = subprocess.run([sys.executable, "-m", "geomix_cli", "--help"], capture_output=True,
                            text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "solve" in result.stdout


def test_importing_core_pulls_in_no_torch_matplotlib_or_pandas():
    code = ("import sys, geomix_cli.core; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'pandas') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_bfloat16_logits_solve_exactly_on_the_widened_values(suffix, tmp_path, runner):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    from scipy.special import log_softmax

    gen = torch.Generator().manual_seed(8)
    base = torch.randn(2, 300, generator=gen) * 3
    theta = (base + torch.randn(2, 300, generator=gen)).to(torch.bfloat16)
    target = (base + torch.randn(2, 300, generator=gen)).to(torch.bfloat16)
    f = str(tmp_path / f"bf16{suffix}")
    if suffix == ".pt":
        torch.save({"logits_theta": theta, "logits_t": target}, f)
    else:
        save_file({"logits_theta": theta, "logits_t": target}, f)
    result = runner.invoke(app, ["solve", f, "--json"])
    assert result.exit_code == 0, result.stderr
    payload = strict_json(result.stdout)
    assert payload["input_dtype"] == "bfloat16"
    lt = log_softmax(theta.float().numpy().astype(np.float64), axis=1)
    lT = log_softmax(target.float().numpy().astype(np.float64), axis=1)
    for i, row in enumerate(payload["rows"]):
        assert row["status"] == "ok"
        assert abs(row["alpha"] - reference_alpha_brentq(lt[i], lT[i])) <= 1e-12
