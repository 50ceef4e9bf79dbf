"""Decides who a bearer token belongs to (the backend half; the middleware only records it).

Algorithms are pinned by config: the token's header only selects a ``kid``. HS* tokens are
checked only against the shared secrets and RS*/ES* only against public keys of the matching
type, which defeats the "HS256 signed with the RSA public key" forgery. Times are checked
against an injected clock so expiry is testable without sleeping.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.types import Options

from gateway.auth.jwks import JWKSCache
from gateway.auth.principal import Principal
from gateway.errors import AuthenticationFailed
from gateway.settings import AuthSettings

_TEAM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_CACHE_SECONDS = 300.0
# We check every time and claim ourselves, against our clock.
_DECODE_OPTIONS: Options = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "require": [],
}


class TokenVerifier:
    def __init__(
        self,
        settings: AuthSettings,
        *,
        jwks: JWKSCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._s = settings
        self._algorithms = frozenset(settings.algorithms)
        self._secrets = [s.encode() for s in settings.hs256_secrets]
        self._rsa: list[Any] = []
        self._ec: list[Any] = []
        for i, pem in enumerate(settings.public_keys):
            try:
                key = load_pem_public_key(pem.encode())
            except ValueError:
                raise ValueError(f"auth.public_keys[{i}]: not a PEM public key") from None
            if isinstance(key, RSAPublicKey):
                self._rsa.append(key)
            elif isinstance(key, EllipticCurvePublicKey):
                self._ec.append(key)
            else:
                raise ValueError(f"auth.public_keys[{i}]: only RSA and EC keys are supported")
        self._jwks = jwks
        self._clock = clock
        self._cache: dict[str, tuple[Principal, float]] = {}

    async def verify(self, token: str) -> Principal:
        now = self._clock()
        hit = self._cache.get(token)
        if hit is not None:
            if hit[1] > now:
                return hit[0]
            del self._cache[token]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthenticationFailed("malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthenticationFailed("bad_algorithm")
        claims = await self._decode(token, alg, header.get("kid"))
        principal, valid_until = self._check(claims, now)
        if len(self._cache) >= self._s.cache_size:
            self._cache.clear()
        if self._s.cache_size:
            self._cache[token] = (principal, valid_until)
        return principal

    async def _decode(self, token: str, alg: str, kid: Any) -> dict[str, Any]:
        keys: list[Any]
        if alg.startswith("HS"):
            keys = list(self._secrets)
        else:
            keys = list(self._rsa if alg[:2] in ("RS", "PS") else self._ec)
            if self._jwks is not None:
                try:
                    keys.append(
                        await self._jwks.key_for(kid if isinstance(kid, str) else None, alg)
                    )
                except AuthenticationFailed:
                    if not keys:
                        raise
        for key in keys:
            try:
                claims = jwt.decode(token, key, algorithms=[alg], options=_DECODE_OPTIONS)
            except jwt.InvalidSignatureError:
                continue
            except (jwt.InvalidTokenError, jwt.InvalidKeyError):
                raise AuthenticationFailed("malformed") from None
            if not isinstance(claims, dict):
                raise AuthenticationFailed("malformed")
            return claims
        raise AuthenticationFailed("bad_signature")

    def _check(self, claims: dict[str, Any], now: float) -> tuple[Principal, float]:
        s = self._s
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise AuthenticationFailed("missing_claim")
        if now > exp + s.leeway:
            raise AuthenticationFailed("expired")
        for name in ("nbf", "iat"):
            value = claims.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise AuthenticationFailed("malformed")
            if value > now + s.leeway:
                raise AuthenticationFailed("not_yet_valid")
        if s.issuer is not None and claims.get("iss") != s.issuer:
            raise AuthenticationFailed("bad_issuer")
        if s.audience is not None:
            aud = claims.get("aud")
            auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if s.audience not in auds:
                raise AuthenticationFailed("bad_audience")
        team = claims.get(s.team_claim)
        if team is None or team == "":
            raise AuthenticationFailed("no_team")
        if not isinstance(team, str) or not _TEAM.match(team):
            raise AuthenticationFailed("bad_team")
        user = claims.get(s.user_claim)
        if not isinstance(user, str) or not user:
            raise AuthenticationFailed("no_subject")
        raw_roles = claims.get(s.roles_claim)
        if isinstance(raw_roles, str):
            roles = frozenset(raw_roles.split())
        elif isinstance(raw_roles, list):
            roles = frozenset(r for r in raw_roles if isinstance(r, str))
        else:
            roles = frozenset()
        principal = Principal(team=team, user=user[:256], roles=roles)
        return principal, min(exp + s.leeway, now + _MAX_CACHE_SECONDS)
