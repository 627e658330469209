"""`geomix solve SOURCE`: alpha* and diagnostics per row."""

from __future__ import annotations

from typing import Optional

import numpy as np
import typer

from geomix_cli.commands import _device, _shared, _sharded


def _fmt(value: float, digits: int = 6) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    return f"{value:.{digits}g}"


# Rows per progress-bar step: about this many [row, token] entries (32 MB of float64 per side).
CHUNK_ELEMENTS = 4_000_000


def solve_rows(pairs, method: str, *, progress: bool = True, device: Optional[str] = None,
               dtype: str = "float32", max_memory: Optional[str] = None):
    """Solve in row chunks (a progress bar on stderr for large batches); return diagnostics.

    With `device`, the torch backend solves (it chunks rows under its own memory budget)."""
    from geomix_cli.core import diagnose, solve_alpha
    from geomix_cli.core.solvers import AlphaSolution

    if device is not None:
        from geomix_cli.commands import _device

        sol = _device.solve(pairs, method, device=device, dtype=dtype, max_memory=max_memory)
        return diagnose(pairs.log_pi_theta, pairs.log_pi_t, sol)
    n_rows, vocab = pairs.n_rows, pairs.vocab_size
    chunk = max(1, int(CHUNK_ELEMENTS // max(vocab, 1)))
    if n_rows <= chunk or not progress:
        sol = solve_alpha(pairs.log_pi_theta, pairs.log_pi_t, method, row_errors=pairs.row_errors)
        return diagnose(pairs.log_pi_theta, pairs.log_pi_t, sol)
    from rich.progress import Progress

    from geomix_cli.cli import stderr

    parts = []
    with Progress(console=stderr, transient=True) as bar:
        task = bar.add_task(f"solving {n_rows} rows x {vocab} tokens", total=n_rows)
        for start in range(0, n_rows, chunk):
            stop = min(n_rows, start + chunk)
            sol = solve_alpha(pairs.log_pi_theta[start:stop], pairs.log_pi_t[start:stop], method,
                              row_errors=pairs.row_errors[start:stop])
            parts.append(sol)
            bar.update(task, advance=stop - start)
    return diagnose(pairs.log_pi_theta, pairs.log_pi_t, AlphaSolution.concatenate(parts))


def register(app: typer.Typer) -> None:
    from geomix_cli.cli import guarded

    @app.command("solve")
    @guarded
    def solve(
        source: str = typer.Argument(..., help="A pairs file (.npz .json .csv .parquet "
                                     ".safetensors .pt) or a generator spec gen:NAME:k=v,..."),
        method: str = typer.Option("newton", "--method", "-m",
                                   help="newton (default, exact), halley, brentq (exact "
                                        "reference), bisection (the derivation's reference code), "
                                        "entropy (the heuristic formula)."),
        rows: Optional[str] = _shared.RowsOption,
        json_out: bool = _shared.JsonOption,
        renormalize: bool = _shared.RenormalizeOption,
        logits: bool = _shared.LogitsOption,
        probs: bool = _shared.ProbsOption,
        device: Optional[str] = _device.DeviceOption,
        dtype: str = _device.ComputeDtypeOption,
        max_memory: Optional[str] = _device.MaxMemoryOption,
        out: Optional[str] = typer.Option(
            None, "--out", "-o", help="Write the rows to this Parquet dataset (a folder, e.g. "
            "alpha.parquet), part by part; it may replace only an earlier geomix output."),
        resume: bool = _sharded.ResumeOption,
        scheduler: Optional[str] = _sharded.SchedulerOption,
        workers: Optional[int] = _sharded.WorkersOption,
        retries: int = _sharded.RetriesOption,
        jsonl: bool = _sharded.JsonlOption,
    ) -> None:
        """Solve alpha* (KL(q||pi_theta) = KL(q||pi_t)) for every row, with diagnostics.

        SOURCE may also be a folder or a quoted glob of pair files ('run42/*.safetensors'): it is
        then read shard by shard in row blocks under --max-memory, optionally on Dask."""
        from geomix_cli.core import METHODS
        from geomix_cli.errors import InputError

        if method not in METHODS:
            raise InputError(f"unknown method '{method}'; choose from {', '.join(METHODS)}")
        if _sharded.wanted(source, out=out, scheduler=scheduler, resume=resume, jsonl=jsonl):
            raise typer.Exit(_sharded.solve(
                source, method=method, out=out, resume=resume, scheduler=scheduler,
                workers=workers, max_memory=max_memory, retries=retries, json_out=json_out,
                jsonl=jsonl, renormalize=renormalize, logits=logits, probs=probs, rows=rows,
                device=device))
        if device is not None:
            from geomix_cli.backends import resolve_device

            if method not in ("newton", "halley"):
                raise InputError(f"--device runs newton or halley; method '{method}' runs "
                                 "without --device (numpy)")
            resolve_device(device)  # before loading: no CUDA / no torch is one line, exit 5
            _device.parse_memory(max_memory)
        pairs = _shared.load(source, rows=rows, renormalize=renormalize, logits=logits,
                             probs=probs)
        _shared.refuse_if_nothing_usable(pairs, source)
        diagnostics = solve_rows(pairs, method, device=device, dtype=dtype,
                                 max_memory=max_memory)
        records = diagnostics.records(pairs.row_labels)
        positions = pairs.extra.get("positions")
        if positions is not None:  # [B, T, V] input and/or a padding mask: where each row came from
            for rec in records:
                rec["position"] = [int(v) for v in positions[rec["row"]]]
        if json_out:
            from geomix_cli.io import dumps_json

            typer.echo(dumps_json({"schema_version": 1, "source": source, "method": method,
                                   "vocab_size": pairs.vocab_size, "input_kind": pairs.kind,
                                   "input_dtype": pairs.storage_dtype, "rows": records}))
        else:
            render_table(source, method, records, pairs)
        raise typer.Exit(_shared.exit_code_for(pairs))


def render_table(source: str, method: str, records: list[dict], pairs) -> None:
    from rich.table import Table

    from geomix_cli.cli import stdout

    table = Table(title=f"{source} — method {method} — {pairs.n_rows} row(s) x V={pairs.vocab_size}",
                  title_justify="left")
    for header in ("row", "alpha*", "C (nats)", "KL(q‖πθ)", "KL(q‖πt)", "ESS_θ(q)", "ESS_t(q)",
                   "α entropy", "iters", "status"):
        table.add_column(header, justify="right" if header not in ("status",) else "left")
    for rec in records:
        table.add_row(str(rec["row"]), _fmt(rec["alpha"], 10), _fmt(rec["chernoff"]),
                      _fmt(rec["kl_q_theta"]), _fmt(rec["kl_q_target"]), _fmt(rec["ess_theta"], 4),
                      _fmt(rec["ess_target"], 4), _fmt(rec["alpha_entropy"], 4),
                      str(rec["iterations"]), rec["status"])
    stdout.print(table)
    for rec in records:
        if rec["message"]:
            stdout.print(f"row {rec['row']} [{rec['status']}]: {rec['message']}", highlight=False)
