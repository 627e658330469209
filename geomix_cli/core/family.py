"""The geometric-mean family in log space, divergences, ESS and entropies.

Every function takes normalised log-probabilities `log_pi_theta`, `log_pi_t` of shape [..., V]
(float64, -inf where a probability is 0) and works row-wise along the last axis.

    l(y)          = log pi_t(y) - log pi_theta(y)                 (on the common support S)
    q_alpha(y)    = pi_theta(y)^alpha pi_t(y)^(1-alpha) / Z(alpha)
    log q_alpha   = log pi_t - alpha l - log Z(alpha)
    Z(alpha)      = sum_S pi_t exp(-alpha l) = E_{pi_t}[exp(-alpha l); S]
    D(alpha)      = KL(q||pi_theta) - KL(q||pi_t) = E_q[l] = -d log Z / d alpha
    D'(alpha)     = -Var_q(l)

For alpha in (0, 1), q_alpha lives on S = supp(pi_theta) ∩ supp(pi_t). At alpha = 0 and 1 the family
is pi_t and pi_theta themselves (which may put mass outside S); `tilted_moments` at alpha = 0 or 1
returns the limits from inside (0, 1), i.e. the moments of pi_t or pi_theta restricted to S and
renormalised, which is what the root finders need (D is continuous there).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from geomix_cli.core import kernel
from geomix_cli.core.prepare import RECENTRE_MAX_ABS_L  # noqa: F401  (re-exported)

NEG_INF = -np.inf

# Rows are processed in blocks of about this many elements (2 MiB of float64 per array), so that
# a block's temporaries stay in the CPU cache (as in solvers.py). Every function here reduces
# along the last axis only, so a row's result does not depend on the block it is computed in.
BLOCK_ELEMENTS = 1 << 18


def row_blocks(n_rows: int, n_cols: int):
    """Slices of rows covering [0, n_rows) with about BLOCK_ELEMENTS entries each."""
    step = max(1, BLOCK_ELEMENTS // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def worker_count() -> int:
    """Threads for row-block work: the CPUs this process may run on, at most 4 (numpy releases
    the GIL inside its loops, so blocks of rows run in parallel; results do not depend on it)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(4, n))


def map_row_blocks(fn, blocks) -> list:
    """[fn(block) for block in blocks], on worker_count() threads when there are enough blocks.
    Every block is independent (row-wise reductions), so the numbers are the same either way."""
    blocks = list(blocks)
    workers = worker_count()
    if workers < 2 or len(blocks) < 4:
        return [fn(block) for block in blocks]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, blocks))


def _logsumexp_2d(x: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """Row logsumexp of a 2-d block, the way scipy.special.logsumexp (1.15+) computes it: every
    entry equal to the row maximum is taken out of the sum (count m), the rest is summed shifted
    by the maximum, then log1p(s / m) + log(m) + max; a non-finite result falls back to
    log(sum(exp(x))). Same operations in the same order, so the same numbers; `buf` is scratch of
    x's shape."""
    peak = np.max(x, axis=-1, keepdims=True)
    at_peak = x == peak
    m = np.count_nonzero(at_peak, axis=-1).astype(np.float64)[:, None]
    np.subtract(x, peak, out=buf)
    np.exp(buf, out=buf)
    np.putmask(buf, at_peak, 0.0)
    s = np.sum(buf, axis=-1, keepdims=True)
    s = np.where(s == 0, s, s / m)
    out = (np.log1p(s) + np.log(m) + peak)[:, 0]
    bad = ~np.isfinite(out)
    if bad.any():
        out[bad] = np.log(np.sum(np.exp(x[bad]), axis=-1))
    return out


def logsumexp(x: np.ndarray, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """log(sum(exp(x))) along the last axis: plain numpy, in cache-sized row blocks.

    Gives scipy.special.logsumexp's numbers (same algorithm, see `_logsumexp_2d`) at a fraction
    of its cost (scipy's makes several full-size temporaries and passes per call). All -inf gives
    -inf; a +inf entry gives +inf."""
    if axis not in (-1, np.ndim(x) - 1):
        raise ValueError("logsumexp reduces along the last axis only")
    x = np.asarray(x, dtype=np.float64)
    lead = x.shape[:-1]
    flat = np.ascontiguousarray(x).reshape(-1, x.shape[-1]) if x.ndim != 2 else x
    out = np.empty(flat.shape[0])
    if flat.shape[0] and flat.shape[1]:
        buf = None
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            for block in row_blocks(flat.shape[0], flat.shape[1]):
                rows = flat[block]
                if buf is None or buf.shape != rows.shape:
                    buf = np.empty_like(rows)
                out[block] = _logsumexp_2d(rows, buf)
    else:
        out[:] = NEG_INF
    out = out.reshape(lead)
    return out[..., None] if keepdims else out


def common_support(log_pi_theta: np.ndarray, log_pi_t: np.ndarray) -> np.ndarray:
    """Boolean mask of S = {y : pi_theta(y) > 0 and pi_t(y) > 0}."""
    return np.isfinite(log_pi_theta) & np.isfinite(log_pi_t)


def _rows2(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x


def recentre_log_ratio(l: np.ndarray, log_pi_theta: np.ndarray, log_pi_t: np.ndarray,
                       support: np.ndarray) -> None:
    """Remove from l, in place, the constant error of the two float64 log-normalisers, on the rows
    whose supports coincide and whose max|l| <= RECENTRE_MAX_ABS_L (`prepare.recentring_constant`;
    the solvers apply the same constant to D instead of to l)."""
    shape = l.shape
    l2, theta2, t2, support2 = (np.reshape(a, (-1, shape[-1]))
                                for a in (l, log_pi_theta, log_pi_t, support))
    with np.errstate(invalid="ignore", over="ignore"):
        n_support = np.sum(support2, axis=-1)
        same_support = ((n_support == np.sum(np.isfinite(theta2), axis=-1))
                        & (n_support == np.sum(np.isfinite(t2), axis=-1)) & (n_support > 0))
        rows = np.flatnonzero(same_support & (np.max(np.abs(l2), axis=-1) <= RECENTRE_MAX_ABS_L))
        if rows.size == 0:
            return
        c = kernel.recentring_constant_rows(np, np.asarray(theta2[rows], dtype=np.float64),
                                            l2[rows])
        l2[rows] -= np.where(support2[rows], c[:, None], 0.0)
    if not np.shares_memory(l2, l):
        l[...] = l2.reshape(shape)


def log_ratio_on_support(log_pi_theta: np.ndarray, log_pi_t: np.ndarray):
    """(l, log_base, support): l = log pi_t - log pi_theta on S (0 off S, never used there;
    re-centred where the supports coincide, see `recentre_log_ratio`), log_base = log pi_t on S
    (-inf off S), so that exp(log_base - alpha l) is the unnormalised q."""
    log_pi_theta = np.asarray(log_pi_theta, dtype=np.float64)
    shape = log_pi_theta.shape
    with kernel.ignore_fp(np):
        prep = kernel.prepare_pair(np, _rows2(log_pi_theta), _rows2(log_pi_t), end_points=False)
        l = prep.l
        if np.any(prep.shift):
            l -= prep.shift[:, None] if prep.support is None else np.where(
                prep.support, prep.shift[:, None], 0.0)
        log_base = np.array(prep.log_base)  # a copy: never the caller's array
        support = (np.ones(l.shape, dtype=bool) if prep.support is None else prep.support)
    return l.reshape(shape), log_base.reshape(shape), support.reshape(shape)


@dataclass(frozen=True)
class TiltedMoments:
    """Moments of l under q_alpha (on S), from one pass over a row.

    log_z: log Z(alpha) over S; mean: D(alpha) = E_q[l]; var: Var_q(l) = -D'(alpha);
    third: E_q[(l - mean)^3] (Halley's method), or None when not asked for."""

    log_z: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    third: np.ndarray | None = None


def tilted_moments(l: np.ndarray, log_base: np.ndarray, alpha, *, order: int = 2) -> TiltedMoments:
    """Moments of l under q_alpha ∝ exp(log_base - alpha l), row-wise (`kernel.moments`).

    `l`, `log_base` from `log_ratio_on_support`; `alpha` broadcast against the leading axes.
    Rows with an empty support give log_z = -inf and NaN moments."""
    l = np.asarray(l, dtype=np.float64)
    log_base = np.asarray(log_base, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)
    lead = np.broadcast_shapes(l.shape[:-1], log_base.shape[:-1], alpha.shape)
    shape = lead + l.shape[-1:]
    l2 = np.broadcast_to(l, shape).reshape(-1, shape[-1])
    base2 = np.broadcast_to(log_base, shape).reshape(-1, shape[-1])
    with kernel.ignore_fp(np):
        log_z, mean, var, third = kernel.moments(np, l2, base2,
                                                 np.broadcast_to(alpha, lead).reshape(-1),
                                                 order=max(order, 2))
    return TiltedMoments(log_z=log_z.reshape(lead), mean=mean.reshape(lead),
                         var=var.reshape(lead),
                         third=None if third is None or order < 3 else third.reshape(lead))


def log_q_alpha(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, alpha) -> np.ndarray:
    """log q_alpha, normalised, exact at the end points (alpha = 1: pi_theta, alpha = 0: pi_t).

    Computed as alpha log pi_theta + (1 - alpha) log pi_t - logsumexp(...), never as products of
    powers (which underflow, and 0**0 == 1 would put mass where one side has none)."""
    alpha = np.asarray(alpha, dtype=np.float64)[..., None]
    with np.errstate(invalid="ignore"):
        inner = np.where(common_support(log_pi_theta, log_pi_t),
                         alpha * log_pi_theta + (1.0 - alpha) * log_pi_t, NEG_INF)
        unnorm = np.where(alpha == 1.0, log_pi_theta, np.where(alpha == 0.0, log_pi_t, inner))
        lse = logsumexp(unnorm, axis=-1, keepdims=True)
        return unnorm - lse


def kl_divergence(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """KL(p||q) = sum_y p(y) (log p(y) - log q(y)), with 0 log 0 = 0 and +inf where q = 0 < p."""
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.exp(log_p)
        terms = np.where(log_p > NEG_INF, p * (log_p - log_q), 0.0)
        return np.sum(terms, axis=-1)


def entropy(log_p: np.ndarray) -> np.ndarray:
    """Shannon entropy H(p) = -sum_y p(y) log p(y) in nats (0 log 0 = 0), row-wise
    (`kernel.entropy_rows`, on cache-sized row blocks on threads for large batches)."""
    log_p = np.asarray(log_p, dtype=np.float64)
    lead = log_p.shape[:-1]
    rows = _rows2(log_p)
    out = np.empty(rows.shape[0])

    def one_block(block):
        with kernel.ignore_fp(np):
            out[block] = kernel.entropy_rows(np, rows[block])[0]

    map_row_blocks(one_block, row_blocks(*rows.shape))
    return out.reshape(lead)


def effective_sample_size(log_pi: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """ESS_pi(q) = 1 / sum_y pi(y)^2 / q(y) = 1 / (1 + chi2(pi||q)) = exp(-D_2(pi||q)).

    The fraction of samples from q that are worth a sample from pi when estimating expectations
    under pi by importance weights pi/q (exact for full distributions; 0 if q misses mass of pi)."""
    with np.errstate(invalid="ignore"):
        terms = np.where(log_pi > NEG_INF, 2.0 * log_pi - log_q, NEG_INF)
        return np.exp(-logsumexp(terms, axis=-1))


def entropy_formula_alpha(log_pi_theta: np.ndarray, log_pi_t: np.ndarray) -> np.ndarray:
    """The derivation's heuristic alpha_H = H(pi_theta) / (H(pi_theta) + H(pi_t)).

    NaN when both entropies are 0 (two point masses): the formula is undefined there."""
    return entropy_ratio(entropy(log_pi_theta), entropy(log_pi_t))


def entropy_ratio(h_theta: np.ndarray, h_t: np.ndarray) -> np.ndarray:
    """alpha_H from the two entropies (NaN where both are 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(h_theta + h_t > 0, h_theta / (h_theta + h_t), np.nan)


@dataclass(frozen=True)
class FamilyPoint:
    """Everything about q_alpha for one alpha per row (arrays over rows).

    kl_q_theta = KL(q||pi_theta) = (1-alpha) D - log Z, kl_q_target = KL(q||pi_t) = -alpha D - log Z
    for alpha in (0, 1); the end points are computed directly (they may be +inf)."""

    alpha: np.ndarray
    log_z: np.ndarray
    delta: np.ndarray
    kl_q_theta: np.ndarray
    kl_q_target: np.ndarray
    ess_theta: np.ndarray
    ess_target: np.ndarray


def family_point(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, alpha) -> FamilyPoint:
    """Evaluate the family at `alpha` (scalar or one per row): log Z, D, both KLs, both ESS
    (`kernel.family_at`). Rows that are not normalised log-probabilities (raw logits) are refused
    with InputError.

    Computed in cache-sized blocks of rows on threads (every quantity is row-wise, so the numbers
    are those of one evaluation over the whole batch)."""
    from geomix_cli.core.validation import input_logprob_tolerance

    original = log_pi_theta
    log_pi_theta = np.asarray(log_pi_theta, dtype=np.float64)
    log_pi_t = np.asarray(log_pi_t, dtype=np.float64)
    lead = log_pi_theta.shape[:-1]
    alpha = np.broadcast_to(np.asarray(alpha, dtype=np.float64), lead)
    n_cols = log_pi_theta.shape[-1]
    theta2, t2 = _rows2(log_pi_theta), _rows2(log_pi_t)
    alpha2 = alpha.reshape(-1)
    tolerance = input_logprob_tolerance(original, n_cols)

    def one_block(block):
        with kernel.ignore_fp(np):
            prep = kernel.prepare_pair(np, theta2[block], t2[block], end_points=False,
                                       check_tolerance=tolerance, row_offset=block.start)
            return kernel.family_at(prep, np.arange(block.stop - block.start), alpha2[block])

    blocks = list(row_blocks(theta2.shape[0], n_cols))
    parts = map_row_blocks(one_block, blocks)
    names = {"log_z": "log_z", "delta": "delta", "kl_q_theta": "kl_q_theta",
             "kl_q_target": "kl_q_t", "ess_theta": "ess_theta", "ess_target": "ess_t"}
    out = {name: np.empty(alpha2.shape) for name in names}
    for block, part in zip(blocks, parts):
        for name, key in names.items():
            out[name][block] = part[key]
    return FamilyPoint(alpha=np.array(alpha), **{k: v.reshape(lead) for k, v in out.items()})
