"""The audit log of admin changes: a capped Redis stream, ``gw:audit``, newest last.

An entry records who (the admin's team and user from the verified token, never the token),
when, what was done to what, and the state before and after as JSON. Entries are built only
from values the admin service chose to record, so no secret can reach the stream.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

from redis.asyncio import Redis

from gateway.auth.principal import Principal
from gateway.store.keys import AUDIT_STREAM

AUDIT_MAXLEN = 10_000  # approximate: Redis trims whole macro-nodes, which is much cheaper


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
    ) -> None:
        self._redis = redis
        self._clock = clock
        self.stream = stream
        self._maxlen = maxlen

    async def record(
        self, actor: Principal, action: str, target: str, *, before: Any, after: Any
    ) -> dict[str, Any]:
        """Append one entry (raises RedisError; the caller decides what that means)."""
        fields = entry_fields(actor, action, target, before, after, self._clock())
        entry_id = await self._redis.xadd(
            self.stream,
            cast(dict[Any, Any], fields),  # redis-py's stubs want loose key types
            maxlen=self._maxlen,
            approximate=True,
        )
        return parse_entry(_text(entry_id), fields)

    async def recent(self, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """The newest ``limit`` entries, newest first, and whether older ones exist."""
        rows = cast(
            list[tuple[Any, dict[Any, Any]]],
            await self._redis.xrevrange(self.stream, count=limit + 1),
        )
        entries = [
            parse_entry(_text(eid), {_text(k): _text(v) for k, v in raw.items()})
            for eid, raw in rows
        ]
        return entries[:limit], len(entries) > limit
