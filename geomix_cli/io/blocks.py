"""Reading pair files by row blocks, never whole: what a sharded run reads.

`array_refs(path)` reads a file's header only and says where each array's bytes are
(`ArrayRef`); `open_array_stream` / `PairBlockReader` then read rows [start, stop) of them:

- `.safetensors` and uncompressed `.npz` (`np.savez`): memory-mapped; each block maps only its own
  rows and unmaps them when dropped (so the pages read do not stay in the process's memory);
  bfloat16 is widened to float32 exactly, block by block;
- compressed `.npz` (`np.savez_compressed`): decompressed as a stream, block after block (it
  cannot be entered in the middle: blocks must come in order).

The headers are checked by the same code as the whole-file readers (`readers`): regular files
only, safetensors offsets / shapes / dtypes / overlaps, npz member headers and pickled members,
so a file refused whole is refused here with the same line.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geomix_cli.errors import InputError
from geomix_cli.io.readers import (check_npz_head, npz_members, open_regular_file,
                                   os_error_text, read_safetensors_header)

#: formats read by row blocks; the others are read whole
BLOCK_FORMATS = (".safetensors", ".npz")


@dataclass
class ArrayRef:
    """Where one array's bytes are in a file: offset, dtype as stored, shape; or a compressed
    npz member to stream."""

    path: str
    offset: int
    dtype: np.dtype | None  # None for bfloat16 (stored as 2-byte words)
    shape: tuple[int, ...]
    dtype_name: str
    member: str | None = None  # compressed npz: the member to decompress as a stream
    fortran: bool = False

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype is None else self.dtype.itemsize

    def read_all(self) -> np.ndarray:
        """The whole array (only for small ones: masks)."""
        rows = int(np.prod(self.shape[:-1], dtype=np.int64)) if len(self.shape) > 1 else 1
        with open_array_stream(self) as stream:
            return stream.read(0, rows).reshape(self.shape)


def array_refs(path_text: str) -> dict[str, ArrayRef]:
    """{key: ArrayRef} of a .safetensors or .npz file, from its headers (no data is read)."""
    suffix = Path(path_text).suffix.lower()
    if suffix not in BLOCK_FORMATS:
        raise ValueError(f"{suffix} files are not read by row blocks")
    with open_regular_file(path_text) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise InputError(f"is empty (0 bytes): not a {suffix[1:]} file of pairs",
                             file=path_text)
        try:
            if suffix == ".safetensors":
                return _safetensors_refs(handle, path_text)
            return _npz_refs(handle, path_text, size)
        except OSError as exc:
            raise InputError(f"cannot read: {os_error_text(exc)}", file=path_text) from None


def _safetensors_refs(handle, label: str) -> dict[str, ArrayRef]:
    _, layout, data_start = read_safetensors_header(handle, label)
    refs = {}
    for key, (dtype, shape, start, _stop) in layout.items():
        if dtype == "bf16":
            refs[key] = ArrayRef(label, data_start + start, None, shape, "bfloat16")
        else:
            stored = np.dtype(dtype).newbyteorder("<")
            refs[key] = ArrayRef(label, data_start + start, stored, shape, stored.name)
    return refs


def _npz_refs(handle, label: str, size: int) -> dict[str, ArrayRef]:
    """Stored members are mapped at their data offset; compressed members are streamed."""
    check_npz_head(handle, label)
    refs = {}
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"cannot read as npz: {type(exc).__name__}: {exc}", file=label) from None
    with archive:
        for member in npz_members(archive, label):
            if member.key == "meta":
                continue
            fortran = member.fortran and len(member.shape) > 1
            if member.info.compress_type == zipfile.ZIP_STORED:
                offset = _zip_data_offset(handle, member.info, label) + member.header_bytes
                if offset + int(np.prod(member.shape)) * member.dtype.itemsize > size:
                    raise InputError("array bytes lie outside the file (truncated)", file=label,
                                     key=member.key)
                refs[member.key] = ArrayRef(label, offset, member.dtype, member.shape,
                                            member.dtype.name, fortran=fortran)
            else:
                refs[member.key] = ArrayRef(label, member.header_bytes, member.dtype,
                                            member.shape, member.dtype.name,
                                            member=member.info.filename, fortran=fortran)
    return refs


def _zip_data_offset(handle, info: zipfile.ZipInfo, label: str) -> int:
    """Where a stored member's bytes begin: after its local header (whose name / extra lengths
    may differ from the central directory's)."""
    handle.seek(info.header_offset)
    local = handle.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise InputError("corrupt npz (bad local header)", file=label)
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


# ----------------------------------------------------------------------------------------------
# reading row blocks


def _row_items(shape: tuple[int, ...]) -> tuple[int, bool]:
    """Items per flat row (the last axis) and whether the array is a single [V] row."""
    return (int(shape[-1]) if shape else 1), len(shape) <= 1


class _Stream:
    """Rows of one array, read block by block; a context manager that closes what it opened."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _MappedStream(_Stream):
    """Rows of a stored array, one memory map per block (unmapped when the block is dropped)."""

    def __init__(self, ref: ArrayRef):
        self.ref = ref
        self.row_items, self.is_vector = _row_items(ref.shape)

    def read(self, start: int, stop: int) -> np.ndarray:
        ref = self.ref
        if self.is_vector:  # a single [V] row
            start, stop, count = 0, 1, self.row_items
        else:
            count = (stop - start) * self.row_items
        dtype = np.dtype("<u2") if ref.dtype is None else ref.dtype
        window = np.memmap(ref.path, dtype=dtype, mode="r",
                           offset=ref.offset + start * self.row_items * dtype.itemsize,
                           shape=(count,))
        block = window.reshape(stop - start, self.row_items)
        if ref.dtype is None:  # bfloat16: the top half of a float32, widened exactly
            return (block.astype(np.uint32) << 16).view(np.float32)
        return block


class _DeflatedStream(_Stream):
    """Rows of a compressed npz member, decompressed in order (blocks must come in order)."""

    def __init__(self, ref: ArrayRef):
        self.ref = ref
        self.handle = open_regular_file(ref.path)
        try:
            self.archive = zipfile.ZipFile(self.handle)
            self.member = self.archive.open(ref.member)
        except BaseException:
            self.handle.close()
            raise
        self.member.read(ref.offset)  # the npy header
        self.row_items, self.is_vector = _row_items(ref.shape)
        self.next_row = 0

    def read(self, start: int, stop: int) -> np.ndarray:
        if self.is_vector:
            start, stop = 0, 1
        if start != self.next_row:
            raise ValueError(f"compressed npz is read in order: asked for row {start}, "
                             f"next is {self.next_row}")
        nbytes = (stop - start) * self.row_items * self.ref.dtype.itemsize
        data = self.member.read(nbytes)
        if len(data) != nbytes:
            raise InputError("compressed npz member ends early (truncated)", file=self.ref.path,
                             key=self.ref.member[:-4])
        self.next_row = stop
        return np.frombuffer(data, dtype=self.ref.dtype).reshape(stop - start, self.row_items)

    def close(self) -> None:
        self.member.close()
        self.archive.close()
        self.handle.close()


def open_array_stream(ref: ArrayRef):
    return _DeflatedStream(ref) if ref.member is not None else _MappedStream(ref)


class PairBlockReader(_Stream):
    """Raw row blocks (theta, target) of two arrays of one file, flat rows [start, stop)."""

    def __init__(self, theta: ArrayRef, target: ArrayRef):
        self.label = theta.path
        first = open_array_stream(theta)
        try:
            self.streams = (first, open_array_stream(target))
        except BaseException:
            first.close()
            raise

    def read(self, flat_start: int, flat_stop: int):
        try:
            return tuple(s.read(flat_start, flat_stop) for s in self.streams)
        except InputError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            text = str(exc).splitlines()[0] if str(exc) else ""
            raise InputError(f"cannot read rows {flat_start}..{flat_stop - 1}: "
                             f"{type(exc).__name__}: {text}".rstrip(": "),
                             file=self.label) from None

    def close(self) -> None:
        for stream in self.streams:
            stream.close()
