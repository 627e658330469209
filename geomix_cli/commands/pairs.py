"""`geomix pairs`: teacher-forced next-token logit pairs from two local causal language models."""

from __future__ import annotations

from typing import Optional

import typer

from geomix_cli.commands import _shared

ThetaOption = typer.Option(..., "--theta", help="The policy pi_theta: a local Hugging Face model "
                           "folder or a .gguf file (never downloaded).")
TargetOption = typer.Option(..., "--target", help="The target pi_t: a local model folder or "
                            ".gguf file (may be the same as --theta); same vocabulary as --theta.")
PromptsOption = typer.Option(..., "--prompts", help="JSONL: one object per line with 'prompt' "
                             "(text) or 'messages' (chat), optional 'completion' and 'id'.")
ThetaSystemOption = typer.Option(None, "--theta-system", help="System prompt for the theta side "
                                 "(replaces the chat's own).")
TargetSystemOption = typer.Option(None, "--target-system", help="System prompt for the target "
                                  "side (replaces the chat's own).")
TargetTemperatureOption = typer.Option(1.0, "--target-temperature", help="Divide the target's "
                                       "logits by this (pi_t = softmax(logits / T)).")
ChatOption = typer.Option(None, "--chat-template/--no-chat-template", help="Apply the tokenizer's "
                          "chat template (default: when it has one).")
SplitSpecialOption = typer.Option(False, "--split-special-tokens", help="Tokenize chat markup "
                                  "such as <|im_start|> as plain text (reproduces the shipped "
                                  "SmolLM2 sample; see docs/models.md).")
ModelDeviceOption = typer.Option("cpu", "--device", help="Run the models on cpu or cuda.")
ModelDtypeOption = typer.Option("float32", "--model-dtype", help="Weights' dtype: float32, "
                                "bfloat16 or float16.")
ThreadsOption = typer.Option(None, "--threads", help="torch CPU threads for the models "
                             "(default: torch's); on a machine busy with other jobs 1 can be "
                             "much faster.")
BatchSizeOption = typer.Option(8, "--batch-size", help="Prompts per forward pass (at most).")
MaxMemoryOption = typer.Option(None, "--max-memory", help="Budget for one forward pass's "
                               "temporaries (activations, kept logits), e.g. 512M or 2G "
                               "(default 1G); weights are extra.")


def register(app: typer.Typer) -> None:
    from geomix_cli.cli import guarded

    @app.command("pairs")
    @guarded
    def pairs(
        theta: str = ThetaOption,
        target: str = TargetOption,
        prompts: str = PromptsOption,
        out: str = typer.Option(..., "--out", "-o", help="Output file, .safetensors or .npz "
                                "(an existing file is replaced only with --force, never an "
                                "input)."),
        force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
        positions: str = typer.Option("last", "--positions", help="Rows per prompt: last (after "
                                      "the whole sequence), completion (one per completion "
                                      "token), all (every shared position)."),
        dtype: str = typer.Option("float32", "--dtype", help="Stored logits: float32, float16 or "
                                  "bfloat16 (bfloat16 in .safetensors only)."),
        theta_system: Optional[str] = ThetaSystemOption,
        target_system: Optional[str] = TargetSystemOption,
        target_temperature: float = TargetTemperatureOption,
        chat_template: Optional[bool] = ChatOption,
        split_special_tokens: bool = SplitSpecialOption,
        batch_size: int = BatchSizeOption,
        max_memory: Optional[str] = MaxMemoryOption,
        device: str = ModelDeviceOption,
        model_dtype: str = ModelDtypeOption,
        threads: Optional[int] = ThreadsOption,
        json_out: bool = _shared.JsonOption,
    ) -> None:
        """Next-token distribution pairs (pi_theta, pi_t) from two local models, by teacher forcing.

        Writes logits_theta, logits_t [B, T, V] (B prompts, T rows per prompt), attention_mask
        [B, T] and per-row labels (prompt id, position, next token); every other command reads
        the file: geomix solve / check / plot-pareto OUT. Exit codes: 0 done, 2 bad input (model
        path, vocabularies, prompts file, options), 5 models extra or CUDA not available."""
        import time

        from geomix_cli.commands._device import parse_memory
        from geomix_cli.errors import InputError
        from geomix_cli.io import check_pairs_output
        from geomix_cli.models.pairs import POSITIONS

        if positions not in POSITIONS:
            raise InputError(f"--positions must be one of {', '.join(POSITIONS)}, not "
                             f"'{positions}'")
        if batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {batch_size}")
        if threads is not None and threads < 1:
            raise InputError(f"--threads must be at least 1, got {threads}")
        if not target_temperature > 0 or target_temperature == float("inf"):
            raise InputError(f"--target-temperature must be a positive number, got "
                             f"{target_temperature}")
        budget = parse_memory(max_memory)
        check_pairs_output(out, inputs=(prompts, theta, target), force=force, dtype=dtype)
        loaded_theta, loaded_target, records = prepare(theta, target, prompts, device=device,
                                                       model_dtype=model_dtype, threads=threads)
        from geomix_cli.models.pairs import plan_pairs, write_pairs

        plans = plan_pairs(records, loaded_theta.tokenizer, loaded_target.tokenizer,
                           positions=positions, theta_system=theta_system,
                           target_system=target_system, chat=chat_template,
                           split_special_tokens=split_special_tokens)
        info = {"command": "pairs", "theta": theta, "target": target, "prompts": prompts,
                "positions": positions, "theta_system": theta_system,
                "target_system": target_system, "target_temperature": target_temperature,
                "chat_template": chat_template, "split_special_tokens": split_special_tokens,
                "model_dtype": model_dtype, "device": device}
        start = time.perf_counter()
        with progress_bar(f"pairs: {len(plans)} prompts") as advance:
            summary = write_pairs(out, loaded_theta, loaded_target, plans, dtype=dtype,
                                  batch_size=batch_size, max_memory=budget,
                                  target_temperature=target_temperature, info=info,
                                  progress=advance, threads=threads)
        from geomix_cli.cli import warning_line

        for line in summary.pop("warnings"):
            warning_line(line)
        summary.update({"schema_version": 1, "theta": theta, "target": target,
                        "positions": positions,
                        "load_seconds": {"theta": loaded_theta.load_seconds,
                                         "target": loaded_target.load_seconds
                                         if loaded_target is not loaded_theta else 0.0},
                        "total_seconds": time.perf_counter() - start,
                        "vocab_size": loaded_theta.vocab_size})
        if json_out:
            from geomix_cli.io import dumps_json

            typer.echo(dumps_json(summary))
        else:
            from geomix_cli.cli import stdout

            b, t, v = summary["shape"]
            stdout.print(f"wrote {out}: {summary['rows']} pair rows from {b} prompts "
                         f"([{b}, {t}, {v}] {dtype}, attention_mask marks real rows) in "
                         f"{summary['seconds']:.1f} s; next: geomix solve {out}",
                         highlight=False)


def prepare(theta: str, target: str, prompts: str, *, device: str, model_dtype: str,
            threads: Optional[int] = None):
    """Everything cheap checked first (prompts file, model paths, device, extra), then both models
    loaded (one load when --theta and --target are the same path). Returns (theta, target,
    records)."""
    from geomix_cli.backends import resolve_device
    from geomix_cli.models.loading import (import_transformers, load_pair, model_dtype as
                                           _dtype, resolve_model_path, torch_threads)
    from geomix_cli.models.prompts import read_prompts

    records = read_prompts(prompts)
    resolve_model_path(theta)
    resolve_model_path(target)
    import_transformers()
    resolve_device(device)
    _dtype(model_dtype)
    from geomix_cli.cli import stderr

    with stderr.status(f"loading {theta}" + (f" and {target}" if target != theta else "")), \
            torch_threads(threads):
        loaded_theta, loaded_target = load_pair(theta, target, device=device, dtype=model_dtype)
    return loaded_theta, loaded_target, records


class progress_bar:
    """A transient rich progress bar on stderr; yields `advance(done, total)`."""

    def __init__(self, label: str):
        self.label = label

    def __enter__(self):
        from rich.progress import Progress

        from geomix_cli.cli import stderr

        self.bar = Progress(console=stderr, transient=True)
        self.bar.__enter__()
        self.task = None

        def advance(done: int, total: int) -> None:
            if self.task is None:
                self.task = self.bar.add_task(self.label, total=total)
            self.bar.update(self.task, completed=done)

        return advance

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)
