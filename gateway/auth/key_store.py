"""Gateway API key records in Redis: one hash per key, an index and a name table per team.

The record lives under its id (``gw:apikey:{<id>}``), so a presented key is found with one
read. Names are unique among a team's keys that are not revoked (``HSETNX`` on the team's name
table), so two keys never share one line of the usage ledger. Redis trouble surfaces as
``StoreUnavailable`` from the client.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from gateway.auth.api_keys import REVOKED, KeyRecord
from gateway.store import keys
from gateway.store.lua import script


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _record(key_id: str, raw: dict[Any, Any]) -> KeyRecord | None:
    fields = {_text(a): _text(b) for a, b in raw.items()}
    # A hash without a team is no record (a write that raced a deletion by hand).
    return KeyRecord.from_fields(key_id, fields) if "team" in fields else None


class NameTaken(Exception):
    """Another key of the team that is not revoked has this name."""


class KeyStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._touch = redis.register_script(script("gateway.auth", "touch"))

    async def get(self, key_id: str) -> KeyRecord | None:
        return _record(key_id, await self.redis.hgetall(keys.api_key(key_id)))

    async def create(self, record: KeyRecord) -> None:
        t = keys.TeamKeys(record.team)
        if not await self.redis.hsetnx(t.api_key_names, record.name, record.id):
            raise NameTaken(record.name)
        try:
            fields: dict[Any, Any] = record.fields()
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hset(keys.api_key(record.id), mapping=fields)
                pipe.sadd(t.api_keys, record.id)
                await pipe.execute()
        except BaseException:
            # The record may not exist: free the name so the create can be tried again.
            await self.redis.hdel(t.api_key_names, record.name)
            raise

    async def count(self, team: str) -> int:
        """How many of the team's keys are not revoked (an expired one still counts: it can
        be revoked)."""
        return int(await self.redis.hlen(keys.TeamKeys(team).api_key_names))

    async def forget_revoked(self, team: str, room: int) -> int:
        """Drop the records of the team's oldest revoked keys until it holds fewer than
        ``room`` records, so that one more fits; answers how many went. Revoked keys are kept
        to be listed, but a team that creates and revokes keys for ever must not grow Redis
        for ever (a forgotten key presented again is as refused as a revoked one)."""
        t = keys.TeamKeys(team)
        held = int(await self.redis.scard(t.api_keys))
        if held < room:
            return 0
        revoked = [r for r in await self.team_keys(team) if r.state == REVOKED]
        revoked.sort(key=lambda r: (r.revoked or 0.0, r.id))
        gone = revoked[: held - room + 1]
        if gone:
            async with self.redis.pipeline(transaction=False) as pipe:
                for r in gone:
                    pipe.delete(keys.api_key(r.id))
                    pipe.srem(t.api_keys, r.id)
                await pipe.execute()
        return len(gone)

    async def team_keys(self, team: str) -> list[KeyRecord]:
        ids = sorted(_text(i) for i in await self.redis.smembers(keys.TeamKeys(team).api_keys))
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for key_id in ids:
                pipe.hgetall(keys.api_key(key_id))
            replies = await pipe.execute()
        found = (_record(key_id, raw) for key_id, raw in zip(ids, replies, strict=True))
        return [r for r in found if r is not None]

    async def revoke(self, record: KeyRecord, now: float) -> None:
        t = keys.TeamKeys(record.team)
        await self.redis.hset(
            keys.api_key(record.id),
            mapping={"state": REVOKED, "revoked": repr(now), "previous_digest": ""},
        )
        # Free the name only if it still names this key.
        if _text(await self.redis.hget(t.api_key_names, record.name) or b"") == record.id:
            await self.redis.hdel(t.api_key_names, record.name)

    async def rotate(self, record: KeyRecord, digest: str, previous_until: float) -> None:
        await self.redis.hset(
            keys.api_key(record.id),
            mapping={
                "digest": digest,
                "previous_digest": record.digest if previous_until > 0 else "",
                "previous_until": repr(previous_until),
            },
        )

    async def touch(self, key_id: str, now: float) -> None:
        await self._touch(keys=[keys.api_key(key_id)], args=[repr(now)])
