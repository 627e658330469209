"""`--device / --dtype / --max-memory`, shared by every command that solves alpha*.

Usage in a command (solve, compare-alpha, verify, regress):

    from geomix_cli.commands import _device
    def cmd(..., device: Optional[str] = _device.DeviceOption,
            dtype: str = _device.ComputeDtypeOption, max_memory: Optional[str] = _device.MaxMemoryOption):
        sol = _device.solve(pairs, method, device=device, dtype=dtype, max_memory=max_memory)

Without --device the numpy solver runs (torch is never imported); with it the torch backend
(`geomix_cli.backends.solve_alpha_device`) returns the same AlphaSolution. A missing torch or
CUDA raises UnavailableError (one line, exit 5).
"""

from __future__ import annotations

import re
from typing import Optional

import typer

from geomix_cli.errors import InputError

DeviceOption = typer.Option(
    None, "--device", help="Solve with the torch backend on cpu or cuda (needs the torch extra); "
    "without it the numpy solver runs.")
ComputeDtypeOption = typer.Option(
    "float32", "--dtype", help="Compute dtype of the torch backend: float32 (alpha to ~1e-6) or "
    "float64 (~1e-12). Ignored without --device.")
MaxMemoryOption = typer.Option(
    None, "--max-memory", help="Budget for the torch backend's temporaries, e.g. 512M or 2G "
    "(default 1G); rows are processed in chunks that fit. For a sharded run (a folder / glob "
    "SOURCE, --out, --scheduler): the memory of each geomix process, read in row blocks that "
    "fit (default: half the memory available).")

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
          "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}


def parse_memory(text: Optional[str]) -> Optional[int]:
    """'512M' / '2G' / '1048576' -> bytes (binary units); None stays None."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise InputError(f"--max-memory '{text}' is not like 512M, 2G or a number of bytes")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value < 1 << 20:
        raise InputError(f"--max-memory '{text}' is below 1 MiB")
    return value


def solve(pairs, method: str, *, device: Optional[str], dtype: str = "float32",
          max_memory: Optional[str] = None, **options):
    """AlphaSolution for a PairSource: numpy when device is None, else the torch backend."""
    if device is None:
        from geomix_cli.core import solve_alpha

        return solve_alpha(pairs.log_pi_theta, pairs.log_pi_t, method,
                           row_errors=pairs.row_errors, **options)
    if method not in ("newton", "halley"):
        raise InputError(f"--device runs newton or halley; method '{method}' runs without "
                         "--device (numpy)")
    from geomix_cli.backends import resolve_device, solve_alpha_device

    resolve_device(device)
    return solve_alpha_device(pairs.log_pi_theta, pairs.log_pi_t, method, device=device,
                              compute_dtype=dtype, max_memory_bytes=parse_memory(max_memory),
                              row_errors=pairs.row_errors, kind="logits", **options)


def suite_solver(*, device: str, dtype: str = "float64", max_memory: Optional[str] = None) -> dict:
    """Options for checks.run_suite that make it check the torch backend on `device`:
    {"device_solver": (log_pi_theta, log_pi_t) -> AlphaSolution, "device_label": ...}.
    Resolves the device first, so a missing torch/CUDA is one line (exit 5) before any work."""
    if dtype not in ("float32", "float64"):
        raise InputError(f"--dtype must be float32 or float64, got '{dtype}'")
    from geomix_cli.backends import resolve_device, solve_alpha_device

    resolve_device(device)
    budget = parse_memory(max_memory)

    def device_solver(log_pi_theta, log_pi_t):
        return solve_alpha_device(log_pi_theta, log_pi_t, "newton", device=device,
                                  compute_dtype=dtype, max_memory_bytes=budget, kind="logits")

    return {"device_solver": device_solver, "device_label": f"torch {device} {dtype}"}
