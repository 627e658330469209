"""`geomix verify SUITE`: check every claim of the derivation and write the report."""

from __future__ import annotations

from typing import Optional

import typer

from geomix_cli.commands import _device, _shared


def register(app: typer.Typer) -> None:
    from geomix_cli.cli import guarded

    @app.command("verify")
    @guarded
    def verify(
        suite: Optional[str] = typer.Argument(None, help="The suite to run (see --list)."),
        list_suites: bool = typer.Option(False, "--list", help="List the suites and exit."),
        out: Optional[str] = _shared.report_option(
            "Report folder (default outputs/SUITE/ for the default settings; other settings get "
            "their own, e.g. outputs/SUITE_thorough/)."),
        json_out: bool = _shared.JsonOption,
        thorough: bool = typer.Option(False, "--thorough",
                                      help="Larger sweeps and more cases (several minutes)."),
        seed: int = typer.Option(0, "--seed", help="Seed of every random case (results are "
                                 "deterministic given it)."),
        threshold: Optional[float] = typer.Option(
            None, "--threshold", help="Four behaviour cases: a probability is 'large' when >= "
            "this (default 1/V, the uniform level)."),
        no_report: bool = typer.Option(False, "--no-report", help="Do not write the report "
                                       "folder (print only)."),
        device: Optional[str] = typer.Option(
            None, "--device", help="Also solve every family with the torch backend on cpu or "
            "cuda and check it against the numpy solve (exit 1 if it disagrees)."),
        dtype: str = typer.Option("float64", "--dtype", help="Compute dtype of the --device "
                                  "backend: float64 (default here: verify is about exactness) "
                                  "or float32."),
        max_memory: Optional[str] = _device.MaxMemoryOption,
        with_extras: Optional[list[str]] = typer.Option(
            None, "--with", help="Also run the optional claims that need this extra (e.g. "
            "models); without it they are reported untested."),
    ) -> None:
        """Check every claim of the derivation by computation and write the report.

        Writes report.md, results.json, CSV tables and figures into --out (default
        outputs/SUITE/; a run with other settings writes outputs/SUITE_thorough/,
        outputs/SUITE_seed3/, ... so it never replaces the default report). Exit 0 when the
        suite ran (refuted claims are findings), 1 if a mathematical identity failed (a bug in
        geomix)."""
        from geomix_cli.checks import SUITES
        from geomix_cli.errors import EXIT_BUG, InputError

        if list_suites:
            for name, (description, _) in SUITES.items():
                typer.echo(f"{name}\t{description}")
            return
        if suite is None:
            raise InputError(f"name a suite (one of: {', '.join(SUITES)}), or use --list")
        if suite not in SUITES:
            raise InputError(f"unknown suite '{suite}'; known: {', '.join(SUITES)} "
                             "(geomix verify --list)")
        if threshold is not None and not (0.0 < threshold < 1.0):
            raise InputError(f"--threshold must lie in (0, 1), got {threshold}")
        _shared.check_seed(seed)
        from geomix_cli.checks.suite import optional_extras

        extras = tuple(sorted(set(with_extras or ())))  # --with models --with models: once
        unknown = sorted(set(extras) - set(optional_extras()))
        if unknown:
            raise InputError(f"--with {unknown[0]}: no optional claim needs that extra; known: "
                             f"{', '.join(optional_extras())}")
        _warn_unavailable(extras)
        out_dir = None
        if not no_report:  # checked before the suite runs: a refusal costs nothing
            from pathlib import Path

            from geomix_cli.cases import real_sample_path

            out_dir = Path(out) if out else default_report_dir(
                suite, thorough=thorough, seed=seed, threshold=threshold, device=device,
                extras=extras)
            _shared.report_dir(out_dir, command="verify", sources=[real_sample_path()])
        device_options = {}
        if device is not None:
            device_options = _device.suite_solver(device=device, dtype=dtype,
                                                  max_memory=max_memory)
        result = _run_with_progress(suite, thorough=thorough, seed=seed, threshold=threshold,
                                    extras=extras, **device_options)
        if out_dir is not None:
            from geomix_cli.reports import write_suite_report

            write_suite_report(result, out_dir)
        if json_out:
            from geomix_cli.io import dumps_json

            payload = result.to_json()
            payload["report_dir"] = str(out_dir) if out_dir else None
            typer.echo(dumps_json(payload))
        else:
            _render(result, out_dir)
        if result.identity_failures:
            from geomix_cli.cli import error_line

            error_line("a mathematical identity failed (" + ", ".join(result.identity_failures)
                       + "): this is a bug in geomix; the report says where")
            raise typer.Exit(EXIT_BUG)


def _warn_unavailable(extras: tuple) -> None:
    """One warning line per optional claim asked for whose extra cannot be imported here (the
    claim is then reported untested with what to install), before the suite's minutes run."""
    from geomix_cli.checks import OPTIONAL_CLAIMS
    from geomix_cli.cli import warning_line

    for claim in OPTIONAL_CLAIMS.values():
        if claim.extra in extras and not claim.available():
            warning_line(f"{claim.id} needs {claim.install_command}: it will be reported "
                         f"untested")


def default_report_dir(suite: str, *, thorough: bool = False, seed: int = 0,
                       threshold: Optional[float] = None, device: Optional[str] = None,
                       extras: tuple = ()):
    """outputs/SUITE for the default settings; every other setting is named in the folder
    (outputs/SUITE_thorough, outputs/SUITE_thorough_seed3, ...), so that no run with other
    settings replaces the default report (the one committed to the repository)."""
    from pathlib import Path

    parts = [suite]
    if thorough:
        parts.append("thorough")
    if seed != 0:
        parts.append(f"seed{seed}")
    if threshold is not None:
        parts.append(f"threshold{threshold:g}")
    if device is not None:
        parts.append(f"device-{device.replace(':', '')}")
    if extras:
        parts.append("with-" + "-".join(sorted(set(extras))))
    return Path("outputs") / "_".join(parts)


def _run_with_progress(suite: str, **options):
    import sys

    from geomix_cli.checks import run_suite

    if not sys.stderr.isatty():
        return run_suite(suite, **options)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from geomix_cli.cli import stderr

    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=stderr, transient=True) as bar:
        task = bar.add_task(f"{suite}: starting", total=1)

        def progress(label: str, done: int, total: int) -> None:
            bar.update(task, total=total, completed=done, description=f"{suite}: {label}")

        return run_suite(suite, progress=progress, **options)


def _render(result, out_dir) -> None:
    from rich.markup import escape
    from rich.table import Table

    from geomix_cli.cli import stdout

    colours = {"holds": "green", "refuted": "red", "depends": "yellow", "untested": "dim"}
    table = Table(title=f"{result.suite} (seed {result.seed}"
                        f"{', thorough' if result.thorough else ''})", title_justify="left")
    table.add_column("claim")
    table.add_column("verdict")
    table.add_column("clause")
    table.add_column("key numbers (evidence in report.md)", overflow="fold")
    for c in result.claims:
        text = c.headline or (c.evidence if len(c.evidence) <= 240 else c.evidence[:237] + "...")
        table.add_row(c.id + (" (geomix)" if c.own else ""),
                      f"[{colours.get(c.verdict, 'white')}]{c.verdict}[/]", c.clause or "—",
                      escape(text))
    stdout.print(table)
    stdout.print(escape(result.summary_line()), highlight=False)
    if out_dir is not None:
        stdout.print(f"report: {out_dir}/report.md", highlight=False)
