"""`geomix plot KIND SOURCE`: the figure set (plots.py) for a source of pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer

from geomix_cli.commands import _shared

KINDS = {
    "pareto": "the Pareto front (one row) or small multiples (several rows), as plot-pareto",
    "delta": "D(alpha) with the Newton and bisection iterates, for one row (--row, default 0)",
    "ess": "ESS_theta(q*) vs ESS_t(q*) per row, with the diagonal and the ±10% band "
           "(coloured by the first '|' field of the source's meta when it has one)",
    "four-cases": "the derivation's four behaviour cases under q*, totalled over the rows",
    "entropy-error": "histogram of alpha_H - alpha* over the rows (per meta family, as ess)",
    "alpha-sequence": "alpha* (and alpha_H) per row, in row order",
}


def _solved(pairs):
    """(alpha*, diagnostics) for every row of the source with the exact Newton solver."""
    from geomix_cli.core import diagnose, solve_alpha

    sol = solve_alpha(pairs.log_pi_theta, pairs.log_pi_t, "newton", row_errors=pairs.row_errors)
    return diagnose(pairs.log_pi_theta, pairs.log_pi_t, sol)


def _need_some_alpha(diag, source: str, what: str) -> None:
    from geomix_cli.errors import InputError

    if not np.any(diag.solution.status == "ok"):
        raise InputError(f"no row has alpha* (statuses: "
                         f"{', '.join(sorted(set(map(str, diag.solution.status))))}); "
                         f"nothing to draw for '{what}'", file=source)


def _warn_skipped(diag, pairs, source: str) -> None:
    from geomix_cli.cli import warning_line

    for i, status in enumerate(diag.solution.status):
        if status != "ok" and status != "invalid":
            warning_line(f"{source}: row {int(pairs.row_labels[i])}: status '{status}' "
                         "(no alpha*, left out)")


def row_families(pairs, name: str) -> list[str]:
    """A family label per row: the first '|' field of the source's meta (e.g. 'steer',
    'temp0.6' in the SmolLM2 sample), else the source's name."""
    if pairs.meta is not None and all("|" in str(m) for m in pairs.meta):
        return [str(m).split("|", 1)[0] or name for m in pairs.meta]
    return [name] * pairs.n_rows


def build_figure(kind: str, source: str, pairs, *, threshold: Optional[float], log: bool):
    """(figure, summary dict) for one KIND."""
    from geomix_cli import plots, plots_diagnostics
    from geomix_cli.commands.plot_pareto import build_pareto_figure, front_summary, source_name
    from geomix_cli.errors import InputError

    name = source_name(source)
    if kind == "pareto":
        fig, fronts, shown = build_pareto_figure(source, pairs, log=log)
        return fig, {"rows": front_summary(fronts, shown.row_labels)}
    if kind == "delta":
        from geomix_cli.core.front import delta_curve

        label = int(pairs.row_labels[0])
        if pairs.n_rows > 1:
            from geomix_cli.cli import warning_line

            warning_line(f"{source}: 'delta' draws one row; using row {label} (choose with --row)")
        if pairs.row_errors[0] is not None:
            raise InputError(pairs.row_errors[0], file=source, row=label)
        curve = delta_curve(pairs.log_pi_theta[0], pairs.log_pi_t[0])
        if curve.alpha.size == 0:
            raise InputError(f"no D(alpha) to draw (status '{curve.status}'): {curve.message}",
                             file=source, row=label)
        fig = plots.figure_delta_with_iterates(
            curve, title=f"D(α) = KL(q_α‖π_θ) − KL(q_α‖π_t) and the solvers' iterates "
                         f"— {name}, row {label}")
        return fig, {"row": label, "status": curve.status, "alpha_star": curve.alpha_star,
                     "solved": curve.solved,
                     "evaluations": {m: int(len(p)) for m, p in curve.iterates.items()}}
    diag = _solved(pairs)
    _need_some_alpha(diag, source, kind)
    _warn_skipped(diag, pairs, source)
    ok = diag.solution.status == "ok"
    if kind == "ess":
        families = np.asarray(row_families(pairs, name), dtype=object)[ok]
        fig = plots_diagnostics.figure_ess_scatter(
            diag.ess_theta[ok], diag.ess_target[ok], families,
            title=f"ESS at q*: ESS_θ vs ESS_t — {name}")
        return fig, {"rows": int(ok.sum())}
    if kind == "four-cases":
        from geomix_cli.core.front import four_case_summary

        summary = four_case_summary(pairs.log_pi_theta, pairs.log_pi_t,
                                    np.where(ok, diag.solution.alpha, np.nan),
                                    threshold=threshold)
        thr = ("1/V" if threshold is None else f"{threshold:g}")
        fig = plots_diagnostics.figure_four_cases(
            summary.labels, summary.counts, summary.mass_q, summary.fraction_meeting,
            title=(f"The derivation's four behaviour cases under q* — {name}, "
                   f"{summary.n_rows} row(s), 'large' = p ≥ {thr}"))
        return fig, {"labels": list(summary.labels), "expectations": list(summary.expectations),
                     "counts": summary.counts, "mass_q": summary.mass_q,
                     "fraction_meeting": summary.fraction_meeting,
                     "threshold": summary.threshold, "rows": summary.n_rows}
    if kind == "entropy-error":
        from geomix_cli.core.front import entropy_formula_error

        errors = entropy_formula_error(diag.alpha_entropy, diag.solution.alpha)
        families = np.asarray(row_families(pairs, name), dtype=object)
        by_family = {fam: errors[ok & (families == fam)] for fam in dict.fromkeys(families)}
        fig = plots_diagnostics.figure_entropy_error_hist(
            {k: v for k, v in by_family.items() if v.size},
            title=f"Error of the entropy formula — {name}")
        return fig, {"rows": int(ok.sum())}
    if kind == "alpha-sequence":
        alpha = np.where(ok, diag.solution.alpha, np.nan)
        labels = None
        if pairs.meta is not None:
            labels = [str(m).split("|")[2] if str(m).count("|") >= 2 else str(m)
                      for m in pairs.meta]
            labels = [lab if lab else "∅" for lab in labels]
        fig = plots_diagnostics.figure_alpha_along_sequence(
            pairs.row_labels, alpha, diag.alpha_entropy, labels,
            title=f"α* and α_H per row — {name}")
        return fig, {"rows": int(ok.sum())}
    raise InputError(f"unknown plot kind '{kind}'; choose from {', '.join(KINDS)}")


def register(app: typer.Typer) -> None:
    from geomix_cli.cli import guarded

    kinds_help = "; ".join(f"{k}: {v}" for k, v in KINDS.items())

    @app.command("plot")
    @guarded
    def plot(
        kind: str = typer.Argument(..., help=f"What to draw. {kinds_help}."),
        source: str = typer.Argument(..., help="A pairs file or a generator spec "
                                     "gen:NAME:k=v,..."),
        rows: Optional[str] = _shared.RowsOption,
        out: Optional[Path] = typer.Option(None, "--out", "-o",
                                           help="Figure file (.png, .svg, .pdf); default "
                                                "outputs/<KIND>.png. " + _shared.FILE_HELP),
        force: bool = _shared.ForceOption,
        threshold: Optional[float] = typer.Option(
            None, "--threshold", help="four-cases: 'large' means p >= threshold "
                                      "(default 1/V)."),
        log: bool = typer.Option(False, "--log", help="pareto: symmetric-log axes."),
        dpi: int = typer.Option(150, "--dpi", min=72, max=1200, help="Resolution of PNG output."),
        json_out: bool = _shared.JsonOption,
        renormalize: bool = _shared.RenormalizeOption,
        logits: bool = _shared.LogitsOption,
        probs: bool = _shared.ProbsOption,
    ) -> None:
        """Draw one figure of the set for a source (see KIND)."""
        from geomix_cli.commands.plot_pareto import check_figure_path
        from geomix_cli.errors import InputError
        from geomix_cli.io import save_figure_atomic

        if kind not in KINDS:
            raise InputError(f"unknown plot kind '{kind}'; choose from {', '.join(KINDS)}")
        if threshold is not None and not 0.0 < threshold <= 1.0:
            raise InputError(f"--threshold {threshold:g} must lie in (0, 1]")
        out = check_figure_path(out if out is not None else Path("outputs") / f"{kind}.png",
                                sources=[source], force=force)
        pairs = _shared.load(source, rows=rows, renormalize=renormalize, logits=logits,
                             probs=probs)
        _shared.refuse_if_nothing_usable(pairs, source)
        fig, summary = build_figure(kind, source, pairs, threshold=threshold, log=log)
        import matplotlib.pyplot as plt

        try:
            written = save_figure_atomic(fig, out, dpi=dpi)
        finally:
            plt.close(fig)
        if json_out:
            from geomix_cli.io import dumps_json

            typer.echo(dumps_json({"schema_version": 1, "kind": kind, "source": source,
                                   "figure": str(written), **summary}))
        else:
            typer.echo(str(written))
        raise typer.Exit(_shared.exit_code_for(pairs))
