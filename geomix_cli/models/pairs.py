"""Teacher-forced next-token logit pairs from two causal LMs (`geomix pairs`).

For every prompt, each side's sequence is its own context (its chat template, its system prompt)
followed by the same completion tokens. One forward pass per side (teacher forcing) gives the
next-token logits at every position; the rows kept are

- `last`: the position after the whole sequence (the next token after the completion, or after
  the prompt when there is no completion): one row per prompt;
- `completion`: the positions that predict each completion token (row k predicts completion token
  k, which is recorded as the row's `next_token`): one row per completion token;
- `all`: every position of the longest token suffix the two sequences share (the whole sequence
  when both sides have the same context; otherwise the user turn and the completion), aligned from
  the end, so that both sides condition on the same continuation at every row.

Rows are computed in batches of prompts, right-padded, with only the kept positions' logits
materialised (`logits_to_keep`), under a memory budget; the logits are passed on row by row (to a
streamed file writer), so the output never has to fit in memory.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from geomix_cli.errors import InputError
from geomix_cli.models.loading import threads_scoped
from geomix_cli.models.prompts import (PromptRecord, encode_both, encode_completion,
                                       token_text)

POSITIONS = ("last", "completion", "all")
DEFAULT_MAX_MEMORY = 1 << 30


@dataclass
class PairPlan:
    """Where one prompt's pair rows come from: the two token sequences and, per row, the index of
    the position in each sequence and the token that follows it there (-1: none)."""

    record: PromptRecord
    theta_ids: list[int]
    target_ids: list[int]
    theta_index: np.ndarray
    target_index: np.ndarray
    next_token: np.ndarray

    @property
    def n_rows(self) -> int:
        return int(self.theta_index.size)


def common_suffix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(reversed(a), reversed(b)):
        if x != y:
            break
        n += 1
    return n


def plan_pairs(records: list[PromptRecord], theta_tokenizer, target_tokenizer, *,
               positions: str = "last", theta_system: str | None = None,
               target_system: str | None = None, chat: bool | None = None,
               split_special_tokens: bool = False) -> list[PairPlan]:
    """Token sequences and kept positions for every prompt (no model is run)."""
    if positions not in POSITIONS:
        raise InputError(f"--positions must be one of {', '.join(POSITIONS)}, not '{positions}'")
    plans = []
    for record in records:
        theta_ctx, target_ctx = encode_both(record, theta_tokenizer, target_tokenizer,
                                            theta_system=theta_system,
                                            target_system=target_system, chat=chat,
                                            split_special_tokens=split_special_tokens)
        completion = encode_completion(theta_tokenizer, record,
                                       split_special_tokens=split_special_tokens)
        theta_ids, target_ids = theta_ctx + completion, target_ctx + completion
        c = len(completion)
        if positions == "last":
            ti, gi, nxt = [len(theta_ids) - 1], [len(target_ids) - 1], [-1]
        elif positions == "completion":
            ti = [len(theta_ctx) - 1 + k for k in range(c)]
            gi = [len(target_ctx) - 1 + k for k in range(c)]
            nxt = completion
        else:
            s = common_suffix_length(theta_ids, target_ids)
            ti = [len(theta_ids) - s + k for k in range(s)]
            gi = [len(target_ids) - s + k for k in range(s)]
            nxt = [theta_ids[i + 1] if i + 1 < len(theta_ids) else -1 for i in ti]
        plans.append(PairPlan(record=record, theta_ids=theta_ids, target_ids=target_ids,
                              theta_index=np.asarray(ti, dtype=np.int64),
                              target_index=np.asarray(gi, dtype=np.int64),
                              next_token=np.asarray(nxt, dtype=np.int64)))
    return plans


# ----------------------------------------------------------------------------------------------
# memory budget


def _config_sizes(model) -> dict:
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    hidden = int(getattr(config, "hidden_size", 0) or 1024)
    return {"hidden": hidden,
            "intermediate": int(getattr(config, "intermediate_size", 0) or 4 * hidden),
            "heads": int(getattr(config, "num_attention_heads", 0) or 16)}


def forward_bytes(model, *, batch: int, seq_len: int, kept: int, vocab: int) -> int:
    """Estimated peak temporaries of one no-grad forward of `batch` sequences of `seq_len` tokens
    keeping `kept` logit positions per sequence (weights not included): float32 logits three
    times (output, widened copy, the rows handed on), one layer's activations (attention
    projections, MLP), the attention scores and mask."""
    s = _config_sizes(model)
    logits = 3 * batch * kept * vocab * 4
    layer = batch * seq_len * (6 * s["hidden"] + 3 * s["intermediate"]) * 4
    attention = batch * (s["heads"] + 1) * seq_len * seq_len * 4
    return int(logits + layer + attention)


def batch_plan(lengths: list[int], kept: list[int], *, batch_size: int, budget: int, model,
               vocab: int) -> list[list[int]]:
    """Groups of prompt indices, longest first, each within `batch_size` and the memory budget
    (a single sequence over budget runs alone)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups, current = [], []
    for i in order:
        trial = current + [i]
        need = forward_bytes(model, batch=len(trial), seq_len=max(lengths[j] for j in trial),
                             kept=max(kept[j] for j in trial) if trial else 1, vocab=vocab)
        if current and (len(trial) > batch_size or need > budget):
            groups.append(current)
            current = [i]
        else:
            current = trial
    if current:
        groups.append(current)
    return groups


# ----------------------------------------------------------------------------------------------
# forward passes


def kept_logits(loaded, sequences: list[list[int]], indices: list[np.ndarray]) -> list:
    """Float32 logits [len(indices[i]), V] (torch, on CPU) at the given positions of each sequence:
    one right-padded forward pass over the batch, materialising only the needed positions."""
    import torch

    from geomix_cli.models.loading import accepts_logits_to_keep

    model = loaded.model
    device = loaded.device
    length = max(len(s) for s in sequences)
    pad = 0
    ids = torch.full((len(sequences), length), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = 1
    wanted = np.unique(np.concatenate([np.asarray(i, dtype=np.int64) for i in indices]
                                      + [np.zeros(0, dtype=np.int64)]))
    kwargs = {}
    if wanted.size and accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = torch.as_tensor(wanted, device=device)
        column = {int(p): k for k, p in enumerate(wanted)}
    else:
        column = None
    with torch.inference_mode():
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False,
                    **kwargs)
        logits = out.logits
        if column is not None and logits.shape[1] != wanted.size:
            # a model that reads logits_to_keep differently: run it again keeping everything
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                        use_cache=False)
            logits, column = out.logits, None
        rows = []
        for row, idx in enumerate(indices):
            cols = [column[int(p)] for p in idx] if column is not None else [int(p) for p in idx]
            rows.append(logits[row, cols].float().cpu())
    return rows


@dataclass
class ExtractionStats:
    prompts: int = 0
    rows: int = 0
    tokens_forwarded: int = 0
    forward_seconds: float = 0.0
    batches: int = 0
    largest_batch_bytes: int = 0
    warnings: list[str] = field(default_factory=list)


@threads_scoped
def extract_pairs(theta, target, plans: list[PairPlan], *, on_rows, batch_size: int = 8,
                  max_memory: int | None = None, target_temperature: float = 1.0,
                  progress=None) -> ExtractionStats:
    """Run both models over every plan and hand each prompt's rows to
    `on_rows(prompt_index, theta_logits [n, V], target_logits [n, V])` (float32 numpy; the target
    logits divided by `target_temperature`). `progress(done_prompts, total)` is called after each
    batch. threads: torch CPU threads during the run (None: unchanged). Returns counts and
    timings."""
    if not (target_temperature > 0 and math.isfinite(target_temperature)):
        raise InputError(f"--target-temperature must be a positive number, got "
                         f"{target_temperature}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    budget = int(max_memory) if max_memory else DEFAULT_MAX_MEMORY
    stats = ExtractionStats()
    lengths = [max(len(p.theta_ids), len(p.target_ids)) for p in plans]
    kept = [max(1, p.n_rows) for p in plans]
    vocab = theta.vocab_size
    groups = batch_plan(lengths, kept, batch_size=batch_size, budget=budget, model=theta.model,
                        vocab=vocab)
    done = 0
    for group in groups:
        need = forward_bytes(theta.model, batch=len(group),
                             seq_len=max(lengths[i] for i in group),
                             kept=max(kept[i] for i in group), vocab=vocab)
        stats.largest_batch_bytes = max(stats.largest_batch_bytes, need)
        if need > budget:
            stats.warnings.append(f"prompt {plans[group[0]].record.id!r} alone needs about "
                                  f"{need / 2**20:.0f} MiB, over the --max-memory budget of "
                                  f"{budget / 2**20:.0f} MiB; it ran anyway")
        live = [i for i in group if plans[i].n_rows]
        start = time.perf_counter()
        if live:
            theta_rows = kept_logits(theta, [plans[i].theta_ids for i in live],
                                     [plans[i].theta_index for i in live])
            target_rows = kept_logits(target, [plans[i].target_ids for i in live],
                                      [plans[i].target_index for i in live])
        stats.forward_seconds += time.perf_counter() - start
        stats.batches += 1
        results = dict(zip(live, zip(theta_rows, target_rows))) if live else {}
        for i in group:
            plan = plans[i]
            stats.tokens_forwarded += len(plan.theta_ids) + len(plan.target_ids)
            if i in results:
                a, b = results[i]
                b = b / target_temperature if target_temperature != 1.0 else b
                on_rows(i, a.numpy(), b.numpy())
            else:
                on_rows(i, np.zeros((0, vocab), np.float32), np.zeros((0, vocab), np.float32))
            stats.rows += plan.n_rows
            stats.prompts += 1
        done += len(group)
        if progress is not None:
            progress(done, len(plans))
    return stats


# ----------------------------------------------------------------------------------------------
# the whole job: plans -> streamed file


def row_label(plan: PairPlan, k: int, tokenizer) -> str:
    nxt = int(plan.next_token[k])
    after = f"next {token_text(tokenizer, nxt)!r}" if nxt >= 0 else "next: (end)"
    return f"{plan.record.id} | pos {int(plan.theta_index[k])} | {after}"


def write_pairs(path, theta, target, plans: list[PairPlan], *, dtype: str = "float32",
                batch_size: int = 8, max_memory: int | None = None,
                target_temperature: float = 1.0, info: dict | None = None,
                progress=None, threads: int | None = None) -> dict:
    """Extract every plan's pairs and stream them into a `[B, T, V]` pairs file at `path`
    (.safetensors or .npz; written atomically). B = prompts, T = the most rows of any prompt;
    `attention_mask` [B, T] marks real rows. Also stored: `position` / `position_target` (index of
    the row's position in each side's sequence, -1 padded), `next_token` (-1 none or padded),
    `prompt_line` [B], and `meta` (one label per [b, t]). Returns a JSON-ready summary."""
    from geomix_cli.io import PairsFileWriter

    n_prompts = len(plans)
    width = max(p.n_rows for p in plans)
    if width == 0:
        raise InputError("no pair rows: with --positions completion every prompt needs a "
                         "'completion'")
    vocab = theta.vocab_size
    shape = (n_prompts, width, vocab)
    mask = np.zeros((n_prompts, width), dtype=np.int64)
    position = np.full((n_prompts, width), -1, dtype=np.int64)
    position_t = np.full((n_prompts, width), -1, dtype=np.int64)
    next_token = np.full((n_prompts, width), -1, dtype=np.int64)
    meta = [""] * (n_prompts * width)
    for b, plan in enumerate(plans):
        n = plan.n_rows
        mask[b, :n] = 1
        position[b, :n] = plan.theta_index
        position_t[b, :n] = plan.target_index
        next_token[b, :n] = plan.next_token
        for k in range(n):
            meta[b * width + k] = row_label(plan, k, theta.tokenizer)
    arrays = {"attention_mask": mask, "position": position, "position_target": position_t,
              "next_token": next_token,
              "prompt_line": np.asarray([p.record.line for p in plans], dtype=np.int64)}
    info = dict(info or {})
    info["prompt_ids"] = [p.record.id for p in plans]
    empty = [p.record.id for p in plans if p.n_rows == 0]
    start = time.perf_counter()
    with PairsFileWriter(path, shape=shape, dtype=dtype, arrays=arrays, meta=meta,
                         info=info) as writer:
        stats = extract_pairs(theta, target, plans,
                              on_rows=lambda b, a, t: writer.write_row(b, a, t),
                              batch_size=batch_size, max_memory=max_memory,
                              target_temperature=target_temperature, progress=progress,
                              threads=threads)
        writer.commit()
    seconds = time.perf_counter() - start
    if empty:
        stats.warnings.append(f"{len(empty)} prompt(s) gave no rows (no completion): "
                              f"{', '.join(repr(e) for e in empty[:5])}")
    return {"out": str(path), "shape": list(shape), "dtype": dtype, "rows": stats.rows,
            "prompts": n_prompts, "batches": stats.batches,
            "tokens_forwarded": stats.tokens_forwarded,
            "forward_seconds": stats.forward_seconds, "seconds": seconds,
            "largest_batch_bytes_estimate": stats.largest_batch_bytes,
            "warnings": stats.warnings}
