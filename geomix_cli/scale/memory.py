"""The memory budget of a sharded run: how many rows one block may hold, and how shards are cut
into pieces (the unit of work, of retry, of resume, and of one Parquet part file).

A block's peak memory is first modelled per row as

    bytes(row) = factor(command, kind) * 8 V      float64 working arrays alive at the peak
               + 2 V * itemsize                   the stored rows of both sides (mapped pages)
               + 2 V * 4                          bfloat16 only: the float32 widening
               + 512                              the row's results (Arrow, Parquet buffers)

with factors measured as resident memory (VmHWM) of one block in a geomix process at V = 1,024,
32,768 and 151,936 (solve: logits 2.3-4.0, probabilities 7.1-9.2; check: logits 12.2-12.6,
probabilities 12.7-17.8) and rounded up. Then `BlockSizer` follows what blocks really cost:
after each block it reads the process's peak resident memory since the block began (Linux:
VmHWM, reset through /proc/self/clear_refs) and sizes the next block from the largest cost per
row seen so far and the memory the process holds now (freed memory that the allocator keeps for
reuse included). The first block gets half of what the model allows. A budget that does not
leave room for one row is refused before any work. The benchmark measures the resulting peak RSS
of whole runs (docs/benchmarks.md).
"""

from __future__ import annotations

import os

from geomix_cli.core.validation import LOGITS, PROBS
from geomix_cli.errors import InputError
from geomix_cli.io.machine import (available_memory_bytes, format_bytes, peak_resident_bytes,
                                   resident_set_bytes)
from geomix_cli.io.machine import reset_peak_resident as reset_peak

WORK_FACTORS = {("solve", LOGITS): 4.5, ("solve", PROBS): 10.0,
                ("check", LOGITS): 14.0, ("check", PROBS): 19.0}
RESULT_BYTES_PER_ROW = 512
RESERVE = 64 << 20  # Parquet writer, Arrow buffers, statistics, allocator slack

# Pieces: at most this many rows (the results of a piece travel back from a worker as one Arrow
# table of ~200 bytes a row) and about this many stored bytes (a piece is one task: a few seconds
# to a minute of work, so a cluster balances and a retry repeats little).
PIECE_MAX_ROWS = 65_536
PIECE_INPUT_BYTES = 1 << 30


def row_bytes(vocab: int, command: str, kind: str, itemsize: int, *,
              bfloat16: bool = False) -> int:
    """Peak bytes one row of a block costs (see the module doc)."""
    factor = WORK_FACTORS.get((command, kind), max(WORK_FACTORS.values()))
    widened = 2 * vocab * 4 if bfloat16 else 0
    return int(factor * 8 * vocab + 2 * vocab * itemsize + widened + RESULT_BYTES_PER_ROW)


def block_rows(budget: int, per_row: int, *, resident: int | None = None,
               refuse: bool = True) -> int:
    """Rows per block under `budget` bytes for the whole process, given what the process holds
    now (`resident`, default: its current RSS); at least 1 row unless `refuse`, which raises
    when not even one row fits."""
    if resident is None:
        resident = resident_bytes()
    room = budget - resident - RESERVE
    if room < per_row and not refuse:
        return 1
    if room < per_row:
        raise InputError(
            f"--max-memory {format_bytes(budget)} is too small: geomix itself holds "
            f"{format_bytes(resident)} (+{format_bytes(RESERVE)} for buffers), and one row needs "
            f"{format_bytes(per_row)}; give at least "
            f"{format_bytes(resident + RESERVE + per_row)}")
    return max(1, room // per_row)


class BlockSizer:
    """Rows per block under a budget for the whole process, from the model at first, then from
    the measured peak resident memory of the blocks done (see the module doc)."""

    def __init__(self, budget: int, per_row_model: int):
        self.budget = budget
        self.per_row = per_row_model
        block_rows(budget, per_row_model)  # refuses a budget without room for one row
        self.first = True
        self._rss_before = 0

    def rows(self) -> int:
        """Rows for the next block (at least 1); call `done(rows)` after computing it."""
        release_free_memory()
        room_rows = block_rows(self.budget, self.per_row, resident=None, refuse=False)
        rows = max(1, room_rows // 2) if self.first else room_rows
        self._rss_before = resident_bytes()
        reset_peak()
        return rows

    def done(self, rows: int) -> None:
        if rows <= 0:
            return
        peak = peak_resident_bytes()
        if peak is not None:
            self.per_row = max(self.per_row if not self.first else 0,
                               (peak - self._rss_before) // rows, 1)
        self.first = False


def release_free_memory() -> None:
    """Hand the memory the allocator keeps for reuse back to the system between blocks (glibc
    malloc_trim; geomix processes raise glibc's trim threshold for speed inside a block, see
    cli.tune_process), so that the next block is sized from what the process really holds."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # pragma: no cover - not glibc
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


def piece_rows(stored_row_bytes: int) -> int:
    """Flat rows per piece for rows of this many stored bytes."""
    return max(1, min(PIECE_MAX_ROWS, PIECE_INPUT_BYTES // max(1, stored_row_bytes)))


def resident_bytes() -> int:
    return resident_set_bytes() or 0


def default_budget(processes: int = 1) -> int:
    """Without --max-memory: half of the memory this process may still use (io.machine: the
    kernel's MemAvailable, its cgroup's room, ulimit -v), shared by `processes` (at least
    256 MiB each); 2 GiB each where that is unknown."""
    available = available_memory_bytes()
    if available is None:
        return 2 << 30
    return max(256 << 20, available // 2 // max(1, processes))


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1
