"""Options and helpers shared by commands that read a source of pairs."""

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


def forced_kind(logits: bool, probs: bool) -> Optional[str]:
    if logits and probs:
        raise InputError("--logits and --probs exclude each other")
    return LOGITS if logits else PROBS if probs else None


def load(source: str, *, rows: Optional[str] = None, renormalize: bool = False,
         logits: bool = False, probs: bool = False):
    """Load a source the way every command does, printing a warning per invalid row."""
    from geomix_cli.cli import warning_line
    from geomix_cli.io import load_source

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
