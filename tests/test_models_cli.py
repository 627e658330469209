"""`geomix pairs` and `geomix sample` end to end on tiny local models (CliRunner)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")

from _tiny_models import save_tiny_model, words  # noqa: E402
from test_cli_solve import assert_refused, strict_json  # noqa: E402

from geomix_cli.cli import app  # noqa: E402

pytestmark = pytest.mark.models

PROMPTS = [{"id": "a", "prompt": "w5 w6", "completion": "w7 w8 w9"},
           {"id": "b", "prompt": "w10 w11", "completion": "w12"},
           {"id": "c", "messages": [{"role": "user", "content": "w13"}]}]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return {"root": root, "prompts": str(prompts),
            "theta": str(save_tiny_model(root / "theta", seed=0)),
            "target": str(save_tiny_model(root / "target", seed=1)),
            "other": str(save_tiny_model(root / "other", seed=2, vocab_words=words(30)))}


def pairs_args(s, out, *extra):
    return ["pairs", "--theta", s["theta"], "--target", s["target"], "--prompts", s["prompts"],
            "--out", str(out), *extra]


def test_pairs_then_solve_check_and_plot(setup, runner, tmp_path):
    out = tmp_path / "pairs.safetensors"
    result = runner.invoke(app, pairs_args(setup, out, "--positions", "completion",
                                           "--target-system", "w3 w4", "--dtype", "bfloat16",
                                           "--json"))
    assert result.exit_code == 0, result.stderr
    summary = strict_json(result.stdout)
    assert summary["shape"] == [3, 3, 32] and summary["rows"] == 4
    assert summary["dtype"] == "bfloat16"
    assert "no completion" in result.stderr  # prompt c has none: a warning, not an error
    solved = runner.invoke(app, ["solve", str(out), "--json"])
    assert solved.exit_code == 0, solved.stderr
    rows = strict_json(solved.stdout)["rows"]
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert [r["position"] for r in rows] == [[0, 0], [0, 1], [0, 2], [1, 0]]
    assert runner.invoke(app, ["check", str(out), "--json"]).exit_code == 0
    plotted = runner.invoke(app, ["plot-pareto", str(out), "--row", "0", "--out",
                                  str(tmp_path / "front.png")])
    assert plotted.exit_code == 0, plotted.stderr
    # an existing file is replaced only with --force (the project's file rule); npz works too
    assert_refused(runner.invoke(app, pairs_args(setup, out)), "already exists", "--force")
    again = runner.invoke(app, pairs_args(setup, out, "--positions", "last", "--force"))
    assert again.exit_code == 0, again.stderr
    assert "wrote" in again.stdout and "geomix solve" in again.stdout
    npz = runner.invoke(app, pairs_args(setup, tmp_path / "p.npz", "--dtype", "float16"))
    assert npz.exit_code == 0, npz.stderr
    with np.load(tmp_path / "p.npz") as data:
        assert data["logits_theta"].dtype == np.float16 and data["logits_t"].shape == (3, 1, 32)


def test_pairs_bad_input_is_one_line(setup, runner, tmp_path):
    out = str(tmp_path / "out.safetensors")
    s = dict(setup)
    missing = runner.invoke(app, pairs_args({**s, "theta": str(tmp_path / "nope")}, out))
    assert_refused(missing, "nope", "no such local model folder")
    assert missing.exit_code == 2
    hub = runner.invoke(app, pairs_args({**s, "theta": "HuggingFaceTB/SmolLM2-135M"}, out))
    assert_refused(hub, "never downloads")
    vocab = runner.invoke(app, pairs_args({**s, "target": s["other"]}, out))
    assert_refused(vocab, "vocabularies differ")
    assert vocab.exit_code == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_refused(runner.invoke(app, pairs_args({**s, "prompts": str(empty)}, out)),
                   "empty.jsonl", "no prompts")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PROMPTS[0]) + "\n" + '{"prompt": "x",}\n')
    assert_refused(runner.invoke(app, pairs_args({**s, "prompts": str(bad)}, out)),
                   f"{bad}:2: invalid JSON")
    import torch

    if not torch.cuda.is_available():  # with CUDA, the run would just load the models
        cuda = runner.invoke(app, pairs_args(s, out, "--device", "cuda"))
        assert_refused(cuda, "--device cuda", "no CUDA device")
        assert cuda.exit_code == 5
    assert_refused(runner.invoke(app, pairs_args(s, tmp_path / "x.npz", "--dtype", "bfloat16")),
                   "bfloat16")
    assert_refused(runner.invoke(app, pairs_args(s, tmp_path / "x.csv")), "must end in")
    assert_refused(runner.invoke(app, pairs_args(s, out, "--positions", "middle")),
                   "--positions")
    assert_refused(runner.invoke(app, pairs_args(s, out, "--target-temperature", "0")),
                   "--target-temperature")
    assert not list(tmp_path.glob("out*"))


def test_pairs_never_overwrites_a_users_file_or_an_input(setup, runner, tmp_path):
    mine = tmp_path / "thesis.safetensors"
    mine.write_bytes(b"precious")
    assert_refused(runner.invoke(app, pairs_args(setup, mine)), "already exists", "--force")
    assert mine.read_bytes() == b"precious"
    prompts_copy = tmp_path / "prompts.npz"
    prompts_copy.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    result = runner.invoke(app, pairs_args({**setup, "prompts": str(prompts_copy)},
                                           prompts_copy, "--force"))
    assert_refused(result, "is an input of this command")
    assert prompts_copy.read_text().startswith('{"id": "a"')


def sample_args(s, *extra):
    return ["sample", "--theta", s["theta"], "--target", s["target"], "--prompts",
            s["prompts"], "--target-system", "w3 w4", *extra]


def test_sample_report_and_json(setup, runner, tmp_path):
    out = tmp_path / "samples"
    result = runner.invoke(app, sample_args(setup, "--sampler", "kl-symmetry,on-policy",
                                            "--sampler", "fixed:0.3", "--n", "4",
                                            "--max-new-tokens", "5", "--out", str(out),
                                            "--json"))
    assert result.exit_code == 0, result.stderr
    summary = strict_json(result.stdout)
    assert summary["samplers"] == ["kl-symmetry", "on-policy", "fixed:0.3"]
    assert summary["sequences"] == 3 * 3 * 4 and summary["report_dir"] == str(out)
    stats = summary["statistics"]
    assert len(stats["per_prompt"]) == 9 and len(stats["along_length"]) == 15
    assert sorted(p.name for p in out.iterdir()) == [
        ".geomix-report", "alpha_along_sequence.png", "ess_vs_length.png", "log_weights.png",
        "report.md", "samples.jsonl", "summary.json", "tokens.csv"]
    assert json.loads((out / ".geomix-report").read_text())["command"] == "sample"
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 36
    seq = strict_json(lines[0])
    assert len(seq["alpha"]) == seq["length"] == len(seq["tokens"]) == len(seq["log_q"])
    assert seq["log_w_theta"] == pytest.approx(sum(seq["log_pi_theta"]) - sum(seq["log_q"]))
    import pandas as pd

    tokens = pd.read_csv(out / "tokens.csv")
    assert len(tokens) == summary["tokens"]
    report = (out / "report.md").read_text()
    assert "## Per prompt" in report and "ess_vs_length.png" in report
    # the same command again replaces its own report; human output without --json
    again = runner.invoke(app, sample_args(setup, "--n", "2", "--max-new-tokens", "3", "--out",
                                           str(out)))
    assert again.exit_code == 0, again.stderr
    assert "kl-symmetry" in again.stdout and f"{out}/report.md" in again.stdout
    assert strict_json((out / "summary.json").read_text())["n"] == 2


def test_sample_with_one_bad_row_reports_it_and_the_others(setup, runner, tmp_path,
                                                           monkeypatch):
    """NaN target logits for one sequence mid-run: exit 0, that sequence ends there ('no-q', in
    samples.jsonl, summary and report, and a warning on stderr), the others are complete."""
    import math

    from geomix_cli.models import sampling

    original = sampling.IncrementalLM.step
    calls = []

    def poisoned(self, tokens):
        logits = original(self, tokens)
        calls.append(self)
        if len(calls) == 3:  # theta's logits of step 2 (the theta and target sides alternate)
            logits = logits.clone()
            logits[0, 5] = math.nan
        return logits

    monkeypatch.setattr(sampling.IncrementalLM, "step", poisoned)
    out = tmp_path / "samples"
    result = runner.invoke(app, sample_args(setup, "--n", "2", "--max-new-tokens", "4",
                                            "--no-stop-at-eos", "--out", str(out), "--json"))
    assert result.exit_code == 0, result.stderr
    assert "1 sequence(s) ended early with no q" in result.stderr
    assert "status 'invalid': key 'theta': NaN" in result.stderr
    stats = strict_json(result.stdout)["statistics"]
    assert stats["end_reason_counts"] == {"max-new-tokens": 5, "no-q": 1}
    sequences = [strict_json(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["end_reason"] for s in sequences] == ["no-q"] + ["max-new-tokens"] * 5
    assert sequences[0]["length"] == 2 and sequences[0]["end_message"].startswith("step 2")
    assert all(s["length"] == 4 for s in sequences[1:])
    assert "no-q 1" in (out / "report.md").read_text()


def test_sample_bad_input(setup, runner, tmp_path):
    assert_refused(runner.invoke(app, sample_args(setup, "--sampler", "greedy")),
                   "unknown sampler")
    assert_refused(runner.invoke(app, sample_args(setup, "--sampler", "fixed:2")), "fixed:A")
    assert_refused(runner.invoke(app, sample_args(setup, "--sampler", "on-policy,on-policy")),
                   "twice")
    assert_refused(runner.invoke(app, sample_args(setup, "--n", "0")), "--n")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    assert_refused(runner.invoke(app, sample_args(setup, "--out", str(folder))),
                   "not empty and not a geomix report")
    assert (folder / "thesis.tex").read_text() == "precious"
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert_refused(runner.invoke(app, sample_args(setup, "--out", str(a_file))),
                   "not a folder")
    holder = runner.invoke(app, sample_args(setup, "--out", str(setup["root"])))
    assert_refused(holder, "holds the input")
