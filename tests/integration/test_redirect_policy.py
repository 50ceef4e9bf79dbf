"""Download redirects that leave the upstream's origin pass the same address policy as image_url.

A hostile upstream (the simulator behind a wrapper that answers /content with a redirect we
choose) points the gateway at a loopback server, an IPv4-mapped literal, a name resolving to
loopback, the cloud metadata address and a chain one hop too long. Each must be refused with
``upstream_redirect_refused`` before any byte reaches the target, and without telling the caller
where the upstream tried to send us.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gateway.errors import UpstreamError
from gateway.settings import UpstreamKey
from gateway.sim.app import create_sim_app
from gateway.sim.config import SimConfig
from gateway.upstream.address_policy import parse_networks
from gateway.upstream.client import UpstreamClient, UpstreamRequest
from gateway.upstream.keypool import KeyPool
from gateway.upstream.redirect_policy import AddressRefused, PolicyResolver, redirect_refused
from gateway.web.asgi import Receive, Scope, Send
from tests.conftest import Stack, make_stack
from tests.integration.test_video_content import auth, finished_video
from tests.integration.test_videos_sdk import VIDEOS
from tests.servers import run_server

BODY = b"internal bytes that must never reach a caller"


@dataclass
class Target:
    """A server on loopback standing in for something inside our network; it counts requests."""

    url: str
    port: int
    paths: list[str] = field(default_factory=list)


@pytest.fixture
def target() -> Iterator[Target]:
    seen: list[str] = []

    async def chain(request: Request) -> Response:
        # /chain/<n> is n redirects away from the file once /content has redirected here.
        seen.append(request.url.path)
        n = int(request.path_params["n"])
        if n > 1:
            return RedirectResponse(f"/chain/{n - 1}", 302)
        return Response(BODY, media_type="video/mp4")

    async def secret(request: Request) -> Response:
        seen.append(request.url.path)
        return Response(BODY, media_type="video/mp4")

    app = Starlette(routes=[Route("/chain/{n:int}", chain), Route("/secret.mp4", secret)])
    with run_server(app) as url:
        yield Target(url, int(url.rsplit(":", 1)[1]), seen)


class Hostile:
    """The simulator, except that /content answers with a redirect to ``location``."""

    def __init__(self, inner: Starlette) -> None:
        self.inner = inner
        self.location: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.location and scope["path"].endswith("/content"):
            await RedirectResponse(self.location, 302)(scope, receive, send)
            return
        await self.inner(scope, receive, send)


@dataclass
class HostileStack:
    stack: Stack
    hostile: Hostile


def _hostile_stack(redis_url: str, **upstream: object) -> Iterator[HostileStack]:
    keys = {"primary": f"sk-primary-{secrets.token_hex(12)}"}
    sim = create_sim_app(SimConfig(job_seconds=0.2, content_bytes=1000, keys=tuple(keys.values())))
    hostile = Hostile(sim)
    with (
        run_server(hostile, server_header=False) as sim_url,
        make_stack(
            redis_url, sim_url=sim_url, sim_app=sim, keys=keys, videos=VIDEOS, upstream=upstream
        ) as s,
    ):
        yield HostileStack(s, hostile)


@pytest.fixture
def hs(redis_url: str) -> Iterator[HostileStack]:
    yield from _hostile_stack(redis_url)


@pytest.fixture
def trusting(redis_url: str) -> Iterator[HostileStack]:
    yield from _hostile_stack(redis_url, trusted_networks=["127.0.0.0/8"])


async def _download(s: Stack, vid: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{s.v1}/videos/{vid}/content", headers=auth(s)) as r,
    ):
        return r.status, await r.read()


HOSTILE = {
    "loopback": "http://127.0.0.1:{port}/secret.mp4",
    "ipv4_mapped": "http://[::ffff:127.0.0.1]:{port}/secret.mp4",
    "ipv4_compatible": "http://[::127.0.0.1]:{port}/secret.mp4",
    "name_resolving_to_loopback": "http://localhost:{port}/secret.mp4",
    "hex_form_resolving_to_loopback": "http://0x7f.0.0.1:{port}/secret.mp4",
    "integer_literal": "http://2130706433:{port}/secret.mp4",
    "link_local_metadata": "http://169.254.169.254/latest/meta-data/",
    "link_local_metadata_mapped": "http://[::ffff:169.254.169.254]/latest/meta-data/",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_redirect_into_our_network_is_refused(
    hs: HostileStack, target: Target, name: str
) -> None:
    s = hs.stack
    vid, _ = finished_video(s)
    hs.hostile.location = HOSTILE[name].format(port=target.port)
    status, body = await _download(s, vid)
    _assert_refused(status, body)
    _assert_names_nothing(body, target)
    assert target.paths == []


async def test_a_chain_one_hop_too_long_is_refused_and_three_hops_are_followed(
    trusting: HostileStack, target: Target
) -> None:
    s = trusting.stack
    vid, _ = finished_video(s)
    trusting.hostile.location = f"{target.url}/chain/4"
    status, body = await _download(s, vid)
    _assert_refused(status, body)
    _assert_names_nothing(body, target)
    # /content -> 4 -> 3 -> 2 is three hops; 2 -> 1 would be the fourth and is never requested.
    assert target.paths == ["/chain/4", "/chain/3", "/chain/2"]

    target.paths.clear()
    trusting.hostile.location = f"{target.url}/chain/3"
    assert await _download(s, vid) == (200, BODY)
    assert target.paths == ["/chain/3", "/chain/2", "/chain/1"]


async def test_trusted_network_allows_the_cross_origin_loopback_redirect(
    trusting: HostileStack, target: Target
) -> None:
    s = trusting.stack
    vid, _ = finished_video(s)
    trusting.hostile.location = f"{target.url}/secret.mp4"
    assert await _download(s, vid) == (200, BODY)
    assert target.paths == ["/secret.mp4"]


async def test_credentials_in_the_location_are_refused_even_when_trusted(
    trusting: HostileStack, target: Target
) -> None:
    s = trusting.stack
    vid, _ = finished_video(s)
    trusting.hostile.location = f"http://user:pw@127.0.0.1:{target.port}/secret.mp4"
    status, body = await _download(s, vid)
    _assert_refused(status, body)
    assert target.paths == []


async def test_a_refused_redirect_releases_the_key(target: Target) -> None:
    async def content(request: Request) -> Response:
        return RedirectResponse(f"http://localhost:{target.port}/secret.mp4", 302)

    upstream = Starlette(routes=[Route("/v1/videos/task_1/content", content)])
    with run_server(upstream) as base:
        pool = KeyPool([UpstreamKey(id="k", secret="sk-test-not-real")], None, clock=time.time)
        client = UpstreamClient(base, pool, connect_timeout=2, read_timeout=5, max_connections=4)
        await client.start()
        try:
            req = UpstreamRequest(
                method="GET",
                path="/v1/videos/task_1/content",
                query="",
                headers=(),
                body=None,
                route="/v1/videos/{id}/content",
                request_id="req_test_0002",
                key_id="k",
            )
            with pytest.raises(UpstreamError) as info:
                await client.send(req, follow_redirects=True)
            assert (info.value.status, info.value.code) == (502, "upstream_redirect_refused")
        finally:
            await client.close()
    assert pool.in_flight("k") == 0
    assert target.paths == []


def _assert_refused(status: int, body: bytes) -> None:
    expected = redirect_refused()
    assert status == 502
    assert json.loads(body) == {
        "error": {
            "message": expected.message,
            "type": "api_error",
            "param": None,
            "code": "upstream_redirect_refused",
        }
    }


def _assert_names_nothing(body: bytes, target: Target) -> None:
    text = body.decode().lower()
    for leak in ("127.", "localhost", "::", "169.254", "0x7f", "2130706433", str(target.port)):
        assert leak not in text


async def test_the_resolver_exempts_only_the_upstreams_own_endpoint() -> None:
    # An operator may point base_url at an internal name; only that host and port skip the check.
    resolver = PolicyResolver(("localhost", 8080), ())
    trusting = PolicyResolver(("api.example", 443), parse_networks(["127.0.0.0/8", "::1/128"]))
    try:
        assert await resolver.resolve("localhost", 8080)
        with pytest.raises(AddressRefused):
            await resolver.resolve("localhost", 8081)
        assert await trusting.resolve("localhost", 8081)
    finally:
        await resolver.close()
        await trusting.close()
