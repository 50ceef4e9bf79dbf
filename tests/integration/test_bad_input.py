"""Every bad input gets an exact status and error code, and nothing reaches the upstream."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import Stack, make_stack
from tests.rawhttp import raw_request


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def rs_stack(redis_url: str, rsa_key: rsa.RSAPrivateKey) -> Iterator[Stack]:
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with make_stack(
        redis_url,
        auth={
            "algorithms": ["RS256"],
            "public_keys": [pem.decode()],
            "hs256_secrets": [],
            "issuer": "https://idp.example",
            "audience": "gateway",
        },
    ) as s:
        yield s


def _b64(d: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


def _get(
    stack: Stack, path: str, token: str | None
) -> tuple[int, dict[str, str], dict[str, object]]:
    head = f"GET {path} HTTP/1.1\nHost: x\nConnection: close"
    if token is not None:
        head += f"\nAuthorization: Bearer {token}"
    r = raw_request(stack.url, head)
    return r.status, r.headers, r.json()


def _assert_401(stack: Stack, token: str | None) -> None:
    status, headers, body = _get(stack, "/v1/models", token)
    assert status == 401
    assert headers["www-authenticate"] == "Bearer"
    assert body == {
        "error": {
            "message": "Invalid or missing bearer token.",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert stack.sim_requests() == []


def _claims(**over: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {"sub": "alice", "team": "team-a", "iat": now, "exp": now + 600}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def test_missing_and_garbled_tokens(stack: Stack) -> None:
    _assert_401(stack, None)
    _assert_401(stack, "garbage")
    _assert_401(stack, "a.b.c")


@pytest.mark.parametrize(
    "claims",
    [
        _claims(exp=int(time.time()) - 3600),
        _claims(nbf=int(time.time()) + 3600),
        _claims(exp=None),
        _claims(team=None),
        _claims(team="../etc"),
    ],
    ids=["expired", "not-yet-valid", "no-exp", "no-team", "bad-team"],
)
def test_bad_hs256_claims(stack: Stack, claims: dict[str, object]) -> None:
    _assert_401(stack, jwt.encode(claims, stack.jwt_secret, algorithm="HS256"))


def test_wrong_secret_and_alg_none(stack: Stack) -> None:
    _assert_401(stack, jwt.encode(_claims(), "another-secret-" + "x" * 40, algorithm="HS256"))
    _assert_401(stack, _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(_claims()) + ".")


def test_wrong_issuer_and_audience(rs_stack: Stack, rsa_key: rsa.RSAPrivateKey) -> None:
    good = {"iss": "https://idp.example", "aud": "gateway"}
    status, _, _ = _get(rs_stack, "/v1/models", jwt.encode(_claims(**good), rsa_key, "RS256"))
    assert status == 200
    rs_stack.clear_sim()
    _assert_401(rs_stack, jwt.encode(_claims(iss="https://evil", aud="gateway"), rsa_key, "RS256"))
    _assert_401(rs_stack, jwt.encode(_claims(iss=good["iss"], aud="other"), rsa_key, "RS256"))


def test_hs256_signed_with_public_key_is_rejected(
    rs_stack: Stack, rsa_key: rsa.RSAPrivateKey
) -> None:
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64({"alg": "HS256", "typ": "JWT"})
    payload = _b64(_claims(iss="https://idp.example", aud="gateway"))
    import hashlib
    import hmac

    sig = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{payload}." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
    _assert_401(rs_stack, forged)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/../admin",
        "/v1/%2e%2e/admin",
        "/v1/models/a%2Fb",
        "/v1/models/a%00b",
        "/v1/models/a%5cb",
        "/v1//models",
        "/v1/models/" + "a" * 3000,
    ],
)
def test_bad_paths_are_400_and_not_forwarded(stack: Stack, path: str) -> None:
    status, _, body = _get(stack, path, stack.token())
    assert status == 400
    assert body["error"]["code"] == "invalid_path"  # type: ignore[index]
    assert stack.sim_requests() == []


def test_absolute_form_target_cannot_redirect_the_upstream(stack: Stack) -> None:
    r = raw_request(
        stack.url,
        f"GET http://evil.example/v1/models HTTP/1.1\nHost: evil.example\nConnection: close\n"
        f"Authorization: Bearer {stack.token()}",
    )
    # served from our own upstream (or refused), never fetched from the named host
    assert r.status in (200, 400)
    assert all(req["path"] == "/v1/models" for req in stack.sim_requests())


def test_unknown_prefix_is_404(stack: Stack) -> None:
    status, _, body = _get(stack, "/admin/secret", stack.token())
    assert status == 404
    assert body["error"]["code"] == "not_found"  # type: ignore[index]
    assert stack.sim_requests() == []


def test_oversized_body_is_413(redis_url: str) -> None:
    with make_stack(redis_url, server={"max_body_bytes": 4096}) as s:
        body = b"x" * 5000
        r = raw_request(
            s.url,
            f"POST /v1/chat/completions HTTP/1.1\nHost: x\nConnection: close\n"
            f"Authorization: Bearer {s.token()}\nContent-Type: application/json\n"
            f"Content-Length: {len(body)}",
            body,
        )
        assert r.status == 413
        assert r.json()["error"]["code"] == "request_too_large"
        chunked = b"1400\r\n" + b"x" * 5120 + b"\r\n0\r\n\r\n"
        r = raw_request(
            s.url,
            f"POST /v1/chat/completions HTTP/1.1\nHost: x\nConnection: close\n"
            f"Authorization: Bearer {s.token()}\nContent-Type: application/json\n"
            "Transfer-Encoding: chunked",
            chunked,
        )
        assert r.status == 413
        assert r.json()["error"]["code"] == "request_too_large"
        assert s.sim_requests() == []


def test_oversized_headers_are_431(stack: Stack) -> None:
    r = raw_request(
        stack.url,
        f"GET /v1/models HTTP/1.1\nHost: x\nConnection: close\n"
        f"Authorization: Bearer {stack.token()}\nX-Big: {'a' * 20000}",
    )
    assert r.status == 431
    assert r.json()["error"]["code"] == "request_header_fields_too_large"
    assert stack.sim_requests() == []


def test_content_length_with_transfer_encoding_is_400(stack: Stack) -> None:
    r = raw_request(
        stack.url,
        f"POST /v1/chat/completions HTTP/1.1\nHost: x\nConnection: close\n"
        f"Authorization: Bearer {stack.token()}\nContent-Length: 5\nTransfer-Encoding: chunked",
        b"0\r\n\r\n",
    )
    assert r.status == 400
    assert stack.sim_requests() == []
