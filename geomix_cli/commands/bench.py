"""`geomix bench`: every solver on the same generated batch, side by side (see geomix_cli/bench.py)."""

from __future__ import annotations

from typing import List, Optional

import typer

from geomix_cli.commands import _shared


def _fmt_bytes(n) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def register(app: typer.Typer) -> None:
    from geomix_cli.cli import guarded

    @app.command("bench")
    @guarded
    def bench(
        rows: int = typer.Option(64, "--rows", "-B", help="Rows (positions) in the batch."),
        vocab: int = typer.Option(151_936, "--vocab", "-V", help="Vocabulary size."),
        dtype: str = typer.Option("float32", "--dtype",
                                  help="Storage dtype of the logits: float32, float16, bfloat16."),
        device: Optional[List[str]] = typer.Option(
            None, "--device", help="torch device(s) for the reference and the torch backend "
            "(cpu, cuda; repeatable). Default: every available one (none without torch)."),
        repeat: int = typer.Option(3, "--repeat", "-n", help="Timed runs per method (median)."),
        brentq_rows: int = typer.Option(2, "--brentq-rows",
                                        help="brentq runs row by row: time it on this many."),
        method: Optional[List[str]] = typer.Option(
            None, "--method", "-m", help="Only these: reference, bisection, brentq, newton, "
            "halley, torch (repeatable)."),
        max_memory: Optional[str] = typer.Option(
            None, "--max-memory", help="Budget for the torch backend's temporaries (e.g. 512M, 2G)."),
        whole_process: bool = typer.Option(
            False, "--whole-process", help="Also time whole processes on a temporary file: "
            "`geomix solve FILE` against loading it and running the derivation's reference code."),
        seed: int = typer.Option(0, "--seed", help="Seed of the generated logits."),
        exact_rows: Optional[int] = typer.Option(
            None, "--exact-rows", help="Errors against float64 on the first N rows only (for "
            "large GPU batches, when no numpy method runs; default all rows)."),
        json_out: bool = _shared.JsonOption,
    ) -> None:
        """Time the reference bisection, brentq, numpy newton and the torch backend on one batch:
        median seconds, passes, peak memory, error against float64, GB/s and the one-read floor."""
        from geomix_cli.bench import BenchConfig, run_bench
        from geomix_cli.cli import restore_numpy_hugepage, stderr

        # In-process timings under numpy's default allocation policy (as before the one-shot
        # start-up setting of geomix processes); the whole-process runs keep their own start-up.
        restore_numpy_hugepage()
        from geomix_cli.commands._device import parse_memory

        _shared.check_seed(seed)
        if rows >= 1 and vocab >= 2:
            from geomix_cli.io import check_memory

            # stored logits of both sides, their float64 log-probabilities and the solvers'
            # temporaries: ~64 bytes per (row, token)
            check_memory(64 * rows * vocab, what=f"a bench batch of {rows:,} rows x "
                         f"{vocab:,} tokens", hint="use a smaller --rows or --vocab")
        known = {"reference", "bisection", "brentq", "newton", "halley", "torch"}
        unknown = [m for m in (method or []) if m not in known]
        if unknown:
            from geomix_cli.errors import InputError

            raise InputError(f"unknown bench method(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(sorted(known))}")
        config = BenchConfig(rows=rows, vocab=vocab, dtype=dtype,
                             devices=tuple(device) if device else ("auto",), repeat=repeat,
                             brentq_rows=brentq_rows, seed=seed, methods=tuple(method or ()),
                             max_memory_bytes=parse_memory(max_memory),
                             whole_process=whole_process, exact_rows=exact_rows)
        payload = run_bench(config, log=lambda text: stderr.print(f"bench: {text}",
                                                                  highlight=False))
        if json_out:
            from geomix_cli.io import dumps_json

            typer.echo(dumps_json({"schema_version": 1, **payload}))
            return
        render(payload)


def render(payload: dict) -> None:
    from rich.table import Table

    from geomix_cli.cli import stdout

    cfg, machine = payload["config"], payload["machine"]
    bw = ", ".join(f"{d} {v:.1f} GB/s" for d, v in machine["bandwidth_gb_s"].items())
    title = (f"geomix bench — {cfg['rows']} x {cfg['vocab']} {cfg['dtype']} logits — "
             f"{machine['cpu']} ({machine['cpu_count']} CPUs"
             + (f", {machine['gpu']}" if machine.get("gpu") else "") + f"); bandwidth {bw}")
    table = Table(title=title, title_justify="left")
    for header in ("method", "device", "rows", "median s", "s/row", "x ref", "passes",
                   "peak extra", "max |Δα|", "GB/s", "of floor"):
        table.add_column(header, justify="left" if header in ("method", "device") else "right")
    for r in payload["results"]:
        table.add_row(r["method"], r["device"], str(r["rows"]), f"{r['seconds']:.4g}",
                      f"{r['seconds_per_row']:.3g}", _fmt(r["speedup_vs_reference"], ".1f"),
                      str(r["passes"]),
                      f"{_fmt_bytes(r['peak_extra_bytes'])} ({r['memory_measure']}"
                      + (f"; est. {_fmt_bytes(r['extra']['temporaries_bytes_estimate'])})"
                         if r.get("extra", {}).get("temporaries_bytes_estimate") else ")"),
                      _fmt(r["max_abs_alpha_error"], ".1e"), f"{r['effective_gb_s']:.2f}",
                      _fmt(r["floor_fraction"], ".1%"))
    stdout.print(table)
    for r in payload["results"]:
        if r["note"]:
            stdout.print(f"{r['method']}: {r['note']}", highlight=False)
    stdout.print("numpy methods start from validated float64 log-probabilities (loading untimed); "
                 "torch methods and the reference from the stored logits. GB/s and the floor "
                 "count the two stored inputs read once.", highlight=False)
    if "whole_process" in payload:
        for name, rec in payload["whole_process"].items():
            ratio = rec.get("speedup_vs_reference_process")
            stdout.print(f"process {name}: {rec['seconds']:.2f} s"
                         + (f" ({ratio:.2f}x the reference process)" if ratio else ""),
                         highlight=False)
