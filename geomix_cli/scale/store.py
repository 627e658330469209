"""The results of a sharded run as a Parquet dataset: a folder of part files, one per piece.

    alpha.parquet/                 (`pandas.read_parquet("alpha.parquet")` reads it whole)
      .geomix-report               marker: an earlier geomix output, which a later --out may replace
      _geomix_manifest.json        source, options, shards, per-status counts (written at the end)
      part-00000-000000000000.parquet
      part-00000-000000065536.parquet   (shard 0 from flat row 65,536), part-00001-..., ...

Pyarrow and pandas skip files whose names begin with '.' or '_', so the dataset is the parts.

Commit and resume. The run builds the dataset in a sibling folder `.NAME.geomix-partial` and
swaps it in when every piece is done, so an earlier result at NAME stays whole until then. Each
part is written in row groups as its blocks are computed, to a hidden temporary file, then
fsynced and renamed into place: a part that exists is complete. Its Parquet footer carries what
it was made from (piece, shard file size and modification time, options, geomix version). A run
with --resume continues `.NAME.geomix-partial` (or NAME itself when there is no partial run) and
reuses every part whose footer matches the current plan and whose shard had no shard-level error;
everything else is computed again. A second run on the same output while one is going refuses.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from geomix_cli.errors import InputError

MARKER = ".geomix-report"
MANIFEST = "_geomix_manifest.json"
PARTIAL_SUFFIX = ".geomix-partial"
LOCK = ".geomix-lock"
FORMAT = "geomix-sharded-results"
SCHEMA_VERSION = 1


def check_output_path(out: Path, inputs, *, partial: Path | None = None) -> None:
    """The output rule of issue 10, for a results folder: OUT may be missing, an empty folder, or
    an earlier geomix output (it holds MARKER); never a file, a device, a folder geomix did not
    write, or a folder holding an input. Refused (InputError, exit 2) before any computation.

    (One function on purpose: when io's shared output-safety helper lands, this body becomes a
    call to it.)"""
    out = Path(out)
    resolved = out.resolve()
    for text in inputs:
        if str(text).startswith("gen:"):
            continue
        source = Path(text).resolve()
        for folder in (resolved,) + ((partial.resolve(),) if partial is not None else ()):
            if source == folder or folder in source.parents:
                raise InputError(f"--out {out} holds the input {text}; replacing it would remove "
                                 "the input: choose an output outside the source",
                                 file=str(out))
    for path in (out,) + ((partial,) if partial is not None else ()):
        if not (path.exists() or path.is_symlink()):
            continue
        if path.is_symlink() or not path.is_dir():
            raise InputError("exists and is not a folder; --out may replace only an earlier "
                             "geomix output (a folder with .geomix-report) or an empty folder",
                             file=str(path))
        if (path / MARKER).is_file():
            continue
        if any(path.iterdir()):
            raise InputError("is a folder geomix did not write (no .geomix-report in it); --out "
                             "may replace only an earlier geomix output or an empty folder",
                             file=str(path))


class ResultStore:
    """A results dataset being built (see the module doc). `dataset` is the folder that holds
    the parts: the output itself (solve) or a sub-folder of a report (check: check.parquet)."""

    def __init__(self, out, *, command: str, source: str, options: dict, options_digest: str,
                 inputs, resume: bool, dataset_subdir: str = ""):
        self.final = Path(out)
        self.partial = self.final.parent / f".{self.final.name}{PARTIAL_SUFFIX}"
        self.command = command
        self.source = source
        self.options = json.loads(json.dumps(options))  # as a manifest holds them (lists)
        self.digest = options_digest
        self.inputs = list(inputs)
        self.resume = resume
        self.dataset_subdir = dataset_subdir
        self._lock_fd: int | None = None
        self.discarded_partial = False
        self.resumed_from: str | None = None

    @property
    def work(self) -> Path:
        return self.partial

    @property
    def dataset(self) -> Path:
        return self.partial / self.dataset_subdir if self.dataset_subdir else self.partial

    # -- opening ------------------------------------------------------------------------------

    def open(self) -> None:
        """Check the output path, then take the partial folder: fresh, or continued (--resume).
        A refusal leaves every folder as it was."""
        try:
            self._open()
        except BaseException:
            self._unlock()
            raise

    def _open(self) -> None:
        check_output_path(self.final, self.inputs, partial=self.partial)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        if self.resume:
            if self.partial.is_dir():
                self._lock(self.partial)
                self._check_same_run(self.partial)
                self.resumed_from = str(self.partial)
            elif self.final.is_dir() and (self.final / MANIFEST).is_file():
                self._check_same_run(self.final)
                os.replace(self.final, self.partial)  # continued in place, swapped back at the end
                self._lock(self.partial)
                self.resumed_from = str(self.final)
        if self.resumed_from is None:
            if self.partial.exists():
                self._lock(self.partial)  # refuses while another run writes it
                self._unlock()
                shutil.rmtree(self.partial)
                self.discarded_partial = True
            self.partial.mkdir()
            self._lock(self.partial)
        self.dataset.mkdir(parents=True, exist_ok=True)
        self._write_marker()
        self._write_manifest({"complete": False})

    def _lock(self, folder: Path) -> None:
        import fcntl

        fd = os.open(folder / LOCK, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InputError("another geomix run is writing this output now (its lock is "
                             "held); wait for it or choose another --out",
                             file=str(self.final)) from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _check_same_run(self, folder: Path) -> None:
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # no usable manifest: every part is checked on its own
        old = manifest.get("options", {})
        if manifest.get("command") != self.command or old != self.options:
            differ = sorted(k for k in set(old) | set(self.options)
                            if old.get(k) != self.options.get(k))
            raise InputError(
                f"--resume: the results there were made by 'geomix {manifest.get('command')}' "
                f"with other options ({', '.join(differ) or 'command'}); rerun with the same "
                "options, or without --resume to start over", file=str(self.final))

    def _write_marker(self) -> None:
        """The report marker (the shape issue 10's report folders use: command, version and the
        files geomix wrote, so that a later --out check knows what it may replace)."""
        from geomix_cli import __version__
        from geomix_cli.io import write_json_atomic

        files = []
        for root, dirs, names in os.walk(self.partial):
            rel = os.path.relpath(root, self.partial)
            prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            files += [prefix + d + "/" for d in dirs]
            files += [prefix + n for n in names if prefix + n not in (MARKER, LOCK)]
        write_json_atomic(self.partial / MARKER, {
            "geomix_report": 1, "command": self.command, "geomix_version": __version__,
            "format": FORMAT, "schema_version": SCHEMA_VERSION, "files": sorted(files)})

    def _write_manifest(self, extra: dict) -> None:
        from geomix_cli import __version__
        from geomix_cli.io import write_json_atomic

        write_json_atomic(self.partial / MANIFEST,
                          {"format": FORMAT, "schema_version": SCHEMA_VERSION,
                           "command": self.command, "geomix": __version__,
                           "source": self.source, "options": self.options,
                           "dataset": self.dataset_subdir or ".", **extra})

    # -- parts --------------------------------------------------------------------------------

    def part_info(self, piece) -> dict:
        return {"piece": piece.id, "shard": piece.shard.label, "shard_path": piece.shard.path,
                "flat_start": piece.flat_start, "flat_stop": piece.flat_stop,
                "input_size": piece.shard.size, "input_mtime_ns": piece.shard.mtime_ns,
                "options": self.digest}

    def reusable(self, piece):
        """The part of `piece` as an Arrow table when --resume may reuse it, else None."""
        if not self.resume:
            return None
        path = self.dataset / piece.file_name
        if not path.is_file():
            return None
        import pyarrow.parquet as pq

        try:
            metadata = pq.read_metadata(path).metadata or {}
            info = json.loads(metadata.get(b"geomix", b"{}"))
            if info.get("shard_error") or {k: info.get(k) for k in self.part_info(piece)} != \
                    self.part_info(piece):
                return None
            return pq.read_table(path)
        except Exception:  # a damaged part is computed again, never trusted
            return None

    def writer(self, piece, schema) -> "PartWriter":
        return PartWriter(self.dataset, piece.file_name, schema, self.part_info(piece))

    def remove_stale_parts(self, pieces) -> None:
        """Parts that belong to no piece of this run (a shard that is gone, another plan)."""
        keep = {p.file_name for p in pieces}
        for path in self.dataset.glob("part-*.parquet"):
            if path.name not in keep:
                path.unlink()
        for path in self.dataset.glob(".part-*.tmp-*"):
            path.unlink(missing_ok=True)

    # -- finishing ----------------------------------------------------------------------------

    def finish(self, manifest: dict, files: dict | None = None) -> Path:
        """Write the manifest and any report files, then swap the folder in at --out."""
        from geomix_cli.io import write_bytes_atomic

        for name, data in (files or {}).items():
            write_bytes_atomic(self.partial / name, data)
        self._write_manifest({"complete": True, **manifest})
        (self.partial / LOCK).unlink(missing_ok=True)
        self._write_marker()
        _swap_into_place(self.partial, self.final)
        self._unlock()
        return self.final

    def close(self) -> None:
        """Release the lock. The partial folder stays for --resume when it holds finished parts;
        a fresh one without any (a refusal before the first part) is removed."""
        if self.resumed_from is None and self.partial.is_dir() and not any(
                self.dataset.glob("part-*.parquet")):
            shutil.rmtree(self.partial, ignore_errors=True)
        self._unlock()


def _swap_into_place(staging: Path, final: Path) -> None:
    """Replace `final` (an earlier geomix output, checked) by `staging`: two renames.
    (To be replaced by io's recoverable swap of issue 10, which restores a backup left by a kill
    between the renames.)"""
    backup = None
    if final.exists():
        backup = final.parent / f".tmp-old-{final.name}-{os.getpid()}"
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(final, backup)
    os.replace(staging, final)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


class PartWriter:
    """One part file, written row group by row group to a hidden temporary file; `commit`
    makes it visible (fsync + rename), `discard` removes it."""

    def __init__(self, folder: Path, name: str, schema, info: dict):
        import pyarrow.parquet as pq

        self.final = folder / name
        self.tmp = folder / f".{name}.tmp-{os.getpid()}"
        self.info = dict(info)
        self.rows = 0
        fd = os.open(self.tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o666)  # honours the umask
        self._handle = os.fdopen(fd, "wb")
        self._writer = pq.ParquetWriter(self._handle, schema, compression="zstd",
                                        use_dictionary=["shard", "status", "message"])

    def write(self, batch) -> None:
        import pyarrow as pa

        self._writer.write_table(pa.Table.from_batches([batch]))
        self.rows += batch.num_rows

    def commit(self, *, shard_error: str | None = None) -> Path:
        self._writer.add_key_value_metadata(
            {"geomix": json.dumps({**self.info, "rows": self.rows,
                                   "shard_error": shard_error})})
        self._writer.close()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self.tmp, self.final)
        return self.final

    def discard(self) -> None:
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 - already broken; the file goes anyway
            pass
        self._handle.close()
        self.tmp.unlink(missing_ok=True)
