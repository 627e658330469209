"""The results of a sharded run as a Parquet dataset: a folder of part files, one per piece.

    alpha.parquet/                 (`pandas.read_parquet("alpha.parquet")` reads it whole)
      .geomix-report               marker: command, format, and every file below (the parts too)
      _geomix_manifest.json        source, options, shards, per-status counts (written at the end)
      part-00000-000000000000.parquet
      part-00000-000000065536.parquet   (shard 0 from flat row 65,536), part-00001-..., ...

Pyarrow and pandas skip files whose names begin with '.' or '_', so the dataset is the parts.

Output safety is io's, the one rule of every report folder (`geomix_cli.io.outputs`): --out may
be a new path, an empty folder or an earlier geomix output whose marker lists all it holds; never
a folder of the user's, a file, or a folder holding a shard. The run builds the dataset in the
working folder `.NAME.geomix-partial` (`io.outputs.working_dir`), which follows the same rule:
its marker lists, from the start, the parts the run plans to write (and the lock, the manifest,
and a report's files before they are written), so a run killed at any point leaves a folder
that the next run recognises as geomix's. It is locked while a run writes it (a second run is
refused) and swapped in at NAME by io's recoverable swap when every piece is done, so an earlier
result at NAME stays whole until then (and is restored by the next run after a kill between
the swap's two renames).

Parts (`io.datasets.PartWriter`) are written in row groups as their blocks are computed, to a
temporary file that is renamed into place: a part that exists is complete. Its Parquet footer
carries what it was made from (piece, shard file size and modification time, options, geomix
version). A run with --resume continues the working folder, or starts one from the parts of a
finished result at NAME (hard links: NAME itself is left whole), and reuses every part whose
footer matches the current plan and whose shard had no shard-level error; everything else is
computed again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from geomix_cli.errors import InputError
from geomix_cli.io.outputs import LOCK_FILE, FolderLock, discard_working_dir, take_working_dir

MANIFEST = "_geomix_manifest.json"
FORMAT = "geomix-sharded-results"
SCHEMA_VERSION = 1
DICTIONARY_COLUMNS = ("shard", "status", "message")
PART_GLOB = "part-*.parquet"


class ResultStore:
    """A results dataset being built (see the module doc). `dataset` is the folder that holds
    the parts: the output itself (solve) or a sub-folder of a report (check: check.parquet)."""

    def __init__(self, out, *, command: str, source: str, options: dict, options_digest: str,
                 inputs, resume: bool, dataset_subdir: str = ""):
        from geomix_cli.io.outputs import working_dir

        self.out = str(out)  # as the user wrote it (messages)
        self.final = Path(out)
        self.partial = working_dir(out)
        self.command = command
        self.source = source
        self.options = json.loads(json.dumps(options))  # as a manifest holds them (lists)
        self.digest = options_digest
        self.inputs = [str(p) for p in inputs if not str(p).startswith("gen:")]
        self.resume = resume
        self.dataset_subdir = dataset_subdir
        self._lock: FolderLock | None = None
        self._planned: list[str] = []
        self.discarded_partial = False
        self.resumed_from: str | None = None

    @property
    def work(self) -> Path:
        return self.partial

    @property
    def dataset(self) -> Path:
        return self.partial / self.dataset_subdir if self.dataset_subdir else self.partial

    def _relative(self, name: str) -> str:
        """A dataset file's name relative to the working folder (as a marker lists it)."""
        return f"{self.dataset_subdir}/{name}" if self.dataset_subdir else name

    # -- opening ------------------------------------------------------------------------------

    def open(self, *, planned=(), notify=None) -> None:
        """Check --out (and the working folder, when there is one) by io's rule, recover an
        interrupted swap, then take the working folder: fresh, or continued (--resume).
        `planned`: the part file names this run will write. A refusal leaves every folder as
        it was."""
        try:
            self._open(list(planned), notify)
        except BaseException:
            self._unlock()
            raise

    def _open(self, planned: list[str], notify) -> None:
        from geomix_cli.io.outputs import new_working_dir
        from geomix_cli.io.writers import make_folders

        self.partial, self._lock = take_working_dir(self.out, inputs=self.inputs,
                                                    notify=notify)
        self._planned = ([self.dataset_subdir + "/"] if self.dataset_subdir else []) + [
            self._relative(name) for name in planned]
        seed: list[Path] = []
        if self.resume:
            if self._lock is not None:  # a working folder of an earlier run: continue it
                self._check_same_run(self.partial)
                self.resumed_from = str(self.partial)
            elif self.final.is_dir() and (self.final / MANIFEST).is_file():
                self._check_same_run(self.final)
                source = self.final / self.dataset_subdir if self.dataset_subdir else self.final
                wanted = set(planned)  # (a part of no planned piece would be dropped anyway)
                seed = sorted(p for p in source.glob(PART_GLOB) if p.name in wanted)
                self.resumed_from = str(self.final)
        if self._lock is None or not self.resume:
            self.discarded_partial = self._lock is not None and any(
                (self.partial / self.dataset_subdir).glob(PART_GLOB))
            lock, self._lock = self._lock, None
            try:
                self._lock = new_working_dir(
                    self.partial, lock, command=self.command, shown=self.out,
                    will_write=[MANIFEST, *self._planned], **self._marker_fields())
            finally:
                if lock is not None:
                    lock.release()  # (new_working_dir released it already when it got there)
        make_folders(self.dataset)
        self._write_marker()
        if seed:
            from geomix_cli.io.writers import link_or_copy

            for path in seed:  # planned names: listed. --out itself stays whole until the swap
                link_or_copy(path, self.dataset / path.name)
        self._write_manifest({"complete": False})

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _check_same_run(self, folder: Path) -> None:
        from geomix_cli.io.readers import loads_json, read_text

        try:
            manifest = loads_json(read_text(folder / MANIFEST, what="manifest"),
                                  file=str(folder / MANIFEST))
        except InputError:
            return  # no usable manifest: every part is checked on its own
        if not isinstance(manifest, dict):
            return
        old = manifest.get("options", {})
        if manifest.get("command") != self.command or old != self.options:
            differ = sorted(k for k in set(old) | set(self.options)
                            if old.get(k) != self.options.get(k))
            raise InputError(
                f"--resume: the results there were made by 'geomix {manifest.get('command')}' "
                f"with other options ({', '.join(differ) or 'command'}); rerun with the same "
                "options, or without --resume to start over", file=self.out)

    def _write_marker(self, *, also=(), final: bool = False) -> None:
        """The working folder's marker (io's shape): what is there, and what this run may
        still write there (the lock, the manifest, its planned parts, `also`). The finished
        folder's marker (`final`) lists what it holds (the lock file is removed after the
        swap, so its name stays listed)."""
        from geomix_cli.io.outputs import write_report_marker

        will_write = [LOCK_FILE] if final else [LOCK_FILE, MANIFEST, *self._planned, *also]
        write_report_marker(self.partial, self.command, also=will_write,
                            **self._marker_fields())

    @staticmethod
    def _marker_fields() -> dict:
        return {"format": FORMAT, "schema_version": SCHEMA_VERSION}

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
        from geomix_cli.io.datasets import read_part, read_part_info

        path = self.dataset / piece.file_name
        if not path.is_file():
            return None
        info = read_part_info(path)
        expected = self.part_info(piece)
        if info is None or info.get("shard_error") or {k: info.get(k) for k in expected} != \
                expected:
            return None
        return read_part(path)

    def writer(self, piece, schema):
        from geomix_cli.io.datasets import PartWriter

        return PartWriter(self.dataset / piece.file_name, schema, self.part_info(piece),
                          dictionary_columns=[c for c in DICTIONARY_COLUMNS
                                              if c in schema.names])

    def remove_stale_parts(self, pieces) -> None:
        """Parts that belong to no piece of this run (a shard that is gone, another plan)."""
        keep = {p.file_name for p in pieces}
        for path in self.dataset.glob(PART_GLOB):
            if path.name not in keep:
                path.unlink()

    # -- finishing ----------------------------------------------------------------------------

    def finish(self, manifest: dict, files: dict | None = None) -> Path:
        """Write the manifest and any report files, then swap the folder in at --out (io's
        recoverable swap)."""
        from geomix_cli.io import write_bytes_atomic
        from geomix_cli.io.outputs import swap_into_place

        files = files or {}
        self._write_marker(also=list(files))  # listed before they exist: a kill leaves it ours
        for name, data in files.items():
            write_bytes_atomic(self.partial / name, data)
        self._write_manifest({"complete": True, **manifest})
        self._write_marker(final=True)
        try:
            swap_into_place(self.partial, self.final, self.inputs)  # the lock held throughout
        finally:  # (a signal held off during the swap is raised as it ends)
            if not os.path.lexists(self.partial):  # swapped in: the lock file goes
                (self.final / LOCK_FILE).unlink(missing_ok=True)
            self._unlock()
        return self.final

    def close(self) -> None:
        """Release the lock. The working folder stays for --resume when it holds finished
        parts; a fresh one without any (a refusal before the first part) is removed."""
        if self.resumed_from is None and self._lock is not None and self.partial.is_dir() \
                and not any(self.dataset.glob(PART_GLOB)):
            discard_working_dir(self.partial, self._lock)
            self._lock = None
        self._unlock()
