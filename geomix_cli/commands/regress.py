"""`geomix regress`: recompute every golden case with every exact method, compare, exit 4 on drift.

Values: each case file in cases/ (see `geomix_cli.cases`) holds 50-digit reference values made by
scripts/make_golden.py and per-field tolerances; every exact solver (newton, halley, brentq, and
the torch backend in float64 when torch is installed) must reproduce them.
Verdicts: cases/verdicts/verify_alpha_theory.json holds {claim id: verdict}; a fresh run of the
suite must give the same verdicts.
`--update` rewrites expected values only from the reference script (never from the code under
test) and verdicts from a fresh suite run, printing what changed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from geomix_cli.errors import EXIT_REGRESSION, GeomixError

VERDICT_SUITES = ("verify_alpha_theory",)
TORCH_METHOD = "torch-float64"


class RegressionError(GeomixError):
    """Golden values or verdicts changed."""

    exit_code = EXIT_REGRESSION


def _torch_usable() -> bool:
    try:
        from geomix_cli.backends import torch_available
    except ImportError:
        return False
    return torch_available()


def default_methods(with_torch: bool | None) -> list[str]:
    from geomix_cli.core.solvers import EXACT_METHODS

    methods = list(EXACT_METHODS)
    if with_torch is None:
        with_torch = _torch_usable()
    if with_torch:
        methods.append(TORCH_METHOD)
    return methods


def compute_records(log_theta, log_t, errors, method: str, device: str = "cpu") -> list[dict]:
    """Rows as `diagnose(...).records()` for a numpy method or the torch backend (float64 on
    `device`)."""
    from geomix_cli.core import diagnose, solve_alpha

    if method == TORCH_METHOD:
        from geomix_cli.backends import solve_alpha_device

        sol = solve_alpha_device(log_theta, log_t, "newton", device=device,
                                 compute_dtype="float64", row_errors=errors)
        sol.method = "newton"  # an exact method: diagnostics report C for it
    else:
        sol = solve_alpha(log_theta, log_t, method, row_errors=errors)
    return diagnose(log_theta, log_t, sol).records()


def run_values(cases, methods: list[str], progress=None, device: str = "cpu", inputs=None):
    """Compare every case with every method. Returns (table rows, mismatches).

    inputs: `case_inputs(case)` per case, in order, when the caller read them already (so that a
    bad case is refused before any progress line is printed)."""
    from geomix_cli.cases import Mismatch, case_inputs, compare_records

    table, mismatches = [], []
    for n, case in enumerate(cases):
        if progress:
            progress(case.id, n, len(cases))
        log_theta, log_t, errors, fingerprint = (inputs[n] if inputs is not None
                                                 else case_inputs(case))
        if fingerprint != case.data["source_sha256"]:
            mismatches.append(Mismatch(case.id, "source", None, "source_sha256",
                                       case.data["source_sha256"], fingerprint,
                                       "the source changed: the expected values are stale; "
                                       "review, then regress --update --accept-source-change"))
        statuses = [row["status"] for row in case.expected]
        for method in methods:
            records = compute_records(log_theta, log_t, errors, method, device)
            found, max_dev = compare_records(case, records, method)
            mismatches.extend(found)
            table.append({"case": case.id, "method": method, "rows": len(records),
                          "vocab": int(log_theta.shape[1]), "statuses": _status_summary(statuses),
                          "max_dev": max_dev,
                          "tolerances": case.tolerances, "mismatches": len(found),
                          "ok": not found})
    return table, mismatches


def summarize(table) -> dict:
    """Per method: the largest deviation from the reference over all cases, per field."""
    out: dict[str, dict] = {}
    for row in table:
        agg = out.setdefault(row["method"], {f: 0.0 for f in row["max_dev"]})
        for f, v in row["max_dev"].items():
            agg[f] = max(agg[f], v)
    return out


def _status_summary(statuses: list[str]) -> str:
    from collections import Counter

    return " ".join(f"{s}" + (f"×{k}" if k > 1 else "") for s, k in Counter(statuses).items())


def run_suite_verdicts(suite: str, progress=None) -> dict[str, str]:
    """Verdicts of a fresh run of a verify suite (default settings: seed 0, not thorough)."""
    from geomix_cli.cases import verdict_map
    from geomix_cli.errors import UnavailableError

    try:
        from geomix_cli.checks import run_suite
    except ImportError:
        raise UnavailableError("the verdict regression needs geomix_cli.checks.run_suite (the "
                               "verify suites); pass --no-verdicts to check values only") from None
    callback = None
    if progress is not None:
        def callback(label, i, total):
            progress(f"{suite}: {label}", i - 1, total)  # the suite counts 0..total
    return verdict_map(run_suite(suite, thorough=False, seed=0, progress=callback))


def golden_verdicts(cases_dir: Path, suite: str) -> dict[str, str] | None:
    """The golden verdict file of a suite (None when there is none); a corrupt one is refused
    here, before the suite runs."""
    from geomix_cli.cases import load_verdicts, verdicts_path

    path = verdicts_path(cases_dir, suite)
    return load_verdicts(path) if os.path.lexists(path) else None


def run_verdicts(cases_dir: Path, suite: str, progress=None, golden=...):
    """(golden, fresh, mismatches) for one suite (golden: as `golden_verdicts` read it)."""
    from geomix_cli.cases import Mismatch, compare_verdicts, verdicts_path

    if golden is ...:
        golden = golden_verdicts(cases_dir, suite)
    path = verdicts_path(cases_dir, suite)
    fresh = run_suite_verdicts(suite, progress)
    if golden is None:
        return None, fresh, [Mismatch(f"verdicts/{suite}", "verify", None, "file", str(path),
                                      None, "no golden verdict file: write it on purpose with "
                                            "geomix regress --update")]
    return golden, fresh, compare_verdicts(golden, fresh, suite)


def _progress_printer(enabled: bool):
    if not enabled:
        return None
    import sys

    def show(label, i, total):
        sys.stderr.write(f"geomix regress: [{i + 1}/{total}] {label}\n")
        sys.stderr.flush()

    return show


def register(app: typer.Typer) -> None:
    from geomix_cli.cli import guarded

    @app.command("regress")
    @guarded
    def regress(
        cases_dir: Path = typer.Option(Path("cases"), "--cases",
                                       help="Folder of golden case files (default ./cases)."),
        update: bool = typer.Option(False, "--update",
                                    help="Rewrite expected values from the 50-digit reference "
                                         "(scripts/make_golden.py) and verdicts from a fresh run; "
                                         "prints what changed."),
        accept_source_change: bool = typer.Option(
            False, "--accept-source-change",
            help="With --update: also rewrite cases whose source (inline values, generator output "
                 "or data file) changed since their expected values were made."),
        verdicts: bool = typer.Option(True, "--verdicts/--no-verdicts",
                                      help="Include the verify_alpha_theory verdicts (a ~1 minute "
                                           "suite run)."),
        values: bool = typer.Option(True, "--values/--no-values",
                                    help="Include the golden values."),
        case_ids: Optional[List[str]] = typer.Option(None, "--case",
                                                     help="Only this case id (repeatable)."),
        methods: Optional[List[str]] = typer.Option(
            None, "--method", "-m",
            help=f"Only this method (repeatable): newton, halley, brentq, {TORCH_METHOD}. "
                 "Default: all exact methods, and torch (float64, cpu) when installed."),
        reference: Optional[Path] = typer.Option(
            None, "--reference", help="The reference script for --update (default: "
                                      "scripts/make_golden.py of this checkout)."),
        device: str = typer.Option("cpu", "--device",
                                   help=f"Device of the {TORCH_METHOD} method (cpu, cuda, cuda:N)."),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object to stdout."),
        wide: bool = typer.Option(False, "--wide", help="Every column, however wide the "
                                  "terminal."),
    ) -> None:
        """Recompute the golden cases with every exact method and compare (exit 4 on drift)."""
        from geomix_cli.errors import InputError

        if accept_source_change and not update:
            raise InputError("--accept-source-change only makes sense with --update")
        if not values and not verdicts:
            raise InputError("--no-values and --no-verdicts leave nothing to do")
        progress = _progress_printer(True)
        if update:
            _update(cases_dir, case_ids, values, verdicts, accept_source_change, reference,
                    json_out, progress)
            return
        known = default_methods(True) if methods else default_methods(None)
        chosen = list(methods) if methods else known
        for m in chosen:
            if m not in known:
                raise InputError(f"unknown or unavailable method '{m}'; choose from "
                                 f"{', '.join(known)}")
        if values and TORCH_METHOD in chosen:
            from geomix_cli.backends import resolve_device

            resolve_device(device)  # a bad or missing device is one line before any work
        from geomix_cli.cases import case_inputs, load_cases

        # Every input is read and checked before the first progress line: a bad case or verdict
        # file is refused with its one line and nothing else.
        cases, inputs, goldens = [], [], {}
        if values:
            cases = load_cases(cases_dir, case_ids)
            inputs = [case_inputs(case) for case in cases]
        if verdicts:
            goldens = {suite: golden_verdicts(cases_dir, suite) for suite in VERDICT_SUITES}
        table, mismatches, verdict_report = [], [], {}
        if values:
            table, found = run_values(cases, chosen, progress, device, inputs=inputs)
            mismatches.extend(found)
        if verdicts:
            for suite in VERDICT_SUITES:
                golden, fresh, found = run_verdicts(cases_dir, suite, progress, goldens[suite])
                mismatches.extend(found)
                verdict_report[suite] = {"golden": golden, "fresh": fresh,
                                         "changed": [m.to_json() for m in found]}
        if json_out:
            from geomix_cli.io import dumps_json

            typer.echo(dumps_json({"schema_version": 1, "cases_dir": str(cases_dir),
                                   "methods": chosen if values else [], "torch_device": device,
                                   "cases": table,
                                   "max_deviation_by_method": summarize(table),
                                   "verdicts": verdict_report, "ok": not mismatches,
                                   "mismatches": [m.to_json() for m in mismatches]}))
        else:
            _render(table, verdict_report, mismatches, wide=wide)
        if mismatches:
            import sys

            for m in mismatches:
                sys.stderr.write(f"geomix regress: MISMATCH {m.line()}\n")
            raise RegressionError(f"{len(mismatches)} golden mismatch(es); first: "
                                  f"{mismatches[0].line()}")


def _fmt(x) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.1e}"


def _render(table, verdict_report, mismatches, *, wide: bool = False) -> None:
    from rich.table import Table

    from geomix_cli.cli import stdout

    if table:
        from geomix_cli.commands._render import Column, print_rows

        def dev(i, *fields):
            return _fmt(max(table[i]["max_dev"][f] for f in fields))

        print_rows([
            Column("case", lambda i: table[i]["case"], justify="left"),
            Column("rows", lambda i: str(table[i]["rows"]), compact=False),
            Column("V", lambda i: str(table[i]["vocab"]), compact=False),
            Column("statuses", lambda i: table[i]["statuses"], justify="left", compact=False),
            Column("method", lambda i: table[i]["method"], justify="left"),
            Column("|Δα|", lambda i: dev(i, "alpha")),
            Column("tol α", lambda i: _fmt(table[i]["tolerances"]["alpha"]["abs"])),
            Column("|ΔC|", lambda i: dev(i, "chernoff"), compact=False),
            Column("|ΔKL|", lambda i: dev(i, "kl_q_theta", "kl_q_target"), compact=False),
            Column("ΔESS rel", lambda i: dev(i, "ess_theta", "ess_target"), compact=False),
            Column("|Δα_H|", lambda i: dev(i, "alpha_entropy"), compact=False),
            Column("result", lambda i: "ok" if table[i]["ok"]
                   else f"FAIL ({table[i]['mismatches']})", justify="left"),
        ], len(table), title="golden values vs the 50-digit reference (max deviation over rows; "
                             "ESS relative)", wide=wide, all_rows=True)
        summary = list(summarize(table).items())
        fields = ("alpha", "chernoff", "kl_q_theta", "kl_q_target", "ess_theta", "ess_target",
                  "alpha_entropy")
        headers = ("|Δα|", "|ΔC|", "|ΔKL(q‖πθ)|", "|ΔKL(q‖πt)|", "ΔESS_θ rel", "ΔESS_t rel",
                   "|Δα_H|")
        print_rows([Column("method", lambda i: summary[i][0], justify="left")]
                   + [Column(h, (lambda f: lambda i: _fmt(summary[i][1][f]))(f),
                             compact=f in ("alpha", "chernoff", "ess_theta"))
                      for h, f in zip(headers, fields)],
                   len(summary), title="largest deviation per method over all cases (ESS "
                   "relative)", wide=wide, all_rows=True, note_hidden=False)
    for suite, rep in verdict_report.items():
        golden = rep["golden"] or {}
        t = Table(title=f"verdicts of {suite} vs cases/verdicts/{suite}.json",
                  title_justify="left")
        for header in ("claim", "golden", "now", "result"):
            t.add_column(header)
        for claim in sorted(set(golden) | set(rep["fresh"])):
            g, f = golden.get(claim), rep["fresh"].get(claim)
            t.add_row(claim, g or "—", f or "—", "ok" if g == f else "CHANGED")
        stdout.print(t)
    if mismatches:
        stdout.print(f"regress: {len(mismatches)} mismatch(es), each listed on stderr",
                     highlight=False)
    else:
        stdout.print("regress: everything matches the golden values"
                     + (" and verdicts" if verdict_report else ""), highlight=False)


def _update(cases_dir: Path, case_ids, values: bool, verdicts: bool, accept_source_change: bool,
            reference, json_out: bool, progress) -> None:
    """Rewrite golden files from the reference / a fresh suite run; print the diff."""
    from geomix_cli.cases import (case_raw_pair, case_to_text, diff_cases, diff_verdicts,
                                  load_cases, load_reference, source_fingerprint,
                                  verdicts_path)
    from geomix_cli.errors import InputError
    from geomix_cli.io import dumps_json, write_text_atomic

    changes: list[str] = []
    written: list[str] = []
    # the current verdict files are read (and a corrupt one refused) before anything runs
    old_verdicts = {suite: golden_verdicts(cases_dir, suite) or {} for suite in VERDICT_SUITES
                    } if verdicts else {}
    if values:
        cases = load_cases(cases_dir, case_ids, for_update=True)
        changed_sources = []
        for case in cases:
            fingerprint = source_fingerprint(case_raw_pair(case))
            stored = case.data.get("source_sha256")  # absent: a new case, nothing to protect
            if stored is not None and fingerprint != stored:
                changed_sources.append(f"{case.id} ({case.path})")
        if changed_sources and not accept_source_change:
            raise InputError("the source changed since the expected values were made for: "
                             + ", ".join(changed_sources) + "; nothing was written. Review the "
                             "change, then rerun with --update --accept-source-change")
        ref = load_reference(reference)
        for n, case in enumerate(cases):
            if progress:
                progress(f"reference for {case.id}", n, len(cases))
            new = ref.reference_for_case(case.data, case.cases_dir)
            new.pop("_seconds", None)
            lines = diff_cases(case.data, new)
            text = case_to_text(new)
            if "expected" not in case.data:
                lines = [f"{case.id}: new case, {len(new['expected'])} expected row(s) from the "
                         "reference"] + [f"{case.id} row {r['row']}: " + ", ".join(
                             f"{k}={v}" for k, v in r.items() if k != "row")
                         for r in new["expected"]]
            if text != _current(case):
                write_text_atomic(case.path, text)
                written.append(str(case.path))
            changes.extend(lines)
    if verdicts:
        from geomix_cli.commands.regress import run_suite_verdicts

        for suite in VERDICT_SUITES:
            path = verdicts_path(cases_dir, suite)
            old = old_verdicts[suite]
            fresh = run_suite_verdicts(suite, progress)
            lines = diff_verdicts(old, fresh, suite)
            if lines or not os.path.lexists(path):
                write_text_atomic(path, dumps_json(dict(sorted(fresh.items()))) + "\n")
                written.append(str(path))
            changes.extend(lines)
    if json_out:
        typer.echo(dumps_json({"schema_version": 1, "updated": True, "changes": changes,
                               "written": written}))
        return
    from geomix_cli.cli import stdout

    if changes:
        stdout.print("changes written by --update:", highlight=False)
        for line in changes:
            stdout.print("  " + line, highlight=False, markup=False)
    else:
        stdout.print("--update: no golden value or verdict changed", highlight=False)
    for path in written:
        stdout.print(f"wrote {path}", highlight=False, markup=False)


def _current(case) -> str:
    from geomix_cli.cases import case_to_text

    return case_to_text(case.data)
