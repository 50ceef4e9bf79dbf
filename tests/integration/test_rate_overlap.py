"""A forwarded call's rate check leaves for Redis as soon as the caller is known, and the
gateway reads and checks the body during the round trip; nothing goes upstream before the
decision, and over the rate the answer is 429 whatever the body holds. Real sockets, a real
Redis, the simulator; metering is off, so the rate script decides alone."""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx2
import pytest

from gateway.dev.embedded_redis import RedisProcess
from tests.conftest import Stack, make_stack
from tests.rawhttp import RawResponse, raw_request
from tests.servers import wait_for

RPM = 3
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def team() -> str:
    return "o-" + secrets.token_hex(4)


@pytest.fixture
def stack(redis_url: str, team: str) -> Iterator[Stack]:
    teams = {"default": {}, team: {"requests_per_minute": RPM}}
    with make_stack(redis_url, teams=teams, pricing={"enabled": False}) as s:
        yield s


def used(stack: Stack, team: str) -> int:
    """The team's requests in the minute, read as an admin (not counted against the team)."""
    admin = stack.token(team="ops", roles=("gateway-admin",))
    doc = httpx2.get(
        f"{stack.url}/admin/v1/teams/{team}", headers={"Authorization": f"Bearer {admin}"}
    ).json()
    return int(doc["limits"]["requests_per_minute"]["used"])


def head_only(stack: Stack, head: str) -> RawResponse:
    """Send a request's head and no body; what the gateway answers without waiting for it."""
    return raw_request(stack.url, head.replace("\r\n", "\n").rstrip("\n"))


def chat_head(token: str, length: int, *extra: str) -> str:
    return (
        "POST /v1/chat/completions HTTP/1.1\r\n"
        f"Host: gateway\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n"
        + "".join(f"{line}\r\n" for line in extra)
        + "\r\n"
    )


def post(stack: Stack, team: str, body: bytes) -> httpx2.Response:
    headers = {
        "Authorization": f"Bearer {stack.token(team=team)}",
        "Content-Type": "application/json",
    }
    return httpx2.post(stack.v1 + "/chat/completions", content=body, headers=headers)


def test_the_check_is_decided_before_the_body_arrives(stack: Stack, team: str) -> None:
    body = json.dumps(CHAT).encode()
    head = chat_head(stack.token(team=team), len(body), "Connection: close")
    parts = urlsplit(stack.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as s:
        s.sendall(head.encode())
        # Counted in Redis while the body has not even been sent.
        wait_for(lambda: used(stack, team) == 1, message="the request counted before its body")
        assert stack.sim_requests("/v1/chat") == []
        s.sendall(body)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head_out, _, _ = answer.partition(b"\r\n\r\n")
    lines = head_out.decode("latin-1").split("\r\n")
    assert lines[0].split()[1] == "200"
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert headers["x-ratelimit-limit-requests"] == str(RPM)
    assert headers["x-ratelimit-remaining-requests"] == str(RPM - 1)
    assert len(stack.sim_requests("/v1/chat")) == 1
    assert used(stack, team) == 1


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),  # JSON, but not an object
    ],
)
def test_over_the_rate_a_bad_body_is_429_and_under_it_400(
    stack: Stack, team: str, body: bytes, code: str
) -> None:
    first = post(stack, team, body)
    assert first.status_code == 400  # under the rate: the body's own error
    assert first.json()["error"]["code"] == code
    for _ in range(RPM - 1):
        assert post(stack, team, json.dumps(CHAT).encode()).status_code == 200
    over = post(stack, team, body)
    assert over.status_code == 429
    assert over.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(over.headers["retry-after-ms"]) > 0
    assert len(stack.sim_requests("/v1/chat")) == RPM - 1
    assert used(stack, team) == RPM


def test_over_the_rate_a_free_route_is_refused_too(stack: Stack, team: str) -> None:
    token = stack.token(team=team)
    for _ in range(RPM):
        assert (
            raw_request(stack.url, f"GET /v1/models HTTP/1.1\nAuthorization: Bearer {token}")
        ).status == 200
    over = raw_request(stack.url, f"GET /v1/models HTTP/1.1\nAuthorization: Bearer {token}")
    assert over.status == 429
    assert over.json()["error"]["code"] == "rate_limit_exceeded"
    assert len(stack.sim_requests("/v1/models")) == RPM


def test_a_caller_gone_before_its_body_is_still_counted(stack: Stack, team: str) -> None:
    head = chat_head(stack.token(team=team), 100)
    parts = urlsplit(stack.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as s:
        s.sendall(head.encode())
        wait_for(lambda: used(stack, team) == 1, message="the request counted before its body")
    # The decision nobody awaited is judged when Redis answers: counted, never logged as lost.
    wait_for(
        lambda: stack.metric("gateway_quota_decisions_total", team=team, result="allowed") == 1,
        message="the decision counted",
    )
    assert stack.sim_requests("/v1/chat") == []


@pytest.mark.parametrize(
    ("length", "extra"),
    [
        (500_000, ("Expect: 100-continue",)),  # never told to go on
        (500_000, ()),  # a large body is not read first
        (200, ("Expect: 100-continue",)),
    ],
)
def test_over_the_rate_the_429_does_not_wait_for_a_large_or_expected_body(
    stack: Stack, team: str, length: int, extra: tuple[str, ...]
) -> None:
    for _ in range(RPM):
        assert post(stack, team, json.dumps(CHAT).encode()).status_code == 200
    r = head_only(stack, chat_head(stack.token(team=team), length, *extra))
    assert r.status == 429
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert len(stack.sim_requests("/v1/chat")) == RPM


def test_with_redis_known_down_the_503_does_not_wait_for_the_body(team: str) -> None:
    redis = RedisProcess().start()
    try:
        teams = {"default": {}, team: {"requests_per_minute": RPM}}
        with make_stack(
            redis.url, teams=teams, pricing={"enabled": False}, quota={"rate_fail_open": False}
        ) as s:
            assert post(s, team, json.dumps(CHAT).encode()).status_code == 200
            redis.stop()
            # The first request that finds Redis gone opens the breaker...
            assert post(s, team, json.dumps(CHAT).encode()).status_code == 503
            # ...after which a check is decided at once, before any body is read.
            r = head_only(s, chat_head(s.token(team=team), 200))
            assert r.status == 503
            assert r.json()["error"]["code"] == "service_unavailable"
            assert len(s.sim_requests("/v1/chat")) == 1
    finally:
        redis.stop()
