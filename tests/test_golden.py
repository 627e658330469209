"""The golden-case library (geomix_cli/cases.py) and the 50-digit reference (scripts/make_golden.py).

The reference is tested against closed forms and the symmetries of docs/derivation.md at reduced digits
(fast); the shipped case files are checked for coverage, provenance and intact sources; the
comparison is checked to catch a 1e-4 change planted in the expected alpha of every case.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from numpy.testing import assert_allclose

from geomix_cli.cases import (GOLDEN_FIELDS, case_inputs, compare_records, compare_verdicts,
                              diff_cases, load_case, load_cases, load_reference,
                              source_fingerprint, case_raw_pair, verdict_map)
from geomix_cli.core import diagnose, solve_alpha
from geomix_cli.errors import InputError

CASES = Path(__file__).resolve().parents[1] / "cases"


@pytest.fixture(scope="module")
def ref():
    return load_reference()


@pytest.fixture(scope="module")
def shipped():
    return load_cases(CASES)


@pytest.fixture(scope="module")
def newton_records(shipped):
    out = {}
    for case in shipped:
        log_theta, log_t, errors, _ = case_inputs(case)
        sol = solve_alpha(log_theta, log_t, "newton", row_errors=errors)
        out[case.id] = diagnose(log_theta, log_t, sol).records()
    return out


# ---------------------------------------------------------------------------------------------
# the reference against closed forms and symmetries (20 digits: fast, still far beyond float64)


def test_reference_seed_test1_closed_form(ref):
    r = ref.reference_row(np.array([0.7, 0.3]), np.array([0.3, 0.7]), "probs", dps=30)["values"]
    assert r["status"] == "ok"
    # symmetric pair: alpha* = 1/2 exactly, q* = (1/2, 1/2), C = -log(2 sqrt(0.21)),
    # ESS = 1 / (0.49/0.5 + 0.09/0.5) = 1/1.16; the reference's own float rounding is 1 ulp
    assert_allclose(r["alpha"], 0.5, rtol=0, atol=1e-16)
    assert_allclose(r["chernoff"], -math.log(2 * math.sqrt(0.21)), rtol=2e-16)
    assert_allclose([r["kl_q_theta"], r["kl_q_target"]], r["chernoff"], rtol=2e-16)
    assert_allclose([r["ess_theta"], r["ess_target"]], 1 / 1.16, rtol=2e-16)
    assert_allclose(r["alpha_entropy"], 0.5, rtol=2e-16)


def test_reference_swap_and_permutation(ref):
    rng = np.random.default_rng(7)
    theta, target = rng.dirichlet(np.ones(7)), rng.dirichlet(np.ones(7))
    a = ref.reference_row(theta, target, "probs", dps=25)["values"]
    b = ref.reference_row(target, theta, "probs", dps=25)["values"]
    perm = rng.permutation(7)
    c = ref.reference_row(theta[perm], target[perm], "probs", dps=25)["values"]
    # swapping maps alpha* to 1 - alpha*; 25 digits leave only the final float rounding (1e-16)
    assert_allclose(a["alpha"] + b["alpha"], 1.0, rtol=0, atol=2e-16)
    assert_allclose(b["chernoff"], a["chernoff"], rtol=1e-15)
    assert_allclose([c["alpha"], c["chernoff"]], [a["alpha"], a["chernoff"]], rtol=1e-15)


def test_reference_root_equalises_the_kls(ref):
    out = ref.reference_row(np.array([0.5, 0.2, 0.2, 0.1]), np.array([0.05, 0.05, 0.3, 0.6]),
                            "probs", dps=30)
    v, info = out["values"], out["info"]
    assert abs(info["residual"]) < 1e-25  # D(alpha*) at 30 digits
    assert_allclose(v["kl_q_theta"], v["kl_q_target"], rtol=1e-15)
    assert_allclose(v["chernoff"], v["kl_q_theta"], rtol=1e-15)


@pytest.mark.parametrize("theta,target,kind,status", [
    ([0.6, 0.4, 0.0], [0.1, 0.2, 0.7], "probs", "no-root"),          # docs/derivation.md's no-root example
    ([0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5], "probs", "disjoint-support"),
    ([1.0, 2.0, 3.0], [11.0, 12.0, 13.0], "logits", "degenerate"),   # shifted logits: same pair
    ([0.5, 0.5, 0.0], [0.25, 0.25, 0.5], "probs", "no-root"),        # l constant, non-zero
])
def test_reference_statuses(ref, theta, target, kind, status):
    v = ref.reference_row(np.array(theta), np.array(target), kind, dps=30)["values"]
    assert v["status"] == status
    assert v["alpha"] is None


def test_reference_reads_bfloat16_by_its_bits(ref, tmp_path):
    # 0x3F80 = 1.0, 0xC040 = -3.0, 0x0001 = smallest subnormal 2^-133, 0xFF80 = -inf
    import struct

    raw = np.array([0x3F80, 0xC040, 0x0001, 0xFF80], dtype="<u2").tobytes()
    head = json.dumps({"x": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}).encode()
    blob = struct.pack("<Q", len(head)) + head + raw
    path = tmp_path / "x.safetensors"
    path.write_bytes(blob)
    got = ref._read_safetensors_own(path)["x"]
    assert got[0] == 1.0 and got[1] == -3.0 and got[2] == 2.0**-133 and got[3] == -np.inf


# ---------------------------------------------------------------------------------------------
# the shipped library


def test_shipped_cases_cover_the_issue(shipped):
    ids = {c.id for c in shipped}
    statuses = {row["status"] for c in shipped for row in c.expected}
    assert statuses >= {"ok", "degenerate", "no-root", "disjoint-support"}
    alphas = [row["alpha"] for c in shipped for row in c.expected if row["alpha"] is not None]
    assert min(alphas) < 0.5 < max(alphas)
    chernoffs = [row["chernoff"] for c in shipped for row in c.expected if row["chernoff"]]
    assert min(chernoffs) < 1e-7
    dtypes = {case_raw_pair(c).storage_dtype for c in shipped}
    assert {"float16", "bfloat16"} <= dtypes
    vocab = {case_inputs(c)[0].shape[1] for c in shipped}
    assert 2 in vocab and 49152 in vocab
    for required in ("derivation-test1-two-point", "derivation-test2-reproduced", "identical-degenerate",
                     "disjoint-support", "partial-overlap", "one-hot", "extreme-logit-range",
                     "near-identical", "float16-logits", "bfloat16-logits", "smollm2-real-rows"):
        assert required in ids


def test_seed_test2_numbers(shipped):
    by_id = {c.id: c for c in shipped}
    row = by_id["derivation-test2-reproduced"].expected[0]
    assert abs(row["alpha"] - 0.34) < 0.005 and abs(row["alpha_entropy"] - 0.002) < 0.0005
    for cid in ("derivation-test2-not-reproduced-above-half", "derivation-test2-not-reproduced-big-vocab"):
        assert by_id[cid].expected[0]["alpha"] > 0.5
    assert by_id["delta-uniform-half"].expected[0]["alpha"] == 0.5  # closed form, eps = 1/V


def test_seed_test3_ess_balance_holds_and_fails(shipped):
    by_id = {c.id: c for c in shipped}

    def ratio(row):
        return max(row["ess_theta"], row["ess_target"]) / min(row["ess_theta"], row["ess_target"])

    assert ratio(by_id["derivation-test1-two-point"].expected[0]) == 1.0
    assert all(ratio(r) < 1.1 for r in by_id["near-identical"].expected)
    assert ratio(by_id["smollm2-real-rows"].expected[2]) > 3.0  # source row 47


def test_shipped_cases_name_their_reference_and_source(shipped):
    for case in shipped:
        produced = case.data["produced_by"]
        assert produced["script"] == "scripts/make_golden.py"
        assert produced["dps"] >= 30
        assert source_fingerprint(case_raw_pair(case)) == case.data["source_sha256"], case.id
        assert set(case.tolerances) >= set(GOLDEN_FIELDS[1:])
        # a 1e-4 change in alpha must be caught in every case
        assert case.tolerances["alpha"]["abs"] < 1e-4


def test_every_case_catches_a_planted_alpha_change(shipped, newton_records):
    planted = 0
    for case in shipped:
        records = newton_records[case.id]
        clean, _ = compare_records(case, records, "newton")
        assert clean == [], [m.line() for m in clean]
        for i, row in enumerate(case.expected):
            if row["alpha"] is None:
                continue
            bad = copy.deepcopy(case)
            bad.data["expected"][i]["alpha"] = row["alpha"] + 1e-4
            found, _ = compare_records(bad, records, "newton")
            assert [(m.row, m.field) for m in found] == [(i, "alpha")]
            assert f"case {case.id}, row {i}, field alpha" in found[0].line()
            planted += 1
            break
    assert planted >= 12


def test_compare_null_and_status(shipped, newton_records):
    case = next(c for c in shipped if c.id == "partial-overlap")
    records = copy.deepcopy(newton_records[case.id])
    records[1]["alpha"] = 0.3  # a number where alpha* does not exist
    records[2]["status"] = "ok"
    records[0]["chernoff"] = float("nan")  # a missing value
    found = {(m.row, m.field) for m in compare_records(case, records, "newton")[0]}
    assert found == {(1, "alpha"), (2, "status"), (0, "chernoff")}


# ---------------------------------------------------------------------------------------------
# malformed case files


def _write(tmp_path, name, data) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture
def good_case():
    return json.loads((CASES / "derivation-test1-two-point.json").read_text())


@pytest.mark.parametrize("mutate,key,row,words", [
    (lambda d: d.pop("expected"), "expected", None, "missing key"),
    (lambda d: d["expected"][0].pop("chernoff"), "expected", 0, "missing field 'chernoff'"),
    (lambda d: d["expected"][0].update(alpha="0.5"), "expected", 0, "field 'alpha'"),
    (lambda d: d["expected"][0].update(status="fine"), "expected", 0, "unknown status"),
    (lambda d: d["tolerances"].pop("ess_theta"), "tolerances", None, "ess_theta"),
    (lambda d: d["tolerances"]["alpha"].update(abs=-1), "tolerances", None, "alpha.abs"),
    (lambda d: d["source"].update(type="url"), "source", None, "source type"),
    (lambda d: d.update(id="other"), "id", None, "differs from the file name"),
    (lambda d: d["source"].update(pi_t=[0.3, "x"]), "source.pi_t", 0, "not a number"),
])
def test_malformed_case_files(tmp_path, good_case, mutate, key, row, words):
    mutate(good_case)
    path = _write(tmp_path, "derivation-test1-two-point", good_case)
    with pytest.raises(InputError) as err:
        case = load_case(path)
        case_inputs(case)
    assert err.value.file == str(path) and err.value.key == key and err.value.row == row
    assert words in err.value.one_line()


def test_invalid_json_names_line(tmp_path):
    path = _write(tmp_path, "broken", '{"id": "broken",\n "expected": [1, }')
    with pytest.raises(InputError, match="invalid JSON at line 2"):
        load_case(path)


def test_rows_of_source_and_expected_must_agree(tmp_path, good_case):
    good_case["expected"].append(dict(good_case["expected"][0], row=1))
    path = _write(tmp_path, "derivation-test1-two-point", good_case)
    with pytest.raises(InputError, match="the source has 1 rows, expected lists 2"):
        case_inputs(load_case(path))


# ---------------------------------------------------------------------------------------------
# verdicts and diffs


def test_verdict_map_and_compare():
    suite = SimpleNamespace(claims=[SimpleNamespace(id="a", verdict="true"),
                                    SimpleNamespace(id="b", verdict="false")])
    as_json = {"schema_version": 1, "suite": "s", "claims": [
        {"id": "a", "verdict": "true", "claim": "", "evidence": "", "data": {}},
        {"id": "b", "verdict": "false", "claim": "", "evidence": "", "data": {}}]}
    assert verdict_map(suite) == verdict_map(as_json) == {"a": "true", "b": "false"}
    changes = compare_verdicts({"a": "true", "b": "true", "c": "x"},
                               {"a": "true", "b": "false", "d": "y"}, "s")
    assert [(m.field, m.expected, m.got) for m in changes] == [
        ("claim b", "true", "false"), ("claim c", "x", None), ("claim d", None, "y")]


def test_diff_cases_lists_changed_fields(good_case):
    new = copy.deepcopy(good_case)
    new["expected"][0]["alpha"] = 0.6
    new["tolerances"]["alpha"] = {"abs": 1e-12, "rel": 0.0}
    lines = diff_cases(good_case, new)
    assert "derivation-test1-two-point row 0 alpha: 0.5 -> 0.6" in lines
    assert any(line.startswith("derivation-test1-two-point tolerance alpha") for line in lines)


def test_small_shipped_cases_are_exactly_what_the_reference_makes(shipped, ref):
    """A hand-edited expected value or tolerance is caught: recompute the cases with V <= 256
    (a few seconds at 50 digits) and demand the shipped numbers bit for bit (mpmath is
    deterministic)."""
    checked = 0
    for case in shipped:
        if case_inputs(case)[0].shape[1] > 256:
            continue
        fresh = ref.reference_for_case(case.data, case.cases_dir)
        assert fresh["expected"] == case.expected, case.id
        assert fresh["tolerances"] == case.tolerances, case.id
        assert fresh["source_sha256"] == case.data["source_sha256"], case.id
        checked += 1
    assert checked >= 10
