"""The torch backend (`--device`): agreement with the float64 numpy solve, statuses, chunking, CLI.

Tolerances: float64 compute must agree with numpy to the float64 conditioning of each row
(conftest.alpha_tolerance, ~1e-13..1e-12); float32 compute to 1e-6 (the issue's target).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from conftest import alpha_tolerance, random_logit_pair
from geomix_cli.core import classify_rows, solve_newton

F32_ALPHA_TOL = 1e-6


def _log_softmax64(x):
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        m = np.max(x, axis=-1, keepdims=True)
        return x - (m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True)))


# ------------------------------------------------------------------------------------------------
# torch stays optional


def test_importing_the_cli_core_and_backends_does_not_import_torch():
    code = ("import sys, geomix_cli.core, geomix_cli.cli, geomix_cli.backends, geomix_cli.bench; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_device_without_torch_is_one_line_and_exit_5(tmp_path):
    # torch made unimportable inside a fresh interpreter, then the CLI runs
    code = ("import sys; sys.modules['torch'] = None; sys.argv = ['geomix', 'solve', "
            "'gen:two-point', '--device', 'cpu']; from geomix_cli.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 5
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert "torch" in proc.stderr


def test_device_cuda_without_cuda_is_one_line_and_exit_5(runner):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    from geomix_cli.cli import app

    result = runner.invoke(app, ["solve", "gen:two-point", "--device", "cuda"])
    assert result.exit_code == 5
    assert "CUDA" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------------------------
# agreement with the float64 numpy solve


def test_real_rows_agree_float64_and_float32(smollm2_logits, smollm2_log_probs):
    pytest.importorskip("torch")
    from geomix_cli.backends import solve_alpha_device

    theta, target = smollm2_logits
    lt, lT = smollm2_log_probs
    exact = solve_newton(lt, lT)
    assert (exact.status == "ok").all()
    tol = alpha_tolerance(lt, lT, exact.alpha)
    s64 = solve_alpha_device(theta, target, device="cpu", compute_dtype="float64")
    assert_array_equal(s64.status, exact.status)
    assert np.all(np.abs(s64.alpha - exact.alpha) <= tol), (s64.alpha - exact.alpha, tol)
    assert_allclose(s64.d_at_0, exact.d_at_0, rtol=1e-10, atol=1e-13)
    assert_allclose(s64.d_at_1, exact.d_at_1, rtol=1e-10, atol=1e-13)
    s32 = solve_alpha_device(theta, target, device="cpu", compute_dtype="float32")
    assert_array_equal(s32.status, exact.status)
    assert_allclose(s32.alpha, exact.alpha, rtol=0, atol=F32_ALPHA_TOL)
    # the float64 log-probabilities (what `geomix solve --device` passes) give the same
    s32b = solve_alpha_device(lt, lT, device="cpu", compute_dtype="float32")
    assert_allclose(s32b.alpha, exact.alpha, rtol=0, atol=F32_ALPHA_TOL)


def test_bfloat16_tensors_agree_with_float64_on_the_same_values(smollm2_logits):
    torch = pytest.importorskip("torch")
    from geomix_cli.backends import solve_alpha_device

    theta, target = smollm2_logits
    tb = torch.from_numpy(theta[:4].astype(np.float32)).to(torch.bfloat16)
    yb = torch.from_numpy(target[:4].astype(np.float32)).to(torch.bfloat16)
    lt, lT = _log_softmax64(tb.float().numpy()), _log_softmax64(yb.float().numpy())
    exact = solve_newton(lt, lT)
    for cdt, tol in (("float32", F32_ALPHA_TOL), ("float64", None)):
        sol = solve_alpha_device(tb, yb, compute_dtype=cdt)
        bound = alpha_tolerance(lt, lT, exact.alpha) if tol is None else tol
        assert np.all(np.abs(sol.alpha - exact.alpha) <= bound), cdt


@pytest.mark.parametrize("zero_fraction", [0.0, 0.3])
def test_synthetic_rows_agree(zero_fraction):
    pytest.importorskip("torch")
    from geomix_cli.backends import solve_alpha_device

    rng = np.random.default_rng(7)
    pairs = [random_logit_pair(rng, 3000, scale, zero_fraction=zero_fraction)
             for scale in (0.3, 1.0, 3.0, 6.0)]
    theta = np.stack([p[0] for p in pairs])
    target = np.stack([p[1] for p in pairs])
    lt, lT = _log_softmax64(theta), _log_softmax64(target)
    exact = solve_newton(lt, lT)
    ok = exact.status == "ok"
    assert ok.any()
    s64 = solve_alpha_device(theta, target, compute_dtype="float64")
    assert_array_equal(s64.status, exact.status)
    tol = alpha_tolerance(lt[ok], lT[ok], exact.alpha[ok])
    assert np.all(np.abs(s64.alpha[ok] - exact.alpha[ok]) <= tol)
    s32 = solve_alpha_device(theta, target, compute_dtype="float32")
    assert_array_equal(s32.status, exact.status)
    assert_allclose(s32.alpha[ok], exact.alpha[ok], rtol=0, atol=F32_ALPHA_TOL)


def test_halley_agrees_with_newton():
    pytest.importorskip("torch")
    from geomix_cli.backends import solve_alpha_device

    rng = np.random.default_rng(3)
    theta, target = random_logit_pair(rng, 2000, 2.0)
    a = solve_alpha_device(theta, target, "halley", compute_dtype="float64")
    b = solve_alpha_device(theta, target, "newton", compute_dtype="float64")
    assert a.method == "halley" and b.method == "newton"
    lt, lT = _log_softmax64(theta[None]), _log_softmax64(target[None])
    assert abs(a.alpha[0] - b.alpha[0]) <= 2 * alpha_tolerance(lt, lT, b.alpha)[0]


# ------------------------------------------------------------------------------------------------
# statuses: the same classification as core.classify_rows


def _special_rows():
    v = 6
    rng = np.random.default_rng(0)
    base = rng.normal(size=v)
    with np.errstate(divide="ignore"):
        rows = _rows(base, rng, v)
        theta = np.stack([np.asarray(r[0], dtype=np.float64) for r in rows.values()])
        target = np.stack([np.asarray(r[1], dtype=np.float64) for r in rows.values()])
    return list(rows), theta, target


def _rows(base, rng, v):
    return {
        "ok": (base, base + rng.normal(size=v)),
        "degenerate (identical)": (base, base.copy()),
        "degenerate (shifted logits)": (base, base + 5.0),
        "no-root (constant l)": (np.log([0.5, 0.25, 0.25, 0, 0, 0]),
                                 np.log([0.25, 0.125, 0.125, 0.5, 0, 0])),
        "no-root (supports differ)": (np.log([0.6, 0.4, 0, 1e-300, 1e-300, 1e-300]),
                                      np.log([0.1, 0.2, 0.7, 0, 0, 0])),
        "disjoint-support": (np.log([0.5, 0.5, 0, 0, 0, 0]), np.log([0, 0, 0.5, 0.5, 0, 0])),
    }


@pytest.mark.parametrize("compute_dtype", ["float32", "float64"])
def test_statuses_and_messages_match_numpy(compute_dtype):
    pytest.importorskip("torch")
    from geomix_cli.backends import solve_alpha_device

    names, theta, target = _special_rows()
    lt, lT = _log_softmax64(theta), _log_softmax64(target)
    cls = classify_rows(lt, lT)
    sol = solve_alpha_device(theta, target, compute_dtype=compute_dtype)
    assert list(sol.status) == list(cls.status), names
    for name, status, msg_np, msg_t in zip(names, cls.status, cls.message, sol.message):
        assert msg_t.split(":")[0].split("(")[0] == msg_np.split(":")[0].split("(")[0], name
        if status != "ok":
            assert np.isnan(sol.alpha[names.index(name)])
    assert list(cls.status) == ["ok", "degenerate", "degenerate", "no-root", "no-root",
                                "disjoint-support"]


def test_nearly_identical_pairs_follow_the_numpy_rules_in_float64():
    """core.solvers' rule: D(0+) and D(1-) both within rounding of 0 -> degenerate. In float64
    the backend says exactly what numpy says; in float32 a pair closer than float32 can resolve
    is also 'degenerate' (within float32 rounding), never an 'ok' with a noise alpha."""
    pytest.importorskip("torch")
    from geomix_cli.backends import solve_alpha_device

    rng = np.random.default_rng(0)
    theta = rng.normal(size=(5, 200))
    target = theta.copy()
    for row, size in zip(range(1, 5), (1e-8, 1e-5, 1e-3, 1.0)):
        target[row] += rng.normal(size=200) * size
    cls = classify_rows(_log_softmax64(theta), _log_softmax64(target))
    s64 = solve_alpha_device(theta, target, compute_dtype="float64")
    assert list(s64.status) == list(cls.status) == ["degenerate", "degenerate", "ok", "ok", "ok"]
    assert s64.message[1].split(":")[0] == cls.message[1].split(":")[0]
    s32 = solve_alpha_device(theta, target, compute_dtype="float32")
    assert list(s32.status) == ["degenerate", "degenerate", "degenerate", "ok", "ok"]
    assert "alpha* is not" in s32.message[2] and np.isnan(s32.alpha[2])


def test_invalid_rows_from_the_values_and_from_row_errors():
    pytest.importorskip("torch")
    from geomix_cli.backends import solve_alpha_device

    rng = np.random.default_rng(1)
    theta = rng.normal(size=(4, 50))
    target = theta + rng.normal(size=(4, 50))
    theta[1, 3] = np.nan
    target[2, :] = -np.inf
    sol = solve_alpha_device(theta, target)
    assert list(sol.status) == ["ok", "invalid", "invalid", "ok"]
    assert "NaN" in sol.message[1] and "mass" in sol.message[2]
    assert sol.evaluations[1] == 0
    errs = [None, "bad row", None, None]
    theta[1, 3] = 0.0
    target[2, :] = 0.0
    sol = solve_alpha_device(theta, target, row_errors=errs)
    assert list(sol.status) == ["ok", "invalid", "ok", "ok"] and sol.message[1] == "bad row"


# ------------------------------------------------------------------------------------------------
# memory budget, shapes, kinds


def test_chunks_respect_the_budget_and_do_not_change_the_answer():
    pytest.importorskip("torch")
    from geomix_cli.backends import solve_alpha_device

    rng = np.random.default_rng(5)
    theta = rng.normal(0, 3, size=(10, 4096)).astype(np.float32)
    target = theta + rng.normal(size=(10, 4096)).astype(np.float32)
    whole = solve_alpha_device(theta, target, compute_dtype="float64")
    budget = 1 << 20  # 1 MiB: a few rows per chunk
    small = solve_alpha_device(theta, target, compute_dtype="float64", max_memory_bytes=budget)
    assert small.extra["chunks"] > 1
    assert small.extra["temporaries_bytes_estimate"] <= budget
    assert_allclose(small.alpha, whole.alpha, rtol=0, atol=1e-15)


def test_peak_memory_of_a_chunk_stays_near_the_estimate():
    torch = pytest.importorskip("torch")
    from geomix_cli.backends import torch_backend

    # CPU allocations are not traced by torch; use the CUDA-free allocator statistics via a
    # profiler-free proxy: the estimate must cover the arrays the chunk holds at its peak.
    assert torch_backend.ARRAYS_PER_ROW >= 6
    rows = torch_backend.chunk_rows_for(151_936, 4, 64 << 20)
    assert rows * torch_backend.ARRAYS_PER_ROW * 4 * 151_936 <= 64 << 20


def test_rows_of_any_leading_shape_are_flattened_in_c_order():
    torch = pytest.importorskip("torch")
    from geomix_cli.backends import solve_alpha_device

    rng = np.random.default_rng(2)
    theta = rng.normal(size=(2, 3, 40))
    target = theta + rng.normal(size=(2, 3, 40))
    sol = solve_alpha_device(torch.from_numpy(theta), torch.from_numpy(target),
                             compute_dtype="float64")
    flat = solve_newton(_log_softmax64(theta.reshape(6, 40)), _log_softmax64(target.reshape(6, 40)))
    assert sol.extra["row_shape"] == (2, 3)
    assert_allclose(sol.alpha, flat.alpha, rtol=0, atol=1e-13)


def test_probabilities_are_accepted():
    pytest.importorskip("torch")
    from geomix_cli.backends import solve_alpha_device

    sol = solve_alpha_device(np.array([[0.7, 0.3]]), np.array([[0.3, 0.7]]), kind="probs",
                             compute_dtype="float64")
    assert_allclose(sol.alpha, [0.5], rtol=0, atol=1e-14)  # the derivation's Test 1 (to rounding)
    bad = solve_alpha_device(np.array([[0.7, 0.3]]), np.array([[-0.3, 1.3]]), kind="probs")
    assert bad.status[0] == "invalid" and "negative" in bad.message[0]


def test_bad_arguments_are_input_errors():
    pytest.importorskip("torch")
    from geomix_cli.backends import solve_alpha_device
    from geomix_cli.errors import InputError, UnavailableError

    x = np.zeros((2, 3))
    with pytest.raises(InputError):
        solve_alpha_device(x, np.zeros((2, 4)))
    with pytest.raises(InputError):
        solve_alpha_device(x, x, compute_dtype="bfloat16")
    with pytest.raises(InputError):
        solve_alpha_device(x, x, method="brentq")
    with pytest.raises(InputError, match="not a device geomix knows"):
        solve_alpha_device(x, x, device="tpu")  # a bad option (exit 2), not a missing device
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(UnavailableError):
            solve_alpha_device(x, x, device="cuda")


# ------------------------------------------------------------------------------------------------
# the derivation's reference in torch


def test_reference_reproduces_the_numpy_port_and_its_bias(smollm2_logits, smollm2_log_probs):
    pytest.importorskip("torch")
    from geomix_cli.backends import reference_bisection_torch
    from geomix_cli.core import solve_bisection_reference

    theta, target = smollm2_logits
    lt, lT = smollm2_log_probs
    alpha, iterations = reference_bisection_torch(theta[:4], target[:4])
    port = solve_bisection_reference(lt[:4], lT[:4])
    assert iterations == 20  # tol 1e-6: 2**-20 < 1e-6
    exact = solve_newton(lt[:4], lT[:4]).alpha
    # Same algorithm, different float32 roundings (softmax of the float16 logits in torch vs
    # exp of float64 log-probs in the port): the float32 objective's noise flips bisection
    # decisions, so the two differ by up to ~1e-4 on these rows, and both miss the exact alpha
    # by far more than their tol of 1e-6.
    for answer in (alpha, port.alpha):
        err = np.max(np.abs(answer - exact))
        assert 1e-7 < err < 2e-4, err


# ------------------------------------------------------------------------------------------------
# the CLI


def test_solve_device_cpu_gives_the_same_json(runner):
    pytest.importorskip("torch")
    from geomix_cli.cli import app

    src = "cases/data/smollm2_sample.npz"
    base = runner.invoke(app, ["solve", src, "--rows", "0:3", "--json"])
    dev = runner.invoke(app, ["solve", src, "--rows", "0:3", "--json", "--device", "cpu",
                              "--dtype", "float64", "--max-memory", "64M"])
    assert base.exit_code == 0 and dev.exit_code == 0, dev.output
    a, b = json.loads(base.stdout), json.loads(dev.stdout)
    assert a.keys() == b.keys()
    for ra, rb in zip(a["rows"], b["rows"]):
        assert ra.keys() == rb.keys()
        assert ra["status"] == rb["status"]
        assert abs(ra["alpha"] - rb["alpha"]) < 1e-12
        assert abs(ra["chernoff"] - rb["chernoff"]) < 1e-12


def test_solve_device_refusals(runner):
    pytest.importorskip("torch")
    from geomix_cli.cli import app

    res = runner.invoke(app, ["solve", "gen:two-point", "--device", "cpu", "--method", "brentq"])
    assert res.exit_code == 2
    res = runner.invoke(app, ["solve", "gen:two-point", "--device", "cpu", "--max-memory", "lots"])
    assert res.exit_code == 2
    res = runner.invoke(app, ["solve", "gen:two-point", "--device", "cpu", "--dtype", "float16"])
    assert res.exit_code == 2


# ------------------------------------------------------------------------------------------------
# [B, T, V] inputs and a padding mask (io), reported with their positions


def _btv_file(tmp_path, mask=None, name="btv.npz"):
    rng = np.random.default_rng(11)
    theta = rng.normal(0, 2, size=(2, 3, 64)).astype(np.float32)
    target = (theta + rng.normal(size=(2, 3, 64))).astype(np.float32)
    arrays = {"logits_theta": theta, "logits_t": target}
    if mask is not None:
        arrays["mask"] = np.asarray(mask)
    path = tmp_path / name
    np.savez(path, **arrays)
    return path, theta, target


def test_btv_rows_are_flattened_with_positions_and_the_mask_drops_padding(tmp_path, runner):
    from geomix_cli.cli import app
    from geomix_cli.sources import load_source

    path, theta, target = _btv_file(tmp_path, mask=[[1, 1, 0], [1, 0, 0]])
    src = load_source(str(path))
    assert src.n_rows == 3 and src.extra["padded_rows_dropped"] == 3
    assert src.extra["positions"].tolist() == [[0, 0], [0, 1], [1, 0]]
    result = runner.invoke(app, ["solve", str(path), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [r["position"] for r in rows] == [[0, 0], [0, 1], [1, 0]]
    flat = solve_newton(_log_softmax64(theta.reshape(6, 64)), _log_softmax64(target.reshape(6, 64)))
    # (the validation's log-softmax and the one here round differently: a few ulps)
    tol = alpha_tolerance(_log_softmax64(theta.reshape(6, 64)[[0, 1, 3]]),
                          _log_softmax64(target.reshape(6, 64)[[0, 1, 3]]), flat.alpha[[0, 1, 3]])
    assert np.all(np.abs(np.array([r["alpha"] for r in rows]) - flat.alpha[[0, 1, 3]]) <= tol)
    picked = runner.invoke(app, ["solve", str(path), "--json", "--rows", "2"])
    assert json.loads(picked.stdout)["rows"][0]["position"] == [1, 0]


def test_btv_without_mask_and_bad_masks(tmp_path, runner):
    from geomix_cli.cli import app

    path, _, _ = _btv_file(tmp_path)
    rows = json.loads(runner.invoke(app, ["solve", str(path), "--json"]).stdout)["rows"]
    assert len(rows) == 6 and rows[4]["position"] == [1, 1]
    for mask, words in (([1, 0], "shape"), ([[0, 0, 0], [0, 0, 0]], "padded")):
        bad, _, _ = _btv_file(tmp_path, mask=mask, name="bad.npz")
        result = runner.invoke(app, ["solve", str(bad)])
        assert result.exit_code == 2 and words in result.output


def test_btv_on_the_device_path(tmp_path, runner):
    pytest.importorskip("torch")
    from geomix_cli.cli import app

    path, _, _ = _btv_file(tmp_path, mask=[[1, 1, 1], [1, 1, 0]])
    base = json.loads(runner.invoke(app, ["solve", str(path), "--json"]).stdout)["rows"]
    dev = json.loads(runner.invoke(app, ["solve", str(path), "--json", "--device", "cpu",
                                         "--dtype", "float64"]).stdout)["rows"]
    assert [r["position"] for r in dev] == [r["position"] for r in base]
    assert_allclose([r["alpha"] for r in dev], [r["alpha"] for r in base], rtol=0, atol=1e-13)
