"""Idempotency-Key on video creates: the same key and request within the window return the
same job (no second upstream job, no second charge); the same key with another request is a
422; a key whose first request is still in flight is a 409 the SDK retries.

    gw:{team:<t>}:idem:<sha256(key)>   hash: state (pending | sent | done | unknown), fp,
                                       video_id, sent_at (ms)

A claim is *pending* until its create is about to leave, and expires on its own if its replica
dies first (nothing was sent: the key is free again). Just before the create leaves it is
*sent*, with the job's id, for the whole window: should Redis then fail to take how it ended,
a retry still finds the job (or, if there is none, an unknown outcome), never a free key that
would make a second job.

Keys are per team (another team's key can never collide) and stored hashed (a key may carry
whatever a client put in it).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from gateway.store.keys import TeamKeys
from gateway.store.lua import script

_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def valid_key(key: str) -> bool:
    return _KEY.match(key) is not None


def fingerprint(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Claim:
    state: str  # "new" when this request owns the key
    fingerprint: str = ""
    video_id: str = ""
    sent_at_ms: int = 0  # when its create left (state "sent")


class IdempotencyStore:
    def __init__(self, redis: Redis, *, ttl_seconds: float, pending_seconds: float) -> None:
        self.redis = redis
        self.ttl_ms = int(ttl_seconds * 1000)
        self.pending_ms = int(pending_seconds * 1000)
        self._begin = redis.register_script(script("gateway.videos", "idempotency_begin"))

    @staticmethod
    def _key(team: str, key: str) -> str:
        return TeamKeys(team).idempotency(hashlib.sha256(key.encode()).hexdigest())

    async def begin(self, team: str, key: str, fp: str) -> Claim:
        reply = cast(
            list[Any], await self._begin(keys=[self._key(team, key)], args=[fp, self.pending_ms])
        )
        if not reply:
            return Claim("new")
        state, stored_fp, video_id, sent_at = (
            v.decode() if isinstance(v, bytes) else str(v) for v in reply
        )
        return Claim(state, stored_fp, video_id, int(sent_at) if sent_at.isdigit() else 0)

    async def sent(self, team: str, key: str, video_id: str, now_ms: int) -> None:
        """The claimed create is about to leave as job ``video_id``: kept for the whole
        window from now on, whatever happens to the rest of the request."""
        name = self._key(team, key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(name, mapping={"state": "sent", "video_id": video_id, "sent_at": now_ms})
            pipe.pexpire(name, self.ttl_ms)
            await pipe.execute()

    async def finish(self, team: str, key: str, state: str, video_id: str = "") -> None:
        """Record how the first request ended, for the rest of the window."""
        name = self._key(team, key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(name, mapping={"state": state, "video_id": video_id})
            pipe.pexpire(name, self.ttl_ms)
            await pipe.execute()

    async def release(self, team: str, key: str) -> None:
        """The first request certainly did nothing: the key is free to be used again."""
        await self.redis.delete(self._key(team, key))
