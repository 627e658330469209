"""The aggregate of a sharded run (JSON-ready) and the files of a sharded `check` report.

Everything here is a function of the merged `Summary` (exact counts, fixed-bin quantiles, piece
sums merged with fsum) and of the shard list, never of the order in which pieces finished or of
the scheduler: a cluster run, a single-process run and a resumed run write the same report.md and
summary.json. No mathematics and no timing go in.
"""

from __future__ import annotations

import math

from geomix_cli.scale.stats import MANTISSA_BITS, QUANTILE_RELATIVE_ERROR
from geomix_cli.core.principles import CASE_KEYS

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
QUANTILE_METHOD = (
    f"nearest-rank quantiles (numpy method 'inverted_cdf') from a fixed-bin histogram whose bins "
    f"are float64 values sharing sign, exponent and the top {MANTISSA_BITS} mantissa bits; every "
    f"quantile is within a relative {QUANTILE_RELATIVE_ERROR:.2g} (2^-{MANTISSA_BITS + 1}) of the "
    "exact one; min, max, counts and sums are exact")
LABELS = {"alpha": "alpha*", "chernoff": "C = -log Z(alpha*) (nats)",
          "kl_q_theta": "KL(q*||pi_theta) (nats)", "ess_theta": "ESS_theta(q*)",
          "ess_target": "ESS_t(q*)", "alpha_entropy": "alpha_H (entropy formula)",
          "iterations": "iterations", "ess_ratio": "ESS max/min", "w_q0.5": "median weight w",
          "case1_mass_q": "q* mass, case 1", "case2_mass_q": "q* mass, case 2",
          "case3_mass_q": "q* mass, case 3", "case4_mass_q": "q* mass, case 4"}
MAX_SHARD_ROWS = 200
MAX_EXAMPLES = 200


def aggregate(outcome, *, threshold=None) -> dict:
    """JSON-ready aggregate of a run: rows per status, per shard, quantiles, (check) totals."""
    plan, summary = outcome.plan, outcome.summary
    counters = summary.counters
    statuses = {k.split(":", 1)[1]: v for k, v in sorted(counters.items())
                if k.startswith("status:")}
    shard_errors = {}
    for index, message in sorted(outcome.shard_errors.items()):
        shard_errors.setdefault(plan.pieces[index].shard.label, message)
    shards = []
    for ref in plan.shards:
        prefix = f"shard:{ref.label}:"
        entry = {"shard": ref.label, "rows": int(counters.get(prefix + "rows", 0))}
        entry.update({status: int(counters.get(prefix + status, 0)) for status in statuses})
        if ref.label in shard_errors:
            entry["error"] = shard_errors[ref.label]
        shards.append(entry)
    out = {"schema_version": 1, "command": plan.options.command, "source": plan.source,
           "shards": len(plan.shards), "pieces": len(plan.pieces),
           "rows": int(counters.get("rows", 0)), "statuses": statuses}
    if plan.options.command == "solve":
        out["method"] = plan.options.method
    elif plan.options.command == "check":
        out["threshold"] = "1/V" if threshold is None else threshold
        out["totals"] = check_totals(counters)
    else:
        out["threshold"] = threshold
        out["principles"] = list(plan.options.principles)
        out["medians"] = compare_medians(plan.source, plan.options.principles, summary)
        out["max_min_ess_vs_ess_balance"] = _max_min(summary)
    out["quantile_method"] = QUANTILE_METHOD
    out["quantiles"] = {name: column.describe(QUANTILES)
                        for name, column in summary.columns.items()}
    out["per_shard"] = shards
    out["rows_with_messages"] = summary.first_examples(MAX_EXAMPLES)
    return out


def check_totals(counters: dict) -> dict:
    """`geomix check`'s totals (the same object as a single-file run's JSON "totals")."""
    tokens = [int(counters.get(f"tokens:{k}", 0)) for k in CASE_KEYS]
    meeting = [int(counters.get(f"meeting:{k}", 0)) for k in CASE_KEYS]
    return {"rows_with_alpha": int(counters.get("rows_with_alpha", 0)),
            "rows": int(counters.get("rows", 0)), "tokens": tokens, "meeting": meeting,
            "fraction_meeting": [m / c if c else math.nan for m, c in zip(meeting, tokens)],
            "ess_within_10pct": int(counters.get("ess_within_10pct", 0))}


def compare_medians(source: str, principles, summary) -> list[dict]:
    """compare-alpha's per-principle summary (commands.compare_alpha.summarise's fields, the
    medians from the mergeable quantiles; no timing)."""
    out = []
    for name in principles:
        med = {c: summary.columns[f"{name}:{c}"].quantile(0.5)
               if f"{name}:{c}" in summary.columns else math.nan
               for c in ("alpha", "kl_gap", "min_ess", "ess_ratio", "four_case_fraction")}
        out.append({"case": source, "principle": name,
                    "rows": int(summary.counters.get(f"principle:{name}:rows", 0)),
                    "with_alpha": int(summary.counters.get(f"principle:{name}:with_alpha", 0)),
                    "median_alpha": med["alpha"], "median_kl_gap": med["kl_gap"],
                    "median_min_ess": med["min_ess"], "median_ess_ratio": med["ess_ratio"],
                    "median_four_case_fraction": med["four_case_fraction"]})
    return out


def _max_min(summary) -> dict | None:
    column = summary.columns.get("max_min_ess_vs_ess_balance")
    if column is None or column.n == 0:
        return None
    return {"rows": column.n, "max_abs_difference": column.maximum,
            "median_abs_difference": column.quantile(0.5),
            "equal_within_1e-6": bool(column.maximum <= 1e-6)}


def compare_report_files(agg: dict) -> dict:
    """{file name: bytes} of a sharded compare-alpha report: report.md, summary.json."""
    from geomix_cli.io import dumps_json
    from geomix_cli.reports import markdown_table

    statuses = ", ".join(f"{k}: {v}" for k, v in agg["statuses"].items())
    lines = ["# compare-alpha: the alpha principles side by side\n",
             f"`{agg['source']}`: {agg['shards']} shard(s), {agg['rows']} (row, principle) "
             f"results ({statuses}). Principles: {', '.join(agg['principles'])}. Per row, at "
             "each principle's alpha: both KLs, |KL gap|, the pair's Chernoff information C, "
             "both ESS, min ESS, the fraction of tokens meeting their four-case expectation. "
             "Every row: [compare.parquet](compare.parquet).\n",
             "## Medians per principle\n", markdown_table(agg["medians"], max_rows=200),
             f"\nMedians: {QUANTILE_METHOD}.\n"]
    mm = agg["max_min_ess_vs_ess_balance"]
    if mm is not None:
        lines.append(f"\n**max-min-ess vs ess-balance**: max |Δα| = "
                     f"{mm['max_abs_difference']:.3g} (median {mm['median_abs_difference']:.3g}) "
                     f"over {mm['rows']} rows.\n")
    lines += _shard_sections(agg, "Rows without an alpha for some principle")
    return {"report.md": "\n".join(lines).encode("utf-8"),
            "summary.json": (dumps_json(agg) + "\n").encode("utf-8")}


def quantile_rows(agg: dict) -> list[dict]:
    rows = []
    for name, d in agg["quantiles"].items():
        rows.append({"quantity": LABELS.get(name, name), "n": d["n"], "min": d["min"],
                     "q0.05": d["q0.05"], "median": d["q0.5"], "q0.95": d["q0.95"],
                     "max": d["max"], "mean": d["mean"]})
    return rows


def check_report_files(outcome, agg: dict, *, threshold=None) -> dict:
    """{file name: bytes} of a sharded check report: report.md, summary.json, four_cases.png."""
    from geomix_cli.core.principles import CASE_EXPECTATIONS, CASE_NAMES
    from geomix_cli.io import dumps_json
    from geomix_cli.reports import markdown_table

    totals = agg["totals"]
    source = agg["source"]
    thr = "1/V (the uniform level)" if threshold is None else f"{threshold:g}"
    summary = [{"case": CASE_NAMES[c], "expectation": CASE_EXPECTATIONS[c],
                "tokens": totals["tokens"][c], "meeting": totals["meeting"][c],
                "fraction_meeting": totals["fraction_meeting"][c]} for c in range(4)]
    files = {}
    figures = []
    if totals["rows_with_alpha"]:
        import numpy as np

        from geomix_cli import plots_diagnostics

        mass = np.array([agg["quantiles"][f"{k}_mass_q"]["mean"] for k in CASE_KEYS])
        fig = plots_diagnostics.figure_four_cases(
            list(CASE_NAMES), np.asarray(totals["tokens"]), mass,
            np.asarray(totals["fraction_meeting"], dtype=float),
            title=f"Four behaviour cases at q* ({source})")
        files["four_cases.png"] = _png(fig)
        figures.append(("four_cases.png", "Tokens per case, mean q* mass, fraction meeting the "
                        "case's expectation"))
    statuses = ", ".join(f"{k}: {v}" for k, v in agg["statuses"].items())
    lines = [f"# check: `{source}`\n",
             f"{agg['rows']} rows from {agg['shards']} shard(s) ({statuses}). Per row at q* (the "
             f"exact KL-symmetric alpha*); a probability is 'large' when >= {thr}. Every row: "
             "[check.parquet](check.parquet) (a Parquet dataset, one row per position).\n",
             "## Four behaviour cases, all rows\n", markdown_table(summary),
             f"\nESS_theta(q*) and ESS_t(q*) within 10% (max/min <= 1.1): "
             f"{totals['ess_within_10pct']} of {totals['rows_with_alpha']} rows with an "
             "alpha*.\n",
             "## Distribution over rows\n",
             markdown_table(quantile_rows(agg), max_rows=len(agg["quantiles"])),
             f"\nQuantiles: {QUANTILE_METHOD}.\n"]
    lines += _shard_sections(agg, "Rows without alpha*")
    for name, caption in figures:
        lines.append(f"\n![{caption}]({name})\n\n*{caption}.*\n")
    files["report.md"] = "\n".join(lines).encode("utf-8")
    files["summary.json"] = (dumps_json(agg) + "\n").encode("utf-8")
    return files


def _shard_sections(agg: dict, heading: str) -> list[str]:
    """Rows per shard, then the first rows that carry a message."""
    from geomix_cli.reports import markdown_table

    lines = ["## Rows per shard\n", markdown_table(agg["per_shard"], columns=_shard_columns(agg),
                                                   max_rows=MAX_SHARD_ROWS)]
    if agg["rows_with_messages"]:
        lines += [f"\n## {heading} (first {MAX_EXAMPLES})\n",
                  markdown_table(agg["rows_with_messages"], max_rows=MAX_EXAMPLES)]
    return lines


def _shard_columns(agg: dict) -> list[str]:
    columns = ["shard", "rows"]
    for entry in agg["per_shard"]:
        for key in entry:
            if key not in columns and key != "error":
                columns.append(key)
    if any("error" in e for e in agg["per_shard"]):
        columns.append("error")
    return columns


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    from geomix_cli.io.writers import figure_bytes

    try:
        return figure_bytes(fig)
    finally:
        plt.close(fig)
