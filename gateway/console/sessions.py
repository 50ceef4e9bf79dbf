"""Console sessions in Redis, shared by every replica: who signed in, the session's CSRF
token, a one-time notice for the next page, and when it ends.

    gw:console:session:{<id>}  hash: team, user, roles, key_id, key_digest, pepper_mark,
                               csrf, expires, flash; its TTL is the session's remaining life

    gw:{team:<t>}:console:<user-hash>  sorted set: the person's session ids, by expiry

Signing out deletes the hash, so the cookie is dead everywhere at once. A person holds at most
``MAX_SESSIONS`` live sessions: a new one past that ends the ones that expire soonest, so one
token signing in again and again cannot fill Redis with sessions. ``key_digest`` is the
keyed hash of the gateway key a session was made with (what Redis already keeps for the key,
never the key), and ``pepper_mark`` names the pepper it was made under (never the pepper), so
each request can check that the key still stands.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from gateway.auth.principal import Principal
from gateway.console import cookies, csrf
from gateway.store import keys
from gateway.store.keys import TeamKeys

MAX_SESSIONS = 20  # per team and user: browsers and devices of one person, with room to spare


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass(frozen=True)
class Session:
    id: str = field(repr=False)
    principal: Principal
    csrf: str = field(repr=False)
    expires: float
    key_id: str | None = None
    key_digest: str = field(default="", repr=False)
    pepper_mark: str = field(default="", repr=False)
    flash: str | None = None  # "ok:..." or "error:...", shown once


class SessionStore:
    def __init__(self, redis: Redis, *, clock: Callable[[], float]) -> None:
        self._redis = redis
        self._clock = clock

    async def create(
        self,
        principal: Principal,
        *,
        lifetime_s: float,
        key_id: str | None = None,
        key_digest: str = "",
        pepper_mark: str = "",
    ) -> Session:
        session = Session(
            id=cookies.new_id(),
            principal=principal,
            csrf=csrf.new_token(),
            expires=self._clock() + lifetime_s,
            key_id=key_id,
            key_digest=key_digest,
            pepper_mark=pepper_mark,
        )
        fields: dict[Any, Any] = {
            "team": principal.team,
            "user": principal.user,
            "roles": json.dumps(sorted(principal.roles)),
            "key_id": key_id or "",
            "key_digest": key_digest,
            "pepper_mark": pepper_mark,
            "csrf": session.csrf,
            "expires": repr(session.expires),
        }
        name = keys.console_session(session.id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(name, mapping=fields)
            pipe.expireat(name, math.ceil(session.expires))
            await pipe.execute()
        await self._cap(principal, session)
        return session

    async def _cap(self, principal: Principal, session: Session) -> None:
        """Index the new session under its person and end the ones past ``MAX_SESSIONS``.
        Two steps, not one script: the index and the sessions live on different Cluster
        slots; two sign-ins racing may both end the same sessions, which is harmless."""
        index = TeamKeys(principal.team).console_sessions(principal.user)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(index, {session.id: session.expires})
            pipe.zremrangebyscore(index, "-inf", self._clock())
            # As long as its longest session: the index never outlives what it lists.
            pipe.expireat(index, math.ceil(session.expires), gt=True)
            pipe.expireat(index, math.ceil(session.expires), nx=True)
            pipe.zrange(index, 0, -(MAX_SESSIONS + 1))
            ended = [_text(v) for v in (await pipe.execute())[-1]]
        if not ended:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for old in ended:
                pipe.delete(keys.console_session(old))
            pipe.zrem(index, *ended)
            await pipe.execute()

    async def get(self, session_id: str, *, take_flash: bool = False) -> Session | None:
        """The live session, or None; ``take_flash`` also removes its notice (shown once)."""
        name = keys.console_session(session_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(name)
            if take_flash:
                pipe.hdel(name, "flash")
            raw = (await pipe.execute())[0]
        f = {_text(k): _text(v) for k, v in raw.items()}
        if "team" not in f or "csrf" not in f:
            return None
        expires = float(f.get("expires") or 0)
        if expires <= self._clock():  # Redis expires it within a second; never trust that
            return None
        return Session(
            id=session_id,
            principal=Principal(
                team=f["team"],
                user=f.get("user", ""),
                roles=_roles(f.get("roles", "")),
            ),
            csrf=f["csrf"],
            expires=expires,
            key_id=f.get("key_id") or None,
            key_digest=f.get("key_digest", ""),
            pepper_mark=f.get("pepper_mark", ""),
            flash=f.get("flash") or None,
        )

    async def flash(self, session: Session, message: str) -> None:
        """A notice for the session's next page (one at a time: the last one wins)."""
        name = keys.console_session(session.id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(name, "flash", message[:2000])
            # HSET on a hash that expired a moment ago would create one without a TTL.
            pipe.expireat(name, math.ceil(session.expires))
            await pipe.execute()

    async def delete(self, session_id: str) -> None:
        name = keys.console_session(session_id)
        team, user = await self._redis.hmget(name, ["team", "user"])
        await self._redis.delete(name)
        if team is not None and user is not None:
            index = TeamKeys(_text(team)).console_sessions(_text(user))
            await self._redis.zrem(index, session_id)


def _roles(stored: str) -> frozenset[str]:
    # A JSON list; a session stored before it was one holds its roles a line each.
    if stored.startswith("["):
        found = json.loads(stored)
        return frozenset(r for r in found if isinstance(r, str) and r)
    return frozenset(r for r in stored.split("\n") if r)
