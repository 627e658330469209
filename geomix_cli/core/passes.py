"""One pass over a block of rows, over the array API (numpy or torch): the tilted moments of l
under q_alpha for one or several alphas per row, and the numpy scratch buffers the passes reuse.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from geomix_cli.core.arrays import exp_, is_numpy, rmax, rsum

# Without the max-shift a pass must not underflow: Z below this (log Z < -644, a Chernoff
# information above 644 nats) or above its inverse has the pass redone with the shift.
_SMALLEST_Z = 1e-280
_LOG_Z_LIMIT = -math.log(_SMALLEST_Z)


def _z_in_range(xp, log_z) -> bool:
    """Every Z of an unshifted pass within [1e-280, 1e280] (NaN: no), judged on log Z: two array
    calls, where the comparisons on Z took four."""
    if isinstance(log_z, np.ndarray):
        if log_z.size == 1:
            return abs(log_z.item()) <= _LOG_Z_LIMIT
        return float(np.abs(log_z).max()) <= _LOG_Z_LIMIT
    return bool((xp.abs(log_z) <= _LOG_Z_LIMIT).all())


def moments(xp, l, log_base, alpha, *, order: int = 2, buf=None, tmp=None, supported=False,
            bounded: bool = False, fused: bool = False):
    """One pass over rows: (log_z, mean, var, third) of l under q ∝ exp(log_base - alpha l).

    alpha: one value per row ([n], l's dtype and device), or [k, n] for k values per row in the
    same pass (results [k, n]: the numpy calls of one pass, k times the arithmetic).
    order: 0 gives log_z only, 1 adds the mean, 2 the variance, 3 the third central moment
    (None for what was not asked), from the raw sums: Var = E l^2 - D^2,
    E(l - D)^3 = E l^3 - D (3 E l^2 - 2 D^2). Where Newton uses them, near the root, D ~ 0 and
    these are as accurate as centred sums (away from it they only shape the start and the step).
    buf, tmp: scratch of shape alpha.shape + (V,) (allocated when None); in place, no other
    [n, V] temporary. supported: every row has a non-empty support (skips the guard for rows
    without one, whose log_z is -inf and moments NaN).
    fused: buf is one array of shape (order + 1,) + alpha.shape + (V,) holding w, w l, w l^2, ...
    (tmp unused), summed in one reduction: the same products and the same pairwise row sums, so
    the same numbers, in two to three array calls fewer (what a pass over a short row costs).
    Sums are numpy's pairwise row reductions (torch's cascade / tree sums), never BLAS products,
    whose plain accumulation was measured to lose a digit of D on peaked rows.
    bounded: exp(log_base - alpha l) cannot overflow and rarely underflows (log-probabilities or
    max-shifted logits, alpha in [0, 1], or the ESS passes just outside it): the pass skips the
    max-shift, and is redone with it if Z under- or overflows."""
    shape = tuple(alpha.shape) + (l.shape[-1],)
    if fused:
        if buf is None:
            buf = xp.empty((order + 1,) + shape, dtype=l.dtype, device=_device(xp, l))
        w = buf[0]
    else:
        if buf is None:
            buf = xp.empty(shape, dtype=l.dtype, device=_device(xp, l))
        w = buf
    xp.multiply(l, -alpha[..., None], out=w)
    w += log_base
    peak = None
    if not bounded:
        peak = rmax(xp, w, keepdims=True)
        if not supported:
            peak = xp.where(xp.isfinite(peak), peak, 0.0)
        w -= peak
    exp_(xp, w)                                     # w, the unnormalised q
    if fused:
        for j in range(1, order + 1):
            xp.multiply(buf[j - 1], l, out=buf[j])
        sums = rsum(xp, buf)
        z, raw = sums[0], sums[1:]
    else:
        z = rsum(xp, w)
    log_z = xp.log(z)
    if peak is not None:
        log_z = peak[..., 0] + log_z
    elif not _z_in_range(xp, log_z):
        return moments(xp, l, log_base, alpha, order=order, buf=buf, tmp=tmp,
                       supported=supported, fused=fused)
    if order == 0:
        return log_z, None, None, None
    if not fused:
        if tmp is None:
            tmp = xp.empty(shape, dtype=l.dtype, device=_device(xp, l))
        xp.multiply(w, l, out=tmp)
        raw = [rsum(xp, tmp)]
        for _ in range(1, order):
            tmp *= l
            raw.append(rsum(xp, tmp))
    return (log_z,) + _tilted(raw, z, order)


def _tilted(raw, z, order: int):
    """(mean, var, third) of l under q from the raw sums raw[j] = sum w l^(j+1) and z = sum w
    (arrays or floats alike: the same operations, so the same bits either way; None beyond
    `order`). Var = E l^2 - D^2 and the third central moment from the raw ones."""
    mean = raw[0] / z
    if order == 1:
        return mean, None, None
    second = raw[1] / z
    var = second - mean * mean
    third = None
    if order >= 3:
        third = raw[2] / z - mean * (3.0 * second - 2.0 * mean * mean)
    return mean, var, third


_LOG, _EXP, _MULTIPLY, _SUM = np.log, np.exp, np.multiply, np.add.reduce


def _weighted_sums(l, log_base, alpha, buf, order: int):
    """`moments`' fused pass without the max-shift: buf[0] = w = exp(log_base - alpha l),
    buf[j] = w l^j, and their row sums in one reduction."""
    w = buf[0]
    _MULTIPLY(l, -alpha, out=w)
    w += log_base
    _EXP(w, out=w)
    for j in range(1, order + 1):
        _MULTIPLY(buf[j - 1], l, out=buf[j])
    return _SUM(buf, -1)


def row_moments(l, log_base, alpha, buf, order: int = 2):
    """`moments(np, l, log_base, [alpha], order=order, supported=True, bounded=True, fused=True)`
    for one float64 row l, log_base [V] (alpha a float; buf: (order + 1, V) scratch), as Python
    floats (log_z, mean, var, third, None): the same products, pairwise sums and divisions, so the
    same bits, in the fewest numpy calls (a Newton pass over a short row is its calls' overhead;
    `_weighted_sums` and `_tilted` are written out here for the same reason).
    alpha may also be a [k, 1] array (buf (k + order, V): the weights at the k alphas, then
    w(alpha[0]) l^j): the moments are those at alpha[0], and the last entry lists log Z at all k
    alphas (the others ride along in the same calls, their weights summed, never multiplied by
    l). None where a Z leaves [1e-280, 1e280]: `moments` redoes such a pass with the max-shift."""
    k = 1 if isinstance(alpha, float) else alpha.shape[0]
    w = buf[:k] if k > 1 else buf[0]
    _MULTIPLY(l, -alpha, out=w)
    w += log_base
    _EXP(w, out=w)
    before = buf[0]
    for j in range(k, k + order):
        _MULTIPLY(before, l, out=buf[j])
        before = buf[j]
    sums = _SUM(buf, -1)
    raw = sums.tolist()
    z = raw[0]
    log_zs = None
    if k == 1:
        if not z > 0.0:                              # (Z underflowed: no log of 0 to warn about)
            return None
        log_z = float(_LOG(z))                       # numpy's log, as `moments` (not libm's)
        if not abs(log_z) <= _LOG_Z_LIMIT:
            return None
    else:
        if not min(raw[:k]) > 0.0:
            return None
        log_zs = _LOG(sums[:k]).tolist()
        if not (max(map(abs, log_zs)) <= _LOG_Z_LIMIT and _no_nan(log_zs)):
            return None
        log_z = log_zs[0]
    if order == 0:
        return log_z, None, None, None, log_zs
    mean = raw[k] / z                                # `_tilted` on floats: the same operations
    if order == 1:
        return log_z, mean, None, None, log_zs
    second = raw[k + 1] / z
    third = None
    if order >= 3:
        third = raw[k + 2] / z - mean * (3.0 * second - 2.0 * mean * mean)
    return log_z, mean, second - mean * mean, third, log_zs


def rows_moments(l, log_base, alphas, buf, order: int = 2):
    """`row_moments` at k alphas at once (alphas [k, 1], buf (order + 1, k, V)): Python lists
    [k] (log_z, mean, var, third, z; the moments None for order 0), the same bits as `moments`
    at those alphas (z: the sums of the weights buf[0]), or None where a Z leaves
    [1e-280, 1e280]."""
    sums = _weighted_sums(l, log_base, alphas, buf, order)
    z = sums[0]
    z_list = z.tolist()
    if not min(z_list) > 0.0:                       # (Z underflowed: no log of 0 to warn about)
        return None
    log_z = _LOG(z).tolist()
    if not (max(map(abs, log_z)) <= _LOG_Z_LIMIT and _no_nan(log_z)):
        return None
    if order == 0:
        return log_z, None, None, None, z_list
    moments_at = [None if m is None else m.tolist() for m in _tilted(sums[1:], z, order)]
    return (log_z, *moments_at, z_list)


def _no_nan(values: list) -> bool:
    """No NaN among `values` (Python's min and max skip a NaN that is not first: the checks
    above need this one too)."""
    total = sum(values)
    return total == total


def _device(xp, x):
    return None if is_numpy(xp) else x.device


# Scratch buffers of the numpy path, kept per thread between passes and calls: a fresh array of a
# few hundred KiB is faulted in page by page (1.2 ms for the first pass of a V = 49,152 row against
# 0.25 ms on a warm buffer), and a geomix call cannot tune the allocator of the caller's process
# the way the `geomix` command does. At most SCRATCH_LIMIT bytes per thread are kept.
SCRATCH_LIMIT = 32 << 20
SMALL_SCRATCH = 4096        # elements: below this a fresh array costs less than the lookup
_SCRATCH = threading.local()


def scratch(xp, name: str, shape: tuple, like):
    """An uninitialised array of `shape` in like's dtype: for numpy a view of this thread's cached
    buffer `name` (valid until the next request of the same name); for torch a fresh tensor."""
    if not is_numpy(xp):
        return xp.empty(shape, dtype=like.dtype, device=like.device)
    size = math.prod(shape)
    if size <= SMALL_SCRATCH:   # the allocator's small blocks are warm: cheaper than the cache
        return np.empty(shape, dtype=like.dtype)
    cache = getattr(_SCRATCH, "buffers", None)
    if cache is None:
        cache = _SCRATCH.buffers = {}
    key = (name, like.dtype)
    buf = cache.get(key)
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype=like.dtype)
        if sum(b.nbytes for b in cache.values()) + buf.nbytes <= SCRATCH_LIMIT:
            cache[key] = buf
    return buf[:size].reshape(shape)


_GRIDS: dict = {}
_EPS: dict = {}


def _grid_alphas(points: int, n: int, dtype) -> np.ndarray:
    """[points, n] alphas equally spaced from 0 to 1 (cached: a small solve needs it every call)."""
    key = (points, n, dtype)
    grid = _GRIDS.get(key)
    if grid is None:
        grid = np.repeat(np.linspace(0.0, 1.0, points).astype(dtype)[:, None], n, axis=1)
        grid.flags.writeable = False
        if len(_GRIDS) > 64:
            _GRIDS.clear()
        _GRIDS[key] = grid
    return grid


def _grid_values(points: int) -> np.ndarray:
    """The first pass's alphas as float64 (the grid of `_grid_alphas`, read-only, cached)."""
    key = (points, "values")
    grid = _GRIDS.get(key)
    if grid is None:
        grid = _GRIDS[key] = _grid_alphas(points, 1, np.float64)[:, 0].copy()
        grid.flags.writeable = False
    return grid


def _eps_of(xp, dtype) -> float:
    eps = _EPS.get(dtype)
    if eps is None:
        eps = _EPS[dtype] = float(xp.finfo(dtype).eps)
    return eps
