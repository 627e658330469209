"""`geomix solve` / `geomix check` on sharded sources: options, rendering and exit codes.

The work is done by `geomix_cli.scale`; this module parses the options, shows progress and the
summary, and decides the exit code (0; 3 when some rows are `invalid`; 2 when no row was usable).
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from geomix_cli.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_PARTIAL, InputError

ResumeOption = typer.Option(
    False, "--resume", help="Continue an interrupted run: keep every part of --out whose shard and "
    "options are unchanged, compute the rest.")
SchedulerOption = typer.Option(
    None, "--scheduler", help="Run on Dask (the dask extra): 'local' for a cluster of worker "
    "processes on this machine, or a scheduler address tcp://HOST:PORT. Workers need this "
    "geomix version and the shard files at the same paths.")
WorkersOption = typer.Option(
    None, "--workers", min=1, help="Worker processes of --scheduler local (default: one per CPU "
    "that the memory budget allows).")
RetriesOption = typer.Option(2, "--retries", min=0, help="Times a failed piece is run again.")
JsonlOption = typer.Option(False, "--jsonl", help="Stream the rows to stdout as JSON Lines "
                           "(one object per row, in shard order).")
MEMORY_HELP = ("Memory budget of a sharded run (a folder / glob SOURCE, --out, --scheduler), e.g. "
               "2G: shards are read in row blocks that fit (default: half the memory available; "
               "with --scheduler local, shared by the workers; with an address, per worker)")


def wanted(source: str, **options) -> bool:
    """Whether a command runs the sharded pipeline: a folder / glob source, or any of its
    options (--out for solve, --scheduler, --resume, --jsonl)."""
    from geomix_cli.scale.shards import is_sharded_spec

    return is_sharded_spec(source) or any(bool(v) for v in options.values())


def _budget(max_memory: Optional[str], scheduler: Optional[str], workers: Optional[int]) -> int:
    from geomix_cli.commands._device import parse_memory
    from geomix_cli.scale import memory

    budget = parse_memory(max_memory)
    if budget is not None:
        return budget
    if scheduler is None or scheduler == "local":
        return memory.default_budget()
    return 2 << 30  # per worker of a remote cluster, whose memory this client cannot see


def _refuse_in_memory_options(rows, device) -> None:
    if rows is not None:
        raise InputError("--rows selects rows of one file read in memory; it does not combine "
                         "with a folder / glob SOURCE, --out, --scheduler, --resume or --jsonl")
    if device is not None:
        raise InputError("--device runs the in-memory solve; sharded runs (a folder / glob "
                         "SOURCE, --out, --scheduler, --resume, --jsonl) use numpy on each "
                         "worker")


def _progress(total_pieces: int, label: str):
    """A rich progress bar on stderr when it is a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    from rich.progress import Progress

    from geomix_cli.cli import stderr

    bar = Progress(console=stderr, transient=True)
    task = bar.add_task(label, total=total_pieces)
    return bar, task


def _run(source: str, options, *, out: Optional[str], dataset_subdir: str, resume: bool,
         scheduler: Optional[str], workers: Optional[int], max_memory: Optional[str],
         retries: int, on_table=None):
    """Plan, open the store, execute with progress; returns (outcome, store)."""
    from geomix_cli.cli import warning_line
    from geomix_cli.scale.runner import Callbacks, execute, plan_run
    from geomix_cli.scale.store import ResultStore

    if resume and not out:
        raise InputError("--resume continues the results at --out; give --out")
    if workers is not None and scheduler != "local":
        raise InputError("--workers sizes a local cluster: use it with --scheduler local (an "
                         "existing cluster has the workers it has)")
    budget = _budget(max_memory, scheduler, workers)
    plan = plan_run(source, options)
    for name in plan.discovery.ignored[:5]:
        warning_line(f"{source}: ignored {name} (not a pair file)")
    store = None
    if out:
        from dataclasses import asdict

        store = ResultStore(out, command=options.command, source=source, options=asdict(options),
                            options_digest=options.digest(), inputs=plan.input_paths(),
                            resume=resume, dataset_subdir=dataset_subdir)
        store.open(planned=[p.file_name for p in plan.pieces], notify=warning_line)
        if store.discarded_partial:
            warning_line(f"{out}: discarded the parts of an interrupted run (use --resume to "
                         "keep them)")
    progress = _progress(len(plan.pieces), f"{options.command}: {len(plan.pieces)} piece(s) of "
                         f"{len(plan.shards)} shard(s)")

    def on_piece(piece, table, reused):
        if on_table is not None:
            on_table(piece, table)
        if progress is not None:
            progress[0].update(progress[1], advance=1)

    def on_retry(piece, attempt, exc):
        warning_line(f"{piece.shard.path}: piece {piece.index} failed ({type(exc).__name__}: "
                     f"{exc}); retrying ({attempt + 1} of {retries + 1})")

    try:
        if progress is not None:
            progress[0].start()
        outcome = execute(plan, budget=budget, store=store, scheduler=scheduler, workers=workers,
                          retries=retries, callbacks=Callbacks(on_piece, on_retry))
    except BaseException:
        if store is not None:
            store.close()
            if store.partial.exists():
                warning_line(f"{out}: the finished parts are kept in {store.partial}; rerun "
                             "with --resume to continue")
        raise
    finally:
        if progress is not None:
            progress[0].stop()
    for index, message in sorted(outcome.shard_errors.items()):
        warning_line(f"{message} (the shard's rows are 'invalid')")
    return outcome, store


def _exit_code(outcome) -> int:
    from geomix_cli.cli import error_line, warning_line

    bad = outcome.invalid_rows
    if bad == 0:
        return EXIT_OK
    if bad == outcome.rows:
        error_line(f"{outcome.plan.source}: no usable row: all {bad} rows are invalid")
        return EXIT_BAD_INPUT
    first = outcome.summary.first_examples(1)
    where = (f" (first: {first[0]['shard']} row {first[0]['row']}: {first[0]['message']})"
             if first else "")
    warning_line(f"{bad} of {outcome.rows} rows are invalid{where}")
    return EXIT_PARTIAL


class _JsonStream:
    """Rows written to stdout as they arrive (in piece order): JSON Lines, or one JSON document
    whose "rows" list is written row by row."""

    def __init__(self, command: str, lines: bool, header: dict | None):
        from geomix_cli.scale.runner import OrderedRows

        self.command = command
        self.lines = lines
        self.first = True
        self.ordered = OrderedRows(self._emit)
        if not lines:
            from geomix_cli.io import dumps_json

            head = dumps_json(header, indent=None)
            sys.stdout.write(head[:-1] + (", " if header else "") + '"rows": [')

    def add(self, piece, table) -> None:
        self.ordered.add(piece, table)

    def _emit(self, table) -> None:
        from geomix_cli.io import dumps_json
        from geomix_cli.scale.runner import json_rows

        out = []
        for rec in json_rows(table, self.command):
            text = dumps_json(rec, indent=None)
            if self.lines:
                out.append(text + "\n")
            else:
                out.append(("" if self.first else ",\n") + text)
                self.first = False
        sys.stdout.write("".join(out))
        sys.stdout.flush()

    def close(self, tail: dict) -> None:
        if not self.lines:
            from geomix_cli.io import dumps_json

            body = dumps_json(tail, indent=None)
            sys.stdout.write("]" + (", " + body[1:] if tail else "}") + "\n")
            sys.stdout.flush()


def solve(source: str, *, method: str, out: Optional[str], resume: bool,
          scheduler: Optional[str], workers: Optional[int], max_memory: Optional[str],
          retries: int, json_out: bool, jsonl: bool, renormalize: bool, logits: bool,
          probs: bool, rows, device) -> int:
    """`geomix solve` on a sharded source; returns the exit code."""
    from geomix_cli.commands._shared import forced_kind
    from geomix_cli.scale.pieces import RunOptions
    from geomix_cli.scale.report import aggregate

    _refuse_in_memory_options(rows, device)
    if json_out and jsonl:
        raise InputError("--json and --jsonl exclude each other")
    options = RunOptions("solve", method=method, kind=forced_kind(logits, probs),
                         renormalize=renormalize)
    stream = None
    if json_out or jsonl:
        stream = _JsonStream("solve", jsonl, None if jsonl else
                             {"schema_version": 1, "source": source, "method": method})
    outcome, store = _run(source, options, out=out, dataset_subdir="", resume=resume,
                          scheduler=scheduler, workers=workers, max_memory=max_memory,
                          retries=retries, on_table=stream.add if stream else None)
    agg = aggregate(outcome)
    if store is not None:
        store.finish({"summary": agg})
    if stream is not None:
        stream.close({} if jsonl else {"summary": agg, "out": out})
    else:
        render_summary(agg, out=out, outcome=outcome, scheduler=scheduler)
    return _exit_code(outcome)


def check(source: str, *, threshold: Optional[float], out: Optional[str], resume: bool,
          scheduler: Optional[str], workers: Optional[int], max_memory: Optional[str],
          retries: int, json_out: bool, renormalize: bool, logits: bool, probs: bool,
          rows) -> int:
    """`geomix check` on a sharded source; returns the exit code."""
    from geomix_cli.commands._shared import forced_kind
    from geomix_cli.core.principles import CASE_EXPECTATIONS, CASE_KEYS
    from geomix_cli.scale.pieces import RunOptions
    from geomix_cli.scale.report import aggregate, check_report_files

    _refuse_in_memory_options(rows, None)
    options = RunOptions("check", kind=forced_kind(logits, probs), renormalize=renormalize,
                         threshold=threshold)
    stream = None
    if json_out:
        stream = _JsonStream("check", False, {
            "schema_version": 1, "source": source,
            "threshold": "1/V" if threshold is None else threshold,
            "expectations": dict(zip(CASE_KEYS, CASE_EXPECTATIONS))})
    outcome, store = _run(source, options, out=out, dataset_subdir="check.parquet" if out else "",
                          resume=resume, scheduler=scheduler, workers=workers,
                          max_memory=max_memory, retries=retries,
                          on_table=stream.add if stream else None)
    agg = aggregate(outcome, threshold=threshold)
    if store is not None:
        store.finish({"summary": agg}, check_report_files(outcome, agg, threshold=threshold))
    if stream is not None:
        stream.close({"totals": agg["totals"], "summary": agg, "report_dir": out})
    else:
        render_summary(agg, out=out, outcome=outcome, scheduler=scheduler)
    return _exit_code(outcome)


def compare(source: str, *, principles: list[str], threshold: Optional[float],
            out: Optional[str], resume: bool, scheduler: Optional[str], workers: Optional[int],
            max_memory: Optional[str], retries: int, json_out: bool, renormalize: bool,
            logits: bool, probs: bool, rows, device) -> int:
    """`geomix compare-alpha` on a sharded source; returns the exit code."""
    from geomix_cli.commands._shared import forced_kind
    from geomix_cli.scale.pieces import RunOptions
    from geomix_cli.scale.report import aggregate, compare_report_files

    _refuse_in_memory_options(rows, device)
    options = RunOptions("compare", kind=forced_kind(logits, probs), renormalize=renormalize,
                         threshold=threshold, principles=tuple(principles))
    stream = None
    if json_out:
        stream = _JsonStream("compare", False, {"schema_version": 1, "source": source,
                                                "principles": principles,
                                                "threshold": threshold})
    outcome, store = _run(source, options, out=out,
                          dataset_subdir="compare.parquet" if out else "", resume=resume,
                          scheduler=scheduler, workers=workers, max_memory=max_memory,
                          retries=retries, on_table=stream.add if stream else None)
    agg = aggregate(outcome, threshold=threshold)
    if store is not None:
        store.finish({"summary": agg}, compare_report_files(agg))
    if stream is not None:
        stream.close({"summary": agg["medians"],
                      "max_min_ess_vs_ess_balance": agg["max_min_ess_vs_ess_balance"],
                      "aggregate": agg, "report_dir": out})
    else:
        render_compare(agg, out=out)
    return _exit_code(outcome)


def render_compare(agg: dict, *, out: Optional[str]) -> None:
    from rich.table import Table

    from geomix_cli.cli import stdout
    from geomix_cli.commands import _render

    fmt_a, fmt_n = _render.fmt_alpha, _render.fmt_num
    table = Table(title=f"{agg['source']}: {agg['shards']} shard(s), medians over rows",
                  title_justify="left")
    for h in ("principle", "rows", "α (median)", "|KL gap|", "min ESS", "ESS max/min",
              "4-case ok"):
        table.add_column(h, justify="left" if h == "principle" else "right")
    for s in agg["medians"]:
        table.add_row(s["principle"], f"{s['with_alpha']}/{s['rows']}",
                      fmt_a(s["median_alpha"]), fmt_n(s["median_kl_gap"], 3),
                      fmt_n(s["median_min_ess"]), fmt_n(s["median_ess_ratio"]),
                      fmt_n(s["median_four_case_fraction"], 3))
    stdout.print(table)
    mm = agg["max_min_ess_vs_ess_balance"]
    if mm is not None:
        stdout.print(f"max-min-ess vs ess-balance: max |Δα| = {mm['max_abs_difference']:.2g} over "
                     f"{mm['rows']} rows", highlight=False)
    if out:
        stdout.print(f"report: {out}/report.md", highlight=False)


ALPHA_LIKE = ("alpha", "alpha_entropy")


def _status_text(statuses: dict) -> str:
    """'ok 99,812 (99.8%) · no-root 150 · invalid 8', most frequent first (as _render's)."""
    from geomix_cli.commands import _render

    total = sum(statuses.values())
    ordered = sorted(statuses.items(), key=lambda kv: -kv[1])
    return " · ".join(f"{k} {_render.fmt_count(v)}" + (f" ({_render.fmt_pct(v / total)})"
                                                      if len(statuses) > 1 else "")
                      for k, v in ordered)


def render_summary(agg: dict, *, out: Optional[str], outcome, scheduler) -> None:
    """The human view of a sharded run, in the shape of the in-memory views' summary (issue 12's
    `_render.print_summary`): facts, quantiles over rows (from the mergeable histogram: within
    7.6e-6 relative; min and max exact), then rows per shard (the first 50)."""
    from rich.table import Table

    from geomix_cli.cli import stdout
    from geomix_cli.commands import _render
    from geomix_cli.scale.report import LABELS

    facts = [("rows", f"{_render.fmt_count(agg['rows'])}: {_status_text(agg['statuses'])}"),
             ("shards", f"{_render.fmt_count(agg['shards'])} in {_render.fmt_count(agg['pieces'])}"
                        " piece(s)" + (f", {outcome.reused} reused from the earlier run"
                                       if outcome.reused else ""))]
    if "totals" in agg:
        totals = agg["totals"]
        facts.append(("four cases", "tokens meeting the expectation: " + ", ".join(
            f"case {c + 1} {_render.fmt_pct(f)}"
            for c, f in enumerate(totals["fraction_meeting"]))))
        facts.append(("ESS balance", f"within 10% for {_render.fmt_count(totals['ess_within_10pct'])}"
                                     f" of {_render.fmt_count(totals['rows_with_alpha'])} rows"))
    if out:
        facts.append(("results", f"{out} ({'Parquet dataset' if agg['command'] == 'solve' else 'report'})"))
    qrows = []
    for name, d in agg["quantiles"].items():
        if not d["n"]:
            continue
        fmt = _render.fmt_alpha if name in ALPHA_LIKE else _render.fmt_num
        values = [d["min"] if q == 0.0 else d["max"] if q == 1.0 else _quantile(d, q)
                  for q, _ in _render.SUMMARY_QUANTILES]
        qrows.append((LABELS.get(name, name), values, fmt))
    from geomix_cli.scale.stats import QUANTILE_RELATIVE_ERROR

    _render.print_summary(f"{agg['source']} — {agg['command']}", facts, qrows,
                          f"over rows (quantiles within {QUANTILE_RELATIVE_ERROR:.2g} relative):")
    shards = agg["per_shard"]
    if len(shards) > 1 or any("error" in s for s in shards):
        table = Table(title="rows per shard", title_justify="left")
        keys = ["shard", "rows"] + sorted({k for s in shards for k in s} - {"shard", "rows",
                                                                           "error"})
        for key in keys:
            table.add_column(key, justify="left" if key == "shard" else "right")
        for entry in shards[:50]:
            table.add_row(*(_render.fmt_count(entry.get(k, 0)) if k != "shard" else entry[k]
                            for k in keys))
        stdout.print(table)
        if len(shards) > 50:
            stdout.print(f"... and {len(shards) - 50} more shards (all in --json)",
                         highlight=False)


def _quantile(described: dict, q: float) -> float:
    return described.get(f"q{q:g}", float("nan"))
