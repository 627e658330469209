"""The committed default report must regenerate byte for byte: `geomix verify verify_alpha_theory`
(in a fresh process, into a temporary folder) gives exactly the files of
outputs/verify_alpha_theory/. A difference names the file and its first differing line."""

from __future__ import annotations

from pathlib import Path

from conftest import REPO_ROOT

COMMITTED = REPO_ROOT / "outputs" / "verify_alpha_theory"


def _first_difference(a: bytes, b: bytes) -> str:
    la, lb = a.splitlines(), b.splitlines()
    for i, (x, y) in enumerate(zip(la, lb), start=1):
        if x != y:
            col = next((j for j, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
            lo = max(0, col - 80)
            return (f"line {i}, column {col + 1}:\n  committed:   ...{x[lo:col + 120]!r}\n"
                    f"  regenerated: ...{y[lo:col + 120]!r}")
    if len(la) != len(lb):
        return f"line {min(len(la), len(lb)) + 1}: one file ends there ({len(la)} vs {len(lb)} lines)"
    return f"same lines, different bytes ({len(a)} vs {len(b)} bytes: line endings or binary)"


def test_default_report_regenerates_byte_for_byte(default_verify_run):
    proc, out = default_verify_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    committed = {p.name for p in COMMITTED.iterdir() if p.is_file()}
    fresh = {p.name for p in Path(out).iterdir() if p.is_file()}
    assert committed == fresh, (f"files only committed: {sorted(committed - fresh)}; only "
                                f"regenerated: {sorted(fresh - committed)}")
    for name in sorted(committed):
        a, b = (COMMITTED / name).read_bytes(), (Path(out) / name).read_bytes()
        assert a == b, (f"{name} differs from the committed copy at "
                        f"{_first_difference(a, b)}\nRegenerate with `geomix verify "
                        f"verify_alpha_theory` and commit outputs/verify_alpha_theory/.")
