"""The only module that reads or writes files.

Reading: a *source* is a file (.npz, .json, .csv, .parquet, .safetensors, .pt) or a generator spec
`gen:NAME:key=value,...` (see `cases.py`). Every source becomes a `PairSource` of validated float64
log-probabilities. Structural problems raise `InputError` naming the file, key/column and row;
value problems confined to one row are kept per row so the rest of a batch still runs.

Writing: every report file is written atomically (temporary file in the same folder, then
os.replace), so an interrupted run never leaves a half-written report over a good one.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geomix_cli.core.validation import LOGITS, PROBS, validate_pair
from geomix_cli.errors import InputError, UnavailableError

KEY_PAIRS = {PROBS: ("pi_theta", "pi_t"), LOGITS: ("logits_theta", "logits_t")}
FILE_FORMATS = (".npz", ".json", ".csv", ".parquet", ".safetensors", ".pt")
GENERATOR_PREFIX = "gen:"


@dataclass
class RawPair:
    """Arrays as found in a source, before validation (any float dtype, shape [V] or [B, V])."""

    theta: object
    target: object
    kind: str  # PROBS or LOGITS
    keys: tuple[str, str]
    meta: list[str] | None = None
    storage_dtype: str | None = None  # as stored (bfloat16 arrives widened to float32)
    mask: object = None  # optional [B] or [B, T] mask of real (non-zero) vs padded positions


@dataclass
class PairSource:
    """A validated batch of pairs: rows of float64 log-probabilities (-inf where p = 0)."""

    name: str
    log_pi_theta: np.ndarray
    log_pi_t: np.ndarray
    row_errors: list[str | None]
    row_labels: np.ndarray
    kind: str
    storage_dtype: str
    meta: list[str] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return int(self.log_pi_theta.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.log_pi_theta.shape[1])

    @property
    def valid_rows(self) -> np.ndarray:
        return np.array([e is None for e in self.row_errors], dtype=bool)

    def select(self, positions) -> "PairSource":
        positions = np.asarray(positions, dtype=np.int64)
        return PairSource(name=self.name, log_pi_theta=self.log_pi_theta[positions],
                          log_pi_t=self.log_pi_t[positions],
                          row_errors=[self.row_errors[i] for i in positions],
                          row_labels=self.row_labels[positions], kind=self.kind,
                          storage_dtype=self.storage_dtype,
                          meta=None if self.meta is None else [self.meta[i] for i in positions],
                          extra=dict(self.extra))


# ----------------------------------------------------------------------------------------------
# reading


def load_source(spec: str, *, kind: str | None = None, renormalize: bool = False,
                rows: str | None = None) -> PairSource:
    """Load, validate and (optionally) select rows of a source.

    kind: None to decide from the key names; PROBS or LOGITS to force how values are read (for
    a file holding both kinds of keys, or log-probabilities stored under pi_* keys).
    rows: a selection like "3", "0:8", "0,2,5:7" (positions in the batch, end exclusive)."""
    spec = str(spec)
    if spec.startswith(GENERATOR_PREFIX):
        from geomix_cli.cases import generate  # generators live with the case library

        raw = generate(spec)
        file_label = spec
    else:
        raw = read_pair_file(spec, kind=kind)
        file_label = spec
    if kind is not None and raw.kind != kind:
        raw = RawPair(raw.theta, raw.target, kind, raw.keys, raw.meta, raw.storage_dtype,
                      raw.mask)
    dtype_name = raw.storage_dtype or _dtype_name(raw.theta)
    theta, target, meta, extra = _positions_and_mask(raw, file_label)
    log_theta, log_t, errors = validate_pair(theta, target, raw.kind, names=raw.keys,
                                             file=file_label, renormalize=renormalize,
                                             storage_dtype=dtype_name)
    source = PairSource(name=spec, log_pi_theta=log_theta, log_pi_t=log_t, row_errors=errors,
                        row_labels=np.arange(log_theta.shape[0]), kind=raw.kind,
                        storage_dtype=dtype_name, meta=meta, extra=extra)
    if rows is not None:
        source = source.select(parse_row_selection(rows, source.n_rows, file_label))
    return source


def _positions_and_mask(raw: RawPair, file_label: str):
    """[B, T, V] arrays become B*T rows (C order) with their (b, t) kept in
    extra["positions"][row_label]; an optional mask ([B] or [B, T], key 'mask' or
    'attention_mask', 0 = padded) drops padded positions before validation (they are not
    errors). Returns (theta, target, meta, extra)."""
    theta, target, meta = raw.theta, raw.target, raw.meta
    extra: dict = {}
    shape = tuple(np.shape(theta))
    if len(shape) != 3 and raw.mask is None:
        return theta, target, meta, extra
    if tuple(np.shape(target)) != shape:
        return theta, target, meta, extra  # validate_pair names the mismatch
    lead = shape[:-1]
    if len(shape) == 3:
        n_b, n_t, vocab = shape
        theta = np.asarray(theta).reshape(n_b * n_t, vocab)
        target = np.asarray(target).reshape(n_b * n_t, vocab)
        positions = np.stack(np.unravel_index(np.arange(n_b * n_t), (n_b, n_t)), axis=1)
        if meta is not None and len(meta) == n_b:
            meta = [f"{meta[b]} (b={b}, t={t})" for b, t in positions]
        elif meta is None or len(meta) != n_b * n_t:
            meta = [f"b={b}, t={t}" for b, t in positions]
        extra["input_shape"] = shape
    else:
        positions = None
    if raw.mask is not None:
        mask = np.asarray(raw.mask)
        if mask.shape != lead:
            raise InputError(f"mask has shape {mask.shape}; the rows have shape {lead} "
                             "(one entry per position: 1 = real, 0 = padded)", file=file_label,
                             key="mask")
        if mask.dtype.kind not in "biuf" or (mask.dtype.kind == "f" and np.isnan(mask).any()):
            raise InputError("mask must hold 0/1 (or booleans)", file=file_label, key="mask")
        keep = np.flatnonzero(mask.reshape(-1) != 0)
        if keep.size == 0:
            raise InputError("the mask marks every position as padded: nothing to solve",
                             file=file_label, key="mask")
        extra["padded_rows_dropped"] = int(mask.size - keep.size)
        theta = np.asarray(theta).reshape(-1, shape[-1])[keep]
        target = np.asarray(target).reshape(-1, shape[-1])[keep]
        if meta is not None and len(meta) == mask.size:
            meta = [meta[i] for i in keep]
        if positions is not None:
            positions = positions[keep]
        elif len(shape) == 2:
            positions = keep[:, None]
    if positions is not None:
        extra["positions"] = positions
    return theta, target, meta, extra


def parse_row_selection(text: str, n_rows: int, file_label: str | None = None) -> np.ndarray:
    """'3' / '0:8' / '0,2,5:7' / '-1' -> positions; out-of-range indices are refused."""
    picked: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if ":" in part:
                start_s, stop_s = part.split(":", 1)
                start = int(start_s) if start_s.strip() else 0
                stop = int(stop_s) if stop_s.strip() else n_rows
                picked.extend(range(*slice(start, stop).indices(n_rows)))
                continue
            index = int(part)
        except ValueError:
            raise InputError(f"row selection '{text}' is not like 3, 0:8 or 0,2,5:7",
                             file=file_label) from None
        if not -n_rows <= index < n_rows:
            raise InputError(f"row {index} does not exist (the source has {n_rows} row"
                             f"{'s' if n_rows != 1 else ''}: 0..{n_rows - 1})", file=file_label)
        picked.append(index % n_rows)
    if not picked:
        raise InputError(f"row selection '{text}' selects no row (the source has {n_rows})",
                         file=file_label)
    return np.asarray(picked, dtype=np.int64)


def read_pair_file(path_text: str, *, kind: str | None = None) -> RawPair:
    path = Path(path_text)
    if not path.exists():
        raise InputError("no such file", file=path_text)
    if path.is_dir():
        raise InputError("is a folder, not a file of pairs", file=path_text)
    suffix = path.suffix.lower()
    readers = {".npz": _read_npz, ".json": _read_json, ".csv": _read_table,
               ".parquet": _read_table, ".safetensors": _read_safetensors, ".pt": _read_pt}
    if suffix not in readers:
        raise InputError(f"unknown format '{suffix or '(no extension)'}'; expected one of "
                         f"{', '.join(FILE_FORMATS)} or a generator spec gen:NAME:key=value,...",
                         file=path_text)
    try:
        arrays, meta, storage = readers[suffix](path)
    except (InputError, UnavailableError):
        raise
    except Exception as exc:  # a corrupt file must not surface as a traceback
        raise InputError(f"cannot read as {suffix[1:]}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": "),
                         file=path_text) from None
    return _pick_pair(arrays, path_text, kind, meta, storage)


def _pick_pair(arrays: dict, file_label: str, kind: str | None, meta,
               storage: dict | None = None) -> RawPair:
    present = {k: all(key in arrays for key in keys) for k, keys in KEY_PAIRS.items()}
    if kind is None:
        if present[PROBS] and present[LOGITS]:
            raise InputError("holds both pi_theta/pi_t and logits_theta/logits_t; say which "
                             "with --probs or --logits", file=file_label)
        kind = PROBS if present[PROBS] else LOGITS if present[LOGITS] else None
        keys = KEY_PAIRS[kind] if kind else None
    else:
        # forced kind: use that kind's keys if present, else the other kind's keys re-read
        keys = KEY_PAIRS[kind] if present[kind] else next(
            (KEY_PAIRS[k] for k in KEY_PAIRS if present[k]), None)
    if keys is None:
        found = ", ".join(sorted(arrays)) or "none"
        for names in KEY_PAIRS.values():
            missing = [k for k in names if k not in arrays]
            if len(missing) == 1:
                raise InputError(f"missing key (found: {found}); need {' + '.join(names)}",
                                 file=file_label, key=missing[0])
        raise InputError(f"missing keys: need pi_theta + pi_t (probabilities) or logits_theta + "
                         f"logits_t (logits / log-probabilities); found: {found}", file=file_label)
    if meta is not None:
        meta = [str(m) for m in np.atleast_1d(np.asarray(meta)).tolist()]
    storage_dtype = (storage or {}).get(keys[0]) or _dtype_name(arrays[keys[0]])
    mask = arrays.get("mask", arrays.get("attention_mask"))
    return RawPair(arrays[keys[0]], arrays[keys[1]], kind, keys, meta, storage_dtype, mask)


def _read_npz(path: Path):
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {}
            for key in data.files:
                try:
                    arrays[key] = data[key]
                except ValueError as exc:
                    if "allow_pickle" in str(exc):
                        raise InputError("holds pickled Python objects, which geomix never loads "
                                         "(allow_pickle=False); store plain numeric arrays",
                                         file=str(path), key=key) from None
                    raise
    except (InputError, UnavailableError):
        raise
    meta = arrays.pop("meta", None)
    return arrays, meta, {}


def _read_json(path: Path):
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                         file=str(path)) from None
    if not isinstance(payload, dict):
        raise InputError("expected a JSON object with keys pi_theta + pi_t or logits_theta + "
                         "logits_t", file=str(path))
    arrays = {}
    for key, value in payload.items():
        if key in ("meta", "description", "id"):
            continue
        arrays[key] = _json_array(value, str(path), key)
    return arrays, payload.get("meta"), {}


def _json_array(value, file_label: str, key: str) -> np.ndarray:
    def convert(v):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if v is None:
            return math.nan
        if isinstance(v, str) and v.strip().lower() in ("-inf", "-infinity", "inf", "+inf",
                                                        "infinity", "nan"):
            return float(v.strip().replace("infinity", "inf"))
        raise TypeError
    try:
        if isinstance(value, list) and value and isinstance(value[0], list):
            lengths = {len(r) if isinstance(r, list) else -1 for r in value}
            if len(lengths) != 1 or -1 in lengths:
                for i, r in enumerate(value):
                    if not isinstance(r, list) or len(r) != len(value[0]):
                        raise InputError(f"row has {len(r) if isinstance(r, list) else 'no'} "
                                         f"values where row 0 has {len(value[0])} (ragged rows)",
                                         file=file_label, key=key, row=i)
            return np.array([[convert(v) for v in r] for r in value], dtype=np.float64)
        if isinstance(value, list):
            return np.array([convert(v) for v in value], dtype=np.float64)
    except TypeError:
        raise InputError("non-numeric value (expected numbers, or \"-inf\" for log 0)",
                         file=file_label, key=key) from None
    raise InputError("expected a list of numbers or a list of rows", file=file_label, key=key)


def _read_table(path: Path):
    import pandas as pd

    frame = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    if frame.empty:
        raise InputError("no data rows", file=str(path))
    arrays = {}
    if "row" in frame.columns:
        row_ids = pd.to_numeric(frame["row"], errors="coerce")
        if row_ids.isna().any():
            line = int(np.flatnonzero(row_ids.isna().to_numpy())[0])
            raise InputError(f"'row' is not an integer at data line {line + 1}", file=str(path),
                             key="row")
        groups = [np.flatnonzero(row_ids.to_numpy() == r) for r in pd.unique(row_ids)]
    else:
        groups = [np.arange(len(frame))]
    sizes = {g.size for g in groups}
    if len(sizes) != 1:
        first = groups[0].size
        bad = next(i for i, g in enumerate(groups) if g.size != first)
        raise InputError(f"row has {groups[bad].size} tokens where row 0 has {first} (every row "
                         "needs the same vocabulary)", file=str(path), key="row", row=bad)
    for column in frame.columns:
        if column == "row":
            continue
        values = frame[column]
        if values.dtype.kind not in "fiu":
            numeric = pd.to_numeric(values.astype(str).str.strip().str.replace(
                "infinity", "inf", case=False), errors="coerce")
            bad = numeric.isna() & ~values.astype(str).str.strip().str.lower().isin(["nan"])
            if bad.any() and column in sum(KEY_PAIRS.values(), ()):
                line = int(np.flatnonzero(bad.to_numpy())[0])
                raise InputError(f"non-numeric value {values.iloc[line]!r} at data line "
                                 f"{line + 1}", file=str(path), key=column)
            values = numeric
        arr = values.to_numpy(dtype=np.float64)
        arrays[column] = np.stack([arr[g] for g in groups]) if len(groups) > 1 else arr
    return arrays, None, {}


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bf16",
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
                       "U8": np.uint8, "BOOL": np.bool_}


def _read_safetensors(path: Path):
    """Parse the safetensors layout directly (8-byte header size, JSON header, raw little-endian
    data), so bfloat16 needs neither torch nor ml_dtypes: it is widened to float32 exactly."""
    blob = path.read_bytes()
    if len(blob) < 8:
        raise InputError("too short to be a safetensors file", file=str(path))
    (header_size,) = struct.unpack("<Q", blob[:8])
    if header_size > len(blob) - 8:
        raise InputError("corrupt safetensors header", file=str(path))
    header = json.loads(blob[8:8 + header_size])
    data = memoryview(blob)[8 + header_size:]
    arrays, storage = {}, {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise InputError(f"unsupported safetensors dtype {info.get('dtype')}", file=str(path),
                             key=key)
        start, stop = info["data_offsets"]
        raw = data[start:stop]
        if dtype == "bf16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arrays[key] = bits.view(np.float32).reshape(info["shape"])
            storage[key] = "bfloat16"
        else:
            arrays[key] = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(
                info["shape"]).copy()
    meta_text = (header.get("__metadata__") or {}).get("meta")
    return arrays, (json.loads(meta_text) if meta_text else None), storage


def _read_pt(path: Path):
    try:
        import torch
    except ImportError:
        raise UnavailableError("reading .pt needs torch: pip install 'geomix[torch]'",
                               file=str(path)) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"cannot load with torch.load(weights_only=True) (pickled objects are "
                         f"never loaded): {str(exc).splitlines()[0][:200]}", file=str(path)) from None
    if not isinstance(obj, dict):
        raise InputError("expected a dict of tensors (keys pi_theta + pi_t or logits_theta + "
                         "logits_t)", file=str(path))
    arrays, storage = {}, {}
    meta = None
    for key, value in obj.items():
        if key == "meta":
            meta = value
            continue
        if isinstance(value, torch.Tensor):
            if value.dtype == torch.bfloat16:
                storage[key] = "bfloat16"
                value = value.float()
            arrays[key] = value.numpy()
        else:
            # weights_only=True still admits some containers (e.g. collections.Counter): anything
            # that is not a plain number array is named as such, not mistaken for a shape problem
            array = np.asarray(value) if isinstance(value, (list, tuple, int, float)) else None
            if array is None or array.dtype.kind not in "fiu":
                raise InputError(f"holds a {type(value).__name__}, expected a tensor of numbers",
                                 file=str(path), key=str(key))
            arrays[key] = array
    return arrays, meta, storage


def _dtype_name(values) -> str:
    return getattr(np.asarray(values).dtype, "name", "float64")


def read_text(path) -> str:
    """Text of a small UTF-8 file (case files, verdict files); missing file -> InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", file=str(path))
    return path.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# writing


def to_jsonable(value):
    """Recursively convert numpy scalars/arrays to Python, and non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def dumps_json(payload, *, indent: int | None = 2) -> str:
    """JSON text that is always valid JSON (NaN/inf become null)."""
    return json.dumps(to_jsonable(payload), indent=indent, allow_nan=False, ensure_ascii=False)


def write_bytes_atomic(path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, payload) -> Path:
    return write_text_atomic(path, dumps_json(payload) + "\n")


def write_csv_atomic(path, frame) -> Path:
    """Write a pandas DataFrame as CSV atomically."""
    return write_text_atomic(path, frame.to_csv(index=False))


def save_figure_atomic(figure, path, *, dpi: int = 150) -> Path:
    """Save a matplotlib figure atomically; the format follows the extension."""
    import io as _io

    path = Path(path)
    buffer = _io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi,
                   bbox_inches="tight")
    return write_bytes_atomic(path, buffer.getvalue())


@contextmanager
def atomic_directory(final_dir):
    """Build a report folder in a sibling temporary folder; swap it in only on success.

    On any exception the previous folder is left exactly as it was."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{final_dir.name}-", dir=final_dir.parent))
    try:
        yield staging
    except BaseException:
        _remove_tree(staging)
        raise
    backup = None
    if final_dir.exists():
        backup = final_dir.parent / f".tmp-old-{final_dir.name}-{os.getpid()}"
        _remove_tree(backup)
        os.replace(final_dir, backup)
    os.replace(staging, final_dir)
    if backup is not None:
        _remove_tree(backup)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def write_pairs_npz(path, *, theta: np.ndarray, target: np.ndarray, kind: str,
                    meta: list[str] | None = None) -> Path:
    """Write a pair file that `load_source` reads back (keys by kind, optional meta)."""
    import io as _io

    keys = KEY_PAIRS[kind]
    buffer = _io.BytesIO()
    payload = {keys[0]: np.asarray(theta), keys[1]: np.asarray(target)}
    if meta is not None:
        payload["meta"] = np.asarray([str(m) for m in meta])
    np.savez_compressed(buffer, **payload)
    return write_bytes_atomic(path, buffer.getvalue())


# ----------------------------------------------------------------------------------------------
# machine facts for `geomix bench` (Linux /proc; None elsewhere)


def resident_set_bytes() -> int | None:
    """Current resident-set size of this process in bytes (/proc/self/statm), or None."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            resident_pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def cpu_model_name() -> str | None:
    """The CPU's model name from /proc/cpuinfo, or None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


# ----------------------------------------------------------------------------------------------
# streamed [B, T, V] pair files (`geomix pairs`)

PAIRS_MARKER_KEY = "geomix"  # safetensors __metadata__ key / npz array name marking a pairs file
PAIRS_MARKER = "pairs"
PAIRS_FORMATS = (".safetensors", ".npz")
PAIRS_DTYPES = {"float32": ("F32", np.float32), "float16": ("F16", np.float16),
                "bfloat16": ("BF16", None)}
_NUMPY_TO_SAFETENSORS = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64",
                         "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
                         "bool": "BOOL"}


def bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even (NaN stays NaN)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def is_geomix_pairs_file(path) -> bool:
    """True when `path` is a file written by `geomix pairs` (its marker is in the metadata)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        if path.suffix.lower() == ".safetensors":
            with open(path, "rb") as handle:
                (size,) = struct.unpack("<Q", handle.read(8))
                if size > 100_000_000:
                    return False
                header = json.loads(handle.read(size))
            return (header.get("__metadata__") or {}).get(PAIRS_MARKER_KEY) == PAIRS_MARKER
        if path.suffix.lower() == ".npz":
            import zipfile

            with zipfile.ZipFile(path) as archive:
                if f"{PAIRS_MARKER_KEY}.npy" not in archive.namelist():
                    return False
            with np.load(path, allow_pickle=False) as data:
                return str(data[PAIRS_MARKER_KEY]) == PAIRS_MARKER
    except Exception:  # unreadable or foreign: not ours
        return False
    return False


def check_pairs_output(out, *, inputs=()) -> Path:
    """Refuse an output path for a pairs file before any work: wrong extension, a folder, an input
    of the run, or an existing file that `geomix pairs` did not write (only an earlier pairs file
    may be replaced)."""
    path = Path(out)
    if path.suffix.lower() not in PAIRS_FORMATS:
        raise InputError(f"output must end in {' or '.join(PAIRS_FORMATS)}", file=str(out))
    resolved = path.resolve()
    for item in inputs:
        if item is not None and Path(item).exists() and Path(item).resolve() == resolved:
            raise InputError("is an input of this run; geomix never overwrites its inputs",
                             file=str(out))
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise InputError("exists and is not a regular file; choose a new file name",
                             file=str(out))
        if not is_geomix_pairs_file(path):
            raise InputError("exists and was not written by geomix pairs; geomix replaces only "
                             "its own earlier output (choose a new file name)", file=str(out))
    if not path.parent.exists():
        raise InputError("the folder does not exist", file=str(path.parent))
    return path


class PairsFileWriter:
    """Write a `[B, T, V]` pairs file row by row, without holding it in memory, atomically.

    Keys: `logits_theta`, `logits_t` ([B, T, V] in `dtype`: float32, float16 or bfloat16 (bfloat16
    in .safetensors only)), the small arrays given (e.g. `attention_mask` [B, T]), `meta` (one
    string per [b, t] position, B*T of them) and the marker that lets a later run replace the file.
    The file is built under a temporary name in the same folder (created honouring the umask) and
    renamed over `path` by `commit()`; `abort()` (or an exception inside `with`) removes it.
    `load_source` reads the result like any other pairs file."""

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
        self.tmp = self.path.parent / f".{self.path.name}.{os.getpid()}.tmp"
        self._written = np.zeros(self.shape[0], dtype=bool)
        self._closed = False
        self._arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        self._meta = [str(m) for m in meta]
        self._info = dict(info or {})
        if self.format == ".safetensors":
            self._open_safetensors()
        else:
            self._open_npz()

    # -- safetensors: one preallocated file, rows written in place with pwrite
    def _open_safetensors(self):
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
        self._fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            os.ftruncate(self._fd, self._data_start + offset)
            os.pwrite(self._fd, struct.pack("<Q", len(head)) + head + b"".join(small), 0)
        except BaseException:
            self.abort()
            raise

    # -- npz: .npy members (logits as memory maps) in a temporary folder, zipped at commit
    def _open_npz(self):
        self._npz_dir = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        storage = PAIRS_DTYPES[self.dtype][1]
        self._maps = {key: np.lib.format.open_memmap(self._npz_dir / f"{key}.npy", mode="w+",
                                                     dtype=storage, shape=self.shape)
                      for key in KEY_PAIRS[LOGITS]}

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
                   values.astype("<f2" if self.dtype == "float16" else "<f4")).tobytes()
            os.pwrite(self._fd, raw, self._data_start + self._logit_offset[key]
                      + b * self.row_bytes)
        self._written[b] = True

    def commit(self) -> Path:
        if not self._written.all():
            missing = int(np.flatnonzero(~self._written)[0])
            raise RuntimeError(f"pairs file committed with row {missing} unwritten")
        if self.format == ".safetensors":
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            os.replace(self.tmp, self.path)
        else:
            self._commit_npz()
        self._closed = True
        return self.path

    def _commit_npz(self):
        import zipfile

        for value in self._maps.values():
            value.flush()
        self._maps = {}
        members = dict(self._arrays)
        members["meta"] = np.asarray(self._meta, dtype=str)
        members[PAIRS_MARKER_KEY] = np.asarray(PAIRS_MARKER)
        members["geomix_info"] = np.asarray(dumps_json(self._info, indent=None))
        for key, value in members.items():
            np.save(self._npz_dir / f"{key}.npy", value, allow_pickle=False)
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        with os.fdopen(fd, "wb") as handle:
            with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED,
                                 allowZip64=True) as archive:
                for member in sorted(self._npz_dir.iterdir()):
                    archive.write(member, arcname=member.name)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(self.tmp, self.path)
        _remove_tree(self._npz_dir)

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None
        self._maps = {}
        Path(self.tmp).unlink(missing_ok=True)
        if getattr(self, "_npz_dir", None) is not None:
            _remove_tree(self._npz_dir)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False
