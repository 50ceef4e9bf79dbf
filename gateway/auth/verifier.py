"""Decides who a bearer token belongs to (the backend half; the middleware only records it).

Algorithms are pinned by config: the token's header only selects a ``kid``. HS* tokens are
checked only against the shared secrets and RS*/ES* only against public keys of the matching
type and curve, which defeats the "HS256 signed with the RSA public key" forgery. Times are
checked against an injected clock so expiry is testable without sleeping.

Failure reasons, a fixed set because they become a metric label: ``missing``, ``malformed``,
``bad_algorithm``, ``bad_signature``, ``expired``, ``not_yet_valid``, ``bad_issuer``,
``bad_audience``, ``missing_claim``, ``no_team``, ``bad_team``, ``no_subject``, ``unknown_kid``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.types import Options

from gateway.auth.api_keys import KEY_USER_PREFIX
from gateway.auth.jwks import MIN_RSA_BITS, JWKSCache
from gateway.auth.principal import Principal
from gateway.errors import AuthenticationFailed
from gateway.settings import SUPPORTED_ALGORITHMS, AuthSettings

_TEAM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_SUBJECT_CHARS = 256
# Even a long-lived token is re-verified every few minutes, so a removed secret or key stops
# working soon after a restart-free config change would have taken effect.
_MAX_CACHE_SECONDS = 300.0
_EC_ALG_BY_CURVE = {"secp256r1": "ES256", "secp384r1": "ES384"}
# PyJWT warns on every call with a shorter HMAC key (RFC 7518 3.2): refuse it at start-up instead.
_HS_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
# Signature only: every time and claim is checked below, against our clock.
_DECODE_OPTIONS: Options = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
}


class TokenVerifier:
    """Turns a bearer token into a ``Principal`` or raises ``AuthenticationFailed(reason)``.

    Keys are prepared once here; a PEM that cannot be used raises ``ValueError`` naming
    ``auth.public_keys[i]``. Verified tokens are cached (at most ``settings.cache_size``) until
    they expire or for five minutes, whichever comes first.
    """

    def __init__(
        self,
        settings: AuthSettings,
        *,
        jwks: JWKSCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._s = settings
        self._jwks = jwks
        self._clock = clock
        self._keys = _static_keys(settings)
        self._cache: dict[str, tuple[Principal, float]] = {}

    async def verify(self, token: str) -> Principal:
        """The token's principal; raises ``AuthenticationFailed`` with a reason for metrics."""
        now = self._clock()
        hit = self._cache.get(token)
        if hit is not None:
            if now < hit[1]:
                return hit[0]
            del self._cache[token]
        if not token:
            raise AuthenticationFailed("missing")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthenticationFailed("malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._keys:
            raise AuthenticationFailed("bad_algorithm")
        kid = header.get("kid")  # PyJWT has already refused a kid that is not a string
        claims = await self._decode(token, alg, kid if isinstance(kid, str) else None)
        principal, valid_until = self._check(claims, now)
        if self._s.cache_size > 0:
            if len(self._cache) >= self._s.cache_size:
                del self._cache[next(iter(self._cache))]  # the oldest entry
            self._cache[token] = (principal, valid_until)
        return principal

    async def _decode(self, token: str, alg: str, kid: str | None) -> dict[str, Any]:
        keys = self._keys[alg]
        if self._jwks is not None and not alg.startswith("HS"):
            try:
                keys = (await self._jwks.key_for(kid, alg), *keys)
            except AuthenticationFailed:
                if not keys:
                    raise
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token, key, algorithms=[alg], options=_DECODE_OPTIONS
                )
            except jwt.InvalidSignatureError:
                continue  # rotation: the next secret or key may have signed it
            except jwt.PyJWTError:
                raise AuthenticationFailed("malformed") from None
            return claims
        raise AuthenticationFailed("bad_signature")

    def _check(self, claims: dict[str, Any], now: float) -> tuple[Principal, float]:
        s = self._s
        if "exp" not in claims:
            raise AuthenticationFailed("missing_claim")
        exp = _timestamp(claims["exp"])
        if now > exp + s.leeway:
            raise AuthenticationFailed("expired")
        for name in ("nbf", "iat"):
            if name in claims and _timestamp(claims[name]) > now + s.leeway:
                raise AuthenticationFailed("not_yet_valid")
        if s.issuer is not None and claims.get("iss") != s.issuer:
            raise AuthenticationFailed("bad_issuer")
        if s.audience is not None:
            aud = claims.get("aud")
            if not (aud == s.audience or (isinstance(aud, list) and s.audience in aud)):
                raise AuthenticationFailed("bad_audience")
        team = claims.get(s.team_claim)
        if team is None or team == "":
            raise AuthenticationFailed("no_team")
        if not isinstance(team, str) or not _TEAM.fullmatch(team):
            raise AuthenticationFailed("bad_team")
        user = claims.get(s.user_claim)
        # Refused rather than truncated: two long subjects must never become one user.
        if not isinstance(user, str) or not user or len(user) > _MAX_SUBJECT_CHARS:
            raise AuthenticationFailed("no_subject")
        if user.startswith(KEY_USER_PREFIX):
            # How a gateway key's calls are attributed (ApiKey.user): a person named so would
            # share that key's lines in the usage ledger and the audit log.
            raise AuthenticationFailed("no_subject")
        principal = Principal(team=team, user=user, roles=_roles(claims.get(s.roles_claim)))
        return principal, min(exp + s.leeway, now + _MAX_CACHE_SECONDS)


def _timestamp(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthenticationFailed("malformed")
    try:
        stamp = float(value)
    except OverflowError:  # an integer past a float's range, such as 10**400
        raise AuthenticationFailed("malformed") from None
    # NaN would compare false against every bound and so never expire.
    if not math.isfinite(stamp):
        raise AuthenticationFailed("malformed")
    return stamp


def _roles(raw: Any) -> frozenset[str]:
    if isinstance(raw, str):
        return frozenset(raw.split())
    if isinstance(raw, list):
        # A list's roles read as the string form's words do: one with a blank or a control
        # character in it (an IdP's self-service group "x\ngateway-admin") is no role at all.
        return frozenset(
            r for r in raw if isinstance(r, str) and r and r.isprintable() and len(r.split()) == 1
        )
    return frozenset()


def _static_keys(settings: AuthSettings) -> dict[str, tuple[Any, ...]]:
    """Every configured algorithm mapped to the configured keys it may be verified with."""
    for alg in settings.algorithms:
        if alg not in SUPPORTED_ALGORITHMS:
            raise ValueError(f"auth.algorithms: unsupported algorithm {alg!r}")
    by_alg: dict[str, list[Any]] = {alg: [] for alg in settings.algorithms}
    for alg in by_alg:
        if alg.startswith("HS"):
            for i, secret in enumerate(settings.hs256_secrets):
                raw = secret.encode()
                if len(raw) < _HS_MIN_BYTES[alg]:
                    raise ValueError(
                        f"auth.hs256_secrets[{i}]: must be at least {_HS_MIN_BYTES[alg]} bytes "
                        f"for {alg}"
                    )
                by_alg[alg].append(raw)
    for i, pem in enumerate(settings.public_keys):
        key, algs = _load_pem(pem, f"auth.public_keys[{i}]")
        for alg in algs:
            if alg in by_alg:
                by_alg[alg].append(key)
    return {alg: tuple(keys) for alg, keys in by_alg.items()}


def _load_pem(pem: str, name: str) -> tuple[Any, tuple[str, ...]]:
    """The key object and the algorithms it may verify."""
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{name}: not a PEM public key") from None
    if isinstance(key, RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"{name}: RSA keys need at least {MIN_RSA_BITS} bits")
        return key, ("RS256", "RS384", "RS512")
    if isinstance(key, EllipticCurvePublicKey) and key.curve.name in _EC_ALG_BY_CURVE:
        return key, (_EC_ALG_BY_CURVE[key.curve.name],)
    raise ValueError(f"{name}: only RSA and P-256/P-384 EC public keys are supported")
