"""The simulator on a real socket: it must behave like Crazyrouter where the gateway cares."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from gateway.sim.app import content_bytes, create_sim_app
from gateway.sim.config import SimConfig
from tests.servers import run_server

KEY, OTHER = "sk-sim-test-one", "sk-sim-test-two"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["page", "envelope", "openai"])
def sim(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any, Clock]]:
    clock = Clock()
    app = create_sim_app(
        SimConfig(keys=(KEY, OTHER), shape=request.param, job_seconds=10, content_bytes=300_000),
        clock=clock,
    )
    with run_server(app) as url:
        yield url, app, clock


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def status_of(body: dict[str, Any]) -> str:
    return str(body["data"]["status"] if "data" in body else body["status"]).lower()


def job_id(body: dict[str, Any]) -> str:
    return str(body["data"]["id"] if "data" in body else body["id"])


async def test_video_lifecycle_in_each_shape(sim: tuple[str, Any, Clock]) -> None:
    url, app, clock = sim
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/videos", headers=auth(), json={"prompt": "p"}) as r:
            assert r.status == 400
            assert (await r.json())["code"] == "invalid_request"
        form = aiohttp.FormData({"model": "sora-2", "prompt": "a cat", "seconds": "8"})
        async with s.post(url + "/v1/videos", headers=auth(), data=form) as r:
            assert r.status == 200
            assert "sim_session" in r.headers["set-cookie"]
            assert r.headers["x-oneapi-request-id"]
            vid = job_id(await r.json())
        clock.now = 5
        async with s.get(f"{url}/v1/videos/{vid}", headers=auth()) as r:
            assert status_of(await r.json()) in ("processing", "in_progress")
        async with s.get(f"{url}/v1/videos/{vid}/content", headers=auth()) as r:
            assert r.status == 400
        clock.now = 11
        async with s.get(f"{url}/v1/videos/{vid}", headers=auth()) as r:
            assert status_of(await r.json()) in ("completed", "success")
        # a job belongs to the key that created it
        async with s.get(f"{url}/v1/videos/{vid}", headers=auth(OTHER)) as r:
            assert r.status == 400
            assert await r.json() == {
                "code": "task_not_exist",
                "message": "task_not_exist",
                "data": None,
            }
        async with s.get(f"{url}/v1/videos/{vid}/content", headers=auth()) as r:
            assert r.status == 200
            assert r.headers["content-length"] == "300000"
            assert await r.read() == content_bytes(vid, 0, 300_000)
        async with s.post(
            f"{url}/v1/videos/{vid}/remix", headers=auth(), json={"prompt": "again"}
        ) as r:
            assert r.status == 200
            assert job_id(await r.json()) != vid
    recorded = app.state.sim.requests_for("/v1/videos")
    assert recorded[1]["form"] == {"model": "sora-2", "prompt": "a cat", "seconds": "8"}
    assert recorded[0]["json"] == {"prompt": "p"}
    assert recorded[0]["key"] == KEY


async def test_ranges_and_variants(sim: tuple[str, Any, Clock]) -> None:
    url, _, clock = sim
    async with aiohttp.ClientSession() as s:
        async with s.post(
            url + "/v1/videos", headers=auth(), json={"model": "m", "prompt": "x"}
        ) as r:
            vid = job_id(await r.json())
        clock.now = 20
        content = f"{url}/v1/videos/{vid}/content"
        async with s.get(content, headers={**auth(), "Range": "bytes=1000-1999"}) as r:
            assert r.status == 206
            assert r.headers["content-range"] == "bytes 1000-1999/300000"
            assert await r.read() == content_bytes(vid, 1000, 2000)
            etag = r.headers["etag"]
        async with s.get(content, headers={**auth(), "Range": "bytes=0-9", "If-Range": etag}) as r:
            assert r.status == 206
        async with s.get(
            content, headers={**auth(), "Range": "bytes=0-9", "If-Range": '"old"'}
        ) as r:
            assert r.status == 200
        async with s.get(content, headers={**auth(), "Range": "bytes=999999-"}) as r:
            assert r.status == 416
        async with s.get(content + "?variant=thumbnail", headers=auth()) as r:
            assert r.status == 200
            assert len(await r.read()) == 2048
        async with s.get(content + "?variant=spritesheet", headers=auth()) as r:
            assert r.status == 404
            assert (await r.json())["code"] == "variant_not_found"


async def test_failing_and_never_ending_jobs(sim: tuple[str, Any, Clock]) -> None:
    url, _, clock = sim
    async with aiohttp.ClientSession() as s:
        ids = []
        for prompt in ("SIMFAIL please", "SIMNEVER please"):
            async with s.post(
                url + "/v1/videos", headers=auth(), json={"model": "m", "prompt": prompt}
            ) as r:
                ids.append(job_id(await r.json()))
        clock.now = 1e6
        async with s.get(f"{url}/v1/videos/{ids[0]}", headers=auth()) as r:
            assert status_of(await r.json()) in ("failed", "failure")
        async with s.get(f"{url}/v1/videos/{ids[1]}", headers=auth()) as r:
            assert status_of(await r.json()) in ("processing", "in_progress")


async def test_large_content_streams_intact() -> None:
    size = 50 * 1024 * 1024
    clock = Clock()
    app = create_sim_app(SimConfig(keys=(KEY,), job_seconds=1, content_bytes=size), clock=clock)
    with run_server(app) as url:
        async with aiohttp.ClientSession() as s:
            async with s.post(url + "/v1/videos", headers=auth(), json={"model": "m"}) as r:
                vid = job_id(await r.json())
            clock.now = 2
            got, expected = hashlib.sha256(), hashlib.sha256()
            async with s.get(f"{url}/v1/videos/{vid}/content", headers=auth()) as r:
                async for chunk in r.content.iter_chunked(1 << 20):
                    got.update(chunk)
            pos = 0
            while pos < size:
                expected.update(content_bytes(vid, pos, min(size, pos + (8 << 20))))
                pos += 8 << 20
            assert got.hexdigest() == expected.hexdigest()


async def test_faults_and_control_endpoints() -> None:
    app = create_sim_app(SimConfig(keys=(KEY, OTHER)))
    with run_server(app) as url:
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/v1/models") as r:
                assert r.status == 401
            body = {"kind": "status_429", "count": 1, "key": KEY, "retry_after": 7}
            async with s.post(url + "/_sim/faults", json=body) as r:
                assert r.status == 200
            async with s.post(url + "/_sim/faults", json={"kind": "status_429"}) as r:
                assert r.status == 200
            async with s.get(url + "/v1/models", headers=auth()) as r:
                assert (r.status, r.headers["retry-after"]) == (429, "7")
            async with s.get(url + "/v1/models", headers=auth(OTHER)) as r:
                assert r.status == 429
                assert "retry-after" not in r.headers
            async with s.get(url + "/v1/models", headers=auth()) as r:
                assert r.status == 200
            async with s.post(url + "/_sim/faults", json={"kind": "bogus"}) as r:
                assert r.status == 400
            async with s.post(url + "/_sim/faults", json={"kind": "drop"}) as r:
                assert r.status == 200
            chat = {"model": "m", "stream": True, "messages": []}
            with pytest.raises(aiohttp.ClientPayloadError):
                async with s.post(url + "/v1/chat/completions", headers=auth(), json=chat) as r:
                    await r.read()
            async with s.get(url + "/_sim/requests") as r:
                recorded = await r.json()
            assert [x["path"] for x in recorded] == ["/v1/models"] * 4 + ["/v1/chat/completions"]
            assert all(not x["path"].startswith("/_sim") for x in recorded)
            async with s.delete(url + "/_sim/requests") as r:
                assert r.status == 200
            assert json.loads(json.dumps(app.state.sim.requests)) == []
