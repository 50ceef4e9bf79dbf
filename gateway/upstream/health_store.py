"""Upstream key health shared through Redis, so every replica skips a bad key.

One hash per key, ``gw:pool:{<key-id>}``, with fields ``cooling_until``,
``quarantined_until`` (wall-clock seconds) and ``disabled`` ("1"/"0").
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from gateway.store import keys
from gateway.upstream.keypool import KeyHealth


def health_key(key_id: str) -> str:
    return keys.upstream_key_health(key_id)


class RedisKeyHealthStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis

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
            )
        return out

    async def save(self, key_id: str, health: KeyHealth) -> None:
        await self._redis.hset(
            health_key(key_id),
            mapping={
                "cooling_until": repr(health.cooling_until),
                "quarantined_until": repr(health.quarantined_until),
                "disabled": "1" if health.disabled else "0",
            },
        )

    async def claim(self, name: str, value: str, seconds: float) -> str:
        key = keys.upstream_cooler(name)
        if await self._redis.set(key, value, nx=True, px=max(1, int(seconds * 1000))):
            return value
        held = await self._redis.get(key)
        # Gone in between (expired): nobody holds it, which is as good as taken.
        if held is None:
            return value
        return held.decode("utf-8", "replace") if isinstance(held, bytes) else str(held)
