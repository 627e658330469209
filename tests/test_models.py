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
# q*: the plain function (the public API underneath) against independent numpy and brentq


def reference_family(la: np.ndarray, lt: np.ndarray, alpha: float) -> dict:
    """log q_alpha, KL(q||pi_theta), KL(q||pi_t), ESS_theta(q), ESS_t(q) of one row, written out
    in plain numpy (alpha = 1 and 0: pi_theta and pi_t themselves, mass off the common support
    included)."""
    if alpha == 1.0:
        log_q = la.copy()
    elif alpha == 0.0:
        log_q = lt.copy()
    else:
        both = np.isfinite(la) & np.isfinite(lt)
        s = np.where(both, alpha * np.where(both, la, 0) + (1 - alpha) * np.where(both, lt, 0),
                     -np.inf)
        log_q = s - (s[both].max() + np.log(np.sum(np.exp(s[both] - s[both].max()))))
    q = np.exp(log_q)
    on_q = q > 0

    def kl(log_p):
        return float(np.sum(q[on_q] * (log_q[on_q] - log_p[on_q])))

    def ess(log_p):
        on_p = np.isfinite(log_p)
        if np.any(on_p & ~on_q):
            return 0.0
        return float(1.0 / np.sum(np.exp(2 * log_p[on_p] - log_q[on_p])))

    return {"log_q": log_q, "kl_q_theta": kl(la), "kl_q_target": kl(lt),
            "ess_theta": ess(la), "ess_target": ess(lt)}


def reference_chernoff(la: np.ndarray, lt: np.ndarray, alpha: float) -> float:
    """C = -log Z(alpha*) = -log sum_S pi_theta^alpha pi_t^(1-alpha)."""
    both = np.isfinite(la) & np.isfinite(lt)
    s = alpha * la[both] + (1 - alpha) * lt[both]
    return float(-(s.max() + np.log(np.sum(np.exp(s - s.max())))))


def test_q_star_rows_match_brentq_and_numpy(loaded):
    from geomix_cli.core.family import entropy_formula_alpha
    from geomix_cli.models.qstar import q_star_logits, q_star_rows

    theta, target = loaded["theta"], loaded["target"]
    ids = theta.tokenizer("<|user|> w5 w6 <|end|> <|asst|> w7 w8")["input_ids"]
    a = torch.as_tensor(full_logits(theta, ids), dtype=torch.float32)
    t = torch.as_tensor(full_logits(target, ids), dtype=torch.float32)
    la, lt = log_softmax(a.double().numpy()), log_softmax(t.double().numpy())
    rows = q_star_rows(a, t)
    assert list(rows.status) == ["ok"] * a.shape[0] and bool(rows.has_q.all())
    assert rows.log_q.dtype == torch.float64 and not rows.log_q.requires_grad
    ref = np.array([reference_alpha_brentq(x, y) for x, y in zip(la, lt)])
    assert_allclose(rows.alpha.numpy(), ref, rtol=0, atol=1e-10)
    assert_allclose(rows.alpha_star.numpy(), ref, rtol=0, atol=1e-10)
    expected = np.stack([reference_family(x, y, r)["log_q"] for x, y, r in zip(la, lt, ref)])
    assert_allclose(rows.log_q.numpy(), expected, rtol=0, atol=1e-10)
    # both KLs equal at alpha*, and equal to C
    q = np.exp(rows.log_q.numpy())
    kl_theta = np.sum(q * (rows.log_q.numpy() - la), axis=1)
    kl_t = np.sum(q * (rows.log_q.numpy() - lt), axis=1)
    assert_allclose(kl_theta, kl_t, rtol=1e-9, atol=1e-12)
    assert_allclose(rows.solution.chernoff.numpy(), kl_theta, rtol=1e-9, atol=1e-12)
    logits, alpha = q_star_logits(a, t)
    assert logits.dtype == torch.float32 and alpha.shape == (a.shape[0],)
    assert_allclose(torch.softmax(logits, -1).double().numpy(), q, rtol=1e-5, atol=1e-7)
    # the other samplers
    on = q_star_rows(a, t, sampler="on-policy")
    assert_allclose(on.log_q.numpy(), la, atol=1e-12)
    off = q_star_rows(a, t, sampler="off-policy", target_temperature=0.5)
    assert_allclose(off.log_q.numpy(), log_softmax(t.double().numpy() / 0.5), atol=1e-12)
    fixed = q_star_rows(a, t, sampler="fixed:0.3")
    assert_allclose(fixed.log_q.numpy(),
                    np.stack([reference_family(x, y, 0.3)["log_q"] for x, y in zip(la, lt)]),
                    atol=1e-12)
    ent = q_star_rows(a, t, sampler="entropy")
    assert_allclose(ent.alpha.numpy(), entropy_formula_alpha(la, lt), rtol=1e-12)
    # a single row [V] and a [B, T, V] batch with a mask keep their shapes
    single = q_star_rows(a[0], t[0])
    assert single.log_q.shape == (a.shape[1],) and float(single.alpha) == pytest.approx(ref[0])
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[1, 2] = False
    batch = q_star_rows(a[:6].reshape(2, 3, -1), t[:6].reshape(2, 3, -1), mask=mask)
    assert batch.log_q.shape == (2, 3, a.shape[1]) and batch.status[1, 2] == "masked"
    assert not bool(batch.has_q[1, 2]) and math.isnan(float(batch.alpha[1, 2]))
    assert_allclose(batch.alpha.reshape(-1)[:5].numpy(), ref[:5], atol=1e-10)


def test_q_star_rows_without_root_or_without_q():
    from geomix_cli.models.qstar import parse_sampler, q_star_rows

    inf = math.inf
    same = torch.randn(1, 6)
    rows = q_star_rows(same, same.clone())
    assert list(rows.status) == ["degenerate"] and float(rows.alpha[0]) == 0.5
    assert math.isnan(float(rows.alpha_star[0]))
    # disjoint supports (-inf logits from a masking processor): no q between, sample on-policy
    a = torch.tensor([[0.0, 0.0, -inf, -inf]])
    t = torch.tensor([[-inf, -inf, 0.0, 0.0]])
    rows = q_star_rows(a, t)
    assert list(rows.status) == ["disjoint-support"] and float(rows.alpha[0]) == 1.0
    assert_allclose(rows.log_q.numpy(), log_softmax(a.numpy()))
    # ... but the entropy heuristic (alpha_H = 1/2 here) has no q there: no alpha, no q
    rows = q_star_rows(a, t, sampler="entropy")
    assert not bool(rows.has_q[0]) and math.isnan(float(rows.alpha[0]))
    # no-root: supports differ, so one side has mass off the common support S and its KL is the
    # larger for every alpha; l = log pi_t - log pi_theta constant on S (rows 0, 1) or not (2, 3);
    # the stand-in is the end point where D comes closest to 0, for both signs of D
    a = torch.tensor([[0.0, 1.0, 2.0, 3.0], [2.0, 3.0, -inf, -inf], [0.0, 1.0, 2.0, 3.0],
                      [1.0, 0.0, -inf, -inf]])
    t = torch.tensor([[0.0, 1.0, -inf, -inf], [0.0, 1.0, 2.0, 3.0], [1.0, 0.0, -inf, -inf],
                      [0.0, 1.0, 2.0, 3.0]])
    rows = q_star_rows(a, t)
    assert list(rows.status) == ["no-root"] * 4 and bool(rows.has_q.all())
    la, lt = log_softmax(a.double().numpy()), log_softmax(t.double().numpy())
    d_mid = np.array([_delta(x, y, 0.5) for x, y in zip(la, lt)])
    assert list(np.sign(d_mid)) == [1, -1, 1, -1]
    assert rows.alpha.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert_allclose(rows.log_q.numpy(), np.where([[1], [0], [1], [0]], la, lt))
    # invalid rows: raise by default; with on_invalid='status' that row has no q, the others do
    bad_a = torch.tensor([[0.0, math.nan], [0.0, 1.0]])
    bad_t = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(InputError, match="NaN"):
        q_star_rows(bad_a, bad_t)
    for sampler in ("kl-symmetry", "entropy", "on-policy", "fixed:0.2"):
        rows = q_star_rows(bad_a, bad_t, sampler=sampler, on_invalid="status")
        assert list(rows.status) == ["invalid", "ok"] and "NaN" in rows.message[0]
        assert rows.has_q.tolist() == [False, True]
        assert math.isnan(float(rows.alpha[0])) and bool(torch.isnan(rows.log_q[0]).all())
        assert bool(torch.isfinite(rows.log_q[1]).all())
    with pytest.raises(InputError, match="differ in shape"):
        q_star_rows(torch.zeros(2, 3), torch.zeros(2, 4))
    for bad in ("fixed:1.5", "fixed:x", "greedy"):
        with pytest.raises(InputError):
            parse_sampler(bad)
    assert parse_sampler("fixed:0.25").label == "fixed:0.25"


def _delta(la, lt, alpha):
    from conftest import reference_delta

    return reference_delta(la, lt, alpha)


def test_step_records_equal_an_independent_numpy_computation():
    """One sampling step over a batch with every kind of row and sampler: alpha, alpha*, C, log q,
    both KLs and both ESS of the q drawn from, and log pi(y) at the drawn tokens, against plain
    numpy (brentq for alpha*), to 1e-10."""
    from conftest import random_logit_pair

    from geomix_cli.models.qstar import parse_sampler
    from geomix_cli.models.sampling import draw, step_distributions, token_log_probs

    rng = np.random.default_rng(2)  # the 12 random pairs all have a root
    vocab, inf = 40, math.inf
    rows = [random_logit_pair(rng, vocab, 2.0) for _ in range(8)]
    rows += [random_logit_pair(rng, vocab, 2.0, zero_fraction=0.3) for _ in range(4)]
    same = rng.integers(-8, 8, size=vocab) / 2.0  # exact in float32, also after the temperature
    rows.append((same, (same + 1.0) * 0.5))                          # degenerate
    const = rng.normal(size=vocab)
    rows.append((const, np.where(np.arange(vocab) < 20, const + 0.7, -inf)))   # no-root
    rows.append((np.where(np.arange(vocab) < 20, 0.0, -inf),
                 np.where(np.arange(vocab) < 20, -inf, 0.0)))        # disjoint-support
    nan_row = rng.normal(size=vocab)
    nan_row[3] = np.nan
    rows.append((nan_row, rng.normal(size=vocab)))                   # invalid
    rows.append(random_logit_pair(rng, vocab, 2.0))                  # finished (masked)
    theta = torch.tensor(np.stack([r[0] for r in rows]), dtype=torch.float32)
    target = torch.tensor(np.stack([r[1] for r in rows]), dtype=torch.float32)
    n = theta.shape[0]
    samplers = [parse_sampler(s) for s in ("kl-symmetry", "entropy", "on-policy", "off-policy",
                                           "fixed:0.3")]
    row_sampler = torch.as_tensor([i % len(samplers) for i in range(n)])
    row_sampler[12:16] = 0  # the special rows under kl-symmetry
    alive = torch.ones(n, dtype=torch.bool)
    alive[-1] = False
    temperature = 0.5
    dist = step_distributions(theta, target, samplers, row_sampler, temperature, alive=alive)
    generator = torch.Generator().manual_seed(0)
    drawn = draw(dist["log_q"], generator, dist["has_q"])
    at_token = token_log_probs(dist, drawn)
    assert dist["status"][12:] == ["degenerate", "no-root", "disjoint-support", "invalid",
                                   "masked"]
    assert dist["has_q"].tolist() == [True] * 15 + [False, False]
    la_all = log_softmax(theta.double().numpy())
    lt_all = log_softmax(target.double().numpy() / temperature)
    for i in range(15):
        la, lt = la_all[i], lt_all[i]
        sampler = samplers[int(row_sampler[i])].name
        star = reference_alpha_brentq(la, lt) if i < 12 else math.nan
        if sampler == "kl-symmetry":
            if i == 13:  # no-root: the end point D comes closest to 0 at
                alpha = 0.0 if _delta(la, lt, 0.5) <= 0 else 1.0
            else:
                alpha = star if i < 12 else {12: 0.5, 14: 1.0}[i]
        elif sampler == "entropy":
            h = [-np.sum(np.exp(x[np.isfinite(x)]) * x[np.isfinite(x)]) for x in (la, lt)]
            alpha = h[0] / (h[0] + h[1])
        else:
            alpha = {"on-policy": 1.0, "off-policy": 0.0, "fixed": 0.3}[sampler]
        ref = reference_family(la, lt, alpha)
        got = {k: float(dist[k][i]) for k in ("alpha", "alpha_star", "chernoff", "kl_q_theta",
                                              "kl_q_target", "ess_theta", "ess_target")}
        assert got["alpha"] == pytest.approx(alpha, abs=1e-10), i
        if i < 12:
            assert got["alpha_star"] == pytest.approx(star, abs=1e-10), i
            assert got["chernoff"] == pytest.approx(reference_chernoff(la, lt, star),
                                                    abs=1e-10), i
        else:
            assert math.isnan(got["alpha_star"]), i
        for name in ("kl_q_theta", "kl_q_target", "ess_theta", "ess_target"):
            assert got[name] == pytest.approx(ref[name], rel=1e-10, abs=1e-10), (i, name)
        assert_allclose(dist["log_q"][i].numpy(), ref["log_q"], rtol=0, atol=1e-10)
        y = int(drawn[i])
        assert float(dist["log_q"][i, y]) > -inf
        assert float(at_token["log_q"][i]) == pytest.approx(ref["log_q"][y], abs=1e-10), i
        assert float(at_token["log_pi_theta"][i]) == pytest.approx(la[y], abs=1e-10), i
        assert float(at_token["log_pi_t"][i]) == pytest.approx(lt[y], abs=1e-10), i
    for i in (15, 16):  # invalid and finished rows: nothing made up
        for name in ("alpha", "log_q", "chernoff", "kl_q_theta", "ess_theta"):
            assert bool(torch.isnan(dist[name][i]).all()), (i, name)
        for name in ("log_q", "log_pi_theta", "log_pi_t"):
            assert math.isnan(float(at_token[name][i])), (i, name)
    assert "NaN" in dist["message"][15]


def test_models_layer_agrees_with_geomix_solve_json(loaded, tmp_path, runner):
    """The models layer and `geomix solve --json` on the very same float32 logits (real rows of
    the tiny models, and one row of every status): the same statuses and messages, and alpha*,
    C, both KLs and both ESS of q* (from `q_star_rows` and from a sampling step) to the
    tolerances float64 allows for each row (conftest.alpha_tolerance; eps times the size of the
    log-probabilities for the KLs and ESS)."""
    from conftest import EPS64, alpha_tolerance, log_scale

    from geomix_cli.cli import app
    from geomix_cli.models.qstar import parse_sampler, q_star_rows
    from geomix_cli.models.sampling import step_distributions

    theta, target = loaded["theta"], loaded["target"]
    ids = theta.tokenizer("<|user|> w5 w6 w7 <|end|> <|asst|> w8 w9")["input_ids"]
    real_a, real_t = full_logits(theta, ids), full_logits(target, ids)
    vocab, inf = real_a.shape[1], math.inf
    half = np.arange(vocab) < vocab // 2
    special_a = np.stack([real_a[0], real_a[1], np.where(half, 0.0, -inf), real_a[2]])
    special_t = np.stack([real_a[0] + 3.0,                      # degenerate (a shift)
                          np.where(half, real_a[1] - 0.5, -inf),  # no-root (constant l on S)
                          np.where(half, -inf, 0.0),              # disjoint-support
                          real_t[2]])
    special_a[3, 7] = math.nan                                    # invalid
    a = torch.as_tensor(np.concatenate([real_a, special_a]), dtype=torch.float32)
    t = torch.as_tensor(np.concatenate([real_t, special_t]), dtype=torch.float32)
    n_real = real_a.shape[0]
    path = tmp_path / "same_logits.npz"
    np.savez(path, logits_theta=a.numpy(), logits_t=t.numpy())
    result = runner.invoke(app, ["solve", str(path), "--json"])
    assert result.exit_code == 3, result.output  # 3: some row is not 'ok'
    cli = json.loads(result.stdout)["rows"]
    assert [r["status"] for r in cli] == (["ok"] * n_real + ["degenerate", "no-root",
                                                            "disjoint-support", "invalid"])

    rows = q_star_rows(a, t, on_invalid="status")
    sol = rows.solution
    kl_symmetry = [parse_sampler("kl-symmetry")]
    step = step_distributions(a, t, kl_symmetry, torch.zeros(a.shape[0], dtype=torch.long))
    assert list(rows.status) == [r["status"] for r in cli] == step["status"]
    for i, rec in enumerate(cli):
        if rec["status"] == "invalid":  # the CLI names the file's key, the API its argument
            assert rows.message[i] == "key 'theta': NaN at column 7"
            assert rec["message"] == "key 'logits_theta': NaN at column 7"
        else:
            assert rows.message[i] == rec["message"] == step["message"][i], i

    la = log_softmax(a.double().numpy()[:n_real])
    lt = log_softmax(t.double().numpy()[:n_real])
    want = {k: np.array([r[k] for r in cli[:n_real]]) for k in (
        "alpha", "chernoff", "kl_q_theta", "kl_q_target", "ess_theta", "ess_target")}
    alpha_tol = alpha_tolerance(la, lt, want["alpha"])
    value_tol = 64 * EPS64 * (1.0 + log_scale(la, lt))
    for got in (rows.alpha_star, rows.alpha, step["alpha"], step["alpha_star"]):
        assert np.all(np.abs(got.numpy()[:n_real] - want["alpha"]) <= alpha_tol)
    ours = {"chernoff": sol.chernoff, "kl_q_theta": sol.kl_q_theta, "kl_q_target": sol.kl_q_t,
            "ess_theta": sol.ess_theta, "ess_target": sol.ess_t}
    for name, got in ours.items():
        for values in (got, step[name]):
            assert_allclose(values.numpy()[:n_real], want[name], rtol=0, atol=value_tol.max(),
                            err_msg=name)
    # rows without alpha*: the stand-ins of the module doc, and the CLI's C where it has one
    assert rows.alpha[n_real:].tolist()[:3] == [0.5, 1.0, 1.0]
    assert math.isnan(float(rows.alpha[-1])) and rows.has_q.tolist()[n_real:] == [True] * 3 + [
        False]
    assert float(sol.chernoff[n_real]) == pytest.approx(cli[n_real]["chernoff"], abs=1e-12)


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


def test_logits_processor_keeps_a_bad_row_and_says_so(loaded):
    """A row whose target logits are NaN keeps generate's scores (no made-up q), with a warning
    and its status in the history; the other rows get q*."""
    from geomix_cli.models.qstar import QStarLogitsProcessor, q_star_rows

    theta, target = loaded["theta"], loaded["target"]
    ids = torch.as_tensor([theta.tokenizer("<|user|> w5 w6 <|end|> <|asst|>")["input_ids"]] * 2)
    proc = QStarLogitsProcessor(target.model, ids)
    start = proc._lm.start

    def poisoned(prompts):
        logits = start(prompts).clone()
        logits[0, 3] = math.nan
        return logits

    proc._lm.start = poisoned
    scores = torch.as_tensor(full_logits(theta, ids[0].tolist())[-1:], dtype=torch.float32)
    scores = scores.repeat(2, 1)
    with pytest.warns(RuntimeWarning, match="invalid 1"):
        out = proc(ids, scores)
    assert torch.equal(out[0], scores[0])
    expected = q_star_rows(scores[1], torch.as_tensor(full_logits(target, ids[0].tolist())[-1]))
    assert_allclose(out[1].double().numpy(), expected.log_q.numpy(), atol=1e-6)
    record = proc.history[0]
    assert record["status"] == ["invalid", "ok"] and record["has_q"].tolist() == [False, True]
    assert "NaN" in record["message"][0] and math.isnan(float(record["alpha"][0]))


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


def test_generated_records_equal_numpy_on_the_models_logits(loaded, records, monkeypatch):
    """Every per-token record of a run (five samplers, a target temperature) against plain numpy
    on the very logits the models gave at that step (captured), to 1e-10."""
    from geomix_cli.models import sampling

    theta, target = loaded["theta"], loaded["target"]
    seen = []
    original = sampling.step_distributions

    def capture(logits_theta, logits_t, samplers, row_sampler, temperature, alive=None):
        seen.append((logits_theta.double().numpy().copy(), logits_t.double().numpy().copy()))
        return original(logits_theta, logits_t, samplers, row_sampler, temperature, alive=alive)

    monkeypatch.setattr(sampling, "step_distributions", capture)
    labels = ["kl-symmetry", "entropy", "on-policy", "off-policy", "fixed:0.3"]
    run = sampling.generate(theta, target, records[:2], samplers=labels, n=2, max_new_tokens=4,
                            target_system="w3 w4", seed=6, batch_size=20,
                            target_temperature=0.7)
    assert run.n_rows == 20 and len(seen) == int(run.length.max())
    checked = 0
    for step, (raw_theta, raw_t) in enumerate(seen):
        la_all, lt_all = log_softmax(raw_theta), log_softmax(raw_t / 0.7)
        for r in np.flatnonzero(run.tokens[:, step] >= 0):
            la, lt, y = la_all[r], lt_all[r], int(run.tokens[r, step])
            star = reference_alpha_brentq(la, lt)
            sampler = labels[int(run.row_sampler[r])]
            h = [-np.sum(np.exp(x) * x) for x in (la, lt)]
            alpha = {"kl-symmetry": star, "entropy": h[0] / (h[0] + h[1]), "on-policy": 1.0,
                     "off-policy": 0.0, "fixed:0.3": 0.3}[sampler]
            ref = reference_family(la, lt, alpha)
            expected = {"alpha": alpha, "alpha_star": star,
                        "chernoff": reference_chernoff(la, lt, star),
                        "log_pi_theta": la[y], "log_pi_t": lt[y], "log_q": ref["log_q"][y],
                        **{k: ref[k] for k in ("kl_q_theta", "kl_q_target", "ess_theta",
                                               "ess_target")}}
            for name, value in expected.items():
                assert run.fields[name][r, step] == pytest.approx(value, rel=1e-10, abs=1e-10), (
                    step, r, sampler, name)
            assert run.status[r, step] == "ok"
            checked += 1
    assert checked == int(run.length.sum()) and checked >= 40
    assert set(run.end_reason) <= {"eos", "max-new-tokens"}


def test_one_bad_row_never_stops_the_batch(loaded, records, monkeypatch):
    """NaN logits from the target model for one sequence at step 2: that sequence ends there
    ('no-q', with the status and the reason), every other sequence is the same as without it."""
    from geomix_cli.models import sampling

    theta, target = loaded["theta"], loaded["target"]
    kwargs = dict(samplers=["kl-symmetry", "on-policy"], n=2, max_new_tokens=5, seed=9,
                  batch_size=8, stop_at_eos=False, target_system="w3 w4")
    clean = sampling.generate(theta, target, records[:2], **kwargs)
    original = sampling.IncrementalLM.step
    calls = {"target": 0}

    def poisoned(self, tokens):
        logits = original(self, tokens)
        if self.model is target.model:
            calls["target"] += 1
            if calls["target"] == 2:  # the logits of step 2
                logits = logits.clone()
                logits[1, 4] = math.nan
        return logits

    monkeypatch.setattr(sampling.IncrementalLM, "step", poisoned)
    run = sampling.generate(theta, target, records[:2], **kwargs)
    assert run.end_reason[1] == "no-q" and run.length[1] == 2
    assert run.end_message[1].startswith("step 2: status 'invalid'") and "NaN" in \
        run.end_message[1]
    assert (run.tokens[1, :2] == clean.tokens[1, :2]).all() and (run.tokens[1, 2:] == -1).all()
    others = np.arange(run.n_rows) != 1
    assert (run.tokens[others] == clean.tokens[others]).all()
    assert list(run.end_reason[others]) == ["max-new-tokens"] * 7
    for name in sampling.TOKEN_FIELDS:
        assert_allclose(run.fields[name][others], clean.fields[name][others], rtol=0, atol=0)
    stats = sampling.sequence_statistics(run)
    assert stats["end_reason_counts"] == {"max-new-tokens": 7, "no-q": 1}
    assert [s["message"] for s in stats["sequences_without_q"]] == [run.end_message[1]]


def test_same_seed_same_samples_and_eos_stops(loaded, records):
    from geomix_cli.models.sampling import generate

    theta = loaded["theta"]
    kwargs = dict(samplers=["on-policy"], n=6, max_new_tokens=30, seed=5)
    first = generate(theta, theta, records[:1], **kwargs)
    again = generate(theta, theta, records[:1], **kwargs)
    assert (first.tokens == again.tokens).all()
    ended = first.ended_by_eos
    assert 0 < ended.sum() < first.n_rows  # both branches below are exercised
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


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_pairs_writer_is_the_atomic_writer(loaded, records, tmp_path, suffix, monkeypatch):
    """Both formats through writers.AtomicFile: a new file gets 0666 minus the umask (here 027),
    a replaced one keeps its mode, a failure leaves the old file and no temporary, and no scratch
    member outlives a write."""
    import os
    import stat

    from geomix_cli.models.pairs import plan_pairs, write_pairs

    theta = loaded["theta"]
    plans = plan_pairs(records[:2], theta.tokenizer, theta.tokenizer, positions="last")
    out = tmp_path / f"p{suffix}"
    from geomix_cli.io import writers

    monkeypatch.setattr(writers, "_UMASK", None)  # geomix reads the umask once per process
    old_umask = os.umask(0o027)
    try:
        write_pairs(out, theta, theta, plans, dtype="float16")
    finally:
        os.umask(old_umask)
        writers._UMASK = None
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    out.chmod(0o600)
    write_pairs(out, theta, theta, plans, dtype="float32")  # the command checked --force
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    before = out.read_bytes()

    def explode(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_pairs(out, theta, theta, plans, progress=explode)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
