"""Rendering of computed results into report folders: markdown, CSV tables, figures, JSON.

No mathematics here: every number comes from a result object (checks.SuiteResult, the
compare-alpha and check records). Files are written through io (atomically; a report folder is
built aside and swapped in only when complete), figures through plots.
"""

from __future__ import annotations

import math
from pathlib import Path

VERDICT_BADGE = {"holds": "HOLDS", "refuted": "REFUTED", "depends": "DEPENDS",
                 "untested": "UNTESTED"}


# ----------------------------------------------------------------------------------------------
# markdown helpers


def fmt_value(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "—" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return f"{value:.{digits}g}"
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return fmt_value(value.item(), digits)
    except ImportError:  # pragma: no cover
        pass
    return str(value).replace("|", "\\|")


def markdown_table(rows: list[dict], columns: list[str] | None = None, *, max_rows: int = 40,
                   digits: int = 4) -> str:
    """A GitHub markdown table of `rows` (dicts); the first `max_rows` rows, with a note."""
    if not rows:
        return "_(no rows)_\n"
    columns = columns or list(rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows[:max_rows]:
        lines.append("| " + " | ".join(fmt_value(row.get(c), digits) for c in columns) + " |")
    if len(rows) > max_rows:
        lines.append(f"\n_({len(rows) - max_rows} more rows in the CSV)_")
    return "\n".join(lines) + "\n"


def _frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    from geomix_cli.io.writers import figure_bytes, write_bytes_atomic

    try:
        write_bytes_atomic(path, figure_bytes(fig, Path(path).suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------------------------
# verify suites

# claim figure key -> (file name, caption)
SUITE_FIGURES = {
    "pareto": ("pareto_front.png", "The exact Pareto front of one of the pairs, with q*, the "
               "entropy-formula point, alpha = 0.5 and a cloud of other distributions"),
    "delta_curve": ("delta_iterates.png", "D(alpha) on a real row with the iterates of Newton "
                    "and of the reference bisection"),
    "alpha_sweep": ("test2_alpha_sweep.png", "alpha* over V and eps for a near point mass "
                    "against the uniform distribution"),
    "ess_scatter": ("test3_ess_scatter.png", "ESS_theta(q*) against ESS_t(q*) with the 10% band"),
    "entropy_error_hist": ("entropy_formula_error.png", "alpha_entropy - alpha* per family"),
    "four_cases": ("four_cases.png", "The four behaviour cases: tokens, q* mass, fraction "
                   "meeting the expectation"),
    "efficiency": ("sample_efficiency.png", "Reverse KL (the RL objective): speed-up of q* over "
                   "on-policy per target, for each case and estimator, with 95% CIs; the band "
                   "is the claimed 2-5x"),
    "sequence_balance": ("sequence_ess_balance.png", "Sequence-level ESS balance under q* "
                         "sampling: ESS_θ / ESS_t against the prefix length per prompt (bars: "
                         "the bootstrap interval at the full length), and how many prompts the "
                         "bootstrap decides within / outside the 10% band at each length"),
}
DERIVATION_DOC = "../../docs/derivation.md"


def figure_data(obj):
    """The figure payload with every float rounded to 27 mantissa bits (~8 significant digits),
    recursively through dicts, lists and dataclasses: the computed values differ between CPUs in
    their last bits, and a point on a pixel boundary would then change the PNG; at 27 bits the
    drawn values are the same on every machine (unless one sits within ~1e-16 of a rounding
    boundary)."""
    import dataclasses

    import numpy as np

    if isinstance(obj, np.ndarray) and obj.dtype.kind == "f":
        with np.errstate(invalid="ignore", over="ignore"):
            mant, expo = np.frexp(obj)
            out = np.ldexp(np.round(mant * 2.0**27) / 2.0**27, expo)
        return np.where(np.isfinite(obj), out, obj)
    if isinstance(obj, float) and math.isfinite(obj):
        return float(figure_data(np.array([obj]))[0])
    if isinstance(obj, dict):
        return {k: figure_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not isinstance(obj, str):
        return type(obj)(figure_data(v) for v in obj) if isinstance(obj, list) else tuple(
            figure_data(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: figure_data(getattr(obj, f.name))
                                           for f in dataclasses.fields(obj) if f.init})
    return obj


def _suite_figure(key: str, payload):
    """Build the matplotlib figure for a claim's figure payload (None if unknown)."""
    from geomix_cli import plots, plots_diagnostics

    if key != "efficiency":
        payload = figure_data(payload)

    if key == "pareto":
        return plots.figure_pareto_front(payload["front"], title=payload.get("title"))
    if key == "delta_curve":
        return plots.figure_delta_with_iterates(
            payload["curve"], title=f"D(α) and the solvers' iterates ({payload['family']} row "
                                    f"{payload['row']})")
    if key == "alpha_sweep":
        rep = payload.get("reported")
        return plots.figure_alpha_sweep(payload["vocab_sizes"], payload["eps_values"],
                                        payload["alpha_star"],
                                        reported=(rep, f"α* = {rep} (the derivation's Test 2)")
                                        if rep is not None else None)
    if key == "ess_scatter":
        return plots_diagnostics.figure_ess_scatter(
            payload["ess_theta"], payload["ess_target"],
            payload["families"])
    if key == "entropy_error_hist":
        return plots_diagnostics.figure_entropy_error_hist(payload)
    if key == "four_cases":
        return plots_diagnostics.figure_four_cases(
            payload["case_labels"], payload["counts"],
            payload["mass_q"], payload["fraction_meeting"])
    if key == "efficiency":
        from geomix_cli.plots_simulate import efficiency_figure

        return efficiency_figure(payload["study"])
    if key == "sequence_balance":
        from geomix_cli.plots_sample import sequence_balance_figure

        return sequence_balance_figure(payload["main"], payload.get("control"))
    return None


def _legend(result) -> list[str]:
    from geomix_cli.checks.rule import CLAUSES

    out = ["## How to read the verdicts\n",
           "One rule decides every verdict; each section names the clause that applied.\n",
           markdown_table([{"clause": k, "verdict": f"**{VERDICT_BADGE[v]}**", "meaning": m}
                           for k, (v, m) in CLAUSES.items()], max_rows=20),
           "\nEvery section also shows its **controls**: planted data run through the same "
           "check, a wrong answer it must reject (so 'holds' never rests on a check that cannot "
           "fail) and, for a refuted claim, data on which the claim is true, which it must pass "
           "(so 'refuted' never rests on a check that cannot pass). A **repaired claim** is "
           "checked on data it was not read from "
           "(held-out pairs, fresh seeds, or every token).\n",
           "The numeric thresholds of each claim's rule:\n",
           markdown_table([{"claim": f"[`{c.id}`](#{c.id})", "thresholds": c.criteria or "—"}
                           for c in result.claims], max_rows=100)]
    return out


def _reproducibility(result) -> str:
    """The sentence on what rerunning reproduces: everything, byte for byte, unless optional
    claims ran (`--with`): model sampling on CPU is not bit-reproducible across CPUs."""
    if not result.extras:
        return ("Rerunning the command reproduces this folder byte for byte (a test regenerates "
                "it and compares): ")
    from geomix_cli.checks import OPTIONAL_CLAIMS

    ran = [cid for cid, claim in OPTIONAL_CLAIMS.items() if claim.extra in result.extras]
    return (f"The claims that need the {', '.join(result.extras)} extra "
            f"({', '.join(ran) or 'none'}) are the exception to byte-for-byte "
            f"reproducibility: they sample from a language model, which on CPU is not "
            f"bit-reproducible across CPUs (the same machine and settings give the same samples), "
            f"and they record their run time. For every other claim: ")


def render_suite_markdown(result, figure_files: dict[str, list[tuple[str, str]]],
                          table_files: dict[str, list[str]]) -> str:
    """report.md for a SuiteResult (figure_files / table_files: claim id -> written files)."""
    out = [f"# `{result.suite}`: claim-by-claim verdicts\n",
           f"{result.description}.\n",
           f"Generated by `geomix verify {result.suite}"
           f"{' --thorough' if result.thorough else ''}"
           f"{'' if result.seed == 0 else f' --seed {result.seed}'}"
           f"{''.join(f' --with {e}' for e in result.extras)}`. Every verdict is computed "
           f"from the evidence below by the rule stated here. {_reproducibility(result)}"
           f"every random case "
           f"is seeded, no timing is recorded, and figures whose last digits depend on the "
           f"machine (rounding-level errors and optimiser resolutions, which vary with the CPU's "
           f"vectorised exp/log and BLAS) are printed as power-of-ten bounds ('< 1e-13'). The "
           f"derivation is *optimal-sampling-derivation v1.0*; its claims are restated in "
           f"English, and [docs/derivation.md]({DERIVATION_DOC}) gives each claim's corrected "
           f"mathematics.\n",
           f"**Summary:** {result.summary_line()}.\n"]
    if result.identity_failures:
        out.append(f"**A mathematical identity failed ({', '.join(result.identity_failures)}): "
                   f"this is a bug in geomix, not a finding about the derivation.**\n")
    out.append("## Summary\n")
    out.append(markdown_table([{"claim": f"[`{c.id}`](#{c.id})",
                                "verdict": f"**{VERDICT_BADGE.get(c.verdict, c.verdict)}**",
                                "clause": c.clause or "—",
                                "whose": "geomix" if c.own else "derivation",
                                "key numbers": c.headline or "—"}
                               for c in result.claims], max_rows=100))
    out += _legend(result)
    if result.backend is not None:
        b = result.backend
        out.append(f"\n## Backend agreement: `{b['backend']}`\n")
        out.append(f"Every family's rows solved again with `{b['backend']}` and compared with the "
                   f"numpy Newton solve (equal statuses; |Δα| within the row's conditioning): "
                   f"**{'agrees' if b['agrees'] else 'DISAGREES'}**.\n")
        out.append(markdown_table(b["per_family"], max_rows=100))
    out.append("\n## Case families\n")
    out.append("The statistical claims are measured on these families (synthetic generators "
               "with the suite's seed, and real language-model rows); repaired claims are "
               "checked on fresh pairs of the same generators (other seeds, half the rows).\n")
    out.append(markdown_table(result.families, max_rows=100))
    for c in result.claims:
        badge = VERDICT_BADGE.get(c.verdict, c.verdict)
        out.append(f"\n<a id=\"{c.id}\"></a>\n## `{c.id}` — **{badge}** (clause {c.clause or '—'})"
                   f"\n")
        where = f"{c.section}; " if c.section else ""
        out.append(f"**Claim** ({where}[the derivation's statement and its mathematics]"
                   f"({DERIVATION_DOC}#claim-{c.id})). {c.claim}\n")
        if c.clause:
            from geomix_cli.checks.rule import CLAUSES

            out.append(f"**Rule applied.** {c.clause} — {CLAUSES[c.clause][1]}. Thresholds: "
                       f"{c.criteria or '—'}.\n")
        if c.headline:
            out.append(f"**In short.** {c.headline}.\n")
        out.append(f"**Evidence.** {c.evidence}\n")
        if c.control:
            out.append(f"**Controls (how this check could come out otherwise).** {c.control}\n")
        if c.repaired is not None:
            state = "confirmed" if c.repaired.confirmed else "NOT confirmed"
            out.append(f"**Repaired claim ({state}).** {c.repaired.statement} *Check:* "
                       f"{c.repaired.check}.\n")
        for name, rows in c.tables.items():
            if not rows:
                continue
            if len(rows) > 30:
                out.append(f"*Table `{name}`*: {len(rows)} rows in [{name}.csv]({name}.csv).\n")
                continue
            out.append(f"*Table `{name}`* ([CSV]({name}.csv)):\n")
            out.append(markdown_table(rows, max_rows=30))
        for fname, caption in figure_files.get(c.id, []):
            out.append(f"![{caption}]({fname})\n\n*{caption}.*\n")
        if c.would_change:
            out.append(f"**What would change the verdict.** {c.would_change}\n")
    return "\n".join(out)


def write_suite_report(result, out_dir, *, figures: bool = True) -> Path:
    """Write report.md, results.json, one CSV per table and the figures of a SuiteResult into
    out_dir, atomically (the folder is built aside and swapped in only on success)."""
    from geomix_cli.io import atomic_directory, write_csv_atomic, write_json_atomic, \
        write_text_atomic

    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as staging:
        table_files: dict[str, list[str]] = {}
        for c in result.claims:
            for name, rows in c.tables.items():
                if rows:
                    from geomix_cli.checks.rule import rounded

                    write_csv_atomic(staging / f"{name}.csv", _frame(rounded(rows)))
                    table_files.setdefault(c.id, []).append(f"{name}.csv")
        figure_files: dict[str, list[tuple[str, str]]] = {}
        if figures:
            for c in result.claims:
                for key, payload in c.figures.items():
                    if key not in SUITE_FIGURES:
                        continue
                    fig = _suite_figure(key, payload)
                    if fig is None:
                        continue
                    fname, caption = SUITE_FIGURES[key]
                    _save(fig, staging / fname)
                    figure_files.setdefault(c.id, []).append((fname, caption))
        write_json_atomic(staging / "results.json", result.to_json())
        write_text_atomic(staging / "report.md",
                          render_suite_markdown(result, figure_files, table_files))
    return out_dir


# ----------------------------------------------------------------------------------------------
# compare-alpha


def write_compare_report(records: list[dict], summary: list[dict], max_min: dict | None, out_dir,
                         *, principles: list[str], verdict: dict | None = None) -> Path:
    """report.md (the verdict first), compare_alpha.csv (every row and principle), summary.csv,
    verdict.csv (per goal and principle) and the figure of the ESS at each principle's alpha."""
    import numpy as np

    from geomix_cli.io import atomic_directory, write_csv_atomic, write_text_atomic

    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as staging:
        write_csv_atomic(staging / "compare_alpha.csv", _frame(records))
        write_csv_atomic(staging / "summary.csv", _frame(summary))
        if verdict is not None:
            write_csv_atomic(staging / "verdict.csv", _frame(
                [{"goal": g["goal"], "best": " = ".join(g["best"]), **e}
                 for g in verdict["goals"] for e in g["per_principle"]]))
        figs = []
        usable = [r for r in records if r["ess_theta"] is not None
                  and np.isfinite(r["ess_theta"]) and np.isfinite(r["ess_target"])]
        if usable:
            from geomix_cli import plots_diagnostics

            fig = plots_diagnostics.figure_principles_ess(
                [r["ess_theta"] for r in usable],
                [r["ess_target"] for r in usable],
                [r["principle"] for r in usable])
            _save(fig, staging / "ess_by_principle.png")
            figs.append(("ess_by_principle.png", "Left: ESS_theta(q) against ESS_t(q) with q at "
                         "each principle's alpha, one marker per principle (drawn largest first, "
                         "so coinciding principles nest); right: ESS_theta / ESS_t per principle "
                         "and row, with the 10% band"))
        lines = ["# compare-alpha: which alpha for which goal\n"]
        if verdict is not None:
            lines.append(f"## Verdict\n\nMeasured on {verdict['rows']} rows in "
                         f"{len(verdict['cases'])} case(s) ({', '.join(verdict['cases'])}); per "
                         "goal, the principle that does best here and what each other principle "
                         "loses (median over rows, worst row). Every number per goal and "
                         "principle: [verdict.csv](verdict.csv).\n")
            for g in verdict["goals"]:
                lines.append(f"- **{g['question']}** ({g['metric']}). Use **{g['answer']}**"
                             + (f"; {g['others']}." if g["others"] else "."))
            lines.append(f"\n**Recommendation.** {verdict['recommendation']}\n")
        lines += [f"## The principles compared\n\n{', '.join(principles)}. Per row, at each "
                  "principle's alpha: both KLs (summed over tokens), |KL gap|, the pair's Chernoff "
                  "information C, both ESS (ESS_pi(q) = 1 / sum pi^2 / q), min ESS, the fraction of "
                  "tokens meeting their four-case expectation, and the solve time. Every row: "
                  "[compare_alpha.csv](compare_alpha.csv). The mathematics of each principle "
                  "(why max-min ESS = ESS balance, why equal KLs do not balance the ESS): "
                  "`docs/derivation.md` in the geomix repository.\n",
                  "## Medians per case and principle\n",
                  markdown_table(summary, max_rows=200)]
        if max_min is not None:
            lines.append(f"\n**max-min-ess vs ess-balance**: max |Δα| = "
                         f"{max_min['max_abs_difference']:.3g} (median "
                         f"{max_min['median_abs_difference']:.3g}) over {max_min['rows']} rows: "
                         f"{'the same alpha (within 1e-6)' if max_min['equal_within_1e-6'] else 'they differ'}"
                         ". (ESS_theta(q_alpha) increases and ESS_t(q_alpha) decreases in alpha, so "
                         "min ESS peaks where they cross.)\n")
        bad = [r for r in records if r["status"] not in ("ok",)]
        if bad:
            lines.append("\n## Rows without an alpha for some principle\n")
            lines.append(markdown_table([{k: r[k] for k in ("case", "row", "principle",
                                                            "status", "message")}
                                         for r in bad], max_rows=50))
        for fname, caption in figs:
            lines.append(f"\n![{caption}]({fname})\n\n*{caption}.*\n")
        write_text_atomic(staging / "report.md", "\n".join(lines))
    return out_dir


# ----------------------------------------------------------------------------------------------
# check


def write_check_report(source: str, records: list[dict], flat: list[dict], totals: dict,
                       result: dict, out_dir, *, threshold=None) -> Path:
    """report.md, check.csv and figures (four cases totalled over rows, ESS scatter, alpha per
    row) for `geomix check`."""
    import numpy as np

    from geomix_cli.core.principles import CASE_EXPECTATIONS, CASE_NAMES
    from geomix_cli.io import atomic_directory, write_csv_atomic, write_text_atomic

    out_dir = Path(out_dir)
    thr = "1/V (the uniform level)" if threshold is None else f"{threshold:g}"
    with atomic_directory(out_dir) as staging:
        write_csv_atomic(staging / "check.csv", _frame(flat))
        figs = []
        from geomix_cli import plots_diagnostics

        ok = np.isfinite(result["alpha"])
        if ok.any():
            counts = np.asarray(totals["tokens"])
            mass = np.nanmean(result["mass_q"][ok], axis=0)
            fig = plots_diagnostics.figure_four_cases(
                list(CASE_NAMES), counts, mass,
                np.asarray(totals["fraction_meeting"], dtype=float),
                title=f"Four behaviour cases at q* ({source})")
            _save(fig, staging / "four_cases.png")
            figs.append(("four_cases.png", "Tokens per case, mean q* mass, fraction meeting "
                         "the case's expectation"))
            fig = plots_diagnostics.figure_ess_scatter(
                result["ess_theta"][ok], result["ess_target"][ok],
                [source] * int(ok.sum()),
                title="ESS_θ(q*) vs ESS_t(q*) per row")
            _save(fig, staging / "ess_scatter.png")
            figs.append(("ess_scatter.png", "ESS_theta(q*) against ESS_t(q*) per row, with "
                         "the 10% band"))
            labels = [r["row"] for r in records]
            fig = plots_diagnostics.figure_alpha_along_sequence(
                np.asarray(labels), result["alpha"],
                result["alpha_entropy"])
            _save(fig, staging / "alpha_per_row.png")
            figs.append(("alpha_per_row.png", "alpha* per row, with the entropy formula"))
        summary = [{"case": CASE_NAMES[c], "expectation": CASE_EXPECTATIONS[c],
                    "tokens": totals["tokens"][c], "meeting": totals["meeting"][c],
                    "fraction_meeting": totals["fraction_meeting"][c]} for c in range(4)]
        cols = ["row", "status", "alpha", "ess_theta", "ess_target", "ess_ratio",
                "case1_fraction_meeting", "case2_fraction_meeting", "case3_fraction_meeting",
                "case4_fraction_meeting", "w_min", "w_q0.05", "w_q0.5", "w_q0.95"]
        lines = [f"# check: `{source}`\n",
                 f"Per row at q* (the exact KL-symmetric alpha*). A probability is 'large' when "
                 f">= {thr}. Every column: [check.csv](check.csv).\n",
                 "## Four behaviour cases, all rows\n", markdown_table(summary),
                 f"\nESS_theta(q*) and ESS_t(q*) within 10% (max/min <= 1.1): "
                 f"{totals['ess_within_10pct']} of {totals['rows_with_alpha']} rows with an "
                 f"alpha*.\n",
                 "## Per row\n", markdown_table(flat, columns=cols, max_rows=200)]
        msgs = [r for r in records if r["message"]]
        if msgs:
            lines.append("\n## Rows without alpha*\n")
            lines.append(markdown_table([{"row": r["row"], "status": r["status"],
                                          "message": r["message"]} for r in msgs]))
        for fname, caption in figs:
            lines.append(f"\n![{caption}]({fname})\n\n*{caption}.*\n")
        write_text_atomic(staging / "report.md", "\n".join(lines))
    return out_dir
