"""Timing helpers for benchmarks (no geomix imports: scripts/bench_small_calls.py loads this file
by path, to time any version of geomix the same way)."""

from __future__ import annotations

import time


def best_interleaved(functions: dict, *, budget: float = 0.15, rounds: int = 5) -> dict:
    """Seconds per call of each function: calls grouped so that a group lasts ~`budget` s, the
    functions run alternately round after round (the same conditions for each), best round."""
    counts = {}
    for name, fn in functions.items():
        fn()  # warm-up
        start = time.perf_counter()
        fn()
        counts[name] = max(1, int(budget / max(time.perf_counter() - start, 1e-6)))
    best = {name: float("inf") for name in functions}
    for _ in range(rounds):
        for name, fn in functions.items():
            start = time.perf_counter()
            for _ in range(counts[name]):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / counts[name])
    return best
