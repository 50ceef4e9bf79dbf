"""Upstream key health shared through Redis, so every replica skips a bad key.

One hash per key, ``gw:pool:{<key-id>}``, with fields ``cooling_until``,
``quarantined_until`` (wall-clock seconds), ``disabled`` ("1"/"0") and ``lifted_at`` (when an
admin last lifted a verdict). A replica's verdict raises one time (``raise_time``); only an
admin's decision writes the whole hash (``save``).
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from gateway.store import keys
from gateway.store.lua import script
from gateway.upstream.keypool import KeyHealth


def health_key(key_id: str) -> str:
    return keys.upstream_key_health(key_id)


class RedisKeyHealthStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._raise = redis.register_script(script("gateway.upstream", "raise_time"))
        self._decide = redis.register_script(script("gateway.upstream", "decide"))
        self._claim = redis.register_script(script("gateway.upstream", "claim"))
        self._floor = redis.register_script(script("gateway.upstream", "floor"))

    async def load(self, key_ids: Sequence[str]) -> dict[str, KeyHealth]:
        # Not a transaction: each hash is independent, and on a cluster they live on many nodes.
        async with self._redis.pipeline(transaction=False) as pipe:
            for kid in key_ids:
                pipe.hgetall(health_key(kid))
            rows = await pipe.execute()
        out = {}
        for kid, row in zip(key_ids, rows, strict=True):
            out[kid] = KeyHealth(
                cooling_until=float(row.get(b"cooling_until", 0) or 0),
                quarantined_until=float(row.get(b"quarantined_until", 0) or 0),
                disabled=row.get(b"disabled") == b"1",
                lifted_at=float(row.get(b"lifted_at", 0) or 0),
                cooling_seen=float(row.get(b"cooling_until_seen", 0) or 0),
                quarantined_seen=float(row.get(b"quarantined_until_seen", 0) or 0),
                floor=float(row.get(b"floor", 0) or 0),
            )
        return out

    async def save(self, key_id: str, health: KeyHealth) -> float:
        stamp = await self._decide(
            keys=[health_key(key_id)],
            args=[
                repr(health.cooling_until),
                repr(health.quarantined_until),
                "1" if health.disabled else "0",
            ],
        )
        return float(stamp)

    async def raise_time(self, key_id: str, name: str, until: float, seen: float) -> None:
        await self._raise(keys=[health_key(key_id)], args=[name, repr(until), repr(seen)])

    async def raise_floor(self, key_id: str, stamp: float) -> None:
        await self._floor(keys=[health_key(key_id)], args=[repr(stamp)])

    async def claim(self, name: str, value: str, seconds: float) -> str:
        ms = max(1, int(seconds * 1000))
        raw = await self._claim(keys=[keys.upstream_cooler(name)], args=[value, ms])
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
