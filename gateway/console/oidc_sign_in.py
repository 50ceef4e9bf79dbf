"""Signing in to the console through the company IdP: OpenID Connect's code flow with PKCE.

``begin`` makes a ``state``, a ``nonce`` and a PKCE ``code_verifier`` (random, 256 bits
each) and answers where to send the browser plus the ``binding`` the browser keeps in a
signed cookie of its own for ten minutes: the state, nonce and verifier, and when they lapse.
Nothing is stored until a sign-in succeeds, so anyone can ask to start one as often as they
like without growing Redis (the quota state's home):

    gw:console:oidc:{<state>}  a state the IdP's code was exchanged for; TTL PENDING_S

``finish`` takes the IdP's answer: its state must be the browser's own (a callback URL made
for someone else's browser signs nobody in: login CSRF), then an IdP error, the code exchange
(with the verifier) and the ID token's check (``OidcProvider``); last, the state is marked
used on every replica, once. It answers the same ``Identity`` as the token sign-in, so the
session that follows is the same too.

Every failure raises ``AuthenticationFailed`` whose reason is a metric label:
``oidc_state`` (no such state, used before, expired, or another browser's), ``oidc_denied``
(the IdP answered an error, such as access_denied), ``malformed`` (no code), ``bad_issuer``
(an ``iss`` answer parameter of another IdP, RFC 9207), and those of ``OidcProvider``.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

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


class OidcSignIn:
    def __init__(
        self, provider: OidcProvider, redis: Redis, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.provider = provider
        self._redis = redis
        self._clock = clock

    @property
    def name(self) -> str:
        """The IdP as the sign-in button names it."""
        return self.provider.name

    async def begin(self) -> Started:
        meta = await self.provider.metadata()
        state, nonce, verifier = (secrets.token_urlsafe(_RANDOM_BYTES) for _ in "123")
        lapses = int(self._clock()) + PENDING_S
        url = self.provider.authorization_url(meta, state=state, nonce=nonce, verifier=verifier)
        return Started(url, f"{state}~{nonce}~{verifier}~{lapses}")

    async def finish(self, answer: Mapping[str, str], binding: str | None) -> Identity:
        """The identity the IdP's answer (the callback's query) proves, for the browser that
        holds ``binding`` (the value of its signed cookie)."""
        state = answer.get("state", "")
        parts = (binding or "").split("~")
        if (
            not _STATE.fullmatch(state)
            or len(parts) != 4
            or not parts[3].isdigit()
            or int(parts[3]) <= self._clock()
            or not secrets.compare_digest(parts[0].encode(), state.encode())
        ):
            raise AuthenticationFailed("oidc_state")
        _, nonce, verifier, _ = parts
        if "error" in answer:
            raise AuthenticationFailed("oidc_denied")
        iss = answer.get("iss")
        if iss is not None and iss != self.provider.issuer:
            raise AuthenticationFailed("bad_issuer")
        code = answer.get("code", "")
        if not code or len(code) > MAX_CODE_CHARS:
            raise AuthenticationFailed("malformed")
        meta = await self.provider.metadata()
        token = await self.provider.exchange(meta, code, verifier)
        principal, exp = await self.provider.verify_id_token(meta, token, nonce)
        # One sign-in per state, on every replica: only a sign-in the IdP vouched for gets here.
        if not await self._redis.set(keys.console_oidc(state), "1", nx=True, ex=PENDING_S):
            raise AuthenticationFailed("oidc_state")
        return Identity(principal, exp)
