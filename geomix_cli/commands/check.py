"""`geomix check SOURCE`: the four behaviour cases and the ESS balance on the user's own pairs."""

from __future__ import annotations

from typing import Optional

import numpy as np
import typer

from geomix_cli.commands import _render, _shared, _sharded
from geomix_cli.core.principles import CASE_KEYS, ESS_BAND_RATIO


def records_from(result: dict, row_labels) -> list[dict]:
    """One JSON-ready dict per row (NaN kept; the JSON writer turns it into null)."""
    return list(iter_records(result, row_labels))


def iter_records(result: dict, row_labels):
    """The rows of `records_from`, one at a time (the --json output streams them)."""
    from geomix_cli.core.principles import WEIGHT_QUANTILES

    w = result["weights"]
    for i, label in enumerate(row_labels):
        counts = result["counts"][i]
        meeting = result["meeting"][i]
        rec = {"row": int(label), "status": str(result["status"][i]),
               "alpha": float(result["alpha"][i]),
               "alpha_entropy": float(result["alpha_entropy"][i]),
               "chernoff": float(result["chernoff"][i]),
               "threshold": float(result["threshold"][i]),
               "ess_theta": float(result["ess_theta"][i]),
               "ess_target": float(result["ess_target"][i]),
               "ess_ratio": float(result["ess_ratio"][i]),
               "ess_within_10pct": (bool(result["ess_ratio"][i] <= ESS_BAND_RATIO)
                                    if np.isfinite(result["ess_ratio"][i]) else None),
               "cases": {}, "weights": {}, "message": result["message"][i]}
        for c, key in enumerate(CASE_KEYS):
            rec["cases"][key] = {
                "tokens": int(counts[c]), "meeting": int(meeting[c]),
                "fraction_meeting": float(meeting[c] / counts[c]) if counts[c] else float("nan"),
                "mass_q": float(result["mass_q"][i, c]),
                "mass_theta": float(result["mass_theta"][i, c]),
                "mass_target": float(result["mass_t"][i, c])}
        rec["weights"] = {"min": float(w["w_min"][i]), "max": float(w["w_max"][i]),
                          "mean_under_q": float(w["w_mean_q"][i]),
                          "second_moment_under_q": float(w["w_second_moment_q"][i]),
                          **{f"q{q:g}": float(w[f"w_q{q:g}"][i]) for q in WEIGHT_QUANTILES}}
        yield rec


def flat_record(rec: dict) -> dict:
    """A CSV-friendly flattening of one record."""
    flat = {k: v for k, v in rec.items() if k not in ("cases", "weights")}
    for key, case in rec["cases"].items():
        for field, value in case.items():
            flat[f"{key}_{field}"] = value
    for field, value in rec["weights"].items():
        flat[f"w_{field}"] = value
    return flat


def register(app: typer.Typer) -> None:
    from geomix_cli.cli import guarded

    @app.command("check")
    @guarded
    def check(
        source: str = typer.Argument(..., help="A pairs file (.npz .json .csv .parquet "
                                     ".safetensors .pt) or a generator spec gen:NAME:k=v,..."),
        threshold: Optional[float] = typer.Option(
            None, "--threshold", help="A probability is 'large' when >= this (default 1/V, the "
            "uniform level, V = tokens where pi_theta or pi_t is positive)."),
        out: Optional[str] = _shared.report_option("Write report.md, check.csv and figures "
                                                   "into this folder."),
        rows: Optional[str] = _shared.RowsOption,
        json_out: bool = _shared.JsonOption,
        renormalize: bool = _shared.RenormalizeOption,
        logits: bool = _shared.LogitsOption,
        probs: bool = _shared.ProbsOption,
        wide: bool = _render.WideOption,
        all_rows: bool = _render.AllOption,
        resume: bool = _sharded.ResumeOption,
        scheduler: Optional[str] = _sharded.SchedulerOption,
        workers: Optional[int] = _sharded.WorkersOption,
        retries: int = _sharded.RetriesOption,
        max_memory: Optional[str] = typer.Option(None, "--max-memory",
                                                 help=_sharded.MEMORY_HELP + "."),
    ) -> None:
        """The four behaviour cases and the ESS balance on your own pairs.

        A batch opens with a summary (statuses, quantiles of alpha*, C and both ESS, the ESS
        balance, the fraction of tokens meeting each case's expectation), then the rows.

        Per row at q*: the tokens in each case, their mass, the fraction meeting the case's expectation,
        ESS_theta(q*), ESS_t(q*) and their ratio, and the importance weights w = pi_theta/q*.

        Cases (large = probability >= threshold): 1 large/large, expect min <= q* <= max;
        2 small/large, expect pi_theta < q* <= pi_t; 3 large/small, expect pi_t <= q* <
        pi_theta; 4 small/small, expect q* < threshold."""
        from geomix_cli.core.principles import CASE_EXPECTATIONS, check_rows
        from geomix_cli.errors import InputError

        if threshold is not None and not (0.0 < threshold < 1.0):
            raise InputError(f"--threshold must lie in (0, 1), got {threshold}")
        if _sharded.wanted(source, scheduler=scheduler, resume=resume):
            raise typer.Exit(_sharded.check(
                source, threshold=threshold, out=out, resume=resume, scheduler=scheduler,
                workers=workers, max_memory=max_memory, retries=retries, json_out=json_out,
                renormalize=renormalize, logits=logits, probs=probs, rows=rows))
        _shared.report_dir(out, command="check", sources=[source])
        pairs = _shared.load(source, rows=rows, renormalize=renormalize, logits=logits,
                             probs=probs)
        _shared.refuse_if_nothing_usable(pairs, source)
        result = check_rows(pairs.log_pi_theta, pairs.log_pi_t, threshold=threshold,
                            row_errors=pairs.row_errors)
        totals = _totals(result)
        # the report needs every record; --json alone streams them one at a time
        records = records_from(result, pairs.row_labels) if out else None
        if out:
            from geomix_cli.reports import write_check_report

            write_check_report(source, records, [flat_record(r) for r in records], totals,
                               result, out, threshold=threshold)
        if json_out:
            import sys

            from geomix_cli.io import write_json_document

            write_json_document(sys.stdout, {
                "schema_version": 1, "source": source, "vocab_size": pairs.vocab_size,
                "threshold": "1/V" if threshold is None else threshold,
                "expectations": dict(zip(CASE_KEYS, CASE_EXPECTATIONS))},
                records if records is not None else iter_records(result, pairs.row_labels),
                tail={"totals": totals, "report_dir": out})
        else:
            render_human(source, result, pairs, totals, threshold, wide=wide, all_rows=all_rows)
            if out:
                from geomix_cli.cli import stdout

                stdout.print(f"report: {out}/report.md", highlight=False, markup=False)
        raise typer.Exit(_shared.exit_code_for(pairs))


def _totals(result: dict) -> dict:
    """Token counts and meeting counts summed over rows with alpha*, per case."""
    counts = result["counts"].sum(axis=0)
    meeting = result["meeting"].sum(axis=0)
    ok = np.isfinite(result["alpha"])
    ratio = result["ess_ratio"][ok]
    return {"rows_with_alpha": int(ok.sum()), "rows": int(len(result["alpha"])),
            "tokens": counts.tolist(), "meeting": meeting.tolist(),
            "fraction_meeting": [float(m / c) if c else float("nan")
                                 for m, c in zip(meeting, counts)],
            "ess_within_10pct": int(np.sum(ratio <= ESS_BAND_RATIO)) if ratio.size else 0}


def render_human(source, result: dict, pairs, totals: dict, threshold, *, wide: bool = False,
                 all_rows: bool = False) -> None:
    """The summary (for a batch), then the rows (see commands._render), from the result arrays."""
    fmt_a, fmt_n, pct = _render.fmt_alpha, _render.fmt_num, _render.fmt_pct
    labels = pairs.row_labels
    status = result["status"]
    thr = "1/V" if threshold is None else f"{threshold:g}"
    head = (f"{source}: {_render.fmt_count(pairs.n_rows)} row(s) × V = "
            f"{_render.fmt_count(pairs.vocab_size)}; four cases at q*, 'large' = p ≥ {thr}")
    cases = "; ".join(
        f"{c + 1} {pct(f)} of {_render.fmt_count(n)}"
        for c, (f, n) in enumerate(zip(totals["fraction_meeting"], totals["tokens"])))
    ok = status == "ok"
    if pairs.n_rows > 1:
        facts = [("status", _render.status_line(status)),
                 ("four cases", f"tokens meeting the expectation, case {cases}")]
        balance = _render.ess_balance_fact(result["ess_theta"][ok], result["ess_target"][ok],
                                           labels[ok])
        if balance:
            facts.append(("ESS balance", balance))
        qrows = [("alpha*", _render.quantiles(result["alpha"][ok]), fmt_a),
                 ("C [nats]", _render.quantiles(result["chernoff"][ok]), fmt_n),
                 ("ESS_θ(q*)", _render.quantiles(result["ess_theta"][ok]), fmt_n),
                 ("ESS_t(q*)", _render.quantiles(result["ess_target"][ok]), fmt_n),
                 ("w min", _render.quantiles(result["weights"]["w_min"][ok]), fmt_n)]
        _render.print_summary(head, facts, qrows if ok.sum() > 1 else (),
                              f"over the {_render.fmt_count(ok.sum())} rows with status ok:")
        title = None
    else:
        title = head
    counts, meeting, mass = result["counts"], result["meeting"], result["mass_q"]
    w = result["weights"]

    def meeting_cell(i):
        return "/".join(fmt_n(meeting[i, c] / counts[i, c], 3) if counts[i, c] else "—"
                        for c in range(4))

    cols = [
        _render.Column("row", lambda i: str(int(labels[i]))),
        _render.Column("alpha*", lambda i: fmt_a(result["alpha"][i])),
        _render.Column("C [nats]", lambda i: fmt_n(result["chernoff"][i]), compact=False),
        _render.Column("tokens 1/2/3/4", lambda i: "/".join(str(int(n)) for n in counts[i])
                       if ok[i] else "—", compact=False),
        _render.Column("meeting 1/2/3/4", meeting_cell),
        _render.Column("q* mass 1/2/3/4", lambda i: "/".join(fmt_n(m, 2) for m in mass[i])
                       if ok[i] else "—", compact=False),
        _render.Column("ESS_θ", lambda i: fmt_n(result["ess_theta"][i])),
        _render.Column("ESS_t", lambda i: fmt_n(result["ess_target"][i])),
        _render.Column("max/min", lambda i: fmt_n(result["ess_ratio"][i], 3), compact=False),
        _render.Column("w min", lambda i: fmt_n(w["w_min"][i], 3), compact=False),
        _render.Column("w q5%", lambda i: fmt_n(w["w_q0.05"][i], 3), compact=False),
        _render.Column("w median", lambda i: fmt_n(w["w_q0.5"][i], 3), compact=False),
        _render.Column("w q95%", lambda i: fmt_n(w["w_q0.95"][i], 3), compact=False),
        _render.Column("status", lambda i: str(status[i]), justify="left"),
    ]
    shown = _render.print_rows(cols, pairs.n_rows, title=title, wide=wide, all_rows=all_rows)
    if pairs.n_rows == 1 and ok[0]:
        from geomix_cli.cli import stdout

        stdout.print(f"four cases: tokens meeting the expectation, case {cases}",
                     highlight=False, markup=False)
    _render.print_messages(shown, labels, status, result["message"])
