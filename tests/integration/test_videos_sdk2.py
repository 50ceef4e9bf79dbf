"""client.videos from SDK 2.26 (JSON bodies) and plain HTTP as Crazyrouter documents it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import aiohttp
import pytest

from gateway.sim.config import SimConfig
from tests.conftest import make_stack
from tests.integration.test_videos_sdk import VIDEOS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sdk2_python() -> str:
    path = os.environ.get("GATEWAY_SDK2_PYTHON") or str(ROOT / ".venv-sdk2/bin/python")
    if not Path(path).exists():
        pytest.fail("SDK 2.26 environment missing: run `make test` (it creates .venv-sdk2)")
    return path


def test_sdk_2_26_sends_json_and_everything_works(redis_url: str, sdk2_python: str) -> None:
    sim = SimConfig(job_seconds=0.2, content_bytes=4096)
    with make_stack(redis_url, sim=sim, videos=VIDEOS) as s:
        result = subprocess.run(
            [sdk2_python, str(ROOT / "tests/sdk2_client.py"), s.v1, s.token()],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        seen = json.loads(result.stdout)
    assert seen["sdk"] == "2.26.0"
    assert seen["request_content_type"] == "application/json"
    assert seen["created"]["seconds"] == "8"
    assert seen["created"]["status"] in ("queued", "in_progress")
    assert seen["polled"] == {"status": "completed", "progress": 100}
    assert seen["content_length"] == 4096
    assert seen["remix_of"] is True
    assert seen["listed"] == 8
    assert seen["after_delete"] == "not_found"
    assert seen["bad_seconds"] == ["seconds", "invalid_value"]


async def test_plain_http_as_crazyrouter_documents_it(redis_url: str) -> None:
    sim = SimConfig(job_seconds=0.2, content_bytes=1000)
    with make_stack(redis_url, sim=sim, videos=VIDEOS) as s:
        headers = {"Authorization": f"Bearer {s.token()}"}
        body = {
            "model": "sora",
            "prompt": "A timelapse of a city skyline",
            "size": "1920x1080",
            "duration": 12,
        }
        async with aiohttp.ClientSession() as http:
            async with http.post(s.v1 + "/videos", json=body, headers=headers) as r:
                assert r.status == 200
                created = await r.json()
            assert created["model"] == "sora-2"
            assert created["seconds"] == "12"
            sent = next(r for r in s.sim_requests("/v1/videos") if r["method"] == "POST")["json"]
            assert sent == {
                "model": "sora-2",
                "size": "1920x1080",
                "duration": 12,
                "prompt": "A timelapse of a city skyline",
                "private": True,
            }
            for bad in (b"[1,2]", b"{not json"):
                async with http.post(
                    s.v1 + "/videos",
                    data=bad,
                    headers={**headers, "Content-Type": "application/json"},
                ) as r:
                    assert r.status == 400
                    assert (await r.json())["error"]["code"] == "invalid_json"
            async with http.post(
                s.v1 + "/videos", data=b"prompt", headers={**headers, "Content-Type": "text/plain"}
            ) as r:
                assert r.status == 400
                assert (await r.json())["error"]["code"] == "unsupported_media_type"
        assert len([r for r in s.sim_requests("/v1/videos") if r["method"] == "POST"]) == 1
