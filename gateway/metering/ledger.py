"""The usage ledger's layout and its reports (pure).

Per team and day, one Redis hash: a field per (user, model, tag, measure), an integer amount.
Fields are written by the settle script in the same step as the charge, so the ledger and the
budgets cannot disagree. Reports sum the fields over days and group the rows by any of
team, user, model, tag and day.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, timedelta
from fractions import Fraction
from functools import lru_cache
from typing import Any
from urllib.parse import quote, unquote

from gateway.metering.prices import Usage
from gateway.quota.model import SECOND_UNITS, SPEND_UNITS

GROUPS = ("team", "user", "model", "tag", "day")
MEASURES = (
    "requests",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "images",
    "audio_seconds",
    "video_seconds",
    "spend",
)
# Stored as integers: seconds in thousandths, spend in millionths of the currency.
_SCALE = {"audio_seconds": SECOND_UNITS, "video_seconds": SECOND_UNITS, "spend": SPEND_UNITS}
MAX_DAYS = 400  # the longest range one report reads


def field(user: str, model: str, tag: str, measure: str) -> str:
    return _prefix(user, model, tag) + measure


@lru_cache(maxsize=4096)  # on every settled call: the same few users, models and tags
def _prefix(user: str, model: str, tag: str) -> str:
    return f"{quote(user, safe='')} {quote(model, safe='')} {quote(tag, safe='')} "


def model_of_prefix(prefix: str) -> str:
    """The model of a ``field(user, model, tag, "")`` prefix."""
    parts = prefix.split(" ")
    return unquote(parts[1]) if len(parts) > 1 else "-"


def entries(
    user: str, model: str, tag: str, usage: Usage, spend_units: int, *, video_units: int = 0
) -> dict[str, int]:
    """The ledger increments of one settled call."""
    amounts = {
        "requests": usage.requests,
        "input_tokens": usage.input_tokens,
        "cached_tokens": usage.cached_tokens,
        "output_tokens": usage.output_tokens,
        "images": usage.images,
        "audio_seconds": round(usage.audio_seconds * SECOND_UNITS) if usage.audio_seconds else 0,
        "video_seconds": video_units,
        "spend": spend_units,
    }
    prefix = _prefix(user, model, tag)
    return {prefix + m: v for m, v in amounts.items() if v}


def days(first: date, last: date) -> list[date]:
    n = (last - first).days + 1
    return [first + timedelta(days=i) for i in range(n)]


def day_id(d: date) -> str:
    return d.strftime("%Y%m%d")


def rows(
    ledgers: Iterable[tuple[str, date, Mapping[str, int]]], group_by: Sequence[str]
) -> list[dict[str, Any]]:
    """Sum (team, day, ledger hash) triples into rows keyed by ``group_by``, in key order."""
    sums: dict[tuple[str, ...], dict[str, int]] = {}
    for team, day, ledger in ledgers:
        for name, amount in ledger.items():
            parts = name.split(" ")
            if len(parts) != 4 or parts[3] not in MEASURES:
                continue  # not a field this version writes
            user, model, tag = (unquote(p) for p in parts[:3])
            values = {"team": team, "user": user, "model": model, "tag": tag, "day": str(day)}
            key = tuple(values[g] for g in group_by)
            total = sums.setdefault(key, dict.fromkeys(MEASURES, 0))
            total[parts[3]] += amount
    out = []
    for key in sorted(sums):
        row: dict[str, Any] = dict(zip(group_by, key, strict=True))
        for m in MEASURES:
            row[m] = _shown(m, sums[key][m])
        out.append(row)
    return out


def _shown(measure: str, amount: int) -> int | float:
    scale = _SCALE.get(measure)
    if scale is None:
        return amount
    v = Fraction(amount, scale)
    return int(v) if v.denominator == 1 else float(v)


def to_csv(table: Sequence[Mapping[str, Any]], group_by: Sequence[str]) -> str:
    buf = io.StringIO()
    # CRLF, as RFC 4180 has it: then a name holding a CR is quoted like one holding a LF (with
    # "\n" alone a bare CR was written unquoted, and a reader took it for the end of a row).
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow([*group_by, *MEASURES])
    for row in table:
        writer.writerow([_csv_cell(row[c]) for c in (*group_by, *MEASURES)])
    return buf.getvalue()


def _csv_cell(value: Any) -> str:
    # Amounts in millionths at most: 0.000021, never 2.1e-05, which a spreadsheet may misread.
    text = f"{value:.6f}".rstrip("0") if isinstance(value, float) else str(value)
    # A spreadsheet runs a cell that starts like a formula; a user or tag name must not.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
