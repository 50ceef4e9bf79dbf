"""A small stacked bar chart of usage by day, as geometry for an inline SVG (pure).

The template draws what this computes: one bar per day, stacked by model (the largest few
models get their own colour, the rest share one), a scale with a round top value, and a
title on every piece for the exact numbers. No JavaScript and no inline style is needed, so
the page's Content-Security-Policy stays strict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

WIDTH, HEIGHT = 600, 160  # the viewBox; the SVG scales to its container
LEFT, BOTTOM, TOP = 56, 18, 8  # room for the scale and the day labels
MAX_SERIES = 5  # models with a colour of their own; the rest are "other models"


@dataclass(frozen=True)
class Piece:
    x: float
    y: float
    width: float
    height: float
    series: int  # colour index; MAX_SERIES means "other models"
    title: str


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class Chart:
    pieces: tuple[Piece, ...]
    ticks: tuple[Tick, ...]
    labels: tuple[tuple[float, str], ...]  # x and text under some bars
    legend: tuple[tuple[int, str], ...]  # series index and model name
    empty: bool
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    base: float = HEIGHT - BOTTOM


def nice_top(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10 * power


def stacked_by_day(
    rows: Iterable[Mapping[str, object]],
    days: Sequence[date],
    *,
    measure: str,
    show: Callable[[float], str],
    scale: Callable[[float], str] | None = None,
) -> Chart:
    """``rows`` are ledger rows grouped by day and model (``day`` as YYYY-MM-DD); ``show``
    formats an amount for titles, ``scale`` (default: ``show``) for the axis."""
    scale = scale or show
    by_day: dict[str, dict[str, float]] = {}
    totals: dict[str, float] = {}
    for row in rows:
        raw = row.get(measure)
        amount = float(raw) if isinstance(raw, int | float) else 0.0
        if amount <= 0:
            continue
        day, model = str(row.get("day")), str(row.get("model"))
        by_day.setdefault(day, {})[model] = by_day.get(day, {}).get(model, 0.0) + amount
        totals[model] = totals.get(model, 0.0) + amount
    ranked = sorted(totals, key=lambda m: (-totals[m], m))
    series = {m: i for i, m in enumerate(ranked[:MAX_SERIES])}
    legend = [(i, m) for m, i in series.items()]
    if len(ranked) > MAX_SERIES:
        legend.append((MAX_SERIES, "other models"))
    peak = max((sum(v.values()) for v in by_day.values()), default=0.0)
    top = nice_top(peak)
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - TOP
    n = max(1, len(days))
    slot = plot_w / n
    bar_w = max(1.0, slot * 0.75)
    pieces: list[Piece] = []
    labels: list[tuple[float, str]] = []
    every = max(1, math.ceil(n / 8))  # at most about eight day labels
    for i, d in enumerate(days):
        x = LEFT + i * slot + (slot - bar_w) / 2
        if i % every == 0:
            labels.append((x + bar_w / 2, d.strftime("%b %-d")))
        amounts = by_day.get(d.isoformat(), {})
        stack: dict[int, tuple[float, list[str]]] = {}
        for model, amount in amounts.items():
            idx = series.get(model, MAX_SERIES)
            total, names = stack.get(idx, (0.0, []))
            stack[idx] = (total + amount, [*names, model])
        y = float(HEIGHT - BOTTOM)
        for idx in sorted(stack):
            amount, names = stack[idx]
            h = plot_h * amount / top
            y -= h
            label = names[0] if idx < MAX_SERIES else f"{len(names)} other models"
            pieces.append(Piece(x, y, bar_w, h, idx, f"{d.isoformat()} {label}: {show(amount)}"))
    ticks = tuple(Tick(HEIGHT - BOTTOM - plot_h * f, scale(top * f)) for f in (0.0, 0.5, 1.0))
    return Chart(tuple(pieces), ticks, tuple(labels), tuple(legend), empty=not pieces)
