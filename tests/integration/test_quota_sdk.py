"""Quotas as a team sees them: the official SDK against the gateway against the simulator, on
real sockets with a real Redis. Rejections carry the right code and headers and never reach the
upstream; a job's end settles its reservation; the team can read its own usage."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from gateway.dev.embedded_redis import RedisProcess
from gateway.sim.config import SimConfig
from tests.conftest import Stack, make_stack
from tests.servers import wait_for

VIDEOS = {
    "models": {"sora-2": {"sizes": ["1280x720"], "seconds": [4, 8, 12]}},
    "poll_after_ms": 100,
    "poll_interval_seconds": 0,
    "deadline_seconds": 5,
}


def fresh_team() -> str:
    return "t-" + secrets.token_hex(4)  # the Redis server is shared by the session


@pytest.fixture
def team() -> str:
    return fresh_team()


def quota_stack(redis_url: str, team: str, limits: dict[str, Any], **kw: Any) -> Any:
    return make_stack(
        redis_url,
        sim=SimConfig(job_seconds=0.3, content_bytes=1000),
        teams={"default": {}, team: limits},
        videos=VIDEOS,
        **kw,
    )


class Counting(httpx2.Client):
    """An httpx client that counts what the SDK sends (to prove it did not retry)."""

    def __init__(self) -> None:
        self.sent = 0
        super().__init__(event_hooks={"request": [self._count]})

    def _count(self, request: httpx2.Request) -> None:
        self.sent += 1


_open: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def sdk(stack: Stack, team: str, **kw: Any) -> openai.OpenAI:
    c = openai.OpenAI(
        base_url=stack.v1, api_key=stack.token(team=team), _strict_response_validation=True, **kw
    )
    _open.append(c)  # closed after the test: an unclosed socket is a warning, hence an error
    return c


def usage(stack: Stack, team: str) -> dict[str, Any]:
    r = httpx2.get(
        stack.v1 + "/gateway/quota", headers={"Authorization": f"Bearer {stack.token(team=team)}"}
    )
    assert r.status_code == 200, r.text
    return r.json()["limits"]  # type: ignore[no-any-return]


def creates(stack: Stack) -> int:
    return sum(1 for r in stack.sim_requests("/v1/videos") if r["method"] == "POST")


@pytest.fixture
def rate_stack(redis_url: str, team: str) -> Iterator[Stack]:
    with quota_stack(redis_url, team, {"requests_per_minute": 3}) as s:
        yield s


def test_rate_limit_headers_then_429_that_never_reaches_the_upstream(
    rate_stack: Stack, team: str
) -> None:
    c = sdk(rate_stack, team, max_retries=0)
    for remaining in ("2", "1", "0"):
        raw = c.models.with_raw_response.list()
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert raw.headers["x-ratelimit-remaining-requests"] == remaining
        assert raw.headers["x-ratelimit-reset-requests"] in ("59s", "1m0s")
    seen = len(rate_stack.sim_requests("/v1/models"))
    with pytest.raises(openai.RateLimitError) as err:
        c.models.list()
    e = err.value
    assert e.code == "rate_limit_exceeded"
    assert e.type == "rate_limit_error"
    assert "3 requests per minute" in e.message
    assert 55 <= int(e.response.headers["retry-after"]) <= 60
    assert int(e.response.headers["retry-after-ms"]) > 55_000
    assert e.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(rate_stack.sim_requests("/v1/models")) == seen
    # Other teams have their own budget, and see only their own usage.
    other = fresh_team()
    assert sdk(rate_stack, other, max_retries=0).models.list().data
    assert usage(rate_stack, other)["requests_per_minute"]["used"] == 0


def test_concurrency_limit(redis_url: str, team: str) -> None:
    with quota_stack(redis_url, team, {"concurrent_jobs": 1}) as s:
        c = sdk(s, team, max_retries=0)
        first = c.videos.create(prompt="SIMNEVER finishes")
        with pytest.raises(openai.RateLimitError) as err:
            c.videos.create(prompt="a second one")
        assert err.value.code == "concurrency_limit_exceeded"
        assert creates(s) == 1
        assert usage(s, team)["concurrent_jobs"]["used"] == 1
        # At the deadline the stuck job fails, which frees the slot and refunds it.
        video = c.videos.poll(first.id, poll_interval_ms=100)
        assert (video.status, video.error and video.error.code) == ("failed", "timeout")
        assert usage(s, team)["concurrent_jobs"]["used"] == 0
        assert usage(s, team)["video_seconds_per_day"]["used"] == 0
        c.videos.create(prompt="room again")


def test_video_seconds_budget_is_charged_kept_and_refunded(redis_url: str, team: str) -> None:
    with quota_stack(redis_url, team, {"video_seconds_per_day": 12}) as s:
        c = sdk(s, team, max_retries=0)
        done = c.videos.create_and_poll(prompt="a cat", seconds="8", poll_interval_ms=50)
        assert done.status == "completed"
        failed = c.videos.create_and_poll(prompt="SIMFAIL", seconds="4", poll_interval_ms=50)
        assert failed.status == "failed"
        day = usage(s, team)["video_seconds_per_day"]
        assert (day["used"], day["remaining"], day["limit"]) == (8, 4, 12)  # failed: refunded
        assert usage(s, team)["concurrent_jobs"]["used"] == 0
        before = creates(s)
        http = Counting()
        with pytest.raises(openai.RateLimitError) as err:
            sdk(s, team, max_retries=3, http_client=http).videos.create(
                prompt="too long", seconds="8"
            )
        e = err.value
        assert e.code == "video_seconds_quota_exceeded"
        assert "12 video seconds per day" in e.message
        assert e.response.headers["x-should-retry"] == "false"
        assert "retry-after" not in e.response.headers
        assert http.sent == 1  # the SDK believed it
        assert creates(s) == before
        assert usage(s, team)["video_seconds_per_day"]["used"] == 8


def test_video_seconds_headers_on_every_answer(redis_url: str, team: str) -> None:
    with quota_stack(redis_url, team, {"video_seconds_per_day": 20}) as s:
        c = sdk(s, team)
        c.videos.create(prompt="x", seconds="4")
        raw = c.models.with_raw_response.list()
        assert raw.headers["x-ratelimit-limit-video-seconds"] == "20"
        assert raw.headers["x-ratelimit-remaining-video-seconds"] == "16"
        assert raw.headers["x-ratelimit-reset-video-seconds"].endswith("T00:00:00Z")
        assert "x-ratelimit-limit-requests" not in raw.headers  # unlimited: nothing to show


def test_upstream_rejection_refunds_the_reservation(redis_url: str, team: str) -> None:
    with quota_stack(redis_url, team, {"video_seconds_per_day": 100}) as s:
        s.sim_app.state.sim.add_fault(kind="status_429", path_prefix="/v1/videos", count=1)
        with pytest.raises(openai.RateLimitError):
            sdk(s, team, max_retries=0).videos.create(prompt="refused upstream")
        assert usage(s, team)["video_seconds_per_day"]["used"] == 0
        assert usage(s, team)["concurrent_jobs"]["used"] == 0


def test_unknown_outcome_keeps_the_reservation(redis_url: str, team: str) -> None:
    with quota_stack(redis_url, team, {"video_seconds_per_day": 100}) as s:
        s.sim_app.state.sim.add_fault(kind="status_500", path_prefix="/v1/videos", count=1)
        http = Counting()
        with pytest.raises(openai.InternalServerError) as err:
            sdk(s, team, max_retries=2, http_client=http).videos.create(prompt="did it run?")
        assert err.value.response.headers["x-should-retry"] == "false"
        assert http.sent == 1
        assert creates(s) == 1
        # The upstream may have started (and billed) it: kept until the reconciler decides.
        assert usage(s, team)["video_seconds_per_day"]["used"] == 4


def test_quota_endpoint_shape(redis_url: str, team: str) -> None:
    limits = {"requests_per_minute": 50, "spend_per_month": None}
    with quota_stack(redis_url, team, limits, quota={"currency": "EUR"}) as s:
        body = sdk(s, team).get("/gateway/quota", cast_to=httpx2.Response).json()
        assert (body["object"], body["team"], body["currency"]) == ("gateway.quota", team, "EUR")
        assert set(body["limits"]) == {
            "requests_per_minute",
            "concurrent_jobs",
            "video_seconds_per_day",
            "video_seconds_per_month",
            "spend_per_month",
            "tokens_per_minute",
            "tokens_per_day",
            "spend_per_day",
        }
        rpm = body["limits"]["requests_per_minute"]
        assert (rpm["limit"], rpm["used"], rpm["source"]) == (50, 1, "config")


@pytest.mark.parametrize("fail_open", [True, False])
def test_redis_down(fail_open: bool) -> None:
    team = fresh_team()
    redis = RedisProcess().start()
    try:
        limits = {"requests_per_minute": 100}
        with quota_stack(redis.url, team, limits, quota={"rate_fail_open": fail_open}) as s:
            c = sdk(s, team, max_retries=0)
            c.models.list()
            redis.stop()
            started = time.monotonic()
            if fail_open:
                assert c.models.list().data  # counted in metrics, let through
                metrics = httpx2.get(s.url + "/metrics").text
                assert 'result="fail_open"' in metrics
            else:
                with pytest.raises(openai.InternalServerError) as err:
                    c.models.list()
                assert (err.value.status_code, err.value.code) == (503, "service_unavailable")
            # A create spends money: it never guesses, whatever the rate setting.
            with pytest.raises(openai.InternalServerError) as err:
                c.videos.create(prompt="no redis")
            assert err.value.status_code == 503
            assert time.monotonic() - started < 3
            assert creates(s) == 0
            # Back again on the same port: limits apply again, no restart needed, as soon as
            # the breaker's probe has seen Redis answer (it probes every 0.25 s).
            redis = RedisProcess(port=redis.port).start()

            def limited() -> bool:
                try:
                    raw = c.models.with_raw_response.list()
                except openai.InternalServerError:  # fail-closed until the probe sees Redis
                    return False
                return raw.headers.get("x-ratelimit-limit-requests") == "100"

            wait_for(limited, timeout=5)
            failures = 0
            for _ in range(3):
                try:
                    video = c.videos.create(prompt="redis is back")
                    break
                except openai.InternalServerError:
                    failures += 1
            assert failures <= 1
            assert video.status in ("queued", "in_progress")
    finally:
        redis.stop()


def test_quotas_can_be_switched_off(redis_url: str, team: str) -> None:
    limits = {"requests_per_minute": 1, "concurrent_jobs": 0}
    with quota_stack(redis_url, team, limits, quota={"enabled": False}) as s:
        c = sdk(s, team, max_retries=0)
        for _ in range(3):
            raw = c.models.with_raw_response.list()
            assert "x-ratelimit-limit-requests" not in raw.headers
        assert c.videos.create(prompt="no limits here").id.startswith("video_")
