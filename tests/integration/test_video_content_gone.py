"""A completed video whose content the upstream no longer has is 410 ``video_content_gone``,
final, never ``video_not_ready`` (which would have a caller retry forever)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
import redis as redis_sync

from gateway.sim.config import SimConfig
from gateway.videos.registry import Job, job_key
from tests.conftest import Stack, make_stack

VIDEOS = {
    "default_model": "sora-2",
    "models": {"sora-2": {"sizes": ["1280x720"], "seconds": [4]}},
    "poll_after_ms": 100,
    "poll_interval_seconds": 0,
    "deadline_seconds": 30,
}
GONE = (
    "The upstream no longer has this video's content (result URLs are temporary); "
    "create the video again."
)


@pytest.fixture(params=["page", "openai"])
def vstack(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Stack]:
    sim = SimConfig(shape=request.param, job_seconds=0.2, content_bytes=10_000)
    with make_stack(redis_url, sim=sim, videos=VIDEOS) as s:
        yield s


def client(stack: Stack) -> openai.OpenAI:
    # Retries allowed, so a retryable answer would show up as more than one upstream call.
    return openai.OpenAI(base_url=stack.v1, api_key=stack.token(), max_retries=2)


def upstream_id(stack: Stack, video_id: str) -> str:
    r = redis_sync.Redis.from_url(stack.settings.redis.url)
    try:
        return Job.from_hash(r.hgetall(job_key(video_id))).upstream_id
    finally:
        r.close()


def content_calls(stack: Stack) -> list[str]:
    return [r["path"] for r in stack.sim_requests("/v1/videos") if r["path"].endswith("/content")]


def completed(stack: Stack) -> str:
    with client(stack) as c:
        video = c.videos.create_and_poll(prompt="a lighthouse", poll_interval_ms=50)
    assert video.status == "completed"
    stack.clear_sim()
    return video.id


def test_forgotten_job_is_410_gone_after_one_upstream_call(vstack: Stack) -> None:
    video_id = completed(vstack)
    up = upstream_id(vstack, video_id)
    vstack.sim_app.state.sim.jobs.clear()  # what a restart of the dev simulator does
    with client(vstack) as c, pytest.raises(openai.APIStatusError) as info:
        c.videos.download_content(video_id)
    err = info.value
    assert (err.status_code, err.code, err.param) == (410, "video_content_gone", "video_id")
    assert err.body == {
        "message": GONE,
        "type": "invalid_request_error",
        "param": "video_id",
        "code": "video_content_gone",
    }
    assert err.response.headers["x-should-retry"] == "false"
    assert content_calls(vstack) == [f"/v1/videos/{up}/content"]


def test_upstream_404_for_the_video_is_gone_but_for_a_variant_is_unavailable(
    vstack: Stack,
) -> None:
    video_id = completed(vstack)
    up = upstream_id(vstack, video_id)
    sim = vstack.sim_app.state.sim
    sim.add_fault(kind="status_404", count=-1, path_prefix=f"/v1/videos/{up}/content")
    with client(vstack) as c:
        with pytest.raises(openai.APIStatusError) as info:
            c.videos.download_content(video_id)
        with pytest.raises(openai.NotFoundError) as missing:
            c.videos.download_content(video_id, variant="thumbnail")
    assert (info.value.status_code, info.value.code) == (410, "video_content_gone")
    assert missing.value.code == "variant_not_available"
    assert len(content_calls(vstack)) == 2


def test_upstream_still_working_on_a_completed_job_stays_not_ready(vstack: Stack) -> None:
    video_id = completed(vstack)
    sim = vstack.sim_app.state.sim
    job = sim.jobs[upstream_id(vstack, video_id)]
    job.started = sim.clock() + 60  # the upstream now reports it queued: task_not_completed
    with client(vstack) as c, pytest.raises(openai.BadRequestError) as info:
        c.videos.download_content(video_id)
    assert info.value.code == "video_not_ready"
    assert len(content_calls(vstack)) == 1


def test_unfinished_job_is_not_ready_without_asking_the_upstream(vstack: Stack) -> None:
    with client(vstack) as c:
        video = c.videos.create(prompt="SIMNEVER")
        vstack.sim_app.state.sim.jobs.clear()
        with pytest.raises(openai.BadRequestError) as info:
            c.videos.download_content(video.id)
    assert (info.value.status_code, info.value.code) == (400, "video_not_ready")
    assert content_calls(vstack) == []
