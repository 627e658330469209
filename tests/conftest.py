"""Shared fixtures and independent reference computations for the tests.

The references here never call geomix code: they work from probabilities or raw logits with plain
numpy / scipy / mpmath, so that agreement with geomix means something.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import log_softmax

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_SAMPLE = REPO_ROOT / "cases" / "data" / "smollm2_sample.npz"

EPS64 = float(np.finfo(np.float64).eps)


# ------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def smollm2_logits():
    """The 12 real SmolLM2 rows as raw float16 logits (theta, target), read once per session."""
    with np.load(SMOLLM2_SAMPLE, allow_pickle=False) as data:
        return data["logits_theta"], data["logits_t"]


@pytest.fixture(scope="session")
def smollm2_log_probs(smollm2_logits):
    """The real rows as float64 log-probabilities, computed here (scipy's log_softmax)."""
    theta, target = smollm2_logits
    return (log_softmax(theta.astype(np.float64), axis=-1),
            log_softmax(target.astype(np.float64), axis=-1))


@pytest.fixture(scope="session")
def smollm2_reference_alpha(smollm2_log_probs):
    """alpha* of each real row by the in-test brentq reference (independent of geomix)."""
    lt, lT = smollm2_log_probs
    return np.array([reference_alpha_brentq(a, b) for a, b in zip(lt, lT)])


@pytest.fixture(scope="session")
def default_verify_run(tmp_path_factory):
    """`geomix verify verify_alpha_theory --json --out TMP` run once, in a fresh process, the way
    the quick start runs it: (completed process, report folder). Shared by the verify CLI tests
    and the byte-for-byte comparison with the committed report (about a minute on 2 cores)."""
    import os
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("verify") / "verify_alpha_theory"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEOMIX_")}
    proc = subprocess.run([sys.executable, "-m", "geomix_cli", "verify", "verify_alpha_theory",
                           "--out", str(out), "--json"], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=env, timeout=1800)
    return proc, out


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()


# ------------------------------------------------------------------------------------------------
# independent references (never call geomix)


def reference_delta(log_p_theta: np.ndarray, log_p_t: np.ndarray, alpha: float) -> float:
    """D(alpha) = E_q[l] on the common support, written out directly for the tests."""
    support = np.isfinite(log_p_theta) & np.isfinite(log_p_t)
    a, b = log_p_theta[support], log_p_t[support]
    s = alpha * a + (1.0 - alpha) * b
    w = np.exp(s - s.max())
    return float(np.sum(w * (b - a)) / np.sum(w))


def reference_alpha_brentq(log_p_theta: np.ndarray, log_p_t: np.ndarray) -> float:
    """scipy brentq on D over [0, 1] for one row (the row must have a root)."""
    return brentq(lambda a: reference_delta(log_p_theta, log_p_t, a), 0.0, 1.0, xtol=1e-16,
                  rtol=4 * EPS64, maxiter=500)


def mpmath_alpha(raw_theta, raw_t, *, logits: bool, digits: int = 40) -> float:
    """alpha* by bisection in `digits`-digit arithmetic, from the raw float64 inputs (taken as exact
    binary numbers): log_softmax (or log of probabilities) and D all evaluated in mpmath."""
    import mpmath

    with mpmath.workdps(digits):
        def logs(row):
            vals = [mpmath.mpf(float(v)) if np.isfinite(v) else None for v in row]
            if logits:
                finite = [v for v in vals if v is not None]
                lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in finite))
                return [None if v is None else v - lse for v in vals]
            total = mpmath.fsum(v for v in vals if v is not None)
            return [None if v is None or v == 0 else mpmath.log(v / total) for v in vals]

        a = logs(raw_theta)
        b = logs(raw_t)
        pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]

        def delta(alpha):
            w = [mpmath.exp(alpha * x + (1 - alpha) * y) for x, y in pairs]
            return mpmath.fsum(wi * (y - x) for wi, (x, y) in zip(w, pairs)) / mpmath.fsum(w)

        lo, hi = mpmath.mpf(0), mpmath.mpf(1)
        assert delta(lo) > 0 > delta(hi), "mpmath reference: no sign change"
        for _ in range(80):  # 2**-80 ~ 1e-24, far below float64 resolution
            mid = (lo + hi) / 2
            if delta(mid) > 0:
                lo = mid
            else:
                hi = mid
        return float((lo + hi) / 2)


def log_scale(log_p_theta: np.ndarray, log_p_t: np.ndarray) -> np.ndarray:
    """max over the common support of |log pi_theta| + |log pi_t| per row: the size of the
    rounding error of each l(y) in units of eps."""
    support = np.isfinite(log_p_theta) & np.isfinite(log_p_t)
    return np.max(np.where(support, np.abs(log_p_theta) + np.abs(log_p_t), 0.0), axis=-1)


def tilted_var(log_p_theta: np.ndarray, log_p_t: np.ndarray, alpha) -> np.ndarray:
    """Var_q(l) at alpha, per row, computed directly (for conditioning estimates)."""
    log_p_theta = np.atleast_2d(log_p_theta)
    log_p_t = np.atleast_2d(log_p_t)
    alpha = np.broadcast_to(np.asarray(alpha, dtype=np.float64), log_p_theta.shape[:1])
    out = np.empty(log_p_theta.shape[0])
    for i in range(log_p_theta.shape[0]):
        support = np.isfinite(log_p_theta[i]) & np.isfinite(log_p_t[i])
        a, b = log_p_theta[i][support], log_p_t[i][support]
        s = alpha[i] * a + (1 - alpha[i]) * b
        q = np.exp(s - s.max())
        q /= q.sum()
        l = b - a
        m = np.sum(q * l)
        out[i] = np.sum(q * (l - m) ** 2)
    return out


def alpha_tolerance(log_p_theta, log_p_t, alpha, *, factor: float = 64.0,
                    floor: float = 1e-13) -> np.ndarray:
    """How well float64 can determine alpha* for a row: D is known to about eps * max(|log p|)
    (the rounding of l), and an error dD in D moves the root by dD / |D'| = dD / Var_q(l).

        tol = floor + factor * eps * (1 + max_S |log pi_theta| + |log pi_t|) / Var_q*(l)
    """
    scale = log_scale(np.atleast_2d(log_p_theta), np.atleast_2d(log_p_t))
    var = tilted_var(log_p_theta, log_p_t, alpha)
    with np.errstate(divide="ignore"):  # Var = 0 in float64 (q* a point mass): alpha* undetermined
        return floor + factor * EPS64 * (1.0 + scale) / var


def random_logit_pair(rng: np.random.Generator, vocab: int, scale: float, *,
                      zero_fraction: float = 0.0, noise: float | None = None):
    """Two logit rows (theta, target); a `zero_fraction` of tokens on each side set to -inf,
    keeping at least one common token so that the pair has a common support."""
    base = rng.normal(0.0, scale, size=vocab)
    noise = scale if noise is None else noise
    theta = base + rng.normal(0.0, noise, size=vocab)
    target = base + rng.normal(0.0, noise, size=vocab)
    if zero_fraction > 0:
        for row in (theta, target):
            row[rng.random(vocab) < zero_fraction] = -np.inf
        keep = rng.integers(vocab)
        theta[keep] = base[keep]
        target[keep] = base[keep] + 0.5
    return theta, target


def assert_rows_close(actual, expected, atol, err_msg: str = "") -> None:
    """assert_allclose row by row with a per-row absolute tolerance (numpy's assert_allclose
    takes only a scalar atol)."""
    from numpy.testing import assert_allclose

    actual = np.atleast_1d(np.asarray(actual, dtype=np.float64))
    expected = np.broadcast_to(np.asarray(expected, dtype=np.float64), actual.shape)
    atol = np.broadcast_to(np.asarray(atol, dtype=np.float64), actual.shape)
    for i in range(actual.shape[0]):
        if not np.isfinite(atol[i]):  # float64 cannot resolve this row (Var_q(l) = 0): no claim
            assert np.isfinite(actual[i]) == np.isfinite(expected[i]), err_msg
            continue
        assert_allclose(actual[i], expected[i], rtol=0, atol=float(atol[i]),
                        err_msg=f"{err_msg} (row {i})")
