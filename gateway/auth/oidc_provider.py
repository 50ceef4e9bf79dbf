"""The company IdP as an OpenID Connect relying party sees it: discovery, the authorization
URL, the code exchange, and the ID token's check.

Discovery (``<issuer>/.well-known/openid-configuration``) is cached for an hour, and the last
good document is kept while the IdP is down. Its endpoints must be https (plain http only on
this machine) and its ``issuer`` must be exactly the configured one, so a document from
elsewhere cannot point sign-in at another provider.

The ID token is checked by a ``TokenVerifier`` built from ``auth`` with the API's own rules
(algorithms pinned by ``auth.algorithms``, never taken from the token; ``exp`` required;
leeway; team, roles and user from ``auth.*_claim``), narrowed for ID tokens: ``iss`` must be
the issuer, ``aud`` the client id, the signature must come from a key in the IdP's JWKS
(``jwks_uri``, through ``JWKSCache``), and HS* is never accepted (that would trust anyone
holding an API secret, or a token "signed" with the IdP's public key). The ``nonce`` sent
must come back, and ``azp``, when present (required when ``aud`` lists several), must be
the client id.

Failures raise ``AuthenticationFailed`` with a reason from the verifier's set or one of
``oidc_unavailable`` (discovery failed), ``oidc_exchange`` (the token endpoint refused the
code or answered something unusable) and ``bad_nonce``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlencode, urlsplit

import jwt

from gateway.auth.jwks import JWKSCache
from gateway.auth.principal import Principal
from gateway.auth.verifier import TokenVerifier
from gateway.errors import AuthenticationFailed
from gateway.settings import AuthSettings, OidcSettings, is_loopback_host

log = logging.getLogger("gateway.auth")

DISCOVERY_PATH = "/.well-known/openid-configuration"
DISCOVERY_CACHE_S = 3600.0
DISCOVERY_RETRY_S = 5.0  # after a failed fetch, sign-ins fail fast for this long
MAX_ID_TOKEN_CHARS = 16 * 1024


class IdpHttp(Protocol):
    """The I/O seam (``gateway.auth.idp.IdpClient``): bounded, no redirects followed."""

    def fetch(self, url: str) -> Awaitable[bytes]: ...

    def post_form(
        self, url: str, form: Mapping[str, str], headers: Mapping[str, str]
    ) -> Awaitable[tuple[int, bytes]]: ...


@dataclass(frozen=True)
class ProviderMetadata:
    """What sign-in needs of the discovery document."""

    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    secret_in_body: bool  # the token endpoint takes client_secret_post only, not Basic


def code_challenge(verifier: str) -> str:
    """PKCE's S256 challenge for ``verifier`` (RFC 7636 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class OidcProvider:
    def __init__(
        self,
        settings: OidcSettings,
        auth: AuthSettings,
        http: IdpHttp,
        *,
        redirect_url: str,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._s = settings
        self._http = http
        self.redirect_url = redirect_url
        self._clock = clock
        self._monotonic = monotonic
        self._auth = dataclasses.replace(
            auth,
            hs256_secrets=(),
            public_keys=(),
            algorithms=tuple(a for a in auth.algorithms if not a.startswith("HS")),
            issuer=settings.issuer,
            audience=settings.client_id,
            cache_size=0,  # an ID token is shown once; nothing to gain from keeping it
        )
        self._meta: ProviderMetadata | None = None
        self._fetched_at = -math.inf
        self._failed_at = -math.inf
        self._lock = asyncio.Lock()
        self._verifier: tuple[str, TokenVerifier] | None = None  # for one jwks_uri

    @property
    def name(self) -> str:
        return self._s.name

    @property
    def issuer(self) -> str:
        return self._s.issuer

    # -- discovery ---------------------------------------------------------------------------

    async def metadata(self) -> ProviderMetadata:
        """The IdP's endpoints, cached; raises ``AuthenticationFailed("oidc_unavailable")``."""
        if self._monotonic() - self._fetched_at < DISCOVERY_CACHE_S and self._meta is not None:
            return self._meta
        async with self._lock:  # concurrent sign-ins share one fetch
            now = self._monotonic()
            fresh = now - self._fetched_at < DISCOVERY_CACHE_S
            if not fresh and now - self._failed_at >= DISCOVERY_RETRY_S:
                await self._discover()
            if self._meta is None:
                raise AuthenticationFailed("oidc_unavailable")
            return self._meta

    async def _discover(self) -> None:
        url = self._s.issuer.rstrip("/") + DISCOVERY_PATH
        try:
            self._meta = self._parse_discovery(await self._http.fetch(url))
            self._fetched_at = self._monotonic()
        except Exception as exc:  # the IdP being down must not break the token sign-in
            self._failed_at = self._monotonic()
            log.warning(
                "OIDC discovery at %s failed (%s: %s)%s",
                url,
                type(exc).__name__,
                str(exc)[:200],
                "; keeping the last good document" if self._meta is not None else "",
            )

    def _parse_discovery(self, body: bytes) -> ProviderMetadata:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise ValueError("not a JSON document") from None
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if doc.get("issuer") != self._s.issuer:
            raise ValueError(
                f"its issuer is {str(doc.get('issuer'))[:200]!r}, not the configured one"
            )
        urls = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = doc.get(name)
            if not isinstance(value, str) or not _usable_url(value):
                raise ValueError(f"{name} is missing or not an https URL")
            urls[name] = value
        methods = doc.get("token_endpoint_auth_methods_supported")
        secret_in_body = (
            isinstance(methods, list)
            and "client_secret_post" in methods
            and "client_secret_basic" not in methods
        )
        return ProviderMetadata(**urls, secret_in_body=secret_in_body)

    # -- the flow ----------------------------------------------------------------------------

    def authorization_url(
        self, meta: ProviderMetadata, *, state: str, nonce: str, verifier: str
    ) -> str:
        """Where the browser is sent to sign in (the code flow with PKCE S256)."""
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self._s.client_id,
                "redirect_uri": self.redirect_url,
                "scope": " ".join(self._s.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": code_challenge(verifier),
                "code_challenge_method": "S256",
            },
            quote_via=quote,
        )
        endpoint = meta.authorization_endpoint
        return f"{endpoint}{'&' if urlsplit(endpoint).query else '?'}{query}"

    async def exchange(self, meta: ProviderMetadata, code: str, verifier: str) -> str:
        """The ID token the token endpoint gives for ``code``; the access token is dropped."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_url,
            "code_verifier": verifier,
        }
        headers = {"accept": "application/json"}
        secret = self._s.client_secret
        if secret is None or meta.secret_in_body:
            form["client_id"] = self._s.client_id
            if secret is not None:
                form["client_secret"] = secret
        else:  # client_secret_basic: both parts form-urlencoded first (RFC 6749 2.3.1)
            pair = f"{_form_quote(self._s.client_id)}:{_form_quote(secret)}".encode()
            headers["authorization"] = "Basic " + base64.b64encode(pair).decode()
        try:
            status, body = await self._http.post_form(meta.token_endpoint, form, headers)
        except Exception as exc:
            log.warning("OIDC code exchange failed (%s: %s)", type(exc).__name__, str(exc)[:200])
            raise AuthenticationFailed("oidc_exchange") from None
        doc = _json_object(body)
        token = doc.get("id_token")
        if status != 200 or not isinstance(token, str) or not token:
            # The IdP's error code only: its description may quote what was sent.
            error = doc.get("error")
            log.warning(
                "OIDC token endpoint refused the code: HTTP %d, error %s",
                status,
                error[:64] if isinstance(error, str) else "(none)",
            )
            raise AuthenticationFailed("oidc_exchange")
        if len(token) > MAX_ID_TOKEN_CHARS:
            raise AuthenticationFailed("malformed")
        return token

    async def verify_id_token(
        self, meta: ProviderMetadata, token: str, nonce: str
    ) -> tuple[Principal, float]:
        """The person the ID token names and when it expires (``exp``)."""
        principal = await self._verifier_for(meta.jwks_uri).verify(token)
        # The signature, times, issuer and audience hold; these claims are now the IdP's word.
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        if claims.get("nonce") != nonce:
            raise AuthenticationFailed("bad_nonce")
        azp = claims.get("azp")
        aud = claims.get("aud")
        # A token for several audiences was issued to whichever party azp names (OIDC Core
        # 3.1.3.7): without azp, it may be another app's token that merely lists this one.
        several = isinstance(aud, list) and len(aud) > 1
        if (azp is not None or several) and azp != self._s.client_id:
            raise AuthenticationFailed("bad_audience")
        return principal, float(claims["exp"])

    def _verifier_for(self, jwks_uri: str) -> TokenVerifier:
        if self._verifier is None or self._verifier[0] != jwks_uri:
            jwks = JWKSCache(
                jwks_uri,
                self._http.fetch,
                cache_seconds=self._auth.jwks_cache_seconds,
                refetch_cooldown=self._auth.jwks_refetch_cooldown,
                clock=self._monotonic,
            )
            self._verifier = (jwks_uri, TokenVerifier(self._auth, jwks=jwks, clock=self._clock))
        return self._verifier[1]


def _usable_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.fragment or parts.username is not None or not parts.hostname:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(parts.hostname))


def _form_quote(value: str) -> str:
    return quote(value, safe="").replace("%20", "+")


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}
