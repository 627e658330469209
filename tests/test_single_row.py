"""The small-call lane (`core.single_row`, `api._solve_one_row`, `validation.normalise_plain_rows`,
`passes.row_moments` / `rows_moments`) against the general path it short-cuts, row for row.

The lane claims the general path's numbers to the last bit (the same operations on the same
values), so the comparisons here are exact (assert_array_equal), on many rows: lengths on both
sides of every grid-size step, peaked and flat rows, near-identical pairs (re-centred), all three
kinds, Newton and Halley, with and without diagnostics, any leading shape of one position. The
rows the lane must decline (zeros, no root, disjoint supports, unnormalised or non-finite input,
a row that does not converge) are checked to be declined and to get the general path's statuses,
messages and errors. The general path is forced by switching the lane off (monkeypatch), so
both sides run in the same process on the same inputs. Accuracy: alpha* against a 40-digit
mpmath bisection, within the conditioning tolerance of float64."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from conftest import alpha_tolerance, mpmath_alpha
from geomix_cli import api as gx
from geomix_cli.core import kernel, passes, single_row, solvers
from geomix_cli.core.validation import normalise_plain_rows, tolerance_for, validate_pair
from geomix_cli.errors import InputError

FIELDS = ("alpha", "chernoff", "kl_q_theta", "kl_q_t", "log_z", "ess_theta", "ess_t",
          "alpha_entropy", "residual", "iterations", "status", "message", "ok")
# lengths around the first pass's grid sizes (9, 5, 3 alphas up to V = 32, 128, 1365)
VOCABS = (2, 3, 10, 32, 33, 100, 128, 129, 455, 1365, 1366, 5000)


@pytest.fixture
def general(monkeypatch):
    """Run a callable with the lane switched off: every row takes the general path."""

    def run(function, *args, **kwargs):
        with monkeypatch.context() as patch:
            patch.setattr(single_row, "solve_row_numbers", lambda *a, **k: None)
            return function(*args, **kwargs)

    return run


def logit_pairs(vocab: int, seed: int, count: int = 4):
    """(theta, target) logit rows: flat to peaked, unrelated to near-identical (C ~ 1e-8)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        scale = (0.3, 2.0, 6.0, 1.0)[i % 4]
        theta = rng.standard_normal(vocab) * scale
        if i % 4 == 3:    # near-identical: max|l| << 1, the re-centred rows
            target = theta + 1e-4 * rng.standard_normal(vocab)
        else:
            target = rng.uniform(0.0, 1.0) * theta + rng.standard_normal(vocab) * scale
        out.append((theta, target))
    return out


def softmax(x):
    w = np.exp(x - x.max())
    return w / w.sum()


def log_softmax(x):
    z = x - x.max()
    return z - np.log(np.exp(z).sum())


def as_kind(theta, target, kind):
    if kind == "probs":
        return softmax(theta), softmax(target)
    if kind == "logprobs":
        return log_softmax(theta), log_softmax(target)
    return theta, target


def assert_same_result(lane, reference):
    for name in FIELDS:
        a, b = getattr(lane, name), getattr(reference, name)
        if b is None:
            assert a is None, name
            continue
        assert type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape, name
        assert_array_equal(a, b, err_msg=name, strict=True)
    assert (lane.method, lane.kind, lane.compute_dtype) == (
        reference.method, reference.kind, reference.compute_dtype)
    # the lane builds its SolveResult without __init__ (api._frozen): every field, nothing else
    assert vars(lane).keys() == vars(reference).keys() == {
        f.name for f in dataclasses.fields(gx.SolveResult)}
    assert lane.extra == reference.extra


# ------------------------------------------------------------------------------------------------
# the API: one call on one row, lane against the general path


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("kind", ("logits", "logprobs", "probs"))
def test_api_lane_equals_the_general_path_to_the_last_bit(general, vocab, kind):
    for k, (theta, target) in enumerate(logit_pairs(vocab, seed=vocab)):
        a, b = as_kind(theta, target, kind)
        for diagnostics in (True, False):
            for method in ("newton", "halley"):
                lane = gx.solve(a, b, kind=kind, method=method, diagnostics=diagnostics)
                # the lane took the row (else both sides would be the general path)
                assert gx._solve_one_row(a, b, kind, method, diagnostics) is not None, (vocab, k)
                reference = general(gx.solve, a, b, kind=kind, method=method,
                                    diagnostics=diagnostics)
                assert reference.status == "ok", (vocab, k)
                assert_same_result(lane, reference)


@pytest.mark.parametrize("shape", ((1, 50), (1, 1, 50), (50, 1)))
def test_api_lane_keeps_the_leading_shape_of_one_position(general, shape):
    theta, target = logit_pairs(50, seed=3, count=1)[0]
    dim = -1 if shape[-1] == 50 else 0
    a, b = theta.reshape(shape), target.reshape(shape)
    lane = gx.solve(a, b, dim=dim)
    assert_same_result(lane, general(gx.solve, a, b, dim=dim))
    assert lane.alpha.shape == tuple(s for i, s in enumerate(shape) if i != dim % len(shape))


def test_api_lane_takes_float32_inputs_as_the_general_path_does(general):
    theta, target = logit_pairs(300, seed=4, count=1)[0]
    for kind in ("logits", "probs"):
        a, b = (x.astype(np.float32) for x in as_kind(theta, target, kind))
        assert_same_result(gx.solve(a, b, kind=kind), general(gx.solve, a, b, kind=kind))


def test_a_row_alone_agrees_with_the_same_row_in_a_batch():
    """The lane (one row) against the general path's arrays (the row among others): the same
    rules; agreement to float64's conditioning of alpha* (the batch's Newton runs on arrays)."""
    pairs = [as_kind(t, g, "logprobs") for v in (10, 100, 1000) for t, g in logit_pairs(v, v)]
    for vocab in (10, 100, 1000):
        rows = [p for p in pairs if p[0].shape[0] == vocab]
        theta = np.stack([p[0] for p in rows])
        target = np.stack([p[1] for p in rows])
        batch = gx.solve(theta, target, kind="logprobs")
        for i in range(theta.shape[0]):
            alone = gx.solve(theta[i], target[i], kind="logprobs")
            assert alone.status == batch.status[i] == "ok"
            tol = alpha_tolerance(theta[i], target[i], alone.alpha, factor=4.0, floor=1e-15)
            assert abs(alone.alpha - batch.alpha[i]) <= tol[0]
            assert abs(alone.chernoff - batch.chernoff[i]) <= 1e-15 + 1e-13 * batch.chernoff[i]


@pytest.mark.parametrize("vocab", (10, 100, 1000))
def test_lane_alpha_against_a_40_digit_reference(vocab):
    for theta, target in logit_pairs(vocab, seed=100 + vocab, count=3):
        result = gx.solve(theta, target)
        reference = mpmath_alpha(theta, target, logits=True)
        log_theta, log_t = log_softmax(theta), log_softmax(target)
        tol = alpha_tolerance(log_theta, log_t, reference)
        assert abs(float(result.alpha) - reference) <= tol[0], (vocab, result.alpha, reference)
        assert float(result.alpha) == pytest.approx(reference, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# the rows the lane declines


DECLINED = {
    "a zero in theta": ([0.5, 0.3, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4]),
    "a zero on both sides": ([0.5, 0.5, 0.0], [0.2, 0.8, 0.0]),
    "identical (degenerate)": ([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]),
    "l constant on S (no root)": ([0.5, 0.5, 0.0], [0.25, 0.25, 0.5]),
    "disjoint supports": ([1.0, 0.0], [0.0, 1.0]),
}


@pytest.mark.parametrize("name", sorted(DECLINED))
def test_rows_without_an_ok_root_are_declined_with_the_general_statuses(general, name):
    p, q = (np.array(v) for v in DECLINED[name])
    log_p, log_q, _ = validate_pair(p, q, "probs")
    assert single_row.solve_row_numbers(log_p[0], log_q[0]) is None
    assert single_row.solve_row(log_p, log_q) is None
    for diagnostics in (True, False):
        lane = gx.solve(p, q, kind="probs", diagnostics=diagnostics, on_invalid="status")
        reference = general(gx.solve, p, q, kind="probs", diagnostics=diagnostics,
                            on_invalid="status")
        assert_same_result(lane, reference)
    # on S = the first three tokens, l = log(pi_t / pi_theta) < 0 for "a zero in theta" at both
    # one-sided limits: no root
    expected = {"identical (degenerate)": "degenerate", "disjoint supports": "disjoint-support",
                "l constant on S (no root)": "no-root", "a zero on both sides": "ok",
                "a zero in theta": "no-root"}
    assert lane.status == expected[name]


BAD_INPUTS = {
    "probabilities summing to 0.9": ("probs", [0.3, 0.3, 0.3], [0.2, 0.3, 0.5]),
    "a negative probability": ("probs", [0.6, 0.5, -0.1], [0.2, 0.3, 0.5]),
    "a NaN probability": ("probs", [0.5, np.nan, 0.5], [0.2, 0.3, 0.5]),
    "raw logits as logprobs": ("logprobs", [2.0, 1.0, 0.5], [0.1, 0.3, 0.2]),
    "an infinite logit": ("logits", [np.inf, 1.0, 0.5], [0.1, 0.3, 0.2]),
    "a NaN logit": ("logits", [1.0, np.nan, 0.5], [0.1, 0.3, 0.2]),
    "every logit -inf": ("logits", [-np.inf, -np.inf], [0.1, 0.3]),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_inputs_get_the_general_errors_and_statuses(general, name):
    kind, p, q = BAD_INPUTS[name]
    p, q = np.array(p), np.array(q)
    with pytest.raises(InputError) as lane_error:
        gx.solve(p, q, kind=kind)
    with pytest.raises(InputError) as reference_error:
        general(gx.solve, p, q, kind=kind)
    assert str(lane_error.value) == str(reference_error.value)
    lane = gx.solve(p, q, kind=kind, on_invalid="status")
    assert lane.status == "invalid"
    assert_same_result(lane, general(gx.solve, p, q, kind=kind, on_invalid="status"))


def test_a_row_that_does_not_converge_takes_the_general_path(general):
    theta, target = (log_softmax(x) for x in logit_pairs(1000, seed=8, count=1)[0])
    a, b = theta[None], target[None]
    assert single_row.solve_row(a, b, max_iter=1) is None
    lane = solvers.solve_blocks(a, b, max_iter=1)
    reference = general(solvers.solve_blocks, a, b, max_iter=1)
    assert lane["status"][0] == reference["status"][0] == "max-iter"
    assert_array_equal(lane["alpha"], reference["alpha"])
    assert_array_equal(lane["iterations"], reference["iterations"])


def test_log_probabilities_off_by_their_logsumexp_are_refused_by_the_solvers():
    """solve_alpha's own normalisation check (raw logits passed as log-probabilities) is the
    general path's, with its message: the lane declines such a row."""
    theta, target = logit_pairs(20, seed=5, count=1)[0]
    with pytest.raises(InputError, match="not normalised log-probabilities"):
        solvers.solve_alpha(theta, target)


# ------------------------------------------------------------------------------------------------
# the pieces: solve_blocks' single row, validation's plain case, the lean passes


@pytest.mark.parametrize("vocab", VOCABS)
def test_solve_blocks_lane_equals_the_kernel_row_for_row(general, vocab):
    for theta, target in logit_pairs(vocab, seed=vocab + 1):
        a, b = log_softmax(theta)[None], log_softmax(target)[None]
        for order in (2, 3):
            for diagnostics in (False, True):
                lane = solvers.solve_blocks(a, b, order=order, diagnostics=diagnostics)
                reference = general(solvers.solve_blocks, a, b, order=order,
                                    diagnostics=diagnostics)
                assert set(lane) == set(reference)
                for key in reference:
                    assert_array_equal(np.asarray(lane[key]), np.asarray(reference[key]),
                                       err_msg=key, strict=True)


@pytest.mark.parametrize("kind", ("logits", "logprobs", "probs"))
def test_plain_normalisation_equals_validate_pair_to_the_last_bit(kind):
    for vocab in (2, 10, 1000):
        for theta, target in logit_pairs(vocab, seed=vocab + 2):
            a, b = as_kind(theta, target, kind)
            x = np.stack([a, b])
            assert normalise_plain_rows(x, kind, tolerance_for(kind, "float64", vocab))
            log_a, log_b, errors = validate_pair(a, b, kind)
            assert errors == [None]
            assert_array_equal(x[0], log_a[0], strict=True)
            assert_array_equal(x[1], log_b[0], strict=True)


@pytest.mark.parametrize("kind, row", [
    ("probs", [0.5, 0.5, 0.0]), ("probs", [0.6, 0.6, -0.2]), ("probs", [0.5, 0.4, 0.05]),
    ("probs", [np.nan, 0.5, 0.5]), ("probs", [np.inf, 0.5, 0.5]),
    ("logits", [0.0, -np.inf, 1.0]), ("logits", [np.nan, 0.0, 1.0]), ("logits", [np.inf, 0, 1]),
    ("logprobs", [0.0, 1.0, 2.0]),
])
def test_plain_normalisation_declines_what_validation_must_judge(kind, row):
    good = np.array([0.2, 0.3, 0.5]) if kind == "probs" else np.log([0.2, 0.3, 0.5])
    x = np.stack([np.array(row, dtype=np.float64), good])
    with np.errstate(all="raise"):   # the plain check itself never trips a floating-point flag
        assert not normalise_plain_rows(x, kind, tolerance_for(kind, "float64", 3))


@pytest.mark.parametrize("order", (0, 1, 2, 3))
def test_lean_passes_equal_moments_to_the_last_bit(order):
    rng = np.random.default_rng(order)
    for vocab in (3, 17, 1000):
        log_theta = log_softmax(rng.standard_normal(vocab) * 3)
        log_t = log_softmax(rng.standard_normal(vocab) * 3)
        l = (log_t - log_theta)[None]
        alphas = np.array([[0.0], [0.3], [0.71], [1.0], [-0.4], [1.6]])
        reference = passes.moments(np, l, log_t[None], alphas, order=order, supported=True,
                                   bounded=True)
        many = passes.rows_moments(l[0], log_t, alphas, np.empty((order + 1, 6, vocab)),
                                   order)
        for j in range(4):
            if reference[j] is None:
                assert many[j] is None
                continue
            assert_array_equal(many[j], reference[j][:, 0], strict=True)
        if order == 0:
            continue
        for i, alpha in enumerate(alphas[:, 0]):
            one = passes.row_moments(l[0], log_t, float(alpha), np.empty((order + 1, vocab)),
                                     order)
            for j in range(4):
                expected = None if reference[j] is None else float(reference[j][i, 0])
                assert one[j] == expected, (vocab, alpha, j)
            # with the other alphas riding along: the same moments, and every log Z
            others = np.concatenate([[[alpha]], alphas])
            ride = passes.row_moments(l[0], log_t, others, np.empty((7 + order, vocab)),
                                      order)
            assert ride[:4] == one[:4]
            assert ride[4][1:] == reference[0][:, 0].tolist()


def test_root_inside_is_status_code_ok():
    from itertools import product

    from geomix_cli.core.rules import _RowScalars, root_inside, status_code

    values = (-1.0, -1e-13, -0.0, 0.0, 1e-13, 0.5, np.nan)
    for d0, d1, spread, level in product(values, values, (0.0, 1e-14, 1e-12, 2.0, np.nan),
                                         (0.0, 1e-14, 1.0)):
        tol = 1e-13
        expected = status_code(_RowScalars, d0, d1, spread, level, tol, tol, True, False) == 0
        assert root_inside(d0, d1, spread, tol, tol) == expected, (d0, d1, spread, level)


def test_lean_pass_declines_an_out_of_range_normaliser():
    """Z beyond [1e-280, 1e280] (C above 644 nats): the lean passes hand the row back (the
    general pass redoes it with the max-shift)."""
    l = np.array([-800.0, 800.0])
    base = np.array([-1e-300, -800.0])
    with np.errstate(over="ignore"):
        assert passes.row_moments(l, base, 2.0, np.empty((3, 2))) is None
        assert passes.rows_moments(l, base, np.array([[2.0]]), np.empty((3, 1, 2))) is None


def test_extreme_rows_and_strict_error_states_fall_back_quietly(general):
    """A row whose family weights would overflow (max|l| ~ 400), under a caller's error state
    that raises on overflow, invalid and divide: the lane sets no state and trips none; the row
    gets the general path's numbers."""
    theta = np.array([0.0, -400.0, -5.0, -2.0])
    target = np.array([-400.0, 0.0, -3.0, -1.0])
    strict = dict(over="raise", invalid="raise", divide="raise")
    with np.errstate(**strict):
        lane = gx.solve(theta, target)
        reference = general(gx.solve, theta, target)
    assert_same_result(lane, reference)
    assert lane.status == "ok"
    theta, target = logit_pairs(100, seed=6, count=1)[0]
    with np.errstate(**strict):
        assert_same_result(gx.solve(theta, target), general(gx.solve, theta, target))


def test_the_family_from_the_last_newton_pass_equals_a_separate_pass(monkeypatch):
    """newton_one_row's merged last pass (alpha, 2 - alpha, -alpha together) gives the bits of
    the separate family pass."""
    merged_passes = []

    def counting(l, log_base, alpha, buf, order=2):
        merged_passes.append(np.shape(alpha)[:1])
        return passes.row_moments(l, log_base, alpha, buf, order)

    monkeypatch.setattr(kernel, "row_moments", counting)
    checked = 0
    for vocab in (10, 1000):
        for theta, target in logit_pairs(vocab, seed=vocab + 3):
            a, b = log_softmax(theta), log_softmax(target)
            if np.abs(b - a).max() <= kernel.RECENTRE_MAX_ABS_L:
                continue        # (re-centred rows: covered by the row-for-row tests)
            merged = single_row.solve_row_numbers(a, b, diagnostics=True)
            alone = single_row._family_row((b - a)[None], b, merged["alpha"],
                                           merged["log_z_at_alpha"], merged["residual"], 0.0,
                                           {})
            for key in ("log_z", "delta", "ess_theta", "ess_t", "kl_q_theta", "kl_q_t"):
                assert merged[key] == alone[key], key
            checked += 1
    assert checked >= 4 and (3,) in merged_passes


def test_cubic_bisection_row_by_row_equals_the_array_steps(monkeypatch):
    """Small blocks bisect the Hermite cubic row by row on floats (`rules._RowArrays.
    bisect_cubic`): the brackets of the array steps, bit for bit, including NaN and flat rows."""
    from geomix_cli.core import rules

    rng = np.random.default_rng(11)
    n = rules.SCALAR_BISECTION_ROWS
    d = rng.uniform(1e-12, 1.0, n)
    a, b, c = (rng.standard_normal(n) * s for s in (3.0, 2.0, 1.0))
    a[0], d[1], c[2] = np.nan, 0.0, 0.0           # NaN, a root at 0, a quadratic
    by_row = rules._RowArrays.bisect_cubic(d, a, b, c, rules.CUBIC_STEPS)
    monkeypatch.setattr(rules, "SCALAR_BISECTION_ROWS", 0)
    by_array = rules._RowArrays.bisect_cubic(d, a, b, c, rules.CUBIC_STEPS)
    for mine, theirs in zip(by_row, by_array):
        assert_array_equal(mine, theirs, strict=True)
    assert np.all(by_row[1] - by_row[0] <= 2.0 ** -rules.CUBIC_STEPS)


def test_a_newton_pass_out_of_range_redone_with_the_shift_warns_nothing(general):
    """A well-separated pair whose Newton pass has Z below 1e-280: the lane's lean pass declines
    and the shifted pass takes over, without a numpy warning (log 0 on the way)."""
    import warnings

    vocab = 2000
    theta = np.full(vocab, -1600.0)
    theta[0] = 0.0
    target = np.full(vocab, -1600.0)
    target[1] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lane = gx.solve(theta, target)
    assert lane.status == "ok"
    assert_same_result(lane, general(gx.solve, theta, target))


@pytest.mark.parametrize("diagnostics", (True, False))
def test_a_row_the_lane_declines_is_not_tried_by_it_twice(monkeypatch, diagnostics):
    calls = []
    real = single_row.solve_row_numbers

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(single_row, "solve_row_numbers", counting)
    same = np.log(np.full(50, 1 / 50))                 # identical rows: degenerate, declined
    res = gx.solve(same, same, kind="logprobs", diagnostics=diagnostics)
    assert res.status == "degenerate" and len(calls) == 1
