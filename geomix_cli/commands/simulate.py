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


def _ci(ci) -> str:
    lo, hi = ci
    if np.isnan(lo) and np.isnan(hi):
        return ""
    return f" [{_num(lo)}, {_num(hi) if np.isfinite(hi) else '∞'}]"


def _samples(value: float) -> str:
    return _num(value) if not np.isfinite(value) else f"{int(value)}"


def _samples_ci(ci) -> str:
    lo, hi = ci
    if np.isnan(lo) and np.isnan(hi):
        return ""
    return f" [{_samples(lo)}, {_samples(hi) if np.isfinite(hi) else '∞'}]"


def _speedup(rec) -> str:
    if rec.sampler == "on-policy":
        return "1 (reference)"
    value = rec.speedup_vs_on_policy
    if np.isnan(value):
        text = "— (neither reached)"
    elif np.isinf(value):
        text = f"> {_num(rec.speedup_lower_bound)} (on-policy not reached)"
    elif rec.speedup_upper_bound is not None:
        text = f"< {_num(rec.speedup_upper_bound)} (not reached)"
    else:
        text = f"{value:.3g}x"
    return text + _ci(rec.speedup_ci)


def register(app: typer.Typer) -> None:
    from geomix_cli.cli import guarded

    @app.command("simulate")
    @guarded
    def simulate(
        source: Optional[str] = typer.Argument(
            None, help="Pairs file or generator spec gen:NAME:k=v,... (rows = prompts; "
                       "theta rows = initial policy, t rows = target). Default: the shipped "
                       "real SmolLM2 pairs."),
        objective: str = typer.Option("forward-kl,reverse-kl", "--objective",
                                      help="Comma list: forward-kl (distillation, "
                                           "KL(pi_t||pi_theta)), reverse-kl (RL, "
                                           "KL(pi_theta||pi_t))."),
        sampler: str = typer.Option(",".join(("on-policy", "off-policy", "kl-symmetry", "entropy",
                                              "half", "ess-balance")),
                                    "--sampler", "-s",
                                    help="Comma list of samplers: on-policy, off-policy, "
                                         "kl-symmetry, entropy, half, ess-balance, or a fixed "
                                         "alpha like alpha=0.3 (on-policy is always added)."),
        budget: int = typer.Option(1024, "--budget", help="Samples per prompt for each run."),
        samples_per_step: int = typer.Option(8, "--samples-per-step", "-n",
                                             help="Samples per prompt per update."),
        seeds: int = typer.Option(24, "--seeds", help="Evaluation seeds per sampler."),
        tuning_seeds: int = typer.Option(4, "--tuning-seeds",
                                         help="Separate seeds for the learning-rate choice."),
        lr_grid: Optional[str] = typer.Option(None, "--lr-grid",
                                              help="Comma list of learning rates searched per "
                                                   "sampler (default depends on --optimizer)."),
        optimizer: str = typer.Option("sgd", "--optimizer", help="sgd or adam."),
        self_normalized: bool = typer.Option(False, "--self-normalized",
                                             help="Self-normalised importance weights."),
        clip: Optional[float] = typer.Option(None, "--clip",
                                             help="Truncate importance weights at this value."),
        target_fraction: float = typer.Option(0.25, "--target-fraction",
                                              help="Target KL = this fraction of the initial KL."),
        top_k: int = typer.Option(64, "--top-k",
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
        """Race samplers in a tabular softmax learner: samples to a target KL, final KL, speed-up
        vs on-policy with bootstrap CIs, each sampler at its own tuned learning rate."""
        from geomix_cli.cli import warning_line
        from geomix_cli.errors import InputError
        from geomix_cli.simulate import (SimulationConfig, shipped_pairs_path, simulate as run,
                                         total_steps)

        config = SimulationConfig(
            objectives=tuple(_split(objective)), samplers=tuple(_split(sampler)), budget=budget,
            samples_per_step=samples_per_step, seeds=seeds, tuning_seeds=tuning_seeds,
            lr_grid=_floats(lr_grid, "--lr-grid") if lr_grid else None, optimizer=optimizer,
            self_normalized=self_normalized, clip=clip, target_fraction=target_fraction,
            top_k=top_k, seed=seed, bootstrap=bootstrap).checked()
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
    tuning_runs = len(config.samplers) * len(config.grid) * config.tuning_seeds
    eval_runs = len(config.samplers) * config.seeds
    runs = max(tuning_runs, eval_runs)
    curves = (tuning_runs + eval_runs) * (config.steps + 1) * 8
    # the report's per-sampler curves (median and quartiles, and the CSV rows of curves.csv)
    report = len(config.objectives) * len(config.samplers) * (config.steps + 1) * 8 * 40
    per_step = 16 * runs * prompts * tokens * 8
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
                 f"{cfg.budget} per prompt, {cfg.seeds} evaluation seeds, lr grid "
                 f"{', '.join(f'{x:g}' for x in cfg.grid)} searched per sampler on "
                 f"{cfg.tuning_seeds} separate tuning seed(s); weights "
                 f"{'self-normalised' if cfg.self_normalized else 'plain'}"
                 f"{f', clipped at {cfg.clip:g}' if cfg.clip else ''}")
    for obj in cfg.objectives:
        lines.append(f"{obj}: initial KL {result.initial_kl[obj]:.4g}, target "
                     f"{result.threshold[obj]:.4g} ({cfg.target_fraction:g} x initial)")
    return "\n".join(lines)


def render(result) -> None:
    from rich.table import Table

    from geomix_cli.cli import stdout

    stdout.print(_header(result), highlight=False)
    for obj in result.config.objectives:
        table = Table(title=f"{obj} (medians over seeds, 95% bootstrap CI)", title_justify="left")
        for header in ("sampler", "lr", "samples to target", "reached", "final KL",
                       "speed-up vs on-policy", "mean α", "fallback"):
            table.add_column(header, justify="left" if header == "sampler" else "right")
        for r in (x for x in result.results if x.objective == obj):
            table.add_row(r.sampler, f"{r.lr:g}",
                          _samples(r.samples_to_threshold_median) + _samples_ci(r.samples_to_threshold_ci),
                          f"{100 * r.reached_fraction:.0f}%",
                          _num(r.final_kl_median, 4) + _ci(r.final_kl_ci),
                          _speedup(r), f"{r.mean_alpha:.3f}",
                          f"{100 * r.fallback_fraction:.1f}%")
        stdout.print(table)


def report_markdown(result) -> str:
    cfg = result.config
    out = ["# geomix simulate", "", "```", _header(result), "```", ""]
    out.append("Each sampler runs at its own learning rate, the best of the grid on separate "
               "tuning seeds (fewest samples to the target, then lowest final KL). 'not reached' "
               "runs are censored: they count as +inf in medians; speed-up CIs are conservative "
               "(see docs/simulate.md).")
    out.append("")
    for obj in cfg.objectives:
        out += [f"## {obj}", "",
                "| sampler | lr | samples to target [CI] | reached | final KL [CI] | "
                "speed-up vs on-policy [CI] | mean alpha | fallback |",
                "|---|---|---|---|---|---|---|---|"]
        for r in (x for x in result.results if x.objective == obj):
            out.append(f"| {r.sampler} | {r.lr:g} | {_samples(r.samples_to_threshold_median)}"
                       f"{_samples_ci(r.samples_to_threshold_ci)} | {100 * r.reached_fraction:.0f}% | "
                       f"{_num(r.final_kl_median, 4)}{_ci(r.final_kl_ci)} | {_speedup(r)} | "
                       f"{r.mean_alpha:.3f} | {100 * r.fallback_fraction:.1f}% |")
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
    for rec in payload["results"]:
        flat = {k: v for k, v in rec.items() if k not in ("tuning_score",)}
        for key in ("final_kl_ci", "samples_to_threshold_ci", "speedup_ci"):
            flat[f"{key}_low"], flat[f"{key}_high"] = flat.pop(key)
        flat["lr_grid"] = " ".join(f"{x:g}" for x in flat["lr_grid"])
        records.append(flat)
    curves = []
    for r in result.results:
        for x, med, lo, hi in zip(r.samples, r.curve_median, r.curve_low, r.curve_high):
            curves.append({"objective": r.objective, "sampler": r.sampler, "lr": r.lr,
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
