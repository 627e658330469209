"""What an output path may replace, one rule for every command, checked before any work.

Report folders (`--out DIR` of check, compare-alpha, simulate, verify) are built aside and swapped
in whole. Every report folder gets a marker file, `.geomix-report` (JSON: the command, the schema,
the geomix version and the list of files geomix wrote). `--out DIR` may be:

- a path that does not exist yet (it is created);
- an empty folder;
- an earlier geomix report: a folder with a valid marker that holds nothing but the files its
  marker lists (a file someone added since, e.g. notes.txt, is never deleted: refused).

Anything else is refused with one line (exit 2) before any computation: a non-empty folder
without the marker, a regular file, a device, a FIFO, a socket, a symbolic link, the current
folder or one that holds it, and any folder whose replacement would remove an input of the
command (the input file itself, or a folder that holds it).

File outputs (figures, CSV tables, exported pair files) follow one rule too: an existing file is
replaced only with `--force`; an input of the command, a folder and anything that is not a
regular file are never replaced, even with `--force`.

The swap of a report folder is two renames (old -> aside, new -> in place), with SIGINT/SIGTERM
held off between them. Only SIGKILL (or a power cut) can stop a run there; the next geomix run
that writes the same path then restores the previous report if the new one is not in place,
and removes the folders a dead process left behind.

A report built over several runs (a sharded run and its --resume) is built in a working folder
`.NAME.geomix-partial` (`working_dir`) that follows the same rule: a marker listing every file
it holds or is about to hold, checked like --out before any work, locked while a run writes it
(`take_working_dir`, `FolderLock`), and put in place by the same swap (`swap_into_place`).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from geomix_cli.errors import OutputError
from geomix_cli.io.readers import file_kind, os_error_text
from geomix_cli.io.writers import (HOST_TAG, folder_mode, make_folders, pid_alive,
                                   remove_stale_temp_files_in, temp_tag, write_json_atomic)

REPORT_MARKER = ".geomix-report"
REPORT_MARKER_SCHEMA = 1
MAX_MARKER_BYTES = 1 << 20

REPORT_RULE = ("a report folder may replace only an empty folder or an earlier geomix report (a "
               "folder with a .geomix-report marker, holding only the files it lists)")
FILE_RULE = "an existing file is replaced only with --force, and never an input of the command"

# Test hook (honoured only under pytest): pause between the two renames of a folder swap so that
# a test can SIGKILL the process there.
PAUSE_HOOK_ENV = "GEOMIX_TEST_PAUSE_BETWEEN_RENAMES"
_PAUSED: list[str] = []


# ----------------------------------------------------------------------------------------------
# paths and inputs


def absolute(path) -> Path:
    """Absolute, normalised path (lexically: '..' and '.' removed; symlinks kept)."""
    return Path(os.path.abspath(os.fspath(path)))


def _really(path: Path) -> Path:
    """The path with its folder's symbolic links resolved (the last component kept as is)."""
    return Path(os.path.realpath(path.parent)) / path.name


@dataclass(frozen=True)
class _Input:
    given: Path
    real: Path
    ident: tuple[int, int] | None  # (device, inode)


def _inputs(inputs) -> list[_Input]:
    out = []
    for item in inputs or ():
        if item is None:
            continue
        given = absolute(item)
        try:
            st = os.stat(given)
            ident = (st.st_dev, st.st_ino)
        except OSError:
            ident = None
        out.append(_Input(given, Path(os.path.realpath(given)), ident))
    return out


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _refuse(message: str, path, option: str | None) -> OutputError:
    """'--out PATH: message' (the path as the user wrote it)."""
    return OutputError(message, file=f"{option} {path}" if option else str(path))


def _what_is(mode: int) -> str:
    return file_kind(mode)


def _check_parent(final: Path, shown, option: str | None) -> None:
    """The folder that will hold `final` must be a folder (or creatable) and writable."""
    ancestor = final.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    try:
        mode = os.stat(ancestor).st_mode
    except OSError as exc:
        raise _refuse(f"cannot use the folder {ancestor}: {os_error_text(exc)}", shown,
                      option) from None
    if not stat.S_ISDIR(mode):
        raise _refuse(f"{ancestor} is {_what_is(mode)}, not a folder", shown, option)
    if ancestor != final.parent:
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise _refuse(f"cannot create folders in {ancestor}: permission denied", shown, option)
        return
    try:  # the real test: can a folder be created here (read-only, /proc, quota, ...)?
        probe = tempfile.mkdtemp(prefix=f".tmp-probe-{HOST_TAG}.{os.getpid()}-", dir=ancestor)
        os.rmdir(probe)
    except OSError as exc:
        raise _refuse(f"cannot write in {ancestor}: {os_error_text(exc)}", shown,
                      option) from None


def _lstat(path: Path, shown, option: str | None):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise _refuse("a part of this path is a file, not a folder", shown, option) from None
    except OSError as exc:
        raise _refuse(f"cannot use this path: {os_error_text(exc)}", shown, option) from None


# ----------------------------------------------------------------------------------------------
# report markers


def report_marker(command: str, files: list[str], **extra) -> dict:
    from geomix_cli import __version__

    return {"geomix_report": REPORT_MARKER_SCHEMA, "command": command,
            "geomix_version": __version__, **extra, "files": sorted(files)}


def read_report_marker(folder) -> dict | None:
    """The marker of a geomix report folder, or None when there is no valid one."""
    path = Path(folder) / REPORT_MARKER
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MARKER_BYTES:
            return None
        import json

        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (not isinstance(data, dict) or data.get("geomix_report") != REPORT_MARKER_SCHEMA
            or not isinstance(data.get("command"), str)):
        return None
    files = data.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return data


def _listing(folder: Path) -> list[str]:
    """Relative paths of everything under `folder` (folders end in '/')."""
    out = []
    for root, dirs, files in os.walk(folder):
        rel = os.path.relpath(root, folder)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        out.extend(prefix + d + "/" for d in dirs)
        out.extend(prefix + f for f in files)
    return out


def _unlisted(folder: Path, listed: set[str]) -> list[str]:
    """Entries of a marked report folder that its marker does not list (added by someone)."""
    extra = []
    for root, dirs, files in os.walk(folder):
        rel = os.path.relpath(root, folder)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        keep = []
        for d in dirs:
            name = prefix + d + "/"
            if name in listed and not os.path.islink(os.path.join(root, d)):
                keep.append(d)
            else:
                extra.append(name)
        dirs[:] = keep  # an unlisted folder is reported once, not walked
        extra.extend(prefix + f for f in files if prefix + f not in listed
                     and prefix + f != REPORT_MARKER)
        if len(extra) >= 5:
            break
    return extra


def write_report_marker(folder, command: str, *, also=(), **extra) -> Path:
    """Write `folder`'s marker: every file and folder now under it, and the names in `also`
    (files geomix is about to write there, so that a kill before the next marker leaves a folder
    that is still recognised as geomix's); `extra` fields describe the report (format, schema)."""
    folder = Path(folder)
    files = {f for f in _listing(folder) if f != REPORT_MARKER} | set(also)
    return write_json_atomic(folder / REPORT_MARKER, report_marker(command, sorted(files),
                                                                   **extra))


# ----------------------------------------------------------------------------------------------
# the rules


def check_report_dir(out, *, inputs=(), option: str | None = "--out") -> Path:
    """Refuse (OutputError) a report folder path that geomix may not replace; return it absolute.
    See the module docstring for the rule."""
    shown = out
    final = absolute(out)
    if final == final.parent:
        raise _refuse("is the root folder; name a new folder for the report", shown, option)
    final = _really(final)
    cwd = Path(os.path.realpath(os.getcwd()))
    if _within(cwd, final):
        raise _refuse("is the current folder" + ("" if cwd == final else " or holds it") +
                      "; name a new folder for the report (e.g. --out report/)", shown, option)
    for item in _inputs(inputs):
        if _within(item.real, final) or _within(item.given, final):
            raise _refuse(f"holds the input {item.given}; replacing it would delete the input. "
                          "Name a folder outside it", shown, option)
    st = _lstat(final, shown, option)
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise _refuse("is a symbolic link; name the report folder itself (geomix does not "
                          "replace links)", shown, option)
        if not stat.S_ISDIR(st.st_mode):
            raise _refuse(f"is {_what_is(st.st_mode)}, not a folder: {REPORT_RULE}",
                          shown, option)
        if os.path.ismount(final):
            raise _refuse("is a mount point; name a folder inside it", shown, option)
        try:
            entries = os.listdir(final)
        except OSError as exc:
            raise _refuse(f"cannot read this folder: {os_error_text(exc)}", shown,
                          option) from None
        if entries:
            marker = read_report_marker(final)
            if marker is None:
                raise _refuse("is a folder that is not empty and not a geomix report (no "
                              f"{REPORT_MARKER} marker): {REPORT_RULE}. Name a new folder",
                              shown, option)
            extra = _unlisted(final, set(marker["files"]))
            if extra:
                listed = ", ".join(extra[:4]) + (", ..." if len(extra) > 4 else "")
                raise _refuse("is an earlier geomix report, but it now also holds files geomix "
                              f"did not write ({listed}); move them out or name another folder",
                              shown, option)
    _check_parent(final, shown, option)
    return final


def check_output_file(path, *, inputs=(), force: bool = False,
                      option: str | None = "--out") -> Path:
    """Refuse (OutputError) a file output that geomix may not replace; return it absolute.

    New path: fine. Existing regular file: only with force, and never an input. A folder, a
    symbolic link, a device, a FIFO or a socket: never."""
    target = absolute(path)
    if target == target.parent or not target.name:
        raise _refuse("is a folder; give a file name", path, option)
    target = _really(target)
    st = _lstat(target, path, option)
    for item in _inputs(inputs):
        same = item.real == Path(os.path.realpath(target)) or (
            st is not None and item.ident == (st.st_dev, st.st_ino))
        if same:
            raise _refuse("is an input of this command; geomix never replaces its input (even "
                          "with --force): name another file", path, option)
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise _refuse("is a folder; give a file name (inside it, or elsewhere)", path, option)
        if stat.S_ISLNK(st.st_mode):
            raise _refuse("is a symbolic link; geomix does not replace links (name the file "
                          "itself)", path, option)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(f"is {_what_is(st.st_mode)}; geomix writes regular files only", path,
                          option)
        if not force:
            raise _refuse("already exists; pass --force to replace it", path, option)
    _check_parent(target, path, option)
    return target


# ----------------------------------------------------------------------------------------------
# recovering from a killed swap


def _backup_pattern(final: Path) -> re.Pattern:
    return re.compile(rf"\.tmp-old-{re.escape(temp_tag(final.name))}-{HOST_TAG}\.(\d+)")


def _legacy_backup_pattern(final: Path) -> re.Pattern:  # geomix 0.1: .tmp-old-NAME-PID
    return re.compile(rf"\.tmp-old-{re.escape(final.name)}-(\d+)")


def _staging_pattern(final: Path) -> re.Pattern:
    return re.compile(rf"\.tmp-{re.escape(temp_tag(final.name))}-{HOST_TAG}\.(\d+)-[a-z0-9_]{{8}}")


def _backup_path(final: Path) -> Path:
    return final.parent / f".tmp-old-{temp_tag(final.name)}-{HOST_TAG}.{os.getpid()}"


def _staging_prefix(final: Path) -> str:
    return f".tmp-{temp_tag(final.name)}-{HOST_TAG}.{os.getpid()}-"


def _is_report_or_empty(folder: Path) -> bool:
    try:
        return not os.listdir(folder) or read_report_marker(folder) is not None
    except OSError:
        return False


def recover_interrupted(final, notify=None) -> list[str]:
    """Undo what a killed writer of the report folder `final` left behind (same host, process
    gone): its previous report is put back if `final` is missing, stale copies and half-built
    folders are removed. Returns what was done (also passed to `notify`)."""
    final = _really(absolute(final))
    done = []
    try:
        entries = sorted(os.scandir(final.parent), key=lambda e: e.name)
    except OSError:
        return done
    backups, stagings = [], []
    for entry in entries:
        for pattern, found in ((_backup_pattern(final), backups),
                               (_legacy_backup_pattern(final), backups),
                               (_staging_pattern(final), stagings)):
            match = pattern.fullmatch(entry.name)
            if match and entry.is_dir(follow_symlinks=False) and not pid_alive(int(match.group(1))):
                found.append((entry, int(match.group(1))))
                break
    for entry, pid in stagings:
        shutil.rmtree(entry.path, ignore_errors=True)
    backups.sort(key=lambda item: item[0].stat(follow_symlinks=False).st_mtime, reverse=True)
    for entry, pid in backups:
        if not os.path.lexists(final):
            try:
                os.replace(entry.path, final)
            except OSError:
                continue
            done.append(f"{final}: restored the previous report, which an interrupted geomix "
                        f"run (process {pid}) had moved aside to {entry.name}")
        elif _is_report_or_empty(Path(entry.path)):
            shutil.rmtree(entry.path, ignore_errors=True)
    for line in done:
        if notify is not None:
            notify(line)
    return done


# ----------------------------------------------------------------------------------------------
# writing a report folder


@dataclass(frozen=True)
class _Prepared:
    command: str
    inputs: tuple


_PREPARED: dict[Path, _Prepared] = {}


def prepare_report_dir(out, *, command: str, inputs=(), notify=None,
                       option: str | None = "--out") -> Path:
    """Before any work: recover an interrupted earlier write of `out`, then check that it may be
    replaced (`check_report_dir`). `atomic_directory(out)` later uses the same command and
    inputs. Returns the absolute path."""
    recover_interrupted(out, notify)
    final = check_report_dir(out, inputs=inputs, option=option)
    _PREPARED[final] = _Prepared(command, tuple(inputs or ()))
    return final


@contextmanager
def _signals_held():
    """Hold SIGINT, SIGTERM and SIGHUP off while the folder swap runs: a signal that arrives is
    recorded and delivered again right after (so Ctrl-C still stops the run, after the swap).

    Python-level handlers, not a thread signal mask: in a process with other threads (BLAS,
    torch) the kernel may deliver a signal to any thread that does not block it."""
    names = ("SIGINT", "SIGTERM", "SIGHUP")
    held = [getattr(signal, n) for n in names if hasattr(signal, n)]
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (and only it gets Python's signals)
        return
    pending: list[int] = []
    previous = {}
    for sig in held:
        try:
            previous[sig] = signal.signal(sig, lambda signum, _frame: pending.append(signum))
        except (OSError, ValueError):  # pragma: no cover - not settable here
            pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)


def _pause_between_renames() -> None:
    """Under pytest only, with GEOMIX_TEST_PAUSE_BETWEEN_RENAMES=FLAG: write FLAG (the process
    id) once the old report is aside, then wait until the test removes FLAG (at most 60 s), so a
    test can SIGKILL the process exactly here, or run another writer meanwhile."""
    flag = os.environ.get(PAUSE_HOOK_ENV)
    if not flag or "PYTEST_CURRENT_TEST" not in os.environ or _PAUSED:
        return
    _PAUSED.append(flag)  # once per process
    Path(flag).write_text(str(os.getpid()), encoding="ascii")
    deadline = time.monotonic() + 60
    while os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.02)


def swap_into_place(staging: Path, final: Path, inputs=()) -> None:
    """Put the finished folder `staging` (a sibling of `final`) at `final`, replacing an earlier
    report there (checked again now): two renames with signals held off, recoverable by
    `recover_interrupted` after a kill between them; racing writers: the last one wins."""
    staging, final = Path(staging), _really(absolute(final))
    with _signals_held():
        for _attempt in range(8):
            backup = None
            if os.path.lexists(final):
                check_report_dir(final, inputs=inputs, option=None)  # still a report?
                backup = _backup_path(final)
                shutil.rmtree(backup, ignore_errors=True)
                try:
                    os.replace(final, backup)
                except FileNotFoundError:  # another writer moved it meanwhile: look again
                    continue
            _pause_between_renames()
            try:
                os.replace(staging, final)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    # another geomix process put its report in place between our two renames:
                    # its report replaced ours as the previous one; go round again (last wins)
                    if backup is not None:
                        shutil.rmtree(backup, ignore_errors=True)
                    continue
                if backup is not None and not os.path.lexists(final):
                    os.replace(backup, final)
                raise
            if backup is not None:
                shutil.rmtree(backup, ignore_errors=True)
            return
    raise OutputError("another process kept replacing this folder while geomix wrote it; this "
                      "run's report was not written (run it again)", file=str(final))


@contextmanager
def atomic_directory(final_dir, *, command: str | None = None, inputs=(), notify=None):
    """Build a report folder in a sibling temporary folder; swap it in only on success.

    The folder gets its `.geomix-report` marker; on any exception the previous folder is left
    exactly as it was. Refuses (OutputError) a path that may not be replaced (see
    `check_report_dir`; `prepare_report_dir` does the same check before the work starts)."""
    final = _really(absolute(final_dir))
    prepared = _PREPARED.get(final)
    if prepared is not None:
        command = command or prepared.command
        inputs = (*tuple(inputs or ()), *prepared.inputs)
    command = command or "geomix"
    recover_interrupted(final, notify)
    check_report_dir(final, inputs=inputs)
    make_folders(final.parent)
    try:
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(final), dir=final.parent))
        os.chmod(staging, folder_mode())
    except OSError as exc:
        raise OutputError(f"cannot create the report folder: {os_error_text(exc)}",
                          file=str(final)) from None
    try:
        yield staging
        write_report_marker(staging, command)
        swap_into_place(staging, final, inputs)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"cannot write the report: {os_error_text(exc)} (nothing was "
                          "changed)", file=str(final)) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        _PREPARED.pop(final, None)


# ----------------------------------------------------------------------------------------------
# a report built over several runs (resumable)


WORKING_SUFFIX = ".geomix-partial"
LOCK_FILE = ".geomix-lock"


def working_dir(final) -> Path:
    """The working folder of a report that is built over one or more runs (`--resume`):
    `.NAME.geomix-partial` beside NAME. It follows the rule of a report folder (a marker listing
    every file, the files it is about to hold included) and is swapped in at NAME, by
    `swap_into_place`, when the report is complete."""
    final = _really(absolute(final))
    return final.parent / f".{final.name}{WORKING_SUFFIX}"


class FolderLock:
    """An exclusive lock on a folder, held by this process until `release()` (or its death):
    a lock file in the folder, locked with flock; a second geomix process is refused with one
    line instead of writing the same files."""

    def __init__(self, folder, *, shown=None, option: str | None = "--out"):
        import fcntl

        self.path = Path(folder) / LOCK_FILE
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
        try:
            try:
                self.fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o666)  # umask
                self.created = True
            except FileExistsError:
                self.fd = os.open(self.path, flags)
                self.created = False
        except OSError as exc:
            raise _refuse(f"cannot lock the working folder {folder}: {os_error_text(exc)}",
                          shown or folder, option) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise _refuse("another geomix run is writing this output now (its lock is held); "
                          "wait for it or choose another --out", shown or folder,
                          option) from None

    def release(self, *, undo: bool = False) -> None:
        """Unlock; `undo`: also remove the lock file if this lock created it (a refusal leaves
        the folder as it was)."""
        if self.fd is not None:
            if undo and self.created:
                self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None


def take_working_dir(final, *, inputs=(), notify=None,
                     option: str | None = "--out") -> tuple[Path, FolderLock | None]:
    """Before any work on a report built in a working folder: recover an interrupted swap of
    `final`, check `final` (`check_report_dir`) and, when the working folder exists, lock it
    (refused while another geomix process holds it), remove the temporary files that dead
    writers left in it, and check it by the same rule as a report folder. Returns the working
    folder's path and the lock (None when there is no working folder yet)."""
    shown = final
    recover_interrupted(final, notify)
    final = check_report_dir(final, inputs=inputs, option=option)
    work = working_dir(final)
    st = _lstat(work, work, None)
    if st is None:
        return work, None
    working_option = f"{option} {shown}: its working folder" if option else None
    lock = None
    if stat.S_ISDIR(st.st_mode) and read_report_marker(work) is not None:
        lock = FolderLock(work, shown=shown, option=option)
        try:
            remove_stale_temp_files_in(work)
        except BaseException:
            lock.release()
            raise
    try:
        check_report_dir(work, inputs=inputs, option=working_option)
    except BaseException:
        if lock is not None:
            lock.release(undo=True)
        raise
    return work, lock


def new_working_dir(work, lock: FolderLock | None, *, command: str, will_write=(), shown=None,
                    option: str | None = "--out", **marker) -> FolderLock:
    """Start the working folder `work` afresh: remove an earlier one (checked and locked by
    `take_working_dir`, or empty), create it (the umask's mode), write its marker (listing the
    lock file and `will_write`, the files the run is about to write) and lock it."""
    work = Path(work)
    if os.path.lexists(work):
        shutil.rmtree(work)
    if lock is not None:
        lock.release()
    make_folders(work.parent)
    try:
        os.mkdir(work)
    except FileExistsError:
        raise _refuse("another geomix run started writing this output just now; wait for it "
                      "or choose another --out", shown or work, option) from None
    except OSError as exc:
        raise _refuse(f"cannot create the working folder {work}: {os_error_text(exc)}",
                      shown or work, option) from None
    write_report_marker(work, command, also=[LOCK_FILE, *will_write], **marker)
    return FolderLock(work, shown=shown, option=option)


def discard_working_dir(work, lock: FolderLock | None) -> None:
    """Remove a working folder this process holds (nothing of it is worth keeping)."""
    shutil.rmtree(work, ignore_errors=True)
    if lock is not None:
        lock.release()
