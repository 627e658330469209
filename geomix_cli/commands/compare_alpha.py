"""`geomix compare-alpha [SOURCES...]`: the alpha of every principle, side by side."""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import typer

from geomix_cli.commands import _device, _sharded, _shared

RECORD_FIELDS = ("case", "row", "principle", "status", "alpha", "kl_q_theta", "kl_q_target",
                 "kl_gap", "chernoff", "ess_theta", "ess_target", "min_ess",
                 "four_case_fraction", "solve_time_ms_per_row", "message")


def parse_principles(text: Optional[List[str]]) -> list[str]:
    from geomix_cli.core.principles import PRINCIPLES
    from geomix_cli.errors import InputError

    if not text:
        return list(PRINCIPLES)
    names = [p.strip() for item in text for p in item.split(",") if p.strip()]
    unknown = [p for p in names if p not in PRINCIPLES]
    if unknown:
        raise InputError(f"unknown principle '{unknown[0]}'; choose from {', '.join(PRINCIPLES)}")
    return list(dict.fromkeys(names))


def compare_case(name: str, log_pi_theta, log_pi_t, row_labels, row_errors, principles,
                 *, threshold=None, kl_solver=None) -> list[dict]:
    """Records (one per row and principle) for one case; invalid rows keep status 'invalid'.

    kl_solver: optional (log_pi_theta, log_pi_t) -> AlphaSolution used for kl-symmetry instead of
    the numpy Newton solve (the torch backend under --device)."""
    import time

    from geomix_cli.core.principles import (PrincipleSolution, principle_metrics,
                                            solve_principle)

    valid = np.array([e is None for e in row_errors], dtype=bool)
    records = []
    for principle in principles:
        if valid.any():
            start = time.perf_counter()
            if principle == "kl-symmetry" and kl_solver is not None:
                raw = kl_solver(log_pi_theta[valid], log_pi_t[valid])
                sol = PrincipleSolution(principle, raw.alpha, raw.status, raw.message,
                                        raw.residual, raw.evaluations)
            else:
                sol = solve_principle(log_pi_theta[valid], log_pi_t[valid], principle)
            elapsed = time.perf_counter() - start
            metrics = principle_metrics(log_pi_theta[valid], log_pi_t[valid], sol,
                                        threshold=threshold)
            per_row_ms = 1e3 * elapsed / int(valid.sum())
        j = 0
        for i in range(len(row_errors)):
            rec = {"case": name, "row": int(row_labels[i]), "principle": principle}
            if not valid[i]:
                rec.update({k: float("nan") for k in RECORD_FIELDS if k not in rec})
                rec.update(status="invalid", message=row_errors[i])
                records.append(rec)
                continue
            rec.update(status=str(sol.status[j]), alpha=float(sol.alpha[j]),
                       **{k: float(v[j]) for k, v in metrics.items()},
                       solve_time_ms_per_row=per_row_ms, message=sol.message[j])
            records.append({k: rec.get(k) for k in RECORD_FIELDS})
            j += 1
    return records


def summarise(records: list[dict]) -> list[dict]:
    """Per case and principle: rows with an alpha, medians of the main columns."""
    out = []
    keys = list(dict.fromkeys((r["case"], r["principle"]) for r in records))
    for case, principle in keys:
        rows = [r for r in records if r["case"] == case and r["principle"] == principle]

        def med(field):
            vals = np.array([r[field] for r in rows], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            return float(np.median(vals)) if vals.size else float("nan")

        out.append({"case": case, "principle": principle, "rows": len(rows),
                    "with_alpha": sum(np.isfinite(r["alpha"]) for r in rows),
                    "median_alpha": med("alpha"), "median_kl_gap": med("kl_gap"),
                    "median_min_ess": med("min_ess"),
                    "median_ess_ratio": _median_ratio(rows),
                    "median_four_case_fraction": med("four_case_fraction"),
                    "median_ms_per_row": med("solve_time_ms_per_row")})
    return out


def _median_ratio(rows) -> float:
    vals = []
    for r in rows:
        a, b = r["ess_theta"], r["ess_target"]
        if a is not None and b is not None and np.isfinite(a) and np.isfinite(b) and min(a, b) > 0:
            vals.append(max(a, b) / min(a, b))
    return float(np.median(vals)) if vals else float("nan")


def max_min_vs_balance(records: list[dict]) -> dict | None:
    """|alpha(max-min-ess) - alpha(ess-balance)| over the rows where both exist."""
    by = {}
    for r in records:
        if r["principle"] in ("max-min-ess", "ess-balance") and np.isfinite(r["alpha"]):
            by.setdefault((r["case"], r["row"]), {})[r["principle"]] = r["alpha"]
    diffs = [abs(v["max-min-ess"] - v["ess-balance"]) for v in by.values() if len(v) == 2]
    if not diffs:
        return None
    return {"rows": len(diffs), "max_abs_difference": float(max(diffs)),
            "median_abs_difference": float(np.median(diffs)),
            "equal_within_1e-6": bool(max(diffs) <= 1e-6)}


def register(app: typer.Typer) -> None:
    from geomix_cli.cli import guarded

    @app.command("compare-alpha")
    @guarded
    def compare_alpha(
        sources: Optional[List[str]] = typer.Argument(
            None, help="Pair files or generator specs; none: the built-in cases (Tests 1-2, "
                       "synthetic families, real SmolLM2 rows)."),
        principles: Optional[List[str]] = typer.Option(
            None, "--principles", "-p", help="Comma-separated (or repeated): kl-symmetry, "
            "entropy, bisection, half, ess-balance, max-min-ess (default: all)."),
        out: Optional[str] = typer.Option(None, "--out", "-o", help="Write report.md, CSV and "
                                          "figures into this folder."),
        json_out: bool = _shared.JsonOption,
        rows: Optional[str] = _shared.RowsOption,
        threshold: Optional[float] = typer.Option(
            None, "--threshold", help="Four cases: 'large' means >= this (default 1/V)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the built-in synthetic cases."),
        renormalize: bool = _shared.RenormalizeOption,
        logits: bool = _shared.LogitsOption,
        probs: bool = _shared.ProbsOption,
        device: Optional[str] = _device.DeviceOption,
        dtype: str = _device.ComputeDtypeOption,
        max_memory: Optional[str] = _device.MaxMemoryOption,
        resume: bool = _sharded.ResumeOption,
        scheduler: Optional[str] = _sharded.SchedulerOption,
        workers: Optional[int] = _sharded.WorkersOption,
        retries: int = _sharded.RetriesOption,
    ) -> None:
        """Compare the alpha principles side by side, per row.

        Principles: KL symmetry, entropy formula, reference bisection, 1/2, ESS balance, max-min
        ESS. Per row: alpha, both KLs, C, both ESS, four-case satisfaction, solve time."""
        from geomix_cli.errors import EXIT_OK, InputError

        names = parse_principles(principles)
        kl_solver = None
        if device is not None:
            kl_solver = _device.suite_solver(device=device, dtype=dtype,
                                             max_memory=max_memory)["device_solver"]
        if threshold is not None and not (0.0 < threshold < 1.0):
            raise InputError(f"--threshold must lie in (0, 1), got {threshold}")
        if sources and any(_sharded.wanted(s, scheduler=scheduler, resume=resume)
                           for s in sources):
            if len(sources) != 1:
                raise InputError("a folder / glob source (or --scheduler, --resume) is compared "
                                 "on its own: give one SOURCE")
            raise typer.Exit(_sharded.compare(
                sources[0], principles=names, threshold=threshold, out=out, resume=resume,
                scheduler=scheduler, workers=workers, max_memory=max_memory, retries=retries,
                json_out=json_out, renormalize=renormalize, logits=logits, probs=probs,
                rows=rows, device=device))
        records: list[dict] = []
        exit_code = EXIT_OK
        if sources:
            loaded = []
            for source in sources:
                pairs = _shared.load(source, rows=rows, renormalize=renormalize, logits=logits,
                                     probs=probs)
                _shared.refuse_if_nothing_usable(pairs, source)
                loaded.append((source, pairs))
                exit_code = max(exit_code, _shared.exit_code_for(pairs))
            for source, pairs in loaded:
                records += compare_case(source, pairs.log_pi_theta, pairs.log_pi_t,
                                        pairs.row_labels, pairs.row_errors, names,
                                        threshold=threshold, kl_solver=kl_solver)
        else:
            if rows is not None:
                raise InputError("--rows needs a source")
            from geomix_cli.checks import compare_families

            for fam in compare_families(seed):
                records += compare_case(fam.name, fam.log_pi_theta, fam.log_pi_t,
                                        np.arange(fam.n_rows), [None] * fam.n_rows, names,
                                        threshold=threshold, kl_solver=kl_solver)
        summary = summarise(records)
        mm = max_min_vs_balance(records)
        deterministic = [{k: v for k, v in r.items()} for r in records]
        if out:
            from geomix_cli.reports import write_compare_report

            write_compare_report(deterministic, summary, mm, out, principles=names)
        if json_out:
            from geomix_cli.io import dumps_json

            typer.echo(dumps_json({"schema_version": 1, "principles": names,
                                   "threshold": threshold, "results": records,
                                   "summary": summary, "max_min_ess_vs_ess_balance": mm,
                                   "report_dir": out}))
        else:
            _render(summary, mm, out)
        raise typer.Exit(exit_code)


def _fmt(v, digits=4):
    if v is None or not np.isfinite(v):
        return "—"
    return f"{v:.{digits}g}"


def _render(summary, mm, out) -> None:
    from rich.table import Table

    from geomix_cli.cli import stdout

    for case in dict.fromkeys(s["case"] for s in summary):
        table = Table(title=f"{case}: medians over rows", title_justify="left")
        for h in ("principle", "rows", "α (median)", "|KL gap|", "min ESS", "ESS max/min",
                  "4-case ok", "ms/row"):
            table.add_column(h, justify="left" if h == "principle" else "right")
        for s in summary:
            if s["case"] != case:
                continue
            table.add_row(s["principle"], f"{s['with_alpha']}/{s['rows']}",
                          _fmt(s["median_alpha"], 6), _fmt(s["median_kl_gap"], 3),
                          _fmt(s["median_min_ess"]), _fmt(s["median_ess_ratio"]),
                          _fmt(s["median_four_case_fraction"], 3),
                          _fmt(s["median_ms_per_row"], 3))
        stdout.print(table)
    if mm is not None:
        stdout.print(f"max-min-ess vs ess-balance: max |Δα| = {mm['max_abs_difference']:.2g} over "
                     f"{mm['rows']} rows ({'equal' if mm['equal_within_1e-6'] else 'NOT equal'} "
                     f"within 1e-6)", highlight=False)
    if out:
        stdout.print(f"report: {out}/report.md", highlight=False)
