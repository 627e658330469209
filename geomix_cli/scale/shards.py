"""Shards: which files a sharded SOURCE names, what each holds (from its header), and which of
its rows a piece of work reads.

A sharded source is a folder (its pair files, sorted by name, not recursive) or a glob
(`run42/*.safetensors`, `**` for sub-folders; quote it so the shell does not expand it). Every
shard is one pair file in any format `geomix solve` reads; shards may differ in V and layout.

Reading is io's (`geomix_cli.io.blocks`): `.safetensors` and `.npz` shards are read by row
blocks, never whole (memory-mapped, or a compressed npz decompressed as a stream);
`.json`, `.csv`, `.parquet`, `.pt` and generator specs have no row index to seek to: such a
shard is read whole through `sources.load_source`, and refused (its rows `invalid`) when its
estimated size does not fit the memory budget.

Layout rules are the ones of `sources.load_source`: the same key names and kinds, `[B, V]` or
`[B, T, V]` rows (C order, position (b, t)), an optional `mask` / `attention_mask` whose 0
entries are padded positions (dropped, not errors). The header checks (io.readers) and the mask
handling (sources) are the same functions a single-file run calls, so a sharded run refuses
exactly what a single-file run does.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geomix_cli.errors import InputError
from geomix_cli.io.blocks import BLOCK_FORMATS, ArrayRef, PairBlockReader, array_refs

GLOB_CHARS = "*?["


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
            raise InputError("is a folder with no pair file in it (a folder SOURCE is read "
                             f"shard by shard: its {', '.join(formats)} files)", file=spec)
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
    streamed: bool  # read by row blocks (else read whole through sources.load_source)
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

    def block_reader(self) -> PairBlockReader:
        """Raw row blocks (theta, target) of the shard (padded positions are dropped by the
        caller, see `kept_rows`)."""
        return PairBlockReader(self.theta, self.target)

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
    if ref.path.startswith("gen:") or suffix not in BLOCK_FORMATS:
        return _whole_layout(ref)
    arrays = array_refs(ref.path)
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
    if raw.mask is not None or len(shape) == 3:
        # the position / mask rules of a single-file run, on a stand-in of shape [..., 1]
        # (no data is read)
        stand_in = np.zeros(shape[:-1] + (1,), dtype=np.float32)
        _, _, _, extra = _positions_and_mask(
            RawPair(stand_in, stand_in, raw.kind, raw.keys, None, raw.storage_dtype,
                    raw.mask), ref.path)
        positions = extra.get("positions")
        if raw.mask is not None and positions is not None:
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


def whole_file_estimate(ref: ShardRef) -> int:
    """Rough bytes a whole-read shard needs (file size times a per-format factor: text parses
    into float64 and Python objects; parquet is compressed)."""
    factors = {".json": 6, ".csv": 4, ".parquet": 8, ".pt": 4}
    return ref.size * factors.get(Path(ref.path).suffix.lower(), 4)

