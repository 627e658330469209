"""Property: a corrupted pair file never crashes geomix.

Valid files in the six formats (written here with numpy, pandas, pyarrow, torch; not with geomix)
are truncated, have bytes flipped, header bytes overwritten, bytes inserted or a stretch repeated.
`geomix solve FILE --json` must then exit 0 or 3 with valid JSON on stdout, or 2 with exactly one
error line: never 1 (a traceback). The runs are in-process (CliRunner: the same `guarded` error
handling as the program) so that hypothesis can try many; derandomised, so CI is repeatable
(GEOMIX_FUZZ_EXAMPLES=500 explores more, with fresh random draws).
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("GEOMIX_FUZZ_EXAMPLES", "30"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 30,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def _pairs():
    rng = np.random.default_rng(3)
    theta = rng.dirichlet(np.ones(5), size=3)
    target = rng.dirichlet(np.ones(5), size=3)
    return theta, target


def _npz() -> bytes:
    theta, target = _pairs()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, pi_theta=theta, pi_t=target, mask=np.array([1, 1, 0]),
                        meta=np.array(["a", "b", "c"]))
    return buffer.getvalue()


def _json() -> bytes:
    theta, target = _pairs()
    return json.dumps({"pi_theta": theta.tolist(), "pi_t": target.tolist(),
                       "meta": ["a", "b", "c"]}).encode()


def _csv() -> bytes:
    theta, target = _pairs()
    lines = ["row,pi_theta,pi_t"] + [f"{r},{a!r},{b!r}" for r in range(3)
                                     for a, b in zip(theta[r].tolist(), target[r].tolist())]
    return ("\n".join(lines) + "\n").encode()


def _parquet() -> bytes:
    import pandas as pd

    theta, target = _pairs()
    frame = pd.DataFrame({"row": np.repeat(np.arange(3), 5), "pi_theta": theta.ravel(),
                          "pi_t": target.ravel()})
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


def _safetensors() -> bytes:
    theta, target = _pairs()
    a, b = theta.astype("<f4").tobytes(), target.astype("<f4").tobytes()
    header = json.dumps({"pi_theta": {"dtype": "F32", "shape": [3, 5],
                                      "data_offsets": [0, len(a)]},
                         "pi_t": {"dtype": "F32", "shape": [3, 5],
                                  "data_offsets": [len(a), len(a) + len(b)]},
                         "__metadata__": {"meta": json.dumps(["a", "b", "c"])}}).encode()
    return struct.pack("<Q", len(header)) + header + a + b


def _pt() -> bytes:
    torch = pytest.importorskip("torch")
    theta, target = _pairs()
    buffer = io.BytesIO()
    torch.save({"pi_theta": torch.tensor(theta), "pi_t": torch.tensor(target)}, buffer)
    return buffer.getvalue()


VALID = {".npz": _npz, ".json": _json, ".csv": _csv, ".parquet": _parquet,
         ".safetensors": _safetensors, ".pt": _pt}


@st.composite
def corruptions(draw, size: int):
    """(name, function bytes -> bytes) for one corruption of a file of `size` bytes."""
    kind = draw(st.sampled_from(["truncate", "flip", "header", "insert", "repeat", "zero"]))
    at = draw(st.integers(0, max(size - 1, 0)))
    if kind == "truncate":
        return kind, lambda b: b[:at]
    if kind == "flip":
        spots = draw(st.lists(st.tuples(st.integers(0, max(size - 1, 0)), st.integers(1, 255)),
                              min_size=1, max_size=8))

        def flip(b):
            b = bytearray(b)
            for pos, mask in spots:
                b[pos % len(b)] ^= mask
            return bytes(b)
        return kind, flip
    if kind == "header":  # the first bytes hold magic numbers, sizes and headers
        junk = draw(st.binary(min_size=1, max_size=16))
        start = draw(st.integers(0, min(size, 96)))
        return kind, lambda b: b[:start] + junk + b[start + len(junk):]
    if kind == "insert":
        junk = draw(st.binary(min_size=1, max_size=64))
        return kind, lambda b: b[:at] + junk + b[at:]
    if kind == "repeat":
        length = draw(st.integers(1, 64))
        return kind, lambda b: b[:at] + b[at:at + length] * 2 + b[at + length:]
    length = draw(st.integers(1, 64))
    return kind, lambda b: b[:at] + bytes(min(length, max(size - at, 0))) + b[at + length:]


def _run_on(suffix: str, data: bytes):
    from typer.testing import CliRunner

    from geomix_cli.cli import app

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"pairs{suffix}"
        path.write_bytes(data)
        return CliRunner().invoke(app, ["solve", str(path), "--json"])


def _check(result) -> None:
    assert isinstance(result.exception, SystemExit) or result.exception is None, (
        result.exception, result.stderr)
    assert result.exit_code in (0, 2, 3), (result.exit_code, result.stderr, result.exception)
    assert "Traceback" not in result.stderr
    if result.exit_code == 2:
        errors = [line for line in result.stderr.splitlines() if line.startswith("geomix: error")]
        assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], \
            result.stderr
    else:
        payload = json.loads(result.stdout)
        assert isinstance(payload["rows"], list) and payload["rows"]


@pytest.mark.parametrize("suffix", list(VALID))
def test_the_valid_files_solve(suffix):
    result = _run_on(suffix, VALID[suffix]())
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("suffix", list(VALID))
@FUZZ
@given(data=st.data())
def test_a_corrupted_file_never_crashes(suffix, data):
    original = VALID[suffix]()
    name, corrupt = data.draw(corruptions(len(original)), label="corruption")
    _check(_run_on(suffix, corrupt(original)))
