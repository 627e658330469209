"""--device on compare-alpha and verify: the torch backend is checked against the numpy solve."""

import json

import numpy as np
import pytest
from numpy.testing import assert_allclose
from typer.testing import CliRunner

from geomix_cli.checks import Family, SuiteResult, backend_agreement
from geomix_cli.cli import app
from geomix_cli.core import solve_alpha
from geomix_cli.sources import load_source

torch = pytest.importorskip("torch")
runner = CliRunner()


def _families():
    out = []
    for name, spec in [("llm", "gen:llm-like:V=300,rows=6,seed=3"),
                       ("dirichlet-zeros", "gen:dirichlet:V=20,zeros=3,rows=20,seed=4")]:
        src = load_source(spec)
        out.append(Family(name, spec, src.log_pi_theta, src.log_pi_t))
    return out


def test_backend_agreement_accepts_the_torch_backend_in_float64():
    from geomix_cli.commands._device import suite_solver

    options = suite_solver(device="cpu", dtype="float64")
    report = backend_agreement(_families(), options["device_solver"], options["device_label"])
    assert report["agrees"], report
    assert all(r["status_mismatches"] == 0 for r in report["per_family"])
    assert max(r["max_abs_alpha_difference"] for r in report["per_family"]) < 1e-11


def test_backend_agreement_catches_a_wrong_backend():
    def off_by_1e_6(log_pi_theta, log_pi_t):
        sol = solve_alpha(log_pi_theta, log_pi_t, "newton")
        sol.alpha = sol.alpha + 1e-6
        return sol

    report = backend_agreement(_families(), off_by_1e_6, "planted float64")
    assert not report["agrees"]
    assert all(r["rows_beyond_tolerance"] > 0 for r in report["per_family"])
    suite = SuiteResult("s", "d", 0, False, claims=[], backend=report)
    assert suite.identity_failures == ["backend-agreement"]
    assert suite.to_json()["backend"]["agrees"] is False


def test_compare_alpha_device_cpu_matches_numpy_kl_symmetry():
    spec = "gen:llm-like:V=400,rows=4,seed=5"
    result = runner.invoke(app, ["compare-alpha", spec, "-p", "kl-symmetry", "--device", "cpu",
                                 "--json"])
    assert result.exit_code == 0, result.output
    alphas = [r["alpha"] for r in json.loads(result.stdout)["results"]]
    src = load_source(spec)
    exact = solve_alpha(src.log_pi_theta, src.log_pi_t, "newton").alpha
    assert_allclose(alphas, exact, rtol=0, atol=1e-6)  # float32 compute, the documented bound


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("argv", [["verify", "verify_alpha_theory", "--device", "cuda"],
                                  ["compare-alpha", "gen:two-point", "--device", "cuda"]])
def test_device_cuda_without_cuda_is_one_line_exit_5(argv):
    result = runner.invoke(app, argv)
    assert result.exit_code == 5
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cuda" in lines[0].lower()
    assert "Traceback" not in result.output
