"""The audit log of admin changes: capped Redis streams, newest last.

Gateway admins' changes go to one shared stream, ``gw:audit``. A team's own key management
(a create, rotate or revoke by someone who is not a gateway admin) goes to that team's stream,
``gw:{team:<t>}:audit``, capped on its own: a team admin rotating a key in a loop pushes out
only its own team's older entries, never an admin's. ``page`` reads them all as one log,
filtered and paged by a cursor (``audit_query``), so entries older than a team's churn are
still found.

An entry records who (the admin's team and user from the verified token, never the token),
when, what was done to what, and the state before and after as JSON. Entries are built only
from values the admin service chose to record, so no secret can reach the stream.
"""

from __future__ import annotations

import heapq
import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from redis.asyncio import Redis

from gateway.admin.audit_query import AuditFilter
from gateway.auth.principal import Principal
from gateway.store.keys import AUDIT_STREAM, AUDIT_TEAMS, TeamKeys

AUDIT_MAXLEN = 10_000  # approximate: Redis trims whole macro-nodes, which is much cheaper
TEAM_AUDIT_MAXLEN = 1_000  # per team: many teams may have one, so each is kept smaller
READ_PAGE = 100  # entries read from one stream at a time when the streams are merged
# Entries one page may read to find its matches: the shared stream's cap and then some. A
# filter that matches little answers a short page and a cursor to go on from, never a long wait.
SCAN_MAX = 20_000
EVERYTHING = AuditFilter()

Row = tuple[str, dict[str, str]]


def iso_time(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def entry_fields(
    actor: Principal, action: str, target: str, before: Any, after: Any, now: float
) -> dict[str, str]:
    """The stream fields of one entry (flat strings: streams hold no nested values)."""
    return {
        "time": iso_time(now),
        "team": actor.team,
        "user": actor.user,
        "action": action,
        "target": target,
        "before": json.dumps(before, sort_keys=True, separators=(",", ":")),
        "after": json.dumps(after, sort_keys=True, separators=(",", ":")),
    }


def parse_entry(entry_id: str, fields: Mapping[str, str]) -> dict[str, Any]:
    """One stream entry as the API shows it; a field that is not JSON is shown as text."""

    def loads(text: str | None) -> Any:
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return text

    return {
        "id": entry_id,
        "object": "admin.audit_entry",
        "time": fields.get("time"),
        "actor": {"team": fields.get("team"), "user": fields.get("user")},
        "action": fields.get("action"),
        "target": fields.get("target"),
        "before": loads(fields.get("before")),
        "after": loads(fields.get("after")),
    }


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class AuditLog:
    def __init__(
        self,
        redis: Redis,
        *,
        clock: Callable[[], float],
        stream: str = AUDIT_STREAM,
        maxlen: int = AUDIT_MAXLEN,
        team_maxlen: int = TEAM_AUDIT_MAXLEN,
        teams: str = AUDIT_TEAMS,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self.stream = stream
        self._maxlen = maxlen
        self._team_maxlen = team_maxlen
        self._teams = teams

    async def record(
        self,
        actor: Principal,
        action: str,
        target: str,
        *,
        before: Any,
        after: Any,
        team: str | None = None,
    ) -> dict[str, Any]:
        """Append one entry: to the shared stream, or with ``team`` to that team's own stream
        (raises RedisError; the caller decides what that means)."""
        fields = entry_fields(actor, action, target, before, after, self._clock())
        stream, maxlen = self.stream, self._maxlen
        if team is not None:
            stream, maxlen = TeamKeys(team).audit, self._team_maxlen
            # Listed before written, so a reader never misses a stream that has entries.
            await self._redis.sadd(self._teams, team)
        entry_id = await self._redis.xadd(
            stream,
            cast(dict[Any, Any], fields),  # redis-py's stubs want loose key types
            maxlen=maxlen,
            approximate=True,
        )
        return parse_entry(_text(entry_id), fields)

    async def page(
        self, limit: int, *, before: str | None = None, keep: AuditFilter = EVERYTHING
    ) -> AuditPage:
        """The newest ``limit`` entries that ``keep`` matches, older than the entry id
        ``before``, of the shared stream and every team's together, newest first. Filtered
        while reading, so a team's own churn never hides an older entry from a filter; a page
        stops after ``SCAN_MAX`` entries read, saying where to go on."""
        teams = sorted(_text(t) for t in await self._redis.smembers(self._teams))
        streams = [self.stream, *(TeamKeys(t).audit for t in teams)]
        out: list[dict[str, Any]] = []
        scanned, last = 0, None
        async for entry_id, fields in _merged(self._redis, streams, before):
            # Stop only between ids: two streams may hold one id, and a cursor below it
            # would skip the rest of them.
            if entry_id != last and last is not None:
                if _past(out, limit):
                    break
                if scanned >= SCAN_MAX:
                    return AuditPage(out, more=True, next_before=last)
            scanned, last = scanned + 1, entry_id
            entry = parse_entry(entry_id, fields)
            if keep.matches(entry):
                out.append(entry)
        if not _past(out, limit):
            return AuditPage(out, more=False, next_before=None)
        cut = limit  # and every entry sharing the page's last id
        while out[cut]["id"] == out[cut - 1]["id"]:
            cut += 1
        return AuditPage(out[:cut], more=True, next_before=out[cut - 1]["id"])


def _past(out: list[dict[str, Any]], limit: int) -> bool:
    """Whether ``out`` holds a match older than a page of ``limit`` (and its last id)."""
    return len(out) > limit and out[-1]["id"] != out[limit - 1]["id"]


@dataclass(frozen=True)
class AuditPage:
    entries: list[dict[str, Any]]
    more: bool  # older entries (matching, or not yet read) exist
    next_before: str | None  # the cursor for the next page


async def _merged(redis: Redis, streams: list[str], before: str | None) -> AsyncIterator[Row]:
    """Every entry of ``streams`` older than ``before``, merged by id (ids are times), newest
    first. Each stream is read a page at a time, so a team with a long but old history costs
    one short read."""

    async def read(stream: str, below: str | None) -> deque[Row]:
        rows = cast(
            list[tuple[Any, dict[Any, Any]]],
            await redis.xrevrange(
                stream, max="+" if below is None else f"({below}", count=READ_PAGE
            ),
        )
        return deque(
            (_text(eid), {_text(k): _text(v) for k, v in raw.items()}) for eid, raw in rows
        )

    pending = [await read(s, before) for s in streams]
    heap = [(_newest_first(rows[0][0]), i) for i, rows in enumerate(pending) if rows]
    heapq.heapify(heap)
    while heap:
        _, i = heapq.heappop(heap)
        row = pending[i].popleft()
        yield row
        if not pending[i]:
            pending[i] = await read(streams[i], row[0])
        if pending[i]:
            heapq.heappush(heap, (_newest_first(pending[i][0][0]), i))


def _newest_first(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return -int(ms), -int(seq or 0)
