"""`geomix simulate [SOURCE]`: a fair tabular learning race between samplers (q*, on-policy, ...)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import typer

from geomix_cli.commands import _shared


def _split(text: Optional[str]) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def _floats(text: str, what: str) -> tuple[float, ...]:
    from geomix_cli.errors import InputError

    try:
        values = tuple(float(s) for s in _split(text))
    except ValueError:
        raise InputError(f"{what} must be a comma-separated list of numbers, got '{text}'") from None
    if not values:
        raise InputError(f"{what} is empty")
    return values


def _num(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    if np.isinf(value):
        return "not reached" if value > 0 else "-inf"
    return f"{value:.{digits}g}"


def _ci(ci, digits: int = 3) -> str:
    """' [lo, hi]' at `digits` significant digits (a CI is not known to 16 digits)."""
    lo, hi = ci
    if np.isnan(lo) and np.isnan(hi):
        return ""
    return f" [{_num(lo, digits)}, {_num(hi, digits) if np.isfinite(hi) else '∞'}]"


def _samples(value: float) -> str:
    return _num(value) if not np.isfinite(value) else f"{int(value)}"


def _ratio(comp) -> str:
    """A paired comparison against on-policy: 'ratio [CI] (won/seeds)'."""
    if comp is None:
        return "reference"
    r = comp.ratio
    if np.isnan(r):
        return "— (neither reached)"
    head = "∞ (on-policy not reached)" if np.isinf(r) else f"{r:.3g}x"
    return f"{head}{_ci(comp.ratio_ci)} ({comp.wins}/{comp.seeds})"


def register(app: typer.Typer) -> None:
    from geomix_cli.cli import guarded

    @app.command("simulate")
    @guarded
    def simulate(
        source: Optional[str] = typer.Argument(
            None, help="Pairs file or generator spec gen:NAME:k=v,... (rows = prompts; "
                       "theta rows = initial policy, t rows = target). Default: the shipped "
                       "real SmolLM2 pairs."),
        objective: str = typer.Option("reverse-kl,forward-kl", "--objective",
                                      help="Comma list: reverse-kl (RL, KL(pi_theta||pi_t), the "
                                           "derivation's setting), forward-kl (distillation, "
                                           "KL(pi_t||pi_theta))."),
        sampler: str = typer.Option(",".join(("on-policy", "off-policy", "kl-symmetry", "entropy",
                                              "half", "ess-balance")),
                                    "--sampler", "-s",
                                    help="Comma list of samplers: on-policy, off-policy, "
                                         "kl-symmetry, entropy, half, ess-balance, or a fixed "
                                         "alpha like alpha=0.3 (on-policy is always added)."),
        budget: int = typer.Option(2048, "--budget", help="Samples per prompt for each run."),
        samples_per_step: int = typer.Option(8, "--samples-per-step", "-n",
                                             help="Samples per prompt per update."),
        seeds: int = typer.Option(48, "--seeds", help="Evaluation seeds per sampler."),
        tuning_seeds: int = typer.Option(4, "--tuning-seeds",
                                         help="Separate seeds for the learning-rate choice."),
        lr_grid: Optional[str] = typer.Option(None, "--lr-grid",
                                              help="Comma list of learning rates searched per "
                                                   "sampler (default depends on --optimizer)."),
        grid_extensions: int = typer.Option(2, "--grid-extensions",
                                            help="Times the learning-rate grid is extended when "
                                                 "a choice lands on its edge."),
        optimizer: str = typer.Option("sgd", "--optimizer", help="sgd or adam."),
        estimator: str = typer.Option(",".join(("unbiased", "sn-loo", "sn")), "--estimator",
                                      help="Comma list of gradient estimators: unbiased (RLOO), "
                                           "sn-loo (unbiased, self-normalised leave-one-out "
                                           "baseline), sn (self-normalised weights)."),
        clip: Optional[float] = typer.Option(None, "--clip",
                                             help="Truncate importance weights at this value."),
        targets: str = typer.Option("0.5,0.25,0.1,0.05,0.02,0.01", "--targets",
                                    help="Comma list of target KLs as fractions of the initial "
                                         "KL (each with its own tuned learning rate)."),
        top_k: int = typer.Option(32, "--top-k",
                                  help="Tokens kept per prompt (by max(pi_theta, pi_t)); the rest "
                                       "is merged into one token."),
        seed: int = typer.Option(0, "--seed", help="Base random seed."),
        bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples."),
        rows: Optional[str] = _shared.RowsOption,
        json_out: bool = _shared.JsonOption,
        out: Optional[str] = _shared.report_option("Write report.md, CSVs, JSON and figures "
                                                   "into this folder."),
        no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
        renormalize: bool = _shared.RenormalizeOption,
        logits: bool = _shared.LogitsOption,
        probs: bool = _shared.ProbsOption,
    ) -> None:
        """Race samplers in a tabular softmax learner, for every gradient estimator: samples to each
        target KL and final KL, against on-policy with paired bootstrap CIs and the seeds won;
        every sampler at its own learning rate, tuned per metric on separate seeds."""
        from geomix_cli.cli import warning_line
        from geomix_cli.errors import InputError
        from geomix_cli.simulate import (SimulationConfig, shipped_pairs_path, simulate as run,
                                         total_steps)

        config = SimulationConfig(
            objectives=tuple(_split(objective)), samplers=tuple(_split(sampler)),
            estimators=tuple(_split(estimator)), targets=_floats(targets, "--targets"),
            budget=budget, samples_per_step=samples_per_step, seeds=seeds,
            tuning_seeds=tuning_seeds, lr_grid=_floats(lr_grid, "--lr-grid") if lr_grid else None,
            grid_extensions=grid_extensions,
            optimizer=optimizer, clip=clip, top_k=top_k, seed=seed,
            bootstrap=bootstrap).checked()
        _shared.check_seed(seed)
        if source is None:
            path = shipped_pairs_path()
            if path is None:
                raise InputError("no SOURCE given and the shipped real pairs are not installed")
            source = str(path)
        _shared.report_dir(out, command="simulate", sources=[source])
        pairs = _shared.load(source, rows=rows, renormalize=renormalize, logits=logits,
                             probs=probs)
        _shared.refuse_if_nothing_usable(pairs, source)
        valid = pairs.valid_rows
        if not valid.all():
            warning_line(f"simulating the {int(valid.sum())} valid row(s) of {pairs.n_rows}")
        log_theta, log_t = pairs.log_pi_theta[valid], pairs.log_pi_t[valid]
        check_simulation_memory(config, *log_theta.shape)

        if no_progress:
            result = run(log_theta, log_t, config, source=source)
        else:
            from rich.progress import Progress

            from geomix_cli.cli import stderr

            with Progress(console=stderr, transient=True) as bar:
                task = bar.add_task(f"simulating {int(valid.sum())} prompt(s)",
                                    total=total_steps(config))
                result = run(log_theta, log_t, config, source=source,
                             progress=lambda n: bar.update(task, advance=n))
        payload = result.to_json()
        if out is not None:
            write_report(result, payload, out)
        if json_out:
            from geomix_cli.io import dumps_json

            typer.echo(dumps_json(payload))
        else:
            render(result)
            if out is not None:
                from geomix_cli.cli import stdout

                stdout.print(f"report written to {out}", highlight=False)


def check_simulation_memory(config, prompts: int, vocab: int) -> None:
    """Refuse up front a simulation that would not fit in memory: every learner curve keeps one
    value per step (steps = budget // samples-per-step) for every run, and each step holds a few
    [runs, prompts, tokens] arrays."""
    from geomix_cli.io import check_memory

    tokens = min(vocab, config.top_k + 1)
    combos = len(config.samplers) * len(config.estimators)
    lrs = len(config.grid) + 2 * config.grid_extensions
    tuning_runs = combos * lrs * config.tuning_seeds
    # each (estimator, sampler) is evaluated at each learning rate some metric chose
    eval_runs = combos * min(len(config.targets) + 1, lrs) * config.seeds
    runs = max(tuning_runs, eval_runs)
    curves = (tuning_runs + eval_runs) * (config.steps + 1) * 8
    # the report's per-sampler curves (median and quartiles, and the CSV rows of curves.csv)
    report = len(config.objectives) * combos * (config.steps + 1) * 8 * 40
    per_step = 24 * runs * prompts * tokens * 8
    bootstrap = 4 * config.bootstrap * config.seeds * 8  # resampled seed indices and medians
    check_memory(curves + report + per_step + bootstrap,
                 what=f"the simulation (--budget {config.budget}: {config.steps:,} steps of "
                      f"{config.samples_per_step} samples; {runs:,} runs at once; "
                      f"{config.bootstrap:,} bootstrap resamples of {config.seeds:,} seeds)",
                 hint="use a smaller --budget, --seeds or --bootstrap, or a larger "
                      "--samples-per-step")


def _header(result) -> str:
    s = result.summary()
    cfg = result.config
    lines = [f"{result.source}: {result.n_prompts} prompt(s), V = {result.vocab_size}"]
    if result.merged:
        lines.append(f"simulated on the top {cfg.top_k} tokens per prompt by max(pi_theta, pi_t) "
                     f"+ one merged token (merged mass up to {s['merged_mass_theta_max']:.3g} of "
                     f"pi_theta, {s['merged_mass_t_max']:.3g} of pi_t)")
    if result.floored_tokens:
        lines.append(f"{result.floored_tokens} token(s) with pi_theta = 0 start just above 0 (a "
                     "softmax policy has no zeros): the row's smallest probability / V")
    lines.append(f"{cfg.optimizer}, {cfg.samples_per_step} samples per prompt per step, budget "
                 f"{cfg.budget} per prompt ({cfg.steps} steps), {cfg.seeds} evaluation seeds; "
                 f"learning rate per (estimator, sampler, metric) from the grid "
                 f"{', '.join(f'{x:g}' for x in cfg.grid)} (extended at its edges up to "
                 f"{cfg.grid_extensions} times) on {cfg.tuning_seeds} separate tuning seed(s)"
                 f"{f'; weights clipped at {cfg.clip:g}' if cfg.clip else ''}")
    for obj in cfg.objectives:
        lines.append(f"{obj}: initial KL {result.initial_kl[obj]:.4g}; targets "
                     f"{', '.join(f'{t:g}' for t in cfg.targets)} x initial")
    for (obj, est), h in result.horizon.items():
        if h["reached"]:
            lines.append(f"{obj}/{est}: lowest target first reached by {h['fastest_sampler']} at "
                         f"step {h['median_steps_to_lowest_target']} (median), "
                         f"{h['spare_steps']} steps to spare")
        else:
            lines.append(f"{obj}/{est}: no sampler reached the lowest target (median): raise "
                         f"--budget")
    return "\n".join(lines)


def _table_rows(result, objective: str):
    """(headers, rows) of one objective: per estimator and sampler, the final KL and the samples
    to three targets, each against on-policy."""
    targets = list(result.config.targets)
    picks = list(dict.fromkeys([targets[0], targets[len(targets) // 2], targets[-1]]))
    headers = ["estimator", "sampler", "final KL [CI]", "vs on-policy"]
    for t in picks:
        headers += [f"samples to {t:g} [CI]", "speed-up"]
    headers += ["mean α", "edge"]
    rows = []
    for r in (x for x in result.results if x.objective == objective):
        fin = r.metrics["final-kl"]
        row = [r.estimator, r.sampler, f"{_num(fin.median, 4)}{_ci(fin.median_ci, 4)}",
               _ratio(fin.vs_on_policy)]
        for t in picks:
            m = r.metrics[f"target={t:g}"]
            ci = m.median_ci
            row += [f"{_samples(m.median)} [{_samples(ci[0])}, {_samples(ci[1])}]",
                    _ratio(m.vs_on_policy)]
        edges = [k for k, m in r.metrics.items() if m.lr_at_grid_edge]
        row += [f"{r.mean_alpha:.3f}", ", ".join(edges) or "—"]
        rows.append(row)
    return headers, rows


def render(result) -> None:
    from rich.table import Table

    from geomix_cli.cli import stdout

    stdout.print(_header(result), highlight=False)
    for obj in result.config.objectives:
        headers, rows = _table_rows(result, obj)
        table = Table(title=f"{obj}: medians over seeds, 95% bootstrap CIs; 'vs on-policy' = "
                            f"ratio (> 1: better) [CI] (seeds won)", title_justify="left")
        for h in headers:
            table.add_column(h, justify="left" if h in ("estimator", "sampler") else "right")
        for row in rows:
            table.add_row(*row)
        stdout.print(table)


def report_markdown(result) -> str:
    out = ["# geomix simulate", "", "```", _header(result), "```", ""]
    out.append("Each (estimator, sampler) runs at its own learning rate per metric, the best of "
               "the grid on separate tuning seeds; 'edge' lists metrics whose learning rate is "
               "still at the edge of the (extended) grid. Runs that never reach a target are "
               "censored: they count as +inf in medians; ratio CIs are conservative and paired by "
               "seed (see docs/simulate.md).")
    out.append("")
    for obj in result.config.objectives:
        headers, rows = _table_rows(result, obj)
        out += [f"## {obj}", "", "| " + " | ".join(headers) + " |",
                "|" + "|".join("---" for _ in headers) + "|"]
        out += ["| " + " | ".join(row) + " |" for row in rows]
        out.append("")
    out += ["![learning curves](learning_curves.png)", "", "![speed-up](speedup.png)", ""]
    return "\n".join(out)


def write_report(result, payload: dict, out: str) -> None:
    import matplotlib.pyplot as plt
    import pandas as pd

    from geomix_cli.io import (atomic_directory, save_figure_atomic, write_csv_atomic,
                               write_json_atomic, write_text_atomic)
    from geomix_cli.plots_simulate import learning_curves_figure, speedup_figure

    records = []
    for r in result.results:
        for key, m in r.metrics.items():
            comp = m.vs_on_policy
            records.append({
                "objective": r.objective, "estimator": r.estimator, "sampler": r.sampler,
                "metric": key, "lr": m.lr, "lr_at_grid_edge": m.lr_at_grid_edge,
                "lr_grid": " ".join(f"{x:g}" for x in r.lr_grid), "median": m.median,
                "median_ci_low": m.median_ci[0], "median_ci_high": m.median_ci[1],
                "reached_fraction": m.reached_fraction,
                "ratio_vs_on_policy": comp.ratio if comp else None,
                "ratio_ci_low": comp.ratio_ci[0] if comp else None,
                "ratio_ci_high": comp.ratio_ci[1] if comp else None,
                "seeds_won": comp.wins if comp else None, "seeds_tied": comp.ties if comp else None,
                "win_ci_low": comp.win_ci[0] if comp else None,
                "win_ci_high": comp.win_ci[1] if comp else None})
    curves = []
    for r in result.results:
        for x, med, lo, hi in zip(r.samples, r.curve_median, r.curve_low, r.curve_high):
            curves.append({"objective": r.objective, "estimator": r.estimator,
                           "sampler": r.sampler, "lr": r.metrics["final-kl"].lr,
                           "samples_per_prompt": int(x), "kl_median": med, "kl_q25": lo,
                           "kl_q75": hi})
    with atomic_directory(out) as staging:
        write_text_atomic(staging / "report.md", report_markdown(result))
        write_csv_atomic(staging / "results.csv", pd.DataFrame(records))
        write_csv_atomic(staging / "curves.csv", pd.DataFrame(curves))
        write_json_atomic(staging / "simulation.json", payload)
        for name, make in (("learning_curves.png", learning_curves_figure),
                           ("speedup.png", speedup_figure)):
            fig = make(result)
            try:
                save_figure_atomic(fig, staging / name)
            finally:
                plt.close(fig)
