import json
import secrets
from typing import Any

import jwt
import pytest

from gateway.auth.middleware import AuthMiddleware
from gateway.auth.tokens import mint_token
from gateway.auth.verifier import TokenVerifier
from gateway.settings import AuthSettings


class Recorder:
    def __init__(self) -> None:
        self.called_with: dict[str, Any] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.called_with = scope
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(mw: AuthMiddleware, path: str, auth: bytes | None) -> list[dict[str, Any]]:
    headers = [(b"authorization", auth)] if auth is not None else []
    scope = {"type": "http", "path": path, "headers": headers, "method": "GET"}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await mw(scope, receive, send)
    return sent


@pytest.fixture
def secret() -> str:
    return secrets.token_urlsafe(48)


@pytest.fixture
def setup(secret: str) -> tuple[AuthMiddleware, Recorder, list[str]]:
    app, failures = Recorder(), []
    mw = AuthMiddleware(
        app,
        TokenVerifier(AuthSettings(hs256_secrets=(secret,))),
        public_paths=frozenset({"/healthz"}),
        on_failure=failures.append,
    )
    return mw, app, failures


@pytest.mark.parametrize(
    ("auth", "reason"),
    [
        (None, "missing"),
        (b"Basic abc", "missing"),
        (b"Bearer ", "missing"),
        (b"Bearer x.y", "malformed"),
    ],
)
async def test_rejections_are_uniform_401(
    setup: tuple[AuthMiddleware, Recorder, list[str]], auth: bytes | None, reason: str
) -> None:
    mw, app, failures = setup
    sent = await call(mw, "/v1/models", auth)
    assert sent[0]["status"] == 401
    assert (b"www-authenticate", b"Bearer") in sent[0]["headers"]
    assert json.loads(sent[1]["body"]) == {
        "error": {
            "message": "Invalid or missing bearer token.",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert app.called_with is None
    assert failures == [reason]


async def test_valid_token_records_principal(
    setup: tuple[AuthMiddleware, Recorder, list[str]], secret: str
) -> None:
    mw, app, failures = setup
    token = mint_token(secret, team="t1", user="u1", roles=["r"])
    sent = await call(mw, "/v1/models", b"bearer " + token.encode())
    assert sent[0]["status"] == 200
    assert app.called_with is not None
    assert app.called_with["principal"].team == "t1"
    assert app.called_with["state"]["principal"].user == "u1"
    assert failures == []


async def test_public_paths_skip_auth(setup: tuple[AuthMiddleware, Recorder, list[str]]) -> None:
    mw, app, _ = setup
    sent = await call(mw, "/healthz", None)
    assert sent[0]["status"] == 200
    assert app.called_with is not None


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
