"""The speed work keeps every number: the numpy logsumexp is scipy's algorithm, the blocked /
in-place / short-row evaluations give what the plain formulas give, blocks and threads change
nothing, and `import geomix_cli.core` stays free of scipy, torch, pandas and matplotlib. (No timing
here.)"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.special import logsumexp as scipy_logsumexp

from geomix_cli.core import family, kernel
from geomix_cli.core.family import (effective_sample_size, entropy, family_point, kl_divergence,
                                    log_q_alpha, logsumexp)
from geomix_cli.core.validation import validate_rows


def _same(actual, expected):
    """Equal to the last bit (NaN where NaN): rtol = atol = 0."""
    assert_allclose(actual, expected, rtol=0, atol=0, equal_nan=True)


def _rows_with_holes(rng, n_rows, vocab, scale=3.0, hole=0.3):
    x = rng.normal(size=(n_rows, vocab)) * scale
    x[rng.random(x.shape) < hole] = -np.inf
    x[:, 0] = 0.0  # every row keeps some mass
    return x


@pytest.mark.parametrize("shape", [(5, 1000), (3, 7), (300,), (2, 3, 400), (3, 300_000)])
def test_logsumexp_gives_scipys_numbers(shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape) * 30
    _same(logsumexp(x), scipy_logsumexp(x, axis=-1))
    _same(logsumexp(x, axis=-1, keepdims=True), scipy_logsumexp(x, axis=-1, keepdims=True))


def test_logsumexp_special_rows_as_scipy():
    x = np.array([[np.inf, 1.0, 2.0], [1.0, np.nan, 3.0], [-np.inf, 0.0, 0.0],
                  [-np.inf, -np.inf, -np.inf], [0.0, 0.0, 0.0], [1e-300, 0.0, -1e300]])
    with np.errstate(all="ignore"):
        expected = scipy_logsumexp(x, axis=-1)
    _same(logsumexp(x), expected)
    assert logsumexp(x)[0] == np.inf and logsumexp(x)[3] == -np.inf


def test_log_softmax_validation_matches_the_plain_formula():
    rng = np.random.default_rng(7)
    x = _rows_with_holes(rng, 6, 5000, scale=40.0)
    x[1, 3] = np.nan
    x[2, 10] = np.inf
    x[3, :] = -np.inf
    x[4, :] = 1e6  # ties at the maximum
    rows = validate_rows(x, "logits", name="logits_theta")
    safe = np.where(np.isfinite(x).any(axis=1)[:, None] & ~np.isnan(x).any(axis=1)[:, None]
                    & ~np.isposinf(x).any(axis=1)[:, None], x, 0.0)
    with np.errstate(invalid="ignore"):
        shifted = safe - np.max(safe, axis=1, keepdims=True)
        expected = shifted - scipy_logsumexp(shifted, axis=1, keepdims=True)
    good = [0, 4, 5]
    _same(rows.log_p[good], expected[good])
    assert rows.row_errors[0] is None and rows.row_errors[4] is None
    assert rows.row_errors[1] == "NaN at column 3"
    assert rows.row_errors[2] == "+inf logit at column 10"
    assert rows.row_errors[3] == "every logit is -inf (no probability mass)"
    _same(rows.log_p[[1, 2, 3]], np.full((3, 5000), -np.log(5000)))


def _log_probs(rng, n_rows, vocab, **kw):
    return validate_rows(_rows_with_holes(rng, n_rows, vocab, **kw), "logits", name="x").log_p


@pytest.mark.parametrize("seed", range(20))
def test_family_point_equals_the_plain_formulas(seed):
    """kernel.family_at (KLs from log Z and D, ESS from Z(alpha) Z(2 - alpha)) against the direct
    sums: KL(q||pi) = sum q log(q / pi), ESS_pi(q) = 1 / sum pi^2 / q (replaces the test of the
    former in-place and general family_point paths: there is one path now)."""
    rng = np.random.default_rng(seed)
    n_rows, vocab = int(rng.integers(1, 4)), int(rng.integers(2, 60))
    a = _log_probs(rng, n_rows, vocab, scale=rng.uniform(0.1, 30))
    b = a.copy() if seed % 5 == 0 else _log_probs(rng, n_rows, vocab, scale=rng.uniform(0.1, 30))
    alpha = rng.uniform(0.05, 0.95, size=n_rows)
    point = family_point(a, b, alpha)
    log_q = log_q_alpha(a, b, alpha)
    assert_allclose(point.kl_q_theta, kl_divergence(log_q, a), rtol=1e-9, atol=1e-12)
    assert_allclose(point.kl_q_target, kl_divergence(log_q, b), rtol=1e-9, atol=1e-12)
    assert_allclose(point.ess_theta, effective_sample_size(a, log_q), rtol=1e-10)
    assert_allclose(point.ess_target, effective_sample_size(b, log_q), rtol=1e-10)


@pytest.mark.parametrize("seed", range(10))
def test_raw_moments_equal_the_centred_ones(seed):
    """The passes take raw sums (Var = E l^2 - D^2); against centred sums written out here they
    agree to rounding, and exactly where Newton uses them (D ~ 0)."""
    rng = np.random.default_rng(seed)
    vocab = int(rng.integers(2, 3000))
    a = _log_probs(rng, 3, vocab, scale=rng.uniform(0.1, 5))
    b = _log_probs(rng, 3, vocab, scale=rng.uniform(0.1, 5))
    with np.errstate(all="ignore"):
        prep = kernel.prepare_pair(np, a, b, end_points=False)
        alpha = rng.uniform(0, 1, size=(4, 3))
        log_z, mean, var, third = kernel.moments(np, prep.l, prep.log_base, alpha, order=3)
        s = prep.log_base - alpha[..., None] * prep.l
        w = np.exp(s - s.max(axis=-1, keepdims=True))
        q = w / w.sum(axis=-1, keepdims=True)
        centred_mean = (q * prep.l).sum(-1)
        dev = prep.l - centred_mean[..., None]
    scale = float(np.abs(prep.l).max()) + 1.0
    assert_allclose(mean, centred_mean, rtol=0, atol=1e-14 * scale)
    assert_allclose(var, (q * dev**2).sum(-1), rtol=1e-9, atol=1e-14 * scale**2)
    assert_allclose(third, (q * dev**3).sum(-1), rtol=1e-7, atol=1e-13 * scale**3)


def test_blocked_family_point_and_entropy_equal_row_by_row(monkeypatch):
    monkeypatch.setattr(family, "BLOCK_ELEMENTS", 2 * 500)  # several blocks of 2 rows
    rng = np.random.default_rng(11)
    a, b = _log_probs(rng, 7, 500), _log_probs(rng, 7, 500)
    alpha = rng.uniform(0.05, 0.95, size=7)
    alpha[3] = 1.0  # an end point takes its own path within its block
    point = family_point(a, b, alpha)
    for i in range(7):
        one = family_point(a[i], b[i], alpha[i])
        for name in ("log_z", "delta", "kl_q_theta", "kl_q_target", "ess_theta", "ess_target"):
            _same(getattr(point, name)[i], getattr(one, name))
    h = entropy(a)
    for i in range(7):
        _same(h[i], entropy(a[i]))
    with np.errstate(invalid="ignore"):
        direct = -np.sum(np.where(np.isfinite(a), np.exp(a) * a, 0.0), axis=-1)
    assert_allclose(h, direct, rtol=1e-13)


@pytest.mark.parametrize("module", ["geomix_cli.core", "geomix_cli.cli"])
def test_core_and_cli_imports_stay_light(module):
    # `geomix --help` and `geomix solve` start from geomix_cli.cli: the commands import their heavy
    # dependencies inside the command (scipy.optimize alone tripled the start-up time)
    code = (f"import sys, {module}\n"
            "heavy = [m for m in ('scipy', 'torch', 'pandas', 'matplotlib') if m in sys.modules]\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_importing_the_cli_leaves_numpy_and_the_environment_alone():
    # the allocator settings belong to a `geomix` process (cli.main), not to whoever imports it
    code = ("import os, numpy\n"
            "from numpy._core.multiarray import _set_madvise_hugepage as policy\n"
            "before = policy(True); policy(before)\n"
            "import geomix_cli.cli as cli\n"
            "after = policy(True); policy(after)\n"
            "print(before == after, os.environ.get('NUMPY_MADVISE_HUGEPAGE', 'unset'))\n"
            "cli.tune_process()\n"
            "print(policy(True))")
    env = {k: v for k, v in __import__("os").environ.items()
           if k != "NUMPY_MADVISE_HUGEPAGE" and not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env)
    first, second = out.stdout.split("\n")[:2]
    assert first == "True unset"
    assert second == "False"  # tune_process (what main() runs) turns numpy's madvise off


def test_threaded_blocks_give_the_same_numbers(monkeypatch):
    from geomix_cli.core import validation
    from geomix_cli.core.validation import validate_pair

    monkeypatch.setattr(family, "BLOCK_ELEMENTS", 400)  # 1 row per block: many blocks
    monkeypatch.setattr(validation, "BLOCK_ELEMENTS", 400)
    rng = np.random.default_rng(5)
    x, y = _rows_with_holes(rng, 12, 400), _rows_with_holes(rng, 12, 400)
    x[4, 2] = np.nan
    alpha = rng.uniform(0.05, 0.95, size=12)
    results = {}
    for workers in (1, 2):
        monkeypatch.setattr(family, "worker_count", lambda: workers)
        monkeypatch.setattr(validation, "worker_count", lambda: workers)
        a, b, errors = validate_pair(x, y, "logits")
        point = family_point(a, b, alpha)
        results[workers] = (a, b, errors, point, entropy(a))
    one, two = results[1], results[2]
    _same(two[0], one[0])
    _same(two[1], one[1])
    assert two[2] == one[2] and one[2][4] == "key 'pi_theta': NaN at column 2"
    for name in ("log_z", "delta", "kl_q_theta", "kl_q_target", "ess_theta", "ess_target"):
        _same(getattr(two[3], name), getattr(one[3], name))
    _same(two[4], one[4])
