"""Error types. Only `cli.py` turns these into exit codes and one-line messages."""

from __future__ import annotations

# Exit codes: 1 is what an unexpected crash (or a failed mathematical identity) looks like, so
# user-facing refusals never use it.
EXIT_OK = 0
EXIT_BUG = 1
EXIT_BAD_INPUT = 2  # bad input or option, an output geomix may not replace or cannot write, or
#                     a request larger than this machine's memory
EXIT_PARTIAL = 3  # batch ran, but some rows were invalid (their status says why)
EXIT_REGRESSION = 4  # golden values or verdicts changed
EXIT_UNAVAILABLE = 5  # asked-for backend/device is not installed or not present
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: cleaned up (no partial output), then stopped
EXIT_BROKEN_PIPE = 141  # stdout was closed early (e.g. piped into `head`): 128 + SIGPIPE


class GeomixError(Exception):
    """A refusal the user can act on: printed as one line, never as a traceback."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 row: int | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.key = key
        self.row = row

    def one_line(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.key is not None:
            where.append(f"key '{self.key}'")
        if self.row is not None:
            where.append(f"row {self.row}")
        prefix = ": ".join([", ".join(where)]) + ": " if where else ""
        return (prefix + self.message).replace("\n", " ")


class InputError(GeomixError, ValueError):
    """The input (file, generator spec, array) cannot be used as a pair of distributions.

    A ValueError too, so that Python callers (geomix_cli.api) can catch it as one."""


class OutputError(GeomixError):
    """An output path that geomix may not replace (a user's file or folder, an input) or cannot
    write (permissions, full disk, a name too long): refused before any work where possible, and
    never leaving anything partial behind."""


class UnavailableError(GeomixError):
    """A backend or device that was asked for is not available here."""

    exit_code = EXIT_UNAVAILABLE
