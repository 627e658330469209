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
            "halley, api, torch (repeatable)."),
        max_memory: Optional[str] = typer.Option(
            None, "--max-memory", help="Budget for the torch backend's temporaries (e.g. 512M, 2G)."),
        whole_process: bool = typer.Option(
            False, "--whole-process", help="Also time whole processes on a temporary file: "
            "`geomix solve FILE` against loading it and running the derivation's reference code."),
        seed: int = typer.Option(0, "--seed", help="Seed of the generated logits."),
        exact_rows: Optional[int] = typer.Option(
            None, "--exact-rows", help="Errors against float64 on the first N rows only (for "
            "large GPU batches, when no numpy method runs; default all rows)."),
        peers: Optional[List[str]] = typer.Option(
            None, "--peers", help="Also time a peer library on the same rows: dit "
            "(chernoff_information_pmf; single rows of V = 10 to 49,152 and the batch). Skipped "
            "with a note when it is not installed."),
        json_out: bool = _shared.JsonOption,
    ) -> None:
        """Time the derivation's reference bisection, brentq, numpy newton, the API and the torch
        backend on one batch: median seconds, passes, peak memory, error against float64, GB/s
        and the one-read floor (and, with --peers dit, dit against geomix_cli.api.solve)."""
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
        known = {"reference", "bisection", "brentq", "newton", "halley", "api", "torch"}
        unknown = [m for m in (method or []) if m not in known]
        if unknown:
            from geomix_cli.errors import InputError

            raise InputError(f"unknown bench method(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(sorted(known))}")
        config = BenchConfig(rows=rows, vocab=vocab, dtype=dtype,
                             devices=tuple(device) if device else ("auto",), repeat=repeat,
                             brentq_rows=brentq_rows, seed=seed, methods=tuple(method or ()),
                             max_memory_bytes=parse_memory(max_memory),
                             whole_process=whole_process, exact_rows=exact_rows,
                             peers=tuple(peers or ()))
        payload = run_bench(config, log=lambda text: stderr.print(f"bench: {text}",
                                                                  highlight=False))
        if json_out:
            from geomix_cli.io import dumps_json

            typer.echo(dumps_json({"schema_version": 1, **payload}))
            return
        render(payload)


def _memory_figure(r: dict) -> str:
    """One figure per method: the measured peak, or (torch on CPU, where sampling the resident set
    cannot resolve cache-sized chunks) the estimate of the temporaries, marked as such."""
    measured = r["peak_extra_bytes"]
    estimate = r.get("extra", {}).get("temporaries_bytes_estimate")
    if estimate and (measured is None or measured < estimate / 4):
        return f"~{_fmt_bytes(estimate)} (est.)"
    return _fmt_bytes(measured)


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
                   "peak extra memory", "max |Δα|", "GB/s", "of floor"):
        table.add_column(header, justify="left" if header in ("method", "device") else "right")
    for r in payload["results"]:
        table.add_row(r["method"], r["device"], str(r["rows"]), f"{r['seconds']:.4g}",
                      f"{r['seconds_per_row']:.3g}", _fmt(r["speedup_vs_reference"], ".1f"),
                      str(r["passes"]), _memory_figure(r),
                      _fmt(r["max_abs_alpha_error"], ".1e"), f"{r['effective_gb_s']:.2f}",
                      _fmt(r["floor_fraction"], ".1%"))
    stdout.print(table)
    for r in payload["results"]:
        if r["note"]:
            stdout.print(f"{r['method']}: {r['note']}", highlight=False)
    measures = sorted({r["memory_measure"] for r in payload["results"]})
    stdout.print("x ref = seconds per row of the derivation's reference solver (the faster of its "
                 "torch runs on the same device; the numpy port without torch) / this method's: "
                 "above 1 is faster. Peak extra memory: measured by "
                 + ", ".join(measures) + "; '(est.)' = the torch backend's estimate of its "
                 "temporaries where sampling the resident set cannot resolve them. numpy methods "
                 "start from validated float64 log-probabilities (loading untimed); torch "
                 "methods, the API and the reference from the stored logits. GB/s and the floor "
                 "count the two stored inputs read once.", highlight=False)
    if "whole_process" in payload:
        for name, rec in payload["whole_process"].items():
            ratio = rec.get("speedup_vs_reference_process")
            stdout.print(f"process {name}: {rec['seconds']:.2f} s"
                         + (f" ({ratio:.2f}x the reference process)" if ratio else ""),
                         highlight=False)
    for name, peer in payload.get("peers", {}).items():
        render_peer(name, peer)


def render_peer(name: str, peer: dict) -> None:
    from rich.table import Table

    from geomix_cli.cli import stdout

    if "skipped" in peer:
        stdout.print(f"peer {name}: {peer['skipped']}", highlight=False)
        return
    table = Table(title=f"peer: {name} {peer['version']} ({peer['function']}) against "
                        "geomix_cli.api.solve on the same probability rows", title_justify="left")
    for header in ("rows x V", "geomix s/call", "geomix alpha*+C only", f"{name} s/call",
                   f"{name} / geomix", f"{name} / alpha*+C only", "max |ΔC| (nats)"):
        table.add_column(header, justify="right")
    for rec in peer["sizes"]:
        table.add_row(f"{rec['rows']} x {rec['vocab']:,}", f"{rec['geomix_seconds']:.3g}",
                      f"{rec['geomix_alpha_c_seconds']:.3g}", f"{rec['dit_seconds']:.3g}",
                      f"{rec['dit_over_geomix']:.2f}", f"{rec['dit_over_geomix_alpha_c']:.2f}",
                      f"{rec['max_abs_chernoff_difference_nats']:.1e}")
    stdout.print(table)
    stdout.print(f"{peer['geomix']}; {peer['timing']}. {name} / geomix above 1: geomix is "
                 f"faster. |ΔC|: {name}'s Chernoff information (converted from bits) against "
                 "geomix's exact one.", highlight=False)
