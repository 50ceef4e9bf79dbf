import base64
import secrets
from typing import Any

import jwt
import pytest

from gateway.auth.middleware import AuthMiddleware
from gateway.auth.principal import Principal
from gateway.auth.tokens import mint_token
from gateway.auth.verifier import TokenVerifier
from gateway.observability.errors import ErrorMiddleware
from gateway.settings import AuthSettings
from gateway.web.asgi import Message

BODY_401 = (
    b'{"error":{"message":"Invalid or missing bearer token.","type":"authentication_error",'
    b'"param":null,"code":"invalid_api_key"}}'
)


class App:
    """The wrapped app: records the scope it was called with and answers 200."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})


async def call(
    mw: AuthMiddleware, scope: dict[str, Any]
) -> tuple[int | None, list[tuple[bytes, bytes]], bytes]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    # The middleware raises; the gateway's one renderer turns that into the answer.
    await ErrorMiddleware(mw, on_error=lambda exc: None)(scope, receive, send)
    if not sent:
        return None, [], b""
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    return sent[0]["status"], sent[0]["headers"], sent[1]["body"]


def http(path: str = "/v1/models", auth: bytes | None = None, **extra: Any) -> dict[str, Any]:
    headers = [(b"accept", b"*/*")]
    if auth is not None:
        headers.append((b"authorization", auth))
    return {"type": "http", "method": "GET", "path": path, "headers": headers, **extra}


@pytest.fixture
def secret() -> str:
    return secrets.token_urlsafe(48)


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
def failures() -> list[str]:
    return []


@pytest.fixture
def mw(app: App, secret: str, failures: list[str]) -> AuthMiddleware:
    return AuthMiddleware(
        app,
        TokenVerifier(AuthSettings(hs256_secrets=(secret,))),
        public_paths=frozenset({"/healthz"}),
        on_failure=failures.append,
    )


def unsigned_none(secret: str) -> bytes:
    head = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=")
    payload = jwt.encode({"team": "t", "sub": "u", "exp": 1}, secret).split(".")[1]
    return b"Bearer " + head + b"." + payload.encode() + b"."


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        pytest.param(lambda s: None, "missing", id="no-header"),
        pytest.param(lambda s: b"Basic dXNlcjpwYXNz", "missing", id="basic"),
        pytest.param(lambda s: b"Bearer", "missing", id="scheme-only"),
        pytest.param(lambda s: b"Bearer    ", "missing", id="blank-token"),
        pytest.param(
            lambda s: b"Token " + mint_token(s, team="t", user="u").encode(),
            "missing",
            id="other-scheme",
        ),
        pytest.param(lambda s: b"Bearer x.y", "malformed", id="garbled"),
        pytest.param(
            lambda s: b"Bearer " + mint_token(s, team="t", user="u", ttl_seconds=-60).encode(),
            "expired",
            id="expired",
        ),
        pytest.param(
            lambda s: (
                b"Bearer " + mint_token(secrets.token_urlsafe(48), team="t", user="u").encode()
            ),
            "bad_signature",
            id="wrong-secret",
        ),
        pytest.param(unsigned_none, "bad_algorithm", id="alg-none"),
        pytest.param(
            lambda s: b"Bearer " + mint_token(s, team="a b", user="u").encode(),
            "bad_team",
            id="bad-team",
        ),
    ],
)
async def test_rejections_are_a_uniform_401_without_calling_the_app(
    mw: AuthMiddleware, app: App, failures: list[str], secret: str, auth: Any, expected: str
) -> None:
    status, headers, body = await call(mw, http(auth=auth(secret)))
    assert status == 401
    assert body == BODY_401
    assert (b"www-authenticate", b"Bearer") in headers
    assert (b"content-type", b"application/json") in headers
    assert app.scopes == []
    assert failures == [expected]


@pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER"])
async def test_valid_token_records_the_principal(
    mw: AuthMiddleware, app: App, failures: list[str], secret: str, scheme: bytes
) -> None:
    token = mint_token(secret, team="t1", user="u1", roles=["r"])
    status, _, body = await call(mw, http(auth=scheme + b" " + token.encode()))
    assert (status, body) == (200, b"ok")
    expected = Principal(team="t1", user="u1", roles=frozenset({"r"}))
    assert [s["principal"] for s in app.scopes] == [expected]
    assert app.scopes[0]["state"]["principal"] == expected
    assert failures == []


async def test_existing_state_is_kept(mw: AuthMiddleware, app: App, secret: str) -> None:
    auth = b"Bearer " + mint_token(secret, team="t1", user="u1").encode()
    await call(mw, http(auth=auth, state={"request_id": "r-1"}))
    assert app.scopes[0]["state"]["request_id"] == "r-1"
    assert app.scopes[0]["state"]["principal"].team == "t1"


async def test_public_paths_skip_auth(mw: AuthMiddleware, app: App, failures: list[str]) -> None:
    status, _, _ = await call(mw, http("/healthz"))
    assert status == 200
    assert len(app.scopes) == 1
    assert "principal" not in app.scopes[0]
    assert failures == []
    status, _, _ = await call(mw, http("/healthz/"))  # exact match only
    assert status == 401


async def test_non_http_scopes_pass_through(
    mw: AuthMiddleware, app: App, failures: list[str]
) -> None:
    lifespan = {"type": "lifespan", "asgi": {"version": "3.0"}}
    assert await call(mw, lifespan) == (None, [], b"")
    assert app.scopes == [lifespan]
    assert failures == []


def test_mint_token_claims(secret: str) -> None:
    token = mint_token(
        secret, team="t", user="u", roles=["x"], ttl_seconds=60, issuer="i", audience="a", now=1000
    )
    c = jwt.decode(token, secret, algorithms=["HS256"], audience="a", options={"verify_exp": False})
    assert c == {
        "sub": "u",
        "team": "t",
        "roles": ["x"],
        "iat": 1000,
        "exp": 1060,
        "iss": "i",
        "aud": "a",
    }
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


async def test_minted_tokens_pass_a_matching_verifier(secret: str) -> None:
    settings = AuthSettings(
        hs256_secrets=(secret,),
        issuer="corp",
        audience="gateway",
        team_claim="org",
        roles_claim="groups",
    )
    v = TokenVerifier(settings, clock=lambda: 5000.0)
    token = mint_token(
        secret,
        team="t",
        user="u",
        roles=("r1", "r2"),
        issuer="corp",
        audience="gateway",
        team_claim="org",
        roles_claim="groups",
        now=4000,
    )
    assert await v.verify(token) == Principal(team="t", user="u", roles=frozenset({"r1", "r2"}))
