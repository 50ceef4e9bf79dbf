"""PassThrough driven as a bare ASGI app (scope, receive and send built here) in front of an
UpstreamClient whose upstream is tests.fakes.FakeUpstream: no socket, no simulator."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway.errors import GatewayError, InvalidRequest, NotFound
from gateway.proxy.passthrough import PassThrough
from gateway.upstream.client import UpstreamClient
from gateway.upstream.routes import DEFAULT_ROUTES, RouteTable
from gateway.web.asgi import Message
from tests.fakes import FakeResponse, FakeUpstream, SeenRequest
from tests.servers import wait_for_async

CALLER_TOKEN = b"Bearer caller-token-never-forwarded"


class Caller:
    """The ASGI server's side: hands over the request body, records what the app sends, and
    reports a disconnect once ``hang_up`` is called."""

    def __init__(self, body: bytes | None = None) -> None:
        self.pending: list[Message] = []
        if body is not None:
            self.pending.append({"type": "http.request", "body": body, "more_body": False})
        self.receives = 0
        self.sent: list[Message] = []
        self._gone = asyncio.Event()

    async def receive(self) -> Message:
        self.receives += 1
        if self.pending:
            return self.pending.pop(0)
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def hang_up(self) -> None:
        self._gone.set()

    @property
    def chunks(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


def scope(method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
    headers = [(b"authorization", CALLER_TOKEN), (b"content-type", b"application/json")]
    if body is not None:
        headers.append((b"content-length", str(len(body)).encode()))
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "request_id": "req-service-0001",
    }


def proxy(client: UpstreamClient) -> PassThrough:
    return PassThrough(client, routes=RouteTable(DEFAULT_ROUTES), secrets=client.pool.secrets)


def in_flight(client: UpstreamClient) -> int:
    return sum(client.pool.in_flight(k) for k in client.pool.key_ids)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/files"),
        ("GET", "/v1/files/file-abc"),
        ("POST", "/v1/batches"),
        ("GET", "/v1/responses/resp_abc"),
        ("POST", "/v1/video/generations"),
        ("DELETE", "/v1/models/gpt-4o"),
    ],
)
async def test_a_route_outside_the_table_is_refused_before_anything_happens(
    client: UpstreamClient, upstream: FakeUpstream, method: str, path: str
) -> None:
    caller = Caller(b"{}")
    with pytest.raises(NotFound) as err:
        await proxy(client)(scope(method, path, b"{}"), caller.receive, caller.send)
    assert (err.value.status, err.value.code) == (404, "unsupported_endpoint")
    assert caller.receives == 0  # refused before the body was even read
    assert caller.sent == []
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/responses", {"model": "gpt-4o", "input": "hi"}),  # store defaults to true there
        ("/v1/responses", {"model": "gpt-4o", "input": "hi", "store": True}),
        ("/v1/chat/completions", {"model": "gpt-4o", "messages": [], "store": True}),
    ],
)
async def test_the_body_policy_forces_store_false_on_what_reaches_the_upstream(
    client: UpstreamClient, upstream: FakeUpstream, path: str, body: dict[str, Any]
) -> None:
    upstream.handler = lambda req: FakeResponse(200, json={"id": "x", "object": "response"})
    raw = json.dumps(body).encode()
    caller = Caller(raw)
    await proxy(client)(scope("POST", path, raw), caller.receive, caller.send)
    (seen,) = upstream.requests
    assert seen.path == path
    assert seen.json() == {**body, "store": False}
    # The caller's credential stays behind; the pool's key goes instead.
    assert seen.headers["authorization"] == f"Bearer {client.pool.secrets()[0]}"
    assert CALLER_TOKEN.decode() not in seen.headers.values()
    assert caller.sent[0]["status"] == 200
    assert json.loads(b"".join(caller.chunks)) == {"id": "x", "object": "response"}
    assert upstream.responses[0].released  # a whole small answer returns its connection
    assert in_flight(client) == 0


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/v1/responses",
            {"model": "m", "input": "hi", "previous_response_id": "r"},
            "previous_response_id",
        ),
        ("/v1/responses", {"model": "m", "input": "hi", "background": True}, "background"),
        ("/v1/chat/completions", {"model": "m", "messages": [{"file_id": "file-1"}]}, "file_id"),
    ],
)
async def test_a_body_naming_a_stored_object_is_refused_and_never_sent(
    client: UpstreamClient, upstream: FakeUpstream, path: str, body: dict[str, Any], param: str
) -> None:
    raw = json.dumps(body).encode()
    caller = Caller(raw)
    with pytest.raises(InvalidRequest) as err:
        await proxy(client)(scope("POST", path, raw), caller.receive, caller.send)
    assert (err.value.status, err.value.code, err.value.param) == (
        400,
        "unsupported_parameter",
        param,
    )
    assert caller.sent == []
    assert upstream.requests == []


async def test_an_upstream_error_is_normalised_redacted_and_keeps_its_request_id(
    client: UpstreamClient, upstream: FakeUpstream
) -> None:
    secret = client.pool.secrets()[0]
    upstream.handler = lambda req: FakeResponse(
        400,
        json={
            "error": {
                "message": f"model gpt-x is not available for key {secret}",
                "type": "new_api_error",
                "code": "model_not_found",
            }
        },
        headers=[("X-Oneapi-Request-Id", "20260101-upstream-42"), ("Set-Cookie", "s=1")],
    )
    raw = b'{"model":"gpt-x","messages":[]}'
    caller = Caller(raw)
    with pytest.raises(GatewayError) as err:
        await proxy(client)(scope("POST", "/v1/chat/completions", raw), caller.receive, caller.send)
    exc = err.value
    assert (exc.status, exc.code, exc.error_type) == (
        400,
        "model_not_found",
        "invalid_request_error",
    )
    assert secret not in exc.message
    assert exc.message == "model gpt-x is not available for key ***"
    assert exc.headers == {"x-upstream-request-id": "20260101-upstream-42"}
    assert not exc.maybe_processed  # a 4xx was certainly not acted on
    assert caller.sent == []  # the one error renderer sends it, not the proxy
    assert len(upstream.requests) == 1
    assert upstream.responses[0].released
    assert in_flight(client) == 0


async def test_an_upstream_5xx_on_a_post_tells_the_sdk_not_to_retry(
    client: UpstreamClient, upstream: FakeUpstream
) -> None:
    upstream.handler = lambda req: FakeResponse(
        502, b"<html>bad gateway</html>", headers=[("X-Oneapi-Request-Id", "bad id!")]
    )
    raw = b'{"model":"m","input":"x"}'
    caller = Caller(raw)
    with pytest.raises(GatewayError) as err:
        await proxy(client)(scope("POST", "/v1/embeddings", raw), caller.receive, caller.send)
    exc = err.value
    assert (exc.status, exc.code) == (502, "upstream_http_502")
    assert exc.message == "The upstream service answered HTTP 502."
    assert exc.headers == {"x-should-retry": "false"}  # an unreadable upstream id is dropped
    assert exc.maybe_processed
    assert len(upstream.requests) == 1  # never re-sent
    assert caller.sent == []


def _sse(n: int) -> bytes:
    return b'data: {"n":%d}\n\n' % n


async def test_a_streamed_answer_is_relayed_chunk_by_chunk(
    client: UpstreamClient, upstream: FakeUpstream
) -> None:
    stream = FakeResponse(
        200,
        headers=[
            ("Content-Type", "text/event-stream"),
            ("X-Oneapi-Request-Id", "20260101-upstream-43"),
            ("Set-Cookie", "session=upstream"),
            ("Server", "new-api"),
        ],
    )

    def answer(req: SeenRequest) -> FakeResponse:
        return stream

    upstream.handler = answer
    raw = b'{"model":"m","messages":[],"stream":true}'
    caller = Caller(raw)
    task = asyncio.create_task(
        proxy(client)(scope("POST", "/v1/chat/completions", raw), caller.receive, caller.send)
    )
    await wait_for_async(lambda: caller.sent, timeout=5)
    start = caller.sent[0]
    assert start["status"] == 200
    assert start["headers"] == [
        (b"content-type", b"text/event-stream"),
        (b"x-upstream-request-id", b"20260101-upstream-43"),
    ]
    for n in range(3):
        # Each chunk reaches the caller before the upstream has produced the next one.
        stream.feed(_sse(n))
        await wait_for_async(lambda n=n: len(caller.chunks) == n + 1, timeout=5)
        assert caller.sent[-1] == {"type": "http.response.body", "body": _sse(n), "more_body": True}
    stream.end()
    await asyncio.wait_for(task, 5)
    assert caller.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert caller.chunks == [_sse(0), _sse(1), _sse(2), b""]
    assert stream.closed
    assert in_flight(client) == 0


async def test_a_caller_disconnect_closes_the_upstream_response(
    client: UpstreamClient, upstream: FakeUpstream
) -> None:
    stream = FakeResponse(200, headers=[("Content-Type", "text/event-stream")])
    upstream.handler = lambda req: stream
    caller = Caller()  # a GET without a body: its receive only ever reports the disconnect
    task = asyncio.create_task(
        proxy(client)(scope("GET", "/v1/models"), caller.receive, caller.send)
    )
    stream.feed(_sse(0))
    await wait_for_async(lambda: len(caller.chunks) == 1, timeout=5)
    open_while_wanted = not stream.closed
    assert open_while_wanted
    caller.hang_up()
    await asyncio.wait_for(task, 5)
    assert stream.closed  # closed, not drained: the upstream stops producing for nobody
    assert not stream.released
    assert caller.chunks == [_sse(0)]  # and no final message: the answer was cut, not ended
    assert in_flight(client) == 0
