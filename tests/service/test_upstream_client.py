"""The upstream client's refusal handling on a fake transport: what one request may do to the
key pool, and that nothing leaks when an error answer breaks off (review findings)."""

from __future__ import annotations

import aiohttp
import pytest

from gateway.errors import GatewayError
from gateway.upstream.client import COOLDOWN_CAP_FACTOR, UpstreamRequest
from tests.clock import Clock
from tests.fakes import FakeResponse, FakeUpstream, SeenRequest


def chat() -> UpstreamRequest:
    return UpstreamRequest(
        method="POST",
        path="/v1/chat/completions",
        query="",
        headers=((b"content-type", b"application/json"),),
        body=b'{"model":"m"}',
        route="/v1/chat/completions",
        request_id="req-test-0001",
    )


async def test_one_request_cools_one_key_and_a_long_retry_after_is_capped() -> None:
    upstream = FakeUpstream(
        lambda req: FakeResponse(429, json={"error": {}}, headers=[("Retry-After", "86400")])
    )
    clock = Clock(1000.0)
    client = upstream.client(("a", "b", "c"), clock=clock)
    await client.start()
    try:
        resp = await client.send(chat())
        assert resp.status == 429
        resp.close()
    finally:
        await client.close()
    pool = client.pool
    states = {k: pool.state(k) for k in pool.key_ids}
    assert sorted(states.values()) == ["cooling", "healthy", "healthy"]  # two tried, one cooled
    assert len(upstream.requests) == 2
    cooled = next(k for k, v in states.items() if v == "cooling")
    clock.now += pool.cooldown_seconds * COOLDOWN_CAP_FACTOR + 1
    assert pool.state(cooled) == "healthy"  # not a day: a Retry-After may be about one model


async def test_a_403_that_breaks_off_mid_body_releases_its_key() -> None:
    def broken(req: SeenRequest) -> FakeResponse:
        resp = FakeResponse(403, headers=[("Content-Type", "application/json")])
        resp.feed(b'{"error": {"message": "')
        resp.fail()
        return resp

    upstream = FakeUpstream(broken)
    client = upstream.client(("only",))
    await client.start()
    try:
        for _ in range(3):
            with pytest.raises(GatewayError):
                await client.send(chat())
    finally:
        await client.close()
    assert client.pool.in_flight("only") == 0
    assert all(r.closed for r in upstream.responses)


async def test_no_connection_in_time_is_a_503_that_was_certainly_not_sent() -> None:
    def full(req: SeenRequest) -> FakeResponse:
        raise aiohttp.ConnectionTimeoutError("Connection timeout to host")

    upstream = FakeUpstream(full)
    client = upstream.client(("only",))
    await client.start()
    try:
        with pytest.raises(GatewayError) as info:
            await client.send(chat())
    finally:
        await client.close()
    assert info.value.status == 503
    assert info.value.headers.get("retry-after") == "1"
    assert not info.value.maybe_processed  # the SDK may retry: nothing reached the upstream
    assert client.pool.in_flight("only") == 0
