"""Downloads through the gateway: ranges, redirects, aborts on either side, and large bodies."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gateway.settings import UpstreamKey
from gateway.sim.app import content_bytes
from gateway.sim.config import SimConfig
from gateway.upstream.client import UpstreamClient, UpstreamRequest
from gateway.upstream.keypool import KeyPool
from tests.conftest import Stack, make_stack
from tests.integration.test_videos_sdk import VIDEOS, upstream_job
from tests.servers import run_server, wait_for_async

SIZE = 3_000_000


@pytest.fixture
def stack(redis_url: str) -> Iterator[Stack]:
    sim = SimConfig(job_seconds=0.2, content_bytes=SIZE)
    with make_stack(redis_url, sim=sim, videos=VIDEOS) as s:
        yield s


def finished_video(stack: Stack) -> tuple[str, str]:
    with openai.OpenAI(base_url=stack.v1, api_key=stack.token()) as c:
        video = c.videos.create_and_poll(prompt="p", poll_interval_ms=50)
    assert video.status == "completed"
    sim_job, _ = upstream_job(stack, video.id)
    return video.id, sim_job.id


def auth(stack: Stack, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.token()}", **extra}


async def test_range_and_headers(stack: Stack) -> None:
    vid, upstream_id = finished_video(stack)
    url = f"{stack.v1}/videos/{vid}/content"
    async with aiohttp.ClientSession() as s:
        async with s.get(url, headers=auth(stack, Range="bytes=1000-1999")) as r:
            assert r.status == 206
            assert r.headers["content-range"] == f"bytes 1000-1999/{SIZE}"
            assert await r.read() == content_bytes(upstream_id, 1000, 2000)
            etag = r.headers["etag"]
        async with s.get(url, headers=auth(stack)) as r:
            assert r.status == 200
            assert r.headers["content-type"] == "video/mp4"
            assert r.headers["content-length"] == str(SIZE)
            assert r.headers["cache-control"] == "private, no-store"
            assert r.headers["content-disposition"] == f'attachment; filename="{vid}.mp4"'
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["last-modified"]
            assert upstream_id not in str(r.headers)
            assert "set-cookie" not in r.headers
            assert await r.read() == content_bytes(upstream_id, 0, SIZE)
        async with s.get(url, headers=auth(stack, Range="bytes=0-9", **{"If-Range": etag})) as r:
            assert r.status == 206
        async with s.get(url, headers=auth(stack, Range=f"bytes={SIZE}-")) as r:
            assert r.status == 416


async def test_redirect_is_followed_by_the_gateway(stack: Stack) -> None:
    vid, upstream_id = finished_video(stack)
    stack.sim_app.state.sim.add_fault(kind="content_redirect")
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{stack.v1}/videos/{vid}/content", headers=auth(stack), allow_redirects=False) as r,
    ):
        assert r.status == 200
        assert "location" not in r.headers
        assert await r.read() == content_bytes(upstream_id, 0, SIZE)
    followed = stack.sim_requests("/files/")
    assert [f["path"] for f in followed] == [f"/files/{upstream_id}.mp4"]


async def test_cross_origin_redirect_never_carries_our_key() -> None:
    seen: dict[str, str] = {}

    async def cdn_file(request: Request) -> Response:
        seen.update(request.headers)
        return Response(b"x" * 10, media_type="video/mp4")

    with run_server(Starlette(routes=[Route("/f.mp4", cdn_file)])) as cdn:

        async def content(request: Request) -> Response:
            return RedirectResponse(cdn + "/f.mp4", 302)

        upstream = Starlette(routes=[Route("/v1/videos/task_1/content", content)])
        with run_server(upstream) as base:
            pool = KeyPool([UpstreamKey(id="k", secret="sk-never-leaves")], None, clock=time.time)
            # The CDN is on loopback like everything here; operators trust such a network.
            client = UpstreamClient(
                base,
                pool,
                connect_timeout=2,
                read_timeout=5,
                max_connections=4,
                trusted_networks=("127.0.0.0/8",),
            )
            await client.start()
            try:
                req = UpstreamRequest(
                    method="GET",
                    path="/v1/videos/task_1/content",
                    query="",
                    headers=((b"range", b"bytes=0-9"),),
                    body=None,
                    route="/v1/videos/{id}/content",
                    request_id="req_test_0001",
                    key_id="k",
                )
                resp = await client.send(req, follow_redirects=True)
                assert (resp.status, await resp.read()) == (200, b"x" * 10)
                resp.close()
            finally:
                await client.close()
    assert "authorization" not in seen
    assert seen["range"] == "bytes=0-9"
    assert pool.in_flight("k") == 0


async def test_upstream_breaking_mid_download_aborts_the_caller(stack: Stack) -> None:
    vid, _ = finished_video(stack)
    stack.sim_app.state.sim.add_fault(kind="drop", path_prefix="/v1/videos")

    async def download() -> None:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{stack.v1}/videos/{vid}/content", headers=auth(stack)) as r,
        ):
            assert r.status == 200
            await r.read()

    with pytest.raises(aiohttp.ClientPayloadError):
        await download()


async def test_caller_abort_closes_the_upstream_download(redis_url: str) -> None:
    sim = SimConfig(job_seconds=0.2, content_bytes=2 * 1024**3)
    with make_stack(redis_url, sim=sim, videos=VIDEOS) as s:
        vid, _ = finished_video(s)
        async with aiohttp.ClientSession() as session:
            resp = await session.get(f"{s.v1}/videos/{vid}/content", headers=auth(s))
            assert resp.status == 200
            await resp.content.readexactly(1024 * 1024)
            resp.close()  # hang up with almost 2 GiB to go
        await wait_for_async(
            lambda: s.sim_app.state.sim.aborted >= 1,
            timeout=1,
            interval=0.02,
            message="the upstream download kept running past 1 s",
        )


def test_streaming_200_mb_through_the_sdk(redis_url: str) -> None:
    size = 200 * 1024 * 1024
    sim = SimConfig(job_seconds=0.2, content_bytes=size)
    with make_stack(redis_url, sim=sim, videos=VIDEOS) as s:
        vid, upstream_id = finished_video(s)
        got, want = hashlib.sha256(), hashlib.sha256()
        n = 0
        with (
            openai.OpenAI(base_url=s.v1, api_key=s.token()) as c,
            c.videos.with_streaming_response.download_content(vid) as resp,
        ):
            for chunk in resp.iter_bytes(1 << 20):
                got.update(chunk)
                n += len(chunk)
        for pos in range(0, size, 16 << 20):
            want.update(content_bytes(upstream_id, pos, min(size, pos + (16 << 20))))
        assert n == size
        assert got.hexdigest() == want.hexdigest()


def test_two_keys_each_job_uses_its_own(redis_url: str) -> None:
    sim = SimConfig(job_seconds=0.2, content_bytes=1000)
    with (
        make_stack(redis_url, key_ids=("primary", "secondary"), sim=sim, videos=VIDEOS) as s,
        openai.OpenAI(base_url=s.v1, api_key=s.token()) as c,
    ):
        ids = [c.videos.create(prompt=f"p{i}").id for i in range(6)]
        by_key: dict[str, list[Any]] = {}
        for vid in ids:
            done = c.videos.poll(vid, poll_interval_ms=50)
            assert done.status == "completed"
            assert len(c.videos.download_content(vid).read()) == 1000
            sim_job, record = upstream_job(s, vid)
            by_key.setdefault(record.key_id, []).append(sim_job.id)
        assert set(by_key) == {"primary", "secondary"}
        for key_id, upstream_ids in by_key.items():
            for uid in upstream_ids:
                used = {r["key"] for r in s.sim_requests(f"/v1/videos/{uid}")}
                assert used == {s.keys[key_id]}


async def test_head_answers_the_headers_and_stops_the_upstream_download(redis_url: str) -> None:
    """Starlette routes HEAD with GET: relaying the body for the server to throw away pulled
    the whole video from the upstream for each empty answer. Now the headers leave, and the
    upstream download is closed at once (2 GiB: a relay would take seconds)."""
    sim = SimConfig(job_seconds=0.2, content_bytes=2 * 1024**3)
    with make_stack(redis_url, sim=sim, videos=VIDEOS) as s:
        vid, _ = finished_video(s)
        before = s.metric("gateway_content_bytes_total")
        async with aiohttp.ClientSession() as session:
            for n in (1, 2):
                async with session.head(f"{s.v1}/videos/{vid}/content", headers=auth(s)) as r:
                    assert r.status == 200
                    assert r.headers["content-length"] == str(2 * 1024**3)
                    assert r.headers["content-disposition"] == f'attachment; filename="{vid}.mp4"'
                    assert await r.read() == b""
                await wait_for_async(
                    lambda n=n: s.sim_app.state.sim.aborted >= n,
                    timeout=1,
                    interval=0.02,
                    message="the upstream download kept running after a HEAD",
                )
        assert s.metric("gateway_content_bytes_total") == before
