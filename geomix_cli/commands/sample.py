"""`geomix sample`: generate from q* (and other samplers) with two local models; per-token records,
importance log-weights and sequence-level ESS per prompt and sampler, in a report folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from geomix_cli.commands import _shared
from geomix_cli.commands.pairs import (BatchSizeOption, ChatOption, ModelDeviceOption,
                                       ModelDtypeOption, PromptsOption, SplitSpecialOption,
                                       TargetOption, TargetSystemOption, TargetTemperatureOption,
                                       ThetaOption, ThetaSystemOption, ThreadsOption, prepare,
                                       progress_bar)

SAMPLE_SCHEMA = 1


def register(app: typer.Typer) -> None:
    from geomix_cli.cli import guarded

    @app.command("sample")
    @guarded
    def sample(
        theta: str = ThetaOption,
        target: str = TargetOption,
        prompts: str = PromptsOption,
        out: Optional[str] = typer.Option(None, "--out", "-o", help="Report folder: samples."
                                          "jsonl, tokens.csv, summary.json, report.md, figures "
                                          "(replaces only an empty folder or an earlier geomix "
                                          "report)."),
        sampler: list[str] = typer.Option(["kl-symmetry"], "--sampler", "-s", help="kl-symmetry, "
                                          "entropy, on-policy, off-policy or fixed:A; repeat or "
                                          "separate with commas to compare."),
        n: int = typer.Option(8, "--n", help="Sequences per prompt and sampler."),
        max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Tokens per sequence "
                                           "at most."),
        seed: int = typer.Option(0, "--seed", help="Seed of the draws (same options and seed: "
                                 "same samples)."),
        stop_at_eos: bool = typer.Option(True, "--stop-at-eos/--no-stop-at-eos",
                                         help="End a sequence at the end-of-sequence token."),
        theta_system: Optional[str] = ThetaSystemOption,
        target_system: Optional[str] = TargetSystemOption,
        target_temperature: float = TargetTemperatureOption,
        chat_template: Optional[bool] = ChatOption,
        split_special_tokens: bool = SplitSpecialOption,
        batch_size: int = typer.Option(16, "--batch-size", help="Sequences generated together "
                                       "(each step runs both models on the batch)."),
        device: str = ModelDeviceOption,
        model_dtype: str = ModelDtypeOption,
        threads: Optional[int] = ThreadsOption,
        json_out: bool = _shared.JsonOption,
    ) -> None:
        """Sample sequences token by token from q* (or another sampler) and measure the ESS balance.

        Each step runs both models (KV caches), solves alpha* exactly for every sequence of the
        batch, draws the next token from q_alpha and records alpha*, log pi_theta, log pi_t,
        log q, C and the token-level ESS of both sides. Per sequence: the importance
        log-weights; per prompt and sampler: the sequence-level ESS of both weight sets, also
        along the length. Exit codes: 0 done, 2 bad input, 5 models extra or CUDA missing."""
        from geomix_cli.errors import InputError
        from geomix_cli.models.qstar import parse_sampler

        samplers = [s.strip() for item in sampler for s in item.split(",") if s.strip()]
        labels = [parse_sampler(s).label for s in samplers]
        if len(set(labels)) != len(labels):
            raise InputError(f"--sampler: a sampler is given twice ({', '.join(labels)})")
        for name, value in (("--n", n), ("--max-new-tokens", max_new_tokens),
                            ("--batch-size", batch_size)):
            if value < 1:
                raise InputError(f"{name} must be at least 1, got {value}")
        if not target_temperature > 0 or target_temperature == float("inf"):
            raise InputError(f"--target-temperature must be a positive number, got "
                             f"{target_temperature}")
        if threads is not None and threads < 1:
            raise InputError(f"--threads must be at least 1, got {threads}")
        _shared.check_seed(seed)
        if out is not None:
            from geomix_cli.io import prepare_report_dir

            prepare_report_dir(out, command="sample", inputs=(prompts, theta, target))
        loaded_theta, loaded_target, records = prepare(theta, target, prompts, device=device,
                                                       model_dtype=model_dtype, threads=threads)
        from geomix_cli.models.sampling import generate, sequence_statistics

        total = len(records) * len(labels) * n
        with progress_bar(f"sample: {total} sequences") as advance:
            run = generate(loaded_theta, loaded_target, records, samplers=labels, n=n,
                           max_new_tokens=max_new_tokens, theta_system=theta_system,
                           target_system=target_system, chat=chat_template,
                           split_special_tokens=split_special_tokens,
                           target_temperature=target_temperature, seed=seed,
                           batch_size=batch_size, stop_at_eos=stop_at_eos, progress=advance,
                           threads=threads)
        statistics = sequence_statistics(run)
        summary = build_summary(run, statistics, theta=theta, target=target, prompts=prompts,
                                loaded=(loaded_theta, loaded_target),
                                options={"device": device, "model_dtype": model_dtype,
                                         "threads": threads,
                                         "chat_template": chat_template,
                                         "split_special_tokens": split_special_tokens})
        if out is not None:
            write_sample_report(run, statistics, summary, loaded_theta.tokenizer, out)
            summary["report_dir"] = out
        other = {k: v for k, v in statistics["alpha_star_status_counts"].items() if k != "ok"}
        if other:
            from geomix_cli.cli import warning_line

            warning_line("tokens drawn where alpha* does not exist (their q is the documented "
                         f"stand-in): {', '.join(f'{k} {v}' for k, v in other.items())}")
        stuck = statistics["sequences_without_q"]
        if stuck:
            from geomix_cli.cli import warning_line

            warning_line(f"{len(stuck)} sequence(s) ended early with no q to sample from (the "
                         "others went on; end_message in samples.jsonl says why), first: "
                         f"{stuck[0]['sampler']}, {stuck[0]['prompt']} #{stuck[0]['sample']}: "
                         f"{stuck[0]['message']}")
        if json_out:
            from geomix_cli.io import dumps_json

            typer.echo(dumps_json(summary))
        else:
            render(summary, out)


def build_summary(run, statistics: dict, *, theta: str, target: str, prompts: str, loaded,
                  options: dict) -> dict:
    loaded_theta, loaded_target = loaded
    tokens = int(run.length.sum())
    seconds = dict(run.seconds)
    seconds["load"] = loaded_theta.load_seconds + (
        loaded_target.load_seconds if loaded_target is not loaded_theta else 0.0)
    return {"schema_version": SAMPLE_SCHEMA, "command": "sample", "theta": theta,
            "target": target, "prompts": prompts, "samplers": run.samplers,
            "prompt_ids": run.prompt_ids, **run.config, **options,
            "models": {"theta": loaded_theta.info, "target": loaded_target.info},
            "sequences": run.n_rows, "tokens": tokens, "seconds": seconds,
            "tokens_per_second": tokens / seconds["total"] if seconds["total"] > 0 else None,
            "statistics": statistics}


def _records(run, tokenizer):
    """One dict per sequence (samples.jsonl) and one per token (tokens.csv)."""
    from geomix_cli.models.sampling import TOKEN_FIELDS

    log_w_theta, log_w_t = run.log_weights()
    sequences, tokens = [], []
    for r in range(run.n_rows):
        length = int(run.length[r])
        ids = run.tokens[r, :length].tolist()
        texts = [tokenizer.decode([t]) for t in ids]
        seq = {"sampler": run.samplers[int(run.row_sampler[r])],
               "prompt": run.prompt_ids[int(run.row_prompt[r])],
               "sample": int(run.row_sample[r]), "text": tokenizer.decode(ids),
               "length": length, "ended_by_eos": bool(run.ended_by_eos[r]),
               "end_reason": str(run.end_reason[r]), "end_message": str(run.end_message[r]),
               "log_w_theta": float(log_w_theta[r]), "log_w_target": float(log_w_t[r]),
               "tokens": ids, "token_text": texts}
        for name in TOKEN_FIELDS:
            seq[name] = run.fields[name][r, :length]
        seq["status"] = [str(s) for s in run.status[r, :length]]
        sequences.append(seq)
        for step in range(length):
            row = {"sampler": seq["sampler"], "prompt": seq["prompt"], "sample": seq["sample"],
                   "step": step, "token": ids[step], "token_text": texts[step]}
            for name in TOKEN_FIELDS:
                row[name] = float(run.fields[name][r, step])
            row["status"] = seq["status"][step]
            tokens.append(row)
    return sequences, tokens


def write_sample_report(run, statistics: dict, summary: dict, tokenizer, out) -> Path:
    """samples.jsonl, tokens.csv, summary.json, report.md and three figures, built aside and
    swapped in (io.atomic_directory)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from geomix_cli.io import (atomic_directory, dumps_json, save_figure_atomic,
                               write_csv_atomic, write_json_atomic, write_text_atomic)
    from geomix_cli.plots_sample import (alpha_along_sequence_figure, ess_vs_length_figure,
                                         log_weight_figure)

    sequences, tokens = _records(run, tokenizer)
    figures = [("alpha_along_sequence.png", lambda: alpha_along_sequence_figure(run),
                "α* of the pair at each generated token, per sampler"),
               ("log_weights.png", lambda: log_weight_figure(run),
                "Sequence importance log-weights log w_θ and log w_t per sampler"),
               ("ess_vs_length.png", lambda: ess_vs_length_figure(statistics),
                "Sequence-level ESS of both weight sets and their balance vs length")]
    with atomic_directory(out, command="sample") as staging:
        write_text_atomic(staging / "samples.jsonl",
                          "".join(dumps_json(s, indent=None) + "\n" for s in sequences))
        write_csv_atomic(staging / "tokens.csv", pd.DataFrame(tokens))
        write_json_atomic(staging / "summary.json", summary)
        for name, make, _caption in figures:
            fig = make()
            try:
                save_figure_atomic(fig, staging / name)
            finally:
                plt.close(fig)
        write_text_atomic(staging / "report.md", report_markdown(summary, sequences, figures))
    return Path(out)


def report_markdown(summary: dict, sequences: list[dict], figures) -> str:
    from geomix_cli.reports import markdown_table

    stats = summary["statistics"]
    band = stats["band"]
    lines = [f"# sample: q* sampling with `{summary['theta']}` / `{summary['target']}`\n",
             f"{summary['sequences']} sequences ({summary['n']} per prompt and sampler, "
             f"{len(summary['prompt_ids'])} prompts, at most {summary['max_new_tokens']} new "
             f"tokens, seed {summary['seed']}), {summary['tokens']} tokens in "
             f"{summary['seconds']['total']:.1f} s ({summary['tokens_per_second'] or 0:.1f} "
             f"tokens/s; models loaded in {summary['seconds']['load']:.1f} s). Theta system "
             f"prompt: {summary['theta_system']!r}; target system prompt: "
             f"{summary['target_system']!r}; target temperature "
             f"{summary['target_temperature']:g}.\n",
             "Per token, alpha* solves KL(q||π_θ) = KL(q||π_t) exactly (float64) for the pair of "
             "next-token distributions; each sampler draws from its own q_α (kl-symmetry: α*). "
             "Per sequence, log w_θ = Σ log π_θ(y)/q(y) and log w_t = Σ log π_t(y)/q(y) are exact "
             "likelihood ratios of the whole sequence (E_q[w] = 1). Sequence-level ESS = "
             "Kish's (Σw)² / (n Σw²) over the n sequences of a prompt (in (0, 1]); it estimates "
             "1 / E_q[w²], the token-level ESS_π(q) = 1 / Σ π²/q carried to sequences "
             "(`ess_*_unnormalized` = 1 / mean(w²) is the same target without "
             "self-normalising); `mean_w` far below 1 means the sample has not reached the "
             "weights' tail (the ESS is then optimistic). Files: [samples.jsonl](samples.jsonl) (per sequence, with per-token "
             "arrays), [tokens.csv](tokens.csv), [summary.json](summary.json).\n",
             "## Per sampler\n",
             f"Balance = max(ESS_θ, ESS_t) / min(...) <= {band:g} (the derivation's 10%), at "
             "token level (each token's q) and at sequence level (each prompt).\n",
             markdown_table(stats["samplers"]),
             "\n## Per prompt\n",
             markdown_table(stats["per_prompt"], columns=[
                 "sampler", "prompt", "n", "mean_length", "ess_theta", "ess_target",
                 "ess_ratio", "within_band", "ess_theta_unnormalized",
                 "ess_target_unnormalized", "mean_w_theta",
                 "mean_w_target", "token_ess_ratio_median"], max_rows=200),
             "\n## Balance along the length\n",
             markdown_table(_thin(stats["along_length"]), max_rows=120),
             f"\nalpha* statuses of the drawn tokens: "
             + ", ".join(f"{k} {v}" for k, v in stats["alpha_star_status_counts"].items())
             + ". How the sequences ended: "
             + ", ".join(f"{k} {v}" for k, v in stats["end_reason_counts"].items())
             + (" (no-q: no q to sample from at the next token, see below; that sequence ended "
                "there and the others went on)" if stats["sequences_without_q"] else "")
             + ".\n"]
    if stats["sequences_without_q"]:
        lines.append("\n" + markdown_table(stats["sequences_without_q"], max_rows=50))
    for name, _make, caption in figures:
        lines.append(f"\n![{caption}]({name})\n\n*{caption}.*\n")
    lines.append("\n## Example sequences\n")
    for seq in sequences[:: max(1, len(sequences) // 8)][:8]:
        text = seq["text"].replace("\n", " ").replace("|", "\\|")
        lines.append(f"- {seq['sampler']}, {seq['prompt']} #{seq['sample']} (log w_θ "
                     f"{seq['log_w_theta']:.3g}, log w_t {seq['log_w_target']:.3g}): {text}")
    return "\n".join(lines) + "\n"


def _thin(rows: list[dict], keep: int = 12) -> list[dict]:
    """At most `keep` lengths per sampler (always the first and the last)."""
    out = []
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        mine = [r for r in rows if r["sampler"] == sampler]
        step = max(1, len(mine) // keep)
        picked = mine[::step]
        if picked[-1] is not mine[-1]:
            picked.append(mine[-1])
        out.extend(picked)
    return out


def render(summary: dict, out: Optional[str]) -> None:
    """Summary first (what ran, how fast, where the report is), then one row per sampler
    (the shared renderer: compact columns on a narrow terminal)."""
    from geomix_cli.cli import stdout
    from geomix_cli.commands import _render

    stats = summary["statistics"]
    seconds = summary["seconds"]
    facts = [("ran", f"{_render.fmt_count(summary['sequences'])} sequences, "
                     f"{_render.fmt_count(summary['tokens'])} tokens, "
                     f"{len(summary['prompt_ids'])} prompts x {len(summary['samplers'])} "
                     f"sampler(s) x {summary['n']}"),
             ("time", f"{seconds['total']:.1f} s ({_render.fmt_num(summary['tokens_per_second'])}"
                      f" tokens/s), models loaded in {seconds['load']:.1f} s"),
             ("alpha* statuses", ", ".join(f"{k} {v}" for k, v in
                                           stats["alpha_star_status_counts"].items())),
             ("ended", ", ".join(f"{k} {v}" for k, v in stats["end_reason_counts"].items()))]
    if out:
        facts.append(("report", f"{out}/report.md"))
    _render.print_summary("sample: ESS balance at token and sequence level (within "
                          f"{stats['band'] - 1:.0%})", facts)
    rows = stats["samplers"]
    columns = [
        _render.Column("sampler", lambda i: rows[i]["sampler"], justify="left"),
        _render.Column("mean α", lambda i: _render.fmt_alpha(rows[i]["alpha_mean"])),
        _render.Column("token ESS_θ", lambda i: _render.fmt_num(rows[i]["token_ess_theta_mean"]),
                       compact=False),
        _render.Column("token ESS_t", lambda i: _render.fmt_num(rows[i]["token_ess_target_mean"]),
                       compact=False),
        _render.Column("tokens within", lambda i: _render.fmt_pct(
            rows[i]["token_fraction_within_band"])),
        _render.Column("seq. ESS_θ", lambda i: _render.fmt_num(
            rows[i]["sequence_ess_theta_median"])),
        _render.Column("seq. ESS_t", lambda i: _render.fmt_num(
            rows[i]["sequence_ess_target_median"])),
        _render.Column("prompts within", lambda i: _render.fmt_pct(
            rows[i]["sequence_fraction_within_band"])),
    ]
    _render.print_rows(columns, len(rows), title="per sampler (token ESS: mean over tokens; "
                       "sequence ESS: median over prompts)")
    stdout.print("--json gives every number; the report has them per prompt and along the "
                 "length", highlight=False)
