"""Reading pair files and small text files.

A pair file (.npz, .json, .csv, .parquet, .safetensors, .pt) becomes a `RawPair` of arrays as
stored, before validation. Every structural problem raises `InputError` naming the file, key and
row, and so does anything that is not a plain regular file: a FIFO or a device would block or
stream forever, a symbolic-link loop never resolves. Sizes that a file declares (npz headers,
safetensors headers, parquet metadata) are checked against the memory this machine has before
anything is allocated, so a tiny file that declares gigabytes is refused up front.
"""

from __future__ import annotations

import errno
import io as _stdlib_io
import json
import math
import os
import stat
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geomix_cli.core.validation import LOGITS, PROBS
from geomix_cli.errors import InputError, UnavailableError
from geomix_cli.io.machine import check_memory

KEY_PAIRS = {PROBS: ("pi_theta", "pi_t"), LOGITS: ("logits_theta", "logits_t")}
FILE_FORMATS = (".npz", ".json", ".csv", ".parquet", ".safetensors", ".pt")
GENERATOR_PREFIX = "gen:"
MASK_KEYS = ("mask", "attention_mask")

# Bytes of working memory per stored value once a pair is loaded: the values widened to float64,
# their float64 log-probabilities and the temporaries of validation (measured ~30 B per value for
# `geomix solve`; 32 leaves a margin).
WORKING_BYTES_PER_VALUE = 32

# Case files, verdict files and safetensors headers are small; anything far larger is not one.
MAX_TEXT_BYTES = 64 << 20
MAX_SAFETENSORS_HEADER = 100 << 20


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


# ----------------------------------------------------------------------------------------------
# regular files only


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """'a folder', 'a FIFO (named pipe)', ... for a stat mode (what a path is, in words)."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def os_error_text(exc: OSError) -> str:
    """'symbolic-link loop', 'permission denied', ... for an OSError (no Python class names)."""
    if exc.errno == errno.ELOOP:
        return "symbolic-link loop (the link points back at itself)"
    if exc.errno == errno.ENAMETOOLONG:
        return "name too long for the file system"
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def open_regular_file(path_text: str, *, what: str = "file of pairs"):
    """Open a regular file for binary reading; refuse anything else with one line.

    Opened with O_NONBLOCK and checked with fstat on the open descriptor, so a FIFO or a device
    (even one swapped in after a check) is refused instead of blocking forever."""
    path = Path(path_text)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        if path.is_symlink():
            raise InputError("is a symbolic link whose target does not exist",
                             file=path_text) from None
        raise InputError("no such file", file=path_text) from None
    except IsADirectoryError:
        raise InputError(f"is a folder, not a {what}", file=path_text) from None
    except OSError as exc:
        raise InputError(f"cannot open: {os_error_text(exc)}", file=path_text) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = file_kind(mode)
            raise InputError(f"is {kind}, not a {what}" if kind == "a folder" else
                             f"is {kind}, not a regular file; geomix reads regular files only",
                             file=path_text)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def loads_json(text, *, file: str | None = None):
    """json.loads that refuses duplicate keys (instead of keeping the last one) and names the
    line and column of a syntax error."""
    def unique(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                raise InputError(f"duplicate key '{key}' in a JSON object (geomix never "
                                 "silently keeps one of them)", file=file, key=key)
            seen[key] = value
        return seen

    try:
        return json.loads(text, object_pairs_hook=unique)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                         file=file) from None
    except RecursionError:
        raise InputError("JSON nested too deeply", file=file) from None


def read_text(path, *, what: str = "text file") -> str:
    """Text of a small UTF-8 file (case files, verdict files); anything else -> InputError."""
    label = str(path)
    with open_regular_file(label, what=what) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > MAX_TEXT_BYTES:
            raise InputError(f"is {size / 2**20:.0f} MiB; a {what} is at most "
                             f"{MAX_TEXT_BYTES >> 20} MiB", file=label)
        data = handle.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", file=label) from None


# ----------------------------------------------------------------------------------------------
# pair files


def read_pair_file(path_text: str, *, kind: str | None = None) -> RawPair:
    suffix = Path(path_text).suffix.lower()
    readers = {".npz": _read_npz, ".json": _read_json, ".csv": _read_table,
               ".parquet": _read_table, ".safetensors": _read_safetensors, ".pt": _read_pt}
    with open_regular_file(path_text) as handle:
        if suffix not in readers:
            raise InputError(f"unknown format '{suffix or '(no extension)'}'; expected one of "
                             f"{', '.join(FILE_FORMATS)} or a generator spec gen:NAME:key=value,...",
                             file=path_text)
        if os.fstat(handle.fileno()).st_size == 0:
            raise InputError(f"is empty (0 bytes): not a {suffix[1:]} file of pairs",
                             file=path_text)
        try:
            arrays, meta, storage = readers[suffix](handle, path_text)
        except (InputError, UnavailableError):
            raise
        except MemoryError:
            raise InputError(f"not enough memory to read it as {suffix[1:]}",
                             file=path_text) from None
        except UnicodeDecodeError as exc:
            raise InputError(f"not UTF-8 text: {exc.reason} at byte {exc.start}",
                             file=path_text) from None
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
    masks = [k for k in MASK_KEYS if k in arrays]
    if len(masks) > 1:
        raise InputError("holds both 'mask' and 'attention_mask'; keep one (1 = real position, "
                         "0 = padded)", file=file_label, key="attention_mask")
    mask = arrays[masks[0]] if masks else None
    if mask is not None:
        mask = _checked_mask(mask, file_label, masks[0])
    return RawPair(arrays[keys[0]], arrays[keys[1]], kind, keys, meta, storage_dtype, mask)


def _checked_mask(mask, file_label: str, key: str) -> np.ndarray:
    """A mask holds booleans or the numbers 0 and 1, nothing else (2 or 0.5 would silently mean
    'real' under a != 0 test)."""
    mask = np.asarray(mask)
    if mask.dtype.kind == "b":
        return mask
    if mask.dtype.kind not in "iuf":
        raise InputError(f"mask has dtype {mask.dtype.name}; it must hold 0/1 (or booleans)",
                         file=file_label, key=key)
    bad = ~((mask == 0) | (mask == 1))
    if bad.any():
        flat = int(np.flatnonzero(bad.reshape(-1))[0])
        raise InputError(f"mask value {mask.reshape(-1)[flat]!r} at flat position {flat}; a mask "
                         "holds 0 (padded) and 1 (real) only", file=file_label, key=key)
    return mask


def _read_npz(handle, label: str):
    check_npz_head(handle, label)
    _check_npz_declared_sizes(handle, label)
    handle.seek(0)
    with np.load(handle, allow_pickle=False) as data:
        arrays = {}
        for key in data.files:
            try:
                arrays[key] = data[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc):
                    raise InputError("holds pickled Python objects, which geomix never loads "
                                     "(allow_pickle=False); store plain numeric arrays",
                                     file=label, key=key) from None
                raise
    meta = arrays.pop("meta", None)
    return arrays, meta, {}


@dataclass(frozen=True)
class NpyMember:
    """One .npy member of an .npz archive, from its header only."""

    info: zipfile.ZipInfo
    key: str
    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype
    header_bytes: int  # bytes of the .npy header before the array's data (uncompressed)


def npz_members(archive: zipfile.ZipFile, label: str):
    """The .npy members of an open archive (`NpyMember`, headers only): a corrupt header or a
    pickled (object) array is refused with one line, whatever reads the archive next."""
    from numpy.lib import format as npy_format

    for info in archive.infolist():
        if not info.filename.endswith(".npy"):
            continue
        key = info.filename[:-4]
        try:
            with archive.open(info) as member:
                version = npy_format.read_magic(member)
                reader = (npy_format.read_array_header_1_0 if version == (1, 0)
                          else npy_format.read_array_header_2_0)
                shape, fortran, dtype = reader(member)
                header_bytes = member.tell()
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise InputError(f"corrupt archive member {info.filename}: "
                             f"{str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}",
                             file=label) from None
        if dtype.hasobject:
            raise InputError("holds pickled Python objects, which geomix never loads "
                             "(allow_pickle=False); store plain numeric arrays",
                             file=label, key=key)
        yield NpyMember(info, key, tuple(int(n) for n in shape), bool(fortran), dtype,
                        header_bytes)


def check_npz_head(handle, label: str) -> None:
    """Refuse a file that is not a zip archive (an .npy under an .npz name, anything else)."""
    head = handle.read(8)
    handle.seek(0)
    if head.startswith(b"\x93NUMPY"):
        raise InputError("is a .npy file (one array) saved under an .npz name; save the pair with "
                         "numpy.savez(path, pi_theta=..., pi_t=...) (or logits_theta/logits_t)",
                         file=label)
    if not head.startswith(b"PK"):
        raise InputError("is not an .npz archive (no zip header); save the pair with "
                         "numpy.savez(path, pi_theta=..., pi_t=...)", file=label)


def _check_npz_declared_sizes(handle, label: str) -> None:
    """Refuse an archive whose arrays, as declared in their headers, would not fit in memory (a
    compressed file of zeros can declare gigabytes); reads the headers only."""
    declared = 0
    values = 0
    with zipfile.ZipFile(handle) as archive:
        declared += sum(info.file_size for info in archive.infolist()
                        if not info.filename.endswith(".npy"))  # read whole if asked for
        for member in npz_members(archive, label):
            count = math.prod(member.shape)
            declared += count * member.dtype.itemsize
            if member.key not in ("meta", *MASK_KEYS):
                values += count
    check_memory(declared + WORKING_BYTES_PER_VALUE * values,
                 what=f"its arrays ({_size(declared)} as declared in the archive, "
                      f"{values:,} values to validate)", file=label)


def _size(n: float) -> str:
    from geomix_cli.io.machine import format_bytes

    return format_bytes(n)


def _read_json(handle, label: str):
    size = os.fstat(handle.fileno()).st_size
    # Python floats in lists: ~32 bytes per number, a number takes >= 2 bytes of text
    check_memory(16 * size + WORKING_BYTES_PER_VALUE * size // 2,
                 what=f"a {_size(size)} JSON file (parsed into Python numbers)", file=label)
    try:
        text = handle.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", file=label) from None
    payload = loads_json(text, file=label)
    if not isinstance(payload, dict):
        raise InputError("expected a JSON object with keys pi_theta + pi_t or logits_theta + "
                         "logits_t", file=label)
    arrays = {}
    for key, value in payload.items():
        if key in ("meta", "description", "id"):
            continue
        arrays[key] = _json_array(value, label, key)
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
    except OverflowError:
        raise InputError("a number too large for float64", file=file_label, key=key) from None
    raise InputError("expected a list of numbers or a list of rows", file=file_label, key=key)


# The largest row number that float64 (how pandas may read the column) still holds exactly.
_MAX_ROW_ID = 2**53


def _read_table(handle, label: str):
    import pandas as pd

    size = os.fstat(handle.fileno()).st_size
    if label.lower().endswith(".csv"):
        check_memory((8 + WORKING_BYTES_PER_VALUE) * size // 2 + 2 * size,
                     what=f"a {_size(size)} CSV file", file=label)
        _refuse_duplicate_csv_columns(handle, label)
        handle.seek(0)
        frame = pd.read_csv(handle)
    else:
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(handle).metadata
        values = int(meta.num_rows) * int(meta.num_columns)
        check_memory((8 + WORKING_BYTES_PER_VALUE) * values,
                     what=f"{meta.num_rows:,} rows x {meta.num_columns} columns (parquet "
                          "metadata)", file=label)
        handle.seek(0)
        frame = pd.read_parquet(handle)
        duplicated = frame.columns[frame.columns.duplicated()]
        if len(duplicated):
            raise InputError("column appears more than once", file=label, key=str(duplicated[0]))
    if frame.empty:
        raise InputError("no data rows", file=label)
    arrays = {}
    if "row" in frame.columns:
        groups = _row_groups(frame["row"], label)
    else:
        groups = [np.arange(len(frame))]
    sizes = {g.size for g in groups}
    if len(sizes) != 1:
        first = groups[0].size
        bad = next(i for i, g in enumerate(groups) if g.size != first)
        raise InputError(f"row has {groups[bad].size} tokens where row 0 has {first} (every row "
                         "needs the same vocabulary)", file=label, key="row", row=bad)
    for column in frame.columns:
        if column == "row":
            continue
        values = frame[column]
        if values.dtype.kind == "b" and column in MASK_KEYS:
            values = values.astype(np.float64)
        if values.dtype.kind not in "fiu":
            numeric = pd.to_numeric(values.astype(str).str.strip().str.replace(
                "infinity", "inf", case=False), errors="coerce")
            bad = numeric.isna() & ~values.astype(str).str.strip().str.lower().isin(["nan"])
            if bad.any() and column in sum(KEY_PAIRS.values(), (*MASK_KEYS,)):
                line = int(np.flatnonzero(bad.to_numpy())[0])
                raise InputError(f"non-numeric value {values.iloc[line]!r} at data line "
                                 f"{line + 1}", file=label, key=str(column))
            values = numeric
        arr = values.to_numpy(dtype=np.float64)
        arrays[str(column)] = np.stack([arr[g] for g in groups]) if len(groups) > 1 else arr
    return arrays, None, {}


def _refuse_duplicate_csv_columns(handle, label: str) -> None:
    """pandas renames a repeated column ('pi_t' -> 'pi_t.1') and keeps going; refuse instead."""
    import csv

    text = _stdlib_io.TextIOWrapper(handle, encoding="utf-8", errors="replace", newline="")
    try:
        header = next(csv.reader([text.readline()]), [])
    finally:
        text.detach()
    seen = set()
    for name in (h.strip() for h in header):
        if name in seen:
            raise InputError("column appears more than once in the header", file=label, key=name)
        seen.add(name)


def _row_groups(column, label: str) -> list[np.ndarray]:
    """Positions of each row (in order of first appearance) from a 'row' column of
    non-negative whole numbers."""
    import pandas as pd

    row_ids = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(row_ids) | (row_ids < 0) | (row_ids != np.floor(row_ids)) | (
        row_ids > _MAX_ROW_ID)
    if bad.any():
        line = int(np.flatnonzero(bad)[0])
        raise InputError(f"'row' is {column.iloc[line]!r} at data line {line + 1}; row numbers "
                         f"are whole numbers from 0 to 2**53", file=label, key="row")
    _, first, inverse = np.unique(row_ids, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # rows in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    labels = rank[inverse.reshape(-1)]
    by_row = np.argsort(labels, kind="stable")
    bounds = np.cumsum(np.bincount(labels, minlength=order.size))[:-1]
    return np.split(by_row, bounds)


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bf16",
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
                       "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors_header(handle, label: str) -> tuple[dict, dict, int]:
    """(header, layout, data_start) of a safetensors file, checked before any data is read:
    layout is {key: (dtype, shape, start, stop)} with byte offsets relative to data_start."""
    size = os.fstat(handle.fileno()).st_size
    if size < 8:
        raise InputError("too short to be a safetensors file", file=label)
    handle.seek(0)
    (header_size,) = struct.unpack("<Q", handle.read(8))
    if header_size > size - 8 or header_size > MAX_SAFETENSORS_HEADER:
        raise InputError(f"corrupt safetensors header: it declares {header_size:,} header bytes "
                         f"in a file of {size:,}", file=label)
    try:
        header_text = handle.read(header_size).decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("corrupt safetensors header: not UTF-8 JSON", file=label) from None
    header = loads_json(header_text, file=label)
    if not isinstance(header, dict):
        raise InputError("corrupt safetensors header: not a JSON object", file=label)
    layout = _safetensors_layout(header, size - 8 - header_size, label)
    return header, layout, 8 + header_size


def _read_safetensors(handle, label: str):
    """Parse the safetensors layout directly (8-byte header size, JSON header, raw little-endian
    data), so bfloat16 needs neither torch nor ml_dtypes: it is widened to float32 exactly.

    Every tensor's declared byte range must lie in the data, match its shape and dtype, and not
    overlap another tensor's range (two keys reading the same bytes is not a pair)."""
    size = os.fstat(handle.fileno()).st_size
    header, layout, _ = read_safetensors_header(handle, label)
    values = sum(math.prod(shape) for key, (_, shape, _, _) in layout.items()
                 if key not in MASK_KEYS)
    check_memory(size + WORKING_BYTES_PER_VALUE * values,
                 what=f"a {_size(size)} safetensors file ({values:,} values)", file=label)
    data = handle.read()
    arrays, storage = {}, {}
    for key, (dtype, shape, start, stop) in layout.items():
        raw = memoryview(data)[start:stop]
        if dtype == "bf16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arrays[key] = bits.view(np.float32).reshape(shape)
            storage[key] = "bfloat16"
        else:
            arrays[key] = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(
                shape).copy()
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise InputError("__metadata__ must map names to strings", file=label, key="__metadata__")
    meta_text = metadata.get("meta")
    meta = loads_json(meta_text, file=label) if isinstance(meta_text, str) and meta_text else None
    return arrays, meta, storage


def _safetensors_layout(header: dict, data_size: int, label: str) -> dict:
    """{key: (dtype, shape, start, stop)} after checking every entry of the header."""
    layout = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise InputError("header entry is not an object", file=label, key=key)
        dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise InputError(f"unsupported safetensors dtype {info.get('dtype')}", file=label,
                             key=key)
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or not all(_whole(n) for n in shape):
            raise InputError(f"shape {shape!r} must be a list of whole numbers >= 0", file=label,
                             key=key)
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_whole, offsets))
                or not offsets[0] <= offsets[1] <= data_size):
            raise InputError(f"data_offsets {offsets!r} do not lie within the {data_size:,} data "
                             "bytes", file=label, key=key)
        itemsize = 2 if dtype == "bf16" else np.dtype(dtype).itemsize
        if math.prod(shape) * itemsize != offsets[1] - offsets[0]:
            raise InputError(f"shape {shape} of {info['dtype']} needs "
                             f"{math.prod(shape) * itemsize:,} bytes; data_offsets give "
                             f"{offsets[1] - offsets[0]:,}", file=label, key=key)
        layout[key] = (dtype, tuple(shape), offsets[0], offsets[1])
    spans = sorted((start, stop, key) for key, (_, _, start, stop) in layout.items()
                   if stop > start)
    for (_, stop_a, key_a), (start_b, _, key_b) in zip(spans, spans[1:]):
        if start_b < stop_a:
            raise InputError(f"tensors '{key_a}' and '{key_b}' overlap in the data bytes (each "
                             "tensor needs its own bytes)", file=label, key=key_b)
    return layout


def _whole(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def _read_pt(handle, label: str):
    try:
        import torch
    except ImportError:
        raise UnavailableError("reading .pt needs torch: pip install 'geomix[torch]'",
                               file=label) from None
    size = os.fstat(handle.fileno()).st_size
    check_memory(2 * size + WORKING_BYTES_PER_VALUE * size // 2,
                 what=f"a {_size(size)} .pt file", file=label)
    try:
        with warnings.catch_warnings():  # torch's UserWarnings are not geomix's messages
            warnings.simplefilter("ignore")
            obj = torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(_pt_refusal(exc), file=label) from None
    if not isinstance(obj, dict):
        raise InputError(f"holds a {type(obj).__name__}; expected a dict of tensors (keys "
                         "pi_theta + pi_t or logits_theta + logits_t)", file=label)
    arrays, storage = {}, {}
    meta = None
    for key, value in obj.items():
        if key == "meta":
            meta = value
            continue
        if isinstance(value, torch.Tensor):
            if value.layout != torch.strided or value.is_quantized:
                raise InputError(f"holds a {value.layout} tensor; expected a dense tensor",
                                 file=label, key=str(key))
            value = value.detach()
            if value.dtype == torch.bfloat16:
                storage[key] = "bfloat16"
                value = value.float()
            arrays[str(key)] = value.numpy()
        else:
            # weights_only=True still admits some containers (e.g. collections.Counter): anything
            # that is not a plain number array is named as such, not mistaken for a shape problem
            array = np.asarray(value) if isinstance(value, (list, tuple, int, float)) else None
            if array is None or array.dtype.kind not in "fiu":
                raise InputError(f"holds a {type(value).__name__}, expected a tensor of numbers",
                                 file=label, key=str(key))
            arrays[str(key)] = array
    return arrays, meta, storage


def _pt_refusal(exc: Exception) -> str:
    """One line for a .pt that torch.load(weights_only=True) refused. torch's own message ends
    with advice to pass weights_only=False, which would run the file's pickled code: geomix
    never does, so it says so instead."""
    import pickle

    why = ("geomix loads .pt files with torch.load(weights_only=True), tensors only, and never "
           "unpickles anything else, because unpickling can run arbitrary code")
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        detail = ""
        for line in text.splitlines():
            line = line.strip()
            if "WeightsUnpickler error:" in line:
                detail = line.split("WeightsUnpickler error:", 1)[1].strip()
                if detail:
                    break
            elif line.startswith("Unsupported") and not detail:
                detail = line
        detail = detail.split(" was not an allowed global")[0][:160]
        if "GLOBAL" in detail:
            return (f"holds pickled Python objects ({detail.replace('Unsupported global: ', '')})"
                    f", not only tensors; {why}. Save a dict of tensors (torch.save({{'pi_theta': "
                    "t1, 'pi_t': t2}, path)) or use .safetensors")
        return ("cannot load with torch.load(weights_only=True): not a torch file of tensors "
                "(corrupt, or a pickle of other objects" + (f"; {detail}" if detail else "") +
                f"); {why}")
    first = " ".join(text.split(". ")[0].split())[:200] if text else ""
    return (f"cannot load with torch.load(weights_only=True): {type(exc).__name__}"
            + (f": {first}" if first else ""))


def _dtype_name(values) -> str:
    return getattr(np.asarray(values).dtype, "name", "float64")
