"""Usage reports from the ledger: who spent what on which model, on which day.

``GET /v1/gateway/usage`` (the caller's own team) and ``GET /admin/v1/usage`` (any team, or
one with ``team=``) share this: the query is checked here (every bad parameter a 400 naming
it), the ledger hashes of the days asked for are read in one pipeline per team, and the rows
are summed by ``group_by``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from gateway.errors import InvalidRequest
from gateway.metering import ledger
from gateway.metering.store import MeterStore
from gateway.store.keys import TeamKeys

FORMATS = ("json", "csv")


@dataclass(frozen=True)
class UsageQuery:
    first: date
    last: date
    group_by: tuple[str, ...]
    format: str
    team: str | None = None  # admin only: one team


def _date(params: Mapping[str, str], name: str, default: date) -> date:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        return date.fromisoformat(raw) if len(raw) == 10 else _bad_date(name)
    except ValueError:
        return _bad_date(name)


def _bad_date(name: str) -> date:
    raise InvalidRequest(
        f"'{name}' must be a date as YYYY-MM-DD.", code="invalid_value", param=name
    )


def parse_query(
    params: Mapping[str, str],
    *,
    today: date,
    default_group: tuple[str, ...],
    allow_team: bool,
    team_ok: Callable[[str], bool] = lambda t: True,
) -> UsageQuery:
    """The report asked for; defaults: this month so far, grouped by ``default_group``."""
    known = {"from", "to", "group_by", "format", *(("team",) if allow_team else ())}
    for key in params:
        if key not in known:
            raise InvalidRequest(
                f"Unknown parameter {key!r}; the parameters are {', '.join(sorted(known))}.",
                code="unknown_parameter",
                param=key,
            )
    first = _date(params, "from", today.replace(day=1))
    last = _date(params, "to", today)
    if last < first:
        raise InvalidRequest("'to' is before 'from'.", code="invalid_value", param="to")
    if (last - first).days + 1 > ledger.MAX_DAYS:
        raise InvalidRequest(
            f"A report covers at most {ledger.MAX_DAYS} days.", code="invalid_value", param="to"
        )
    raw_group = params.get("group_by")
    group = default_group if raw_group is None else tuple(g for g in raw_group.split(",") if g)
    bad = [g for g in group if g not in ledger.GROUPS]
    if bad or len(set(group)) != len(group):
        raise InvalidRequest(
            f"group_by is a comma-separated list of {', '.join(ledger.GROUPS)}, each once.",
            code="invalid_value",
            param="group_by",
        )
    fmt = params.get("format", "json")
    if fmt not in FORMATS:
        raise InvalidRequest("format is json or csv.", code="invalid_value", param="format")
    team = params.get("team") if allow_team else None
    if team is not None and not team_ok(team):
        raise InvalidRequest("'team' is not a team name.", code="invalid_value", param="team")
    return UsageQuery(first, last, group, fmt, team)


class UsageReport:
    def __init__(
        self,
        store: MeterStore,
        *,
        tz: ZoneInfo,
        currency: str,
        clock: Callable[[], float],
        configured_teams: Iterable[str] = (),
    ) -> None:
        self.store = store
        self.tz = tz
        self.currency = currency
        self.clock = clock
        self.configured = frozenset(t for t in configured_teams if t != "default")

    def today(self) -> date:
        return datetime.fromtimestamp(self.clock(), self.tz).date()

    async def teams(self) -> list[str]:
        return sorted(self.configured | set(await self.store.teams()))

    async def _ledgers(
        self, teams: Iterable[str], q: UsageQuery
    ) -> list[tuple[str, date, Mapping[str, int]]]:
        days = ledger.days(q.first, q.last)
        ids = [ledger.day_id(d) for d in days]
        found: list[tuple[str, date, Mapping[str, int]]] = []
        for team in teams:
            hashes = await self.store.ledger_days(TeamKeys(team), ids)
            found += [(team, d, h) for d, h in zip(days, hashes, strict=True) if h]
        return found

    async def document(self, teams: Iterable[str], q: UsageQuery) -> dict[str, Any]:
        found = await self._ledgers(teams, q)
        total = ledger.rows(found, ())
        return {
            "object": "gateway.usage",
            "from": q.first.isoformat(),
            "to": q.last.isoformat(),
            "group_by": list(q.group_by),
            "currency": self.currency,
            "data": ledger.rows(found, q.group_by),
            "total": total[0] if total else dict.fromkeys(ledger.MEASURES, 0),
        }

    async def csv(self, teams: Iterable[str], q: UsageQuery) -> str:
        return ledger.to_csv(ledger.rows(await self._ledgers(teams, q), q.group_by), q.group_by)
