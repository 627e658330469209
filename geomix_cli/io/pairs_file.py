"""Streamed `[B, T, V]` pair files (`geomix pairs`): written row by row, never held in memory.

`PairsFileWriter` writes through `writers.AtomicFile`, the one atomic writer: the file is built
under a temporary name in the destination's folder, with the mode the umask asks for (or the
replaced file's), and renamed into place on `commit()`; `abort()` (or an exception inside `with`)
removes it and the output path is left as it was. The scratch `.npy` members of an `.npz` are
AtomicFile temporaries of the same path that are never committed, so the next write of that path
removes those a killed writer left. The output path follows the file rule of
`outputs.check_output_file` (an existing file only with --force, never an input), checked by
`check_pairs_output` before any work.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from geomix_cli.core.validation import LOGITS
from geomix_cli.errors import InputError, OutputError
from geomix_cli.io.readers import KEY_PAIRS, os_error_text
from geomix_cli.io.writers import AtomicFile, dumps_json

PAIRS_MARKER_KEY = "geomix"  # safetensors __metadata__ key / npz member naming the writer
PAIRS_MARKER = "pairs"
PAIRS_FORMATS = (".safetensors", ".npz")
PAIRS_DTYPES = {"float32": ("F32", "<f4"), "float16": ("F16", "<f2"), "bfloat16": ("BF16", None)}
_NUMPY_TO_SAFETENSORS = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64",
                         "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
                         "bool": "BOOL"}


def bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even (NaN stays NaN)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    bits = values.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def check_pairs_output(out, *, inputs=(), force: bool = False, dtype: str = "float32") -> Path:
    """Refuse, before any work, an output path for a pairs file: not .safetensors / .npz,
    bfloat16 into .npz, or a path `outputs.check_output_file` refuses."""
    from geomix_cli.io.outputs import check_output_file

    path = Path(out)
    if path.suffix.lower() not in PAIRS_FORMATS:
        raise InputError(f"output must end in {' or '.join(PAIRS_FORMATS)}", file=str(out))
    if dtype not in PAIRS_DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(PAIRS_DTYPES)}, not '{dtype}'")
    if path.suffix.lower() == ".npz" and dtype == "bfloat16":
        raise InputError("bfloat16 has no numpy dtype, so .npz cannot hold it; write "
                         ".safetensors or choose --dtype float16/float32", file=str(out))
    return check_output_file(out, inputs=inputs, force=force)


class PairsFileWriter:
    """Write a `[B, T, V]` pairs file row by row, without holding it in memory, atomically.

    Keys: `logits_theta`, `logits_t` ([B, T, V] in `dtype`: float32, float16 or bfloat16 (bfloat16
    in .safetensors only)), the small arrays given (e.g. `attention_mask` [B, T]), `meta` (one
    string per [b, t] position, B*T of them), a marker naming the writer and `geomix_info` (the
    run's settings as JSON). `load_source` reads the result like any other pairs file."""

    def __init__(self, path, *, shape: tuple[int, int, int], dtype: str, arrays: dict,
                 meta: list[str], info: dict | None = None):
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        if dtype not in PAIRS_DTYPES:
            raise InputError(f"--dtype must be one of {', '.join(PAIRS_DTYPES)}, not '{dtype}'")
        self.dtype = dtype
        self.format = self.path.suffix.lower()
        if self.format not in PAIRS_FORMATS:
            raise InputError(f"output must end in {' or '.join(PAIRS_FORMATS)}", file=str(path))
        if self.format == ".npz" and dtype == "bfloat16":
            raise InputError("bfloat16 has no numpy dtype, so .npz cannot hold it; write "
                             ".safetensors or choose --dtype float16/float32", file=str(path))
        if len(meta) != self.shape[0] * self.shape[1]:
            raise ValueError("meta needs one string per [b, t] position")
        self.itemsize = 4 if dtype == "float32" else 2
        self.row_bytes = self.shape[1] * self.shape[2] * self.itemsize
        self._out: AtomicFile | None = None
        self._members: dict[str, AtomicFile] = {}  # .npz: member name -> its scratch .npy file
        self._written = np.zeros(self.shape[0], dtype=bool)
        self._closed = False
        self._maps = {}
        self._arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        self._meta = [str(m) for m in meta]
        self._info = dict(info or {})
        try:
            # removes a dead writer's leftovers of this path (its .npy members too)
            self._out = AtomicFile(self.path)
            if self.format == ".safetensors":
                self._open_safetensors()
            else:
                self._open_npz()
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot write: {os_error_text(exc)} (nothing was written)",
                              file=str(self.path)) from None
        except BaseException:
            self.abort()
            raise

    @property
    def tmp(self) -> Path:
        """The temporary file that `commit()` renames into place."""
        return self._out.tmp

    def _scratch(self, key: str) -> AtomicFile:
        """A scratch file for the .npz member `key`: an AtomicFile temporary of the output path,
        never committed (removed by `abort`/`commit`, or by the next write of the path if this
        process dies)."""
        member = self._members[key] = AtomicFile(self.path, clean=False)
        return member

    def _open_safetensors(self):
        """One preallocated file: header and small arrays first, then the two logit tensors,
        whose rows are written in place (pwrite) as they come."""
        header, offset, small = {}, 0, []
        for key, value in self._arrays.items():
            name = _NUMPY_TO_SAFETENSORS.get(value.dtype.name)
            if name is None:
                raise ValueError(f"cannot store {value.dtype} in safetensors")
            raw = value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes()
            header[key] = {"dtype": name, "shape": list(value.shape),
                           "data_offsets": [offset, offset + len(raw)]}
            small.append(raw)
            offset += len(raw)
        self._logit_offset = {}
        total = self.shape[0] * self.row_bytes
        for key in KEY_PAIRS[LOGITS]:
            header[key] = {"dtype": PAIRS_DTYPES[self.dtype][0], "shape": list(self.shape),
                           "data_offsets": [offset, offset + total]}
            self._logit_offset[key] = offset
            offset += total
        header["__metadata__"] = {PAIRS_MARKER_KEY: PAIRS_MARKER, "meta": json.dumps(self._meta),
                                  "geomix_info": dumps_json(self._info, indent=None)}
        head = json.dumps(header).encode("utf-8")
        head += b" " * (-len(head) % 8)
        self._data_start = 8 + len(head)
        self._fd = self._out.handle.fileno()  # rows go in place with pwrite, never buffered
        os.ftruncate(self._fd, self._data_start + offset)
        os.pwrite(self._fd, struct.pack("<Q", len(head)) + head + b"".join(small), 0)

    def _open_npz(self):
        """.npy members as temporary files beside the output (the logits as memory maps), zipped
        (stored, not compressed) at commit."""
        storage = PAIRS_DTYPES[self.dtype][1]
        for key in KEY_PAIRS[LOGITS]:
            member = self._scratch(key)
            member.handle.close()  # the memory map opens it by name
            self._maps[key] = np.lib.format.open_memmap(member.tmp, mode="w+", dtype=storage,
                                                        shape=self.shape)

    def write_row(self, b: int, theta: np.ndarray, target: np.ndarray) -> None:
        """Store prompt b's [T_b, V] logits (T_b <= T; the rest of the row stays 0, masked)."""
        for key, values in zip(KEY_PAIRS[LOGITS], (theta, target)):
            values = np.asarray(values, dtype=np.float32)
            if (values.ndim != 2 or values.shape[0] > self.shape[1]
                    or values.shape[1] != self.shape[2]):
                raise ValueError(f"row {b}: {values.shape} does not fit {self.shape[1:]}")
            if self.dtype == "float16":
                big = np.abs(values[np.isfinite(values)]).max(initial=0.0)
                if big > np.finfo(np.float16).max:
                    raise InputError(f"a logit of magnitude {big:.4g} overflows float16; use "
                                     "--dtype bfloat16 or float32", file=str(self.path))
            if self.format == ".npz":
                self._maps[key][b, :values.shape[0]] = values
                continue
            raw = (bfloat16_bits(values).astype("<u2") if self.dtype == "bfloat16" else
                   values.astype(PAIRS_DTYPES[self.dtype][1])).tobytes()
            try:
                os.pwrite(self._fd, raw, self._data_start + self._logit_offset[key]
                          + b * self.row_bytes)
            except OSError as exc:
                raise OutputError(f"cannot write: {os_error_text(exc)} (nothing was written)",
                                  file=str(self.path)) from None
        self._written[b] = True

    def commit(self) -> Path:
        if not self._written.all():
            missing = int(np.flatnonzero(~self._written)[0])
            raise RuntimeError(f"pairs file committed with row {missing} unwritten")
        try:
            if self.format == ".npz":
                self._zip_members()
            self._out.commit()  # flush, fsync, rename over the path
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot write: {os_error_text(exc)} (nothing was written)",
                              file=str(self.path)) from None
        self._closed = True
        self._remove_members()
        return self.path

    def _remove_members(self) -> None:
        for member in self._members.values():
            member.discard()

    def _zip_members(self):
        import zipfile

        for value in self._maps.values():
            value.flush()
        self._maps = {}
        members = dict(self._arrays)
        members["meta"] = np.asarray(self._meta, dtype=str)
        members[PAIRS_MARKER_KEY] = np.asarray(PAIRS_MARKER)
        members["geomix_info"] = np.asarray(dumps_json(self._info, indent=None))
        for key, value in members.items():
            member = self._scratch(key)
            np.save(member.handle, value, allow_pickle=False)
            member.handle.close()
        with zipfile.ZipFile(self._out.handle, "w", compression=zipfile.ZIP_STORED,
                             allowZip64=True) as archive:
            for key in sorted(self._members):
                archive.write(self._members[key].tmp, arcname=f"{key}.npy")

    def abort(self) -> None:
        """Remove everything this writer created (the output path is left as it was)."""
        if self._closed:
            return
        self._closed = True
        self._maps = {}
        if self._out is not None:
            self._out.discard()
        self._remove_members()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False
