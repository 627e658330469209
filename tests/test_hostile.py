"""Hostile and faulty inputs through the real `geomix` program: one line, the documented exit code,
never a traceback, never a hang.

Each case builds its input in a fresh folder and names the fragments the one error line must
hold. Generator specs and options first, then files that are not what they claim, then sizes that
do not fit in memory (refused up front, with the estimate and the memory available), then the
golden-case library and a closed stdout.
"""

from __future__ import annotations

import io
import json
import os
import resource
import struct
import subprocess
import zipfile

import numpy as np
import pytest

from hostile_helpers import assert_refused, popen_geomix, run_geomix, write_csv, write_npz

GiB = 1 << 30


def _address_space(limit: int):
    """preexec_fn: cap the child's address space (ulimit -v), making 'the memory available'
    small and the same on every machine."""
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


# ----------------------------------------------------------------------------------------------
# generator specs and options

SPEC_CASES = {
    "V=inf": (["solve", "gen:llm-like:V=inf"], "must be a finite number"),
    "V=nan": (["solve", "gen:llm-like:V=nan"], "must be a finite number"),
    "scale=-inf": (["solve", "gen:llm-like:scale=-inf"], "must be a finite number"),
    "seed=-1": (["solve", "gen:llm-like:seed=-1"], "seed must be at least 0"),
    "seed=2**64": (["solve", "gen:llm-like:seed=18446744073709551616"], "at most 2**63 - 1"),
    "V twice": (["solve", "gen:llm-like:V=10,V=20"], "'V' is given more than once"),
    "V=1.5": (["solve", "gen:zipf:V=1.5"], "must be a whole number"),
    "V=1": (["check", "gen:llm-like:V=1"], "V must be at least 2"),
    "rows=-3": (["solve", "gen:dirichlet:rows=-3"], "rows must be at least 1"),
    "verify --seed -1": (["verify", "verify_alpha_theory", "--seed", "-1", "--no-report"],
                         "--seed -1"),
    "bench --seed -1": (["bench", "--seed", "-1", "--rows", "2", "--vocab", "10"], "--seed -1"),
    "simulate --seed -1": (["simulate", "gen:two-point", "--seed", "-1"], "--seed -1"),
    "compare-alpha --seed -1": (["compare-alpha", "--seed", "-1"], "--seed -1"),
    "--device tpu": (["solve", "gen:two-point", "--device", "tpu"], "not a device geomix knows"),
    "--device cuda:x": (["compare-alpha", "gen:two-point", "--device", "cuda:x"],
                        "not a device geomix knows"),
    "bench --device tpu": (["bench", "--device", "tpu", "--rows", "2", "--vocab", "10"],
                           "not a device geomix knows"),
    "not an integer": (["bench", "--vocab", "1e10"], "--vocab", "geomix bench --help"),
    "unknown option": (["solve", "gen:two-point", "--frobnicate"], "--frobnicate"),
}


@pytest.mark.parametrize("name", list(SPEC_CASES))
def test_bad_specs_and_options_are_one_line(name, tmp_path):
    argv, *fragments = SPEC_CASES[name]
    assert_refused(run_geomix(*argv, cwd=tmp_path, timeout=60), 2, *fragments)


# ----------------------------------------------------------------------------------------------
# files that are not what they claim to be


def _fifo(tmp):
    os.mkfifo(tmp / "pairs.npz")
    return ["pairs.npz"], "is a FIFO (named pipe), not a regular file"


def _char_device_behind_a_link(tmp):
    os.symlink("/dev/zero", tmp / "pairs.npz")
    return ["pairs.npz"], "is a character device"


def _symlink_loop(tmp):
    os.symlink("b.npz", tmp / "a.npz")
    os.symlink("a.npz", tmp / "b.npz")
    return ["a.npz"], "symbolic-link loop"


def _dangling_link(tmp):
    os.symlink("gone.npz", tmp / "a.npz")
    return ["a.npz"], "symbolic link whose target does not exist"


def _folder(tmp):
    (tmp / "pairs.npz").mkdir()
    return ["pairs.npz"], "is a folder"


def _npy_saved_as_npz(tmp):
    np.save(tmp / "x.npy", np.ones((2, 3)))
    os.rename(tmp / "x.npy", tmp / "pairs.npz")
    return ["pairs.npz"], "is a .npy file (one array) saved under an .npz name"


def _empty(suffix):
    def make(tmp):
        (tmp / f"empty{suffix}").write_bytes(b"")
        return [f"empty{suffix}"], "is empty (0 bytes)"
    make.__name__ = f"_empty_{suffix.lstrip('.')}"
    return make


def _pickled_pt(tmp):
    torch = pytest.importorskip("torch")
    from fractions import Fraction

    torch.save({"pi_theta": torch.ones(3) / 3, "pi_t": torch.ones(3) / 3,
                "extra": Fraction(1, 3)}, tmp / "model.pt")
    return (["model.pt"], "holds pickled Python objects", "fractions.Fraction",
            "weights_only=True", "never unpickles anything else")


def _plain_pickle_as_pt(tmp):
    pytest.importorskip("torch")
    import pickle

    (tmp / "model.pt").write_bytes(pickle.dumps({"pi_theta": [0.5, 0.5]}, protocol=4))
    return ["model.pt"], "cannot load with torch.load(weights_only=True)", "never unpickles"


def _duplicate_json_keys(tmp):
    (tmp / "p.json").write_text('{"pi_theta": [0.5, 0.5], "pi_t": [0.2, 0.8], '
                                '"pi_theta": [0.9, 0.1]}')
    return ["p.json"], "duplicate key 'pi_theta'"


def _csv_row(value):
    def make(tmp):
        (tmp / "p.csv").write_text(f"row,pi_theta,pi_t\n0,0.5,0.2\n0,0.5,0.8\n{value},0.5,0.2\n"
                                   f"{value},0.5,0.8\n")
        return ["p.csv"], "key 'row'", "at data line 3", "whole numbers from 0 to 2**53"
    make.__name__ = f"_csv_row_{value}"
    return make


def _csv_duplicate_column(tmp):
    (tmp / "p.csv").write_text("pi_theta,pi_t,pi_t\n0.5,0.2,0.3\n0.5,0.8,0.7\n")
    return ["p.csv"], "column appears more than once", "key 'pi_t'"


def _mask(values, *, both=False):
    def make(tmp):
        probs = np.full((3, 4), 0.25)
        arrays = {"pi_theta": probs, "pi_t": probs[::-1].copy(), "mask": np.asarray(values)}
        if both:
            arrays["attention_mask"] = np.ones(3)
        np.savez(tmp / "m.npz", **arrays)
        return ["m.npz"], ("both 'mask' and 'attention_mask'" if both else "a mask holds 0")
    make.__name__ = "_mask_and_attention_mask" if both else f"_mask_{values}"
    return make


def _safetensors(tmp, header: dict, data: bytes, name="s.safetensors"):
    text = json.dumps(header).encode()
    (tmp / name).write_bytes(struct.pack("<Q", len(text)) + text + data)
    return [name]


def _safetensors_overlap(tmp):
    data = np.full(4, 0.25, "<f8").tobytes()
    return (_safetensors(tmp, {"pi_theta": {"dtype": "F64", "shape": [4], "data_offsets": [0, 32]},
                               "pi_t": {"dtype": "F64", "shape": [2], "data_offsets": [16, 32]}},
                         data), "overlap")


def _safetensors_negative_shape(tmp):
    data = np.full(4, 0.25, "<f8").tobytes()
    return (_safetensors(tmp, {"pi_theta": {"dtype": "F64", "shape": [-4], "data_offsets": [0, 32]},
                               "pi_t": {"dtype": "F64", "shape": [4], "data_offsets": [0, 32]}},
                         data), "whole numbers >= 0")


def _safetensors_duplicate_keys(tmp):
    text = (b'{"pi_theta": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]}, '
            b'"pi_theta": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]}}')
    (tmp / "s.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + bytes(16))
    return ["s.safetensors"], "duplicate key 'pi_theta'"


FILE_CASES = [_fifo, _char_device_behind_a_link, _symlink_loop, _dangling_link, _folder,
              _npy_saved_as_npz, _empty(".npz"), _empty(".pt"), _empty(".json"), _empty(".csv"),
              _empty(".safetensors"), _empty(".parquet"), _pickled_pt, _plain_pickle_as_pt,
              _duplicate_json_keys, _csv_row("0.5"), _csv_row("-1"), _csv_row("1e300"),
              _csv_row("nan"), _csv_duplicate_column, _mask([1, 2, 1]), _mask([1.0, 0.5, 1.0]),
              _mask([1, 1, 1], both=True), _safetensors_overlap, _safetensors_negative_shape,
              _safetensors_duplicate_keys]


@pytest.mark.parametrize("make", FILE_CASES, ids=[f.__name__.strip("_") for f in FILE_CASES])
def test_a_file_that_is_not_a_pair_file_is_one_line(make, tmp_path):
    argv, *fragments = make(tmp_path)
    result = run_geomix("solve", *argv, cwd=tmp_path, timeout=60)
    line = assert_refused(result, 2, argv[0], *fragments)
    assert "weights_only=False" not in line and "Warning" not in result.stderr


# ----------------------------------------------------------------------------------------------
# sizes that do not fit: refused up front with the estimate and the memory available

MEMORY_CASES = {
    "V=10^10": ["solve", "gen:llm-like:V=10000000000"],
    "10^6 rows at V=1000": ["check", "gen:llm-like:V=1000,rows=1000000"],
    "bench --vocab 10^10": ["bench", "--vocab", "10000000000"],
    "simulate --budget 10^12": ["simulate", "gen:two-point", "--budget", "1000000000000",
                                "--no-progress"],
}


@pytest.mark.parametrize("name", list(MEMORY_CASES))
def test_requests_larger_than_memory_are_refused_up_front(name, tmp_path):
    result = run_geomix(*MEMORY_CASES[name], cwd=tmp_path, timeout=60,
                        preexec_fn=_address_space(4 * GiB))
    assert_refused(result, 2, "needs about", "of memory;", "is available here")


def _zeros_npz(path, values_per_side: int) -> None:
    """A valid .npz of float32 zeros: a few MB on disk, `values_per_side` values per key."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for key in ("pi_theta", "pi_t"):
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                header = io.BytesIO()
                np.lib.format.write_array_header_1_0(header, {
                    "descr": "<f4", "fortran_order": False, "shape": (values_per_side,)})
                member.write(header.getvalue())
                zeros = bytes(16 << 20)
                left = 4 * values_per_side
                while left:
                    member.write(zeros[:min(left, len(zeros))])
                    left -= min(left, len(zeros))


def test_an_npz_that_declares_800_mb_is_refused_before_loading(tmp_path):
    _zeros_npz(tmp_path / "zeros.npz", 100_000_000)
    assert os.path.getsize(tmp_path / "zeros.npz") < 8 << 20
    result = run_geomix("solve", "zeros.npz", cwd=tmp_path, timeout=120,
                        preexec_fn=_address_space(3 * GiB))
    from geomix_cli.io.machine import format_bytes

    declared = format_bytes(2 * 4 * 100_000_000)  # two float32 members, as their headers say
    assert_refused(result, 2, "zeros.npz", f"{declared} as declared in the archive", "needs about",
                   "is available here")


def test_a_memory_error_that_still_happens_is_one_line(monkeypatch, runner):
    from geomix_cli.cli import app
    from geomix_cli.commands import _shared

    def exhausted(*args, **kwargs):
        raise MemoryError("Unable to allocate 74.5 GiB for an array with shape (10000000000,)")

    monkeypatch.setattr(_shared, "load", exhausted)
    result = runner.invoke(app, ["solve", "gen:two-point"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "geomix: error: out of memory: Unable to allocate 74.5 GiB for an array with shape "
        "(10000000000,); use fewer rows (--rows) or a smaller input"]


# ----------------------------------------------------------------------------------------------
# the golden-case library


def _case(case_id: str, source: dict) -> dict:
    """A structurally complete case file (its values are never compared in these tests)."""
    from geomix_cli.cases import GOLDEN_FIELDS, NUMERIC_FIELDS

    row = {"row": 0, **{f: 0.5 for f in GOLDEN_FIELDS}, "status": "ok"}
    return {"schema_version": 1, "id": case_id, "description": "x", "source": source,
            "source_sha256": "0" * 64, "produced_by": {},
            "tolerances": {f: {"abs": 1e-12, "rel": 0.0} for f in NUMERIC_FIELDS},
            "expected": [row]}


@pytest.mark.parametrize("path", ["../outside.npz", "/etc/passwd", "data/../../outside.npz"])
def test_a_case_source_outside_the_cases_folder_is_refused(path, tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    write_npz(tmp_path / "outside.npz")
    (cases / "escape.json").write_text(json.dumps(_case("escape", {"type": "file", "path": path})))
    result = run_geomix("regress", "--cases", "cases", "--no-verdicts", cwd=tmp_path)
    assert_refused(result, 2, "escape.json", "source.path", path)


@pytest.mark.parametrize("content, fragment", [
    ('{"claim-a": "holds", ', "invalid JSON"),
    ('{"claim-a": "holds", "claim-a": "refuted"}', "duplicate key 'claim-a'"),
    ('{"claim-a": "maybe"}', "verdict 'maybe' is not one of holds, refuted, depends, untested"),
])
def test_a_bad_verdict_file_is_bad_input_before_the_suite_runs(content, fragment, tmp_path):
    """One line and exit 2 (not 4: a corrupt golden file is not a regression), before the
    minute-long suite (the timeout catches a run) and before any progress line."""
    (tmp_path / "cases" / "verdicts").mkdir(parents=True)
    (tmp_path / "cases" / "verdicts" / "verify_alpha_theory.json").write_text(content)
    result = run_geomix("regress", "--cases", "cases", "--no-values", cwd=tmp_path, timeout=60)
    assert_refused(result, 2, "verify_alpha_theory.json", fragment)
    assert result.stdout == ""


def test_regress_prints_only_the_error_line_when_a_case_source_is_bad(tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "a.json").write_text(json.dumps(_case("a", {"type": "generator",
                                                         "spec": "gen:two-point"})))
    (cases / "b.json").write_text(json.dumps(_case("b", {"type": "generator",
                                                         "spec": "gen:two-point:seed=-2"})))
    result = run_geomix("regress", "--cases", "cases", "--no-verdicts", cwd=tmp_path)
    assert_refused(result, 2, "seed must be at least 0")
    assert result.stdout == ""


# ----------------------------------------------------------------------------------------------
# a closed stdout


def test_a_closed_stdout_stops_quietly(tmp_path):
    """`geomix solve ... --json | head -1`: no BrokenPipeError traceback, exit 141."""
    process = popen_geomix("solve", "gen:two-point:rows=200000", "--json", cwd=tmp_path)
    first = process.stdout.readline()
    process.stdout.close()
    err = process.stderr.read()
    process.wait(timeout=120)
    assert first == "{\n"
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert process.returncode == 141, err


def test_input_and_output_json_stay_valid_for_a_large_csv(tmp_path):
    """A long-format CSV with many rows: the row ids are grouped in order of appearance, and the
    streamed JSON parses with one row per group."""
    lines = ["row,pi_theta,pi_t"]
    for r in range(300):
        lines += [f"{r},0.25,{p}" for p in (0.1, 0.2, 0.3, 0.4)]
    (tmp_path / "big.csv").write_text("\n".join(lines) + "\n")
    result = run_geomix("solve", "big.csv", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert [r["row"] for r in rows] == list(range(300))
    assert len({round(r["alpha"], 12) for r in rows}) == 1


def test_write_csv_helper_makes_a_valid_file(tmp_path):
    write_csv(tmp_path / "p.csv")
    assert run_geomix("solve", "p.csv", cwd=tmp_path).returncode == 0

