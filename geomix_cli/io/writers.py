"""Writing files: atomically, with the permissions the umask asks for, and JSON row by row.

Every file is written to a temporary file in the same folder, flushed to disk, then renamed over
the destination (os.replace), so an interrupted or failed write (a kill, a full disk) never leaves
a half-written file over a good one: either the old file or the new one is there, and the
temporary file is removed (or, after a kill, removed by the next write to the same path). The
temporary file is created 0600 by the `tempfile` module; before it is renamed into place it is
given the mode an ordinary `open(path, "w")` would give a new file (0666 minus the umask), or the
mode of the file it replaces.
"""

from __future__ import annotations

import hashlib
import io as _stdlib_io
import json
import math
import os
import re
import socket
import stat
import tempfile
from pathlib import Path

import numpy as np

from geomix_cli.errors import OutputError
from geomix_cli.io.readers import KEY_PAIRS, file_kind, os_error_text

_UMASK: int | None = None


def process_umask() -> int:
    """This process's umask (read once: Linux reports it in /proc/self/status; elsewhere it is
    read by setting and restoring it)."""
    global _UMASK
    if _UMASK is None:
        try:
            with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
                _UMASK = next(int(line.split()[1], 8) for line in handle
                              if line.startswith("Umask:"))
        except (OSError, StopIteration, ValueError, IndexError):
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
    return _UMASK


def file_mode() -> int:
    """Mode of a created file: 0666 & ~umask (0644 under umask 022)."""
    return 0o666 & ~process_umask()


def folder_mode() -> int:
    """Mode of a created folder: 0777 & ~umask (0755 under umask 022)."""
    return 0o777 & ~process_umask()


# Temporary names carry this host and the writing process id, so that the next run can tell a
# leftover of a dead process (removed) from one of a live writer (left alone).
HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def temp_tag(name: str) -> str:
    """A name short enough to build temporary names from (file systems allow 255 bytes)."""
    if len(name.encode("utf-8", "surrogateescape")) <= 96:
        return name
    digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return name[:60] + "~" + digest


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this host)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def _temp_file_pattern(path: Path | None = None) -> re.Pattern:
    """Temporary names of `AtomicFile` (for `path`, or for any file when None)."""
    name = re.escape(temp_tag(path.name)) if path is not None else ".+"
    return re.compile(rf"\.{name}\.{HOST_TAG}\.(\d+)\.[a-z0-9_]{{8}}\.tmp")


def _remove_stale(entries, pattern: re.Pattern) -> None:
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and not pid_alive(int(match.group(1))) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except OSError:
                pass


def remove_stale_temp_files(path: Path) -> None:
    """Remove temporary files that a killed writer of `path` left in its folder."""
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    _remove_stale(entries, _temp_file_pattern(path))


def remove_stale_temp_files_in(folder: Path) -> None:
    """Remove the temporary files that killed writers (processes gone) left anywhere under
    `folder` (a working folder that many files are written into, once before its writes)."""
    pattern = _temp_file_pattern()
    for root, _dirs, _files in os.walk(folder):
        try:
            entries = list(os.scandir(root))
        except OSError:
            continue
        _remove_stale(entries, pattern)


def make_folders(folder: Path) -> None:
    """mkdir -p, as one line on failure (a parent that is a file, no permission, ...)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError("is not a folder: cannot write inside it", file=str(folder)) from None
    except OSError as exc:
        raise OutputError(f"cannot create this folder: {os_error_text(exc)}",
                          file=str(folder)) from None


def _refuse_non_regular_target(path: Path) -> None:
    """os.replace would put a regular file in place of a device, a FIFO or a socket (and fail
    on a folder): refuse those whatever the command checked before."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputError(f"cannot write: {os_error_text(exc)}", file=str(path)) from None
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise OutputError(f"is {file_kind(mode)}; geomix replaces regular files only",
                          file=str(path))


class AtomicFile:
    """A file written under a temporary name beside `path` and renamed over it by `commit()`
    (flushed to disk first), or removed by `discard()`: `path` is either the old file or the
    whole new one, never a part. The mode is the umask's (or that of the file it replaces).
    As a context manager: commit on success, discard on an exception (an OSError becomes one
    OutputError line). `clean=False` skips the search for a dead writer's temporary file of
    the same path (for a folder cleaned once with `remove_stale_temp_files_in`)."""

    def __init__(self, path, *, clean: bool = True):
        self.path = Path(path)
        make_folders(self.path.parent)
        _refuse_non_regular_target(self.path)
        if clean:
            remove_stale_temp_files(self.path)
        try:
            fd, tmp = tempfile.mkstemp(
                prefix=f".{temp_tag(self.path.name)}.{HOST_TAG}.{os.getpid()}.", suffix=".tmp",
                dir=self.path.parent)
        except OSError as exc:
            raise OutputError(f"cannot write in this folder: {os_error_text(exc)}",
                              file=str(self.path)) from None
        self.tmp = Path(tmp)
        mode = file_mode()
        try:  # replacing a file keeps its permissions (as an editor does); a new one: the umask
            mode = stat.S_IMODE(os.stat(self.path).st_mode)
        except OSError:
            pass
        self.handle = os.fdopen(fd, "wb")
        try:
            os.fchmod(self.handle.fileno(), mode)
        except BaseException:
            self.discard()
            raise

    def commit(self) -> Path:
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise
        return self.path

    def discard(self) -> None:
        try:
            self.handle.close()
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self.handle

    def __exit__(self, exc_type, exc, _tb):
        if exc_type is None:
            try:
                self.commit()
            except OSError as error:
                raise OutputError(f"cannot write: {os_error_text(error)} (nothing was written)",
                                  file=str(self.path)) from None
            return False
        self.discard()
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write: {os_error_text(exc)} (nothing was written)",
                              file=str(self.path)) from None
        return False


def write_bytes_atomic(path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary file in the same folder, fsync, rename)."""
    with AtomicFile(path) as handle:
        handle.write(data)
    return Path(path)


def link_or_copy(source, target) -> Path:
    """`target` becomes the same bytes as the finished file `source` (which is never written in
    place again): a hard link where the file system allows one, else an atomic copy."""
    import shutil

    try:
        os.link(source, target)
    except OSError:
        with AtomicFile(target) as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
    return Path(target)


def write_text_atomic(path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


# ----------------------------------------------------------------------------------------------
# JSON


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


def write_json_atomic(path, payload) -> Path:
    return write_text_atomic(path, dumps_json(payload) + "\n")


_encode_compact = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode


def write_json_document(stream, head: dict, rows, *, rows_key: str = "rows",
                        tail: dict | None = None) -> None:
    """Write {**head, rows_key: [...rows], **tail} as JSON to a text stream, row by row.

    The head and tail are laid out as `dumps_json` would (indent 2); each row is one compact line,
    encoded and written as it comes, so memory does not grow with the number of rows. `rows`
    yields dicts (made JSON-ready here) or already encoded JSON strings (see `json_rows`)."""
    def items(mapping):
        for key, value in mapping.items():
            text = dumps_json(value).replace("\n", "\n  ")
            yield f"  {json.dumps(str(key), ensure_ascii=False)}: {text}"

    head_items = list(items(head))
    write = stream.write
    write("{\n" + "".join(item + ",\n" for item in head_items))
    write(f"  {json.dumps(rows_key, ensure_ascii=False)}: [")
    first = True
    buffer: list[str] = []
    for row in rows:
        if not isinstance(row, str):
            row = _encode_compact(to_jsonable(row))
        buffer.append(("\n    " if first else ",\n    ") + row)
        first = False
        if len(buffer) >= 1024:
            write("".join(buffer))
            buffer.clear()
    write("".join(buffer) + ("\n  ]" if not first else "]"))
    tail_items = list(items(tail or {}))
    write("".join(",\n" + item for item in tail_items) + "\n}\n")


try:
    from json.encoder import c_encode_basestring as _encode_string  # the C one, as json uses
except ImportError:  # pragma: no cover - pure-Python json
    from json.encoder import py_encode_basestring as _encode_string


class _JsonNull:
    """Formats as JSON null under %r (a non-finite float in a numeric column)."""

    def __repr__(self) -> str:
        return "null"


_NULL = _JsonNull()


def _column_for_template(values) -> tuple[str, list]:
    """(conversion, values) for one column of `json_rows`: numbers stay Python numbers and are
    formatted by %r (float.__repr__, as json.dumps writes them; non-finite -> null); anything
    else is encoded to JSON text here and inserted by %s."""
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "fiu":
        if values.dtype.kind in "iu":
            return "%d", values.tolist()
        out = values.astype(np.float64).tolist()
        for i in np.flatnonzero(~np.isfinite(values)).tolist():
            out[i] = _NULL
        return "%r", out
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if all(isinstance(v, str) for v in values):
        return "%s", list(map(_encode_string, values))
    return "%s", [_encode_compact(to_jsonable(v)) for v in values]


def json_rows(columns: dict, n_rows: int, *, chunk: int = 8192):
    """Encoded JSON objects, one per row, from columns of equal length ({name: array or list}),
    converted a column and a chunk of rows at a time: the same text as `json.dumps(row)` of each
    row's dict, several times faster, and memory bounded by the chunk."""
    names = [json.dumps(str(name), ensure_ascii=False) for name in columns]
    for start in range(0, n_rows, chunk):
        stop = min(n_rows, start + chunk)
        converted = [_column_for_template(values[start:stop]) for values in columns.values()]
        template = "{" + ", ".join(f"{name}: {conv}" for name, (conv, _) in
                                   zip(names, converted)) + "}"
        for row in zip(*(values for _, values in converted)):
            yield template % row


# ----------------------------------------------------------------------------------------------
# tables, figures, pair files


def write_csv_atomic(path, frame) -> Path:
    """Write a pandas DataFrame as CSV atomically."""
    return write_text_atomic(path, frame.to_csv(index=False))


def figure_bytes(figure, fmt: str = "png", *, dpi: int = 150) -> bytes:
    """A matplotlib figure rendered to bytes (to be written with `write_bytes_atomic`),
    deterministically: no software version or date in the file's metadata, so the same figure
    gives the same bytes on every run and machine (with the same matplotlib)."""
    meta = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None},
            "pdf": {"CreationDate": None, "ModDate": None, "Producer": None,
                    "Creator": None}}.get(fmt.lower(), None)
    buffer = _stdlib_io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=dpi, bbox_inches="tight", metadata=meta)
    return buffer.getvalue()


def save_figure_atomic(figure, path, *, dpi: int = 150) -> Path:
    """Save a matplotlib figure atomically; the format follows the extension."""
    path = Path(path)
    return write_bytes_atomic(path, figure_bytes(
        figure, path.suffix.lstrip(".").lower() or "png", dpi=dpi))


def write_pairs_npz(path, *, theta: np.ndarray, target: np.ndarray, kind: str,
                    meta: list[str] | None = None) -> Path:
    """Write a pair file that `load_source` reads back (keys by kind, optional meta)."""
    keys = KEY_PAIRS[kind]
    buffer = _stdlib_io.BytesIO()
    payload = {keys[0]: np.asarray(theta), keys[1]: np.asarray(target)}
    if meta is not None:
        payload["meta"] = np.asarray([str(m) for m in meta])
    np.savez_compressed(buffer, **payload)
    return write_bytes_atomic(path, buffer.getvalue())
