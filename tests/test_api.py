"""geomix_cli.api: the Python API for training code, on numpy arrays and torch tensors.

The references here are independent of the API: scipy's log_softmax, the CLI (`geomix solve
--json`), a loop of single-row solves, closed forms (importance weights average to 1 under q) and
the identities of docs/derivation.md (swap, permutation, logit shift)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import log_softmax

from conftest import alpha_tolerance
from geomix_cli import api as gx
from geomix_cli.cases import case_raw_pair, load_cases
from geomix_cli.errors import InputError

torch = pytest.importorskip("torch")

CASES = load_cases("cases")
NUMBER_FIELDS = ("alpha", "chernoff", "kl_q_theta", "kl_q_t", "log_z", "ess_theta", "ess_t",
                 "alpha_entropy", "residual")


def _np(x):
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _logit_batch(rng, shape, scale=3.0, noise=1.0):
    base = rng.normal(0.0, scale, size=shape)
    return base + rng.normal(0.0, noise, size=shape), base + rng.normal(0.0, noise, size=shape)


# ------------------------------------------------------------------------------------------------
# the golden cases: the API, the CLI and the torch backend give the same answers


def _cli_records(case, tmp_path, runner):
    from geomix_cli.cli import app

    raw = case_raw_pair(case)
    path = tmp_path / f"{case.id}.npz"
    keys = ("pi_theta", "pi_t") if raw.kind == "probs" else ("logits_theta", "logits_t")
    np.savez(path, **{keys[0]: np.asarray(raw.theta), keys[1]: np.asarray(raw.target)})
    result = runner.invoke(app, ["solve", str(path), "--json", f"--{raw.kind}"])
    assert result.exit_code in (0, 3), result.output
    return raw, json.loads(result.stdout)["rows"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_api_agrees_with_geomix_solve_json_on_every_golden_case(case, tmp_path, runner):
    raw, records = _cli_records(case, tmp_path, runner)
    res = gx.solve(np.asarray(raw.theta), np.asarray(raw.target), kind=raw.kind,
                   on_invalid="status")
    names = {"kl_q_t": "kl_q_target", "ess_t": "ess_target"}
    assert res.status.shape == (len(records),)
    for i, rec in enumerate(records):
        assert res.status[i] == rec["status"]
        assert res.message[i] == rec["message"]
        assert int(res.iterations[i]) == rec["iterations"]
        for field in NUMBER_FIELDS:
            got, want = float(getattr(res, field)[i]), rec[names.get(field, field)]
            if want is None:
                assert np.isnan(got), (case.id, i, field)
            else:
                assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=f"{case.id} {i} {field}")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_numpy_and_torch_agree_on_every_golden_case(case):
    raw = case_raw_pair(case)
    theta, target = np.asarray(raw.theta, dtype=np.float64), np.asarray(raw.target, np.float64)
    a = gx.solve(theta, target, kind=raw.kind, on_invalid="status")
    b = gx.solve(torch.from_numpy(theta), torch.from_numpy(target), kind=raw.kind,
                 on_invalid="status")
    assert b.compute_dtype == "float64" and b.alpha.dtype == torch.float64
    assert_array_equal(b.status, a.status)
    ok = a.status == "ok"
    if ok.any():
        log_theta, log_t = _log_probs(theta[ok], target[ok], raw.kind)
        tol = alpha_tolerance(log_theta, log_t, a.alpha[ok], floor=1e-13)
        assert np.all(np.abs(_np(b.alpha)[ok] - a.alpha[ok]) <= tol), case.id
        for field in ("chernoff", "kl_q_theta", "kl_q_t"):
            assert_allclose(_np(getattr(b, field))[ok], getattr(a, field)[ok], rtol=1e-9,
                            atol=1e-13, err_msg=f"{case.id} {field}")
        for field in ("ess_theta", "ess_t", "alpha_entropy"):
            assert_allclose(_np(getattr(b, field))[ok], getattr(a, field)[ok], rtol=1e-9,
                            atol=1e-12, err_msg=f"{case.id} {field}")


def _log_probs(theta, target, kind):
    if kind == "probs":
        with np.errstate(divide="ignore"):
            return (np.log(theta) - np.log(theta.sum(-1, keepdims=True)),
                    np.log(target) - np.log(target.sum(-1, keepdims=True)))
    return log_softmax(theta, axis=-1), log_softmax(target, axis=-1)


# ------------------------------------------------------------------------------------------------
# inputs are explicit


def test_logits_logprobs_and_probs_give_the_same_result():
    rng = np.random.default_rng(1)
    theta, target = _logit_batch(rng, (3, 200))
    lp_theta, lp_t = log_softmax(theta, -1), log_softmax(target, -1)
    by_logits = gx.solve(theta, target)
    by_logprobs = gx.solve(lp_theta, lp_t, kind="logprobs")
    by_probs = gx.solve(np.exp(lp_theta), np.exp(lp_t), kind="probs")
    assert (by_logits.status == "ok").all()
    for other in (by_logprobs, by_probs):
        tol = alpha_tolerance(lp_theta, lp_t, by_logits.alpha, floor=1e-14)
        assert np.all(np.abs(other.alpha - by_logits.alpha) <= tol)
        assert_allclose(other.chernoff, by_logits.chernoff, rtol=1e-12)
        assert_allclose(other.ess_theta, by_logits.ess_theta, rtol=1e-12)
    t = gx.solve(torch.tensor(lp_theta), torch.tensor(lp_t), kind="logprobs")
    assert_allclose(_np(t.alpha), by_logits.alpha, rtol=0, atol=1e-12)


def test_unnormalised_logprobs_are_refused_and_raw_logits_never_solved_as_logprobs():
    rng = np.random.default_rng(2)
    theta, target = _logit_batch(rng, (4, 300))
    for x, y in ((theta, target), (torch.tensor(theta), torch.tensor(target)),
                 (torch.tensor(theta).bfloat16(), torch.tensor(target).bfloat16())):
        with pytest.raises(InputError) as info:
            gx.solve(x, y, kind="logprobs")
        assert isinstance(info.value, ValueError)
        assert "not normalised" in str(info.value) and "position [0]" in str(info.value)
    res = gx.solve(theta, target, kind="logprobs", on_invalid="status")
    assert (res.status == "invalid").all() and np.isnan(res.alpha).all()
    assert all("kind='logits'" in m for m in res.message)
    # one bad row among good log-probabilities: reported, the others solved
    lp_theta, lp_t = log_softmax(theta, -1), log_softmax(target, -1)
    lp_theta[2] += 0.5
    res = gx.solve(lp_theta, lp_t, kind="logprobs", on_invalid="status")
    assert list(res.status) == ["ok", "ok", "invalid", "ok"]
    assert "logsumexp = 0.5" in res.message[2]


def test_logprob_tolerance_follows_the_dtype():
    rng = np.random.default_rng(3)
    theta, target = _logit_batch(rng, (2, 5000))
    lp_theta = torch.log_softmax(torch.tensor(theta), -1)
    lp_t = torch.log_softmax(torch.tensor(target), -1)
    # bfloat16 log-probabilities sum off 1 by ~1e-2: accepted at bfloat16's tolerance
    res = gx.solve(lp_theta.bfloat16(), lp_t.bfloat16(), kind="logprobs")
    assert (res.status == "ok").all()
    # float32 log_softmax passes; a float64 row off by 1e-3 does not
    assert (gx.solve(lp_theta.float(), lp_t.float(), kind="logprobs").status == "ok").all()
    with pytest.raises(InputError):
        gx.solve(lp_theta.numpy() + 1e-3, lp_t.numpy(), kind="logprobs")


def test_raw_logits_regression_core_refuses_and_the_api_normalises(smollm2_logits):
    """core.solve_alpha used to take raw logits as log-probabilities and return a wrong alpha*
    with status 'ok'. Now every low-level entry point refuses them; the API normalises them."""
    from geomix_cli import core

    theta, target = (x[:4].astype(np.float64) for x in smollm2_logits)
    lp_theta, lp_t = log_softmax(theta, -1), log_softmax(target, -1)
    right = core.solve_alpha(lp_theta, lp_t).alpha
    for entry in (lambda a, b: core.solve_alpha(a, b), lambda a, b: core.classify_rows(a, b),
                  lambda a, b: core.solve_alpha(a, b, "halley"),
                  lambda a, b: core.solve_alpha(a, b, "brentq"),
                  lambda a, b: core.chernoff_information(a, b),
                  lambda a, b: core.family_point(a, b, 0.5),
                  lambda a, b: core.diagnose(a, b, core.solve_alpha(lp_theta, lp_t))):
        with pytest.raises(InputError, match="not normalised log-probabilities"):
            entry(theta, target)
    tol = alpha_tolerance(lp_theta, lp_t, right, floor=1e-15)  # two log-softmaxes, a few ulps
    assert np.all(np.abs(gx.solve(theta, target).alpha - right) <= tol)
    assert_allclose(_np(gx.solve(torch.tensor(theta), torch.tensor(target)).alpha), right,
                    rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# shapes, masks, batches


def test_btv_with_a_mask_equals_the_flattened_unmasked_rows():
    rng = np.random.default_rng(4)
    theta, target = _logit_batch(rng, (3, 4, 120))
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    res = gx.solve(theta, target, mask=mask)
    assert res.shape == (3, 4)
    assert_array_equal(res.status == "masked", mask == 0)
    assert np.isnan(res.alpha[mask == 0]).all() and (res.iterations[mask == 0] == 0).all()
    flat = gx.solve(theta[mask == 1], target[mask == 1])
    for field in NUMBER_FIELDS:
        assert_array_equal(getattr(res, field)[mask == 1], getattr(flat, field))
    assert_array_equal(res.status[mask == 1], flat.status)
    # torch: a boolean mask tensor, the same numbers to float64 agreement
    t = gx.solve(torch.tensor(theta), torch.tensor(target), mask=torch.tensor(mask == 1))
    assert_array_equal(t.status, res.status)
    assert_allclose(_np(t.alpha)[mask == 1], res.alpha[mask == 1], rtol=0, atol=1e-12)
    assert not bool(t.ok[2].any())


def test_batched_solve_is_a_loop_of_single_solves_to_the_last_bit():
    rng = np.random.default_rng(5)
    for vocab in (12, 700, 3000):  # the short-row and long-row paths
        theta, target = _logit_batch(rng, (9, vocab))
        theta[3, :5] = -np.inf
        batch = gx.solve(theta, target)
        for i in range(9):
            one = gx.solve(theta[i], target[i])
            assert one.shape == ()
            for field in NUMBER_FIELDS:
                assert_array_equal(getattr(one, field), getattr(batch, field)[i])
            assert one.status == batch.status[i] and one.iterations == batch.iterations[i]


def test_dim_moves_the_vocabulary_axis():
    rng = np.random.default_rng(6)
    theta, target = _logit_batch(rng, (2, 3, 80))
    last = gx.solve(theta, target)
    middle = gx.solve(np.moveaxis(theta, -1, 1), np.moveaxis(target, -1, 1), dim=1)
    assert middle.shape == (2, 3)
    assert_array_equal(middle.alpha, last.alpha)
    log_q = gx.geometric_mean(np.moveaxis(theta, -1, 1), np.moveaxis(target, -1, 1),
                              middle.alpha, dim=1)
    assert log_q.shape == (2, 80, 3)
    assert_allclose(np.moveaxis(log_q, 1, -1), gx.geometric_mean(theta, target, last.alpha),
                    rtol=0, atol=1e-14)


def test_every_position_masked_gives_an_all_masked_result():
    theta = np.zeros((2, 5))
    res = gx.solve(theta, theta, mask=np.zeros(2))
    assert list(res.status) == ["masked", "masked"] and np.isnan(res.alpha).all()


# ------------------------------------------------------------------------------------------------
# devices, dtypes, autograd


@pytest.mark.parametrize("dtype,compute", [(torch.float64, torch.float64),
                                           (torch.float32, torch.float32),
                                           (torch.bfloat16, torch.float32),
                                           (torch.float16, torch.float32)])
def test_torch_in_torch_out_on_the_device_in_the_compute_dtype(dtype, compute):
    rng = np.random.default_rng(7)
    theta, target = _logit_batch(rng, (2, 3, 400))
    x = torch.tensor(theta, dtype=dtype, requires_grad=True)
    y = torch.tensor(target, dtype=dtype)
    res = gx.solve(x, y)
    for field in NUMBER_FIELDS:
        value = getattr(res, field)
        assert isinstance(value, torch.Tensor) and value.dtype == compute, field
        assert value.device == x.device and value.shape == (2, 3) and not value.requires_grad
    assert res.iterations.dtype == torch.int64 and res.ok.dtype == torch.bool
    assert isinstance(res.status, np.ndarray) and res.status.shape == (2, 3)
    # the same numbers as numpy on the values the tensor holds
    held = x.detach().double().numpy(), y.double().numpy()
    exact = gx.solve(*held)
    tol = 1e-12 if compute == torch.float64 else 1e-6
    assert_allclose(_np(res.alpha), exact.alpha, rtol=0, atol=tol)
    log_q = gx.geometric_mean(x, y, res.alpha)
    assert log_q.dtype == compute and log_q.shape == x.shape and not log_q.requires_grad


def test_numpy_in_numpy_out_and_compute_dtype_is_torchs():
    rng = np.random.default_rng(8)
    theta, target = _logit_batch(rng, (2, 50))
    res = gx.solve(theta.astype(np.float32), target.astype(np.float32))
    assert isinstance(res.alpha, np.ndarray) and res.alpha.dtype == np.float64
    with pytest.raises(InputError, match="compute_dtype"):
        gx.solve(theta, target, compute_dtype="float32")
    t64 = gx.solve(torch.tensor(theta, dtype=torch.float32), torch.tensor(target,
                   dtype=torch.float32), compute_dtype="float64")
    assert t64.alpha.dtype == torch.float64
    assert_allclose(_np(t64.alpha), gx.solve(theta.astype(np.float32).astype(np.float64),
                                             target.astype(np.float32).astype(np.float64)).alpha,
                    rtol=0, atol=1e-12)


def test_other_methods_on_tensors_run_on_the_host_and_come_back():
    rng = np.random.default_rng(9)
    theta, target = _logit_batch(rng, (3, 60))
    for method in ("brentq", "bisection", "entropy", "halley"):
        a = gx.solve(theta, target, method=method)
        b = gx.solve(torch.tensor(theta), torch.tensor(target), method=method)
        assert b.method == method and isinstance(b.alpha, torch.Tensor)
        assert_allclose(_np(b.alpha), a.alpha, rtol=0, atol=1e-12)


def test_importing_the_api_does_not_import_torch():
    code = ("import sys, numpy as np; from geomix_cli import api as gx; "
            "gx.solve(np.zeros((2, 3)), np.ones((2, 3)));"
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------------
# log q*, importance weights, diagnostics


def test_geometric_mean_is_the_normalised_geometric_mean():
    rng = np.random.default_rng(10)
    theta, target = _logit_batch(rng, (4, 90))
    theta[1, :10] = -np.inf
    res = gx.solve(theta, target)
    log_q = gx.geometric_mean(theta, target, res.alpha)
    lp_theta, lp_t = log_softmax(theta, -1), log_softmax(target, -1)
    a = res.alpha[:, None]
    with np.errstate(invalid="ignore"):
        direct = log_softmax(np.where(np.isfinite(lp_theta), a * lp_theta + (1 - a) * lp_t,
                                      -np.inf), axis=-1)
    assert_allclose(log_q, direct, rtol=0, atol=1e-13)
    assert_allclose(gx.geometric_mean(theta, target, 1.0), lp_theta, rtol=0, atol=1e-14)
    assert_allclose(gx.geometric_mean(theta, target, 0.0), lp_t, rtol=0, atol=1e-14)
    masked = gx.geometric_mean(theta, target, res.alpha, mask=[1, 0, 1, 1])
    assert np.isnan(masked[1]).all()
    assert np.isnan(gx.geometric_mean(theta, target, np.array([0.5, np.nan, 0.5, 0.5]))[1]).all()
    with pytest.raises(InputError, match="alpha"):
        gx.geometric_mean(theta, target, 1.5)
    t = gx.geometric_mean(torch.tensor(theta), torch.tensor(target), torch.tensor(res.alpha))
    assert_allclose(_np(t), log_q, rtol=0, atol=1e-12)


def test_importance_weights_are_pi_over_q_and_average_to_one_under_q():
    rng = np.random.default_rng(11)
    theta, target = _logit_batch(rng, (2, 3, 40))
    res = gx.solve(theta, target)
    log_q = gx.geometric_mean(theta, target, res.alpha)
    every = np.broadcast_to(np.arange(40), (2, 3, 40))
    w = gx.importance_weights(theta, target, res.alpha, every)
    lp_theta, lp_t = log_softmax(theta, -1), log_softmax(target, -1)
    assert_allclose(w.theta, np.exp(lp_theta - log_q), rtol=1e-12)
    assert_allclose(w.t, np.exp(lp_t - log_q), rtol=1e-12)
    # E_q[pi / q] = sum pi = 1 on each side, and 1 / E_q[(pi/q)^2] is the ESS of q
    assert_allclose((np.exp(log_q) * w.theta).sum(-1), 1.0, rtol=1e-12)
    assert_allclose((np.exp(log_q) * w.t).sum(-1), 1.0, rtol=1e-12)
    assert_allclose(1 / (np.exp(log_q) * w.theta ** 2).sum(-1), res.ess_theta, rtol=1e-10)
    one = gx.importance_weights(theta, target, res.alpha, every[..., 7], log=True)
    assert one.theta.shape == (2, 3)
    assert_allclose(one.theta, np.log(w.theta[..., 7]), rtol=0, atol=1e-12)
    tw = gx.importance_weights(torch.tensor(theta), torch.tensor(target), res.alpha,
                               torch.tensor(every))
    assert_allclose(_np(tw.theta), w.theta, rtol=1e-11)
    for bad in (every + 40, every.astype(float), every[..., :1, :]):
        with pytest.raises(InputError, match="tokens"):
            gx.importance_weights(theta, target, res.alpha, bad)


def test_importance_weights_off_the_common_support():
    # token 2 has pi_theta > 0 = pi_t: q = 0 there, pi_theta/q = inf, pi_t/q = 0/0
    theta = np.log(np.array([0.5, 0.3, 0.2]))
    target = np.array([np.log(0.4), np.log(0.6), -np.inf])
    w = gx.importance_weights(theta, target, 0.5, np.array([0, 2]), kind="logprobs")
    assert np.isfinite(w.theta[0]) and w.theta[1] == np.inf and np.isnan(w.t[1])
    ends = gx.importance_weights(theta, target, 1.0, np.array([0, 2]), kind="logprobs")
    assert_allclose(ends.theta, [1.0, 1.0])        # q = pi_theta at alpha = 1
    assert_allclose(ends.t, [0.4 / 0.5, 0.0])


def test_diagnostics_at_alpha_star_match_the_solve():
    rng = np.random.default_rng(12)
    theta, target = _logit_batch(rng, (5, 70))
    res = gx.solve(theta, target)
    d = gx.diagnostics(theta, target, res.alpha)
    assert (d.status == "ok").all()
    assert_allclose(d.kl_q_theta, res.kl_q_theta, rtol=1e-12)
    assert_allclose(d.ess_t, res.ess_t, rtol=1e-12)
    assert_allclose(d.alpha_entropy, res.alpha_entropy, rtol=1e-12)
    assert_allclose(d.delta, res.residual, rtol=0, atol=1e-14)
    at_one = gx.diagnostics(theta, target, 1.0)
    assert_allclose(at_one.kl_q_theta, 0.0, atol=1e-15)
    assert_allclose(at_one.ess_theta, 1.0, rtol=1e-15)
    disjoint = gx.diagnostics(np.array([[0.0, -np.inf]]), np.array([[-np.inf, 0.0]]), 0.5)
    assert disjoint.status[0] == "disjoint-support" and np.isnan(disjoint.kl_q_theta[0])


# ------------------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize("call,match", [
    (lambda: gx.solve(np.zeros((2, 3)), torch.zeros(2, 3)), "same array type"),
    (lambda: gx.solve(np.zeros((2, 3)), np.zeros((3, 3))), "never broadcast"),
    (lambda: gx.solve(np.zeros(3), np.zeros(3), kind="log"), "kind"),
    (lambda: gx.solve(np.zeros(3), np.zeros(3), dim=2), "dim"),
    (lambda: gx.solve(np.zeros((2, 3)), np.zeros((2, 3)), mask=[1, 2]), "mask"),
    (lambda: gx.solve(np.zeros((2, 3)), np.zeros((2, 3)), mask=[1, 0, 1]), "mask"),
    (lambda: gx.solve(np.zeros(3), np.zeros(3), method="secant"), "method"),
    (lambda: gx.solve(np.zeros(3), np.zeros(3), on_invalid="ignore"), "on_invalid"),
    (lambda: gx.solve(np.array(["a"]), np.array(["b"])), "non-numeric"),
    (lambda: gx.solve(np.array([1.0, np.nan]), np.zeros(2)), "NaN at column 1"),
    (lambda: gx.solve(np.array([0.5, 0.6]), np.array([0.5, 0.5]), kind="probs"),
     "renormalize=True"),
])
def test_bad_input_is_an_input_error_naming_what_is_wrong(call, match):
    with pytest.raises(InputError, match=match):
        call()


def test_on_invalid_status_reports_the_bad_row_like_the_cli():
    theta = np.array([[0.0, 1.0, 2.0], [np.nan, 1.0, 0.0], [1.0, 0.0, -1.0]])
    target = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    res = gx.solve(theta, target, on_invalid="status")
    assert list(res.status) == ["ok", "invalid", "ok"]
    assert res.message[1] == "key 'theta': NaN at column 0"
    t = gx.solve(torch.tensor(theta), torch.tensor(target), on_invalid="status")
    assert list(t.status) == list(res.status) and t.message[1] == res.message[1]
    assert_array_equal(res.alpha[[0, 2]], gx.solve(theta[[0, 2]], target[[0, 2]]).alpha)


# ------------------------------------------------------------------------------------------------
# the identities of docs/derivation.md, through the API, on both libraries

_rows = st.integers(min_value=2, max_value=40).flatmap(
    lambda v: st.tuples(st.integers(0, 2**32 - 1), st.just(v),
                        st.floats(0.2, 6.0), st.floats(-30.0, 30.0)))


@settings(max_examples=30, deadline=None)
@given(_rows, st.booleans())
def test_swap_permutation_and_logit_shift_through_the_api(params, on_torch):
    seed, vocab, scale, shift = params
    rng = np.random.default_rng(seed)
    theta, target = _logit_batch(rng, (2, vocab), scale=scale)
    wrap = (lambda x: torch.tensor(x)) if on_torch else (lambda x: x)
    base = gx.solve(wrap(theta), wrap(target), on_invalid="status")
    ok = base.status == "ok"
    if not ok.any():
        return
    alpha = _np(base.alpha)
    tol = alpha_tolerance(log_softmax(theta[ok], -1), log_softmax(target[ok], -1), alpha[ok],
                          floor=1e-12)
    swapped = gx.solve(wrap(target), wrap(theta), on_invalid="status")
    assert_array_equal(swapped.status, base.status)
    assert np.all(np.abs(_np(swapped.alpha)[ok] - (1.0 - alpha[ok])) <= 2 * tol)
    perm = rng.permutation(vocab)
    permuted = gx.solve(wrap(theta[:, perm]), wrap(target[:, perm]), on_invalid="status")
    assert np.all(np.abs(_np(permuted.alpha)[ok] - alpha[ok]) <= 2 * tol)
    shifted = gx.solve(wrap(theta + shift), wrap(target - shift), on_invalid="status")
    assert np.all(np.abs(_np(shifted.alpha)[ok] - alpha[ok]) <= 2 * tol)
    assert_allclose(_np(shifted.chernoff)[ok], _np(base.chernoff)[ok], rtol=1e-9, atol=1e-13)


# ------------------------------------------------------------------------------------------------
# the documentation's worked example runs as written


def test_the_worked_example_in_docs_api_md_runs(capsys):
    from pathlib import Path
    from types import SimpleNamespace

    text = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    block = text.split("## A worked example")[1].split("```python")[1].split("```")[0]

    class ToyLM:  # stands in for a causal LM: logits [B, T, V] from a shared base
        def __init__(self, noise_seed):
            self.noise = torch.Generator().manual_seed(noise_seed)

        def __call__(self, input_ids, attention_mask=None):
            base = torch.randn(*input_ids.shape, 300, generator=torch.Generator().manual_seed(0))
            noise = torch.randn(base.shape, generator=self.noise)
            return SimpleNamespace(logits=(3 * base + noise).to(torch.bfloat16))

    scope = {"policy": ToyLM(1), "target": ToyLM(2),
             "input_ids": torch.zeros(2, 5, dtype=torch.long),
             "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])}
    exec(block, scope)
    res, w, log_q = scope["res"], scope["w"], scope["log_q"]
    assert res.shape == (2, 5) and res.alpha.dtype == torch.float32
    assert list(res.status[0]) == ["ok", "ok", "ok", "masked", "masked"]
    assert log_q.shape == (2, 5, 300) and torch.isnan(log_q[0, 3]).all()
    assert torch.isfinite(w.theta[res.ok]).all() and torch.isnan(w.theta[~res.ok]).all()
    assert "alpha* mean" in capsys.readouterr().out
