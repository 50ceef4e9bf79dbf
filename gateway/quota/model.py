"""Quota arithmetic without I/O: limits and their sources, calendar windows, the cost of a job.

Amounts are integers so that Redis and Lua add and subtract them exactly: video seconds are
counted in thousandths (a model weight may be fractional) and spend in millionths of the
configured currency.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

KINDS = (
    "requests_per_minute",
    "concurrent_jobs",
    "video_seconds_per_day",
    "video_seconds_per_month",
    "spend_per_month",
    "tokens_per_minute",
    "tokens_per_day",
    "spend_per_day",
)
INTEGER_KINDS = frozenset(
    {"requests_per_minute", "concurrent_jobs", "tokens_per_minute", "tokens_per_day"}
)
SPEND_KINDS = frozenset({"spend_per_day", "spend_per_month"})
TOKEN_WINDOW_S = 60  # tokens_per_minute: the last 60 whole seconds
SECOND_UNITS = 1000  # stored video seconds per second
SPEND_UNITS = 1_000_000  # stored spend per currency unit
RATE_WINDOW_MS = 60_000
# A bucket outlives its window long enough for a late refund to find it.
DAY_TTL_S = 3 * 86_400
MONTH_TTL_S = 65 * 86_400

Limit = int | float | None  # None: unlimited
# Lua counts in doubles, exact up to 2**53 (about 9e15): a billion currency units in
# millionths still is. Anything larger is unlimited in practice, which null says.
MAX_LIMIT = 10**9


class LimitError(ValueError):
    """A bad limit value; ``key`` names the limit."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def parse_limit(kind: str, value: Any) -> Limit:
    """Validate one limit: a non-negative number (an integer for counts) or null."""
    if kind not in KINDS:
        raise LimitError(kind, "unknown limit")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LimitError(kind, "must be a number or null (unlimited)")
    # isfinite() of an integer past a float's range (10**400) raises, so floats only.
    if (isinstance(value, float) and not math.isfinite(value)) or value < 0:
        raise LimitError(kind, "must be a finite number >= 0")
    if value > MAX_LIMIT:
        raise LimitError(kind, f"must be at most {MAX_LIMIT} (null is unlimited)")
    if kind in INTEGER_KINDS:
        if value != int(value):
            raise LimitError(kind, "must be a whole number")
        return int(value)
    limit = int(value) if value == int(value) else float(value)
    if limit > 0 and stored_limit(kind, limit) == 0:
        # Stored as 0 it would refuse everything: surely not what a positive amount meant.
        raise LimitError(
            kind,
            f"rounds to 0 in steps of {_step(kind)}, which would refuse everything "
            "(write 0 if that is meant)",
        )
    return limit


def parse_limits(raw: Mapping[str, Any]) -> dict[str, Limit]:
    """Validate a mapping of limits; unknown keys are an error, absent keys stay absent."""
    return {str(k): parse_limit(str(k), v) for k, v in raw.items()}


def effective_limits(
    team: str, config: Mapping[str, Mapping[str, Any]], overrides: Mapping[str, Limit]
) -> dict[str, Limit]:
    """Override from the admin API, else the team's config entry, else ``default``, else none."""
    default = config.get("default") or {}
    own = config.get(team) or {}
    out: dict[str, Limit] = {}
    for kind in KINDS:
        if kind in overrides:
            out[kind] = overrides[kind]
        elif kind in own:
            out[kind] = own[kind]
        else:
            out[kind] = default.get(kind)
    return out


def stored_limit(kind: str, value: Limit) -> int:
    """A limit in the units Redis counts in; -1 is unlimited."""
    if value is None:
        return -1
    if kind.startswith("video_seconds"):
        return round(value * SECOND_UNITS)
    if kind in SPEND_KINDS:
        return round(value * SPEND_UNITS)
    return int(value)


def _step(kind: str) -> str:
    """The smallest amount a fractional limit kind counts, as a person writes it."""
    units = SECOND_UNITS if kind.startswith("video_seconds") else SPEND_UNITS
    return f"{1 / units:.{len(str(units)) - 1}f}"


def shown(kind: str, stored: int | float) -> int | float:
    """A counter read from Redis in the unit a person reads (seconds, currency)."""
    if kind.startswith("video_seconds"):
        v = stored / SECOND_UNITS
    elif kind in SPEND_KINDS:
        v = stored / SPEND_UNITS
    else:
        return int(stored)
    return int(v) if v == int(v) else round(v, 6)


@dataclass(frozen=True)
class Windows:
    """The calendar day and month that ``now`` falls in, in the configured time zone."""

    day: str  # 20261201
    month: str  # 202612
    day_reset: float  # epoch seconds of the next day's start
    month_reset: float

    @classmethod
    def at(cls, now: float, tz: ZoneInfo) -> Windows:
        local = datetime.fromtimestamp(now, tz)
        day_start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        # Add a day in wall-clock terms, then re-localise: days are 23 or 25 hours at DST edges.
        next_day = (day_start + timedelta(days=1)).replace(tzinfo=None).replace(tzinfo=tz)
        if local.month == 12:
            next_month = datetime(local.year + 1, 1, 1, tzinfo=tz)
        else:
            next_month = datetime(local.year, local.month + 1, 1, tzinfo=tz)
        return cls(
            day=local.strftime("%Y%m%d"),
            month=local.strftime("%Y%m"),
            day_reset=next_day.timestamp(),
            month_reset=next_month.timestamp(),
        )


@dataclass(frozen=True)
class Cost:
    """What a video job charges: weighted seconds and spend, in stored units."""

    seconds: int  # raw seconds requested
    video_units: int  # weighted seconds x SECOND_UNITS
    spend_units: int  # currency x SPEND_UNITS

    @property
    def video_seconds(self) -> float:
        return self.video_units / SECOND_UNITS

    @property
    def spend(self) -> float:
        return self.spend_units / SPEND_UNITS


def job_cost(
    seconds: int,
    size: str,
    *,
    weight: float = 1.0,
    price_per_second: float = 0.0,
    size_multipliers: Mapping[str, float] | None = None,
) -> Cost:
    multiplier = (size_multipliers or {}).get(size, 1.0)
    return Cost(
        seconds=seconds,
        video_units=round(seconds * weight * SECOND_UNITS),
        spend_units=round(seconds * price_per_second * multiplier * SPEND_UNITS),
    )


def duration_text(seconds: float) -> str:
    """A wait as OpenAI's x-ratelimit-reset-* headers write it: 1s, 6m0s, 2h3m4s."""
    s = max(0, math.ceil(seconds))
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
