"""Helpers of the hostile-input tests: run the real `geomix` program in a subprocess, check that a
refusal is exactly one line with no traceback, and fingerprint folders byte for byte.

The pair files are written here with numpy directly (not with geomix), so a bug in geomix's writer
cannot hide one in its reader.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np

GEOMIX = [sys.executable, "-m", "geomix_cli"]
REPO_ROOT = Path(__file__).resolve().parents[1]


def run_geomix(*args, cwd, env=None, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    """`geomix ARGS` in `cwd` (a fresh process: main(), signal handlers, exit codes)."""
    full_env = dict(os.environ)
    full_env["MPLBACKEND"] = "Agg"
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                           full_env.get("PYTHONPATH")]))
    full_env.update(env or {})
    return subprocess.run([*GEOMIX, *map(str, args)], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)


def popen_geomix(*args, cwd, env=None, **kwargs) -> subprocess.Popen:
    full_env = dict(os.environ)
    full_env["MPLBACKEND"] = "Agg"
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                           full_env.get("PYTHONPATH")]))
    full_env.update(env or {})
    return subprocess.Popen([*GEOMIX, *map(str, args)], cwd=cwd, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, **kwargs)


def assert_refused(result, code: int, *fragments: str) -> str:
    """Exit `code`, no traceback, exactly one line on stderr starting 'geomix: error:' and
    holding every fragment. Returns the line."""
    err = result.stderr
    assert "Traceback" not in err and "Traceback" not in result.stdout, err
    assert result.returncode == code, (result.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("geomix: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def snapshot(folder) -> dict:
    """{relative path: what it is} for everything under `folder` (files with their sha256 and
    mode, folders, links with their target, FIFOs/sockets/devices by kind)."""
    folder = Path(folder)
    out = {}
    if not os.path.lexists(folder):
        return {".": "missing"}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(),
                            stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("special", stat.S_IFMT(st.st_mode))
    return out


def write_npz(path, rows: int = 3, vocab: int = 6, seed: int = 0, *,
              identical: bool = False) -> Path:
    """A valid logits pair file, written with numpy (identical: both sides equal)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(rows, vocab))
    theta = base + rng.normal(size=(rows, vocab))
    np.savez(path, logits_theta=theta,
             logits_t=theta if identical else base + rng.normal(size=(rows, vocab)))
    return Path(path)


def write_csv(path, rows: int = 2, vocab: int = 4) -> Path:
    """A valid long-format probability CSV (row, pi_theta, pi_t), written by hand."""
    lines = ["row,pi_theta,pi_t"]
    for r in range(rows):
        theta = np.full(vocab, 1.0 / vocab)
        target = np.arange(1, vocab + 1, dtype=float)
        target /= target.sum()
        lines += [f"{r},{float(a)!r},{float(b)!r}" for a, b in zip(theta, target)]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)
