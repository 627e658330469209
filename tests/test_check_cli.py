"""`geomix check SOURCE`: per-row four cases, ESS and weights against direct computations;
JSON schema, threshold option, exit codes, report folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.optimize import brentq

from geomix_cli.cli import app


def _alpha_star(pt, pT):
    def d(a):
        g = pt**a * pT ** (1 - a)
        q = g / g.sum()
        return np.sum(q * np.log(pT / pt))

    return brentq(d, 0, 1, xtol=1e-15)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    rng = np.random.default_rng(4242)
    pt = rng.dirichlet(np.full(12, 0.7), size=5)
    pT = rng.dirichlet(np.full(12, 0.7), size=5)
    pt = np.maximum(pt, 1e-9)
    pT = np.maximum(pT, 1e-9)
    pt /= pt.sum(1, keepdims=True)
    pT /= pT.sum(1, keepdims=True)
    path = tmp_path_factory.mktemp("check") / "pairs.npz"
    np.savez(path, pi_theta=pt, pi_t=pT)
    return path, pt, pT


def test_json_against_direct_loop(runner, pairs):
    path, pt, pT = pairs
    res = runner.invoke(app, ["check", str(path), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["schema_version"] == 1 and len(data["rows"]) == 5
    for rec in data["rows"]:
        i = rec["row"]
        a = _alpha_star(pt[i], pT[i])
        assert_allclose(rec["alpha"], a, atol=1e-10)
        g = pt[i] ** a * pT[i] ** (1 - a)
        q = g / g.sum()
        thr = 1 / 12
        counts, meet = [0] * 4, [0] * 4
        for x, y, z in zip(pt[i], pT[i], q):
            c = 0 if x >= thr and y >= thr else 1 if y >= thr else 2 if x >= thr else 3
            ok = [min(x, y) * (1 - 1e-9) <= z <= max(x, y) * (1 + 1e-9),
                  x < z <= y * (1 + 1e-9), y * (1 - 1e-9) <= z < x, z < thr][c]
            counts[c] += 1
            meet[c] += ok
        assert [rec["cases"][f"case{c + 1}"]["tokens"] for c in range(4)] == counts
        assert [rec["cases"][f"case{c + 1}"]["meeting"] for c in range(4)] == meet
        # C = KL(q*||pi_theta) = KL(q*||pi_t), summed here
        assert_allclose(rec["chernoff"], np.sum(q * np.log(q / pt[i])), rtol=1e-10)
        assert_allclose(rec["chernoff"], np.sum(q * np.log(q / pT[i])), rtol=1e-10)
        e_th, e_t = 1 / np.sum(pt[i] ** 2 / q), 1 / np.sum(pT[i] ** 2 / q)
        assert_allclose([rec["ess_theta"], rec["ess_target"]], [e_th, e_t], rtol=1e-9)
        assert_allclose(rec["ess_ratio"], max(e_th, e_t) / min(e_th, e_t), rtol=1e-9)
        w = pt[i] / q
        assert_allclose(rec["weights"]["min"], w.min(), rtol=1e-9)
        assert_allclose(rec["weights"]["max"], w.max(), rtol=1e-9)
        assert_allclose(rec["weights"]["second_moment_under_q"], 1 / e_th, rtol=1e-9)


def test_threshold_changes_the_cases(runner, pairs):
    path, _, _ = pairs
    low = json.loads(runner.invoke(app, ["check", str(path), "--json", "--threshold",
                                         "1e-12"]).stdout)
    high = json.loads(runner.invoke(app, ["check", str(path), "--json", "--threshold",
                                          "0.99"]).stdout)
    assert all(r["cases"]["case1"]["tokens"] == 12 for r in low["rows"])
    assert all(r["cases"]["case4"]["tokens"] == 12 for r in high["rows"])
    assert low["threshold"] == 1e-12


def test_bad_threshold_and_bad_source(runner, pairs, tmp_path):
    path, _, _ = pairs
    res = runner.invoke(app, ["check", str(path), "--threshold", "2"])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = runner.invoke(app, ["check", str(bad)])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1


def test_partial_batch_exit_3_and_no_root_row(runner, tmp_path):
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps({"pi_theta": [[0.6, 0.3, 0.1], [0.6, 0.4, 0.0], [0.5, "nan", 0.5]],
                                "pi_t": [[0.2, 0.3, 0.5], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]]}))
    res = runner.invoke(app, ["check", str(path), "--json"])
    assert res.exit_code == 3, res.output
    rows = json.loads(res.stdout)["rows"]
    assert [r["status"] for r in rows] == ["ok", "no-root", "invalid"]
    assert rows[1]["alpha"] is None and rows[1]["ess_theta"] is None


def test_report_folder(runner, pairs, tmp_path):
    path, _, _ = pairs
    out = tmp_path / "rep"
    res = runner.invoke(app, ["check", str(path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("report.md", "check.csv", "four_cases.png", "ess_scatter.png",
                 "alpha_per_row.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 100
    assert "Four behaviour cases" in (out / "report.md").read_text()
