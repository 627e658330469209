"""The command line: parse -> core -> render. The only place where errors become exit codes.

Each command lives in `geomix_cli/commands/<name>.py` and registers itself on `app`; heavy
imports (pandas, matplotlib, torch) happen inside the commands that need them.
"""

from __future__ import annotations

import functools
import os
import sys

_HUGEPAGE_OFF_HERE = False


def _numpy_hugepage(enabled: bool):
    """numpy's transparent-hugepage madvise policy, set at run time; returns the previous one
    (None where this numpy has no such switch)."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # pragma: no cover - another numpy layout
        return None
    return _set_madvise_hugepage(enabled)


def restore_numpy_hugepage() -> None:
    """Undo `tune_process`'s hugepage setting (numpy's default policy again). A long-lived process
    that allocates large temporaries again and again (the numpy bisection port in `geomix bench`)
    is faster with numpy's default once huge pages are in place."""
    global _HUGEPAGE_OFF_HERE
    if _HUGEPAGE_OFF_HERE:
        _numpy_hugepage(True)
        _HUGEPAGE_OFF_HERE = False


def _tune_malloc() -> None:
    """Keep freed memory for reuse (glibc): numpy's block temporaries (~1-2 MiB, solvers and
    diagnostics work on cache-sized row blocks) are otherwise handed back to the kernel when freed
    and faulted in again on the next allocation, which on the benchmark VM cost ~0.5 s of a
    64 x 151,936 solve (sys 0.8 s against 0.25 s). Arrays of 32 MiB and more are still mapped
    separately (and returned when freed); at most 512 MiB of freed heap is kept. Skipped when the
    environment sets glibc's own MALLOC_*_ variables, or where mallopt is not there."""
    if sys.platform != "linux" or any(k.startswith("MALLOC_") for k in os.environ):
        return
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return
    mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD
    mallopt(-3, 32 << 20)   # M_MMAP_THRESHOLD


def tune_process() -> None:
    """Allocator settings for a `geomix` process, applied by `main()` only (importing this module,
    e.g. in a notebook or the tests, changes nothing). Results do not change; see
    docs/benchmarks.md for the measurements.

    numpy madvises every large array as transparent-hugepage memory; on the benchmark machine (a VM
    with THP "madvise" that never obtained a huge page) that made each fresh large array ~3x slower
    to fault in (a 64 x 151,936 solve spent ~0.7 s more in the kernel), so a geomix process turns
    it off unless the environment sets NUMPY_MADVISE_HUGEPAGE itself. glibc's trim/mmap thresholds
    are raised so freed block temporaries are reused (`_tune_malloc`)."""
    global _HUGEPAGE_OFF_HERE
    if "NUMPY_MADVISE_HUGEPAGE" not in os.environ:
        _HUGEPAGE_OFF_HERE = _numpy_hugepage(False) is not None
    _tune_malloc()


import typer  # noqa: E402
import typer.core  # noqa: E402
from rich.console import Console  # noqa: E402

from geomix_cli.errors import EXIT_BAD_INPUT, GeomixError  # noqa: E402

# ----------------------------------------------------------------------------------------------
# Help text in the usual command-line style: option values as TEXT / INTEGER / FLOAT / PATH, no
# type label on flags, arguments as SOURCE (required) or [SOURCE]. Recent typer releases print
# '<bool>', '<str>' and '{source}' instead; the classes below change only geomix's own commands
# (their parameters are re-classed when a command is built), never typer itself.

_TYPE_WORDS = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH", "Path": "PATH"}


def _type_word(label):
    """'<str>' -> 'TEXT', '<list[str]>' -> 'TEXT', '<int range>' -> 'INTEGER'; None stays None."""
    if not label:
        return label
    bare = str(label).strip("<>")
    for prefix in ("list[", "tuple["):
        if bare.startswith(prefix):
            bare = bare[len(prefix):].rstrip("]")
    bare = bare.replace(" range", "")
    return _TYPE_WORDS.get(bare, bare.upper())


class _PlainOption(typer.core.TyperOption):
    def display_type_rich(self, ctx):
        if self.metavar is not None:
            return self.metavar
        if getattr(self, "is_bool_flag", False) or getattr(self, "is_flag", False):
            return None
        return _type_word(super().display_type_rich(ctx))


class _PlainArgument(typer.core.TyperArgument):
    def display_type_rich(self, ctx):
        return None  # the argument's name and help say what it is

    @property
    def display_name_raw(self) -> str:
        return self.metavar if self.metavar is not None else self.name.upper()

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")


def _plain(params):
    for param in params:
        if type(param) is typer.core.TyperOption:
            param.__class__ = _PlainOption
        elif type(param) is typer.core.TyperArgument:
            param.__class__ = _PlainArgument
    return params


class _GeomixCommand(typer.core.TyperCommand):
    def get_params(self, ctx):  # includes --help and, on the group, the completion options
        return _plain(super().get_params(ctx))


class _GeomixGroup(typer.core.TyperGroup):
    def get_params(self, ctx):
        return _plain(super().get_params(ctx))


app = typer.Typer(
    name="geomix",
    cls=_GeomixGroup,
    help="Solve, verify and report the KL-symmetric geometric-mean sampling distribution "
         "q* ∝ pi_theta^alpha* · pi_t^(1-alpha*).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from geomix_cli import __version__

        typer.echo(f"geomix {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main_options(
    version: bool = typer.Option(False, "--version", "-V", callback=_print_version,
                                 is_eager=True, help="Print the version and exit."),
) -> None:
    """(the options of `geomix` itself; the help text is the app's)"""


class _OutputConsole(Console):
    """stdout for results. Width: COLUMNS when set, else the terminal's; piped output without
    COLUMNS gets 160 columns, so that tables are not squeezed to 80 in files and pipes. Decided
    at each print (not at import), so COLUMNS set later is honoured."""

    @property
    def size(self):
        base = super().size
        if "COLUMNS" in os.environ or self.is_terminal:
            return base
        return type(base)(PIPED_WIDTH, base.height)

    @size.setter
    def size(self, new_size):  # rich's own setter (fixes the width and height)
        Console.size.fset(self, new_size)


PIPED_WIDTH = 160
stdout = _OutputConsole(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


def error_line(text: str) -> None:
    """One plain line on stderr (no rich markup or wrapping: it must stay greppable)."""
    sys.stderr.write(f"geomix: error: {text}\n")


def warning_line(text: str) -> None:
    sys.stderr.write(f"geomix: warning: {text}\n")


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the process is, like Ctrl-C: cleanup code (the report
    swap, temporary files) runs, then the command exits 130 with one line."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


def _raise_interrupted(signum, _frame):
    import signal

    raise Interrupted(signal.Signals(signum).name)


def handle_termination_signals() -> None:
    """SIGTERM (and SIGHUP) handled like SIGINT. Only in a geomix process (main() calls it)."""
    import signal

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _raise_interrupted)


def _stdout_closed() -> None:
    """stdout's reader went away (`geomix solve x --json | head`): stop quietly, and keep
    Python from complaining when it flushes stdout at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def guarded(func):
    """Turn GeomixError into one line on stderr and its exit code. Interrupts (Ctrl-C, SIGTERM),
    a closed stdout, memory exhaustion and operating-system errors (a full disk, a permission)
    are also one line with a documented exit code; anything else is a bug and keeps its
    traceback (exit 1)."""
    from geomix_cli.errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except GeomixError as exc:
            error_line(exc.one_line())
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            error_line(f"interrupted ({getattr(exc, 'signal_name', 'SIGINT')}); nothing was left "
                       "half-written")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except MemoryError as exc:
            detail = str(exc).splitlines()[0] if str(exc) else "an allocation failed"
            error_line(f"out of memory: {detail}; use fewer rows (--rows) or a smaller input")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except BrokenPipeError:
            _stdout_closed()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except OSError as exc:
            from geomix_cli.io import os_error_text

            where = f"{exc.filename}: " if exc.filename else ""
            error_line(f"{where}{os_error_text(exc)}")
            raise typer.Exit(EXIT_BAD_INPUT) from None

    return wrapper


def _warning_as_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings (numpy's RuntimeWarning on values near the float64 limits, a library's
    DeprecationWarning) as one geomix warning line each, without the source line echoed."""
    text = " ".join(str(message).split())
    warning_line(f"{category.__name__}: {text}")


def _usage_error_line(exc) -> str:
    """One line for a click usage error (a bad option value, an unknown option, a missing
    argument), naming where to look."""
    text = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        text += f" (see '{ctx.command_path} --help')"
    return text


def main() -> None:
    """The `geomix` program: a one-line error for every refusal, usage errors included."""
    import importlib
    import warnings

    from geomix_cli.errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED

    # click's exceptions, wherever this typer takes click from (recent typer vendors it)
    click_exceptions = importlib.import_module(typer.BadParameter.__module__)
    tune_process()
    handle_termination_signals()
    warnings.showwarning = _warning_as_one_line
    try:
        code = app(prog_name="geomix", standalone_mode=False)
    except click_exceptions.ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help was printed already
            code = exc.exit_code
        else:
            error_line(_usage_error_line(exc))
            code = exc.exit_code
    except typer.Abort:
        error_line("aborted")
        code = EXIT_INTERRUPTED
    except KeyboardInterrupt as exc:  # outside a command (while parsing, importing)
        error_line(f"interrupted ({getattr(exc, 'signal_name', 'SIGINT')})")
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        _stdout_closed()
        code = EXIT_BROKEN_PIPE
    except GeomixError as exc:  # pragma: no cover - guarded() catches these first
        error_line(exc.one_line())
        code = exc.exit_code
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_closed()
        code = EXIT_BROKEN_PIPE
    sys.exit(code if isinstance(code, int) else 0)


# Registration happens after `app` and `guarded` exist (the command modules import them).
from geomix_cli.commands import register_all  # noqa: E402

register_all(app)


def _plain_help(typer_app) -> None:
    """Every command and sub-app of geomix gets the plain help classes (see _GeomixCommand)."""
    for info in typer_app.registered_commands:
        if info.cls in (None, typer.core.TyperCommand):
            info.cls = _GeomixCommand
    for group in typer_app.registered_groups:
        sub = group.typer_instance
        if not isinstance(sub.info.cls, type):  # typer's default placeholder: not chosen
            sub.info.cls = _GeomixGroup
        _plain_help(sub)


_plain_help(app)
