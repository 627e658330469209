"""Optional array backends for the alpha* solve. torch is imported lazily, only when asked for.

Public entry points (import this package freely: it never imports torch at import time):

- `solve_alpha_device(log_pi_theta, log_pi_t, method="newton", device="cpu", compute_dtype=...,
  max_memory_bytes=..., row_errors=None, kind="logits")` -> `core.solvers.AlphaSolution`
  (the same result type, statuses and messages as the numpy solvers; numpy arrays inside).
- `torch_available()` / `resolve_device(device)`: raise `errors.UnavailableError` (exit 5) when
  torch is not installed or the device (e.g. cuda) is not present; a device name that is not
  cpu, cuda or cuda:N is `errors.InputError` (a bad option, exit 2).
- `reference_bisection_torch(...)`: the derivation's section-6.2 solver, verbatim, for `bench`.

One algorithm, arrays never named: the torch backend runs `core.kernel` -- the very code behind
`core.solvers.classify_rows` + `core.solvers.solve_newton` -- on torch tensors, in row chunks that
keep its temporaries under a memory budget (`torch_backend` adds only device, dtype and
chunking).
"""

from __future__ import annotations

from geomix_cli.errors import UnavailableError

DEVICES = ("cpu", "cuda")
COMPUTE_DTYPES = ("float32", "float64")
DEFAULT_MAX_MEMORY = 1 << 30  # 1 GiB of temporaries per chunk


def import_torch():
    """torch, or UnavailableError (one line, exit 5) when the extra is not installed."""
    try:
        import torch
    except ImportError:
        raise UnavailableError("the torch backend needs torch: pip install 'geomix[torch]' "
                               "(or run without --device for the numpy solver)") from None
    return torch


def torch_available() -> bool:
    try:
        import_torch()
    except UnavailableError:
        return False
    return True


def resolve_device(device: str):
    """torch.device for 'cpu', 'cuda' or 'cuda:N'; UnavailableError if it is not usable here."""
    import re

    from geomix_cli.errors import InputError

    name = str(device).strip().lower()
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        # a name geomix does not know is a bad option (exit 2), not a missing device (exit 5)
        raise InputError(f"--device '{device}' is not a device geomix knows; choose cpu, cuda or "
                         "cuda:N")
    torch = import_torch()
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            raise UnavailableError(f"--device {device}: no CUDA device is available (torch "
                                   f"{torch.__version__}, {build}); use --device cpu or no "
                                   "--device")
        if ":" in name:
            index = int(name.split(":", 1)[1])
            if index >= torch.cuda.device_count():
                raise UnavailableError(f"--device {device}: only {torch.cuda.device_count()} "
                                       "CUDA device(s) visible")
    return torch.device(name)


def available_devices() -> list[str]:
    """Devices the torch backend can run on here ([] without torch)."""
    if not torch_available():
        return []
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def solve_alpha_device(log_pi_theta, log_pi_t, method: str = "newton", *, device: str = "cpu",
                       compute_dtype="float32", max_memory_bytes: int | None = None,
                       row_errors=None, kind: str = "logits", **options):
    """Solve alpha* for every row with the torch backend; see `torch_backend.solve_alpha_torch`."""
    from geomix_cli.backends.torch_backend import solve_alpha_torch

    return solve_alpha_torch(log_pi_theta, log_pi_t, method=method, device=device,
                             compute_dtype=compute_dtype, max_memory_bytes=max_memory_bytes,
                             row_errors=row_errors, kind=kind, **options)


def reference_bisection_torch(pi_theta, pi_t, **options):
    """The derivation's section-6.2 `OptimalSamplingDistribution` (kl_symmetry), verbatim in torch."""
    from geomix_cli.backends.reference import reference_alpha

    return reference_alpha(pi_theta, pi_t, **options)


__all__ = ["COMPUTE_DTYPES", "DEFAULT_MAX_MEMORY", "DEVICES", "available_devices", "import_torch",
           "reference_bisection_torch", "resolve_device", "solve_alpha_device", "torch_available"]
