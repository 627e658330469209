"""`geomix compare-alpha [SOURCES...]`: the alpha of every principle, side by side."""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import typer

from geomix_cli.commands import _device, _render, _sharded, _shared

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


# ----------------------------------------------------------------------------------------------
# The verdict: which principle for which goal, measured on the rows compared

from geomix_cli.core.principles import ESS_BAND  # noqa: E402  (the derivation's "within 10%")

# goal -> (question, metric, the principle designed for it, tie tolerance on the median)
GOALS = {
    "equal-kls": ("equal KLs: KL(q||pi_theta) = KL(q||pi_t), the derivation's criterion",
                  "|KL(q||pi_theta) - KL(q||pi_t)| in nats", "kl-symmetry", 1e-12),
    "balanced-ess": ("balanced ESS: ESS_theta(q) = ESS_t(q), equal precision for estimates under "
                     "both policies", "max/min of ESS_theta(q), ESS_t(q) (1 = balanced)",
                     "ess-balance", 1e-6),
    "max-min-ess": ("max-min ESS: the largest min(ESS_theta(q), ESS_t(q)), the worse estimate "
                    "as good as possible", "loss: 1 - min ESS / the row's best min ESS over "
                    "the principles compared", "max-min-ess", 1e-6),
    "cost": ("cost: solve time per row", "milliseconds per row (this run, this machine)",
             None, 0.0),
}


def _goal_values(records: list[dict], goal: str) -> dict:
    """principle -> list of (value, record) on the rows where the principle gave an alpha."""
    by_row: dict = {}
    for r in records:
        by_row.setdefault((r["case"], r["row"]), {})[r["principle"]] = r
    out: dict = {}
    for recs in by_row.values():
        best_min = max((r["min_ess"] for r in recs.values()
                        if r["min_ess"] is not None and np.isfinite(r["min_ess"])), default=np.nan)
        for principle, r in recs.items():
            out.setdefault(principle, [])
            if r["alpha"] is None or not np.isfinite(r["alpha"]):
                continue
            if goal == "equal-kls":
                value = r["kl_gap"]
            elif goal == "balanced-ess":
                a, b = r["ess_theta"], r["ess_target"]
                value = max(a, b) / min(a, b) if min(a, b) > 0 else np.inf
            elif goal == "max-min-ess":
                value = max(0.0, 1.0 - r["min_ess"] / best_min) if best_min > 0 else np.nan
            else:
                value = r["solve_time_ms_per_row"]
            if value is not None and not np.isnan(value):
                out[principle].append((float(value), r))
    return out


def _principle_stats(goal: str, principle: str, vals: list, n_records: int) -> dict:
    entry = {"principle": principle, "rows": len(vals), "rows_without_alpha": n_records - len(vals)}
    if not vals:
        return entry
    arr = np.array([v for v, _ in vals])
    worst = int(np.argmax(arr))
    entry.update(median=float(np.median(arr)), worst=float(arr[worst]),
                 worst_case=vals[worst][1]["case"], worst_row=int(vals[worst][1]["row"]))
    if goal == "balanced-ess":
        entry["fraction_within_10pct"] = float(np.mean(arr <= 1 + ESS_BAND))
    if goal == "equal-kls":
        rel = [v / r["chernoff"] for v, r in vals
               if r["chernoff"] is not None and np.isfinite(r["chernoff"]) and r["chernoff"] > 0]
        entry["median_relative_to_chernoff"] = float(np.median(rel)) if rel else float("nan")
    return entry


def verdict(records: list[dict], principles: list[str]) -> dict:
    """For each goal (GOALS): the principle(s) that do best on these rows, and what each other
    principle loses (median over rows and the worst row), with a sentence per goal and a
    recommendation. Measured, not assumed: a principle wins a goal only by its numbers here
    (medians within the goal's tie tolerance count as equal)."""
    rows_total = len({(r["case"], r["row"]) for r in records})
    n_records = {p: sum(1 for r in records if r["principle"] == p) for p in principles}
    goals = []
    for goal, (question, metric, designed, tie) in GOALS.items():
        values = _goal_values(records, goal)
        stats = [_principle_stats(goal, p, values.get(p, []), n_records[p]) for p in principles]
        ranked = sorted((e for e in stats if "median" in e), key=lambda e: e["median"])
        best = []
        if ranked:
            low = ranked[0]["median"]
            best = [e["principle"] for e in ranked if e["median"] - low <= tie]
            if designed in best:  # name the principle made for the goal first
                best.remove(designed)
                best.insert(0, designed)
        answer, others, short = _goal_text(goal, best, stats)
        goals.append({"goal": goal, "question": question, "metric": metric, "best": best,
                      "answer": answer, "others": others, "others_short": short,
                      "text": f"{answer}; {others}" if others else answer,
                      "per_principle": stats})
    return {"rows": rows_total, "cases": list(dict.fromkeys(r["case"] for r in records)),
            "goals": goals, "recommendation": _recommendation(goals)}


def _g(x, digits=2) -> str:
    if x is None or np.isnan(x):
        return "n/a"
    return f"{x:.{digits}g}" if np.isfinite(x) else "inf"


def _pct(x) -> str:
    if x is None or np.isnan(x):
        return "n/a"
    return "<0.01%" if 100 * x < 0.01 else f"{100 * x:.3g}%"


def _goal_text(goal: str, best: list[str], stats: list[dict]) -> tuple[str, str, str]:
    """(the answer: 'kl-symmetry: |KL gap| 8.3e-17 nats (median)', what the others lose, the
    same in short for the terminal: 'median (worst): bisection 1.2e-06 (0.0051), ...')."""
    if not best:
        return "no principle gave an alpha on these rows", "", ""
    by = {e["principle"]: e for e in stats}
    lead = by[best[0]]
    name = best[0] + (f" (= {', '.join(best[1:])})" if len(best) > 1 else "")
    others = sorted((e for e in stats if e["principle"] not in best and "median" in e),
                    key=lambda e: e["median"])
    missing = [e["principle"] for e in stats if "median" not in e]
    if goal == "equal-kls":
        answer = f"{name}: |KL gap| {_g(lead['median'])} nats (median)"
        parts = [f"{e['principle']} {_g(e['median'])} nats"
                 + (f" ({_pct(e['median_relative_to_chernoff'])} of C)"
                    if np.isfinite(e.get("median_relative_to_chernoff", np.nan)) else "")
                 + f", worst {_g(e['worst'])}" for e in others]
        verb = "others leave a median |KL gap| of"
        short = [f"{e['principle']} {_g(e['median'])} ({_g(e['worst'])})" for e in others]
        short_head = "|KL gap| in nats, median (worst)"
    elif goal == "balanced-ess":
        answer = f"{name}: ESS max/min {_g(lead['median'], 4)} (median)"
        parts = [f"{e['principle']} {_g(e['median'], 3)} (within 10% on "
                 f"{e['fraction_within_10pct']:.0%} of rows), worst {_g(e['worst'], 3)}"
                 for e in others]
        verb = "others leave the two ESS apart by a median factor"
        short = [f"{e['principle']} {_g(e['median'], 3)} ({_g(e['worst'])})" for e in others]
        short_head = "ESS max/min, median (worst)"
    elif goal == "max-min-ess":
        answer = f"{name}: {_pct(lead['median'])} below the best min ESS (median)"
        parts = [f"{e['principle']} {_pct(e['median'])}, worst {_pct(e['worst'])}"
                 for e in others]
        verb = "others' min ESS is below the row's best by a median"
        short = [f"{e['principle']} {_pct(e['median'])} ({_pct(e['worst'])})" for e in others]
        short_head = "min ESS below the row's best, median (worst)"
    else:
        answer = f"{name}: {_g(lead['median'])} ms/row"
        parts = [f"{e['principle']} {_g(e['median'])} ms/row "
                 f"({_g(e['median'] / lead['median'] if lead['median'] > 0 else np.inf)}x)"
                 for e in others]
        verb = "others take"
        short = [f"{e['principle']} "
                 f"{_g(e['median'] / lead['median'] if lead['median'] > 0 else np.inf)}x"
                 for e in others]
        short_head = "time per row relative to it"
    text = f"{verb}: " + "; ".join(parts) if parts else ""
    short_text = f"{short_head}: " + ", ".join(short) if short else ""
    if missing:
        text += f" ({', '.join(missing)}: no alpha on any row)"
        short_text += f" ({', '.join(missing)}: no alpha)"
    return answer, text, short_text


def _recommendation(goals: list[dict]) -> str:
    """One sentence a reader can act on, from the measured goals."""
    by = {g["goal"]: g for g in goals}
    kl, ess, cost = by["equal-kls"], by["balanced-ess"], by["cost"]
    if not kl["best"] or not ess["best"]:
        return "Not enough rows with an alpha to recommend a principle."
    kl_best, ess_best = kl["best"][0], ess["best"][0]
    ms = {e["principle"]: e.get("median") for e in cost["per_principle"]}
    kl_on_ess = next(e for e in ess["per_principle"] if e["principle"] == kl_best)
    text = (f"For the derivation's criterion (equal KLs) use {kl_best} ({_g(ms.get(kl_best))} "
            f"ms/row).")
    if kl_best in ess["best"]:
        return text + f" It also balances the two ESS on these rows."
    text += (f" If what matters is estimating under both policies with equal precision, use "
             f"{ess_best} ({_g(ms.get(ess_best))} ms/row)")
    if "median" in kl_on_ess:
        text += (f": here {kl_best} leaves the two ESS a median factor "
                 f"{_g(kl_on_ess['median'], 3)} apart (worst {_g(kl_on_ess['worst'], 3)}, "
                 f"{kl_on_ess['worst_case']} row {kl_on_ess['worst_row']})")
    return text + "."


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
        out: Optional[str] = _shared.report_option("Write report.md, CSV and figures into this "
                                                   "folder."),
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
        wide: bool = _render.WideOption,
        resume: bool = _sharded.ResumeOption,
        scheduler: Optional[str] = _sharded.SchedulerOption,
        workers: Optional[int] = _sharded.WorkersOption,
        retries: int = _sharded.RetriesOption,
    ) -> None:
        """Which alpha to use for which goal, measured on your pairs.

        Opens with a verdict: for each goal (equal KLs, balanced ESS, max-min ESS, cost) the
        principle that does best on these rows and what each other principle loses (median
        over rows, worst row); then medians per case and principle. Principles: KL symmetry,
        entropy formula, reference bisection, 1/2, ESS balance, max-min ESS. --json: the
        verdict and every row (alpha, both KLs, C, both ESS, four-case satisfaction, time)."""
        from geomix_cli.errors import EXIT_OK, InputError

        names = parse_principles(principles)
        _shared.check_seed(seed)
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
        if sources:
            _shared.report_dir(out, command="compare-alpha", sources=sources)
        else:
            from geomix_cli.cases import real_sample_path

            _shared.report_dir(out, command="compare-alpha", sources=[real_sample_path()])
        kl_solver = None
        if device is not None:
            kl_solver = _device.suite_solver(device=device, dtype=dtype,
                                             max_memory=max_memory)["device_solver"]
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
        answer = verdict(records, names)
        if out:
            from geomix_cli.reports import write_compare_report

            write_compare_report(records, summary, mm, out, principles=names, verdict=answer)
        if json_out:
            import sys

            from geomix_cli.io import write_json_document

            write_json_document(sys.stdout, {"schema_version": 1, "principles": names,
                                             "threshold": threshold, "verdict": answer},
                                records, rows_key="results",
                                tail={"summary": summary, "max_min_ess_vs_ess_balance": mm,
                                      "report_dir": out})
        else:
            render_human(answer, summary, mm, out, wide=wide)
        raise typer.Exit(exit_code)


GOAL_LABELS = {"equal-kls": "equal KLs", "balanced-ess": "balanced ESS",
               "max-min-ess": "max-min ESS", "cost": "cost"}


def render_human(answer: dict, summary: list[dict], mm, out, *, wide: bool = False) -> None:
    """The verdict first (goal, principle to use, what the others lose), then the medians per
    case and principle (compact columns when the terminal is narrow; --wide for all)."""
    from rich.markup import escape
    from rich.table import Table

    from geomix_cli.cli import stdout

    n_cases = len(answer["cases"])
    stdout.print(f"[bold]Verdict[/bold] on {_render.fmt_count(answer['rows'])} rows in "
                 f"{n_cases} case{'s' if n_cases != 1 else ''} (median over rows; worst row):",
                 highlight=False)
    grid = Table(box=None, padding=(0, 1), show_header=True, header_style="bold",
                 show_edge=False, expand=True)
    grid.add_column("goal", no_wrap=True, style="bold")
    grid.add_column("use", overflow="fold", ratio=2)
    grid.add_column("the others", overflow="fold", ratio=3)
    for g in answer["goals"]:
        grid.add_row(GOAL_LABELS.get(g["goal"], g["goal"]), escape(g["answer"]),
                     escape(g["others_short"]))
    stdout.print(grid)
    stdout.print(answer["recommendation"], highlight=False, markup=False, soft_wrap=False)
    stdout.print("")
    cases = list(dict.fromkeys(s["case"] for s in summary))
    for case in cases:
        rows = [s for s in summary if s["case"] == case]
        cols = [
            _render.Column("principle", lambda i: rows[i]["principle"], justify="left"),
            _render.Column("rows", lambda i: f"{rows[i]['with_alpha']}/{rows[i]['rows']}"),
            _render.Column("α", lambda i: _render.fmt_alpha(rows[i]["median_alpha"])),
            _render.Column("|KL gap|", lambda i: _render.fmt_num(rows[i]["median_kl_gap"], 3)),
            _render.Column("min ESS", lambda i: _render.fmt_num(rows[i]["median_min_ess"])),
            _render.Column("ESS max/min", lambda i: _render.fmt_num(rows[i]["median_ess_ratio"])),
            _render.Column("4-case ok", lambda i: _render.fmt_num(
                rows[i]["median_four_case_fraction"], 3), compact=False),
            _render.Column("ms/row", lambda i: _render.fmt_num(rows[i]["median_ms_per_row"], 3),
                           compact=False),
        ]
        _render.print_rows(cols, len(rows), title=f"{case}: medians over rows", wide=wide,
                           all_rows=True, note_hidden=case == cases[-1])
    if mm is not None:
        stdout.print(f"max-min-ess vs ess-balance: max |Δα| = {mm['max_abs_difference']:.2g} over "
                     f"{mm['rows']} rows ({'equal' if mm['equal_within_1e-6'] else 'NOT equal'} "
                     f"within 1e-6)", highlight=False)
    if out:
        stdout.print(f"report: {out}/report.md", highlight=False, markup=False)
