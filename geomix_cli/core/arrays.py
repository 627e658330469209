"""Array libraries behind one namespace: numpy, or torch when the caller hands us tensors.

The mathematics in `core.kernel` is written once over the array API standard; this module gives it
the namespace of its inputs (`array_api_compat`, the bridge scipy itself uses) and the handful of
things the standard leaves out: in-place exp, moving per-row numbers to the host, the numpy check
that runs without importing torch. torch is never imported here: a numpy array gets numpy's
namespace, and only a tensor the caller already holds (so torch is already imported) gets torch's.
"""

from __future__ import annotations

import numpy as np

_NAMESPACES: dict[type, object] = {}
_NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


def namespace(x):
    """The array API namespace of `x` (array_api_compat.numpy or array_api_compat.torch).

    Cached per array type: `array_api_compat.array_namespace` costs ~10 us per call, which a
    solve of one short row would otherwise pay several times."""
    kind = type(x)
    xp = _NAMESPACES.get(kind)
    if xp is None:
        import array_api_compat

        # numpy >= 2 implements the standard in its own namespace: array_api_compat hands it back
        # unwrapped (its wrappers would add a Python call to every operation of a small solve)
        xp = array_api_compat.array_namespace(
            x, use_compat=False if (kind is np.ndarray and _NUMPY_2) else None)
        _NAMESPACES[kind] = xp
    return xp


def numpy_namespace():
    return namespace(np.empty(0))


def is_numpy(xp) -> bool:
    return xp is np or getattr(xp, "__name__", "").endswith("numpy")


def is_torch(xp) -> bool:
    return getattr(xp, "__name__", "").endswith("torch")


def is_torch_tensor(x) -> bool:
    """True for a torch.Tensor, without importing torch (a tensor exists only if torch is)."""
    kind = type(x)
    return kind.__module__.startswith("torch") and kind.__name__ in ("Tensor", "Parameter")


def device_of(x):
    import array_api_compat

    return array_api_compat.device(x)


def exp_(xp, x):
    """exp in place (numpy: out=, torch: exp_); returns x."""
    if is_numpy(xp):
        np.exp(x, out=x)
        return x
    return x.exp_()


def host(x) -> np.ndarray:
    """A numpy copy (or view) of an array of per-row numbers, wherever it lives."""
    if isinstance(x, np.ndarray):
        return x
    if is_torch_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def host64(*arrays) -> list[np.ndarray]:
    """Per-row numbers as float64 numpy arrays, fetched from the device in one transfer."""
    if isinstance(arrays[0], np.ndarray):  # numpy: no transfer (the arrays are one library)
        return [a if a.dtype == np.float64 else a.astype(np.float64) for a in arrays]
    import torch

    flat = torch.cat([a.to(torch.float64).reshape(-1) for a in arrays]).cpu().numpy()
    out, start = [], 0
    for a in arrays:
        size = a.numel()
        out.append(flat[start:start + size].reshape(tuple(a.shape)))
        start += size
    return out


def to_device_like(values: np.ndarray, like, xp, dtype=None):
    """A host numpy array as an array of `like`'s library and device (numpy: as is)."""
    if dtype is not None:
        values = np.asarray(values).astype(dtype, copy=False)
    if is_numpy(xp):
        return values
    if not values.flags.writeable:
        values = np.array(values)
    return xp.asarray(values, device=device_of(like))


def float_dtype(xp, name: str):
    return {"float64": xp.float64, "float32": xp.float32}[name]


def dtype_name(dtype) -> str:
    """'float32', 'bfloat16', ... for a numpy or torch dtype."""
    return str(dtype).replace("torch.", "")


def finfo_eps(xp, dtype) -> float:
    return float(xp.finfo(dtype).eps)


# Row reductions along the last axis. numpy's methods skip the ~1.5 us of dispatch that np.max /
# np.sum add per call, which a solve of one short row pays dozens of times.


def rmax(xp, x, keepdims: bool = False):
    if isinstance(x, np.ndarray):
        return x.max(axis=-1, keepdims=keepdims)
    return xp.max(x, axis=-1, keepdims=keepdims)


def rmin(xp, x, keepdims: bool = False):
    if isinstance(x, np.ndarray):
        return x.min(axis=-1, keepdims=keepdims)
    return xp.min(x, axis=-1, keepdims=keepdims)


def rsum(xp, x, dtype=None):
    if isinstance(x, np.ndarray):
        return x.sum(axis=-1, dtype=dtype)
    return xp.sum(x, axis=-1, dtype=dtype)
