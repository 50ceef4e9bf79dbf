"""Aligned plain-text tables for the admin CLI (terminals, logs, pipes).

Every value in them comes from the gateway, and much of it from callers: team names, user
subjects, tags, model names. ``shown`` writes each as one line of inert text, so that a
subject carrying an escape sequence cannot recolour, clear or rewrite an operator's
terminal, and one carrying a line break cannot forge a row."""

from __future__ import annotations

import csv
import io
from collections.abc import Collection, Sequence


def shown(text: str) -> str:
    """``text`` with everything a terminal would act on or that would break the line
    (control characters, line breaks, bidirectional overrides, zero-width and unassigned
    characters) written as its Python escape, and backslashes doubled so that no escape is
    ambiguous; printable text, any script's, is left as it is."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c != "\\" else repr(c)[1:-1] for c in text)


def shown_csv(text: str) -> str:
    """A CSV document with every field ``shown``: one line per row, whatever a field holds
    (a line break inside a quoted field would otherwise start a line that looks like a row)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in csv.reader(io.StringIO(text, newline="")):
        writer.writerow([shown(field) for field in row])
    return out.getvalue()


def render(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Collection[int] = ()
) -> str:
    """Columns as wide as their widest cell, two spaces apart; ``right``-aligned by index.

    Trailing spaces are stripped so that output pasted into a ticket or diffed stays clean."""
    headers = [shown(h) for h in headers]
    rows = [[shown(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def number(value: object, *, none: str = "unlimited") -> str:
    """A limit or count as a person reads it: 12, 1.5, unlimited."""
    if value is None:
        return none
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, float):  # 0.000021, never 2.1e-05: amounts are read, not parsed
        return f"{value:.6f}".rstrip("0")
    return str(value)
