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


# Rows with max|l| above this are left as they are by `recentre_log_ratio` (expm1 loses its edge,
# and Var_q(l) is then large enough that a 1e-16 shift of l does not move alpha* visibly).
RECENTRE_MAX_ABS_L = 1.0


def recentre_log_ratio(l: np.ndarray, log_pi_theta: np.ndarray, log_pi_t: np.ndarray,
                       support: np.ndarray) -> None:
    """Remove from l, in place, the constant error of the two float64 log-normalisers.

    With equal supports sum_y pi_theta(y) e^{l(y)} = sum_y pi_t(y) = 1 exactly. Normalised float64
    log-probabilities each carry a constant error of a few ulps of their log-normaliser (~1e-15),
    which shifts l by a constant c, D = E_q[l] by c and alpha* by c / Var_q(l): 2.4e-9 for pairs
    with C ~ 1e-8 (Var ~ 1e-7), against a 50-digit reference. c = log(sum pi_theta e^l /
    sum pi_theta), computed as log1p(sum pi_theta expm1(l) / sum pi_theta), is accurate to about
    eps max|l|; subtracting it leaves alpha* good to ~1e-13 there. Applied to the rows whose
    supports coincide and whose max|l| <= RECENTRE_MAX_ABS_L; the others are unchanged."""
    with np.errstate(invalid="ignore", over="ignore"):
        n_support = np.sum(support, axis=-1)
        same_support = ((n_support == np.sum(np.isfinite(log_pi_theta), axis=-1))
                        & (n_support == np.sum(np.isfinite(log_pi_t), axis=-1))
                        & (n_support > 0))
        if not np.any(same_support):
            return
        small = np.max(np.abs(l), axis=-1) <= RECENTRE_MAX_ABS_L
        rows = same_support & small
        if not np.any(rows):
            return
        pi_theta = np.exp(log_pi_theta[rows])
        c = np.log1p(np.sum(pi_theta * np.expm1(l[rows]), axis=-1) / np.sum(pi_theta, axis=-1))
        l[rows] -= np.where(support[rows], c[..., None], 0.0)


def log_ratio_on_support(log_pi_theta: np.ndarray, log_pi_t: np.ndarray):
    """(l, log_base, support): l = log pi_t - log pi_theta on S (0 off S, never used there;
    re-centred by `recentre_log_ratio` where the supports coincide), log_base = log pi_t on S
    (-inf off S), so that exp(log_base - alpha l) is the unnormalised q."""
    support = common_support(log_pi_theta, log_pi_t)
    with np.errstate(invalid="ignore"):
        l = np.where(support, log_pi_t - log_pi_theta, 0.0)
    recentre_log_ratio(l, log_pi_theta, log_pi_t, support)
    log_base = np.where(support, log_pi_t, NEG_INF)
    return l, log_base, support


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
    """Moments of l under q_alpha ∝ exp(log_base - alpha l), row-wise.

    `l`, `log_base` from `log_ratio_on_support`; `alpha` broadcast against the leading axes.
    Rows with an empty support give log_z = -inf and NaN moments."""
    alpha = np.asarray(alpha, dtype=np.float64)[..., None]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        s = log_base - alpha * l
        peak = np.max(s, axis=-1, keepdims=True)
        peak = np.where(np.isfinite(peak), peak, 0.0)
        w = np.exp(s - peak)
        z = np.sum(w, axis=-1, keepdims=True)
        q = w / z
        mean = np.sum(q * l, axis=-1, keepdims=True)
        dev = l - mean
        qdev = q * dev
        var = np.sum(qdev * dev, axis=-1)
        third = np.sum(qdev * dev * dev, axis=-1) if order >= 3 else None
        log_z = (peak + np.log(z))[..., 0]
    return TiltedMoments(log_z=log_z, mean=mean[..., 0], var=var, third=third)


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
    """Shannon entropy H(p) = -sum_y p(y) log p(y) in nats (0 log 0 = 0)."""
    log_p = np.asarray(log_p)
    if log_p.ndim != 2 or log_p.shape[0] * log_p.shape[1] <= BLOCK_ELEMENTS:
        return _entropy(log_p)
    out = np.empty(log_p.shape[0])

    def one_block(block):  # cache-sized blocks, in place: same numbers
        rows = log_p[block]
        buf = np.exp(rows)
        with np.errstate(invalid="ignore"):
            buf *= rows
        np.putmask(buf, ~(rows > NEG_INF), 0.0)
        out[block] = 0.0 - np.sum(buf, axis=-1)

    map_row_blocks(one_block, row_blocks(*log_p.shape))
    return out


def _entropy(log_p: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        # 0.0 - sum, not -sum: a point mass must give +0.0, not -0.0 (printed as "-0.0")
        return 0.0 - np.sum(np.where(log_p > NEG_INF, np.exp(log_p) * log_p, 0.0), axis=-1)


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
    """Evaluate the family at `alpha` (scalar or one per row): log Z, D, both KLs, both ESS.

    Computed in cache-sized blocks of rows (every quantity is row-wise, so the numbers are those
    of one evaluation over the whole batch)."""
    log_pi_theta = np.asarray(log_pi_theta, dtype=np.float64)
    log_pi_t = np.asarray(log_pi_t, dtype=np.float64)
    lead = log_pi_theta.shape[:-1]
    alpha = np.broadcast_to(np.asarray(alpha, dtype=np.float64), lead)
    n_cols = log_pi_theta.shape[-1]
    theta2 = log_pi_theta.reshape(-1, n_cols)
    t2 = log_pi_t.reshape(-1, n_cols)
    alpha2 = alpha.reshape(-1)
    names = ("log_z", "delta", "kl_q_theta", "kl_q_target", "ess_theta", "ess_target")
    out = {name: np.empty(alpha2.shape) for name in names}
    blocks = list(row_blocks(theta2.shape[0], n_cols))
    parts = map_row_blocks(lambda b: _family_point_rows(theta2[b], t2[b], alpha2[b]), blocks)
    for block, part in zip(blocks, parts):
        for name in names:
            out[name][block] = part[name]
    return FamilyPoint(alpha=np.array(alpha), **{k: v.reshape(lead) for k, v in out.items()})


def _family_point_rows(log_pi_theta: np.ndarray, log_pi_t: np.ndarray, alpha: np.ndarray) -> dict:
    """family_point on one block of rows ([n, V], alpha [n]).

    For alpha strictly inside (0, 1) the formulas of tilted_moments, log_q_alpha and
    effective_sample_size are evaluated in three preallocated block buffers (the same operations
    in the same order, so the same numbers, without a dozen fresh [n, V] temporaries); blocks with
    an end point alpha in {0, 1} take the general path."""
    if not np.all((alpha > 0.0) & (alpha < 1.0)):
        return _family_point_rows_general(log_pi_theta, log_pi_t, alpha)
    a = alpha[:, None]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        support = np.isfinite(log_pi_theta)
        support &= np.isfinite(log_pi_t)
        l = np.subtract(log_pi_t, log_pi_theta)
        np.putmask(l, ~support, 0.0)                 # np.where(support, lt - ltheta, 0.0)
        recentre_log_ratio(l, log_pi_theta, log_pi_t, support)  # as log_ratio_on_support
        # tilted_moments(l, log_base, alpha), with log_base = where(support, log_pi_t, -inf)
        w = np.multiply(a, l)
        np.subtract(log_pi_t, w, out=w)
        np.putmask(w, ~support, NEG_INF)             # log_base - alpha l
        peak = np.max(w, axis=-1, keepdims=True)
        peak = np.where(np.isfinite(peak), peak, 0.0)
        w -= peak
        np.exp(w, out=w)
        z = np.sum(w, axis=-1, keepdims=True)
        w /= z                                       # q
        tmp = np.multiply(w, l)
        mean = np.sum(tmp, axis=-1, keepdims=True)
        # (Var_q(l), the rest of tilted_moments, is not part of a FamilyPoint.)
        log_z = (peak + np.log(z))[..., 0]
        mean = mean[..., 0]
        kl_theta = (1.0 - alpha) * mean - log_z
        kl_t = -alpha * mean - log_z
        # log_q_alpha: alpha log pi_theta + (1 - alpha) log pi_t on S, minus its logsumexp
        log_q = np.multiply(a, log_pi_theta, out=w)
        np.multiply(1.0 - a, log_pi_t, out=tmp)
        log_q += tmp
        np.putmask(log_q, ~support, NEG_INF)
        log_q -= _logsumexp_2d(log_q, tmp)[:, None]
        # effective_sample_size for both sides
        terms = np.empty_like(tmp)
        ess = []
        for log_pi in (log_pi_theta, log_pi_t):
            np.multiply(2.0, log_pi, out=terms)
            terms -= log_q
            np.putmask(terms, ~(log_pi > NEG_INF), NEG_INF)
            ess.append(np.exp(-_logsumexp_2d(terms, tmp)))
    return dict(log_z=log_z, delta=mean, kl_q_theta=kl_theta, kl_q_target=kl_t,
                ess_theta=ess[0], ess_target=ess[1])


def _family_point_rows_general(log_pi_theta: np.ndarray, log_pi_t: np.ndarray,
                               alpha: np.ndarray) -> dict:
    l, log_base, _ = log_ratio_on_support(log_pi_theta, log_pi_t)
    moments = tilted_moments(l, log_base, alpha)
    interior_theta = (1.0 - alpha) * moments.mean - moments.log_z
    interior_t = -alpha * moments.mean - moments.log_z
    at_one = alpha == 1.0
    at_zero = alpha == 0.0
    kl_theta = interior_theta.copy()
    kl_t = interior_t.copy()
    if at_one.any() or at_zero.any():
        kl_pt_ptheta = kl_divergence(log_pi_t, log_pi_theta)
        kl_ptheta_pt = kl_divergence(log_pi_theta, log_pi_t)
        kl_theta = np.where(at_one, 0.0, np.where(at_zero, kl_pt_ptheta, kl_theta))
        kl_t = np.where(at_zero, 0.0, np.where(at_one, kl_ptheta_pt, kl_t))
    log_q = log_q_alpha(log_pi_theta, log_pi_t, alpha)
    with np.errstate(invalid="ignore"):
        log_z = np.where(at_one | at_zero, 0.0, moments.log_z)
        delta = np.where(at_one | at_zero, kl_theta - kl_t, moments.mean)
    return dict(log_z=log_z, delta=delta, kl_q_theta=kl_theta, kl_q_target=kl_t,
                ess_theta=effective_sample_size(log_pi_theta, log_q),
                ess_target=effective_sample_size(log_pi_t, log_q))
