"""A small OpenID Connect provider for tests: discovery, a JWKS with an RSA key made for this
run, an authorization endpoint that signs the configured person in at once (redirecting back
with a code, or with ``login_page`` through a page with a "Continue" link), and a token
endpoint that checks the client's secret and the PKCE verifier and answers an RS256 ID token
carrying the nonce.

Served on a real loopback socket with ``serve``; its issuer names ``localhost`` while the
gateway under test is reached as ``127.0.0.1``, so a browser treats the two as different
sites, as it would a company IdP and the gateway. Knobs on the instance make it misbehave the
ways a test needs (deny, forge or spoil the ID token); ``reset`` puts them back.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import html
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from tests.servers import run_server

KID = "test-key"


@dataclass
class Grant:
    redirect_uri: str
    challenge: str
    nonce: str


@dataclass
class TestIdp:
    __test__ = False  # not a test class, whatever pytest thinks of its name

    client_id: str
    client_secret: str | None = field(repr=False)
    redirect_uri: str = ""  # the one registered redirect URL (the gateway's callback)
    issuer: str = ""  # set by serve()
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        repr=False,
    )
    # Who the next sign-in is, as claims of the ID token.
    person: dict[str, Any] = field(default_factory=dict)
    # -- knobs --
    deny: str | None = None  # answer the authorization request with this error
    # Show a page with a "Continue" link instead of redirecting at once, as a real IdP's
    # login page would: the way back is then a navigation that the IdP's site starts.
    login_page: bool = False
    extra_claims: dict[str, Any] = field(default_factory=dict)  # override or add
    drop_claims: set[str] = field(default_factory=set)
    forge: str | None = None  # "none": alg none; "hs256": HMAC keyed with the public key
    # -- what happened --
    token_requests: list[dict[str, str]] = field(default_factory=list)
    codes: dict[str, Grant] = field(default_factory=dict)
    issued: list[str] = field(default_factory=list)  # every ID token answered

    def reset(self, **person: Any) -> None:
        self.person = {"sub": "ida", "team": "team-a", "roles": [], "name": "Ida", **person}
        self.deny = self.forge = None
        self.login_page = False
        self.extra_claims = {}
        self.drop_claims = set()
        self.token_requests.clear()
        self.issued.clear()

    # -- the endpoints -------------------------------------------------------------------------

    async def discovery(self, request: Request) -> Response:
        return JSONResponse(
            {
                "issuer": self.issuer,
                "authorization_endpoint": self.issuer + "/authorize",
                "token_endpoint": self.issuer + "/token",
                "jwks_uri": self.issuer + "/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            }
        )

    async def jwks(self, request: Request) -> Response:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return JSONResponse({"keys": [{**jwk, "kid": KID, "alg": "RS256", "use": "sig"}]})

    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        # A bad client or redirect URL is shown to the person, never redirected (RFC 6749 4.1.2.1).
        if q.get("client_id") != self.client_id or q.get("redirect_uri") != self.redirect_uri:
            return PlainTextResponse("unknown client or redirect_uri", 400)
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
            return PlainTextResponse("code flow with PKCE S256 only", 400)
        if "openid" not in q.get("scope", "").split() or not q.get("code_challenge"):
            return PlainTextResponse("openid scope and code_challenge required", 400)
        answer = {"state": q.get("state", ""), "iss": self.issuer}
        if self.deny is not None:
            answer["error"] = self.deny
        else:
            code = secrets.token_urlsafe(24)
            self.codes[code] = Grant(self.redirect_uri, q["code_challenge"], q.get("nonce", ""))
            answer["code"] = code
        back = f"{self.redirect_uri}?{urlencode(answer)}"
        if self.login_page:
            link = f'<a id="continue" href="{html.escape(back)}">Continue</a>'
            return HTMLResponse(f"<!doctype html><title>Test IdP</title><p>{link}</p>")
        return RedirectResponse(back, status_code=302)

    async def token(self, request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        self.token_requests.append(form)
        if not self._client_ok(request.headers.get("authorization"), form):
            return JSONResponse({"error": "invalid_client"}, 401)
        grant = self.codes.pop(form.get("code", ""), None)  # a code works once
        if (
            grant is None
            or form.get("grant_type") != "authorization_code"
            or form.get("redirect_uri") != grant.redirect_uri
        ):
            return JSONResponse({"error": "invalid_grant"}, 400)
        verifier = form.get("code_verifier", "")
        digest = hashlib.sha256(verifier.encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant.challenge:
            return JSONResponse({"error": "invalid_grant", "error_description": "PKCE"}, 400)
        self.issued.append(self.id_token(grant.nonce))
        return JSONResponse(
            {
                "access_token": secrets.token_urlsafe(24),
                "token_type": "Bearer",
                "expires_in": 600,
                "id_token": self.issued[-1],
            }
        )

    def _client_ok(self, authorization: str | None, form: dict[str, str]) -> bool:
        if self.client_secret is None:
            return form.get("client_id") == self.client_id
        want = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        return authorization is not None and hmac.compare_digest(authorization, f"Basic {want}")

    def id_token(self, nonce: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 600,
            "nonce": nonce,
            **self.person,
            **self.extra_claims,
        }
        for name in self.drop_claims:
            claims.pop(name, None)
        if self.forge == "none":
            return _unsigned({"alg": "none", "typ": "JWT"}, claims) + "."
        if self.forge == "hs256":
            pem = self.key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            head = _unsigned({"alg": "HS256", "typ": "JWT", "kid": KID}, claims)
            return f"{head}.{_b64(hmac.new(pem, head.encode(), hashlib.sha256).digest())}"
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": KID})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", self.discovery),
                Route("/jwks", self.jwks),
                Route("/authorize", self.authorize),
                Route("/token", self.token, methods=["POST"]),
            ]
        )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


@contextlib.contextmanager
def serve(idp: TestIdp) -> Iterator[TestIdp]:
    """``idp`` on a loopback socket, its issuer set to the URL it is reached at."""
    idp.reset()
    with run_server(idp.app(), server_header=False) as url:
        idp.issuer = url.replace("127.0.0.1", "localhost")
        yield idp
