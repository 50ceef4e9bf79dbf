"""Aligned plain-text tables for the admin CLI (ASCII only: terminals, logs, pipes)."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def render(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: Collection[int] = ()
) -> str:
    """Columns as wide as their widest cell, two spaces apart; ``right``-aligned by index.

    Trailing spaces are stripped so that output pasted into a ticket or diffed stays clean."""
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
