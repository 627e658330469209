"""Running a sharded solve or check: plan the pieces, compute them in this process or on Dask,
commit each to the results dataset, and merge their statistics.

No printing here: progress and retries are reported through callbacks, so the command layer
decides what goes to stderr.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

import numpy as np

from geomix_cli.core.principles import CASE_KEYS
from geomix_cli.errors import EXIT_BUG, GeomixError, InputError
from geomix_cli.scale import memory
from geomix_cli.scale.pieces import (Piece, RunOptions, _invalid_for, iter_piece, plan_pieces,
                                     result_schema)
from geomix_cli.scale.shards import Discovery, ShardLayout, discover_shards
from geomix_cli.scale.stats import ColumnSummary, Summary

EXAMPLES_PER_PIECE = 200
SUMMARY_COLUMNS = {
    "solve": ("alpha", "chernoff", "kl_q_theta", "ess_theta", "ess_target", "alpha_entropy",
              "iterations"),
    "check": ("alpha", "alpha_entropy", "chernoff", "ess_theta", "ess_target", "ess_ratio",
              "w_q0.5",
              "case1_mass_q", "case2_mass_q", "case3_mass_q", "case4_mass_q"),
}
COMPARE_COLUMNS = ("alpha", "kl_gap", "min_ess", "ess_ratio", "four_case_fraction")


class PieceFailed(GeomixError):
    """A piece kept failing (an unexpected error, or a worker that died) after its retries."""

    exit_code = EXIT_BUG


@dataclass
class RunPlan:
    source: str
    options: RunOptions
    discovery: Discovery
    pieces: list[Piece]
    layouts: dict  # shard index -> ShardLayout or the InputError that makes it unusable

    @property
    def shards(self):
        return self.discovery.shards

    def input_paths(self) -> list[str]:
        return [s.path for s in self.shards]


@dataclass
class RunOutcome:
    plan: RunPlan
    summary: Summary
    shard_errors: dict = field(default_factory=dict)  # piece index -> one-line error
    reused: int = 0
    computed: int = 0
    workers: int = 1

    @property
    def rows(self) -> int:
        return int(self.summary.counters.get("rows", 0))

    @property
    def invalid_rows(self) -> int:
        return int(self.summary.counters.get("status:invalid", 0))


def plan_run(source: str, options: RunOptions) -> RunPlan:
    discovery = discover_shards(source)
    pieces, layouts = plan_pieces(discovery.shards, options)
    return RunPlan(source, options, discovery, pieces, layouts)


def check_budget(plan: RunPlan, budget: int, *, resident: int | None = None) -> None:
    """Refuse before any work when the budget does not hold one row of the widest shard."""
    widest = None
    for layout in plan.layouts.values():
        if isinstance(layout, ShardLayout) and layout.streamed:
            need = memory.row_bytes(layout.vocab, plan.options.command, layout.kind,
                                    layout.theta.itemsize, bfloat16=layout.theta.dtype is None)
            widest = need if widest is None else max(widest, need)
    if widest is not None:
        memory.block_rows(budget, widest, resident=resident)


# ----------------------------------------------------------------------------------------------
# per-piece statistics


def summarize(table, command: str, piece: Piece) -> Summary:
    """The mergeable summary of one piece's results table."""
    n = table.num_rows
    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    shard = piece.shard.label
    if command == "compare":
        return _summarize_compare(table, piece, status)
    counters = {"rows": n}
    values, counts = np.unique(status.astype(str), return_counts=True)
    for value, count in zip(values, counts):
        counters[f"status:{value}"] = int(count)
        counters[f"shard:{shard}:{value}"] = int(count)
    counters[f"shard:{shard}:rows"] = n
    if command == "check":
        alpha = _floats(table, "alpha")
        counters["rows_with_alpha"] = int(np.isfinite(alpha).sum())
        within = table.column("ess_within_10pct").to_pylist()
        counters["ess_within_10pct"] = int(sum(1 for w in within if w))
        for key in CASE_KEYS:
            for what in ("tokens", "meeting"):
                column = table.column(f"{key}_{what}").to_numpy(zero_copy_only=False)
                counters[f"{what}:{key}"] = int(np.nansum(column))
    columns = {}
    for name in SUMMARY_COLUMNS[command]:
        values = _floats(table, name)
        if name == "iterations":  # 0 for rows that were not solved: not part of the picture
            values = np.where(status == "ok", values, np.nan)
        columns[name] = ColumnSummary.of(values)
    messages = table.column("message").to_pylist()
    rows = table.column("row").to_pylist()
    examples = []
    for i, message in enumerate(messages):
        if message:
            examples.append({"shard": shard, "row": rows[i], "status": str(status[i]),
                             "message": message})
            if len(examples) >= EXAMPLES_PER_PIECE:
                break
    return Summary(counters, columns, {piece.index: examples} if examples else {})


def _summarize_compare(table, piece: Piece, status) -> Summary:
    """Per principle: rows, rows with an alpha, and the columns of compare-alpha's medians; and
    |alpha(max-min-ess) - alpha(ess-balance)| per row where both exist."""
    principle = np.asarray(table.column("principle").to_pylist(), dtype=object)
    rows = np.asarray(table.column("row").to_numpy(zero_copy_only=False), dtype=np.float64)
    alpha = _floats(table, "alpha")
    ess_theta, ess_target = _floats(table, "ess_theta"), _floats(table, "ess_target")
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.maximum(ess_theta, ess_target) / np.minimum(ess_theta, ess_target)
    ratio = np.where(np.minimum(ess_theta, ess_target) > 0, ratio, np.nan)
    values = {"alpha": alpha, "kl_gap": _floats(table, "kl_gap"),
              "min_ess": _floats(table, "min_ess"), "ess_ratio": ratio,
              "four_case_fraction": _floats(table, "four_case_fraction")}
    counters = {"rows": int(table.num_rows), f"shard:{piece.shard.label}:rows": table.num_rows}
    columns = {}
    for value, count in zip(*np.unique(status.astype(str), return_counts=True)):
        counters[f"status:{value}"] = int(count)
        counters[f"shard:{piece.shard.label}:{value}"] = int(count)
    for name in dict.fromkeys(principle.tolist()):
        mine = principle == name
        counters[f"principle:{name}:rows"] = int(mine.sum())
        counters[f"principle:{name}:with_alpha"] = int(np.isfinite(alpha[mine]).sum())
        for column in COMPARE_COLUMNS:
            columns[f"{name}:{column}"] = ColumnSummary.of(values[column][mine])
    pairs = [principle == "max-min-ess", principle == "ess-balance"]
    if all(p.any() for p in pairs):
        a = dict(zip(rows[pairs[0]], alpha[pairs[0]]))
        b = dict(zip(rows[pairs[1]], alpha[pairs[1]]))
        diffs = [abs(a[r] - b[r]) for r in a if r in b and np.isfinite(a[r]) and np.isfinite(b[r])]
        columns["max_min_ess_vs_ess_balance"] = ColumnSummary.of(np.asarray(diffs, dtype=float))
    messages = table.column("message").to_pylist()
    examples = [{"shard": piece.shard.label, "row": None if np.isnan(rows[i]) else int(rows[i]),
                 "principle": principle[i], "status": str(status[i]), "message": messages[i]}
                for i in np.flatnonzero(status != "ok")[:EXAMPLES_PER_PIECE]]
    return Summary(counters, columns, {piece.index: examples} if examples else {})


def _floats(table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# execution


@dataclass
class Callbacks:
    """What the runner tells its caller (all optional): a piece is done (its table, in any
    order), a piece is retried, a piece was reused from an earlier run."""

    on_piece: object = None  # (piece, table, reused: bool) -> None
    on_retry: object = None  # (piece, attempt, exception) -> None


def execute(plan: RunPlan, *, budget: int, store=None, scheduler: str | None = None,
            workers: int | None = None, retries: int = 2, callbacks: Callbacks | None = None,
            ) -> RunOutcome:
    """Compute every piece (reusing what --resume may), commit parts, merge statistics."""
    callbacks = callbacks or Callbacks()
    command = plan.options.command
    parts: dict[int, Summary] = {}
    outcome = RunOutcome(plan, Summary())
    fail_once = _test_hook("GEOMIX_TEST_FAIL_ONCE")

    def deliver(piece: Piece, table, shard_error, reused: bool) -> None:
        parts[piece.index] = summarize(table, command, piece)
        if shard_error:
            outcome.shard_errors[piece.index] = shard_error
        if reused:
            outcome.reused += 1
        else:
            outcome.computed += 1
        if callbacks.on_piece is not None:
            callbacks.on_piece(piece, table, reused)

    todo = []
    for piece in plan.pieces:
        table = store.reusable(piece) if store is not None else None
        if table is not None:
            deliver(piece, table, None, True)
        else:
            todo.append(piece)
    if scheduler is None:
        check_budget(plan, budget)
        for piece in todo:
            table, shard_error = _run_with_retries(piece, plan.options, budget, store, retries,
                                                   fail_once, callbacks)
            deliver(piece, table, shard_error, False)
            _maybe_kill_for_test(outcome.computed)
    else:
        from geomix_cli.scale.dask_runner import run_on_dask

        outcome.workers = run_on_dask(plan, todo, scheduler=scheduler, workers=workers,
                                      budget=budget, retries=retries, fail_once=fail_once,
                                      store=store, deliver=deliver, callbacks=callbacks)
    outcome.summary = Summary.merge_all(parts[i] for i in sorted(parts))
    if store is not None:
        store.remove_stale_parts(plan.pieces)
    return outcome


def _run_with_retries(piece, options, budget, store, retries, fail_once, callbacks):
    for attempt in range(1, retries + 2):
        try:
            return run_piece_streaming(piece, options, budget, store, fail_once=fail_once)
        except (GeomixError, KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - retried, then reported with its type
            if attempt > retries:
                raise piece_failed(piece, exc, attempt) from exc
            if callbacks.on_retry is not None:
                callbacks.on_retry(piece, attempt, exc)
    raise AssertionError("unreachable")  # pragma: no cover


def piece_failed(piece: Piece, exc: BaseException, attempts: int) -> PieceFailed:
    rows = (f"rows {piece.flat_start}..{piece.flat_stop - 1}" if piece.flat_stop is not None
            else "all rows")
    text = str(exc).splitlines()[0] if str(exc) else ""
    return PieceFailed(f"piece {piece.index} ({rows}) failed {attempts} time(s): "
                       f"{type(exc).__name__}: {text}".rstrip(": ") +
                       "; the finished parts are kept: rerun with --resume",
                       file=piece.shard.path)


def run_piece_streaming(piece: Piece, options: RunOptions, budget: int, store, *,
                        fail_once: str | None = None):
    """Compute a piece block by block, writing each block as a Parquet row group as soon as it
    is computed; commit the part. Returns (table, shard_error)."""
    import pyarrow as pa

    schema = result_schema(options.command)
    writer = store.writer(piece, schema) if store is not None else None
    batches, shard_error = [], None
    try:
        try:
            for batch in iter_piece(piece, options, budget, fail_once=fail_once):
                if writer is not None:
                    writer.write(batch)
                batches.append(batch)
        except InputError as exc:  # the shard is unusable: its rows become `invalid`
            shard_error = exc.one_line()
            if writer is not None:
                writer.discard()
                writer = store.writer(piece, schema)
            batches = [_invalid_for(piece, options, exc)]
            if writer is not None:
                writer.write(batches[0])
        if writer is not None:
            writer.commit(shard_error=shard_error)
            writer = None
    finally:
        if writer is not None:
            writer.discard()
    return pa.Table.from_batches(batches, schema=schema), shard_error


def _test_hook(name: str) -> str | None:
    """A test hook's value, honoured only under pytest (as io.outputs' pause hook)."""
    return os.environ.get(name) if "PYTEST_CURRENT_TEST" in os.environ else None


def _maybe_kill_for_test(parts_done: int) -> None:
    """Test hook: GEOMIX_TEST_KILL_AFTER_PARTS=N kills this process (SIGKILL, nothing cleaned
    up) after it has committed N parts, as a crash or the OOM killer would; N:SIGTERM (or
    N:SIGINT) sends that signal instead, as a job scheduler or Ctrl-C would."""
    spec = _test_hook("GEOMIX_TEST_KILL_AFTER_PARTS")
    if not spec:
        return
    count, _, name = spec.partition(":")
    if parts_done == int(count):
        os.kill(os.getpid(), getattr(signal, name or "SIGKILL"))


# ----------------------------------------------------------------------------------------------
# rows as JSON


def json_rows(table, command: str):
    """Plain dicts of a results table for JSON / JSON Lines: `geomix solve --json`'s fields
    (check: check.csv's columns) with "shard" first and "position" = [b] or [b, t] last."""
    for rec in table.to_pylist():
        b, t = rec.pop("position_b"), rec.pop("position_t")
        out = {"shard": rec.pop("shard")}
        out.update(rec)
        out["position"] = None if b is None else ([b] if t is None else [b, t])
        yield out


class OrderedRows:
    """Hands piece tables on in piece order (pieces may finish in any order on a cluster)."""

    def __init__(self, emit):
        self.emit = emit
        self.pending: dict[int, object] = {}
        self.next_index = 0

    def add(self, piece: Piece, table) -> None:
        self.pending[piece.index] = table
        while self.next_index in self.pending:
            self.emit(self.pending.pop(self.next_index))
            self.next_index += 1
