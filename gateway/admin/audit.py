"""The audit log of admin changes: capped Redis streams, newest last.

Gateway admins' changes go to one shared stream, ``gw:audit``. A team's own key management
(a create, rotate or revoke by someone who is not a gateway admin) goes to that team's stream,
``gw:{team:<t>}:audit``, capped on its own: a team admin rotating a key in a loop pushes out
only its own team's older entries, never an admin's. ``recent`` reads them all as one log.

An entry records who (the admin's team and user from the verified token, never the token),
when, what was done to what, and the state before and after as JSON. Entries are built only
from values the admin service chose to record, so no secret can reach the stream.
"""

from __future__ import annotations

import heapq
import json
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

from redis.asyncio import Redis

from gateway.auth.principal import Principal
from gateway.store.keys import AUDIT_STREAM, AUDIT_TEAMS, TeamKeys

AUDIT_MAXLEN = 10_000  # approximate: Redis trims whole macro-nodes, which is much cheaper
TEAM_AUDIT_MAXLEN = 1_000  # per team: many teams may have one, so each is kept smaller
READ_PAGE = 100  # entries read from one stream at a time when the streams are merged

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

    async def recent(self, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """The newest ``limit`` entries of the shared stream and every team's together,
        newest first, and whether older ones exist."""
        teams = sorted(_text(t) for t in await self._redis.smembers(self._teams))
        streams = [self.stream, *(TeamKeys(t).audit for t in teams)]
        rows = await _newest(self._redis, streams, limit + 1)
        entries = [parse_entry(eid, fields) for eid, fields in rows]
        return entries[:limit], len(entries) > limit


async def _newest(redis: Redis, streams: list[str], n: int) -> list[Row]:
    """The ``n`` newest entries of ``streams`` merged by id (ids are times), newest first.
    Each stream is read a page at a time, so a team with a long but old history costs one
    short read, not ``n`` entries."""
    page = min(n, READ_PAGE)

    async def read(stream: str, below: str | None) -> deque[Row]:
        rows = cast(
            list[tuple[Any, dict[Any, Any]]],
            await redis.xrevrange(stream, max="+" if below is None else f"({below}", count=page),
        )
        return deque(
            (_text(eid), {_text(k): _text(v) for k, v in raw.items()}) for eid, raw in rows
        )

    pending = [await read(s, None) for s in streams]
    heap = [(_newest_first(rows[0][0]), i) for i, rows in enumerate(pending) if rows]
    heapq.heapify(heap)
    out: list[Row] = []
    while heap and len(out) < n:
        _, i = heapq.heappop(heap)
        row = pending[i].popleft()
        out.append(row)
        if not pending[i]:
            pending[i] = await read(streams[i], row[0])
        if pending[i]:
            heapq.heappush(heap, (_newest_first(pending[i][0][0]), i))
    return out


def _newest_first(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return -int(ms), -int(seq or 0)
