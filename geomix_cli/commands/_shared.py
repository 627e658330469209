"""Options and helpers shared by commands: reading a source of pairs, and the output rules.

Output rules (one for every command; see `geomix_cli.io.outputs`):
- `report_dir(out, command=..., sources=...)`: a report folder `--out` is checked (and an
  interrupted earlier write recovered) before any work; it may replace only an earlier geomix
  report or an empty folder, never a user's folder, a file, or a folder holding an input.
- `output_file(path, sources=..., force=...)`: a file output replaces an existing file only with
  `--force`, and never an input, a folder or a non-regular file.
"""

from __future__ import annotations

from typing import Optional

import typer

from geomix_cli.core.validation import LOGITS, PROBS
from geomix_cli.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_PARTIAL, InputError

RowsOption = typer.Option(None, "--rows", "--row", "-r",
                          help="Rows to use: 3, 0:8 or 0,2,5:7 (positions, end exclusive).")
RenormalizeOption = typer.Option(False, "--renormalize",
                                 help="Rescale probability rows whose sum is off from 1.")
LogitsOption = typer.Option(False, "--logits",
                            help="Read the arrays as logits / log-probabilities whatever their keys.")
ProbsOption = typer.Option(False, "--probs", help="Read the arrays as probabilities.")
JsonOption = typer.Option(False, "--json", help="Print one JSON object to stdout.")
ForceOption = typer.Option(False, "--force",
                           help="Replace an output file that already exists (never an input of "
                                "the command, a folder or a non-regular file).")

REPLACE_HELP = ("It may be a new path, an empty folder or an earlier geomix report (a folder with "
                "a .geomix-report marker, holding only the files it lists); anything else (a "
                "folder of yours, a file, a folder holding the input) is refused before any "
                "work.")
FILE_HELP = "An existing file is replaced only with --force, and never an input."


def report_option(what: str, default: Optional[str] = None):
    """--out/-o for a report folder, with the replacement rule in its help."""
    return typer.Option(default, "--out", "-o", help=f"{what} {REPLACE_HELP}")


def forced_kind(logits: bool, probs: bool) -> Optional[str]:
    if logits and probs:
        raise InputError("--logits and --probs exclude each other")
    return LOGITS if logits else PROBS if probs else None


def check_seed(seed: int, option: str = "--seed") -> int:
    """Seeds are whole numbers from 0 to 2**63 - 1 (numpy's generators refuse negative seeds)."""
    from geomix_cli.cases import MAX_SEED

    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"{option} {seed} must be a whole number from 0 to 2**63 - 1")
    return seed


def input_paths(*sources) -> list[str]:
    """The file paths among sources (generator specs and None are not files)."""
    return [s for s in sources if s is not None and not str(s).startswith("gen:")]


def report_dir(out, *, command: str, sources=()):
    """Check a report folder before any work (one line, exit 2, if it may not be replaced);
    restore a report that an interrupted run left aside. None stays None."""
    if out is None:
        return None
    from geomix_cli.cli import warning_line
    from geomix_cli.io import prepare_report_dir

    prepare_report_dir(out, command=command, inputs=input_paths(*sources), notify=warning_line)
    return out


def output_file(path, *, sources=(), force: bool = False, option: str = "--out"):
    """Check a file output before any work (one line, exit 2, if it may not be replaced)."""
    from geomix_cli.io import check_output_file

    check_output_file(path, inputs=input_paths(*sources), force=force, option=option)
    return path


def load(source: str, *, rows: Optional[str] = None, renormalize: bool = False,
         logits: bool = False, probs: bool = False):
    """Load a source the way every command does, printing a warning per invalid row."""
    from geomix_cli.cli import warning_line
    from geomix_cli.sources import load_source

    pairs = load_source(source, kind=forced_kind(logits, probs), renormalize=renormalize,
                        rows=rows)
    # Nothing usable is a plain refusal: exactly one line, no per-row warnings before it.
    refuse_if_nothing_usable(pairs, source)
    for label, err in zip(pairs.row_labels, pairs.row_errors):
        if err is not None:
            warning_line(f"{source}: row {int(label)}: {err} (row skipped, status 'invalid')")
    return pairs


def exit_code_for(pairs) -> int:
    """0 when every row could be computed on; 3 when some rows were invalid (the rest were
    reported); 2 when none was usable."""
    bad = sum(e is not None for e in pairs.row_errors)
    if bad == 0:
        return EXIT_OK
    return EXIT_BAD_INPUT if bad == pairs.n_rows else EXIT_PARTIAL


def refuse_if_nothing_usable(pairs, source: str) -> None:
    """A single-row source (or a batch) with no usable row is a plain refusal: one line, exit 2."""
    if all(e is not None for e in pairs.row_errors):
        first = next(i for i, e in enumerate(pairs.row_errors) if e is not None)
        raise InputError(pairs.row_errors[first], file=source, row=int(pairs.row_labels[first]))
