"""pytest-benchmark suite (not in the default `pytest` run: testpaths = tests).

    pytest benchmarks/ --benchmark-enable                      # 16 x 32768 float32 (quick)
    GEOMIX_BENCH_ROWS=64 GEOMIX_BENCH_VOCAB=151936 pytest benchmarks/ --benchmark-enable

Each benchmark also asserts the answer (error against the float64 solve), never a time: compare
the medians side by side (`--benchmark-compare`), as ratios. `geomix bench` reports the same
methods with passes, memory and the bandwidth floor.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from geomix_cli.bench import BenchConfig, make_logits
from geomix_cli.core.solvers import solve_bisection_reference, solve_newton
from geomix_cli.core.validation import validate_pair

ROWS = int(os.environ.get("GEOMIX_BENCH_ROWS", "16"))
VOCAB = int(os.environ.get("GEOMIX_BENCH_VOCAB", "32768"))


@pytest.fixture(scope="module")
def data():
    theta, target = make_logits(BenchConfig(rows=ROWS, vocab=VOCAB))
    log_theta, log_t, errors = validate_pair(theta, target, "logits", storage_dtype="float32")
    exact = solve_newton(log_theta, log_t)
    return theta, target, log_theta, log_t, exact.alpha


def test_numpy_newton_default(benchmark, data):
    _, _, lt, lT, exact = data
    sol = benchmark(solve_newton, lt, lT)
    np.testing.assert_array_equal(sol.alpha, exact)


def test_numpy_bisection_port(benchmark, data):
    _, _, lt, lT, exact = data
    sol = benchmark(solve_bisection_reference, lt, lT)
    assert np.max(np.abs(sol.alpha - exact)) < 1e-3


def test_reference_torch(benchmark, data):
    pytest.importorskip("torch")
    from geomix_cli.backends.reference import reference_alpha

    theta, target, _, _, exact = data
    alpha, _ = benchmark(reference_alpha, theta, target)
    assert np.max(np.abs(alpha - exact)) < 1e-3


@pytest.mark.parametrize("compute_dtype,tol", [("float32", 1e-6), ("float64", 1e-12)])
def test_torch_newton_cpu(benchmark, data, compute_dtype, tol):
    pytest.importorskip("torch")
    from geomix_cli.backends import solve_alpha_device

    theta, target, _, _, exact = data
    sol = benchmark(solve_alpha_device, theta, target, compute_dtype=compute_dtype)
    assert np.max(np.abs(sol.alpha - exact)) <= tol
