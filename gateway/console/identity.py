"""Who may sign in to the console, and whether a signed-in session still stands.

``TokenSignIn`` takes what a person pastes into the sign-in form, a company JWT or a gateway
API key, and checks it with the very verifiers the API uses (passed in), so the console admits
exactly whom the API admits. It answers an ``Identity``; signing in through the IdP
(``oidc_sign_in.OidcSignIn``) gives the same answer, and nothing after sign-in needs to know
which one made it.

A session made with a gateway key ends when the key does: ``KeyRecheck`` reads the key's
record on each request and applies the verifier's own rules (``KeyRecord.matches`` and
``refusal``) to the digest kept with the session, so revoking, expiring or rotating the key
(past its grace) ends the session on every replica at the next request. The session also
keeps a mark of the pepper its digest was made under: the digest and the key's record were
both made under that pepper and match whatever the pepper is now, so a changed or removed
pepper (every key refused by the API) must end the session by the mark.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt

from gateway.auth import api_keys
from gateway.auth.api_keys import KeyRecord
from gateway.auth.key_store import KeyStore
from gateway.auth.key_verifier import KeyVerifier
from gateway.auth.principal import Principal
from gateway.auth.verifier import TokenVerifier
from gateway.errors import AuthenticationFailed

MAX_TOKEN_CHARS = 16 * 1024


@dataclass(frozen=True)
class Identity:
    """A verified person (or service) and how long what proved it stays valid."""

    principal: Principal
    valid_until: float | None = None  # a JWT's exp; None: no limit of its own
    key_id: str | None = None  # signed in with this gateway key
    key_digest: str = field(default="", repr=False)
    pepper_mark: str = field(default="", repr=False)  # KeyVerifier.pepper_mark at sign-in


class TokenSignIn:
    def __init__(self, verifier: TokenVerifier, keys: KeyVerifier | None) -> None:
        self._verifier = verifier
        self._keys = keys

    async def identify(self, token: str) -> Identity:
        """The token's identity; raises ``AuthenticationFailed`` (with a reason for metrics)."""
        token = token.strip()
        if token.lower().startswith("bearer "):
            token = token[7:].strip()  # pasted with its scheme
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise AuthenticationFailed("missing" if not token else "malformed")
        if token.startswith(api_keys.PREFIX):
            if self._keys is None or not self._keys.enabled:
                raise AuthenticationFailed("key_disabled")
            principal = await self._keys.verify(token)
            key_id = principal.key.id if principal.key is not None else None
            return Identity(
                principal, None, key_id, self._keys.digest(token), self._keys.pepper_mark()
            )
        principal = await self._verifier.verify(token)
        return Identity(principal, _expiry(token))


def _expiry(token: str) -> float | None:
    # Already verified (signature and exp) by the verifier; only its exp is read here.
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return None
    return float(exp)


class KeyRecheck:
    """Whether the gateway key a session was made with still authenticates."""

    def __init__(self, store: KeyStore, keys: KeyVerifier, *, clock: Callable[[], float]) -> None:
        self._store = store
        self._keys = keys
        self._clock = clock

    async def current(self, key_id: str, digest: str, pepper_mark: str) -> KeyRecord | None:
        """The key's record if ``digest``, made under the pepper ``pepper_mark`` names, still
        authenticates as it, else None."""
        if not api_keys.ID_PATTERN.fullmatch(key_id) or not digest:
            return None
        if not self._keys.enabled:
            return None  # keys are off: the API refuses every one
        if not pepper_mark or not api_keys.same_digest(pepper_mark, self._keys.pepper_mark()):
            return None
        record = await self._store.get(key_id)
        now = self._clock()
        if record is None or not record.matches(digest, now) or record.refusal(now) is not None:
            return None
        return record
