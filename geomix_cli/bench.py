"""The benchmark harness behind `geomix bench`: every solver on the same data, side by side.

One run generates a batch of LLM-like logits ([rows, vocab], stored in float32 / float16 /
bfloat16), solves it once in float64 for the exact alpha*, then times each method (median of
`repeat` runs) and measures, per method:

- seconds (median) and seconds per row, and "x ref": the derivation's reference solver's seconds
  per row on the same device (the faster of its torch runs; the numpy port without torch) divided
  by this method's;
- passes over the data (max over rows of `evaluations`; for the reference, its iterations);
- peak extra memory, and how it was measured: `tracemalloc` (numpy: exact for numpy's buffers),
  `rss-sampled` (torch on CPU: resident-set size sampled every ~1 ms from /proc, minus the level
  before the call: approximate), `cuda-max-allocated` (torch.cuda.max_memory_allocated);
- max |alpha - exact| over the rows with a root;
- effective GB/s (bytes of the two stored inputs, read once, per second) and the fraction of the
  one-read floor (those bytes at the device's measured bandwidth: on CPU a numpy sum over a
  256 MiB array, on CUDA a torch sum over 1 GiB; the figure is reported with the results).

Numpy methods start from the validated float64 log-probabilities (what `geomix solve` has after
loading; the loading is not timed); torch methods, the API and the reference start from the stored
logits (their normalisation is timed). brentq runs on a subsample of rows (`brentq_rows`).

Peers (`peers=("dit",)`): dit's `chernoff_information_pmf(p, q)` (one row per call, linear space,
scipy's bounded minimize_scalar) against `geomix_cli.api.solve(p, q, kind="probs")` on the same
probability rows, single rows of V = 10, 100, 1,000, 49,152 and the configured batch (dit: a loop
over its rows); interleaved, best of several rounds; skipped with a note when dit is missing.
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
import tracemalloc
from dataclasses import asdict, dataclass, field

import numpy as np

from geomix_cli.errors import InputError

STORAGE_DTYPES = ("float32", "float16", "bfloat16")
PEERS = ("dit",)
PEER_SIZES = (10, 100, 1_000, 49_152)
REFERENCE_LABEL = "reference bisection (the derivation's reference, torch)"
REFERENCE_ONE_THREAD_LABEL = "reference bisection (the derivation's reference, torch, 1 thread)"
PORT_LABEL = "bisection (numpy float32 port of the derivation's reference)"
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass
class BenchConfig:
    rows: int = 64
    vocab: int = 151_936
    dtype: str = "float32"          # storage dtype of the logits
    devices: tuple = ("cpu",)       # torch devices to run on (reference + torch newton)
    repeat: int = 3
    brentq_rows: int = 2
    seed: int = 0
    scale: float = 3.0              # logits: N(0, scale^2) shared base ...
    noise: float = 1.0              # ... plus independent N(0, noise^2) per side
    max_memory_bytes: int | None = None
    methods: tuple = ()             # empty: all
    exact_rows: int | None = None   # rows solved in float64 for the errors (None: all)
    whole_process: bool = False
    peers: tuple = ()               # ("dit",): small calls and the batch against a peer library

    def check(self) -> None:
        if self.rows < 1 or self.vocab < 2:
            raise InputError("bench needs --rows >= 1 and --vocab >= 2")
        unknown = [p for p in self.peers if p not in PEERS]
        if unknown:
            raise InputError(f"unknown peer(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(PEERS)}")
        if self.dtype not in STORAGE_DTYPES:
            raise InputError(f"--dtype {self.dtype}: choose from {', '.join(STORAGE_DTYPES)}")
        if self.repeat < 1:
            raise InputError("--repeat must be at least 1")


@dataclass
class BenchResult:
    method: str
    device: str
    compute_dtype: str
    input: str
    rows: int
    seconds: float
    seconds_all: list
    seconds_per_row: float
    passes: int
    max_abs_alpha_error: float | None
    peak_extra_bytes: int | None
    memory_measure: str
    effective_gb_s: float
    floor_fraction: float | None
    speedup_vs_reference: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# data


def make_logits(config: BenchConfig):
    """(theta, target) float32 numpy logits holding exactly the stored values, and a function
    giving them as torch tensors in the storage dtype."""
    rng = np.random.default_rng(config.seed)
    shape = (config.rows, config.vocab)
    base = rng.standard_normal(shape, dtype=np.float32) * np.float32(config.scale)
    theta = base + rng.standard_normal(shape, dtype=np.float32) * np.float32(config.noise)
    target = base + rng.standard_normal(shape, dtype=np.float32) * np.float32(config.noise)
    del base
    if config.dtype == "float16":
        theta, target = (a.astype(np.float16).astype(np.float32) for a in (theta, target))
    elif config.dtype == "bfloat16":
        theta, target = (_round_bf16(a) for a in (theta, target))
    return theta, target


def _round_bf16(values: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (round half to even), kept in float32."""
    bits = values.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32)


def stored_tensor(values: np.ndarray, dtype: str, device):
    import torch

    t = torch.from_numpy(values)
    target = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    return t.to(device=device, dtype=target)


# ------------------------------------------------------------------------------------------------
# measurement helpers


def cpu_bandwidth_bytes_per_s(size_bytes: int = 256 << 20, repeat: int = 3) -> float:
    """Read bandwidth of this CPU, from a numpy sum over a float32 array (best of `repeat`)."""
    a = np.ones(size_bytes // 4, dtype=np.float32)
    a.sum()
    best = min(_timed(lambda: a.sum()) for _ in range(repeat))
    return size_bytes / best


def cuda_bandwidth_bytes_per_s(device, size_bytes: int = 1 << 30, repeat: int = 5) -> float:
    import torch

    a = torch.ones(size_bytes // 4, dtype=torch.float32, device=device)
    a.sum()
    torch.cuda.synchronize(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        a.sum()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    del a
    return size_bytes / min(times)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class _RssSampler:
    """Peak resident-set size during a block, sampled from /proc/self/statm (Linux)."""

    def __init__(self, interval: float = 0.001):
        from geomix_cli.io import resident_set_bytes

        self._read = resident_set_bytes
        self.interval = interval
        self.peak = 0
        self.base = 0
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._read() or 0)
            time.sleep(self.interval)

    def __enter__(self):
        self.base = self._read() or 0
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._read() or 0)

    @property
    def extra(self) -> int:
        return max(0, self.peak - self.base)


def _peak_memory(fn, device: str):
    """(peak extra bytes, how measured) for one call of fn."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - before), "cuda-max-allocated"
    if device == "numpy":
        tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()
            fn()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return int(peak - base), "tracemalloc"
    sampler = _RssSampler()
    if sampler._read() is None:
        fn()
        return None, "unavailable"
    with sampler:
        fn()
    return int(sampler.extra), "rss-sampled"


def _time_runs(fn, repeat: int, device: str) -> list[float]:
    sync = None
    if device.startswith("cuda"):
        import torch

        sync = torch.cuda.synchronize
    out = []
    for _ in range(repeat):
        if sync:
            sync()
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        out.append(time.perf_counter() - start)
    return out


# ------------------------------------------------------------------------------------------------
# the run


def run_bench(config: BenchConfig, log=lambda text: None) -> dict:
    """Run every method on the same data; returns {"config", "machine", "results"}."""
    from geomix_cli.core.solvers import (OK, solve_bisection_reference, solve_brentq,
                                         solve_newton)
    from geomix_cli.core.validation import validate_pair

    config.check()
    torch_devices = _torch_devices(config.devices)
    log(f"generating {config.rows} x {config.vocab} logits ({config.dtype})")
    theta, target = make_logits(config)
    log("validating to float64 log-probabilities and solving exactly (float64 newton, untimed)")
    numpy_wanted = not config.methods or bool({"bisection", "brentq", "newton", "halley"}
                                              & set(config.methods))
    n_exact = config.rows if numpy_wanted or not config.exact_rows else min(config.exact_rows,
                                                                           config.rows)
    log_theta, log_t, row_errors = validate_pair(theta[:n_exact], target[:n_exact], "logits",
                                                 storage_dtype=config.dtype)
    exact = solve_newton(log_theta, log_t, row_errors=row_errors)
    ok = np.zeros(config.rows, dtype=bool)
    ok[:n_exact] = exact.status == OK
    exact_alpha = np.full(config.rows, np.nan)
    exact_alpha[:n_exact] = exact.alpha
    input_bytes = 2 * config.rows * config.vocab * _ITEMSIZE[config.dtype]
    bandwidth = {"cpu": cpu_bandwidth_bytes_per_s()}
    for dev in torch_devices:
        if dev.startswith("cuda"):
            bandwidth[dev] = cuda_bandwidth_bytes_per_s(dev)
    results: list[BenchResult] = []
    wanted = set(config.methods)

    def want(name: str) -> bool:
        return not wanted or name in wanted

    def record(method, device, compute_dtype, input_kind, rows, fn, alpha_of, passes_of,
               mem_device, note=""):
        log(f"  {method} on {device} ({rows} rows) ...")
        value = fn()  # warm-up, and the answer
        peak, measure = _peak_memory(fn, mem_device)
        times = _time_runs(fn, config.repeat, mem_device)
        seconds = statistics.median(times)
        alpha = alpha_of(value)
        sel = ok[:rows]
        err = float(np.max(np.abs(alpha[sel] - exact_alpha[:rows][sel]))) if sel.any() else None
        bytes_read = input_bytes * rows / config.rows
        bw = bandwidth.get(device.split(":")[0] if device != "numpy" else "cpu",
                           bandwidth.get(device))
        results.append(BenchResult(
            method=method, device="cpu" if device == "numpy" else device,
            compute_dtype=compute_dtype, input=input_kind, rows=rows, seconds=seconds,
            seconds_all=times, seconds_per_row=seconds / rows, passes=int(passes_of(value)),
            max_abs_alpha_error=err, peak_extra_bytes=peak, memory_measure=measure,
            effective_gb_s=bytes_read / seconds / 1e9,
            floor_fraction=(bytes_read / bw) / seconds if bw else None, note=note,
            extra={k: v for k, v in getattr(value, "extra", {}).items()
                   if k in ("temporaries_bytes_estimate", "chunk_rows", "chunks",
                            "compute_dtype")}))

    # -- the derivation's reference (torch, float32), and its numpy port
    if torch_devices and want("reference"):
        from geomix_cli.backends.reference import reference_alpha

        import torch

        for dev in torch_devices:
            xs = stored_tensor(theta, config.dtype, dev)
            ys = stored_tensor(target, config.dtype, dev)
            threads = torch.get_num_threads()
            record(REFERENCE_LABEL, dev, "float32", "stored logits",
                   config.rows, lambda: reference_alpha(xs, ys, kind="logits", device=dev),
                   lambda v: v[0], lambda v: v[1], dev,
                   note=f"the derivation's section 6.2 code verbatim: float32, log(p + 1e-10), "
                        f"tol 1e-6, logs recomputed per pass"
                        f"{f'; torch {threads} threads' if dev == 'cpu' else ''}")
            if dev == "cpu" and threads > 1:
                # on a busy machine OpenMP threads spin and slow torch down many times over;
                # the one-thread run keeps the baseline honest (speedups use the faster one)
                torch.set_num_threads(1)
                try:
                    record(REFERENCE_ONE_THREAD_LABEL, dev, "float32",
                           "stored logits", config.rows,
                           lambda: reference_alpha(xs, ys, kind="logits", device=dev),
                           lambda v: v[0], lambda v: v[1], dev)
                finally:
                    torch.set_num_threads(threads)
            del xs, ys
    if want("bisection"):
        record(PORT_LABEL, "numpy", "float32",
               "float64 log-probs", config.rows,
               lambda: solve_bisection_reference(log_theta, log_t, row_errors=row_errors),
               lambda s: s.alpha, lambda s: s.evaluations.max(), "numpy")
    if want("brentq"):
        n = max(1, min(config.brentq_rows, config.rows))
        record("brentq (scipy, float64)", "numpy", "float64", "float64 log-probs", n,
               lambda: solve_brentq(log_theta[:n], log_t[:n], row_errors=row_errors[:n]),
               lambda s: s.alpha, lambda s: s.evaluations.max(), "numpy",
               note=f"subsample: first {n} of {config.rows} rows")
    if want("newton"):
        record("newton (numpy float64, the default solve)", "numpy", "float64",
               "float64 log-probs", config.rows,
               lambda: solve_newton(log_theta, log_t, row_errors=row_errors),
               lambda s: s.alpha, lambda s: s.evaluations.max(), "numpy")
    if want("halley"):
        record("halley (numpy float64)", "numpy", "float64", "float64 log-probs", config.rows,
               lambda: solve_newton(log_theta, log_t, order=3, row_errors=row_errors),
               lambda s: s.alpha, lambda s: s.evaluations.max(), "numpy")
    if want("api"):
        from geomix_cli import api as gx

        record("api.solve (numpy, from the stored logits, all diagnostics)", "numpy", "float64",
               "stored logits", config.rows, lambda: gx.solve(theta, target),
               lambda r: r.alpha, lambda r: 1 + int(np.max(r.iterations)), "numpy",
               note="geomix_cli.api.solve: validation, alpha*, C, KLs, ESS, alpha_H (numpy)")
    if torch_devices and want("torch"):
        from geomix_cli.backends.torch_backend import solve_alpha_torch

        for dev in torch_devices:
            xs = stored_tensor(theta, config.dtype, dev)
            ys = stored_tensor(target, config.dtype, dev)
            for cdt in ("float32", "float64"):
                record(f"newton (torch {cdt})", dev, cdt, "stored logits", config.rows,
                       lambda: solve_alpha_torch(xs, ys, device=dev, compute_dtype=cdt,
                                                 max_memory_bytes=config.max_memory_bytes),
                       lambda s: s.alpha, lambda s: s.evaluations.max(), dev)
            del xs, ys
    _speedups(results)
    payload = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "machine": machine_info(torch_devices, bandwidth),
        "one_read_floor_seconds": {d: input_bytes / b for d, b in bandwidth.items()},
        "input_bytes": input_bytes,
        "rows_with_root": int(ok.sum()),
        "exact_rows": n_exact,
        "results": [asdict(r) for r in results],
    }
    if config.whole_process:
        payload["whole_process"] = whole_process(config, theta, target, log)
    if config.peers:
        payload["peers"] = run_peers(config, theta, target, log)
    return payload


def _speedups(results: list[BenchResult]) -> None:
    ref: dict[str, float] = {}
    for r in results:  # the fastest reference run per device is the baseline (conservative)
        if r.method.startswith("reference"):
            ref[r.device] = min(ref.get(r.device, float("inf")), r.seconds_per_row)
    base = ref.get("cpu") or next(iter(ref.values()), None)
    if base is None:  # no torch: the numpy port is the baseline
        base = next((r.seconds_per_row for r in results if r.method.startswith("bisection")),
                    None)
    for r in results:
        same_device = ref.get(r.device, base)
        r.speedup_vs_reference = (same_device / r.seconds_per_row) if same_device else None


def _torch_devices(devices) -> list[str]:
    from geomix_cli.backends import resolve_device, torch_available

    if not devices:
        return []
    if list(devices) == ["auto"]:
        if not torch_available():
            return []
        import torch

        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out = []
    for d in devices:
        resolve_device(d)  # UnavailableError (exit 5) for cuda without CUDA / no torch
        out.append(str(d))
    return out


def machine_info(torch_devices, bandwidth) -> dict:
    from geomix_cli.io import cpu_model_name

    info = {"cpu": cpu_model_name() or platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__,
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
            "bandwidth_gb_s": {d: b / 1e9 for d, b in bandwidth.items()},
            "bandwidth_measure": {"cpu": "numpy float32 sum over 256 MiB (read), best of 3",
                                  "cuda": "torch float32 sum over 1 GiB (read), best of 5"}}
    if torch_devices:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if any(d.startswith("cuda") for d in torch_devices):
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def whole_process(config: BenchConfig, theta, target, log) -> dict:
    """Wall-clock of whole processes on the same file: `geomix solve FILE --json` (numpy newton,
    the default) against a process that loads the file and runs the derivation's reference in
    torch;
    also `geomix solve FILE --method bisection` (the numpy port, through the same pipeline)."""
    import subprocess
    import sys
    import tempfile

    from geomix_cli.io import write_pairs_npz

    with tempfile.TemporaryDirectory(prefix="geomix-bench-") as folder:
        path = os.path.join(folder, "pairs.npz")
        store = theta if config.dtype != "float16" else theta.astype(np.float16)
        store_t = target if config.dtype != "float16" else target.astype(np.float16)
        write_pairs_npz(path, theta=store, target=store_t, kind="logits")
        reference_script = (
            "import sys, numpy as np\n"
            "from geomix_cli.backends.reference import reference_alpha\n"
            "with np.load(sys.argv[1]) as d:\n"
            "    a, b = d['logits_theta'], d['logits_t']\n"
            "alpha, it = reference_alpha(a, b, kind='logits')\n"
            "print(alpha.tolist())\n")
        runs = {
            "geomix solve FILE --json": [sys.executable, "-m", "geomix_cli", "solve", path,
                                         "--json"],
            "geomix solve FILE --method bisection --json": [
                sys.executable, "-m", "geomix_cli", "solve", path, "--method", "bisection",
                "--json"],
            "python: load FILE + the derivation's reference (torch)": [
                sys.executable, "-c", reference_script, path],
            "python: load FILE + the derivation's reference (torch, 1 thread)": [
                sys.executable, "-c", "import torch; torch.set_num_threads(1)\n"
                + reference_script, path],
        }
        out = {}
        for name, cmd in runs.items():
            if "torch" in name and not _torch_devices(["auto"]):
                continue
            times = []
            for _ in range(config.repeat):
                log(f"  process: {name} ...")
                start = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True)
                times.append(time.perf_counter() - start)
                if proc.returncode not in (0, 3):
                    raise RuntimeError(f"{name} failed ({proc.returncode}): "
                                       f"{proc.stderr.strip().splitlines()[-1:]}")
            out[name] = {"seconds": statistics.median(times), "seconds_all": times}
        refs = [v["seconds"] for k, v in out.items() if "the derivation's reference" in k]
        if refs:  # against the faster reference process (conservative)
            for rec in out.values():
                rec["speedup_vs_reference_process"] = min(refs) / rec["seconds"]
        return out


# ------------------------------------------------------------------------------------------------
# peers


def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    """float64 probability rows from logits (the same numbers for both libraries)."""
    x = np.asarray(logits, dtype=np.float64)
    w = np.exp(x - x.max(axis=-1, keepdims=True))
    return w / w.sum(axis=-1, keepdims=True)


def run_peers(config: BenchConfig, theta: np.ndarray, target: np.ndarray, log) -> dict:
    """Each peer against geomix_cli.api.solve on the same probability rows (see module doc)."""
    out = {}
    if "dit" in config.peers:
        out["dit"] = _run_dit(config, theta, target, log)
    return out


def _run_dit(config: BenchConfig, theta, target, log) -> dict:
    try:
        import dit
        from dit.divergences.variational_distance import chernoff_information_pmf
    except ImportError:
        return {"skipped": "dit is not installed (pip install dit): the peer comparison is "
                           "skipped"}
    from geomix_cli import api as gx

    sizes = [(1, v) for v in PEER_SIZES] + [(config.rows, config.vocab)]
    rows_out = []
    for n_rows, vocab in sizes:
        log(f"  peer dit: {n_rows} x {vocab}")
        if (n_rows, vocab) == (config.rows, config.vocab):
            p, q = _softmax_rows(theta), _softmax_rows(target)
        else:
            a, b = make_logits(BenchConfig(rows=n_rows, vocab=vocab, seed=config.seed + vocab,
                                           scale=config.scale, noise=config.noise))
            p, q = _softmax_rows(a), _softmax_rows(b)
        single = n_rows == 1
        gp, gq = (p[0], q[0]) if single else (p, q)

        def geomix_full():
            return gx.solve(gp, gq, kind="probs")

        def geomix_lean():
            return gx.solve(gp, gq, kind="probs", diagnostics=False)

        def peer():
            return [chernoff_information_pmf(p[i], q[i]) for i in range(n_rows)]

        from geomix_cli.timing import best_interleaved

        times = best_interleaved({"geomix": geomix_full, "geomix_alpha_c": geomix_lean,
                                   "dit": peer}, rounds=3 if vocab * n_rows > 1e6 else 5)
        res = geomix_full()
        c_geomix = np.atleast_1d(np.asarray(res.chernoff, dtype=np.float64))
        c_dit = np.asarray(peer(), dtype=np.float64) * np.log(2.0)  # dit reports bits
        rows_out.append({
            "rows": n_rows, "vocab": vocab,
            "geomix_seconds": times["geomix"], "geomix_alpha_c_seconds": times["geomix_alpha_c"],
            "dit_seconds": times["dit"],
            "dit_over_geomix": times["dit"] / times["geomix"],
            "dit_over_geomix_alpha_c": times["dit"] / times["geomix_alpha_c"],
            "max_abs_chernoff_difference_nats": float(np.max(np.abs(c_dit - c_geomix))),
            "max_rel_chernoff_difference": float(np.max(np.abs(c_dit - c_geomix)
                                                        / np.abs(c_geomix))),
        })
    return {"version": getattr(dit, "__version__", "?"), "function":
            "dit.divergences.variational_distance.chernoff_information_pmf",
            "geomix": "geomix_cli.api.solve(p, q, kind='probs') (full: alpha*, C, KLs, ESS, "
                      "alpha_H, statuses; alpha_c: diagnostics=False)",
            "timing": "wall clock, calls interleaved, best of 3-5 rounds", "sizes": rows_out}
