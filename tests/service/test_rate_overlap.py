"""The rate decision of a forwarded route overlaps the request's own work: RateLimitMiddleware
in front of PassThrough (on tests.fakes.FakeUpstream), with a rate check whose Redis answer
this test hands over when it chooses. Nothing reaches the upstream before the decision, a
refusal outranks any error found meanwhile, and a decision nobody awaited is still counted."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway.auth.principal import Principal
from gateway.errors import InvalidRequest, QuotaExceeded, StoreUnavailable
from gateway.proxy.passthrough import PassThrough
from gateway.quota.middleware import RATE_DECISION, RateLimitMiddleware
from gateway.upstream.client import UpstreamClient
from gateway.upstream.routes import DEFAULT_ROUTES, RouteTable
from gateway.web.asgi import Message
from tests.fakes import FakeUpstream
from tests.servers import wait_for_async

ALICE = Principal(team="team-a", user="alice", roles=frozenset())
HEADERS = [(b"x-ratelimit-limit-requests", b"3"), (b"x-ratelimit-remaining-requests", b"2")]
CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


class HeldCheck:
    """A rate decision under way, answered when the test says so."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[list[tuple[bytes, bytes]]] = (
            asyncio.get_running_loop().create_future()
        )
        self.awaited = 0
        self.forgotten = False
        self.decided = False  # the round trip is still out

    async def admitted(self) -> list[tuple[bytes, bytes]]:
        self.awaited += 1
        return await asyncio.shield(self.answer)

    def forget(self) -> None:
        self.forgotten = True


class HeldRate:
    def __init__(self) -> None:
        self.started: list[tuple[str, HeldCheck]] = []

    def start(self, team: str, key: object = None) -> HeldCheck:
        check = HeldCheck()
        self.started.append((team, check))
        return check


class HeldQuota:
    def __init__(self) -> None:
        self.rate = HeldRate()


class Caller:
    """The server's side: the body arrives once the test sends it."""

    def __init__(self) -> None:
        self.bodies: asyncio.Queue[bytes] = asyncio.Queue()
        self.sent: list[Message] = []
        self.gone = asyncio.Event()

    async def receive(self) -> Message:
        body = asyncio.ensure_future(self.bodies.get())
        gone = asyncio.ensure_future(self.gone.wait())
        done, _ = await asyncio.wait({body, gone}, return_when=asyncio.FIRST_COMPLETED)
        body.cancel()
        gone.cancel()
        if body in done:
            return {"type": "http.request", "body": body.result(), "more_body": False}
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)


def chat_scope(body: bytes = CHAT) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "request_id": "req-overlap-0001",
        "principal": ALICE,
    }


def gateway(client: UpstreamClient, quota: HeldQuota) -> RateLimitMiddleware:
    proxy = PassThrough(client, routes=RouteTable(DEFAULT_ROUTES), secrets=client.pool.secrets)
    return RateLimitMiddleware(
        proxy,
        quota=quota,  # type: ignore[arg-type]
        public_paths=(),
        deferred=proxy.meters,
        overlapped=proxy.forwards,
    )


async def test_the_decision_leaves_before_the_body_and_the_upstream_waits_for_it(
    client: UpstreamClient, upstream: FakeUpstream
) -> None:
    quota, caller = HeldQuota(), Caller()
    task = asyncio.ensure_future(gateway(client, quota)(chat_scope(), caller.receive, caller.send))
    await wait_for_async(lambda: len(quota.rate.started) == 1, message="the rate check to start")
    ((team, check),) = quota.rate.started
    assert team == "team-a"
    caller.bodies.put_nowait(CHAT)  # the body arrives after the check has left
    await wait_for_async(lambda: check.awaited == 1, message="the app to wait for the decision")
    assert upstream.requests == []  # body read and checked; nothing sent before the decision
    check.answer.set_result(HEADERS)
    await task
    assert len(upstream.requests) == 1
    start = caller.sent[0]
    assert start["status"] == 200
    assert start["headers"][-2:] == HEADERS  # the decision's headers on the answer
    assert check.forgotten  # called on the way out; a no-op for an awaited decision


async def test_a_late_refusal_sends_nothing_upstream(
    client: UpstreamClient, upstream: FakeUpstream
) -> None:
    quota, caller = HeldQuota(), Caller()
    caller.bodies.put_nowait(CHAT)
    task = asyncio.ensure_future(gateway(client, quota)(chat_scope(), caller.receive, caller.send))
    await wait_for_async(lambda: quota.rate.started != [], message="the rate check to start")
    check = quota.rate.started[0][1]
    await wait_for_async(lambda: check.awaited == 1, message="the app to wait for the decision")
    refusal = QuotaExceeded("Team 'team-a' has reached its limit.", code="rate_limit_exceeded")
    check.answer.set_exception(refusal)
    with pytest.raises(QuotaExceeded) as err:
        await task
    assert err.value is refusal
    assert upstream.requests == []
    assert caller.sent == []


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (QuotaExceeded("over", code="rate_limit_exceeded"), QuotaExceeded),  # refusal first
        (StoreUnavailable(), StoreUnavailable),  # Redis down, failing closed
        (HEADERS, InvalidRequest),  # admitted: the body's own error stands
    ],
)
async def test_a_refusal_outranks_an_error_found_in_the_body(
    client: UpstreamClient,
    upstream: FakeUpstream,
    outcome: Exception | list[tuple[bytes, bytes]],
    expected: type[Exception],
) -> None:
    quota, caller = HeldQuota(), Caller()
    caller.bodies.put_nowait(b"{not json")
    task = asyncio.ensure_future(
        gateway(client, quota)(chat_scope(b"{not json"), caller.receive, caller.send)
    )
    await wait_for_async(lambda: quota.rate.started != [], message="the rate check to start")
    check = quota.rate.started[0][1]
    # The body's error is found while the decision is still out: the middleware waits for it.
    await wait_for_async(lambda: check.awaited == 1, message="the middleware to await the decision")
    if isinstance(outcome, Exception):
        check.answer.set_exception(outcome)
    else:
        check.answer.set_result(outcome)
    with pytest.raises(expected):
        await task
    assert upstream.requests == []


async def test_a_caller_gone_before_its_body_leaves_the_decision_to_be_counted(
    client: UpstreamClient, upstream: FakeUpstream
) -> None:
    quota, caller = HeldQuota(), Caller()
    caller.gone.set()
    await gateway(client, quota)(chat_scope(), caller.receive, caller.send)
    check = quota.rate.started[0][1]
    assert check.awaited == 0
    assert check.forgotten
    assert upstream.requests == []
    assert caller.sent == []


@pytest.mark.parametrize(
    ("method", "path", "headers", "overlapped"),
    [
        ("POST", "/v1/chat/completions", [(b"content-length", b"65536")], True),
        ("GET", "/v1/models", [], True),
        ("GET", "/v1/models/gpt-4o", [], True),
        ("POST", "/v1/files", [], False),  # refused by the table: checked first, as before
        ("GET", "/v1/gateway/quota", [], False),  # the gateway's own routes never overlap
        ("POST", "/v1/videos", [], False),
        # The caller is not asked for, nor made to send, a large body before its decision.
        ("POST", "/v1/chat/completions", [(b"content-length", b"65537")], False),
        ("POST", "/v1/chat/completions", [(b"transfer-encoding", b"chunked")], False),
        ("POST", "/v1/chat/completions", [(b"expect", b"100-continue")], False),
        ("POST", "/v1/chat/completions", [(b"content-length", b"12x")], False),
    ],
)
async def test_only_forwarded_routes_with_small_bodies_overlap(
    client: UpstreamClient,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    overlapped: bool,
) -> None:
    proxy = PassThrough(client, routes=RouteTable(DEFAULT_ROUTES), secrets=client.pool.secrets)
    assert proxy.forwards({"method": method, "path": path, "headers": headers}) is overlapped


async def test_the_decision_is_in_the_scope_only_while_overlapped(
    client: UpstreamClient,
) -> None:
    seen: list[object] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope.get(RATE_DECISION))

    quota = HeldQuota()
    mw = RateLimitMiddleware(
        app,
        quota=quota,  # type: ignore[arg-type]
        public_paths=(),
        overlapped=lambda s: True,
    )
    await mw(chat_scope(), Caller().receive, Caller().send)
    assert seen == [quota.rate.started[0][1]]
