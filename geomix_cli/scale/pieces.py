"""Pieces of work and their results: a piece is a run of flat rows of one shard; computing it
yields Arrow record batches, one per row block, with one row per position.

Everything here runs the same on the client (single process) and on a Dask worker: a piece is a
small picklable description, and a worker re-reads the shard's header itself.

Result columns (solve): shard, row, position_b, position_t, then the fields of `geomix solve
--json` (`geomix_cli.core.ROW_FIELDS`: status, alpha, kl_q_theta, kl_q_target, chernoff, log_z,
ess_theta, ess_target, alpha_entropy, iterations, residual, message). `row` numbers the rows of
a shard as `geomix solve SHARD --json` does; (position_b, position_t) is where the row sits in the
stored [B, V] (t null) or [B, T, V] array (the JSON's "position"). Non-finite numbers are null,
as in the JSON. Check columns: the same leading columns, then the columns of `check.csv`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from geomix_cli.core.principles import CASE_KEYS, ESS_BAND_RATIO
from geomix_cli.errors import InputError
from geomix_cli.scale import memory
from geomix_cli.scale.shards import ShardLayout, ShardRef, describe_shard, whole_file_estimate

LEAD_COLUMNS = ("shard", "row", "position_b", "position_t")


@dataclass(frozen=True)
class RunOptions:
    """What the results depend on (besides the input bytes): a resumed run reuses a part only
    when these match."""

    command: str  # "solve", "check" or "compare"
    method: str = "newton"
    kind: str | None = None
    renormalize: bool = False
    threshold: float | None = None
    principles: tuple = ()  # compare: the principles, in order

    def digest(self) -> str:
        from geomix_cli import __version__

        text = json.dumps({**asdict(self), "geomix": __version__}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Piece:
    """Flat rows [flat_start, flat_stop) of shard number `shard_index` (flat_stop None: the
    whole shard, whose rows are not known before reading it)."""

    index: int
    shard_index: int
    shard: ShardRef
    flat_start: int
    flat_stop: int | None
    rows_hint: int | None = None  # positions kept (after the mask), when known

    @property
    def id(self) -> str:
        return f"{self.shard_index:05d}-{self.flat_start:012d}"

    @property
    def file_name(self) -> str:
        return f"part-{self.id}.parquet"


def plan_pieces(shards: list[ShardRef], options: RunOptions) -> tuple[list[Piece], dict]:
    """The pieces of a run, in order, and each shard's layout (or the InputError that makes the
    shard unusable: it becomes one piece whose rows are `invalid`)."""
    pieces, layouts = [], {}
    for s, ref in enumerate(shards):
        try:
            layout = describe_shard(ref, kind=options.kind)
        except InputError as exc:
            layouts[s] = exc
            pieces.append(Piece(len(pieces), s, ref, 0, None))
            continue
        layouts[s] = layout
        if not layout.streamed:
            pieces.append(Piece(len(pieces), s, ref, 0, None))
            continue
        step = layout.flat_rows if not layout.splittable else memory.piece_rows(
            layout.stored_row_bytes)
        for start in range(0, layout.flat_rows, step):
            stop = min(layout.flat_rows, start + step)
            pieces.append(Piece(len(pieces), s, ref, start, stop,
                                int(layout.kept_rows(start, stop)[0].size)))
    return pieces, layouts


# ----------------------------------------------------------------------------------------------
# computing a piece


class InjectedFailure(RuntimeError):
    """Raised by the test hook GEOMIX_TEST_FAIL_ONCE (a transient failure, retried)."""


def iter_piece(piece: Piece, options: RunOptions, budget: int, *, fail_once: str | None = None):
    """Arrow record batches of a piece, one per row block. A shard-level problem raises
    InputError (possibly after some batches: the caller then replaces the piece's rows by
    `invalid_batch`)."""
    ref = piece.shard
    _check_unchanged(ref)
    layout = describe_shard(ref, kind=options.kind)
    if not layout.streamed:
        yield from _whole_shard_batches(piece, options, budget, fail_once)
        return
    from geomix_cli.core.validation import validate_pair

    sizer = memory.BlockSizer(budget, memory.row_bytes(
        layout.vocab, options.command, layout.kind, layout.theta.itemsize,
        bfloat16=layout.theta.dtype is None))
    stop = layout.flat_rows if piece.flat_stop is None else piece.flat_stop
    a = piece.flat_start
    with layout.block_reader() as reader:
        while a < stop:
            b = min(stop, a + sizer.rows())
            labels, flat = layout.kept_rows(a, b)
            if labels.size == 0:
                sizer.done(0)
                a = b
                continue
            theta, target = reader.read(a, b)
            if layout.kept_flat is not None:
                theta, target = theta[flat - a], target[flat - a]
            log_theta, log_t, errors = validate_pair(
                theta, target, layout.kind, names=layout.keys, file=ref.path,
                renormalize=options.renormalize, storage_dtype=layout.storage_dtype)
            del theta, target  # unmap the block's pages before computing
            pos_b, pos_t = layout.position_columns(labels, flat)
            batch = compute_block(options, ref.label, log_theta, log_t, errors, labels, pos_b,
                                  pos_t)
            del log_theta, log_t
            sizer.done(b - a)
            a = b
            yield batch
            _maybe_fail(piece, fail_once)


def _whole_shard_batches(piece: Piece, options: RunOptions, budget: int, fail_once):
    """A shard read whole (json, csv, parquet, pt, generator, Fortran-order npz)."""
    from geomix_cli.sources import load_source

    ref = piece.shard
    if not ref.path.startswith("gen:"):
        need = whole_file_estimate(ref)
        room = budget - memory.resident_bytes() - memory.RESERVE
        if need > room:
            raise InputError(
                f"a {Path(ref.path).suffix} shard is read whole and needs about "
                f"{memory.format_bytes(need)}, more than the {memory.format_bytes(max(room, 0))} "
                "--max-memory leaves; store large shards as .safetensors or .npz (read by row "
                "blocks)", file=ref.path)
    pairs = load_source(ref.path, kind=options.kind, renormalize=options.renormalize)
    positions = pairs.extra.get("positions")
    labels = pairs.row_labels.astype(np.int64)
    if positions is None:
        pos_b, pos_t = labels, None
    else:
        pos_b = positions[:, 0].astype(np.int64)
        pos_t = positions[:, 1].astype(np.int64) if positions.shape[1] > 1 else None
    sizer = memory.BlockSizer(budget, memory.row_bytes(pairs.vocab_size, options.command,
                                                       pairs.kind, 8))
    a = 0
    while a < pairs.n_rows:
        b = min(pairs.n_rows, a + sizer.rows())
        batch = compute_block(options, ref.label, pairs.log_pi_theta[a:b], pairs.log_pi_t[a:b],
                              pairs.row_errors[a:b], labels[a:b], pos_b[a:b],
                              None if pos_t is None else pos_t[a:b])
        sizer.done(b - a)
        a = b
        yield batch
        _maybe_fail(piece, fail_once)


def _check_unchanged(ref: ShardRef) -> None:
    if ref.path.startswith("gen:"):
        return
    try:
        stat = os.stat(ref.path)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", file=ref.path) from None
    if (int(stat.st_size), int(stat.st_mtime_ns)) != (ref.size, ref.mtime_ns):
        raise InputError("the file changed while the run was going on (size or modification "
                         "time); rerun with --resume to recompute it", file=ref.path)


def _maybe_fail(piece: Piece, fail_once: str | None) -> None:
    """Test hook: GEOMIX_TEST_FAIL_ONCE=PIECE_INDEX@MARKER_DIR makes that piece fail once, midway
    (after its first block), the way a lost worker or an I/O hiccup would."""
    if not fail_once:
        return
    index, _, folder = fail_once.partition("@")
    if str(piece.index) != index:
        return
    marker = Path(folder) / f"failed-once-{piece.index}"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    raise InjectedFailure(f"injected transient failure in piece {piece.index}")


def compute_block(options: RunOptions, shard_label: str, log_theta, log_t, errors, labels,
                  pos_b, pos_t):
    """One Arrow record batch of results for validated rows."""
    if options.command == "compare":
        return compare_batch(options, shard_label, log_theta, log_t, errors, labels, pos_b,
                             pos_t)
    if options.command == "solve":
        columns = solve_columns(log_theta, log_t, errors, options.method)
    else:
        columns = check_columns(log_theta, log_t, errors, options.threshold)
    return to_batch(shard_label, labels, pos_b, pos_t, columns)


def solve_columns(log_theta, log_t, errors, method: str) -> dict:
    """The per-row fields of `geomix solve --json` (ROW_FIELDS) as arrays."""
    from geomix_cli.core import ROW_FIELDS, diagnose, solve_alpha

    diagnostics = diagnose(log_theta, log_t,
                           solve_alpha(log_theta, log_t, method, row_errors=list(errors)))
    sol = diagnostics.solution
    return {name: np.asarray(getattr(diagnostics, name) if hasattr(diagnostics, name)
                             else getattr(sol, name)) for name in ROW_FIELDS if name != "row"}




def check_columns(log_theta, log_t, errors, threshold) -> dict:
    """The columns of `geomix check`'s check.csv (commands.check.flat_record of records_from),
    as arrays; a test keeps the two in step."""
    from geomix_cli.core.principles import WEIGHT_QUANTILES, check_rows

    r = check_rows(log_theta, log_t, threshold=threshold, row_errors=list(errors))
    ratio = r["ess_ratio"]
    within = np.where(np.isfinite(ratio), ratio <= ESS_BAND_RATIO, False)
    cols = {"status": r["status"], "alpha": r["alpha"], "alpha_entropy": r["alpha_entropy"],
            "chernoff": r["chernoff"], "threshold": r["threshold"], "ess_theta": r["ess_theta"],
            "ess_target": r["ess_target"], "ess_ratio": ratio,
            "ess_within_10pct": np.ma.masked_array(within, mask=~np.isfinite(ratio)),
            "message": r["message"]}
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(r["counts"] > 0, r["meeting"] / np.maximum(r["counts"], 1), np.nan)
    for c, key in enumerate(CASE_KEYS):
        cols.update({f"{key}_tokens": r["counts"][:, c], f"{key}_meeting": r["meeting"][:, c],
                     f"{key}_fraction_meeting": fraction[:, c], f"{key}_mass_q": r["mass_q"][:, c],
                     f"{key}_mass_theta": r["mass_theta"][:, c],
                     f"{key}_mass_target": r["mass_t"][:, c]})
    w = r["weights"]
    cols.update({"w_min": w["w_min"], "w_max": w["w_max"], "w_mean_under_q": w["w_mean_q"],
                 "w_second_moment_under_q": w["w_second_moment_q"],
                 **{f"w_q{q:g}": w[f"w_q{q:g}"] for q in WEIGHT_QUANTILES}})
    return cols


COMPARE_METRICS = ("kl_q_theta", "kl_q_target", "kl_gap", "chernoff", "ess_theta",
                   "ess_target", "min_ess", "four_case_fraction")


def compare_batch(options: RunOptions, shard_label: str, log_theta, log_t, errors, labels,
                  pos_b, pos_t):
    """`geomix compare-alpha`'s records (commands.compare_alpha.compare_case) for a block: the
    rows once per principle, principle by principle; the columns of compare_alpha.csv without
    `case` (the shard says it) and without the solve time (a timing, not a result)."""
    import pyarrow as pa

    from geomix_cli.core.principles import principle_metrics, solve_principle

    n = len(labels)
    valid = np.array([e is None for e in errors], dtype=bool)
    batches = []
    if valid.any():  # the valid rows once, not a [B, V] copy per principle and side
        valid_theta, valid_t = log_theta[valid], log_t[valid]
    for principle in options.principles:
        cols = {"principle": [principle] * n, "status": np.full(n, "invalid", dtype=object),
                "alpha": np.full(n, np.nan),
                **{name: np.full(n, np.nan) for name in COMPARE_METRICS},
                "message": [e or "" for e in errors]}
        if valid.any():
            sol = solve_principle(valid_theta, valid_t, principle)
            metrics = principle_metrics(valid_theta, valid_t, sol,
                                        threshold=options.threshold)
            cols["status"][valid] = sol.status
            cols["alpha"][valid] = sol.alpha
            for name in COMPARE_METRICS:
                cols[name][valid] = metrics[name]
            for i, message in zip(np.flatnonzero(valid), sol.message):
                cols["message"][i] = message
        batches.append(to_batch(shard_label, labels, pos_b, pos_t, cols))
    return pa.concat_batches(batches)


def to_batch(shard_label: str, labels, pos_b, pos_t, columns: dict):
    """An Arrow record batch: lead columns, then `columns` (floats: non-finite -> null)."""
    import pyarrow as pa

    n = len(labels)
    arrays = {"shard": pa.array([shard_label] * n, pa.string()),
              "row": pa.array(np.asarray(labels, dtype=np.int64)),
              "position_b": pa.array(np.asarray(pos_b, dtype=np.int64)),
              "position_t": (pa.nulls(n, pa.int64()) if pos_t is None
                             else pa.array(np.asarray(pos_t, dtype=np.int64)))}
    for name, values in columns.items():
        arrays[name] = _arrow_column(name, values)
    return pa.RecordBatch.from_pydict(arrays)


def _arrow_column(name: str, values):
    import pyarrow as pa

    if isinstance(values, np.ma.MaskedArray):
        return pa.array(values.data, mask=np.asarray(values.mask, dtype=bool)
                        if values.mask is not np.ma.nomask else None)
    if isinstance(values, list) or (isinstance(values, np.ndarray) and values.dtype.kind in "UO"):
        return pa.array([None if v is None else str(v) for v in values], pa.string())
    values = np.asarray(values)
    if values.dtype.kind == "f":
        return pa.array(values.astype(np.float64), mask=~np.isfinite(values))
    if values.dtype.kind in "iu":
        return pa.array(values.astype(np.int64))
    return pa.array(values)


def invalid_batch(piece: Piece, layout: ShardLayout | None, error: InputError, command: str):
    """The piece's rows, all `invalid` with the shard's one-line error: one row per position
    when the layout is known, else a single row with row and positions null."""
    import pyarrow as pa

    message = f"shard unusable: {error.one_line()}"
    stop = piece.flat_stop
    if isinstance(layout, ShardLayout) and layout.streamed and stop is not None:
        labels, flat = layout.kept_rows(piece.flat_start, stop)
        pos_b, pos_t = layout.position_columns(labels, flat)
        n = len(labels)
    else:
        labels = pos_b = pos_t = None
        n = 1
    schema = result_schema(command)
    arrays = {}
    for field in schema:
        if field.name == "shard":
            arrays["shard"] = pa.array([piece.shard.label] * n, pa.string())
        elif field.name == "status":
            arrays["status"] = pa.array(["invalid"] * n, pa.string())
        elif field.name == "message":
            arrays["message"] = pa.array([message] * n, pa.string())
        elif field.name == "row" and labels is not None:
            arrays["row"] = pa.array(labels, pa.int64())
        elif field.name == "position_b" and pos_b is not None:
            arrays["position_b"] = pa.array(np.asarray(pos_b, dtype=np.int64))
        elif field.name == "position_t" and pos_t is not None:
            arrays["position_t"] = pa.array(np.asarray(pos_t, dtype=np.int64))
        elif field.name == "iterations" or field.name.endswith(("_tokens", "_meeting")):
            arrays[field.name] = pa.array(np.zeros(n, dtype=np.int64))
        else:
            arrays[field.name] = pa.nulls(n, field.type)
    return pa.RecordBatch.from_pydict(arrays, schema=schema)


_SCHEMAS: dict = {}


def result_schema(command: str):
    """The Arrow schema of a command's results (from a one-row computation, so it follows the
    columns the code produces)."""
    if command not in _SCHEMAS:
        from geomix_cli.core.validation import validate_pair

        log_theta, log_t, errors = validate_pair(np.array([[0.5, 0.5]]), np.array([[0.25, 0.75]]),
                                                 "probs")
        options = RunOptions(command=command, principles=("half",))
        batch = compute_block(options, "", log_theta, log_t, errors, np.array([0]),
                              np.array([0]), None)
        _SCHEMAS[command] = batch.schema
    return _SCHEMAS[command]


def compute_piece(piece: Piece, options: RunOptions, budget: int, fail_once: str | None = None):
    """All of a piece's results as one Arrow table (what a Dask task returns). A shard-level
    problem gives the piece's rows as `invalid` (see `invalid_batch`), never an exception."""
    import pyarrow as pa

    try:
        batches = list(iter_piece(piece, options, budget, fail_once=fail_once))
        shard_error = None
    except InputError as exc:
        batches, shard_error = [_invalid_for(piece, options, exc)], exc.one_line()
    table = pa.Table.from_batches(batches, schema=result_schema(options.command))
    memory.release_free_memory()  # a worker's memory drops back between tasks
    return table, shard_error


def _invalid_for(piece: Piece, options: RunOptions, error: InputError):
    try:
        layout = describe_shard(piece.shard, kind=options.kind)
    except InputError:
        layout = None
    return invalid_batch(piece, layout, error, options.command)
