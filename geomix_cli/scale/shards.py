"""Shards: which files a sharded SOURCE names, what each holds (from its header), and reading
row blocks of it with bounded memory.

A sharded source is a folder (its pair files, sorted by name, not recursive) or a glob
(`run42/*.safetensors`, `**` for sub-folders; quote it so the shell does not expand it). Every
shard is one pair file in any format `geomix solve` reads; shards may differ in V and layout.

Reading by row block, never the whole shard:
- `.safetensors` and uncompressed `.npz` (`np.savez`): memory-mapped; each block maps only its own
  rows and unmaps them when done (so the pages read do not stay in the process's memory);
  bfloat16 is widened to float32 exactly, block by block;
- compressed `.npz` (`np.savez_compressed`): decompressed as a stream, block after block (a shard
  of this kind is one piece of work: it cannot be entered in the middle);
- `.json`, `.csv`, `.parquet`, `.pt` and generator specs have no row index to seek to: such a
  shard is read whole through `io.load_source`, and refused (its rows `invalid`) when its
  estimated size does not fit the memory budget.

Layout rules are the ones of `io.load_source`: the same key names and kinds, `[B, V]` or
`[B, T, V]` rows (C order, position (b, t)), an optional `mask` / `attention_mask` whose 0
entries are padded positions (dropped, not errors). The header checks and mask handling call the
same functions as `io.load_source`, so a sharded run refuses exactly what a single-file run does.
"""

from __future__ import annotations

import glob
import json
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geomix_cli.errors import InputError

GLOB_CHARS = "*?["
#: formats read by row blocks; the others are read whole
STREAMED_FORMATS = (".safetensors", ".npz")


def _file_formats() -> tuple[str, ...]:
    from geomix_cli.io import FILE_FORMATS

    return FILE_FORMATS


def is_sharded_spec(spec: str) -> bool:
    """A folder, or a glob pattern that is not itself an existing file."""
    spec = str(spec)
    if spec.startswith("gen:"):
        return False
    path = Path(spec)
    if path.is_dir():
        return True
    return any(c in spec for c in GLOB_CHARS) and not path.exists()


@dataclass(frozen=True)
class ShardRef:
    """One shard file: its path, its label in results (relative to the folder or to the glob's
    fixed part), and its size and modification time (a resumed run recomputes a shard whose file
    changed)."""

    path: str
    label: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path, label: str) -> "ShardRef":
        if str(path).startswith("gen:"):
            return cls(str(path), label, 0, 0)
        stat = path.stat()
        return cls(str(path), label, int(stat.st_size), int(stat.st_mtime_ns))


@dataclass
class Discovery:
    shards: list[ShardRef]
    ignored: list[str] = field(default_factory=list)  # files in a folder that are not pair files
    base: str | None = None  # the folder the labels are relative to (None: a single file / spec)


def discover_shards(spec: str) -> Discovery:
    """The shards a SOURCE names, sorted by label. A single file or generator spec is one shard."""
    spec = str(spec)
    formats = _file_formats()
    if not is_sharded_spec(spec):
        if spec.startswith("gen:"):
            return Discovery([ShardRef(spec, spec, 0, 0)])
        path = Path(spec)
        if not path.exists():
            raise InputError("no such file, folder or matching glob", file=spec)
        return Discovery([ShardRef.of(path, path.name)])
    path = Path(spec)
    if path.is_dir():
        base = path
        candidates = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        files, ignored = [], []
        for p in candidates:
            if p.is_file() and p.suffix.lower() in formats:
                files.append(p)
            elif not p.is_dir():
                ignored.append(p.name)
        if not files:
            raise InputError(f"the folder holds no pair file ({', '.join(formats)})", file=spec)
        return Discovery([ShardRef.of(p, p.relative_to(base).as_posix()) for p in files],
                         ignored, str(base))
    base = _glob_base(spec)
    matches = sorted(Path(m) for m in glob.glob(spec, recursive=True))
    files = [m for m in matches if m.is_file() and not m.name.startswith(".")]
    if not files:
        raise InputError("the glob matches no file", file=spec)
    unknown = [m for m in files if m.suffix.lower() not in formats]
    if unknown:
        raise InputError(f"matches {unknown[0]}, which is not a pair file (expected "
                         f"{', '.join(formats)})", file=spec)
    labels = [_relative_label(m, base) for m in files]
    return Discovery([ShardRef.of(m, label) for m, label in zip(files, labels)], [], str(base))


def _glob_base(spec: str) -> Path:
    parts = Path(spec).parts
    fixed = []
    for part in parts:
        if any(c in part for c in GLOB_CHARS):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _relative_label(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


# ----------------------------------------------------------------------------------------------
# header-only layouts


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


@dataclass
class ShardLayout:
    """What a shard holds, from its header: kind and keys, stored dtype, the row layout and the
    positions kept by the mask. `flat_rows` counts [B] or [B*T] positions before masking."""

    ref: ShardRef
    kind: str
    keys: tuple[str, str]
    storage_dtype: str
    shape: tuple[int, ...]  # of each side, as stored
    theta: ArrayRef | None
    target: ArrayRef | None
    kept_flat: np.ndarray | None  # flat positions kept by the mask, ascending (None: all)
    positions: np.ndarray | None  # [n_kept, 1 or 2] (b) or (b, t) per kept row, as load_source
    streamed: bool  # read by row blocks (else read whole through io.load_source)
    splittable: bool  # a piece may start anywhere (memory-mapped)

    @property
    def vocab(self) -> int:
        return int(self.shape[-1]) if self.shape else 0

    @property
    def flat_rows(self) -> int:
        if len(self.shape) <= 1:
            return 1
        return int(np.prod(self.shape[:-1]))

    @property
    def stored_row_bytes(self) -> int:
        """Bytes of both sides of one flat row as stored."""
        itemsize = self.theta.itemsize if self.theta is not None else 8
        return 2 * self.vocab * itemsize

    def kept_rows(self, flat_start: int, flat_stop: int):
        """(row labels, flat positions) of the kept rows among flat rows [start, stop): labels
        count kept rows from the shard's start, as `geomix solve SHARD` numbers them."""
        if self.kept_flat is None:
            flat = np.arange(flat_start, flat_stop, dtype=np.int64)
            return flat, flat
        lo = int(np.searchsorted(self.kept_flat, flat_start, side="left"))
        hi = int(np.searchsorted(self.kept_flat, flat_stop, side="left"))
        return np.arange(lo, hi, dtype=np.int64), self.kept_flat[lo:hi]

    def position_columns(self, labels: np.ndarray, flat: np.ndarray):
        """(position_b, position_t or None) of rows: b (and t) in the stored [B(, T), V] array."""
        if len(self.shape) == 3:
            n_t = self.shape[1]
            return flat // n_t, flat % n_t
        return flat, None


def describe_shard(ref: ShardRef, *, kind: str | None = None) -> ShardLayout:
    """The shard's layout from its header (data is not read); InputError when the header, the
    keys, the shapes or the mask make the shard unusable."""
    from geomix_cli.io.readers import MASK_KEYS, RawPair, _pick_pair
    from geomix_cli.sources import _positions_and_mask

    suffix = Path(ref.path).suffix.lower()
    if ref.path.startswith("gen:") or suffix not in STREAMED_FORMATS:
        return _whole_layout(ref)
    path = Path(ref.path)
    if not path.is_file():
        raise InputError("no such file (or not a regular file)", file=ref.path)
    try:
        arrays, meta_text = (_safetensors_arrays(path) if suffix == ".safetensors"
                             else _npz_arrays(path))
    except (InputError, OSError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"cannot read: {exc.strerror or exc}", file=ref.path) from None
    if any(a.fortran for a in arrays.values()):
        return _whole_layout(ref)
    storage = {key: a.dtype_name for key, a in arrays.items()}
    for key in MASK_KEYS:  # masks are small ([B] or [B, T]): io checks their values
        if key in arrays:
            arrays[key] = arrays[key].read_all()
    raw = _pick_pair(arrays, ref.path, kind, None, storage)
    if kind is not None and raw.kind != kind:
        raw.kind = kind
    theta, target = raw.theta, raw.target
    if theta.shape != target.shape:
        from geomix_cli.core.validation import validate_pair

        # the refusal text of a single-file run (it raises before reading any data)
        validate_pair(np.broadcast_to(np.float32(0), theta.shape),
                      np.broadcast_to(np.float32(0), target.shape), raw.kind, names=raw.keys,
                      file=ref.path)
    shape = tuple(int(n) for n in theta.shape)
    if len(shape) not in (1, 2, 3) or 0 in shape:
        what = ("empty array" if 0 in shape or not shape
                else f"{len(shape)} dimensions")
        raise InputError(f"{what} (shape {shape}); expected [V], [B, V] or, in a file, "
                         "[B, T, V]", file=ref.path, key=raw.keys[0])
    kept_flat = positions = None
    mask = raw.mask
    if mask is not None or len(shape) == 3:
        mask_values = mask
        # io's own position/mask rules on a stand-in of shape [..., 1] (no data is read)
        stand_in = np.zeros(shape[:-1] + (1,), dtype=np.float32)
        _, _, _, extra = _positions_and_mask(
            RawPair(stand_in, stand_in, raw.kind, raw.keys, None, raw.storage_dtype,
                    mask_values), ref.path)
        positions = extra.get("positions")
        if mask_values is not None and positions is not None:
            if len(shape) == 3:
                kept_flat = positions[:, 0].astype(np.int64) * shape[1] + positions[:, 1]
            else:
                kept_flat = positions[:, 0].astype(np.int64)
    compressed = theta.member is not None or target.member is not None
    return ShardLayout(ref=ref, kind=raw.kind, keys=raw.keys, storage_dtype=raw.storage_dtype,
                       shape=shape, theta=theta, target=target, kept_flat=kept_flat,
                       positions=positions, streamed=True, splittable=not compressed)


def _whole_layout(ref: ShardRef) -> ShardLayout:
    return ShardLayout(ref=ref, kind="", keys=("", ""), storage_dtype="", shape=(),
                       theta=None, target=None, kept_flat=None, positions=None, streamed=False,
                       splittable=False)


_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": None, "I64": "<i8",
                       "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}
_MAX_HEADER = 100 << 20


def _safetensors_arrays(path: Path):
    """Parse a safetensors header: {key: ArrayRef}, metadata. Offsets, sizes and shapes are
    checked against the file before anything is mapped."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise InputError("too short to be a safetensors file", file=str(path))
        (header_size,) = struct.unpack("<Q", head)
        if header_size > min(size - 8, _MAX_HEADER):
            raise InputError("corrupt safetensors header (its declared size exceeds the file)",
                             file=str(path))
        try:
            header = json.loads(handle.read(header_size))
        except (ValueError, UnicodeDecodeError):
            raise InputError("corrupt safetensors header (not JSON)", file=str(path)) from None
    if not isinstance(header, dict):
        raise InputError("corrupt safetensors header (not a JSON object)", file=str(path))
    data_start = 8 + header_size
    arrays, spans = {}, []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise InputError("corrupt safetensors header entry", file=str(path), key=key)
        code = info.get("dtype")
        if code not in _SAFETENSORS_DTYPES:
            raise InputError(f"unsupported safetensors dtype {code}", file=str(path), key=key)
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if (not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(n, int) for n in offsets)):
            raise InputError("corrupt safetensors header entry (shape / data_offsets)",
                             file=str(path), key=key)
        dtype = None if _SAFETENSORS_DTYPES[code] is None else np.dtype(_SAFETENSORS_DTYPES[code])
        itemsize = 2 if dtype is None else dtype.itemsize
        start, stop = offsets
        if not 0 <= start <= stop or data_start + stop > size:
            raise InputError("tensor bytes lie outside the file (truncated or corrupt)",
                             file=str(path), key=key)
        if stop - start != int(np.prod(shape, dtype=np.int64)) * itemsize:
            raise InputError(f"tensor of shape {tuple(shape)} and dtype {code} needs "
                             f"{int(np.prod(shape)) * itemsize} bytes, the header gives "
                             f"{stop - start}", file=str(path), key=key)
        spans.append((start, stop, key))
        name = "bfloat16" if dtype is None else dtype.name
        arrays[key] = ArrayRef(str(path), data_start + start, dtype, tuple(shape), name)
    spans.sort()
    for (s0, e0, k0), (s1, e1, k1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise InputError(f"tensors '{k0}' and '{k1}' overlap in the file (corrupt header)",
                             file=str(path), key=k1)
    meta = (header.get("__metadata__") or {}).get("meta")
    return arrays, meta


def _npz_arrays(path: Path):
    """{key: ArrayRef} of an npz: stored members are mapped at their data offset; compressed
    members are streamed. Pickled (object) members are refused as io does."""
    from numpy.lib import format as npy_format

    arrays = {}
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise InputError(f"cannot read as npz: BadZipFile: {exc}", file=str(path)) from None
    with archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[:-4]
            if key == "meta":
                continue
            try:
                with archive.open(info) as member:
                    version = npy_format.read_magic(member)
                    reader = (npy_format.read_array_header_1_0 if version == (1, 0)
                              else npy_format.read_array_header_2_0)
                    shape, fortran, dtype = reader(member, max_header_size=1 << 20)
                    header_len = member.tell()
            except (ValueError, zipfile.BadZipFile, EOFError, OSError) as exc:
                raise InputError(f"cannot read as npz: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": "),
                                 file=str(path), key=key) from None
            if dtype.hasobject:
                raise InputError("holds pickled Python objects, which geomix never loads "
                                 "(allow_pickle=False); store plain numeric arrays",
                                 file=str(path), key=key)
            shape = tuple(int(n) for n in shape)
            if info.compress_type == zipfile.ZIP_STORED:
                offset = _zip_data_offset(path, info) + header_len
                if offset + int(np.prod(shape)) * dtype.itemsize > path.stat().st_size:
                    raise InputError("array bytes lie outside the file (truncated)",
                                     file=str(path), key=key)
                arrays[key] = ArrayRef(str(path), offset, dtype, shape, dtype.name,
                                       fortran=bool(fortran) and len(shape) > 1)
            else:
                arrays[key] = ArrayRef(str(path), header_len, dtype, shape, dtype.name,
                                       member=info.filename,
                                       fortran=bool(fortran) and len(shape) > 1)
    return arrays, None


def _zip_data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes begin: after its local header (whose name / extra lengths
    may differ from the central directory's)."""
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise InputError("corrupt npz (bad local header)", file=str(path))
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
        self.archive = zipfile.ZipFile(ref.path)
        self.member = self.archive.open(ref.member)
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


def open_array_stream(ref: ArrayRef):
    return _DeflatedStream(ref) if ref.member is not None else _MappedStream(ref)


class ShardBlockReader(_Stream):
    """Raw row blocks (theta, target) of a streamed shard, flat rows [start, stop); padded
    positions are dropped by the caller (`ShardLayout.kept_rows`)."""

    def __init__(self, layout: ShardLayout):
        self.layout = layout
        self.streams = (open_array_stream(layout.theta), open_array_stream(layout.target))

    def read(self, flat_start: int, flat_stop: int):
        try:
            return tuple(s.read(flat_start, flat_stop) for s in self.streams)
        except InputError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            text = str(exc).splitlines()[0] if str(exc) else ""
            raise InputError(f"cannot read rows {flat_start}..{flat_stop - 1}: "
                             f"{type(exc).__name__}: {text}".rstrip(": "),
                             file=self.layout.ref.path) from None

    def close(self) -> None:
        for stream in self.streams:
            stream.close()


def whole_file_estimate(ref: ShardRef) -> int:
    """Rough bytes a whole-read shard needs (file size times a per-format factor: text parses
    into float64 and Python objects; parquet is compressed)."""
    factors = {".json": 6, ".csv": 4, ".parquet": 8, ".pt": 4}
    return ref.size * factors.get(Path(ref.path).suffix.lower(), 4)

