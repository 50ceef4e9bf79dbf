"""Signing in to the console through the company IdP: OpenID Connect's code flow with PKCE.

``begin`` makes a ``state``, a ``nonce`` and a PKCE ``code_verifier`` (random, 256 bits
each), keeps them in Redis for ten minutes under the state, and answers where to send the
browser plus a random ``binding`` for a signed cookie of the browser's own:

    gw:console:oidc:{<state>}  hash: binding, nonce, verifier; TTL PENDING_S

``finish`` takes the IdP's answer: the state's record is deleted as it is read (one use, on
every replica, whatever happens next) and must carry the browser's binding, so a callback
URL made for someone else's browser signs nobody in (login CSRF). Then an IdP error, the
code exchange (with the verifier) and the ID token's check (``OidcProvider``). It answers
the same ``Identity`` as the token sign-in, so the session that follows is the same too.

Every failure raises ``AuthenticationFailed`` whose reason is a metric label:
``oidc_state`` (no such state, used before, expired, or another browser's), ``oidc_denied``
(the IdP answered an error, such as access_denied), ``malformed`` (no code), ``bad_issuer``
(an ``iss`` answer parameter of another IdP, RFC 9207), and those of ``OidcProvider``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from gateway.auth.oidc_provider import OidcProvider
from gateway.console.identity import Identity
from gateway.errors import AuthenticationFailed
from gateway.store import keys

PENDING_S = 600  # from leaving for the IdP to coming back
_RANDOM_BYTES = 32
_STATE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # what token_urlsafe(32) makes
MAX_CODE_CHARS = 2048


@dataclass(frozen=True)
class Started:
    url: str  # the IdP's authorization endpoint, with the request
    binding: str = field(repr=False)  # for the browser's signed cookie


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class OidcSignIn:
    def __init__(self, provider: OidcProvider, redis: Redis) -> None:
        self.provider = provider
        self._redis = redis

    @property
    def name(self) -> str:
        """The IdP as the sign-in button names it."""
        return self.provider.name

    async def begin(self) -> Started:
        meta = await self.provider.metadata()
        state, nonce, verifier, binding = (secrets.token_urlsafe(_RANDOM_BYTES) for _ in "1234")
        name = keys.console_oidc(state)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(name, mapping={"binding": binding, "nonce": nonce, "verifier": verifier})
            pipe.expire(name, PENDING_S)
            await pipe.execute()
        url = self.provider.authorization_url(meta, state=state, nonce=nonce, verifier=verifier)
        return Started(url, binding)

    async def finish(self, answer: Mapping[str, str], binding: str | None) -> Identity:
        """The identity the IdP's answer (the callback's query) proves, for the browser that
        holds ``binding``."""
        state = answer.get("state", "")
        if not _STATE.fullmatch(state):
            raise AuthenticationFailed("oidc_state")
        name = keys.console_oidc(state)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(name)
            pipe.delete(name)
            raw = (await pipe.execute())[0]
        pending = {_text(k): _text(v) for k, v in raw.items()}
        if not binding or not secrets.compare_digest(
            pending.get("binding", "").encode(), binding.encode()
        ):
            raise AuthenticationFailed("oidc_state")
        if "error" in answer:
            raise AuthenticationFailed("oidc_denied")
        iss = answer.get("iss")
        if iss is not None and iss != self.provider.issuer:
            raise AuthenticationFailed("bad_issuer")
        code = answer.get("code", "")
        if not code or len(code) > MAX_CODE_CHARS:
            raise AuthenticationFailed("malformed")
        meta = await self.provider.metadata()
        token = await self.provider.exchange(meta, code, pending["verifier"])
        principal, exp = await self.provider.verify_id_token(meta, token, pending["nonce"])
        return Identity(principal, exp)
