"""The models layer on tiny random-initialised models: teacher-forced pairs, the q* function and
LogitsProcessor, KV-cache generation, sampling frequencies and the per-token records."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from numpy.testing import assert_allclose

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from _tiny_models import save_tiny_model, words  # noqa: E402
from conftest import reference_alpha_brentq  # noqa: E402

from geomix_cli.errors import InputError  # noqa: E402

pytestmark = pytest.mark.models

PROMPTS = [
    {"id": "a", "prompt": "w5 w6", "completion": "w7 w8 w9"},
    {"id": "b", "prompt": "w10", "completion": "w11"},
    {"id": "c", "messages": [{"role": "user", "content": "w12 w13 w14 w15"},
                             {"role": "assistant", "content": "w16 w17"}]},
    {"id": "d", "prompt": "w18 w19 w20"},
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"theta": save_tiny_model(root / "theta", seed=0),
            "target": save_tiny_model(root / "target", seed=1),
            "other_vocab": save_tiny_model(root / "other", seed=2, vocab_words=words(33)),
            "plain": save_tiny_model(root / "plain", seed=3, chat_template=False)}


@pytest.fixture(scope="module")
def loaded(folders):
    from geomix_cli.models.loading import load_model

    return {name: load_model(str(path)) for name, path in folders.items()
            if name in ("theta", "target")}


@pytest.fixture(scope="module")
def records():
    from geomix_cli.models.prompts import parse_prompts

    return parse_prompts("\n".join(json.dumps(p) for p in PROMPTS), "prompts.jsonl")


def full_logits(loaded_model, ids) -> np.ndarray:
    """Plain forward pass over one sequence (no padding, no batching), float64 [L, V]."""
    with torch.no_grad():
        out = loaded_model.model(torch.as_tensor([ids]))
    return out.logits[0].double().numpy()


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------------------------------------
# teacher-forced pairs


@pytest.mark.parametrize("positions", ["last", "completion", "all"])
def test_pairs_equal_a_plain_forward_pass(loaded, records, positions):
    from geomix_cli.models.pairs import extract_pairs, plan_pairs

    theta, target = loaded["theta"], loaded["target"]
    plans = plan_pairs(records, theta.tokenizer, target.tokenizer, positions=positions,
                       target_system="w3 w4")
    got = {}
    extract_pairs(theta, target, plans, batch_size=3,
                  on_rows=lambda b, a, t: got.__setitem__(b, (a, t)))
    assert sorted(got) == list(range(len(plans)))
    for b, plan in enumerate(plans):
        a, t = got[b]
        assert a.shape == (plan.n_rows, theta.vocab_size)
        ref_a = full_logits(theta, plan.theta_ids)[plan.theta_index]
        ref_t = full_logits(target, plan.target_ids)[plan.target_index]
        assert_allclose(a, ref_a, rtol=1e-5, atol=1e-5)
        assert_allclose(t, ref_t, rtol=1e-5, atol=1e-5)
        # both sides condition on the same token at every row, and next_token follows it
        assert [plan.theta_ids[i] for i in plan.theta_index] == [
            plan.target_ids[i] for i in plan.target_index]
        for k, i in enumerate(plan.theta_index):
            nxt = plan.theta_ids[i + 1] if i + 1 < len(plan.theta_ids) else -1
            assert plan.next_token[k] == nxt
    counts = [p.n_rows for p in plans]
    if positions == "last":
        assert counts == [1, 1, 1, 1]
    elif positions == "completion":
        assert counts == [3, 1, 2, 0]
        assert [theta.tokenizer.decode([int(t)]) for t in plans[0].next_token] == ["w7", "w8",
                                                                                    "w9"]
    else:  # only the target has a system prompt: theta's whole sequence is the shared suffix
        for p in plans:
            assert p.n_rows == len(p.theta_ids) < len(p.target_ids)
            assert list(p.target_index) == list(range(len(p.target_ids) - p.n_rows,
                                                      len(p.target_ids)))


def test_batching_and_memory_budget_change_nothing(loaded, records):
    from geomix_cli.models.pairs import batch_plan, extract_pairs, plan_pairs

    theta = loaded["theta"]
    plans = plan_pairs(records, theta.tokenizer, theta.tokenizer, positions="all")
    runs = []
    for batch_size, budget in ((1, None), (4, None), (4, 1)):
        got = {}
        extract_pairs(theta, theta, plans, batch_size=batch_size, max_memory=budget,
                      on_rows=lambda b, a, t: got.__setitem__(b, a))
        runs.append(got)
    for b in range(len(plans)):
        assert_allclose(runs[1][b], runs[0][b], rtol=1e-5, atol=1e-5)
        assert_allclose(runs[2][b], runs[0][b], rtol=1e-5, atol=1e-5)
    lengths = [len(p.theta_ids) for p in plans]
    groups = batch_plan(lengths, [p.n_rows for p in plans], batch_size=4, budget=1,
                        model=theta.model, vocab=theta.vocab_size)
    assert sorted(len(g) for g in groups) == [1, 1, 1, 1]
    assert sorted(i for g in groups for i in g) == [0, 1, 2, 3]
    groups = batch_plan(lengths, [p.n_rows for p in plans], batch_size=3, budget=1 << 30,
                        model=theta.model, vocab=theta.vocab_size)
    assert [len(g) for g in groups] == [3, 1]
    assert lengths[groups[1][0]] == min(lengths)  # longest first


def test_target_temperature_divides_the_target_logits(loaded, records):
    from geomix_cli.models.pairs import extract_pairs, plan_pairs

    theta = loaded["theta"]
    plans = plan_pairs(records[:2], theta.tokenizer, theta.tokenizer, positions="last")
    got = {}
    extract_pairs(theta, theta, plans, target_temperature=0.6,
                  on_rows=lambda b, a, t: got.__setitem__(b, (a, t)))
    for a, t in got.values():
        assert_allclose(t, a / 0.6, rtol=1e-6)


def test_raw_prompts_without_chat_template(folders, records):
    from geomix_cli.models.loading import load_model
    from geomix_cli.models.pairs import plan_pairs

    plain = load_model(str(folders["plain"]))
    raw = [r for r in records if r.prompt is not None]
    plans = plan_pairs(raw, plain.tokenizer, plain.tokenizer, positions="last")
    assert plans[0].theta_ids == plain.tokenizer("w5 w6")["input_ids"] + plain.tokenizer(
        "w7 w8 w9", add_special_tokens=False)["input_ids"]
    with pytest.raises(InputError, match="need a chat template"):
        plan_pairs(raw, plain.tokenizer, plain.tokenizer, target_system="w3")
    with pytest.raises(InputError, match="is a chat"):
        plan_pairs(records, plain.tokenizer, plain.tokenizer)


# ----------------------------------------------------------------------------------------------
# files written by the streamed writer, read by every command


@pytest.mark.parametrize("suffix, dtype", [(".safetensors", "float32"),
                                           (".safetensors", "bfloat16"),
                                           (".safetensors", "float16"), (".npz", "float16"),
                                           (".npz", "float32")])
def test_pairs_file_round_trip(loaded, records, tmp_path, suffix, dtype):
    from geomix_cli.io import load_source
    from geomix_cli.models.pairs import extract_pairs, plan_pairs, write_pairs

    theta, target = loaded["theta"], loaded["target"]
    plans = plan_pairs(records, theta.tokenizer, target.tokenizer, positions="completion")
    out = tmp_path / f"pairs{suffix}"
    summary = write_pairs(out, theta, target, plans, dtype=dtype, batch_size=2)
    assert summary["shape"] == [4, 3, theta.vocab_size] and summary["rows"] == 6
    assert not list(tmp_path.glob(".*"))  # no temporary left behind
    got = {}  # the same batches as the file's, so the float32 logits are the same bits
    extract_pairs(theta, target, plans, batch_size=2,
                  on_rows=lambda b, a, t: got.__setitem__(b, (a, t)))
    expected_theta = np.concatenate([got[b][0] for b in range(4)])
    stored = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    expected_theta = torch.from_numpy(expected_theta).to(stored[dtype]).double().numpy()
    source = load_source(str(out))
    assert source.n_rows == 6 and source.extra["padded_rows_dropped"] == 6
    assert source.storage_dtype == dtype
    assert_allclose(source.log_pi_theta, log_softmax(expected_theta), rtol=0, atol=1e-12)
    assert source.meta[0] == "a | pos 4 | next 'w7'"  # <|user|> w5 w6 <|end|> <|asst|>
    assert [tuple(p) for p in source.extra["positions"][:4]] == [(0, 0), (0, 1), (0, 2), (1, 0)]


def test_pairs_writer_leaves_nothing_on_failure(loaded, records, tmp_path):
    from geomix_cli.models.pairs import plan_pairs, write_pairs

    theta = loaded["theta"]
    plans = plan_pairs(records, theta.tokenizer, theta.tokenizer, positions="last")
    out = tmp_path / "pairs.safetensors"
    out.write_bytes(b"old")

    class Boom(Exception):
        pass

    def explode(done, total):
        raise Boom

    with pytest.raises(Boom):
        write_pairs(out, theta, theta, plans, progress=explode)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.safetensors"]


# ----------------------------------------------------------------------------------------------
# q*: the plain function against the numpy core and an independent brentq


def test_q_star_rows_match_core_and_brentq(loaded, records):
    from geomix_cli.core import solve_alpha
    from geomix_cli.core.family import entropy_formula_alpha, log_q_alpha
    from geomix_cli.models.qstar import q_star_logits, q_star_rows

    theta, target = loaded["theta"], loaded["target"]
    ids = theta.tokenizer("<|user|> w5 w6 <|end|> <|asst|> w7 w8")["input_ids"]
    a = torch.as_tensor(full_logits(theta, ids), dtype=torch.float32)
    t = torch.as_tensor(full_logits(target, ids), dtype=torch.float32)
    la, lt = log_softmax(a.double().numpy()), log_softmax(t.double().numpy())
    rows = q_star_rows(a, t)
    assert rows.status == ["ok"] * a.shape[0]
    ref = np.array([reference_alpha_brentq(x, y) for x, y in zip(la, lt)])
    assert_allclose(rows.alpha.numpy(), ref, rtol=0, atol=1e-10)
    core = solve_alpha(la, lt, "newton")
    assert_allclose(rows.log_q.numpy(), log_q_alpha(la, lt, core.alpha), rtol=0, atol=1e-10)
    # both KLs equal at alpha*
    q = np.exp(rows.log_q.numpy())
    kl_theta = np.sum(q * (rows.log_q.numpy() - la), axis=1)
    kl_t = np.sum(q * (rows.log_q.numpy() - lt), axis=1)
    assert_allclose(kl_theta, kl_t, rtol=1e-9, atol=1e-12)
    logits, alpha = q_star_logits(a, t)
    assert logits.dtype == torch.float32 and alpha.shape == (a.shape[0],)
    assert_allclose(torch.softmax(logits, -1).double().numpy(), q, rtol=1e-5, atol=1e-7)
    # the other samplers
    on = q_star_rows(a, t, sampler="on-policy")
    assert_allclose(on.log_q.numpy(), la, atol=1e-12)
    off = q_star_rows(a, t, sampler="off-policy", target_temperature=0.5)
    assert_allclose(off.log_q.numpy(), log_softmax(t.double().numpy() / 0.5), atol=1e-12)
    fixed = q_star_rows(a, t, sampler="fixed:0.3")
    assert_allclose(fixed.log_q.numpy(), log_q_alpha(la, lt, np.full(len(la), 0.3)), atol=1e-12)
    ent = q_star_rows(a, t, sampler="entropy")
    assert_allclose(ent.alpha.numpy(), entropy_formula_alpha(la, lt), rtol=1e-12)
    # a single row [V] keeps its shape
    single = q_star_rows(a[0], t[0])
    assert single.log_q.shape == (a.shape[1],) and float(single.alpha) == pytest.approx(ref[0])


def test_q_star_rows_without_root():
    from geomix_cli.models.qstar import parse_sampler, q_star_rows

    v = 6
    same = torch.randn(1, v)
    rows = q_star_rows(same, same.clone())
    assert rows.status == ["degenerate"] and float(rows.alpha[0]) == 0.5
    assert math.isnan(float(rows.alpha_star[0]))
    # disjoint supports (-inf logits from a masking processor): no q exists, sample on-policy
    a = torch.tensor([[0.0, 0.0, -math.inf, -math.inf]])
    t = torch.tensor([[-math.inf, -math.inf, 0.0, 0.0]])
    rows = q_star_rows(a, t)
    assert rows.status == ["disjoint-support"] and float(rows.alpha[0]) == 1.0
    assert_allclose(rows.log_q.numpy(), log_softmax(a.numpy()))
    with pytest.raises(InputError, match="NaN"):
        q_star_rows(torch.tensor([[0.0, math.nan]]), torch.tensor([[0.0, 1.0]]))
    with pytest.raises(InputError, match="differ in shape"):
        q_star_rows(torch.zeros(2, 3), torch.zeros(2, 4))
    for bad in ("fixed:1.5", "fixed:x", "greedy"):
        with pytest.raises(InputError):
            parse_sampler(bad)
    assert parse_sampler("fixed:0.25").label == "fixed:0.25"


# ----------------------------------------------------------------------------------------------
# KV caches and the LogitsProcessor


def test_incremental_generation_equals_full_forward(loaded):
    from geomix_cli.models.sampling import IncrementalLM

    theta = loaded["theta"]
    prompts = [[1, 7, 8, 9, 10, 11], [1, 12], [1, 13, 14, 15]]  # left padding differs per row
    lm = IncrementalLM(theta.model)
    logits = lm.start(prompts)
    seqs = [list(p) for p in prompts]
    rng = np.random.default_rng(0)
    for step in range(5):
        for r, seq in enumerate(seqs):
            assert_allclose(logits[r].double().numpy(), full_logits(theta, seq)[-1],
                            rtol=1e-4, atol=1e-4)
        nxt = torch.as_tensor(rng.integers(7, 32, size=len(seqs)))
        for r, seq in enumerate(seqs):
            seq.append(int(nxt[r]))
        logits = lm.step(nxt)


def test_logits_processor_in_generate(loaded):
    from transformers import LogitsProcessorList

    from geomix_cli.models.qstar import QStarLogitsProcessor, q_star_rows

    theta, target = loaded["theta"], loaded["target"]
    tok = theta.tokenizer
    policy_prompt = tok(["<|user|> w5 w6 <|end|> <|asst|>"], return_tensors="pt")
    target_prompt = tok(["<|sys|> w3 w4 <|end|> <|user|> w5 w6 <|end|> <|asst|>"],
                        return_tensors="pt")
    proc = QStarLogitsProcessor(target.model, target_prompt.input_ids,
                                target_prompt.attention_mask)
    from transformers import LogitsProcessor

    assert isinstance(proc, LogitsProcessor)
    # greedy decoding picks argmax q* at every step: check it against full forwards
    out = theta.model.generate(**policy_prompt, do_sample=False, max_new_tokens=4,
                               logits_processor=LogitsProcessorList([proc]),
                               pad_token_id=0, eos_token_id=None)
    generated = out[0, policy_prompt.input_ids.shape[1]:].tolist()
    assert len(proc.history) == 4
    p_ids = policy_prompt.input_ids[0].tolist()
    t_ids = target_prompt.input_ids[0].tolist()
    for step, token in enumerate(generated):
        a = torch.as_tensor(full_logits(theta, p_ids + generated[:step])[-1])
        t = torch.as_tensor(full_logits(target, t_ids + generated[:step])[-1])
        rows = q_star_rows(a, t)
        assert float(proc.history[step]["alpha"][0]) == pytest.approx(float(rows.alpha),
                                                                      abs=1e-5)
        assert token == int(torch.argmax(rows.log_q))
    # several sequences per prompt: the target prompt is repeated like generate repeats the policy's
    proc2 = QStarLogitsProcessor(target.model, target_prompt.input_ids, sampler="fixed:0.5")
    out = theta.model.generate(**policy_prompt, do_sample=True, max_new_tokens=2,
                               num_return_sequences=3, logits_processor=[proc2],
                               pad_token_id=0, eos_token_id=None)
    assert out.shape[0] == 3 and proc2.history[0]["alpha"].shape == (3,)


# ----------------------------------------------------------------------------------------------
# sampling: frequencies, records, statistics


def chi_square_p_value(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson's goodness-of-fit p-value, pooling cells with expected count < 5."""
    from scipy.stats import chisquare

    n = counts.sum()
    expected = probs * n
    order = np.argsort(expected)
    small = order[np.cumsum(expected[order]) < 5.0]
    keep = np.setdiff1d(np.arange(len(probs)), small)
    obs = np.append(counts[keep], counts[small].sum()) if small.size else counts[keep]
    exp = np.append(expected[keep], expected[small].sum()) if small.size else expected[keep]
    return float(chisquare(obs, exp).pvalue)


def test_first_token_frequencies_follow_q_star(loaded, records):
    """4000 first tokens per sampler against q computed independently (plain forwards, brentq)."""
    from geomix_cli.models.prompts import encode_context
    from geomix_cli.models.sampling import generate

    theta, target = loaded["theta"], loaded["target"]
    record = records[0]
    run = generate(theta, target, [record], samplers=["kl-symmetry", "fixed:0.3"], n=4000,
                   max_new_tokens=1, target_system="w3 w4", seed=11, batch_size=2000)
    la = log_softmax(full_logits(theta, encode_context(theta.tokenizer, record))[-1])
    lt = log_softmax(full_logits(target, encode_context(target.tokenizer, record,
                                                        system="w3 w4"))[-1])
    alpha = reference_alpha_brentq(la, lt)
    for k, a in ((0, alpha), (1, 0.3)):
        q = np.exp(log_softmax(a * la + (1 - a) * lt))
        first = run.tokens[run.row_sampler == k, 0]
        counts = np.bincount(first, minlength=len(q))
        assert chi_square_p_value(counts, q) > 1e-3
        assert_allclose(run.fields["alpha"][run.row_sampler == k, 0], a, atol=1e-10)
        # the test has power: the same draws are far from pi_theta and from pi_t
        assert chi_square_p_value(counts, np.exp(la)) < 1e-6
        assert chi_square_p_value(counts, np.exp(lt)) < 1e-6


def test_per_token_records_are_exact(loaded, records):
    """Summed per-token log-probabilities equal teacher-forced log-probabilities of the generated
    sequences under each model (its own context), and log q / alpha are those of q* recomputed
    from full forwards."""
    from geomix_cli.models.prompts import encode_both
    from geomix_cli.models.qstar import q_star_rows
    from geomix_cli.models.sampling import generate

    theta, target = loaded["theta"], loaded["target"]
    run = generate(theta, target, records[:2], samplers=["kl-symmetry", "entropy"], n=3,
                   max_new_tokens=6, target_system="w3 w4", seed=3, batch_size=5)
    assert run.n_rows == 2 * 2 * 3
    log_w_theta, log_w_t = run.log_weights()
    for r in range(run.n_rows):
        record = records[int(run.row_prompt[r])]
        ctx_theta, ctx_t = encode_both(record, theta.tokenizer, target.tokenizer,
                                       target_system="w3 w4")
        toks = run.tokens[r, :run.length[r]].tolist()
        assert (run.tokens[r, run.length[r]:] == -1).all()
        la = log_softmax(full_logits(theta, ctx_theta + toks))[len(ctx_theta) - 1:-1]
        lt = log_softmax(full_logits(target, ctx_t + toks))[len(ctx_t) - 1:-1]
        idx = np.arange(len(toks))
        assert_allclose(run.fields["log_pi_theta"][r, :len(toks)], la[idx, toks], atol=1e-4)
        assert_allclose(run.fields["log_pi_t"][r, :len(toks)], lt[idx, toks], atol=1e-4)
        sampler = run.samplers[int(run.row_sampler[r])]
        rows = q_star_rows(torch.as_tensor(la), torch.as_tensor(lt), sampler=sampler)
        assert_allclose(run.fields["alpha"][r, :len(toks)], rows.alpha.numpy(), atol=1e-5)
        assert_allclose(run.fields["log_q"][r, :len(toks)], rows.log_q.numpy()[idx, toks],
                        atol=1e-4)
        assert log_w_theta[r] == pytest.approx(
            np.sum(la[idx, toks]) - np.sum(run.fields["log_q"][r, :len(toks)]), abs=1e-3)
        # the Chernoff information is the common KL at alpha*
        if sampler == "kl-symmetry":
            assert_allclose(run.fields["chernoff"][r, :len(toks)],
                            run.fields["kl_q_theta"][r, :len(toks)], rtol=1e-8, atol=1e-12)
            assert_allclose(run.fields["kl_q_theta"][r, :len(toks)],
                            run.fields["kl_q_target"][r, :len(toks)], rtol=1e-8, atol=1e-12)


def test_same_seed_same_samples_and_eos_stops(loaded, records):
    from geomix_cli.models.sampling import generate

    theta = loaded["theta"]
    kwargs = dict(samplers=["on-policy"], n=6, max_new_tokens=30, seed=5)
    first = generate(theta, theta, records[:1], **kwargs)
    again = generate(theta, theta, records[:1], **kwargs)
    assert (first.tokens == again.tokens).all()
    ended = first.ended_by_eos
    for r in range(first.n_rows):
        if ended[r]:
            assert first.tokens[r, first.length[r] - 1] == 2  # '</s>' ends the sequence
        else:
            assert first.length[r] == 30
    # on-policy: q = pi_theta, so every theta weight is exactly 1
    log_w_theta, _ = first.log_weights()
    assert_allclose(log_w_theta, 0.0, atol=1e-12)
    with pytest.raises(InputError, match="twice"):
        generate(theta, theta, records[:1], samplers=["on-policy", "on-policy"])


def test_sequence_statistics_formulas():
    from geomix_cli.models.sampling import balance_ratio, sequence_ess

    rng = np.random.default_rng(0)
    lw = rng.normal(size=(5, 40))
    got = sequence_ess(lw, axis=1)
    w = np.exp(lw)
    assert_allclose(got["ess_unnormalized"], 1.0 / np.mean(w ** 2, axis=1), rtol=1e-12)
    assert_allclose(got["ess"], w.sum(1) ** 2 / (40 * (w ** 2).sum(1)), rtol=1e-12)
    assert_allclose(got["mean_w"], w.mean(1), rtol=1e-12)
    # log-space: huge weights do not overflow
    big = sequence_ess(np.array([800.0, 800.0, 0.0]))
    assert big["ess"] == pytest.approx(2 / 3)
    assert_allclose(balance_ratio([1.0, 2.0, 0.0, np.nan], [2.0, 1.0, 1.0, 1.0]),
                    [2.0, 2.0, np.inf, np.nan])


def test_sequence_statistics_of_a_run(loaded, records):
    from geomix_cli.models.sampling import (generate, prefix_log_weights, sequence_ess,
                                            sequence_statistics)

    theta, target = loaded["theta"], loaded["target"]
    run = generate(theta, target, records[:2], samplers=["kl-symmetry", "on-policy"], n=8,
                   max_new_tokens=5, target_system="w3 w4", seed=2)
    stats = sequence_statistics(run)
    assert [s["sampler"] for s in stats["samplers"]] == ["kl-symmetry", "on-policy"]
    assert len(stats["per_prompt"]) == 4 and len(stats["along_length"]) == 10
    lw_theta, lw_t = prefix_log_weights(run)
    log_w_theta, log_w_t = run.log_weights()
    assert_allclose(lw_theta[:, -1], log_w_theta)
    rec = stats["per_prompt"][0]
    rows = (run.row_sampler == 0) & (run.row_prompt == 0)
    assert rec["ess_theta"] == pytest.approx(float(sequence_ess(log_w_theta[rows])["ess"]))
    assert rec["ess_ratio"] == pytest.approx(max(rec["ess_theta"], rec["ess_target"])
                                             / min(rec["ess_theta"], rec["ess_target"]))
    on_policy = [r for r in stats["per_prompt"] if r["sampler"] == "on-policy"]
    assert all(r["ess_theta"] == pytest.approx(1.0) for r in on_policy)
    assert sum(stats["alpha_star_status_counts"].values()) == int(run.length.sum())


def test_sequence_ess_balance_evidence_structure(folders):
    from geomix_cli.models.evidence import sequence_ess_balance_evidence

    evidence = sequence_ess_balance_evidence(
        model=str(folders["theta"]), prompts=[{"id": "p", "prompt": "w5 w6",
                                               "target_system": "w3 w4"},
                                              {"id": "q", "prompt": "w9",
                                               "target_system": "w10"}],
        n=6, max_new_tokens=3, bootstrap=50, seed=1)
    assert evidence["claim"] == "sequence-ess-balance"
    assert evidence["prompts"] == 2 and evidence["n"] == 6
    assert len(evidence["per_prompt"]) == 2
    for rec in evidence["per_prompt"]:
        assert rec["classification"] in ("within", "outside", "undecided")
        assert rec["ratio_low"] <= rec["ratio_high"]
        inside = 1 / 1.1 <= rec["ratio_low"] and rec["ratio_high"] <= 1.1
        assert (rec["classification"] == "within") == inside
    assert set(evidence["fraction_within"]) == {"sequence", "token"}
    low, high = evidence["fraction_within_interval"]
    assert 0.0 <= low <= high <= 1.0
    assert evidence["command"].startswith("geomix sample")


def test_threads_option_is_scoped(loaded, records):
    from geomix_cli.models.loading import torch_threads
    from geomix_cli.models.sampling import generate

    before = torch.get_num_threads()
    seen = []
    generate(loaded["theta"], loaded["theta"], records[:1], n=1, max_new_tokens=2, threads=1,
             on_step=lambda *a: seen.append(torch.get_num_threads()))
    assert seen == [1, 1] and torch.get_num_threads() == before
    with pytest.raises(InputError, match="--threads"):
        with torch_threads(0):
            pass


def test_pairs_writer_removes_a_dead_writers_leftovers(loaded, records, tmp_path):
    from geomix_cli.io.writers import HOST_TAG
    from geomix_cli.models.pairs import plan_pairs, write_pairs

    theta = loaded["theta"]
    plans = plan_pairs(records[:1], theta.tokenizer, theta.tokenizer, positions="last")
    out = tmp_path / "p.npz"
    stale = tmp_path / f".p.npz.{HOST_TAG}.999999999.abcd1234.tmp"  # a killed writer's member
    stale.write_bytes(b"x" * 100)
    write_pairs(out, theta, theta, plans, dtype="float16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npz"]
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
