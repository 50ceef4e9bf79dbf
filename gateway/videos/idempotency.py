"""Idempotency-Key on video creates: the same key and request within the window return the
same job (no second upstream job, no second charge); the same key with another request is a
422; a key whose first request is still in flight is a 409 the SDK retries.

    gw:{team:<t>}:idem:<sha256(key)>          hash: state (pending | sent | done | unknown),
                                              fp, video_id, owner (the claiming request's token)
    gw:{team:<t>}:idem:<sha256(key)>:flight   set while a sent create may still be under way

A claim is *pending* until its create is about to leave, and expires on its own if its replica
dies first (nothing was sent: the key is free again). Just before the create leaves it becomes
*sent*, with the job's id, for the whole window, and in flight for as long as a pending claim
may live (by Redis's clock, not a replica's): should Redis then fail to take how it ended, a
retry finds the job, or waits, or learns that the outcome is unknown, and never finds a free
key that would make a second job. Only the request that claimed a key (its owner token) moves
it on: one whose claim expired while it stalled does not send its create.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
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
    in_flight: bool = False  # state "sent": its create may still be under way
    token: str = ""  # state "new": this request's, to move the key on with


class IdempotencyStore:
    def __init__(self, redis: Redis, *, ttl_seconds: float, pending_seconds: float) -> None:
        self.redis = redis
        self.ttl_ms = int(ttl_seconds * 1000)
        self.pending_ms = int(pending_seconds * 1000)
        self._begin = redis.register_script(script("gateway.videos", "idempotency_begin"))
        self._sent = redis.register_script(script("gateway.videos", "idempotency_sent"))
        self._end = redis.register_script(script("gateway.videos", "idempotency_end"))

    @staticmethod
    def _keys(team: str, key: str) -> list[str]:
        name = TeamKeys(team).idempotency(hashlib.sha256(key.encode()).hexdigest())
        return [name, name + ":flight"]  # one hash tag: one slot on a cluster

    async def begin(self, team: str, key: str, fp: str) -> Claim:
        token = secrets.token_hex(8)
        reply = cast(
            list[Any],
            await self._begin(keys=self._keys(team, key), args=[fp, self.pending_ms, token]),
        )
        if not reply:
            return Claim("new", token=token)
        state, stored_fp, video_id, in_flight = (
            v.decode() if isinstance(v, bytes) else str(v) for v in reply
        )
        return Claim(state, stored_fp, video_id, in_flight=in_flight == "1")

    async def sent(self, team: str, key: str, token: str, video_id: str) -> bool:
        """The claimed create is about to leave as job ``video_id``: kept for the whole
        window from now on. False when the claim is no longer this request's: then it must
        not leave."""
        args: list[str | int] = [token, video_id, self.ttl_ms, self.pending_ms]
        return int(await self._sent(keys=self._keys(team, key), args=args)) == 1

    async def finish(self, team: str, key: str, token: str, state: str, video_id: str = "") -> None:
        """Record how the owner's create ended, for the rest of the window."""
        args: list[str | int] = ["finish", token, state, video_id, self.ttl_ms]
        await self._end(keys=self._keys(team, key), args=args)

    async def release(self, team: str, key: str, token: str) -> None:
        """The owner's create certainly did nothing: the key is free to be used again."""
        await self._end(keys=self._keys(team, key), args=["release", token])

    async def forget(self, team: str, key: str, video_id: str) -> bool:
        """Free a key whose sent create of ``video_id`` was refunded (it certainly did nothing)
        without its end being recorded; False if the key holds anything else now."""
        reply = await self._end(keys=self._keys(team, key), args=["forget", video_id])
        return int(reply) == 1
