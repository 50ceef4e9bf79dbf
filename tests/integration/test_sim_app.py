"""The simulator on a real socket: it must behave like Crazyrouter where the gateway cares."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from gateway.sim.app import content_bytes, create_sim_app
from gateway.sim.config import SimConfig
from gateway.sim.state import SimState
from tests.clock import Clock
from tests.servers import run_server

KEY, OTHER = "sk-sim-test-one", "sk-sim-test-two"
SIZE = 300_000
UPSTREAM_HEADERS = ("x-oneapi-request-id", "server", "set-cookie", "x-powered-by")
TASK_NOT_EXIST = {"code": "task_not_exist", "message": "task_not_exist", "data": None}


@dataclass
class Sim:
    url: str
    state: SimState
    clock: Clock
    http: aiohttp.ClientSession

    async def create(self, key: str = KEY, **fields: Any) -> dict[str, Any]:
        body = {"model": "sora-2", "prompt": "a cat", **fields}
        async with self.http.post(f"{self.url}/v1/videos", headers=auth(key), json=body) as r:
            assert r.status == 200, await r.text()
            doc: dict[str, Any] = await r.json()
            return doc

    async def completed_job(self, **fields: Any) -> str:
        vid = job_id(await self.create(**fields))
        self.clock.now += self.state.config.job_seconds
        return vid

    async def fault(self, **doc: Any) -> None:
        async with self.http.post(f"{self.url}/_sim/faults", json=doc) as r:
            assert r.status == 200, await r.text()


@contextlib.asynccontextmanager
async def open_sim(**config: Any) -> AsyncIterator[Sim]:
    settings = {"keys": (KEY, OTHER), "job_seconds": 10, "content_bytes": SIZE, **config}
    clock = Clock()
    app = create_sim_app(SimConfig(**settings), clock=clock)
    # uvicorn's own Server header would come first and hide the simulator's
    with run_server(app, server_header=False) as url:
        # no cookie jar: the simulator's Set-Cookie must not come back in recorded headers
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            yield Sim(url, app.state.sim, clock, http)


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    async with open_sim() as s:
        yield s


async def drain(request: Any, into: list[bytes], content_length: int | None = None) -> None:
    """Read a 200 answer chunk by chunk into ``into``, so a test sees what came before a break."""
    async with request as r:
        assert r.status == 200
        if content_length is not None:
            assert r.headers["content-length"] == str(content_length)
        async for chunk in r.content.iter_any():
            into.append(chunk)


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def status_of(body: dict[str, Any]) -> str:
    return str(body["data"]["status"] if "data" in body else body["status"])


def job_id(body: dict[str, Any]) -> str:
    return str(body["data"]["id"] if "data" in body else body["id"])


# --- keys and headers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": f"Basic {KEY}"}],
)
async def test_every_v1_route_needs_a_known_key(sim: Sim, headers: dict[str, str]) -> None:
    for method, path in [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/videos"),
        ("GET", "/v1/videos/video_x/content"),
        ("GET", "/v1/nowhere"),
    ]:
        async with sim.http.request(method, sim.url + path, headers=headers, json={}) as r:
            assert r.status == 401, path
            assert await r.json() == {
                "error": {
                    "message": "Invalid token",
                    "type": "new_api_error",
                    "code": "invalid_api_key",
                }
            }


async def test_every_answer_carries_upstream_only_headers(sim: Sim) -> None:
    ids = set()
    for path, headers in [("/v1/models", auth()), ("/v1/models", {}), ("/v1/nowhere", auth())]:
        async with sim.http.get(sim.url + path, headers=headers) as r:
            await r.read()
            assert all(r.headers.get(h) for h in UPSTREAM_HEADERS), (path, r.headers)
            assert r.headers["server"] == "crazyrouter-sim"
            assert r.headers["x-powered-by"] == "new-api"
            assert r.headers["set-cookie"] == "sim_session=abc; Path=/"
            assert len(r.headers.getall("server")) == 1
            ids.add(r.headers["x-oneapi-request-id"])
    assert len(ids) == 3
    async with sim.http.get(sim.url + "/_sim/health") as r:
        assert (r.status, await r.json()) == (200, {"status": "ok"})


# --- plain OpenAI routes ----------------------------------------------------------------------


async def test_chat_completion(sim: Sim) -> None:
    body = {"model": "gpt-x", "messages": [{"role": "user", "content": "hello there"}]}
    async with sim.http.post(sim.url + "/v1/chat/completions", headers=auth(), json=body) as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["object"] == "chat.completion"
    assert doc["model"] == "gpt-x"
    assert doc["choices"][0]["message"] == {
        "role": "assistant",
        "content": " ".join(f"word{i}" for i in range(8)),
    }
    usage = doc["usage"]
    # One token per 4 characters of "hello there" (rounded up), one per answer word.
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (3, 8, 11)
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0


async def test_chat_stream_sends_the_configured_events_then_done() -> None:
    async with open_sim(stream_events=5, stream_interval=0.01) as sim:
        body = {
            "model": "gpt-x",
            "stream": True,
            "messages": [],
            "stream_options": {"include_usage": True},
        }
        async with sim.http.post(sim.url + "/v1/chat/completions", headers=auth(), json=body) as r:
            assert r.status == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            raw = (await r.read()).decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "gpt-x" for c in chunks)
    words = [c["choices"][0]["delta"]["content"] for c in chunks if c["choices"]]
    assert words == [f"word{i} " for i in range(5)]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[4]["choices"][0]["finish_reason"] == "stop"
    assert chunks[5] == {**chunks[5], "choices": [], "usage": chunks[5]["usage"]}
    assert chunks[5]["usage"]["completion_tokens"] == 5


async def test_embeddings_and_models(sim: Sim) -> None:
    body = {"model": "text-embedding-3-small", "input": ["a", "b"]}
    async with sim.http.post(sim.url + "/v1/embeddings", headers=auth(), json=body) as r:
        first = await r.json()
    async with sim.http.post(sim.url + "/v1/embeddings", headers=auth(), json=body) as r:
        assert await r.json() == first
    assert [d["index"] for d in first["data"]] == [0, 1]
    assert first["data"][0]["embedding"] != first["data"][1]["embedding"]
    async with sim.http.get(sim.url + "/v1/models", headers=auth()) as r:
        listed = await r.json()
    assert listed["object"] == "list"
    assert {"sora-2", "sora-2-pro", "veo-3.1-fast"} <= {m["id"] for m in listed["data"]}
    async with sim.http.get(sim.url + "/v1/models/sora-2-pro", headers=auth()) as r:
        assert (await r.json())["id"] == "sora-2-pro"
    async with sim.http.get(sim.url + "/v1/models/nope", headers=auth()) as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "model_not_found"


# --- video jobs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "prefix", "statuses"),
    [
        ("page", "video_", ["queued", "processing", "completed"]),
        ("envelope", "task_", ["SUBMITTED", "IN_PROGRESS", "SUCCESS"]),
        ("openai", "task_", ["queued", "in_progress", "completed"]),
    ],
)
async def test_video_lifecycle_in_each_shape(shape: str, prefix: str, statuses: list[str]) -> None:
    async with open_sim(shape=shape) as sim:
        form = aiohttp.FormData(
            {"model": "sora-2", "prompt": "a cat", "seconds": "8", "size": "1280x720"}
        )
        async with sim.http.post(sim.url + "/v1/videos", headers=auth(), data=form) as r:
            assert r.status == 200
            created = await r.json()
        vid = job_id(created)
        assert vid.startswith(prefix)
        assert status_of(created) == statuses[0]
        seen = [statuses[0]]
        for step in (4.5, 5.5):  # 4.5 s into a 10 s job, then done
            sim.clock.now += step
            async with sim.http.get(f"{sim.url}/v1/videos/{vid}", headers=auth()) as r:
                assert r.status == 200
                doc = await r.json()
            seen.append(status_of(doc))
            if step == 4.5 and shape == "openai":
                assert doc["progress"] == 45
            if step == 4.5 and shape == "envelope":
                assert doc["data"]["progress"] == "45%"
        assert seen == statuses
        url = f"{sim.url}/files/{vid}.mp4"
        if shape == "page":
            assert doc["video"] == {"url": url, "duration": 8, "width": 1280, "height": 720}
        elif shape == "envelope":
            assert doc["code"] == "success"
            assert doc["data"]["result_url"] == doc["data"]["artifact_url"] == url
            assert doc["data"]["task_id"] == vid
        else:
            assert doc["metadata"] == {"url": url}
            assert (doc["seconds"], doc["size"], doc["model"]) == ("8", "1280x720", "sora-2")
            assert isinstance(doc["completed_at"], int)
        async with sim.http.get(url) as r:  # the result URL itself needs no key
            assert await r.read() == content_bytes(vid, 0, SIZE)


async def test_create_validates_and_records_every_field(sim: Sim) -> None:
    async with sim.http.post(sim.url + "/v1/videos", headers=auth(), json={"prompt": "p"}) as r:
        assert r.status == 400
        assert await r.json() == {
            "code": "invalid_request",
            "message": "model is required",
            "data": None,
        }
    bad = {"model": "m", "duration": "long"}
    async with sim.http.post(sim.url + "/v1/videos", headers=auth(), json=bad) as r:
        assert (r.status, (await r.json())["code"]) == (400, "invalid_request")
    board = [{"prompt": "dawn", "duration": 3}, {"prompt": "deer", "duration": 4}]
    form = aiohttp.FormData()
    form.add_field("model", "veo-3.1-fast")
    form.add_field("prompt", "p")
    form.add_field("storyboard", json.dumps(board))
    form.add_field("private", "true")
    form.add_field("image_url", "https://example.com/a.png")
    form.add_field("input_reference", b"\x89PNG" + bytes(60), filename="a.png")
    async with sim.http.post(sim.url + "/v1/videos", headers=auth(), data=form) as r:
        assert r.status == 200
        job = sim.state.jobs[job_id(await r.json())]
    assert (job.model, job.seconds, job.private, job.storyboard) == ("veo-3.1-fast", 7, True, board)
    assert (job.image_url, job.key) == ("https://example.com/a.png", KEY)
    recorded = sim.state.requests_for("/v1/videos")
    assert [r["json"] for r in recorded[:2]] == [{"prompt": "p"}, bad]
    assert recorded[2]["json"] is None
    assert recorded[2]["form"] == {
        "model": "veo-3.1-fast",
        "prompt": "p",
        "storyboard": json.dumps(board),
        "private": "true",
        "image_url": "https://example.com/a.png",
    }
    assert recorded[2]["files"]["input_reference"]["size"] == 64
    assert recorded[2]["headers"]["content-type"].startswith("multipart/form-data")


async def test_failing_and_never_ending_jobs(sim: Sim) -> None:
    failing = job_id(await sim.create(prompt="please SIMFAIL"))
    never = job_id(await sim.create(prompt="SIMNEVER ever"))
    sim.clock.now += 1e6
    async with sim.http.get(f"{sim.url}/v1/videos/{failing}", headers=auth()) as r:
        doc = await r.json()
    assert doc["status"] == "failed"
    assert set(doc["error"]) == {"message", "code"}
    async with sim.http.get(f"{sim.url}/v1/videos/{never}", headers=auth()) as r:
        assert (await r.json())["status"] == "processing"
    async with sim.http.get(f"{sim.url}/v1/videos/{failing}/content", headers=auth()) as r:
        assert (r.status, (await r.json())["code"]) == (400, "task_not_completed")


async def test_jobs_belong_to_the_key_that_created_them(sim: Sim) -> None:
    vid = await sim.completed_job()
    for method, path in [
        ("GET", f"/v1/videos/{vid}"),
        ("GET", f"/v1/videos/{vid}/content"),
        ("POST", f"/v1/videos/{vid}/remix"),
        ("GET", "/v1/videos/video_unknown"),
    ]:
        key = KEY if "unknown" in path else OTHER
        async with sim.http.request(
            method, sim.url + path, headers=auth(key), json={"prompt": "x"}
        ) as r:
            assert r.status == 400, path
            assert await r.json() == TASK_NOT_EXIST


async def test_remix(sim: Sim) -> None:
    pending = job_id(await sim.create())
    remix = f"{sim.url}/v1/videos/{pending}/remix"
    async with sim.http.post(remix, headers=auth(), json={"prompt": "again"}) as r:
        assert (r.status, (await r.json())["code"]) == (400, "task_not_completed")
    sim.clock.now += 10
    async with sim.http.post(remix, headers=auth(), json={"prompt": "again"}) as r:
        assert r.status == 200
        new = sim.state.jobs[job_id(await r.json())]
    assert (new.remixed_from, new.prompt, new.model, new.key) == (pending, "again", "sora-2", KEY)
    assert new.id != pending


# --- downloads --------------------------------------------------------------------------------


async def test_content_headers_and_ranges(sim: Sim) -> None:
    vid = await sim.completed_job()
    url = f"{sim.url}/v1/videos/{vid}/content"
    async with sim.http.get(url, headers=auth()) as r:
        assert r.status == 200
        assert await r.read() == content_bytes(vid, 0, SIZE)
        assert r.headers["content-type"] == "video/mp4"
        assert r.headers["content-length"] == str(SIZE)
        assert r.headers["accept-ranges"] == "bytes"
        assert r.headers["content-disposition"] == f'attachment; filename="{vid}.mp4"'
        etag, modified = r.headers["etag"], r.headers["last-modified"]
    assert modified.endswith("GMT")
    cases = [
        ({"Range": "bytes=1000-1999"}, 206, (1000, 2000)),
        ({"Range": f"bytes={SIZE - 10}-"}, 206, (SIZE - 10, SIZE)),
        ({"Range": "bytes=-100"}, 206, (SIZE - 100, SIZE)),
        ({"Range": "bytes=0-9", "If-Range": etag}, 206, (0, 10)),
        ({"Range": "bytes=0-9", "If-Range": modified}, 206, (0, 10)),
        ({"Range": "bytes=0-9", "If-Range": '"another-version"'}, 200, (0, SIZE)),
        ({"Range": "bytes=0-1,5-6"}, 200, (0, SIZE)),
    ]
    for headers, status, (start, end) in cases:
        async with sim.http.get(url, headers={**auth(), **headers}) as r:
            assert r.status == status, headers
            assert await r.read() == content_bytes(vid, start, end)
            assert r.headers["content-length"] == str(end - start)
            assert r.headers["etag"] == etag
            if status == 206:
                assert r.headers["content-range"] == f"bytes {start}-{end - 1}/{SIZE}"
    for unsatisfiable in (f"bytes={SIZE}-", "bytes=-0"):
        async with sim.http.get(url, headers={**auth(), "Range": unsatisfiable}) as r:
            assert r.status == 416
            assert r.headers["content-range"] == f"bytes */{SIZE}"
    other = await sim.completed_job()
    async with sim.http.get(f"{sim.url}/v1/videos/{other}/content", headers=auth()) as r:
        assert r.headers["etag"] != etag
        await r.read()


async def test_content_variants(sim: Sim) -> None:
    vid = await sim.completed_job()
    url = f"{sim.url}/v1/videos/{vid}/content"
    async with sim.http.get(url + "?variant=thumbnail", headers=auth()) as r:
        assert r.status == 200
        thumbnail = await r.read()
    assert len(thumbnail) == 2048
    assert thumbnail == content_bytes(f"{vid}#thumbnail", 0, 2048)
    assert thumbnail != content_bytes(vid, 0, 2048)
    async with sim.http.get(url + "?variant=video", headers=auth()) as r:
        assert len(await r.read()) == SIZE
    async with sim.http.get(url + "?variant=spritesheet", headers=auth()) as r:
        assert r.status == 404
        assert (await r.json())["code"] == "variant_not_found"


async def test_large_content_streams_intact() -> None:
    size = 50 * 1024 * 1024
    async with open_sim(content_bytes=size) as sim:
        vid = await sim.completed_job()
        got = hashlib.sha256()
        largest = 0
        async with sim.http.get(f"{sim.url}/v1/videos/{vid}/content", headers=auth()) as r:
            assert r.headers["content-length"] == str(size)
            async for chunk in r.content.iter_chunked(1 << 20):
                got.update(chunk)
                largest = max(largest, len(chunk))
    expected = hashlib.sha256()
    for pos in range(0, size, 8 << 20):
        expected.update(content_bytes(vid, pos, min(size, pos + (8 << 20))))
    assert got.hexdigest() == expected.hexdigest()
    assert largest <= 1 << 20


async def test_redirect_fault_sends_the_download_to_the_result_file(sim: Sim) -> None:
    vid = await sim.completed_job()
    await sim.fault(kind="content_redirect", count=-1)
    url = f"{sim.url}/v1/videos/{vid}/content"
    async with sim.http.get(url, headers=auth(), allow_redirects=False) as r:
        assert r.status == 302
        assert r.headers["location"] == f"{sim.url}/files/{vid}.mp4"
    async with sim.http.get(url, headers={**auth(), "Range": "bytes=5-9"}) as r:
        assert r.status == 206
        assert await r.read() == content_bytes(vid, 5, 10)
    files = sim.state.requests_for("/files/")
    assert [(f["path"], f["key"]) for f in files] == [(f"/files/{vid}.mp4", KEY)]
    async with sim.http.get(f"{sim.url}/files/video_nope.mp4") as r:
        assert r.status == 404


# --- faults -----------------------------------------------------------------------------------


async def test_status_faults_honour_count_key_and_path(sim: Sim) -> None:
    await sim.fault(kind="status_429", count=1, key=KEY, retry_after=7)
    await sim.fault(kind="status_429", path_prefix="/v1/models")
    async with sim.http.get(sim.url + "/v1/models", headers=auth()) as r:
        assert (r.status, r.headers["retry-after"]) == (429, "7")
        assert await r.json() == {
            "error": {
                "message": "rate limited",
                "type": "new_api_error",
                "code": "rate_limit_exceeded",
            }
        }
    async with sim.http.post(sim.url + "/v1/embeddings", headers=auth(OTHER), json={}) as r:
        assert r.status == 400  # the second fault waits for its path
    async with sim.http.get(sim.url + "/v1/models", headers=auth(OTHER)) as r:
        assert r.status == 429
        assert "retry-after" not in r.headers
    async with sim.http.get(sim.url + "/v1/models", headers=auth()) as r:
        assert r.status == 200


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("status_401", 401, "invalid_api_key"),
        ("status_403", 403, "insufficient_quota"),
        ("status_500", 500, None),
        ("status_503", 503, None),
    ],
)
async def test_error_faults(sim: Sim, kind: str, status: int, code: str | None) -> None:
    await sim.fault(kind=kind, count=-1)
    for _ in range(3):
        async with sim.http.get(sim.url + "/v1/models", headers=auth()) as r:
            assert r.status == status
            error = (await r.json())["error"]
            assert error["type"] == "new_api_error"
            assert error["message"]
            if code:
                assert error["code"] == code
    async with sim.http.delete(sim.url + "/_sim/faults") as r:
        assert r.status == 200
    async with sim.http.get(sim.url + "/v1/models", headers=auth()) as r:
        assert r.status == 200


async def test_slow_fault_delays_the_answer(sim: Sim) -> None:
    await sim.fault(kind="slow", delay=0.3, path_prefix="/v1/models")
    started = time.monotonic()
    async with sim.http.get(sim.url + "/v1/models", headers=auth()) as r:
        assert r.status == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    async with sim.http.get(sim.url + "/v1/models", headers=auth()) as r:
        assert r.status == 200
    assert time.monotonic() - started < 0.3


async def test_drop_fault_breaks_a_chat_stream_after_two_events(sim: Sim) -> None:
    await sim.fault(kind="drop", path_prefix="/v1/chat/completions")
    body = {"model": "m", "stream": True, "messages": []}
    received: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        await drain(
            sim.http.post(sim.url + "/v1/chat/completions", headers=auth(), json=body), received
        )
    received_body = b"".join(received)
    assert received_body.count(b"data: ") == 2
    assert b"[DONE]" not in received_body


async def test_drop_fault_truncates_a_download_with_full_content_length(sim: Sim) -> None:
    vid = await sim.completed_job()
    url = f"{sim.url}/v1/videos/{vid}/content"
    await sim.fault(kind="drop", key=KEY, path_prefix=f"/v1/videos/{vid}/content")
    received: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        await drain(sim.http.get(url, headers=auth()), received, SIZE)
    body = b"".join(received)
    assert 0 < len(body) < SIZE
    assert body == content_bytes(vid, 0, len(body))
    async with sim.http.get(url, headers=auth()) as r:  # the fault fired once
        assert await r.read() == content_bytes(vid, 0, SIZE)


async def test_drop_fault_cuts_a_json_answer(sim: Sim) -> None:
    await sim.fault(kind="drop", path_prefix="/v1/models")
    with pytest.raises(aiohttp.ClientPayloadError):
        async with sim.http.get(sim.url + "/v1/models", headers=auth()) as r:
            await r.read()


async def test_drop_fault_waits_for_a_successful_answer(sim: Sim) -> None:
    vid = job_id(await sim.create())
    await sim.fault(kind="drop", path_prefix="/v1/videos/")
    async with sim.http.get(f"{sim.url}/v1/videos/{vid}/content", headers=auth()) as r:
        assert r.status == 400  # not ready: the drop is kept for the answer that has a body
        await r.read()
    sim.clock.now += 10
    with pytest.raises(aiohttp.ClientPayloadError):
        async with sim.http.get(f"{sim.url}/v1/videos/{vid}/content", headers=auth()) as r:
            await r.read()


async def test_bad_faults_are_refused(sim: Sim) -> None:
    for doc in ({"kind": "bogus"}, {"kind": "slow", "dealy": 1}, [{"kind": "drop"}, {}]):
        async with sim.http.post(sim.url + "/_sim/faults", json=doc) as r:
            assert r.status == 400
    async with sim.http.get(sim.url + "/_sim/faults") as r:
        assert await r.json() == []
    await sim.fault(kind="status_500", count=2, key=KEY)
    async with sim.http.get(sim.url + "/_sim/faults") as r:
        listed = await r.json()
    assert [(f["kind"], f["count"], f["key"]) for f in listed] == [("status_500", 2, KEY)]


# --- recording --------------------------------------------------------------------------------


async def test_requests_are_recorded_but_control_calls_are_not(sim: Sim) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    headers = {**auth(), "X-Trace": "t-1"}
    async with sim.http.post(sim.url + "/v1/chat/completions?x=1", headers=headers, json=body) as r:
        assert r.status == 200
    async with sim.http.get(sim.url + "/v1/models") as r:
        assert r.status == 401
    async with sim.http.get(sim.url + "/_sim/health") as r:
        assert r.status == 200
    async with sim.http.get(sim.url + "/_sim/requests") as r:
        recorded = await r.json()
    assert [(x["method"], x["path"], x["key"]) for x in recorded] == [
        ("POST", "/v1/chat/completions", KEY),
        ("GET", "/v1/models", None),
    ]
    chat = recorded[0]
    assert chat["query"] == "x=1"
    assert chat["json"] == body
    assert chat["form"] is None
    assert chat["body_size"] == len(json.dumps(body))
    assert chat["headers"]["x-trace"] == "t-1"
    assert chat["headers"]["authorization"] == f"Bearer {KEY}"
    assert sim.state.requests_for("/v1/chat") == [chat]
    async with sim.http.delete(sim.url + "/_sim/requests") as r:
        assert r.status == 200
    async with sim.http.get(sim.url + "/_sim/requests") as r:
        assert await r.json() == []


async def test_state_clear_forgets_requests_and_faults_but_keeps_jobs(sim: Sim) -> None:
    vid = job_id(await sim.create())
    await sim.fault(kind="status_500", count=-1, path_prefix="/v1/embeddings")
    sim.state.clear()
    assert (sim.state.requests, sim.state.faults) == ([], [])
    async with sim.http.get(f"{sim.url}/v1/videos/{vid}", headers=auth()) as r:
        assert r.status == 200
