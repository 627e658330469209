"""Readers, validation and writers (io.py, core/validation.py) and the generators (cases.py).

Every file is written here by the library that owns the format (numpy, json, pandas, pyarrow,
safetensors, torch), and read back through geomix; expected log-probabilities are computed here
with scipy's log_softmax from the values as stored."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import log_softmax

from geomix_cli.core.validation import sum_tolerance, validate_pair, validate_rows
from geomix_cli.errors import InputError
from geomix_cli.io import dumps_json, write_json_atomic, write_pairs_npz
from geomix_cli.sources import load_source, parse_row_selection

from conftest import EPS64, SMOLLM2_SAMPLE

EPS32 = float(np.finfo(np.float32).eps)


def rows_log_probs(p):
    with np.errstate(divide="ignore"):
        p = np.atleast_2d(np.asarray(p, dtype=np.float64))
        return np.log(p) - np.log(p.sum(axis=1, keepdims=True))


@pytest.fixture
def probs_pair():
    rng = np.random.default_rng(0)
    theta = rng.dirichlet(np.ones(6), size=3)
    target = rng.dirichlet(np.ones(6), size=3)
    theta[1, 2] = 0.0
    theta[1] /= theta[1].sum()
    return theta, target


# ------------------------------------------------------------------------------------------------
# every format reads back what its own library wrote


def test_npz_probs_and_logits(tmp_path, probs_pair):
    theta, target = probs_pair
    np.savez(tmp_path / "p.npz", pi_theta=theta, pi_t=target)
    pairs = load_source(str(tmp_path / "p.npz"))
    assert pairs.kind == "probs" and pairs.n_rows == 3 and pairs.vocab_size == 6
    assert_allclose(pairs.log_pi_theta, rows_log_probs(theta), rtol=4 * EPS64)
    assert pairs.log_pi_theta[1, 2] == -np.inf  # a zero stays an exact zero, no smoothing
    logits = np.log(theta + 0.1)
    np.savez(tmp_path / "l.npz", logits_theta=logits, logits_t=logits[::-1])
    pairs = load_source(str(tmp_path / "l.npz"))
    assert pairs.kind == "logits"
    assert_allclose(pairs.log_pi_t, log_softmax(logits[::-1], axis=1), rtol=8 * EPS64)


def test_json_rows_with_minus_inf_spelled_as_text(tmp_path):
    path = tmp_path / "pair.json"
    path.write_text(json.dumps({"logits_theta": [[0.0, "-inf", 1.0], [2.0, 1.0, "-Infinity"]],
                                "logits_t": [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
                                "description": "ignored"}))
    pairs = load_source(str(path))
    assert pairs.log_pi_theta[0, 1] == -np.inf and pairs.log_pi_theta[1, 2] == -np.inf
    assert_allclose(pairs.log_pi_theta[0, [0, 2]], log_softmax([0.0, 1.0]), rtol=4 * EPS64)
    # Python's json also writes the bare literal -Infinity; it is read the same way
    path.write_text('{"logits_theta": [0, -Infinity], "logits_t": [0, 0]}')
    assert load_source(str(path)).log_pi_theta[0, 1] == -np.inf


def test_csv_long_format_with_row_column(tmp_path, probs_pair):
    import pandas as pd

    theta, target = probs_pair
    frame = pd.DataFrame({"row": np.repeat(np.arange(3), 6), "pi_theta": theta.ravel(),
                          "pi_t": target.ravel(), "token": [f"t{i}" for i in range(18)]})
    frame.to_csv(tmp_path / "p.csv", index=False)
    pairs = load_source(str(tmp_path / "p.csv"))
    assert_allclose(pairs.log_pi_t, rows_log_probs(target), rtol=1e-12)  # text round trip
    frame.to_parquet(tmp_path / "p.parquet")
    pairs = load_source(str(tmp_path / "p.parquet"))
    assert_allclose(pairs.log_pi_t, rows_log_probs(target), rtol=4 * EPS64)


def test_csv_minus_inf_logits(tmp_path):
    (tmp_path / "l.csv").write_text("logits_theta,logits_t\n1.0,-inf\n-Infinity,2\n0.5,0.3\n")
    pairs = load_source(str(tmp_path / "l.csv"))
    assert pairs.log_pi_t[0, 0] == -np.inf and pairs.log_pi_theta[0, 1] == -np.inf


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_safetensors_numpy_dtypes(tmp_path, dtype):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, size=(2, 50)).astype(dtype)
    save_file({"logits_theta": logits, "logits_t": logits[::-1].copy()}, str(tmp_path / "x.safetensors"))
    pairs = load_source(str(tmp_path / "x.safetensors"))
    assert pairs.storage_dtype == dtype
    assert_allclose(pairs.log_pi_theta, log_softmax(logits.astype(np.float64), axis=1),
                    rtol=8 * EPS64, atol=8 * EPS64)


def test_bfloat16_safetensors_and_pt_are_widened_exactly(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(2)
    theta = (torch.randn(3, 64, generator=gen) * 4).to(torch.bfloat16)
    target = (torch.randn(3, 64, generator=gen) * 4).to(torch.bfloat16)
    # the widened values, by torch itself (bfloat16 -> float32 is exact)
    expected = log_softmax(theta.float().numpy().astype(np.float64), axis=1)
    save_file({"logits_theta": theta, "logits_t": target}, str(tmp_path / "b.safetensors"))
    torch.save({"logits_theta": theta, "logits_t": target}, tmp_path / "b.pt")
    for name in ("b.safetensors", "b.pt"):
        pairs = load_source(str(tmp_path / name))
        assert pairs.storage_dtype == "bfloat16", name
        assert_allclose(pairs.log_pi_theta, expected, rtol=8 * EPS64, atol=8 * EPS64,
                        err_msg=name)


def test_bfloat16_probabilities_pass_the_sum_check_for_their_dtype(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(4, 1000, generator=gen) * 3, dim=-1).to(torch.bfloat16)
    r = torch.softmax(torch.randn(4, 1000, generator=gen) * 3, dim=-1).to(torch.bfloat16)
    off = np.abs(p.double().sum(-1).numpy() - 1).max()
    assert off > sum_tolerance("float32", 1000)  # a float32 tolerance would refuse them ...
    save_file({"pi_theta": p, "pi_t": r}, str(tmp_path / "p.safetensors"))
    pairs = load_source(str(tmp_path / "p.safetensors"))
    assert all(e is None for e in pairs.row_errors)  # ... the bfloat16 one accepts them


def test_pt_float16_logits(tmp_path):
    torch = pytest.importorskip("torch")
    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(4)).half()
    torch.save({"logits_theta": logits, "logits_t": logits.flip(0)}, tmp_path / "h.pt")
    pairs = load_source(str(tmp_path / "h.pt"))
    assert pairs.storage_dtype == "float16"
    assert_allclose(pairs.log_pi_theta, log_softmax(logits.double().numpy(), axis=1),
                    rtol=8 * EPS64, atol=8 * EPS64)


def test_the_real_sample_loads_as_float16_logits():
    pairs = load_source(str(SMOLLM2_SAMPLE))
    assert (pairs.n_rows, pairs.vocab_size) == (12, 49152)
    assert pairs.kind == "logits" and pairs.storage_dtype == "float16"
    assert pairs.meta is not None and len(pairs.meta) == 12


# ------------------------------------------------------------------------------------------------
# validation


def test_float32_softmax_rows_of_a_large_vocabulary_are_accepted():
    # Regression: the tolerance was max(2 eps, 1e-6); torch's float32 softmax over 50k tokens
    # sums off by ~5e-6 and such rows were refused.
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(5)
    p = torch.softmax(torch.randn(8, 50_000, generator=gen) * 3, dim=-1).numpy()
    r = torch.softmax(torch.randn(8, 50_000, generator=gen) * 3, dim=-1).numpy()
    assert np.abs(p.astype(np.float64).sum(1) - 1).max() > 1e-6
    _, _, errors = validate_pair(p, r, "probs")
    assert errors == [None] * 8


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_stored_normalised_rows_pass_and_real_mistakes_do_not(dtype):
    """Whatever the dtype, a normalised row stored in it passes the sum check, and a row off by
    5% (weights that were never normalised) is refused."""
    rng = np.random.default_rng(9)
    p = rng.dirichlet(np.ones(5000), size=4).astype(dtype)
    assert validate_rows(p, "probs", name="p").row_errors == [None] * 4
    off = (p.astype(np.float64) * 1.05).astype(dtype)
    errors = validate_rows(off, "probs", name="p").row_errors
    assert all(e is not None and "off from 1 by more than" in e for e in errors)
    assert sum_tolerance(dtype, 5000) < 0.05


def test_rows_off_by_more_than_the_tolerance_are_refused_unless_renormalised():
    theta = np.array([[0.5, 0.5], [0.6, 0.6]])
    target = np.array([[0.3, 0.7], [0.3, 0.7]])
    _, _, errors = validate_pair(theta, target, "probs")
    assert errors[0] is None
    assert "sum to 1.2" in errors[1] and "--renormalize" in errors[1]
    log_theta, _, errors = validate_pair(theta, target, "probs", renormalize=True)
    assert errors == [None, None]
    assert_allclose(log_theta[1], np.log([0.5, 0.5]), rtol=4 * EPS64)


def test_a_batch_with_one_bad_probability_row_keeps_the_others():
    # Regression: np.where(bad, 1.0, x) broadcast a [B] mask against [B, V] and crashed
    theta = np.array([[0.5, 0.5], [0.5, np.nan], [0.2, 0.8], [-0.1, 1.1]])
    target = np.full((4, 2), 0.5)
    log_theta, _, errors = validate_pair(theta, target, "probs")
    assert errors[0] is None and errors[2] is None
    assert "NaN at column 1" in errors[1] and "negative probability at column 0" in errors[3]
    assert_allclose(log_theta[2], np.log([0.2, 0.8]), rtol=4 * EPS64)


@pytest.mark.parametrize("values, kind, expected", [
    ([[0.5, np.inf]], "probs", "infinite probability at column 1"),
    ([[0.5, -np.inf]], "probs", "infinite probability at column 1"),
    ([[0.0, 0.0]], "probs", "all probabilities are 0"),
    ([[-np.inf, -np.inf]], "logits", "every logit is -inf"),
    ([[0.0, np.inf]], "logits", "+inf logit at column 1"),
    ([[np.nan, 0.0, np.nan]], "logits", "NaN at column 0 (and 1 more)"),
])
def test_row_value_errors(values, kind, expected):
    rows = validate_rows(np.array(values), kind, name="x")
    assert rows.row_errors[0] is not None and expected in rows.row_errors[0]


@pytest.mark.parametrize("values, expected", [
    (np.array([], dtype=np.float64), "empty array"),
    (np.zeros((2, 0)), "empty array"),
    (np.float64(1.0), "empty array"),
    (np.zeros((2, 2, 2, 2)), "4 dimensions"),
    (np.array(["0.5", "0.5"]), "non-numeric dtype"),
    (np.array([True, False]), "non-numeric dtype"),
    (np.array([0.5 + 0j, 0.5]), "non-numeric dtype"),
])
def test_structural_errors_raise_input_error_naming_the_key(values, expected):
    with pytest.raises(InputError, match=expected) as info:
        validate_rows(values, "probs", name="pi_theta", file="f.npz")
    assert "f.npz" in info.value.one_line() and "pi_theta" in info.value.one_line()


def test_shapes_that_differ_are_never_broadcast():
    with pytest.raises(InputError, match="never broadcast"):
        validate_pair(np.full((1, 4), 0.25), np.full((3, 4), 0.25), "probs")


def test_log_softmax_is_accurate_for_shifted_logits():
    # Regression: x - logsumexp(x) carries eps * |x| of rounding; x - max(x) first only
    # eps * |log p|. A shift of 1e4 made identical distributions differ by ~1e-12 in log p.
    rng = np.random.default_rng(6)
    x = np.round(rng.normal(0, 5, size=(2, 300)) * 1024) / 1024  # so that x + 1e4 is exact
    base = validate_rows(x, "logits", name="x").log_p
    shifted = validate_rows(x + 1e4, "logits", name="x").log_p
    assert_allclose(shifted, base, rtol=0, atol=4 * EPS64 * (1 + np.abs(base).max()))


# ------------------------------------------------------------------------------------------------
# row selection, generators


@pytest.mark.parametrize("text, expected", [
    ("3", [3]), ("0:3", [0, 1, 2]), ("0,2,5:7", [0, 2, 5, 6]), ("-1", [9]), (":2", [0, 1]),
    ("8:", [8, 9]),
])
def test_row_selection(text, expected):
    assert_array_equal(parse_row_selection(text, 10), expected)


@pytest.mark.parametrize("text, message", [
    ("10", "row 10 does not exist"), ("-11", "does not exist"), ("a", "is not like"),
    ("5:2", "selects no row"), ("1:x", "is not like"),
])
def test_bad_row_selection(text, message):
    with pytest.raises(InputError, match=message):
        parse_row_selection(text, 10, "f.npz")


def test_generators_are_deterministic_given_the_seed_and_differ_across_seeds():
    a = load_source("gen:llm-like:V=50,rows=3,seed=7")
    b = load_source("gen:llm-like:V=50,rows=3,seed=7")
    c = load_source("gen:llm-like:V=50,rows=3,seed=8")
    assert_array_equal(a.log_pi_theta, b.log_pi_theta)
    assert not np.array_equal(a.log_pi_theta, c.log_pi_theta)


def test_two_point_and_delta_uniform_generators_make_what_they_say():
    pairs = load_source("gen:two-point:theta=0.9,target=0.2")
    assert_allclose(np.exp(pairs.log_pi_theta), [[0.9, 0.1]], rtol=4 * EPS64)
    assert_allclose(np.exp(pairs.log_pi_t), [[0.2, 0.8]], rtol=4 * EPS64)
    # eps / (V - 1) far below float64's smallest normal stays exact in log space
    pairs = load_source("gen:delta-uniform:V=1000,eps=1e-300")
    assert_allclose(pairs.log_pi_theta[0, 1], np.log(1e-300) - np.log(999), rtol=4 * EPS64)
    assert_allclose(pairs.log_pi_t, np.full((1, 1000), -np.log(1000)), rtol=4 * EPS64)


def test_dirichlet_generator_with_zeros_has_partial_supports():
    pairs = load_source("gen:dirichlet:V=20,rows=5,zeros=4,seed=1")
    assert np.all(np.sum(np.isinf(pairs.log_pi_theta), axis=1) == 4)
    assert np.all(np.sum(np.isinf(pairs.log_pi_t), axis=1) == 4)


@pytest.mark.parametrize("spec, message", [
    ("gen:nope", "unknown generator 'nope'"),
    ("gen:zipf:q=1", "unknown parameter 'q'"),
    ("gen:zipf:s=abc", "is not a number"),
    ("gen:zipf:V=10.5", "whole number"),
    ("gen:zipf:rows=0", "rows must be at least 1"),
    ("gen:two-point:theta=1.5", "must lie in"),
    ("gen:zipf:s", "not key=value"),
])
def test_bad_generator_specs(spec, message):
    with pytest.raises(InputError, match=message) as info:
        load_source(spec)
    assert spec in info.value.one_line()


# ------------------------------------------------------------------------------------------------
# writers


def test_dumps_json_writes_null_for_non_finite_numbers():
    text = dumps_json({"a": np.nan, "b": [np.inf, -np.inf, 1.5], "c": np.float32(2.0),
                       "d": np.arange(2), "e": np.bool_(True)})
    assert json.loads(text) == {"a": None, "b": [None, None, 1.5], "c": 2.0, "d": [0, 1],
                                "e": True}


def test_atomic_writers_leave_no_temporary_files(tmp_path):
    write_json_atomic(tmp_path / "out.json", {"x": 1})
    write_json_atomic(tmp_path / "out.json", {"x": 2})
    assert json.loads((tmp_path / "out.json").read_text()) == {"x": 2}
    assert os.listdir(tmp_path) == ["out.json"]


def test_write_pairs_npz_round_trip(tmp_path):
    theta = np.array([[0.1, 0.9], [0.5, 0.5]])
    write_pairs_npz(tmp_path / "w.npz", theta=theta, target=theta[::-1], kind="probs",
                    meta=["a", "b"])
    pairs = load_source(str(tmp_path / "w.npz"))
    assert pairs.meta == ["a", "b"]
    assert_allclose(pairs.log_pi_theta, np.log(theta), rtol=4 * EPS64)


# ------------------------------------------------------------------------------------------------
# `geomix cases export` (the writer of generator output)


def test_cases_export_writes_what_the_generator_makes_and_never_overwrites(tmp_path, runner):
    from geomix_cli.cli import app

    out = tmp_path / "x.npz"
    spec = "gen:dirichlet:V=7,rows=3,zeros=2,seed=4"
    result = runner.invoke(app, ["cases", "export", spec, str(out)])
    assert result.exit_code == 0, result.stderr
    exported, generated = load_source(str(out)), load_source(spec)
    assert_array_equal(exported.log_pi_theta, generated.log_pi_theta)
    assert_array_equal(exported.log_pi_t, generated.log_pi_t)
    before = out.read_bytes()
    again = runner.invoke(app, ["cases", "export", "gen:zipf:V=5", str(out)])
    assert again.exit_code == 2 and "already exists" in again.stderr
    assert len(again.stderr.splitlines()) == 1 and str(out) in again.stderr
    assert out.read_bytes() == before
    forced = runner.invoke(app, ["cases", "export", "gen:zipf:V=5", str(out), "--force"])
    assert forced.exit_code == 0 and load_source(str(out)).vocab_size == 5


@pytest.mark.parametrize("argv, message", [
    (["not-a-spec", "o.npz"], "expected a generator spec"),
    (["gen:zipf", "o.csv"], "output must end in .npz"),
    (["gen:nope", "o.npz"], "unknown generator"),
])
def test_cases_export_refusals(argv, message, tmp_path, runner, monkeypatch):
    from geomix_cli.cli import app

    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["cases", "export", *argv])
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# layers, and JSON written row by row


def test_io_imports_no_layer_above_it():
    """sources -> cases -> io -> core: importing io loads neither cases nor sources; the old name
    io.load_source still works (resolved on use)."""
    import subprocess
    import sys

    code = ("import sys, geomix_cli.io as io; "
            "assert 'geomix_cli.cases' not in sys.modules, 'io imported cases'; "
            "assert 'geomix_cli.sources' not in sys.modules, 'io imported sources'; "
            "from geomix_cli.sources import load_source; assert io.load_source is load_source")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_json_rows_are_the_text_json_dumps_writes():
    from geomix_cli.io import json_rows

    rng = np.random.default_rng(0)
    floats = rng.normal(size=50) * 10.0 ** rng.integers(-300, 300, size=50)
    floats[[3, 7, 11]] = [np.nan, np.inf, -np.inf]
    with np.errstate(over="ignore"):  # float32 overflows to inf: written as null too
        narrow = floats.astype(np.float32)
    columns = {"row": np.arange(50), "x": floats, "f32": narrow,
               "status": np.array(["ok", "no-root"] * 25),
               "message": ["", 'a "quoted" \\ line\nwith ünïcode'] * 25,
               "position": np.arange(100).reshape(50, 2), "flag": [True, None] * 25}
    got = list(json_rows(columns, 50, chunk=7))
    for i, text in enumerate(got):
        expected = {k: v[i] for k, v in columns.items()}
        assert text == json.dumps(json.loads(dumps_json(expected, indent=None)),
                                  ensure_ascii=False)


def test_solve_json_streams_exactly_the_records(tmp_path, runner, monkeypatch):
    """The streamed `solve --json` holds what diagnose(...).records() says for every kind of row
    (ok, invalid, no-root, disjoint support, degenerate), with positions of a masked [B, T, V]
    input, and the chunk size changes no byte."""
    from geomix_cli.cli import app
    from geomix_cli.commands import solve as solve_module
    from geomix_cli.core import diagnose, solve_alpha

    theta = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.1, 0.2, 0.7],
                      [np.nan, 0.5, 0.5], [0.3, 0.3, 0.4]])
    target = np.array([[0.25, 0.25, 0.5], [0.2, 0.3, 0.5], [0.0, 0.5, 0.5], [0.6, 0.3, 0.1],
                       [0.2, 0.3, 0.5], [0.5, 0.2, 0.3]])
    np.savez(tmp_path / "mixed.npz", pi_theta=theta.reshape(2, 3, 3),
             pi_t=target.reshape(2, 3, 3), mask=np.array([[1, 1, 1], [1, 1, 0]]))
    first = runner.invoke(app, ["solve", str(tmp_path / "mixed.npz"), "--json"])
    assert first.exit_code == 3, first.stderr
    monkeypatch.setattr(solve_module, "JSON_CHUNK_ROWS", 2)
    second = runner.invoke(app, ["solve", str(tmp_path / "mixed.npz"), "--json"])
    assert second.stdout == first.stdout
    pairs = load_source(str(tmp_path / "mixed.npz"))
    records = diagnose(pairs.log_pi_theta, pairs.log_pi_t,
                       solve_alpha(pairs.log_pi_theta, pairs.log_pi_t, "newton",
                                   row_errors=pairs.row_errors)).records(pairs.row_labels)
    for rec in records:
        rec["position"] = [int(v) for v in pairs.extra["positions"][rec["row"]]]
    payload = json.loads(first.stdout)
    assert payload["rows"] == json.loads(dumps_json(records))
    assert {r["status"] for r in payload["rows"]} >= {"ok", "invalid", "degenerate",
                                                      "disjoint-support"}
