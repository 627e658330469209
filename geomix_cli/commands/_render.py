"""The human view of a batch, shared by `solve`, `check` and `compare-alpha`: a one-screen
summary first, then the rows.

- Columns adapt to the terminal: when the full table is wider than the console (80 columns, say)
  and `--wide` was not given, the compact column set is printed instead.
- Large batches show their first and last rows only (`--all` prints every row). Up to
  RICH_MAX_ROWS rows are drawn as a rich table; more are written as plain aligned text, which
  stays fast at a million rows (a rich table costs ~1 ms per row).
- Numbers are formatted one way everywhere: alpha-like values (in [0, 1]) with 6 decimals,
  other quantities with 4 significant digits, counts with thousands separators. `--json` gives
  full precision.

Nothing here computes anything about the derivation: the cells come from the commands' results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

HEAD_ROWS = 10          # rows shown at each end of a large batch
FULL_VIEW_MAX = 25      # batches up to this many rows are shown whole
RICH_MAX_ROWS = 200     # more rows than this are written as plain text
SUMMARY_QUANTILES = ((0.0, "min"), (0.05, "5%"), (0.5, "median"), (0.95, "95%"), (1.0, "max"))
DASH = "—"


# ----------------------------------------------------------------------------------------------
# number formats


def fmt_alpha(value) -> str:
    """A value in [0, 1] such as alpha: 6 decimals."""
    if value is None or not math.isfinite(value):
        return DASH
    return f"{float(value):.6f}"


def fmt_num(value, digits: int = 4) -> str:
    """Any other quantity: `digits` significant digits, trailing zeros kept (0.7640, not 0.764,
    so that a column reads at one precision)."""
    if value is None or not math.isfinite(value):
        return DASH
    text = f"{float(value):#.{digits}g}"
    return text[:-1] if text.endswith(".") else text


def fmt_count(value) -> str:
    return f"{int(value):,}"


def fmt_pct(fraction) -> str:
    if fraction is None or not np.isfinite(fraction):
        return DASH
    return f"{100.0 * float(fraction):.1f}%"


# ----------------------------------------------------------------------------------------------
# layout


@dataclass
class Column:
    """One column of a rows table: `cell(i)` gives the text of row i; `compact` columns are the
    ones kept when the table has to fit a narrow terminal."""

    header: str
    cell: Callable[[int], str]
    justify: str = "right"
    compact: bool = True
    cells: Optional[Callable[[Sequence[int]], list]] = None  # many rows at once (fast path)

    def texts(self, indices: Sequence[int]) -> list:
        return self.cells(indices) if self.cells is not None else [self.cell(i) for i in indices]


def array_column(header: str, values, fmt: Callable = None, *, compact: bool = True) -> Column:
    """A column of numbers from an array, formatted by `fmt` (default fmt_num); many rows are
    converted in one go (array[indices].tolist()), which --all needs at a million rows."""
    fmt = fmt or fmt_num
    arr = np.asarray(values)
    return Column(header, lambda i: fmt(arr[i].item()), compact=compact,
                  cells=lambda idx: [fmt(v) for v in arr[np.asarray(idx, dtype=np.intp)].tolist()])


def shown_rows(n_rows: int, all_rows: bool) -> tuple[list[int], int]:
    """(the row indices to show, how many are left out): everything for small batches or with
    --all, else the first and last HEAD_ROWS."""
    if all_rows or n_rows <= FULL_VIEW_MAX:
        return list(range(n_rows)), 0
    return list(range(HEAD_ROWS)) + list(range(n_rows - HEAD_ROWS, n_rows)), n_rows - 2 * HEAD_ROWS


def _rich_table(title: Optional[str], columns: Sequence[Column], indices: Sequence[int],
                left_out: int):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title) if title else None, title_justify="left")
    for col in columns:
        if col.justify == "right":  # numbers are never cut ('0.…'): text columns wrap instead
            widest = max([_cells(col.header)] + [_cells(col.cell(i)) for i in indices])
            table.add_column(escape(col.header), justify="right", no_wrap=True,
                             min_width=widest)
        else:
            table.add_column(escape(col.header), justify=col.justify, overflow="fold")
    for k, i in enumerate(indices):
        if left_out and k == HEAD_ROWS:
            table.add_row(*(["⋮"] * len(columns)))
        table.add_row(*(escape(col.cell(i)) for col in columns))
    return table


def _cells(text: str) -> int:
    """Terminal cells of the widest line of a (possibly multi-line) cell."""
    from rich.cells import cell_len

    return max(cell_len(line) for line in str(text).split("\n"))


def table_width(columns: Sequence[Column], indices: Sequence[int]) -> int:
    """Terminal cells a boxed table of these columns and rows needs (one space of padding on
    each side of a cell, one rule between cells and at both edges)."""
    widths = [max([_cells(col.header)] + [_cells(col.cell(i)) for i in indices])
              for col in columns]
    return sum(widths) + 3 * len(widths) + 1


def choose_columns(columns: Sequence[Column], indices: Sequence[int], *,
                   wide: bool) -> list[Column]:
    """All columns when they fit the console (or with --wide), else the compact ones."""
    from geomix_cli.cli import stdout

    if wide or all(c.compact for c in columns):
        return list(columns)
    sample = list(indices[:HEAD_ROWS]) + list(indices[-HEAD_ROWS:])
    if table_width(columns, sample) <= stdout.width:
        return list(columns)
    return [c for c in columns if c.compact]


def print_rows(columns: Sequence[Column], n_rows: int, *, title: Optional[str] = None,
               wide: bool = False, all_rows: bool = False, note_hidden: bool = True) -> list[int]:
    """Print the rows table (see the module doc); returns the indices shown. note_hidden: say
    which columns were left out to fit (once, when several tables are printed)."""
    from geomix_cli.cli import stdout

    if n_rows == 1 and not all_rows:
        print_vertical(columns, 0, title=title)
        return [0]
    indices, left_out = shown_rows(n_rows, all_rows)
    cols = choose_columns(columns, indices, wide=wide)
    if len(indices) <= RICH_MAX_ROWS:
        # never squeezed below its natural width (that turns numbers into '0.…'): with --wide a
        # table wider than the terminal is printed whole
        table = _rich_table(title, cols, indices, left_out)
        needed = table_width(cols, indices)
        if wide and needed > stdout.width:  # --wide: the whole table, wider than the terminal
            table.width = needed
        stdout.print(table, crop=False)
    else:
        _plain_rows(title, cols, indices)
    if left_out:
        stdout.print(f"{fmt_count(left_out)} rows not shown (positions {HEAD_ROWS}.."
                     f"{n_rows - HEAD_ROWS - 1}): --all prints every row, --json every number",
                     highlight=False, markup=False, soft_wrap=False)
    if len(cols) < len(columns) and note_hidden:
        hidden = ", ".join(c.header for c in columns if c not in cols)
        stdout.print(f"columns left out to fit {stdout.width} columns (--wide shows them): {hidden}",
                     highlight=False, markup=False, soft_wrap=False)
    return indices


def print_vertical(columns: Sequence[Column], index: int, *, title: Optional[str] = None) -> None:
    """One row as 'field  value' lines: every field, readable at any width."""
    from rich.markup import escape
    from rich.table import Table

    from geomix_cli.cli import stdout

    grid = Table(box=None, padding=(0, 2), show_header=False, title=escape(title) if title else None,
                 title_justify="left", title_style="bold")
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for col in columns:
        grid.add_row(escape(col.header), escape(col.cell(index)))
    stdout.print(grid)


def _plain_rows(title: Optional[str], columns: Sequence[Column], indices: Sequence[int]) -> None:
    """Aligned plain-text rows, written straight to the output stream in blocks."""
    from geomix_cli.cli import stdout

    out = stdout.file
    cells = list(zip(*(col.texts(indices) for col in columns)))
    widths = [max(len(col.header), *(len(row[j]) for row in cells)) if cells else len(col.header)
              for j, col in enumerate(columns)]

    def line(values) -> str:
        parts = [v.rjust(w) if col.justify == "right" else v.ljust(w)
                 for v, w, col in zip(values, widths, columns)]
        return "  ".join(parts).rstrip()

    if title:
        out.write(title + "\n")
    out.write(line([c.header for c in columns]) + "\n")
    block = 20_000
    for start in range(0, len(cells), block):
        out.write("\n".join(line(row) for row in cells[start:start + block]) + "\n")
    out.flush()


# ----------------------------------------------------------------------------------------------
# summaries


def quantiles(values) -> list[float]:
    """SUMMARY_QUANTILES of the finite values (NaN when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return [float("nan")] * len(SUMMARY_QUANTILES)
    return [float(x) for x in np.quantile(v, [q for q, _ in SUMMARY_QUANTILES])]


def status_line(statuses) -> str:
    """'ok 99,812 (99.8%) · no-root 150 · invalid 8', most frequent first."""
    values, counts = np.unique(np.asarray(statuses, dtype=str), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    total = int(counts.sum())
    parts = []
    for j in order:
        share = f" ({fmt_pct(counts[j] / total)})" if len(values) > 1 else ""
        parts.append(f"{values[j]} {fmt_count(counts[j])}{share}")
    return " · ".join(parts)


def print_summary(title: str, facts: Sequence[tuple[str, str]],
                  quantile_rows: Sequence[tuple[str, Sequence[float], Callable]] = (),
                  quantile_note: str = "") -> None:
    """A one-screen summary: a title, `facts` (label, text) lines, then a small table of
    quantiles (label, values from `quantiles`, formatter)."""
    from rich.markup import escape
    from rich.table import Table

    from geomix_cli.cli import stdout

    stdout.print(f"[bold]{escape(title)}[/bold]", highlight=False)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, text in facts:
        grid.add_row(escape(label), escape(text))
    stdout.print(grid)
    if quantile_rows:
        table = Table(box=None, padding=(0, 1), title=quantile_note or None, title_justify="left",
                      title_style="", show_edge=False)
        table.add_column("", style="bold", no_wrap=True)
        for _, name in SUMMARY_QUANTILES:
            table.add_column(name, justify="right")
        for label, values, fmt in quantile_rows:
            table.add_row(escape(label), *(fmt(v) for v in values))
        stdout.print(table)
    stdout.print("")


def ess_balance_fact(ess_theta, ess_target, labels) -> Optional[str]:
    """'within 10% for 87.3% of 1,200 rows; median max/min 1.04; worst 1499 (row 17)' over the
    rows where both ESS are positive (None when there are none); 10%: the derivation's band
    (`core.principles.ESS_BAND`)."""
    from geomix_cli.core.principles import ESS_BAND as band

    a = np.asarray(ess_theta, dtype=np.float64)
    b = np.asarray(ess_target, dtype=np.float64)
    use = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
    if not use.any():
        return None
    ratio = np.maximum(a[use], b[use]) / np.minimum(a[use], b[use])
    worst = int(np.argmax(ratio))
    worst_label = np.asarray(labels)[use][worst]
    return (f"ESS_θ and ESS_t within {band:.0%} (max/min ≤ {1 + band:g}) for "
            f"{fmt_pct(np.mean(ratio <= 1 + band))} of {fmt_count(use.sum())} rows; median "
            f"max/min {fmt_num(np.median(ratio), 3)}, worst {fmt_num(ratio[worst], 3)} "
            f"(row {int(worst_label)})")


def print_messages(indices: Sequence[int], labels, statuses, messages) -> None:
    """One line per shown row that has a message (rows without alpha* say why)."""
    from geomix_cli.cli import stdout

    for i in indices:
        if messages[i]:
            stdout.print(f"row {int(labels[i])} [{statuses[i]}]: {messages[i]}", highlight=False,
                         markup=False)


def _options():
    import typer

    wide = typer.Option(False, "--wide", help="Every column, however wide the terminal.")
    every = typer.Option(False, "--all", help="Every row (a large batch shows its first and "
                         f"last {HEAD_ROWS} rows after the summary).")
    return wide, every


WideOption, AllOption = _options()
