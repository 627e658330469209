"""Out-of-core benchmark of sharded runs (issue 15): peak memory and throughput per row.

    python benchmarks/bench_sharded.py --total 20G --shard 512M --vocab 32768 --max-memory 2G
    python benchmarks/bench_sharded.py --sizing            # rows / s / core by V (docs/scale.md)

1. Writes a sharded source of `--total` bytes into `--work` (safetensors shards of `--shard` bytes,
   float32 logits from `geomix_cli.bench.make_logits`: a pool of 512 row pairs, cycled, each row
   shifted by a constant so that no two rows are the same bytes; alpha* is shift-invariant).
2. Side by side on the first shard (the same rows), alternately: the in-memory solve
   (`geomix solve SHARD --json`, the whole file loaded) and the sharded one (`geomix solve SHARD
   --out ... --max-memory`), `--repeat` times each.
3. The sharded solve of the whole source under `--max-memory`.
Each run is a separate `geomix` process; wall time from the parent, peak RSS from the kernel
(`wait4` ru_maxrss: resident anonymous and file-backed pages, the mapped shard pages included;
ru_utime + ru_stime for the CPU seconds).
4. Deletes everything it wrote (unless --keep). Prints a markdown table and a JSON line.

No assertion on time anywhere: the figures are recorded in docs/benchmarks.md with the command
and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    text = text.strip().upper().rstrip("B").rstrip("I")
    if text and text[-1] in UNITS:
        return int(float(text[:-1]) * UNITS[text[-1]])
    return int(text)


def write_shard(path: Path, rows: int, pool_theta, pool_target, first_row: int) -> None:
    """A float32 safetensors shard of `rows` rows cycled from the pool, written block by block."""
    vocab = pool_theta.shape[1]
    nbytes = rows * vocab * 4
    header = {"logits_theta": {"dtype": "F32", "shape": [rows, vocab],
                               "data_offsets": [0, nbytes]},
              "logits_t": {"dtype": "F32", "shape": [rows, vocab],
                           "data_offsets": [nbytes, 2 * nbytes]}}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)) + text)
        for pool in (pool_theta, pool_target):
            for start in range(0, rows, 256):
                index = (first_row + np.arange(start, min(rows, start + 256))) % len(pool)
                shift = ((first_row + np.arange(start, min(rows, start + 256))) % 97)[:, None]
                handle.write((pool[index] + shift.astype(np.float32)).tobytes())


def make_source(folder: Path, total: int, shard: int, vocab: int) -> tuple[int, int]:
    from geomix_cli.bench import BenchConfig, make_logits

    folder.mkdir(parents=True, exist_ok=True)
    pool_theta, pool_target = make_logits(BenchConfig(rows=512, vocab=vocab))
    rows_per_shard = max(1, shard // (2 * vocab * 4))
    n_shards = max(1, total // (rows_per_shard * 2 * vocab * 4))
    for s in range(n_shards):
        write_shard(folder / f"shard-{s:04d}.safetensors", rows_per_shard, pool_theta,
                    pool_target, s * rows_per_shard)
    return n_shards, rows_per_shard


def run(argv: list[str], *, cpus: str | None = None) -> dict:
    """One geomix process: wall seconds, peak RSS, exit code."""
    command = [sys.executable, "-m", "geomix_cli", *argv]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    start = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(argv)} exited {code}: {stderr[-2000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_bytes": usage.ru_maxrss * 1024}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main_benchmark(args) -> dict:
    work = Path(args.work)
    shards = work / "shards"
    try:
        t0 = time.perf_counter()
        n_shards, rows_per_shard = make_source(shards, parse_size(args.total),
                                               parse_size(args.shard), args.vocab)
        generated = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in shards.iterdir())
        first = sorted(shards.iterdir())[0]
        side = {"in_memory": [], "sharded": []}
        for _ in range(args.repeat):
            side["in_memory"].append(run(["solve", str(first), "--json"]))
            out = work / "one.parquet"
            side["sharded"].append(run(["solve", str(first), "--out", str(out), "--max-memory",
                                        args.max_memory]))
        whole_out = work / "alpha.parquet"
        load_before = loadavg()
        whole = run(["solve", str(shards), "--out", str(whole_out), "--max-memory",
                     args.max_memory])
        load_after = loadavg()
        import pyarrow.parquet as pq

        table = pq.read_table(whole_out, columns=["status"])
        rows = table.num_rows
        ok = int(sum(1 for s in table.column("status").to_pylist() if s == "ok"))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    median = lambda runs, key: float(np.median([r[key] for r in runs]))  # noqa: E731
    in_memory_rate = rows_per_shard / median(side["in_memory"], "wall_s")
    sharded_one_rate = rows_per_shard / median(side["sharded"], "wall_s")
    whole_rate = rows / whole["wall_s"]
    return {"source_bytes": size, "shards": n_shards, "rows_per_shard": rows_per_shard,
            "vocab": args.vocab, "rows": rows, "rows_ok": ok, "generate_s": generated,
            "max_memory": args.max_memory, "side_by_side": side,
            "in_memory_rows_per_s": in_memory_rate, "sharded_one_shard_rows_per_s":
            sharded_one_rate, "whole": whole, "whole_rows_per_s": whole_rate,
            "per_row_slowdown_vs_in_memory": in_memory_rate / whole_rate,
            "load_before": load_before, "load_after": load_after}


def sizing(args) -> list[dict]:
    """Rows / s on one core (taskset -c 0) by V: solve and check of a ~256 MB source; per wall
    second and per CPU second of the process (user + system: what the row costs a core, less
    sensitive than the wall time to other jobs on a shared machine; start-up included)."""
    out = []
    work = Path(args.work)
    try:
        for vocab in (1024, 8192, 32768, 151936):
            folder = work / f"v{vocab}"
            n_shards, rows_per_shard = make_source(folder, parse_size(args.sizing_total),
                                                   parse_size(args.sizing_total) // 2, vocab)
            rows = n_shards * rows_per_shard
            entry = {"vocab": vocab, "rows": rows}
            for command in ("solve", "check"):
                target = work / f"out-{command}-{vocab}"
                result = run([command, str(folder), "--out", str(target), "--max-memory",
                              args.max_memory], cpus="0")
                entry[f"{command}_rows_per_s_per_core"] = rows / result["wall_s"]
                entry[f"{command}_rows_per_cpu_s"] = rows / result["cpu_s"]
                entry[f"{command}_peak_rss_bytes"] = result["peak_rss_bytes"]
                shutil.rmtree(target, ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)
            out.append(entry)
            print(json.dumps(entry), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", default="20G")
    parser.add_argument("--shard", default="512M")
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--max-memory", default="2G")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--work", default="/tmp/geomix-bench-sharded")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--sizing", action="store_true")
    parser.add_argument("--sizing-total", default="256M")
    args = parser.parse_args()
    if Path(args.work).exists():
        raise SystemExit(f"{args.work} exists; choose an empty --work")
    print(f"load average at start: {loadavg()}", flush=True)
    result = sizing(args) if args.sizing else main_benchmark(args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
