"""Sharded runs on a local Dask cluster of 2 worker processes (the `dask` extra): the same Parquet
rows and the same aggregated check report as the single-process run, a transient failure on a
worker retried, a worker with another geomix version refused."""

from __future__ import annotations

import json

import pytest

import distributed  # noqa: F401 - the dask extra is part of the test install; fail loudly without

from geomix_cli.cli import app

from scale_helpers import make_real_shards, part_tables

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = make_real_shards(tmp_path_factory.mktemp("dask") / "shards")
    (folder / "zz_bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    return folder


def _same_parts(a, b) -> None:
    left, right = part_tables(a), part_tables(b)
    assert list(left) == list(right) and left
    for name in left:
        assert left[name].equals(right[name]), name


def test_a_local_cluster_solve_equals_the_single_process_solve_and_retries_a_failure(
        runner, shards, tmp_path, monkeypatch):
    single = tmp_path / "single.parquet"
    result = runner.invoke(app, ["solve", str(shards), "--out", str(single)])
    assert result.exit_code == 3, result.stderr  # the broken shard
    monkeypatch.setenv("GEOMIX_TEST_FAIL_ONCE", f"2@{tmp_path}")
    cluster = tmp_path / "cluster.parquet"
    result = runner.invoke(app, ["solve", str(shards), "--out", str(cluster), "--scheduler",
                                 "local", "--workers", "2"])
    assert result.exit_code == 3, result.stderr
    assert (tmp_path / "failed-once-2").exists()  # piece 2 failed once on a worker, was rerun
    assert "Traceback" not in result.stderr
    _same_parts(single, cluster)
    manifests = [json.loads((p / "_geomix_manifest.json").read_text())["summary"]
                 for p in (single, cluster)]
    assert manifests[0] == manifests[1]
    assert manifests[0]["statuses"] == {"invalid": 1, "ok": 12}


def test_a_local_cluster_check_writes_the_same_report_as_one_process(runner, shards, tmp_path):
    reports = []
    for name, extra in (("single", []), ("cluster", ["--scheduler", "local", "--workers", "2"])):
        out = tmp_path / name
        result = runner.invoke(app, ["check", str(shards), "--out", str(out), *extra])
        assert result.exit_code == 3, result.stderr
        reports.append(out)
    single, cluster = reports
    for name in ("report.md", "summary.json"):
        assert (single / name).read_bytes() == (cluster / name).read_bytes(), name
    _same_parts(single / "check.parquet", cluster / "check.parquet")
    summary = json.loads((single / "summary.json").read_text())
    assert summary["totals"]["rows_with_alpha"] == 12
    assert summary["per_shard"][-1]["error"].startswith(str(shards / "zz_bad.safetensors"))


def test_workers_with_another_geomix_version_are_refused(runner, shards, tmp_path, monkeypatch):
    import geomix_cli

    monkeypatch.setattr(geomix_cli, "__version__", "0.0.0-not-the-workers")
    out = tmp_path / "alpha.parquet"
    result = runner.invoke(app, ["solve", str(shards), "--out", str(out), "--scheduler", "local",
                                 "--workers", "1"])
    assert result.exit_code == 5
    lines = [line for line in result.stderr.splitlines() if line.startswith("geomix: error")]
    assert len(lines) == 1 and "do not run geomix 0.0.0-not-the-workers" in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing left behind
