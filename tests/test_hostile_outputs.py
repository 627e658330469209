"""Nothing a user has is lost to a geomix command: the output rules, through the real program.

Every refusal is checked byte for byte: the whole working folder is fingerprinted before and after
(`snapshot`), so a refusal that removed, replaced or added anything fails. Then the cases that must
succeed (an earlier report, an empty folder, --force), the permissions (umask), a full disk, two
writers racing, SIGKILL between the two renames of the folder swap (the next run restores the
previous report) and SIGTERM.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from hostile_helpers import (assert_refused, popen_geomix, run_geomix, snapshot, write_csv,
                             write_npz)

PAUSE_ENV = "GEOMIX_TEST_PAUSE_BETWEEN_RENAMES"


@pytest.fixture(scope="module")
def earlier_report(tmp_path_factory):
    """An earlier geomix report (made once): `check` of rows whose two sides are equal
    ('degenerate': a report without figures, quick to write)."""
    folder = tmp_path_factory.mktemp("template")
    write_npz(folder / "in.npz", identical=True)
    result = run_geomix("check", "in.npz", "--out", "rep", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


def _copy_into(folder: Path, template: Path, names) -> Path:
    import shutil

    for name in names:
        source = template / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, folder / name)
    return folder


@pytest.fixture
def work(tmp_path, earlier_report):
    """A working folder with an input pair file `in.npz` and an earlier geomix report `rep/`."""
    return _copy_into(tmp_path, earlier_report, ("in.npz", "rep"))


def _leftovers(folder) -> list[str]:
    return sorted(e for e in os.listdir(folder) if e.startswith(".tmp-") or e.endswith(".tmp"))


# ----------------------------------------------------------------------------------------------
# refusals: nothing changes anywhere


def _folder_with_thesis(tmp):
    (tmp / "mydata").mkdir()
    (tmp / "mydata" / "thesis.tex").write_text("\\chapter{years of work}\n")
    return ["check", "in.npz", "--out", "mydata"], "not a geomix report"


def _folder_holding_the_input(tmp):
    (tmp / "data").mkdir()
    write_npz(tmp / "data" / "x.npz")
    return ["check", "data/x.npz", "--out", "data"], "holds the input"


def _ancestor_of_the_input(tmp):
    (tmp / "data" / "sub").mkdir(parents=True)
    write_npz(tmp / "data" / "sub" / "x.npz")
    return ["check", "data/sub/x.npz", "--out", "data"], "holds the input"


def _report_holding_the_input(tmp):
    os.replace(tmp / "in.npz", tmp / "rep" / "in.npz")
    marker = json.loads((tmp / "rep" / ".geomix-report").read_text())
    marker["files"].append("in.npz")  # even a report whose marker lists it: it is the input
    (tmp / "rep" / ".geomix-report").write_text(json.dumps(marker))
    return ["check", "rep/in.npz", "--out", "rep"], "holds the input"


def _regular_file(tmp):
    (tmp / "some_file.txt").write_text("notes\n")
    return ["check", "in.npz", "--out", "some_file.txt"], "is a regular file"


def _fifo(tmp):
    os.mkfifo(tmp / "pipe")
    return ["check", "in.npz", "--out", "pipe"], "is a FIFO"


def _socket(tmp):
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp / "sock"))
    server.close()
    return ["compare-alpha", "in.npz", "--out", "sock"], "is a socket"


def _link_to_a_report(tmp):
    os.symlink("rep", tmp / "link")
    return ["check", "in.npz", "--out", "link"], "symbolic link"


def _current_folder(tmp):
    return ["check", "in.npz", "--out", "."], "is the current folder"


def _holding_the_current_folder(tmp):
    (tmp / "inner").mkdir()
    write_npz(tmp / "inner" / "x.npz")
    return ["check", "x.npz", "--out", ".."], "is the current folder or holds it"


def _name_too_long(tmp):
    return ["check", "in.npz", "--out", "r" * 300], "name too long"


def _report_with_a_file_added(tmp):
    (tmp / "rep" / "notes.txt").write_text("my reading of the report\n")
    return ["check", "in.npz", "--out", "rep"], "files geomix did not write (notes.txt)"


def _report_with_a_folder_added(tmp):
    (tmp / "rep" / "drafts").mkdir()
    (tmp / "rep" / "drafts" / "v1.md").write_text("draft\n")
    return ["check", "in.npz", "--out", "rep"], "drafts/"


def _parent_is_a_file(tmp):
    (tmp / "afile").write_text("x\n")
    return ["check", "in.npz", "--out", "afile/rep"], "not a folder"


def _simulate_into_a_folder(tmp):
    (tmp / "results").mkdir()
    (tmp / "results" / "paper.pdf").write_bytes(b"%PDF-1.4 mine")
    return ["simulate", "in.npz", "--out", "results"], "not a geomix report"


def _verify_into_a_file(tmp):
    (tmp / "report.txt").write_text("mine\n")
    # refused before the ~1 minute suite runs (the timeout of run_geomix would catch a run)
    return ["verify", "verify_alpha_theory", "--out", "report.txt"], "is a regular file"


def _export_onto_a_folder(tmp):
    (tmp / "d.npz").mkdir()
    return ["cases", "export", "gen:two-point", "d.npz"], "is a folder"


def _export_onto_a_file(tmp):
    return ["cases", "export", "gen:two-point", "in.npz"], "already exists; pass --force"


def _figure_onto_a_file(tmp):
    (tmp / "fig.png").write_bytes(b"\x89PNG my figure")
    return ["plot-pareto", "in.npz", "--row", "0", "--out", "fig.png"], "already exists"


def _csv_data_onto_the_input(tmp):
    write_csv(tmp / "pairs.csv")
    return (["plot-pareto", "pairs.csv", "--row", "0", "--out", "f.png", "--data", "pairs.csv",
             "--force"], "is an input of this command")


def _csv_data_onto_a_hard_link_of_the_input(tmp):
    write_csv(tmp / "pairs.csv")
    os.link(tmp / "pairs.csv", tmp / "same.csv")
    return (["plot-pareto", "pairs.csv", "--row", "0", "--out", "f.png", "--data", "same.csv",
             "--force"], "is an input of this command")


def _figure_onto_a_folder(tmp):
    (tmp / "figs.png").mkdir()
    return ["plot", "ess", "in.npz", "--out", "figs.png", "--force"], "is a folder"


REFUSALS = [_folder_with_thesis, _folder_holding_the_input, _ancestor_of_the_input,
            _report_holding_the_input, _regular_file, _fifo, _socket, _link_to_a_report,
            _current_folder, _holding_the_current_folder, _name_too_long,
            _report_with_a_file_added, _report_with_a_folder_added, _parent_is_a_file,
            _simulate_into_a_folder, _verify_into_a_file, _export_onto_a_folder,
            _export_onto_a_file, _figure_onto_a_file, _csv_data_onto_the_input,
            _csv_data_onto_a_hard_link_of_the_input, _figure_onto_a_folder]


@pytest.mark.parametrize("setup", REFUSALS, ids=[f.__name__.strip("_") for f in REFUSALS])
def test_an_output_that_may_not_be_replaced_is_refused_and_nothing_changes(setup, work):
    argv, *fragments = setup(work)
    cwd = work / "inner" if setup is _holding_the_current_folder else work
    before = snapshot(work)
    assert_refused(run_geomix(*argv, cwd=cwd, timeout=60), 2, *fragments)
    assert snapshot(work) == before


@pytest.mark.skipif(not os.path.exists("/dev/null") or not stat.S_ISCHR(
    os.stat("/dev/null").st_mode), reason="needs /dev/null")
@pytest.mark.parametrize("argv", [["check", "in.npz", "--out", "/dev/null"],
                                  ["plot-pareto", "in.npz", "--row", "0", "--out", "/dev/null",
                                   "--force"]])
def test_a_device_is_never_replaced(argv, work):
    """(As root, geomix 0.1 turned /dev/null into a folder.)"""
    before = snapshot(work)
    line = assert_refused(run_geomix(*argv, cwd=work), 2, "/dev/null")
    assert "character device" in line or "unknown figure extension" in line
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert snapshot(work) == before


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_an_output_under_proc_is_one_line(work):
    assert_refused(run_geomix("check", "in.npz", "--out", "/proc/geomix-report", cwd=work), 2,
                   "--out /proc/geomix-report", "cannot write in /proc")


# ----------------------------------------------------------------------------------------------
# what may be replaced, and how it is written


def test_an_earlier_report_and_an_empty_folder_are_replaced(work):
    marker = json.loads((work / "rep" / ".geomix-report").read_text())
    assert marker["command"] == "check" and marker["geomix_report"] == 1
    assert sorted(marker["files"]) == sorted(p.name for p in (work / "rep").iterdir()
                                             if p.name != ".geomix-report")
    old = snapshot(work / "rep")
    write_npz(work / "other.npz", seed=5, identical=True)
    result = run_geomix("check", "other.npz", "--out", "rep", cwd=work)
    assert result.returncode == 0, result.stderr
    assert snapshot(work / "rep") != old and (work / "rep" / "check.csv").is_file()
    (work / "empty").mkdir()
    assert run_geomix("compare-alpha", "in.npz", "--out", "empty", cwd=work).returncode == 0
    assert json.loads((work / "empty" / ".geomix-report").read_text())["command"] == \
        "compare-alpha"
    assert _leftovers(work) == []


def test_force_replaces_an_output_file_that_is_not_an_input(work):
    (work / "fig.png").write_bytes(b"old")
    write_npz(work / "pairs.npz")
    result = run_geomix("plot-pareto", "pairs.npz", "--row", "0", "--out", "fig.png", "--force",
                        "--no-cloud", cwd=work)
    assert result.returncode == 0, result.stderr
    assert (work / "fig.png").read_bytes()[:4] == b"\x89PNG"
    assert _leftovers(work) == []


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755),
                                                           (0o077, 0o600, 0o700),
                                                           (0o002, 0o664, 0o775)])
def test_created_files_and_folders_honour_the_umask(umask, file_mode, folder_mode, tmp_path):
    write_npz(tmp_path / "in.npz", identical=True)
    assert run_geomix("check", "in.npz", "--out", "new/rep", cwd=tmp_path,
                      umask=umask).returncode == 0
    assert run_geomix("cases", "export", "gen:two-point", "x.npz", cwd=tmp_path,
                      umask=umask).returncode == 0
    assert stat.S_IMODE(os.stat(tmp_path / "x.npz").st_mode) == file_mode
    for folder in (tmp_path / "new", tmp_path / "new" / "rep"):
        assert stat.S_IMODE(os.stat(folder).st_mode) == folder_mode, folder
    for path in (tmp_path / "new" / "rep").iterdir():
        assert stat.S_IMODE(os.stat(path).st_mode) == file_mode, path


def test_a_file_too_large_for_the_limit_leaves_nothing_partial(tmp_path):
    """A write that fails midway (here the file-size limit, EFBIG, like a full disk) is one line
    and leaves neither a partial file nor a temporary one."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    (tmp_path / "pairs.npz").write_bytes(b"an older export")
    before = snapshot(tmp_path)
    result = run_geomix("cases", "export", "gen:dirichlet:V=50000,rows=4", "pairs.npz", "--force",
                        cwd=tmp_path, preexec_fn=limit)
    assert_refused(result, 2, "pairs.npz", "too large", "nothing was written")
    assert snapshot(tmp_path) == before


def test_a_full_disk_while_writing_a_report_changes_nothing(work, monkeypatch, runner):
    """ENOSPC on the third file of the report: the earlier report stays byte for byte, the
    half-built folder is removed, one line, exit 2."""
    from geomix_cli.cli import app
    from geomix_cli.io import writers

    calls = {"n": 0}
    real_fsync = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.chdir(work)
    before = snapshot(work)
    monkeypatch.setattr(writers.os, "fsync", fsync)
    result = runner.invoke(app, ["check", "in.npz", "--out", "rep"])
    assert result.exit_code == 2, result.output
    assert "no space left on device" in result.stderr and len(result.stderr.splitlines()) == 1
    assert snapshot(work) == before


# ----------------------------------------------------------------------------------------------
# killed, interrupted, racing


def _wait_for(path: Path, process, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the writer never reached the pause"
        time.sleep(0.05)


@contextmanager
def _paused_between_the_renames(*argv, cwd: Path):
    """A geomix writer paused between the two renames of its folder swap (the test hook):
    yields (process, flag); removing the flag lets it go on. Killed at the end if still there."""
    flag = cwd / "paused.flag"
    writer = popen_geomix(*argv, cwd=cwd, env={PAUSE_ENV: str(flag)})
    try:
        _wait_for(flag, writer)
        yield writer, flag
    finally:
        if writer.poll() is None:
            writer.kill()
        flag.unlink(missing_ok=True)


def _sigkill(writer) -> None:
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)


def _sigterm_is_held(writer, flag) -> tuple[str, str]:
    """SIGTERM while paused between the renames: held (the process waits) until the swap is
    done, then acted on. Returns (stdout, stderr)."""
    writer.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert writer.poll() is None  # held: the swap is not cut in half
    flag.unlink()
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("geomix: error: interrupted (SIGTERM); nothing was "
                                            "left half-written")
    return out, err


def test_sigkill_between_the_two_renames_then_the_next_run_restores_the_report(work):
    previous = snapshot(work / "rep")
    with _paused_between_the_renames("check", "in.npz", "--out", "rep", cwd=work) as (writer, _):
        # between the renames: the old report is aside, the new one not yet in place
        assert not (work / "rep").exists()
        assert len(_leftovers(work)) == 2
        _sigkill(writer)
    # the next run that writes rep (here it then fails on its input) restores the report first
    result = run_geomix("check", "missing.npz", "--out", "rep", cwd=work)
    assert result.returncode == 2
    assert "restored the previous report" in result.stderr
    assert snapshot(work / "rep") == previous
    assert _leftovers(work) == []
    assert run_geomix("check", "in.npz", "--out", "rep", cwd=work).returncode == 0
    assert _leftovers(work) == []


def test_two_writers_racing_for_the_same_report_both_finish_cleanly(work):
    """Writer A is paused between its renames; writer B writes the report meanwhile; A then
    finds B's report where its own should go (ENOTEMPTY), goes round again and wins. Both
    exit 0, the folder is one complete report, nothing is left behind."""
    with _paused_between_the_renames("check", "in.npz", "--out", "rep", cwd=work) as (first,
                                                                                     flag):
        second = run_geomix("check", "in.npz", "--out", "rep", cwd=work)
        assert second.returncode == 0, second.stderr
        flag.unlink()
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    marker = json.loads((work / "rep" / ".geomix-report").read_text())
    assert sorted(marker["files"]) == sorted(p.name for p in (work / "rep").iterdir()
                                             if p.name != ".geomix-report")
    assert _leftovers(work) == []


def test_sigterm_between_the_renames_is_held_until_the_report_is_in_place(work):
    with _paused_between_the_renames("check", "in.npz", "--out", "rep", cwd=work) as paused:
        _, err = _sigterm_is_held(*paused)
    assert len(err.strip().splitlines()) == 1
    assert (work / "rep" / ".geomix-report").is_file() and _leftovers(work) == []


def test_sigterm_during_the_work_exits_130_and_changes_nothing(work):
    before = snapshot(work)
    writer = popen_geomix("verify", "verify_alpha_theory", "--out", "rep", cwd=work)
    try:
        time.sleep(4)  # well into the suite (or still starting: either way it must stop cleanly)
        writer.send_signal(signal.SIGTERM)
        out, err = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "interrupted (SIGTERM)" in err
    assert snapshot(work) == before


# ----------------------------------------------------------------------------------------------
# the library functions behind the rule


def test_recovery_touches_only_leftovers_of_dead_processes(tmp_path):
    from geomix_cli.io import outputs

    final = tmp_path / "rep"
    live_backup = tmp_path / f".tmp-old-rep-{outputs.HOST_TAG}.{os.getpid()}"
    live_backup.mkdir()
    (live_backup / "report.md").write_text("being swapped by a live writer")
    done = outputs.recover_interrupted(final)
    assert done == [] and live_backup.is_dir() and not final.exists()
    dead = _dead_pid()
    os.rename(live_backup, tmp_path / f".tmp-old-rep-{outputs.HOST_TAG}.{dead}")
    (tmp_path / f".tmp-rep-{outputs.HOST_TAG}.{dead}-abcdefgh").mkdir()
    (tmp_path / ".tmp-rep-someone-elses").mkdir()
    done = outputs.recover_interrupted(final)
    assert len(done) == 1 and (final / "report.md").read_text() == "being swapped by a live writer"
    assert sorted(os.listdir(tmp_path)) == [".tmp-rep-someone-elses", "rep"]


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_marker_that_is_not_geomix_s_is_not_trusted(tmp_path):
    from geomix_cli.io import check_report_dir, read_report_marker

    folder = tmp_path / "looks"
    folder.mkdir()
    (folder / "data.csv").write_text("1,2\n")
    for text in ("", "{}", "[]", '{"geomix_report": 1, "command": "check"}',
                 '{"geomix_report": 2, "command": "check", "files": []}'):
        (folder / ".geomix-report").write_text(text)
        assert read_report_marker(folder) is None
        with pytest.raises(Exception, match="not a geomix report"):
            check_report_dir(folder)
    os.remove(folder / ".geomix-report")
    os.symlink(tmp_path / "elsewhere", folder / ".geomix-report")
    assert read_report_marker(folder) is None


def test_the_committed_verify_report_is_a_replaceable_geomix_report():
    """`geomix verify verify_alpha_theory` (the quick start) rewrites outputs/verify_alpha_theory:
    its marker must list exactly the files that are there."""
    from geomix_cli.io import check_report_dir, read_report_marker
    from hostile_helpers import REPO_ROOT

    folder = REPO_ROOT / "outputs" / "verify_alpha_theory"
    marker = read_report_marker(folder)
    assert marker is not None and marker["command"] == "verify"
    assert sorted(marker["files"]) == sorted(p.name for p in folder.iterdir()
                                             if p.name != ".geomix-report")
    check_report_dir(folder)


# ----------------------------------------------------------------------------------------------
# sharded runs (a folder / glob SOURCE): the same rule for the Parquet results folder, its
# working folder .NAME.geomix-partial and --resume


WORKING = ".alpha.parquet.geomix-partial"


@pytest.fixture(scope="module")
def earlier_results(tmp_path_factory):
    """A folder of three shards and the Parquet results of `solve` on it (made once)."""
    folder = tmp_path_factory.mktemp("sharded")
    (folder / "shards").mkdir()
    for i in range(3):
        write_npz(folder / "shards" / f"s{i}.npz", rows=2, vocab=5, seed=i)
    result = run_geomix("solve", "shards", "--out", "alpha.parquet", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture
def sharded(work, earlier_results):
    """`work` (in.npz, rep/) plus shards/ and the earlier results alpha.parquet/."""
    return _copy_into(work, earlier_results, ("shards", "alpha.parquet"))


def _working_folder_copy(tmp):
    """A working folder as a run leaves it (a copy of the results: a geomix folder)."""
    import shutil

    shutil.copytree(tmp / "alpha.parquet", tmp / WORKING)


def _sharded_into_a_user_folder(tmp):
    (tmp / "mydata").mkdir()
    (tmp / "mydata" / "thesis.tex").write_text("\\chapter{years of work}\n")
    return ["solve", "shards", "--out", "mydata"], "not a geomix report"


def _sharded_onto_the_shards_folder(tmp):
    return ["solve", "shards", "--out", "shards"], "holds the input"


def _sharded_glob_onto_an_ancestor_of_its_shards(tmp):
    (tmp / "data" / "run").mkdir(parents=True)
    write_npz(tmp / "data" / "run" / "x.npz")
    return ["check", "data/**/*.npz", "--out", "data"], "holds the input"


def _sharded_onto_a_file(tmp):
    (tmp / "notes.txt").write_text("mine\n")
    return ["solve", "shards", "--out", "notes.txt"], "is a regular file"


def _sharded_onto_a_link(tmp):
    os.symlink("alpha.parquet", tmp / "link")
    return ["solve", "shards", "--out", "link"], "symbolic link"


def _sharded_onto_a_fifo(tmp):
    os.mkfifo(tmp / "pipe")
    return ["compare-alpha", "shards", "--out", "pipe"], "is a FIFO"


def _sharded_onto_the_current_folder(tmp):
    return ["solve", "shards", "--out", ".", "--resume"], "is the current folder"


def _results_with_a_file_added(tmp):
    (tmp / "alpha.parquet" / "notes.txt").write_text("my reading\n")
    return ["solve", "shards", "--out", "alpha.parquet"], "did not write (notes.txt)"


def _results_with_a_part_added_by_hand(tmp):
    """A Parquet file someone put into the results (it would be read as part of the dataset):
    the marker lists the parts geomix wrote, so it is not one of them."""
    import shutil

    part = sorted((tmp / "alpha.parquet").glob("part-*.parquet"))[0]
    shutil.copy2(part, tmp / "alpha.parquet" / "part-99999-000000000000.parquet")
    return (["solve", "shards", "--out", "alpha.parquet", "--resume"],
            "did not write (part-99999-000000000000.parquet)")


def _working_folder_that_is_not_geomix_s(tmp):
    (tmp / WORKING).mkdir()
    (tmp / WORKING / "data.csv").write_text("1,2\n")
    return (["solve", "shards", "--out", "alpha.parquet"], "its working folder",
            "not a geomix report")


def _working_folder_with_a_file_added(tmp):
    _working_folder_copy(tmp)
    (tmp / WORKING / "notes.txt").write_text("mine\n")
    return (["solve", "shards", "--out", "alpha.parquet", "--resume"], "its working folder",
            "did not write (notes.txt)")


def _working_folder_is_a_link(tmp):
    _working_folder_copy(tmp)
    os.replace(tmp / WORKING, tmp / "elsewhere")
    os.symlink("elsewhere", tmp / WORKING)
    return ["check", "shards", "--out", "alpha.parquet"], "its working folder", "symbolic link"


def _working_folder_holding_the_input(tmp):
    _working_folder_copy(tmp)
    write_npz(tmp / WORKING / "x.npz")
    marker = json.loads((tmp / WORKING / ".geomix-report").read_text())
    marker["files"].append("x.npz")
    (tmp / WORKING / ".geomix-report").write_text(json.dumps(marker))
    return (["solve", f"{WORKING}/*.npz", "--out", "alpha.parquet"], "its working folder",
            "holds the input")


SHARDED_REFUSALS = [_sharded_into_a_user_folder, _sharded_onto_the_shards_folder,
                    _sharded_glob_onto_an_ancestor_of_its_shards, _sharded_onto_a_file,
                    _sharded_onto_a_link, _sharded_onto_a_fifo, _sharded_onto_the_current_folder,
                    _results_with_a_file_added, _results_with_a_part_added_by_hand,
                    _working_folder_that_is_not_geomix_s, _working_folder_with_a_file_added,
                    _working_folder_is_a_link, _working_folder_holding_the_input]


@pytest.mark.parametrize("setup", SHARDED_REFUSALS,
                         ids=[f.__name__.strip("_") for f in SHARDED_REFUSALS])
def test_a_sharded_output_that_may_not_be_replaced_is_refused_and_nothing_changes(setup,
                                                                                  sharded):
    argv, *fragments = setup(sharded)
    before = snapshot(sharded)
    assert_refused(run_geomix(*argv, cwd=sharded, timeout=60), 2, *fragments)
    assert snapshot(sharded) == before


def _marker_lists_what_is_there(folder: Path) -> dict:
    """The results folder's marker lists every file below it (the lock file's name too, which
    exists only while a run writes the folder)."""
    marker = json.loads((folder / ".geomix-report").read_text())
    there = []
    for root, dirs, files in os.walk(folder):
        rel = os.path.relpath(root, folder)
        prefix = "" if rel == "." else rel + "/"
        there += [prefix + d + "/" for d in dirs] + [prefix + f for f in files]
    assert sorted(set(marker["files"]) - {".geomix-lock"}) == sorted(
        set(there) - {".geomix-report"})
    assert marker["geomix_report"] == 1 and marker["format"] == "geomix-sharded-results"
    return marker


def _no_leftovers(folder: Path) -> None:
    assert _leftovers(folder) == [] and not (folder / WORKING).exists()
    assert not any(p.name == ".geomix-lock" for p in folder.rglob("*"))


def test_sharded_results_and_reports_replace_only_earlier_geomix_outputs(sharded):
    """The marker of a Parquet results folder lists its parts, so a later run replaces it; a
    sharded report and an in-memory report replace each other (one rule)."""
    marker = _marker_lists_what_is_there(sharded / "alpha.parquet")
    assert sum(f.startswith("part-") for f in marker["files"]) == 3
    write_npz(sharded / "shards" / "s3.npz", rows=2, vocab=5, seed=3)
    result = run_geomix("solve", "shards", "--out", "alpha.parquet", cwd=sharded)
    assert result.returncode == 0, result.stderr
    marker = _marker_lists_what_is_there(sharded / "alpha.parquet")
    assert sum(f.startswith("part-") for f in marker["files"]) == 4
    for argv in (["check", "shards", "--out", "rep"],  # the in-memory report replaced
                 ["check", "in.npz", "--out", "rep"],  # and back again
                 ["compare-alpha", "shards", "--out", "alpha.parquet", "-p", "half"]):
        result = run_geomix(*argv, cwd=sharded)
        assert result.returncode == 0, (argv, result.stderr)
    _marker_lists_what_is_there(sharded / "alpha.parquet")
    assert (sharded / "alpha.parquet" / "compare.parquet").is_dir()
    _no_leftovers(sharded)


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755),
                                                           (0o077, 0o600, 0o700)])
def test_sharded_outputs_honour_the_umask(umask, file_mode, folder_mode, sharded):
    for argv, out in ((["solve", "shards", "--out", "new/alpha.parquet"], "new/alpha.parquet"),
                      (["check", "shards", "--out", "new/rep"], "new/rep")):
        assert run_geomix(*argv, cwd=sharded, umask=umask).returncode == 0
        for path in [sharded / "new", sharded / out, *(sharded / out).rglob("*")]:
            want = folder_mode if path.is_dir() else file_mode
            assert stat.S_IMODE(os.stat(path).st_mode) == want, path


def test_sigkill_between_the_renames_of_a_sharded_swap_then_the_next_run_restores(sharded):
    previous = snapshot(sharded / "alpha.parquet")
    write_npz(sharded / "shards" / "s3.npz", rows=2, vocab=5, seed=3)
    with _paused_between_the_renames("solve", "shards", "--out", "alpha.parquet",
                                     cwd=sharded) as (writer, _):
        assert not (sharded / "alpha.parquet").exists()
        _sigkill(writer)
    # any geomix run that writes alpha.parquet restores it first (here an in-memory check that
    # then fails on its input: one mechanism)
    result = run_geomix("check", "missing.npz", "--out", "alpha.parquet", cwd=sharded)
    assert result.returncode == 2 and "restored the previous report" in result.stderr
    assert snapshot(sharded / "alpha.parquet") == previous
    # the killed run's finished working folder is continued by --resume: nothing recomputed
    assert (sharded / WORKING).is_dir()
    resumed = run_geomix("solve", "shards", "--out", "alpha.parquet", "--resume", cwd=sharded)
    assert resumed.returncode == 0, resumed.stderr
    assert "4 reused" in resumed.stdout
    _marker_lists_what_is_there(sharded / "alpha.parquet")
    _no_leftovers(sharded)


def test_sigterm_in_a_sharded_swap_is_held_until_the_results_are_in_place(sharded):
    with _paused_between_the_renames("check", "shards", "--out", "rep", cwd=sharded) as paused:
        _sigterm_is_held(*paused)
    assert (sharded / "rep" / "check.parquet").is_dir()
    _marker_lists_what_is_there(sharded / "rep")
    _no_leftovers(sharded)


def test_sigterm_during_a_sharded_run_keeps_the_earlier_results_and_resume_finishes(sharded):
    import pyarrow.parquet as pq

    clean = run_geomix("solve", "shards", "--out", "clean.parquet", cwd=sharded)
    assert clean.returncode == 0, clean.stderr
    (sharded / "shards" / "s1.npz").touch()  # changed: its part is computed again
    os.utime(sharded / "shards" / "s1.npz", ns=(1, 1))
    previous = snapshot(sharded / "alpha.parquet")
    # --resume from the finished results: they stay whole at --out while the run works
    result = run_geomix("solve", "shards", "--out", "alpha.parquet", "--resume", cwd=sharded,
                        env={"GEOMIX_TEST_KILL_AFTER_PARTS": "1:SIGTERM"})
    assert result.returncode == 130, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert lines[-1] == "geomix: error: interrupted (SIGTERM); nothing was left half-written"
    assert any("--resume" in line for line in lines[:-1])
    assert snapshot(sharded / "alpha.parquet") == previous
    assert (sharded / WORKING).is_dir()
    resumed = run_geomix("solve", "shards", "--out", "alpha.parquet", "--resume", cwd=sharded)
    assert resumed.returncode == 0, resumed.stderr
    assert "3 reused" in resumed.stdout
    assert pq.read_table(sharded / "alpha.parquet").to_pandas().sort_values(
        ["shard", "row"]).reset_index(drop=True).equals(
        pq.read_table(sharded / "clean.parquet").to_pandas().sort_values(
            ["shard", "row"]).reset_index(drop=True))
    _no_leftovers(sharded)


def test_a_dead_writer_s_temporary_part_is_removed_and_the_run_resumes(sharded):
    """A part half-written by a killed process (its temporary file) is not a file of the user:
    the next run removes it (its writer is gone) and --resume goes on."""
    from geomix_cli.io.writers import HOST_TAG

    _working_folder_copy(sharded)
    name = f".part-00001-000000000000.parquet.{HOST_TAG}.{_dead_pid()}.abcdefgh.tmp"
    stale = sharded / WORKING / name
    stale.write_bytes(b"PAR1 half")
    result = run_geomix("solve", "shards", "--out", "alpha.parquet", "--resume", cwd=sharded)
    assert result.returncode == 0, result.stderr
    assert "3 reused" in result.stdout
    _no_leftovers(sharded)
