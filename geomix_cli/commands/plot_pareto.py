"""`geomix plot-pareto SOURCE`: the exact Pareto front of a row, or small multiples of several."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer

from geomix_cli.commands import _shared

FIGURE_FORMATS = (".png", ".svg", ".pdf")
MAX_PANELS = 24
DEFAULT_DPI = 150


def check_figure_path(out: Path, *, sources=(), force: bool = False) -> Path:
    """The output path must end in a format matplotlib writes here (PNG, SVG, PDF), and may
    replace an existing file only with --force (never an input, a folder or a device)."""
    from geomix_cli.errors import InputError

    suffix = out.suffix.lower()
    if suffix not in FIGURE_FORMATS:
        raise InputError(f"unknown figure extension '{out.suffix or '(none)'}'; use one of "
                         f"{', '.join(FIGURE_FORMATS)}", file=str(out))
    _shared.output_file(out, sources=sources, force=force)
    return out


def source_name(source: str) -> str:
    return source if source.startswith("gen:") else Path(source).name


def row_title(pairs, position: int) -> str:
    label = int(pairs.row_labels[position])
    title = f"row {label}"
    if pairs.meta is not None:
        meta = str(pairs.meta[position])
        title += f": {meta[:38]}…" if len(meta) > 39 else f": {meta}"
    return title


def compute_fronts(pairs, *, cloud: bool = True, cloud_size: int = 150):
    """One ParetoFront per row of `pairs` (invalid rows carry their validation error)."""
    from geomix_cli.core.front import pareto_front

    return [pareto_front(pairs.log_pi_theta[i], pairs.log_pi_t[i], cloud=cloud,
                         cloud_size=cloud_size, row_error=pairs.row_errors[i])
            for i in range(pairs.n_rows)]


def front_frame(fronts, row_labels):
    """The plotted curves as one table: row, alpha, kl_q_theta, kl_q_target, log_z, delta,
    ess_theta, ess_target (rows without a curve contribute nothing)."""
    import pandas as pd

    frames = []
    for front, label in zip(fronts, row_labels):
        if not front.drawable:
            continue
        cols = front.columns()
        frame = pd.DataFrame(cols)
        frame.insert(0, "row", int(label))
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["row", "alpha", "kl_q_theta", "kl_q_target", "log_z",
                                     "delta", "ess_theta", "ess_target"])
    return pd.concat(frames, ignore_index=True)


def build_pareto_figure(source: str, pairs, *, log: bool = False, cloud: bool = True):
    """(figure, fronts) for a loaded source: one row -> one front (refusing a row without a
    curve with one line); several rows -> small multiples with labelled panels."""
    from geomix_cli import plots
    from geomix_cli.cli import warning_line
    from geomix_cli.errors import InputError

    if pairs.n_rows > MAX_PANELS:
        warning_line(f"{source}: {pairs.n_rows} rows; drawing the first {MAX_PANELS} "
                     f"(choose others with --rows)")
        pairs = pairs.select(np.arange(MAX_PANELS))
    if pairs.n_rows == 1:
        fronts = compute_fronts(pairs, cloud=cloud)
        front = fronts[0]
        label = int(pairs.row_labels[0])
        if not front.drawable:
            raise InputError(f"no Pareto front to draw (status '{front.status}'): "
                             f"{front.message}", file=source, row=label)
        if front.status != "ok":
            warning_line(f"{source}: row {label}: status '{front.status}': {front.message}; "
                         "drawing the front without q*")
        v = pairs.vocab_size
        title = (f"Pareto front of (KL(q‖π_θ), KL(q‖π_t)) — {source_name(source)}, "
                 f"row {label}, V = {v:,}")
        return plots.figure_pareto_front(front, title=title, log=log), fronts, pairs
    fronts = compute_fronts(pairs, cloud=cloud, cloud_size=60)
    for front, label in zip(fronts, pairs.row_labels):
        if front.status not in ("ok", "invalid"):  # invalid rows were reported when loaded
            warning_line(f"{source}: row {int(label)}: status '{front.status}': {front.message}")
    titles = [row_title(pairs, i) for i in range(pairs.n_rows)]
    return plots.figure_pareto_grid(fronts, titles, log=log), fronts, pairs


def front_summary(fronts, row_labels) -> list[dict]:
    out = []
    for front, label in zip(fronts, row_labels):
        out.append({"row": int(label), "status": front.status, "message": front.message,
                    "alpha_star": front.alpha_star, "chernoff": front.chernoff,
                    "alpha_entropy": front.alpha_entropy,
                    "points": int(front.values.alpha.size) if front.drawable else 0,
                    "cloud_points": len(front.cloud) if front.cloud is not None else 0})
    return out


def register(app: typer.Typer) -> None:
    from geomix_cli.cli import guarded

    @app.command("plot-pareto")
    @guarded
    def plot_pareto(
        source: str = typer.Argument(..., help="A pairs file (.npz .json .csv .parquet "
                                     ".safetensors .pt) or a generator spec gen:NAME:k=v,..."),
        rows: Optional[str] = _shared.RowsOption,
        out: Path = typer.Option(Path("outputs/pareto.png"), "--out", "-o",
                                 help="Figure file; the format follows the extension "
                                      "(.png, .svg, .pdf). " + _shared.FILE_HELP),
        data: Optional[Path] = typer.Option(None, "--data",
                                            help="Also write the plotted curve as CSV (alpha, "
                                                 "kl_q_theta, kl_q_target, log_z, delta, "
                                                 "ess_theta, ess_target; plus row). "
                                                 + _shared.FILE_HELP),
        force: bool = _shared.ForceOption,
        log: bool = typer.Option(False, "--log", help="Symmetric-log axes (linear near 0)."),
        no_cloud: bool = typer.Option(False, "--no-cloud",
                                      help="Leave out the cloud of other distributions."),
        dpi: int = typer.Option(DEFAULT_DPI, "--dpi", min=72, max=1200,
                                help="Resolution of PNG output."),
        json_out: bool = _shared.JsonOption,
        renormalize: bool = _shared.RenormalizeOption,
        logits: bool = _shared.LogitsOption,
        probs: bool = _shared.ProbsOption,
    ) -> None:
        """Draw the exact Pareto front of a row (several rows: small multiples).

        The curve {(KL(q_alpha||pi_theta), KL(q_alpha||pi_t)) : alpha in [0, 1]}, sampled
        adaptively, with pi_theta, pi_t, q* on the diagonal, the entropy-formula point,
        alpha = 0.5, and a cloud of other distributions (arithmetic mixtures, perturbations)
        that lie above/right of it. Prints the path written."""
        from geomix_cli.errors import InputError
        from geomix_cli.io import save_figure_atomic, write_csv_atomic

        out = check_figure_path(out, sources=[source], force=force)
        if data is not None:
            if data.suffix.lower() != ".csv":
                raise InputError(f"--data must be a .csv file, got '{data.suffix or '(none)'}'",
                                 file=str(data))
            _shared.output_file(data, sources=[source], force=force, option="--data")
        pairs = _shared.load(source, rows=rows, renormalize=renormalize, logits=logits,
                             probs=probs)
        _shared.refuse_if_nothing_usable(pairs, source)
        fig, fronts, pairs = build_pareto_figure(source, pairs, log=log, cloud=not no_cloud)
        import matplotlib.pyplot as plt

        try:
            written = save_figure_atomic(fig, out, dpi=dpi)
        finally:
            plt.close(fig)
        data_written = None
        if data is not None:
            data_written = write_csv_atomic(data, front_frame(fronts, pairs.row_labels))
        if json_out:
            from geomix_cli.io import dumps_json

            typer.echo(dumps_json({"schema_version": 1, "source": source, "figure": str(written),
                                   "data": None if data_written is None else str(data_written),
                                   "vocab_size": pairs.vocab_size,
                                   "rows": front_summary(fronts, pairs.row_labels)}))
        else:
            typer.echo(str(written))
            if data_written is not None:
                typer.echo(str(data_written))
        raise typer.Exit(_shared.exit_code_for(pairs))
