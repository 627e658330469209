"""One pass over a block of rows, over the array API (numpy or torch): the tilted moments of l
under q_alpha for one or several alphas per row, and the numpy scratch buffers the passes reuse.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from geomix_cli.core.arrays import exp_, is_numpy, rmax, rsum

# Without the max-shift a pass must not underflow: Z below this (log Z < -644, a Chernoff
# information above 644 nats) has the pass redone with the shift.
_SMALLEST_Z = 1e-280


def moments(xp, l, log_base, alpha, *, order: int = 2, buf=None, tmp=None, supported=False,
            bounded: bool = False):
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
    Sums are numpy's pairwise row reductions (torch's cascade / tree sums), never BLAS products,
    whose plain accumulation was measured to lose a digit of D on peaked rows.
    bounded: exp(log_base - alpha l) cannot overflow and rarely underflows (log-probabilities or
    max-shifted logits, alpha in [0, 1], or the ESS passes just outside it): the pass skips the
    max-shift, and is redone with it if Z under- or overflows."""
    shape = tuple(alpha.shape) + (l.shape[-1],)
    if buf is None:
        buf = xp.empty(shape, dtype=l.dtype, device=_device(xp, l))
    xp.multiply(l, -alpha[..., None], out=buf)
    buf += log_base
    if bounded:
        exp_(xp, buf)                               # w, the unnormalised q
        z = rsum(xp, buf)
        if not bool(((z > _SMALLEST_Z) & (z < 1.0 / _SMALLEST_Z)).all()):
            return moments(xp, l, log_base, alpha, order=order, buf=buf, tmp=tmp,
                           supported=supported)
        log_z = xp.log(z)
    else:
        peak = rmax(xp, buf, keepdims=True)
        if not supported:
            peak = xp.where(xp.isfinite(peak), peak, 0.0)
        buf -= peak
        exp_(xp, buf)
        z = rsum(xp, buf)
        log_z = peak[..., 0] + xp.log(z)
    if order == 0:
        return log_z, None, None, None
    if tmp is None:
        tmp = xp.empty(shape, dtype=l.dtype, device=_device(xp, l))
    xp.multiply(buf, l, out=tmp)
    raw = [rsum(xp, tmp)]
    for _ in range(1, order):
        tmp *= l
        raw.append(rsum(xp, tmp))
    mean = raw[0] / z
    if order == 1:
        return log_z, mean, None, None
    second = raw[1] / z
    var = second - mean * mean
    third = None
    if order >= 3:
        third = raw[2] / z - mean * (3.0 * second - 2.0 * mean * mean)
    return log_z, mean, var, third


def _device(xp, x):
    return None if is_numpy(xp) else x.device


# Scratch buffers of the numpy path, kept per thread between passes and calls: a fresh array of a
# few hundred KiB is faulted in page by page (1.2 ms for the first pass of a V = 49,152 row against
# 0.25 ms on a warm buffer), and a geomix call cannot tune the allocator of the caller's process
# the way the `geomix` command does. At most SCRATCH_LIMIT bytes per thread are kept.
SCRATCH_LIMIT = 32 << 20
_SCRATCH = threading.local()


def scratch(xp, name: str, shape: tuple, like):
    """An uninitialised array of `shape` in like's dtype: for numpy a view of this thread's cached
    buffer `name` (valid until the next request of the same name); for torch a fresh tensor."""
    if not is_numpy(xp):
        return xp.empty(shape, dtype=like.dtype, device=like.device)
    size = math.prod(shape)
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


def _eps_of(xp, dtype) -> float:
    eps = _EPS.get(dtype)
    if eps is None:
        eps = _EPS[dtype] = float(xp.finfo(dtype).eps)
    return eps
