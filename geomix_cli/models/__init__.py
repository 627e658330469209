"""Real causal language models in, q* out (the `models` extra: transformers, accelerate, gguf).

Nothing here is imported by `geomix_cli.core`, by the other commands or by
`import geomix_cli.models` itself: transformers and torch are imported inside the functions that need them, so this package
can be imported (and its prompt parsing used) without the extra. Submodules:

- `loading`: local model folders and .gguf files (never the network), the shared-vocabulary check,
  the shipped SmolLM2-135M GGUF (`shipped_smollm2_gguf`).
- `prompts`: the prompts JSONL (`prompt` or chat `messages`, optional `completion`), rendered with
  the chat template per side (`--theta-system`, `--target-system`).
- `pairs`: teacher-forced next-token logit pairs, batched under a memory budget (`geomix pairs`).
- `qstar`: (policy logits, target logits) -> q* logits with per-row alpha*: a plain function and a
  transformers `LogitsProcessor`.
- `sampling`: token-by-token generation from q* (and other samplers) with both models' KV caches,
  per-token records, importance log-weights, sequence-level ESS (`geomix sample`).
- `evidence`: the verify-suite evidence for the claim `sequence-ess-balance`.
"""

from __future__ import annotations

__all__ = ["loading", "prompts", "pairs", "qstar", "sampling", "evidence"]
