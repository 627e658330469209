"""Sharded sources (issue 15), single process: discovery, header-only layouts and row-block
readers, the memory planner, mergeable statistics, the results dataset and its resume, and the
CLI: a sharded solve / check gives the in-memory results row for row."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from geomix_cli.cli import app
from geomix_cli.errors import InputError
from geomix_cli.scale import memory
from geomix_cli.scale.stats import (QUANTILE_RELATIVE_ERROR, BitHistogram, ColumnSummary, Summary,
                                    exact_sum)

from conftest import REPO_ROOT
from scale_helpers import (bf16_round, make_real_shards, part_tables, read_results, real_rows,
                           write_safetensors)

SOLVE_NUMBERS = ["alpha", "kl_q_theta", "kl_q_target", "chernoff", "log_z", "ess_theta",
                 "ess_target", "alpha_entropy", "residual"]


@pytest.fixture(scope="module")
def real_shards(tmp_path_factory):
    return make_real_shards(tmp_path_factory.mktemp("real") / "shards")


def in_memory_rows(runner, path, *extra) -> list[dict]:
    """`geomix solve FILE --json` rows: the in-memory reference of one shard."""
    result = runner.invoke(app, ["solve", str(path), "--json", *extra])
    assert result.exit_code in (0, 3), result.stderr
    return json.loads(result.stdout)["rows"]


# ------------------------------------------------------------------------------------------------
# mergeable statistics


def test_quantiles_are_within_the_stated_bound_and_independent_of_the_merge_order():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.lognormal(0, 4, 5000), -rng.random(300), rng.random(700),
                             [0.0, -0.0, np.inf, np.nan, np.nan], np.full(40, 3.0)])
    finite = values[~np.isnan(values)]
    whole = BitHistogram.of(values)
    parts = np.array_split(rng.permutation(values), 9)
    forward = BitHistogram()
    for part in parts:
        forward = forward.merge(BitHistogram.of(part))
    backward = BitHistogram()
    for part in parts[::-1]:
        backward = BitHistogram.of(part).merge(backward)
    assert (forward.n, forward.missing) == (finite.size, 2)
    for q in np.linspace(0, 1, 401):
        exact = np.quantile(finite, q, method="inverted_cdf")
        got = whole.quantile(q)
        assert forward.quantile(q) == got == backward.quantile(q)
        if exact == 0 or not np.isfinite(exact):
            assert got == exact
        else:
            assert abs(got - exact) <= QUANTILE_RELATIVE_ERROR * abs(exact), (q, got, exact)


def test_single_valued_bins_report_their_value_exactly():
    assert BitHistogram.of([3, 3, 4, 3, 7]).quantile(0.5) == 3.0
    assert BitHistogram.of([0.5] * 10).quantile(0.99) == 0.5
    assert math.isnan(BitHistogram.of([np.nan]).quantile(0.5))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=False, width=64), min_size=1,
                max_size=60), st.integers(1, 5), st.floats(0, 1))
def test_property_merged_summaries_equal_the_summary_of_the_whole(values, n_parts, q):
    values = np.array(values)
    parts = np.array_split(values, n_parts)
    merged = Summary.merge_all(Summary({"n": len(p)}, {"x": ColumnSummary.of(p)}) for p in parts)
    whole = ColumnSummary.of(values)
    column = merged.columns["x"]
    assert merged.counters["n"] == values.size
    assert (column.n, column.missing) == (whole.n, whole.missing)
    assert column.quantile(q) == whole.quantile(q) or (math.isnan(column.quantile(q))
                                                      and math.isnan(whole.quantile(q)))
    finite = values[~np.isnan(values)]
    if finite.size:
        assert column.minimum == finite.min() and column.maximum == finite.max()
        assert column.total == exact_sum([exact_sum(p[~np.isnan(p)]) for p in parts if (~np.isnan(p)).any()])
        exact = np.quantile(finite, q, method="inverted_cdf")
        assert abs(column.quantile(q) - exact) <= QUANTILE_RELATIVE_ERROR * abs(exact) + 1e-300


# ------------------------------------------------------------------------------------------------
# discovery and layouts


def test_a_folder_lists_its_pair_files_in_name_order_and_ignores_the_rest(tmp_path):
    from geomix_cli.scale.shards import discover_shards

    for name in ("b.npz", "a.safetensors", "c.json", ".hidden.npz", "README.md"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    found = discover_shards(str(tmp_path))
    assert [s.label for s in found.shards] == ["a.safetensors", "b.npz", "c.json"]
    assert found.ignored == ["README.md"]


def test_globs_are_expanded_recursively_and_refuse_files_that_are_not_pairs(tmp_path):
    from geomix_cli.scale.shards import discover_shards, is_sharded_spec

    (tmp_path / "run" / "x").mkdir(parents=True)
    for name in ("run/1.npz", "run/x/2.npz", "run/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    spec = str(tmp_path / "run" / "**" / "*.npz")
    assert is_sharded_spec(spec)
    assert [s.label for s in discover_shards(spec).shards] == ["1.npz", "x/2.npz"]
    with pytest.raises(InputError, match="not a pair file"):
        discover_shards(str(tmp_path / "run" / "*"))
    with pytest.raises(InputError, match="matches no file"):
        discover_shards(str(tmp_path / "nothing" / "*.npz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="is a folder with no pair file in it"):
        discover_shards(str(tmp_path / "empty"))


def test_row_blocks_read_the_same_values_as_the_whole_file_readers(real_shards):
    """Every streamed layout, read in blocks of 1 row, gives exactly what io.load_source reads."""
    from geomix_cli.sources import load_source
    from geomix_cli.scale.shards import ShardRef, describe_shard

    for path in sorted(real_shards.iterdir()):
        layout = describe_shard(ShardRef.of(path, path.name))
        whole = load_source(str(path))
        assert layout.streamed and layout.kind == whole.kind
        assert layout.storage_dtype == whole.storage_dtype, path.name
        labels, flat = layout.kept_rows(0, layout.flat_rows)
        assert_array_equal(labels, whole.row_labels)
        if "positions" in whole.extra:
            b, t = layout.position_columns(labels, flat)
            assert_array_equal(b, whole.extra["positions"][:, 0])
            if t is not None:
                assert_array_equal(t, whole.extra["positions"][:, 1])
        with layout.block_reader() as reader:
            rows = [reader.read(f, f + 1)[0][0] for f in flat]
        from geomix_cli.core.validation import validate_rows

        log_p = validate_rows(np.stack(rows), layout.kind, name="x").log_p
        assert_array_equal(log_p, whole.log_pi_theta, err_msg=path.name)
    assert layout.splittable
    assert not describe_shard(ShardRef.of(real_shards / "c.npz", "c.npz")).splittable


def test_bfloat16_is_widened_exactly(tmp_path):
    from geomix_cli.scale.shards import ShardRef, describe_shard

    rng = np.random.default_rng(0)
    theta = rng.normal(0, 3, (4, 33)).astype(np.float32)
    path = write_safetensors(tmp_path / "b.safetensors", {"logits_theta": theta,
                                                          "logits_t": theta[::-1].copy()},
                             bf16=("logits_theta", "logits_t"))
    layout = describe_shard(ShardRef.of(__import__("pathlib").Path(path), "b"))
    assert layout.storage_dtype == "bfloat16"
    with layout.block_reader() as reader:
        block = reader.read(1, 3)[0]
    assert_array_equal(block, bf16_round(theta[1:3]))


@pytest.mark.parametrize("mutate, message", [
    (lambda h: h["logits_t"].update(data_offsets=[8, 24]), "overlap"),
    (lambda h: h["logits_t"].update(data_offsets=[8, 10**9]), "do not lie within"),
    (lambda h: h["logits_t"].update(shape=[2, -1]), "whole numbers >= 0"),
    (lambda h: h["logits_t"].update(shape=[2, True]), "whole numbers >= 0"),
    (lambda h: h["logits_t"].update(dtype="C64"), "unsupported safetensors dtype"),
    (lambda h: h["logits_t"].update(shape=[3, 2]), "needs 24 bytes"),
])
def test_corrupt_safetensors_headers_are_refused_before_any_mapping(tmp_path, mutate, message):
    """A shard's header is checked by io's own safetensors checks: the same line as a
    single-file run, before anything is mapped."""
    from geomix_cli.io import read_pair_file
    from geomix_cli.scale.shards import ShardRef, describe_shard

    x = np.ones((2, 2), dtype=np.float32)
    header = {"logits_theta": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
              "logits_t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 32]}}
    mutate(header)
    text = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    import struct

    path.write_bytes(struct.pack("<Q", len(text)) + text + x.tobytes() * 2)
    with pytest.raises(InputError, match=message) as sharded:
        describe_shard(ShardRef.of(path, "bad"))
    with pytest.raises(InputError) as whole:
        read_pair_file(str(path))
    assert sharded.value.one_line() == whole.value.one_line()


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\x93NUMPY\x01\x00", "saved under an .npz name"),
    (b"hello", "not an .npz archive"),
])
def test_npz_shards_are_refused_like_single_files(tmp_path, content, message):
    from geomix_cli.io import read_pair_file
    from geomix_cli.scale.shards import ShardRef, describe_shard

    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as sharded:
        describe_shard(ShardRef.of(path, "bad"))
    with pytest.raises(InputError) as whole:
        read_pair_file(str(path))
    assert sharded.value.one_line() == whole.value.one_line()


def test_a_pickled_npz_member_and_a_bad_mask_are_refused_like_single_files(tmp_path):
    from geomix_cli.io import read_pair_file
    from geomix_cli.scale.shards import ShardRef, describe_shard

    theta = np.ones((2, 3), dtype=np.float32)
    cases = {"pickled.npz": {"logits_theta": theta, "logits_t": np.array([object()] * 2)},
             "mask.npz": {"logits_theta": theta, "logits_t": theta, "mask": np.array([1, 2])}}
    for name, arrays in cases.items():
        path = tmp_path / name
        np.savez(path, **arrays)
        with pytest.raises(InputError) as sharded:
            describe_shard(ShardRef.of(path, name))
        with pytest.raises(InputError) as whole:
            read_pair_file(str(path))
        assert sharded.value.one_line() == whole.value.one_line(), name


# ------------------------------------------------------------------------------------------------
# the memory planner


def test_the_block_budget_follows_the_model_then_the_measured_peak(monkeypatch):
    per_row = memory.row_bytes(151_936, "solve", "logits", 2, bfloat16=True)
    budget = 2 << 30
    rows = memory.block_rows(budget, per_row, resident=200 << 20)
    assert rows * per_row <= budget - (200 << 20) - memory.RESERVE < (rows + 1) * per_row
    with pytest.raises(InputError, match="too small"):
        memory.block_rows(300 << 20, per_row, resident=300 << 20)
    # a process whose blocks really cost twice the model: after the first (half-size) block the
    # sizer sees it, and every later block fits the budget at the true cost
    resident, true_cost = 200 << 20, 2 * per_row
    state = {"peak": resident}
    monkeypatch.setattr(memory, "resident_bytes", lambda: resident)
    monkeypatch.setattr(memory, "reset_peak", lambda: state.update(peak=resident) or True)
    monkeypatch.setattr(memory, "peak_resident_bytes", lambda: state["peak"])
    sizer = memory.BlockSizer(budget, per_row)
    first = sizer.rows()
    assert first == rows // 2
    state["peak"] = resident + first * true_cost
    sizer.done(first)
    for _ in range(3):
        n = sizer.rows()
        assert resident + memory.RESERVE + n * true_cost <= budget < \
            resident + memory.RESERVE + (n + 1) * true_cost
        state["peak"] = resident + n * true_cost
        sizer.done(n)


def test_pieces_split_large_mapped_shards_and_keep_compressed_ones_whole(monkeypatch,
                                                                         real_shards):
    from geomix_cli.scale.pieces import RunOptions, plan_pieces
    from geomix_cli.scale.shards import discover_shards

    monkeypatch.setattr(memory, "PIECE_MAX_ROWS", 2)
    pieces, _ = plan_pieces(discover_shards(str(real_shards)).shards, RunOptions("solve"))
    spans = [(p.shard.label, p.flat_start, p.flat_stop, p.rows_hint) for p in pieces]
    assert spans == [("a.safetensors", 0, 2, 2), ("a.safetensors", 2, 4, 2),
                     ("b.npz", 0, 2, 2), ("b.npz", 2, 3, 1), ("c.npz", 0, 2, 2),
                     ("d.safetensors", 0, 2, 1), ("d.safetensors", 2, 3, 1),
                     ("e.npz", 0, 2, 1)]


def test_a_shard_larger_than_the_budget_is_never_read_whole(monkeypatch, tmp_path):
    """With --max-memory below a shard's size, every read asks for a block that fits, and the
    results are those of the in-memory solve."""
    from geomix_cli.core import diagnose, solve_alpha
    from geomix_cli.sources import load_source
    from geomix_cli.io import blocks
    from geomix_cli.scale.pieces import RunOptions, plan_pieces
    from geomix_cli.scale.runner import run_piece_streaming
    from geomix_cli.scale.shards import discover_shards

    rng = np.random.default_rng(5)
    vocab, n = 20_000, 24
    theta = rng.normal(0, 2, (n, vocab)).astype(np.float32)
    path = write_safetensors(tmp_path / "big.safetensors",
                             {"logits_theta": theta, "logits_t": theta + rng.normal(
                                 0, 1, (n, vocab)).astype(np.float32)})
    per_row = memory.row_bytes(vocab, "solve", "logits", 4)
    monkeypatch.setattr(memory, "resident_bytes", lambda: 100 << 20)
    monkeypatch.setattr(memory, "peak_resident_bytes", lambda: None)  # the model alone
    budget = (100 << 20) + memory.RESERVE + int(3.5 * per_row)  # 3 rows a block
    assert os.path.getsize(path) > 3 * 2 * vocab * 4
    reads = []
    original = blocks.PairBlockReader.read

    def spy(self, a, b):
        reads.append(b - a)
        return original(self, a, b)

    monkeypatch.setattr(blocks.PairBlockReader, "read", spy)
    (piece,), _ = plan_pieces(discover_shards(path).shards, RunOptions("solve"))
    table, error = run_piece_streaming(piece, RunOptions("solve"), budget, None)
    assert error is None and reads == [1] + [3] * 7 + [2]  # the first block: half
    whole = load_source(path)
    expected = diagnose(whole.log_pi_theta, whole.log_pi_t,
                        solve_alpha(whole.log_pi_theta, whole.log_pi_t))
    assert_allclose(table.column("alpha").to_numpy(), expected.solution.alpha, rtol=0, atol=1e-12)


def test_a_budget_without_room_for_one_row_is_refused_before_any_work(runner, real_shards,
                                                                      tmp_path):
    result = runner.invoke(app, ["solve", str(real_shards), "--out", str(tmp_path / "o.parquet"),
                                 "--max-memory", "2M"])
    assert result.exit_code == 2
    assert "--max-memory 2.0 MiB is too small" in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing left behind


# ------------------------------------------------------------------------------------------------
# the CLI: sharded = in memory


def test_sharded_solve_equals_the_in_memory_solve_row_for_row(runner, real_shards, tmp_path):
    out = tmp_path / "alpha.parquet"
    result = runner.invoke(app, ["solve", str(real_shards), "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    frame = read_results(out)
    assert list(frame.columns[:4]) == ["shard", "row", "position_b", "position_t"]
    for path in sorted(real_shards.iterdir()):
        expected = in_memory_rows(runner, path)
        got = frame[frame["shard"] == path.name]
        assert len(got) == len(expected) > 0, path.name
        for rec, (_, row) in zip(expected, got.iterrows()):
            assert row["row"] == rec["row"] and row["status"] == rec["status"] == "ok"
            assert row["iterations"] == rec["iterations"]
            if "position" in rec:
                assert [row["position_b"]] + ([] if np.isnan(row["position_t"])
                                              else [row["position_t"]]) == rec["position"]
            for name in SOLVE_NUMBERS:
                assert_allclose(row[name], rec[name], rtol=0, atol=1e-12,
                                err_msg=f"{path.name} row {rec['row']} {name}")
    assert (out / ".geomix-report").is_file()
    manifest = json.loads((out / "_geomix_manifest.json").read_text())
    assert manifest["complete"] and manifest["summary"]["rows"] == len(frame) == 12 - 1 + 1


def test_json_lines_and_json_carry_the_same_rows_as_the_dataset(runner, real_shards, tmp_path):
    out = tmp_path / "alpha.parquet"
    lines = runner.invoke(app, ["solve", str(real_shards), "--out", str(out), "--jsonl"])
    assert lines.exit_code == 0, lines.stderr
    rows = [json.loads(line) for line in lines.stdout.splitlines()]
    frame = read_results(out)
    assert [(r["shard"], r["row"]) for r in rows] == list(zip(frame["shard"], frame["row"]))
    assert_array_equal([r["alpha"] for r in rows], frame["alpha"].to_numpy())
    document = runner.invoke(app, ["solve", str(real_shards), "--json"])
    payload = json.loads(document.stdout)
    assert payload["rows"] == rows and payload["summary"]["statuses"] == {"ok": len(rows)}


def test_sharded_check_gives_the_in_memory_rows_and_totals(runner, real_shards, tmp_path):
    """check.parquet = check.csv's columns per row; the report's totals = the in-memory totals of
    the same rows."""
    from geomix_cli.commands.check import _totals, flat_record, records_from
    from geomix_cli.core.principles import check_rows
    from geomix_cli.sources import load_source

    out = tmp_path / "report"
    result = runner.invoke(app, ["check", str(real_shards), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    frame = read_results(out / "check.parquet")
    counts, meeting, with_alpha, within, n_rows = np.zeros(4, int), np.zeros(4, int), 0, 0, 0
    for path in sorted(real_shards.iterdir()):
        pairs = load_source(str(path))
        res = check_rows(pairs.log_pi_theta, pairs.log_pi_t, row_errors=pairs.row_errors)
        flat = [flat_record(r) for r in records_from(res, pairs.row_labels)]
        got = frame[frame["shard"] == path.name].to_dict("records")
        assert len(got) == len(flat)
        assert list(frame.columns) == ["shard", "row", "position_b", "position_t"] + [
            k for k in flat[0] if k != "row"]  # check.csv's columns, in its order
        for want, have in zip(flat, got):
            for key, value in want.items():
                if isinstance(value, float) and not np.isfinite(value):
                    assert have[key] is None or np.isnan(have[key]), key
                elif isinstance(value, float):
                    assert_allclose(have[key], value, rtol=0, atol=1e-12, err_msg=key)
                else:
                    assert have[key] == value, key
        totals = _totals(res)
        counts += totals["tokens"]
        meeting += totals["meeting"]
        with_alpha += totals["rows_with_alpha"]
        within += totals["ess_within_10pct"]
        n_rows += totals["rows"]
    assert payload["totals"]["tokens"] == counts.tolist()
    assert payload["totals"]["meeting"] == meeting.tolist()
    assert (payload["totals"]["rows_with_alpha"], payload["totals"]["ess_within_10pct"],
            payload["totals"]["rows"]) == (with_alpha, within, n_rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["totals"] == payload["totals"]
    report = (out / "report.md").read_text()
    assert "## Four behaviour cases, all rows" in report and (out / "four_cases.png").is_file()


def test_a_bad_shard_gives_invalid_rows_and_exit_3_with_every_other_shard_complete(
        runner, real_shards, tmp_path):
    import shutil

    folder = tmp_path / "mixed"
    shutil.copytree(real_shards, folder)
    (folder / "zz_corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    theta, target = real_rows()
    write_safetensors(folder / "m_wrong_shape.safetensors", {"logits_theta": theta[:2],
                                                             "logits_t": target[:3]})
    bad_row = theta[:3].astype(np.float32).copy()
    bad_row[1, 5] = np.nan
    np.savez(folder / "n_nan_row.npz", logits_theta=bad_row, logits_t=target[:3])
    out = tmp_path / "alpha.parquet"
    result = runner.invoke(app, ["solve", str(folder), "--out", str(out)])
    assert result.exit_code == 3, result.stderr
    assert "zz_corrupt.npz" in result.stderr and "Traceback" not in result.stderr
    frame = read_results(out)
    corrupt = frame[frame["shard"] == "zz_corrupt.npz"]
    assert len(corrupt) == 1 and corrupt["status"].tolist() == ["invalid"]
    assert "shard unusable" in corrupt["message"].iloc[0] and np.isnan(corrupt["row"].iloc[0])
    shape = frame[frame["shard"] == "m_wrong_shape.safetensors"]
    assert shape["status"].tolist() == ["invalid"] and "never broadcast" in shape["message"].iloc[0]
    nan_rows = frame[frame["shard"] == "n_nan_row.npz"]
    assert nan_rows["status"].tolist() == ["ok", "invalid", "ok"]
    good = frame[frame["shard"].isin([p.name for p in real_shards.iterdir()])]
    assert len(good) == 12 and (good["status"] == "ok").all()


def test_a_transient_failure_is_retried_and_changes_nothing(runner, real_shards, tmp_path,
                                                            monkeypatch):
    clean = tmp_path / "clean.parquet"
    assert runner.invoke(app, ["solve", str(real_shards), "--out", str(clean)]).exit_code == 0
    monkeypatch.setenv("GEOMIX_TEST_FAIL_ONCE", f"1@{tmp_path}")
    out = tmp_path / "retried.parquet"
    result = runner.invoke(app, ["solve", str(real_shards), "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert "injected transient failure in piece 1); retrying (2 of 3)" in result.stderr
    assert (tmp_path / "failed-once-1").exists()
    assert read_results(out).equals(read_results(clean))


def test_a_piece_that_keeps_failing_stops_the_run_with_one_line_and_keeps_the_parts(
        runner, real_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("GEOMIX_TEST_FAIL_ONCE", f"2@{tmp_path}")
    out = tmp_path / "alpha.parquet"
    result = runner.invoke(app, ["solve", str(real_shards), "--out", str(out), "--retries", "0"])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "piece 2" in errors[0] and "--resume" in errors[0]
    assert not out.exists()
    partial = tmp_path / ".alpha.parquet.geomix-partial"
    assert sorted(p.name[:10] for p in partial.glob("part-*")) == ["part-00000", "part-00001"]
    resumed = runner.invoke(app, ["solve", str(real_shards), "--out", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.stderr
    assert "2 reused" in resumed.stdout


# ------------------------------------------------------------------------------------------------
# resume after a killed run


def _geomix(*args, env=None):
    return subprocess.run([sys.executable, "-m", "geomix_cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=REPO_ROOT,
                          timeout=300)


def test_resume_after_a_killed_run_gives_the_same_parquet(real_shards, tmp_path):
    clean = tmp_path / "clean.parquet"
    assert _geomix("solve", str(real_shards), "--out", str(clean)).returncode == 0
    out = tmp_path / "alpha.parquet"
    killed = _geomix("solve", str(real_shards), "--out", str(out),
                     env={"GEOMIX_TEST_KILL_AFTER_PARTS": "3"})
    assert killed.returncode == -9, killed.stderr
    partial = tmp_path / ".alpha.parquet.geomix-partial"
    assert not out.exists() and len(list(partial.glob("part-*.parquet"))) == 3
    resumed = _geomix("solve", str(real_shards), "--out", str(out), "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert not partial.exists()
    clean_parts, parts = part_tables(clean), part_tables(out)
    assert list(parts) == list(clean_parts)
    for name in parts:
        assert parts[name].equals(clean_parts[name]), name
    # nothing to do the second time: every part is reused
    again = _geomix("solve", str(real_shards), "--out", str(out), "--resume")
    assert again.returncode == 0 and "5 reused" in again.stdout


def test_resume_refuses_results_made_with_other_options(runner, real_shards, tmp_path):
    out = tmp_path / "alpha.parquet"
    assert runner.invoke(app, ["solve", str(real_shards), "--out", str(out)]).exit_code == 0
    result = runner.invoke(app, ["solve", str(real_shards), "--out", str(out), "--resume",
                                 "--method", "brentq"])
    assert result.exit_code == 2 and "other options (method)" in result.stderr
    assert (out / "_geomix_manifest.json").is_file()  # left as it was


def test_resume_recomputes_a_shard_whose_file_changed(runner, real_shards, tmp_path):
    import shutil

    folder = tmp_path / "shards"
    shutil.copytree(real_shards, folder)
    out = tmp_path / "alpha.parquet"
    assert runner.invoke(app, ["solve", str(folder), "--out", str(out)]).exit_code == 0
    theta, target = real_rows()
    np.savez(folder / "b.npz", logits_theta=theta[4:6].astype(np.float32),
             logits_t=target[4:6].astype(np.float32))
    result = runner.invoke(app, ["solve", str(folder), "--out", str(out), "--resume"])
    assert result.exit_code == 0 and "4 reused" in result.stdout
    assert (read_results(out)["shard"] == "b.npz").sum() == 2


# ------------------------------------------------------------------------------------------------
# output rules


def test_out_never_replaces_what_geomix_did_not_write(runner, real_shards, tmp_path):
    user_file = tmp_path / "notes.txt"
    user_file.write_text("mine")
    user_folder = tmp_path / "thesis"
    user_folder.mkdir()
    (user_folder / "thesis.tex").write_text("mine too")
    for target, fragment in ((user_file, "is a regular file, not a folder"),
                             (user_folder, "not empty and not a geomix report"),
                             (real_shards.parent, "holds the input")):
        result = runner.invoke(app, ["solve", str(real_shards), "--out", str(target)])
        assert result.exit_code == 2, (target, result.stderr)
        assert fragment in result.stderr and len(result.stderr.splitlines()) == 1
    assert user_file.read_text() == "mine" and (user_folder / "thesis.tex").read_text() == \
        "mine too"
    out = tmp_path / "empty"
    out.mkdir()
    assert runner.invoke(app, ["solve", str(real_shards), "--out", str(out)]).exit_code == 0
    assert runner.invoke(app, ["solve", str(real_shards), "--out", str(out)]).exit_code == 0


def test_part_files_honour_the_umask(runner, real_shards, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "alpha.parquet"
        assert runner.invoke(app, ["solve", str(real_shards), "--out", str(out)]).exit_code == 0
    finally:
        os.umask(old)
    modes = {oct(p.stat().st_mode & 0o777) for p in out.glob("part-*.parquet")}
    assert modes == {"0o644"}


def test_in_memory_options_are_refused_on_sharded_runs(runner, real_shards):
    result = runner.invoke(app, ["solve", str(real_shards), "--rows", "0:2"])
    assert result.exit_code == 2 and "--rows" in result.stderr
    result = runner.invoke(app, ["solve", str(real_shards), "--resume"])
    assert result.exit_code == 2 and "give --out" in result.stderr


def test_sharded_compare_alpha_gives_the_in_memory_records(runner, real_shards, tmp_path):
    from geomix_cli.commands.compare_alpha import compare_case
    from geomix_cli.sources import load_source

    out = tmp_path / "cmp"
    principles = ["kl-symmetry", "half", "ess-balance"]
    result = runner.invoke(app, ["compare-alpha", str(real_shards), "--out", str(out), "-p",
                                 ",".join(principles), "--json"])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    frame = read_results(out / "compare.parquet")
    from geomix_cli.commands.compare_alpha import RECORD_FIELDS

    assert list(frame.columns) == ["shard", "row", "position_b", "position_t"] + [
        f for f in RECORD_FIELDS if f not in ("case", "row", "solve_time_ms_per_row")]
    for path in sorted(real_shards.iterdir()):
        pairs = load_source(str(path))
        records = compare_case(path.name, pairs.log_pi_theta, pairs.log_pi_t, pairs.row_labels,
                               pairs.row_errors, principles)
        got = frame[frame["shard"] == path.name]
        for rec in records:
            row = got[(got["row"] == rec["row"]) & (got["principle"] == rec["principle"])]
            assert len(row) == 1 and row["status"].iloc[0] == rec["status"]
            for name in ("alpha", "kl_q_theta", "kl_gap", "chernoff", "min_ess",
                         "four_case_fraction"):
                assert_allclose(row[name].iloc[0], rec[name], rtol=0, atol=1e-12, err_msg=name)
    medians = {m["principle"]: m for m in payload["summary"]}
    assert list(medians) == principles and medians["half"]["median_alpha"] == 0.5
    assert all(m["with_alpha"] == m["rows"] == 12 for m in medians.values())
    assert (out / "report.md").read_text().startswith("# compare-alpha")


def test_a_second_run_on_the_same_output_refuses_while_the_first_writes(runner, real_shards,
                                                                        tmp_path):
    from geomix_cli.scale.store import ResultStore

    out = tmp_path / "alpha.parquet"
    first = ResultStore(out, command="solve", source=str(real_shards), options={},
                        options_digest="x", inputs=[], resume=False)
    first.open()
    from geomix_cli.io.writers import HOST_TAG

    # a part being written by the live first run: the lock speaks, not this unlisted file
    (first.dataset / f".part-00000-000000000000.parquet.{HOST_TAG}.{os.getpid()}.abcdefgh.tmp"
     ).write_bytes(b"PAR1")
    try:
        result = runner.invoke(app, ["solve", str(real_shards), "--out", str(out)])
        assert result.exit_code == 2 and "another geomix run is writing" in result.stderr
        assert first.partial.is_dir()  # the first run's folder is untouched
    finally:
        first.close()
