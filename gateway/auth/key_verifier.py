"""Decides who a gateway API key belongs to (the JWT verifier's counterpart for ``gwk_`` keys).

A JWT never needs Redis; a key does, once: its record is read, its keyed hash compared in
constant time, and the outcome cached in this replica for at most ``cache_seconds`` (≤ 1 s),
counted from when the read *started*, so a key revoked on any replica is refused on every
replica within that bound. Unknown keys are cached too (bounded), so a flood of made-up keys
costs one Redis read per key per period; concurrent look-ups of one key share one read.
Expiry and the rotation grace are checked on every use, to the second, cache or not.

Failure reasons (metric labels): ``key_malformed``, ``key_unknown``, ``key_revoked``,
``key_expired``, ``key_disabled`` (no pepper configured). The caller sees one 401 for all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.auth import api_keys
from gateway.auth.api_keys import KeyRecord
from gateway.auth.key_store import KeyStore
from gateway.auth.principal import Principal
from gateway.errors import AuthenticationFailed

TOUCH_EVERY_S = 60.0  # how stale a key's last_used may be in the listing
PEPPER_MARK = "pepper-mark"  # not a key (no gwk_ prefix), so its digest is no key's digest


@dataclass(frozen=True, slots=True)
class _Entry:
    until: float
    record: KeyRecord | None  # None: refused for ``reason``
    reason: str
    principal: Principal | None
    previous: bool  # matched the previous secret (valid only within the rotation grace)


class KeyVerifier:
    def __init__(
        self,
        store: KeyStore,
        pepper: bytes | None,
        *,
        clock: Callable[[], float] = time.time,
        cache_seconds: float = 1.0,
        cache_size: int = 10_000,
    ) -> None:
        self._store = store
        self._pepper = pepper
        self._clock = clock
        self._ttl = cache_seconds
        self._size = max(1, cache_size)
        self._cache: dict[str, _Entry] = {}
        self._pending: dict[str, asyncio.Future[_Entry]] = {}
        self._touched: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        return self._pepper is not None

    def digest(self, token: str) -> str:
        if self._pepper is None:
            raise RuntimeError("gateway API keys need auth.api_key_pepper")
        return api_keys.digest(self._pepper, token)

    def pepper_mark(self) -> str:
        """Which pepper digests are made with now ("" when keys are off), never the pepper
        itself: a digest kept elsewhere (a console session's) was made under the pepper of
        its day, and still matches the key's record after the pepper changed."""
        if self._pepper is None:
            return ""
        return api_keys.digest(self._pepper, PEPPER_MARK)

    async def verify(self, token: str) -> Principal:
        key_id = api_keys.parse(token)
        if key_id is None:
            raise AuthenticationFailed("key_malformed")
        if self._pepper is None:
            raise AuthenticationFailed("key_disabled")
        now = self._clock()
        entry = self._cache.get(token)
        if entry is None or now >= entry.until:
            entry = await self._lookup(token, key_id)
            now = self._clock()
        if entry.record is None or entry.principal is None:
            raise AuthenticationFailed(entry.reason)
        reason = entry.record.refusal(now)
        if reason is None and entry.previous and now >= entry.record.previous_until:
            reason = "key_unknown"  # the old secret of a rotation whose grace is over
        if reason is not None:
            raise AuthenticationFailed(reason)
        if now - self._touched.get(key_id, float("-inf")) >= TOUCH_EVERY_S:
            self._touched[key_id] = now
            if len(self._touched) > self._size:
                del self._touched[next(iter(self._touched))]
            await self._store.touch(key_id, now)
        return entry.principal

    async def _lookup(self, token: str, key_id: str) -> _Entry:
        pending = self._pending.get(token)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._pending[token] = future
        try:
            entry = await self._read(token, key_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._pending[token]
        future.set_result(entry)
        if len(self._cache) >= self._size:
            del self._cache[next(iter(self._cache))]  # the oldest entry
        self._cache.pop(token, None)
        self._cache[token] = entry
        return entry

    async def _read(self, token: str, key_id: str) -> _Entry:
        started = self._clock()
        until = started + self._ttl
        record = await self._store.get(key_id)
        if record is None:
            return _Entry(until, None, "key_unknown", None, False)
        candidate = self.digest(token)
        if not record.matches(candidate, started):
            return _Entry(until, None, "key_unknown", None, False)
        previous = not api_keys.same_digest(candidate, record.digest)
        return _Entry(until, record, "", Principal.of_key(record), previous)
