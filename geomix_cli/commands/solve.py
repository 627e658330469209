"""`geomix solve SOURCE`: alpha* and diagnostics per row."""

from __future__ import annotations

from typing import Optional

import numpy as np
import typer

from geomix_cli.commands import _device, _render, _shared, _sharded

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


# Rows solved, diagnosed and written at a time by `solve --json` (memory bounded by the chunk).
JSON_CHUNK_ROWS = 16_384


def stream_json_rows(pairs, method: str, *, device: Optional[str] = None, dtype: str = "float32",
                     max_memory: Optional[str] = None):
    """Encoded JSON rows of a solve, made a row chunk at a time: solve, diagnose, encode, write,
    next chunk, so the memory beyond the input does not grow with the number of rows (each row
    is solved on its own: chunking changes no number). With `device` the torch backend solves
    the whole batch first (it chunks under its own memory budget)."""
    positions = pairs.extra.get("positions")
    if device is not None:
        diagnostics = solve_rows(pairs, method, device=device, dtype=dtype, max_memory=max_memory)
        yield from json_records(diagnostics, pairs.row_labels, positions)
        return
    from geomix_cli.core import diagnose, solve_alpha

    n_rows, vocab = pairs.n_rows, pairs.vocab_size
    chunk = max(1, min(JSON_CHUNK_ROWS, int(CHUNK_ELEMENTS // max(vocab, 1))))

    def rows(advance=None):
        for start in range(0, n_rows, chunk):
            part = slice(start, min(n_rows, start + chunk))
            theta, target = pairs.log_pi_theta[part], pairs.log_pi_t[part]
            sol = solve_alpha(theta, target, method, row_errors=pairs.row_errors[part])
            yield from json_records(diagnose(theta, target, sol), pairs.row_labels[part],
                                    positions)
            if advance is not None:
                advance(part.stop - part.start)

    if n_rows * vocab <= CHUNK_ELEMENTS:
        yield from rows()
        return
    from rich.progress import Progress

    from geomix_cli.cli import stderr

    with Progress(console=stderr, transient=True) as bar:
        task = bar.add_task(f"solving {n_rows} rows x {vocab} tokens", total=n_rows)
        yield from rows(lambda n: bar.update(task, advance=n))


def json_records(diagnostics, row_labels, positions=None):
    """The rows of `diagnostics.records(row_labels)` (plus "position" when the input had one),
    as encoded JSON objects, made a chunk of rows at a time: `solve --json` on a million rows
    never holds a million dicts (see io.json_rows)."""
    from geomix_cli.core.diagnostics import ROW_FIELDS
    from geomix_cli.io import json_rows

    sol = diagnostics.solution
    own = {"row": np.asarray(row_labels), "status": sol.status, "alpha": sol.alpha,
           "iterations": sol.iterations, "residual": sol.residual, "message": sol.message}
    columns = {name: own[name] if name in own else getattr(diagnostics, name)
               for name in ROW_FIELDS}
    if positions is not None:
        columns["position"] = np.asarray(positions)[np.asarray(row_labels)]
    return json_rows(columns, sol.n_rows)


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
        wide: bool = _render.WideOption,
        all_rows: bool = _render.AllOption,
        out: Optional[str] = _shared.report_option(
            "Write the rows to this Parquet dataset (a folder, e.g. alpha.parquet), part by "
            "part (a sharded run)."),
        resume: bool = _sharded.ResumeOption,
        scheduler: Optional[str] = _sharded.SchedulerOption,
        workers: Optional[int] = _sharded.WorkersOption,
        retries: int = _sharded.RetriesOption,
        jsonl: bool = _sharded.JsonlOption,
    ) -> None:
        """Solve alpha* (KL(q||pi_theta) = KL(q||pi_t)) for every row, with diagnostics.

        A batch opens with a summary (statuses, quantiles of alpha*, C and both ESS, the ESS
        balance), then the rows: all of a small batch, the first and last 10 of a large one
        (--all: every row). --json prints every number of every row. SOURCE may also be a folder
        or a quoted glob of pair files ('run42/*.safetensors'): it is then read shard by shard in
        row blocks under --max-memory into a Parquet dataset (--out), optionally on Dask."""
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
        if json_out:
            import sys

            from geomix_cli.io import write_json_document

            write_json_document(sys.stdout, {
                "schema_version": 1, "source": source, "method": method,
                "vocab_size": pairs.vocab_size, "input_kind": pairs.kind,
                "input_dtype": pairs.storage_dtype},
                stream_json_rows(pairs, method, device=device, dtype=dtype, max_memory=max_memory))
        else:
            diagnostics = solve_rows(pairs, method, device=device, dtype=dtype,
                                     max_memory=max_memory)
            render_human(source, method, diagnostics, pairs, wide=wide, all_rows=all_rows)
        raise typer.Exit(_shared.exit_code_for(pairs))


def render_human(source: str, method: str, diagnostics, pairs, *, wide: bool = False,
                 all_rows: bool = False) -> None:
    """The summary (batches of more than one row), then the rows table (see commands._render);
    built from the diagnostics arrays, so a million-row batch costs only the rows shown."""
    from geomix_cli.core.solvers import EXACT_METHODS

    sol = diagnostics.solution
    labels = pairs.row_labels
    status = sol.status
    fmt_a, fmt_n = _render.fmt_alpha, _render.fmt_num
    exact = method in EXACT_METHODS
    what = "alpha*" if exact else "alpha"
    q_name = "q*" if exact else "q"  # the ESS columns: at the exact root, or at the method's alpha
    head = (f"{source}: {_render.fmt_count(pairs.n_rows)} row(s) × V = "
            f"{_render.fmt_count(pairs.vocab_size)}, method {method}")
    if pairs.n_rows > 1:
        ok = status == "ok"
        facts = [("status", _render.status_line(status))]
        balance = _render.ess_balance_fact(diagnostics.ess_theta[ok], diagnostics.ess_target[ok],
                                           labels[ok])
        if balance:
            facts.append(("ESS balance", balance))
        if ok.any():
            gap = np.abs(diagnostics.alpha_entropy[ok] - sol.alpha[ok])
            if exact:
                facts.append(("entropy formula", f"|α_H − α*| median {fmt_n(np.median(gap), 3)}, "
                              f"95% {fmt_n(np.quantile(gap, 0.95), 3)}, max {fmt_n(gap.max(), 3)}"))
            its = sol.iterations[ok]
            facts.append(("passes", f"median {float(np.median(its)):g}, max {int(its.max())}"))
        qrows = [(what, _render.quantiles(sol.alpha[ok]), fmt_a)]
        if exact:
            qrows.append(("C [nats]", _render.quantiles(diagnostics.chernoff[ok]), fmt_n))
        else:
            qrows += [("KL(q‖π_θ)", _render.quantiles(diagnostics.kl_q_theta[ok]), fmt_n),
                      ("KL(q‖π_t)", _render.quantiles(diagnostics.kl_q_target[ok]), fmt_n)]
        qrows += [(f"ESS_θ({q_name})", _render.quantiles(diagnostics.ess_theta[ok]), fmt_n),
                  (f"ESS_t({q_name})", _render.quantiles(diagnostics.ess_target[ok]), fmt_n)]
        note = f"over the {_render.fmt_count(ok.sum())} rows with status ok:"
        _render.print_summary(head, facts, qrows if ok.sum() > 1 else (), note)
        title = None
    else:
        title = head
    cols = [
        _render.array_column("row", labels, lambda v: str(int(v))),
        _render.array_column(what, sol.alpha, fmt_a),
        *([_render.array_column("C [nats]", diagnostics.chernoff)] if exact else []),
        # at alpha* both KLs equal C: the compact view keeps C alone
        _render.array_column("KL(q‖πθ)", diagnostics.kl_q_theta, compact=not exact),
        _render.array_column("KL(q‖πt)", diagnostics.kl_q_target, compact=not exact),
        _render.array_column(f"ESS_θ({q_name})", diagnostics.ess_theta),
        _render.array_column(f"ESS_t({q_name})", diagnostics.ess_target),
        _render.array_column("α_H", diagnostics.alpha_entropy, fmt_a, compact=False),
        _render.array_column("passes", sol.iterations, lambda v: str(int(v)), compact=False),
        _render.Column("status", lambda i: str(status[i]), justify="left",
                       cells=lambda idx: [str(status[i]) for i in idx]),
    ]
    shown = _render.print_rows(cols, pairs.n_rows, title=title, wide=wide, all_rows=all_rows)
    _render.print_messages(shown, labels, status, sol.message)
