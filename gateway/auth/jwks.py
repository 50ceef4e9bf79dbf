"""The identity provider's signing keys from its JWKS document, cached.

Fetched lazily, kept for ``cache_seconds``, refetched on an unknown ``kid`` at most once per
``refetch_cooldown`` (concurrent callers share one fetch), and the last good keys are kept while
the IdP is down or answers garbage. Keys are parsed once per fetch, never per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from gateway.errors import AuthenticationFailed

log = logging.getLogger("gateway.auth")

Fetch = Callable[[str], Awaitable[bytes]]
"""``url -> body``; raises on a network or HTTP error (the caller owns timeouts)."""

MIN_RSA_BITS = 2048
# The curve is part of the algorithm: an ES256 token is never checked with a P-384 key.
_KEY_TYPE = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
}


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    kty: str
    crv: str | None
    alg: str | None  # the JWK's own "alg", when it pins one
    key: Any

    def fits(self, alg: str) -> bool:
        return _KEY_TYPE.get(alg) == (self.kty, self.crv) and self.alg in (None, alg)


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
        self._keys: tuple[_Key, ...] = ()
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._inflight: asyncio.Task[None] | None = None

    async def key_for(self, kid: str | None, alg: str) -> Any:
        """The prepared public key for ``kid`` usable with ``alg``.

        A ``kid`` of None matches only when exactly one key fits ``alg``. Raises
        ``AuthenticationFailed("unknown_kid")`` when no key fits, even after a refetch.
        """
        if self._clock() - self._fetched_at > self._cache_seconds and self._may_fetch():
            await self._refresh()
        found = self._lookup(kid, alg)
        if found is None and self._may_fetch():
            await self._refresh()
            found = self._lookup(kid, alg)
        if found is None:
            raise AuthenticationFailed("unknown_kid")
        return found

    def _lookup(self, kid: str | None, alg: str) -> Any:
        fitting = [k for k in self._keys if k.fits(alg) and (kid is None or k.kid == kid)]
        if kid is None and len(fitting) != 1:
            return None
        return fitting[0].key if fitting else None

    def _may_fetch(self) -> bool:
        # A fetch in flight is joined, not repeated; otherwise at most one per cooldown, so a
        # flood of made-up kids cannot turn into a flood of requests to the IdP.
        return self._fetching() or self._clock() - self._attempted_at >= self._cooldown

    def _fetching(self) -> bool:
        return self._inflight is not None and not self._inflight.done()

    async def _refresh(self) -> None:
        if self._inflight is None or self._inflight.done():
            self._attempted_at = self._clock()
            # A task of its own, so a caller that is cancelled does not cancel everyone's fetch.
            self._inflight = asyncio.create_task(self._fetch_and_store())
        await asyncio.shield(self._inflight)

    async def _fetch_and_store(self) -> None:
        try:
            keys = _parse(await self._fetch(self._url))
            if not keys:
                raise ValueError("no usable signing keys")
            self._keys = keys
            self._fetched_at = self._clock()
        except Exception as exc:  # the IdP being down must not take authentication down
            log.warning(
                "JWKS fetch failed (%s: %s); keeping %d known keys",
                type(exc).__name__,
                exc,
                len(self._keys),
            )
        finally:
            self._inflight = None


def _parse(body: bytes) -> tuple[_Key, ...]:
    try:
        doc = json.loads(body)
    except RecursionError:
        raise ValueError("not a JWKS document") from None
    jwks = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(jwks, list):
        raise ValueError("not a JWKS document")
    out = []
    for jwk in jwks:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        try:
            key = _prepare(jwk)
        except Exception as exc:  # one bad key must not hide the good ones
            # The type only: a broken JWK's own text could carry private material.
            log.warning("JWKS key %r skipped (%s)", jwk.get("kid"), type(exc).__name__)
            continue
        if key is not None:
            out.append(key)
    return tuple(out)


def _prepare(jwk: dict[str, Any]) -> _Key | None:
    kty, crv, alg, kid = jwk.get("kty"), jwk.get("crv"), jwk.get("alg"), jwk.get("kid")
    if kty not in ("RSA", "EC"):
        return None  # symmetric or exotic keys are never used for tokens from the IdP
    if kid is not None and not isinstance(kid, str):
        raise ValueError("kid is not a string")
    key = jwt.PyJWK(jwk).key
    if hasattr(key, "public_key"):  # an IdP that publishes a private key: verify with its half
        key = key.public_key()
    if isinstance(key, RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        # PyJWT would warn on every verification; a key this weak is refused outright.
        raise ValueError(f"RSA key of {key.key_size} bits")
    return _Key(
        kid=kid,
        kty=kty,
        crv=crv if isinstance(crv, str) else None,
        alg=alg if isinstance(alg, str) else None,
        key=key,
    )
