"""Numbers for people (pure): money with its currency, thousands separators, limits in words,
shares of a budget, and times both relative ("3 min ago") and absolute (for the title)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, tzinfo

from gateway.quota.model import INTEGER_KINDS, SPEND_KINDS

NOTHING = "\u2013"  # an en dash: no value

KIND_LABELS = {
    "requests_per_minute": "Requests per minute",
    "concurrent_jobs": "Video jobs at once",
    "video_seconds_per_day": "Video seconds per day",
    "video_seconds_per_month": "Video seconds per month",
    "spend_per_day": "Spend per day",
    "spend_per_month": "Spend per month",
    "tokens_per_minute": "Tokens per minute",
    "tokens_per_day": "Tokens per day",
}
# Shown in this order on every page: money first, then tokens, requests and videos.
KIND_ORDER = (
    "spend_per_day",
    "spend_per_month",
    "tokens_per_minute",
    "tokens_per_day",
    "requests_per_minute",
    "concurrent_jobs",
    "video_seconds_per_day",
    "video_seconds_per_month",
)


def number(value: float | int | None, places: int = 0) -> str:
    """``1234567`` as ``1,234,567``; a fraction keeps up to ``places`` decimals."""
    if value is None:
        return NOTHING
    if places == 0 or float(value).is_integer():
        return f"{round(value):,}"
    text = f"{value:,.{places}f}".rstrip("0").rstrip(".")
    return text


def money(value: float | int | None, currency: str) -> str:
    """Two decimals and the currency code; amounts under a cent keep their digits, so a
    call that cost 0.000183 does not read as free."""
    if value is None:
        return NOTHING
    if value != 0 and abs(value) < 0.01:
        return f"{value:.6f}".rstrip("0") + f" {currency}"
    return f"{value:,.2f} {currency}"


def limit_value(kind: str, value: float | int | None, currency: str) -> str:
    """A limit or an amount of ``kind`` in its unit; None (a limit) is unlimited."""
    if value is None:
        return "unlimited"
    if kind in SPEND_KINDS:
        return money(value, currency)
    if kind in INTEGER_KINDS:
        return number(value)
    return number(value, 3) + " s"


def share(used: float | int | None, limit: float | int | None) -> float | None:
    """Used as a percentage of the limit (0 to any height), or None for unlimited; a limit
    of 0 is fully used."""
    if limit is None or used is None:
        return None
    if limit <= 0:
        return 100.0
    return 100.0 * float(used) / float(limit)


def percent(value: float | None) -> str:
    if value is None:
        return NOTHING
    if 0 < value < 1:
        return "<1 %"
    return f"{math.floor(value):,} %"


def absolute(epoch: float | int | None, tz: tzinfo = UTC) -> str:
    """``2026-12-06 23:46:08 UTC`` (in ``tz``, named by its abbreviation)."""
    if epoch is None:
        return NOTHING
    when = datetime.fromtimestamp(epoch, tz)
    return when.strftime("%Y-%m-%d %H:%M:%S ") + (when.tzname() or "")


def relative(epoch: float | int | None, now: float) -> str:
    """``just now``, ``3 min ago``, ``in 2 h``, ``5 days ago``."""
    if epoch is None:
        return "never"
    delta = now - epoch
    ahead = delta < 0
    s = abs(delta)
    if s < 45:
        return "just now" if not ahead else "in a few seconds"
    for size, unit in ((86_400 * 365, "y"), (86_400, "days"), (3600, "h"), (60, "min")):
        if s >= size or unit == "min":
            n = max(1, round(s / size))
            if unit == "days" and n == 1:
                unit = "day"
            if unit == "days" and n >= 60:
                n, unit = round(s / (86_400 * 30)), "months"
            text = f"{n} {unit}"
            return f"in {text}" if ahead else f"{text} ago"
    raise AssertionError("unreachable")


def duration(seconds: float | int | None) -> str:
    """``42 s``, ``3 min 5 s``, ``2 h 10 min``."""
    if seconds is None:
        return NOTHING
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        m, rest = divmod(s, 60)
        return f"{m} min {rest} s" if rest else f"{m} min"
    h, rest = divmod(s, 3600)
    m = rest // 60
    return f"{h} h {m} min" if m else f"{h} h"
