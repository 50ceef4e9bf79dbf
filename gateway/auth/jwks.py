"""The identity provider's signing keys from its JWKS document, cached.

Fetched lazily, kept for ``cache_seconds``, refetched on an unknown ``kid`` at most once per
``refetch_cooldown`` (concurrent callers share one fetch), and the last good keys are kept while
the IdP is down. Keys are parsed once per fetch, never per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import jwt

from gateway.errors import AuthenticationFailed

log = logging.getLogger("gateway.auth")

Fetch = Callable[[str], Awaitable[bytes]]
_KTY_FOR_ALG = {"RS": "RSA", "ES": "EC", "PS": "RSA"}


class JWKSCache:
    def __init__(
        self,
        url: str,
        fetch: Fetch,
        *,
        cache_seconds: float,
        refetch_cooldown: float,
        clock: Callable[[], float],
    ) -> None:
        self._url = url
        self._fetch = fetch
        self._cache_seconds = cache_seconds
        self._cooldown = refetch_cooldown
        self._clock = clock
        self._keys: dict[str | None, tuple[str, Any]] = {}  # kid -> (kty, key object)
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._inflight: asyncio.Future[None] | None = None

    async def key_for(self, kid: str | None, alg: str) -> Any:
        stale = self._clock() - self._fetched_at > self._cache_seconds
        if stale and self._may_fetch():
            await self._refresh()
        found = self._lookup(kid, alg)
        if found is None and self._may_fetch():
            await self._refresh()
            found = self._lookup(kid, alg)
        if found is None:
            raise AuthenticationFailed("unknown_kid")
        return found

    def _lookup(self, kid: str | None, alg: str) -> Any:
        kty = _KTY_FOR_ALG.get(alg[:2])
        if kid is not None:
            entry = self._keys.get(kid)
            return entry[1] if entry and entry[0] == kty else None
        matching = [k for t, k in self._keys.values() if t == kty]
        return matching[0] if len(matching) == 1 else None

    def _may_fetch(self) -> bool:
        # A fetch in flight is joined, not repeated; otherwise at most one per cooldown.
        return self._inflight is not None or (self._clock() - self._attempted_at >= self._cooldown)

    async def _refresh(self) -> None:
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return
        loop = asyncio.get_running_loop()
        self._inflight = loop.create_future()
        self._attempted_at = self._clock()
        try:
            keys = self._parse(await self._fetch(self._url))
            if keys:
                self._keys = keys
                self._fetched_at = self._clock()
        except Exception as exc:  # the IdP being down must not take authentication down
            log.warning(
                "JWKS fetch failed (%s); keeping %d known keys", type(exc).__name__, len(self._keys)
            )
        finally:
            self._inflight.set_result(None)
            self._inflight = None

    @staticmethod
    def _parse(body: bytes) -> dict[str | None, tuple[str, Any]]:
        doc = json.loads(body)
        out: dict[str | None, tuple[str, Any]] = {}
        for jwk in doc.get("keys", []) if isinstance(doc, dict) else []:
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(jwk).key
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, KeyError):
                continue
            out[jwk.get("kid")] = (str(jwk.get("kty")), key)
        return out
