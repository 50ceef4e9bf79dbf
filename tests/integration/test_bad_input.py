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
from tests.servers import wait_for


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
    assert body["error"]["code"] == "unsupported_endpoint"  # type: ignore[index]
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


# -- numbers, nesting and hosts no parser may choke on -------------------------------------------

DEEP = 100_000
HUGE = "1" + "0" * 400  # 10**400: past a float's range


def _signed(secret: str, payload: bytes) -> str:
    """HS256 over hand-written JSON: PyJWT would not encode 10**400 or NaN for us."""
    import hashlib
    import hmac

    head = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    mac = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _send(
    stack: Stack, method: str, path: str, body: bytes, token: str, host: str = "x"
) -> tuple[int, dict[str, object]]:
    r = raw_request(
        stack.url,
        f"{method} {path} HTTP/1.1\nHost: {host}\nConnection: close\n"
        f"Authorization: Bearer {token}\nContent-Type: application/json\n"
        f"Content-Length: {len(body)}",
        body,
    )
    return r.status, r.json()


@pytest.mark.parametrize(
    "times",
    [
        f'"exp":{HUGE}',
        '"exp":1e400',
        '"exp":-1e400',
        '"exp":NaN',
        '"exp":"nan"',
        '"exp":-1',
        f'"exp":{int(time.time()) + 600},"iat":{HUGE}',
        f'"exp":{int(time.time()) + 600},"nbf":{HUGE}',
        f'"exp":{int(time.time()) + 600},"nbf":1e400',
        f'"exp":{int(time.time()) + 600},"iat":"Infinity"',
    ],
    ids=[
        "exp-10e400",
        "exp-1e400",
        "exp--1e400",
        "exp-NaN",
        "exp-nan-string",
        "exp-negative",
        "iat-10e400",
        "nbf-10e400",
        "nbf-1e400",
        "iat-infinity-string",
    ],
)
def test_validly_signed_tokens_with_absurd_times_are_401(stack: Stack, times: str) -> None:
    payload = f'{{"sub":"alice","team":"team-a",{times}}}'.encode()
    _assert_401(stack, _signed(stack.jwt_secret, payload))


def test_the_hand_signed_token_passes_when_its_times_are_sane(stack: Stack) -> None:
    # What makes the 401s above mean something: the same construction with sane times works.
    payload = f'{{"sub":"alice","team":"team-a","exp":{int(time.time()) + 600}}}'.encode()
    status, _, _ = _get(stack, "/v1/models", _signed(stack.jwt_secret, payload))
    assert status == 200


@pytest.mark.parametrize("method", ["PATCH", "PUT"])
@pytest.mark.parametrize(
    "value", [HUGE, "-" + HUGE, "1e400", "-1e400", "NaN", '"nan"', '"' + "9" * 10_000 + '"']
)
def test_admin_limits_past_any_range_are_400(stack: Stack, method: str, value: str) -> None:
    admin = stack.token(roles=(stack.settings.auth.admin_role,))
    body = f'{{"spend_per_month":{value}}}'.encode()
    status, doc = _send(stack, method, "/admin/v1/teams/team-a/limits", body, admin)
    assert status == 400
    assert doc["error"]["code"] == "invalid_value"  # type: ignore[index]
    assert doc["error"]["param"] == "spend_per_month"  # type: ignore[index]
    status, doc = _send(stack, "GET", "/admin/v1/teams/team-a", b"", admin)
    assert status == 200
    assert doc["overrides"] == {}  # nothing was stored


@pytest.mark.parametrize(
    ("method", "path", "admin", "code"),
    [
        ("POST", "/v1/videos", False, "invalid_json"),
        # 100,000 brackets are more values than an admin body may hold: refused unparsed.
        ("PATCH", "/admin/v1/teams/team-a/limits", True, "request_too_complex"),
        ("PUT", "/admin/v1/teams/team-a/limits", True, "request_too_complex"),
    ],
)
@pytest.mark.parametrize(
    "body",
    [b"[" * DEEP + b"]" * DEEP, b'{"a":' * DEEP + b"1" + b"}" * DEEP],
    ids=["deep-array", "deep-object"],
)
def test_json_nested_100000_deep_is_400(
    stack: Stack, method: str, path: str, admin: bool, code: str, body: bytes
) -> None:
    token = stack.token(roles=(stack.settings.auth.admin_role,) if admin else ())
    status, doc = _send(stack, method, path, body, token)
    assert status == 400
    assert doc["error"]["code"] == code  # type: ignore[index]
    assert stack.sim_requests() == []


def test_duplicate_host_headers_are_400(stack: Stack) -> None:
    r = raw_request(
        stack.url,
        f"GET /v1/models HTTP/1.1\nHost: x\nHost: evil.example\nConnection: close\n"
        f"Authorization: Bearer {stack.token()}",
    )
    assert r.status == 400
    assert r.json() == {
        "error": {
            "message": "Duplicate Host headers.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_request",
        }
    }
    assert stack.sim_requests() == []


def test_video_urls_start_with_the_public_base_url_whatever_the_host(redis_url: str) -> None:
    from gateway.sim.config import SimConfig

    public = "https://gateway.example.com/ai"
    with make_stack(
        redis_url,
        server={"public_base_url": public + "/"},
        sim=SimConfig(job_seconds=0),
        videos={"poll_interval_seconds": 0},
    ) as s:
        evil = "evil.example\nX-Forwarded-Host: evil.example\nForwarded: host=evil.example"
        status, video = _send(s, "POST", "/v1/videos", b'{"prompt":"a cat"}', s.token(), evil)
        assert status == 200

        def completed() -> bool:
            nonlocal status, video
            if video["status"] != "completed":
                status, video = _send(s, "GET", f"/v1/videos/{video['id']}", b"", s.token(), evil)
                assert status == 200
            return video["status"] == "completed"

        wait_for(completed, timeout=10, interval=0)
        assert video["video"]["url"] == f"{public}/v1/videos/{video['id']}/content"  # type: ignore[index]
        status, page = _send(s, "GET", "/v1/videos", b"", s.token(), evil)
        assert status == 200
        urls = [v["video"]["url"] for v in page["data"]]  # type: ignore[attr-defined]
        assert urls == [f"{public}/v1/videos/{video['id']}/content"]


@pytest.mark.parametrize(
    "suffix", ["%2Fcontent", "%2fcontent", "%2F..%2Fother", "%5Ccontent", "/%2e%2e/x"]
)
def test_encoded_slash_in_a_video_id_is_400(stack: Stack, suffix: str) -> None:
    video = "video_" + "0" * 32
    status, _, body = _get(stack, f"/v1/videos/{video}{suffix}", stack.token())
    assert status == 400
    assert body["error"]["code"] == "invalid_path"  # type: ignore[index]
    assert stack.sim_requests("/") == []


def test_encoded_slash_in_an_admin_path_is_400(stack: Stack) -> None:
    admin = stack.token(team="ops", roles=("gateway-admin",))
    status, _, body = _get(stack, "/admin/v1/jobs/video_1%2F..", admin)
    assert (status, body["error"]["code"]) == (400, "invalid_path")  # type: ignore[index]
