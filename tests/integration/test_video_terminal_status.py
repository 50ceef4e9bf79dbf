"""A terminal upstream status ends the job at once: the SDK stops polling and the reservation is
refunded, instead of the job counting as queued until the gateway's one-hour deadline."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from gateway.sim.config import SimConfig
from tests.conftest import Stack, make_stack
from tests.integration.test_videos_sdk import VIDEOS, upstream_job

# Far from the deadline, so only the upstream's status can end the job.
LONG_DEADLINE = {**VIDEOS, "deadline_seconds": 3600}


@pytest.fixture(params=["page", "envelope", "openai"])
def shaped(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Stack]:
    sim = SimConfig(shape=request.param, job_seconds=0.2, content_bytes=1000)
    with make_stack(redis_url, sim=sim, videos=LONG_DEADLINE) as s:
        yield s


def limits(s: Stack) -> dict[str, Any]:
    r = httpx2.get(s.v1 + "/gateway/quota", headers={"Authorization": f"Bearer {s.token()}"})
    assert r.status_code == 200, r.text
    return r.json()["limits"]  # type: ignore[no-any-return]


def test_expired_upstream_fails_the_video_and_refunds_it(shaped: Stack) -> None:
    with openai.OpenAI(
        base_url=shaped.v1, api_key=shaped.token(), _strict_response_validation=True
    ) as c:
        video = c.videos.create(prompt="SIMNEVER finishes on its own", seconds="4")
        assert c.videos.retrieve(video.id).status in ("queued", "in_progress")
        assert limits(shaped)["concurrent_jobs"]["used"] == 1
        assert limits(shaped)["video_seconds_per_day"]["used"] == 4

        sim_job, _ = upstream_job(shaped, video.id)
        sim_job.reported_status = "expired"
        seen = c.videos.retrieve(video.id)
        assert seen.status == "failed"
        assert seen.error is not None
        assert seen.error.code == "expired"
        assert seen.completed_at is not None

        assert limits(shaped)["concurrent_jobs"]["used"] == 0
        assert limits(shaped)["video_seconds_per_day"]["used"] == 0
        # Settled once: a later poll of the finished job changes nothing.
        assert c.videos.retrieve(video.id).status == "failed"
        assert limits(shaped)["concurrent_jobs"]["used"] == 0


def test_a_failed_jobs_upstream_message_is_redacted(
    shaped: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = shaped.sim_keys[0]
    leaky = {"message": f"key {secret} has no access; sk-other-account-123456", "code": secret}
    monkeypatch.setattr("gateway.sim.jobs._ERROR", leaky)
    with openai.OpenAI(base_url=shaped.v1, api_key=shaped.token()) as c:
        video = c.videos.create(prompt="SIMFAIL with a leaky message", seconds="4")
        seen = c.videos.poll(video.id)
        assert seen.status == "failed"
        assert seen.error is not None
        shown = f"{seen.error.code} {seen.error.message}"
        assert secret not in shown
        assert "sk-other-account-123456" not in shown
        assert "***" in seen.error.message
