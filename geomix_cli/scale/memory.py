"""The memory budget of a sharded run: how many rows one block may hold, and how shards are cut
into pieces (the unit of work, of retry, of resume, and of one Parquet part file).

A block's peak memory is modelled per row as

    bytes(row) = factor(command, kind) * 8 V      float64 working arrays alive at the peak
               + 2 V * itemsize                   the stored rows of both sides (mapped pages)
               + 2 V * 4                          bfloat16 only: the float32 widening
               + 512                              the row's results (Arrow, Parquet buffers)

with factors measured with tracemalloc at V = 32,768 and 151,936 (validation of probabilities
keeps about 6 float64 copies of a row alive on its two threads, logits about 2.3; `check` about
12.4 for the four cases and the weights) and rounded up. A block gets
(budget - the process's resident memory now - RESERVE) / bytes(row) rows; a budget that does not
leave room for one row is refused before any work. The benchmark measures the resulting peak RSS
(docs/benchmarks.md).
"""

from __future__ import annotations

import os

from geomix_cli.core.validation import LOGITS, PROBS
from geomix_cli.errors import InputError

WORK_FACTORS = {("solve", LOGITS): 3.0, ("solve", PROBS): 7.0,
                ("check", LOGITS): 14.0, ("check", PROBS): 14.0}
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


def block_rows(budget: int, per_row: int, *, resident: int | None = None) -> int:
    """Rows per block under `budget` bytes for the whole process, given what the process holds
    now (`resident`, default: its current RSS)."""
    if resident is None:
        resident = resident_bytes()
    room = budget - resident - RESERVE
    if room < per_row:
        raise InputError(
            f"--max-memory {format_bytes(budget)} is too small: geomix itself holds "
            f"{format_bytes(resident)} (+{format_bytes(RESERVE)} for buffers), and one row needs "
            f"{format_bytes(per_row)}; give at least "
            f"{format_bytes(resident + RESERVE + per_row)}")
    return max(1, room // per_row)


def plan_blocks(start: int, stop: int, rows_per_block: int) -> list[tuple[int, int]]:
    """[start, stop) cut into consecutive blocks of at most rows_per_block rows."""
    step = max(1, int(rows_per_block))
    return [(a, min(stop, a + step)) for a in range(start, stop, step)]


def piece_rows(stored_row_bytes: int) -> int:
    """Flat rows per piece for rows of this many stored bytes."""
    return max(1, min(PIECE_MAX_ROWS, PIECE_INPUT_BYTES // max(1, stored_row_bytes)))


def resident_bytes() -> int:
    from geomix_cli.io import resident_set_bytes

    return resident_set_bytes() or 0


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is no such file)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def default_budget(processes: int = 1) -> int:
    """Without --max-memory: half of the memory available now, shared by `processes` (at least
    256 MiB each); 2 GiB each where the available memory is unknown."""
    available = available_bytes()
    if available is None:
        return 2 << 30
    return max(256 << 20, available // 2 // max(1, processes))


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
