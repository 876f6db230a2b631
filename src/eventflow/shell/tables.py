"""Tables that never cut a value: at any width, in a terminal, a file or a pipe.

rich shrinks columns that do not fit and ends their cells with '…'; a truncated energy is
worse than none. Here every column is either *kept* (ids, numbers, states, times: never
broken) or *text* (free prose: folded onto more lines, never cut). If the kept columns do not
fit the width, the optional ones are left out (and the table says which); if they still do
not fit, each row is printed as its own block of ``field  value`` lines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

# A text column never gets narrower than this when deciding whether the table fits.
TEXT_MIN = 12
UNITS = {"ev": "eV", "ang": "Å", "ang3": "Å³", "kbar": "kbar", "s": "s", "ha": "Ha", "gpa": "GPa"}


@attrs.frozen
class Column:
    header: str
    text: bool = False  # free prose: may fold onto more lines
    optional: bool = False  # may be left out when the table is too wide


def with_unit(name: str) -> str:
    """'total_energy_ev' as 'total energy (eV)': the unit in the header, not in every cell."""
    stem, _, last = name.rpartition("_")
    if stem and last in UNITS:
        return f"{stem.replace('_', ' ')} ({UNITS[last]})"
    return name.replace("_", " ")


def _needed(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> int:
    total = 1  # the left border
    for i, col in enumerate(columns):
        longest = max([len(col.header), *(len(r[i]) for r in rows)])
        total += (min(longest, TEXT_MIN) if col.text else longest) + 3
    return total


def fitted(title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int,
           note_left_out: bool = True) -> Any:
    """A renderable showing every value of ``rows`` in full within ``width`` columns."""
    from rich.table import Table

    keep = list(range(len(columns)))
    dropped: list[str] = []
    for i in reversed(range(len(columns))):
        if _needed([columns[j] for j in keep], [[r[j] for j in keep] for r in rows]) <= width:
            break
        if columns[i].optional:
            keep.remove(i)
            dropped.insert(0, columns[i].header)
    shown = [columns[j] for j in keep]
    cells = [[r[j] for j in keep] for r in rows]
    if _needed(shown, cells) <= width:
        table = Table(title=title)
        for col, j in zip(shown, keep, strict=True):
            longest = max([len(col.header), *(len(r[j]) for r in rows)])
            if col.text:
                table.add_column(col.header, overflow="fold")
            else:
                table.add_column(col.header, no_wrap=True, min_width=longest)
        for row in cells:
            table.add_row(*row)
        if dropped and note_left_out:
            table.caption = f"left out at this width: {', '.join(dropped)}"
        return table
    return blocks(title, columns, rows, width)


def blocks(title: str, columns: Sequence[Column], rows: Sequence[Sequence[str]],
           width: int) -> Any:
    """One small two-column table per row: ``field  value``, values folded, never cut."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = [Text(title, style="italic")]
    name_width = max(len(c.header) for c in columns[1:]) if len(columns) > 1 else 1
    for row in rows:
        block = Table(title=row[0], show_header=False, title_justify="left")
        block.add_column(no_wrap=True, min_width=name_width)
        block.add_column(overflow="fold", max_width=max(10, width - name_width - 7))
        for col, value in zip(columns[1:], row[1:], strict=True):
            block.add_row(col.header, value)
        parts.append(block)
    return Group(*parts)


@contextlib.contextmanager
def live(console: Any, renderable: Any, **kwargs: Any) -> Iterator[Any]:
    """rich's Live, ending with a newline also when the output is a file or a pipe.

    (Without it, the last frame's bottom border and the next line print on one line.)
    """
    from rich.live import Live

    with Live(renderable, console=console, **kwargs) as display:
        yield display
    if not console.is_terminal:
        console.line()
