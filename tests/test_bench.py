"""`geomix bench` and its harness: structure and correctness of what it reports (never timings:
speed targets are checked by running the bench, not by timed assertions)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from geomix_cli.bench import BenchConfig, _round_bf16, make_logits, run_bench
from geomix_cli.commands._device import parse_memory
from geomix_cli.errors import InputError

RESULT_KEYS = {"method", "device", "compute_dtype", "input", "rows", "seconds", "seconds_all",
               "seconds_per_row", "passes", "max_abs_alpha_error", "peak_extra_bytes",
               "memory_measure", "effective_gb_s", "floor_fraction", "speedup_vs_reference"}


def test_bf16_rounding_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(0, 5, size=4096).astype(np.float32)
    x[:4] = [0.0, -0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8]  # ties to even
    expected = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    assert_array_equal(_round_bf16(x), expected)


def test_generated_data_is_exactly_representable_in_the_storage_dtype():
    for dtype in ("float16", "bfloat16"):
        theta, target = make_logits(BenchConfig(rows=2, vocab=100, dtype=dtype))
        if dtype == "float16":
            assert_array_equal(theta.astype(np.float16).astype(np.float32), theta)
        else:
            assert_array_equal(_round_bf16(theta), theta)
        assert theta.dtype == np.float32 and theta.shape == (2, 100)


def test_numpy_only_bench_reports_every_field():
    config = BenchConfig(rows=3, vocab=2000, repeat=1, devices=(), brentq_rows=1)
    payload = run_bench(config)
    methods = [r["method"] for r in payload["results"]]
    assert any(m.startswith("bisection") for m in methods)
    assert any(m.startswith("brentq") for m in methods)
    assert any(m.startswith("newton (numpy") for m in methods)
    for r in payload["results"]:
        assert RESULT_KEYS <= r.keys()
        assert r["seconds"] > 0 and r["passes"] >= 1
        assert r["memory_measure"] == "tracemalloc" and r["peak_extra_bytes"] >= 0
    by = {r["method"].split(" ")[0]: r for r in payload["results"]}
    assert by["brentq"]["rows"] == 1 and "subsample" in by["brentq"]["note"]
    assert by["brentq"]["max_abs_alpha_error"] <= 1e-13
    assert by["newton"]["max_abs_alpha_error"] == 0.0  # it is the float64 reference
    assert 1e-8 < by["bisection"]["max_abs_alpha_error"] < 1e-3  # the derivation's reference code's bias
    assert by["newton"]["passes"] <= 8 < by["bisection"]["passes"]
    assert payload["machine"]["bandwidth_gb_s"]["cpu"] > 0
    assert payload["input_bytes"] == 2 * 3 * 2000 * 4


def test_bench_with_torch_on_cpu():
    pytest.importorskip("torch")
    config = BenchConfig(rows=2, vocab=3000, repeat=1, devices=("cpu",), dtype="bfloat16",
                         methods=("reference", "newton", "torch"))
    payload = run_bench(config)
    by = {r["method"]: r for r in payload["results"]}
    ref = by["reference bisection (the derivation's reference, torch)"]
    refs = [r for r in payload["results"] if r["method"].startswith("reference")]
    assert ref["passes"] == 20
    assert max(r["speedup_vs_reference"] for r in refs) == pytest.approx(1.0)  # the faster one
    assert by["newton (torch float32)"]["max_abs_alpha_error"] <= 1e-6
    assert by["newton (torch float64)"]["max_abs_alpha_error"] <= 1e-12
    assert by["newton (torch float32)"]["memory_measure"] == "rss-sampled"


def test_bench_cli_json(runner):
    from geomix_cli.cli import app

    result = runner.invoke(app, ["bench", "--rows", "2", "--vocab", "500", "--repeat", "1",
                                 "--device", "cpu", "--method", "newton", "--method", "torch",
                                 "--json"]
                           if _has_torch() else
                           ["bench", "--rows", "2", "--vocab", "500", "--repeat", "1",
                            "--method", "newton", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert {"config", "machine", "results"} <= payload.keys()
    assert payload["config"]["rows"] == 2 and payload["config"]["vocab"] == 500
    for r in payload["results"]:
        assert {"method", "device", "seconds", "max_abs_alpha_error"} <= r.keys()


def test_bench_cli_table_and_refusals(runner):
    from geomix_cli.cli import app

    ok = runner.invoke(app, ["bench", "--rows", "1", "--vocab", "300", "--repeat", "1",
                             "--method", "newton", "--method", "brentq"])
    assert ok.exit_code == 0 and "newton" in ok.stdout
    assert runner.invoke(app, ["bench", "--dtype", "int8"]).exit_code == 2
    assert runner.invoke(app, ["bench", "--method", "magic"]).exit_code == 2
    assert runner.invoke(app, ["bench", "--rows", "0"]).exit_code == 2


def test_bench_cuda_without_cuda_is_exit_5(runner):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    from geomix_cli.cli import app

    result = runner.invoke(app, ["bench", "--rows", "1", "--vocab", "100", "--device", "cuda"])
    assert result.exit_code == 5 and "Traceback" not in result.output


@pytest.mark.parametrize("text,expected", [("512M", 512 << 20), ("2G", 2 << 30),
                                           ("1.5GiB", 3 << 29), ("2097152", 2 << 20),
                                           (None, None)])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["lots", "12Q", "1K", "-5M"])
def test_parse_memory_refuses(text):
    with pytest.raises(InputError):
        parse_memory(text)


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------------
# peers (dit) and the API row


def test_peer_dit_is_skipped_with_a_note_when_missing(monkeypatch):
    import sys

    from geomix_cli.bench import run_peers

    monkeypatch.setitem(sys.modules, "dit", None)
    config = BenchConfig(rows=1, vocab=50, peers=("dit",))
    out = run_peers(config, *make_logits(config), log=lambda text: None)
    assert "not installed" in out["dit"]["skipped"]


def test_peer_dit_reports_each_size_with_geomix_exact(monkeypatch):
    pytest.importorskip("dit")
    from geomix_cli import bench

    monkeypatch.setattr(bench, "PEER_SIZES", (10, 300))
    from geomix_cli import timing

    original = timing.best_interleaved
    monkeypatch.setattr(timing, "best_interleaved",
                        lambda functions, rounds=5: original(functions, budget=0.005, rounds=1))
    config = BenchConfig(rows=2, vocab=400, peers=("dit",))
    out = bench.run_peers(config, *make_logits(config), log=lambda text: None)["dit"]
    sizes = [(r["rows"], r["vocab"]) for r in out["sizes"]]
    assert sizes == [(1, 10), (1, 300), (2, 400)]
    for r in out["sizes"]:
        assert r["geomix_seconds"] > 0 and r["dit_seconds"] > 0 and r["dit_over_geomix"] > 0
        # dit's Chernoff information (minimize_scalar, xtol ~1e-5) is close to the exact one
        assert r["max_abs_chernoff_difference_nats"] < 1e-6


def test_bench_api_row_and_unknown_peer(runner):
    from geomix_cli.cli import app

    payload = run_bench(BenchConfig(rows=2, vocab=300, repeat=1, devices=(),
                                    methods=("newton", "api")))
    api = next(r for r in payload["results"] if r["method"].startswith("api.solve"))
    assert api["max_abs_alpha_error"] <= 1e-14 and api["input"] == "stored logits"
    result = runner.invoke(app, ["bench", "--rows", "1", "--vocab", "100", "--peers", "scipy"])
    assert result.exit_code == 2 and "unknown peer" in result.output
