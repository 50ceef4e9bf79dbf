"""Idempotency-Key on video creates, through the SDK: one upstream job and one charge per key
and request, 422 for a reused key, 409 (retried by the SDK) while the first is in flight."""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
import redis

from gateway.errors import StoreUnavailable
from gateway.sim.config import SimConfig
from gateway.store.keys import TeamKeys
from tests.conftest import Stack, make_stack
from tests.servers import wait_for


@pytest.fixture
def team() -> str:
    return "i-" + secrets.token_hex(4)


@pytest.fixture
def stack(redis_url: str, team: str) -> Iterator[Stack]:
    with make_stack(
        redis_url,
        sim=SimConfig(job_seconds=0.3, content_bytes=1000),
        teams={"default": {}, team: {"video_seconds_per_day": 100}},
        videos={"poll_after_ms": 100, "poll_interval_seconds": 0},
    ) as s:
        yield s


def sdk(s: Stack, team: str, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.v1, api_key=s.token(team=team), **kw)


def key_header() -> dict[str, str]:
    return {"Idempotency-Key": "create-" + secrets.token_hex(8)}


def creates(s: Stack) -> int:
    return sum(1 for r in s.sim_requests("/v1/videos") if r["method"] == "POST")


def used_seconds(s: Stack, team: str) -> int:
    auth = {"Authorization": f"Bearer {s.token(team=team)}"}
    limits = httpx2.get(s.v1 + "/gateway/quota", headers=auth).json()["limits"]
    return int(limits["video_seconds_per_day"]["used"])


def created_twice(s: Stack, team: str, prompt: str, h: dict[str, str]) -> str:
    """The same create sent twice with one key: the job's id, asserted to be the same one,
    made upstream once and charged once."""
    with sdk(s, team, max_retries=0) as c:
        first = c.videos.create(prompt=prompt, seconds="4", extra_headers=h)
        again = c.videos.create(prompt=prompt, seconds="4", extra_headers=h)
    assert again.id == first.id
    assert creates(s) == 1
    assert used_seconds(s, team) == 4
    return first.id


def test_same_key_and_request_return_the_same_job_once(stack: Stack, team: str) -> None:
    h = key_header()
    first = created_twice(stack, team, "a fox", h)
    # Another team's identical key is another key.
    other = "i-" + secrets.token_hex(4)
    with sdk(stack, other, max_retries=0) as o:
        assert o.videos.create(prompt="a fox", seconds="4", extra_headers=h).id != first
    assert creates(stack) == 2


def test_same_key_with_another_request_is_422(stack: Stack, team: str) -> None:
    h = key_header()
    with sdk(stack, team, max_retries=2) as c:
        c.videos.create(prompt="a fox", extra_headers=h)
        with pytest.raises(openai.UnprocessableEntityError) as err:
            c.videos.create(prompt="a badger", extra_headers=h)
        assert (err.value.code, err.value.param) == ("idempotency_key_reused", "Idempotency-Key")
        assert creates(stack) == 1


def test_a_key_in_flight_is_409_and_the_sdk_retry_gets_the_job(stack: Stack, team: str) -> None:
    stack.sim_app.state.sim.add_fault(kind="slow", path_prefix="/v1/videos", delay=1.5, count=1)
    h = key_header()
    results: list[Any] = []

    def first() -> None:
        with sdk(stack, team, max_retries=0) as c:
            results.append(c.videos.create(prompt="slow one", extra_headers=h))

    t = threading.Thread(target=first)
    t.start()
    try:
        with sdk(stack, team, max_retries=0) as c:
            wait_for(lambda: creates(stack) > 0)  # the first has reached upstream
            with pytest.raises(openai.ConflictError) as err:
                c.videos.create(prompt="slow one", extra_headers=h)
            assert err.value.code == "idempotency_key_in_use"
            assert err.value.response.headers["retry-after"] == "1"
        # The SDK retries a 409 by itself, after the retry-after it was given.
        with sdk(stack, team, max_retries=4) as c:
            again = c.videos.create(prompt="slow one", extra_headers=h)
    finally:
        t.join(timeout=10)
    assert results[0].id == again.id
    assert creates(stack) == 1


def test_a_certain_failure_frees_the_key(stack: Stack, team: str) -> None:
    # Refused upstream (and the only key cools down for 0 s, so the retry can go out).
    stack.sim_app.state.sim.add_fault(
        kind="status_429", path_prefix="/v1/videos", count=1, retry_after="0"
    )
    h = key_header()
    with sdk(stack, team, max_retries=0) as c:
        with pytest.raises(openai.RateLimitError):
            c.videos.create(prompt="refused", extra_headers=h)
        assert c.videos.create(prompt="refused", extra_headers=h).id.startswith("video_")
    assert used_seconds(stack, team) == 4


def test_an_unknown_outcome_is_never_sent_again(stack: Stack, team: str) -> None:
    stack.sim_app.state.sim.add_fault(kind="status_500", path_prefix="/v1/videos", count=1)
    h = key_header()
    with sdk(stack, team, max_retries=0) as c:
        with pytest.raises(openai.InternalServerError):
            c.videos.create(prompt="did it run?", extra_headers=h)
        with pytest.raises(openai.APIStatusError) as err:
            c.videos.create(prompt="did it run?", extra_headers=h)
        assert err.value.status_code == 502
        assert err.value.response.headers["x-should-retry"] == "false"
    assert creates(stack) == 1


def test_a_job_whose_end_redis_lost_is_still_the_keys_answer(
    stack: Stack, team: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis refuses the write of how the first create ended (it made the job): the key was
    kept for the window from the moment the create left, so a retry, now or after the time a
    pending claim frees itself, gets that job and not a second one."""
    store = stack.app.videos.idempotency

    async def lose_the_end(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable()

    monkeypatch.setattr(store, "finish", lose_the_end)
    h = key_header()
    created_twice(stack, team, "a heron", h)
    name = TeamKeys(team).idempotency(hashlib.sha256(h["Idempotency-Key"].encode()).hexdigest())
    with redis.Redis.from_url(redis_url) as r:
        assert r.hget(name, "state") == b"sent"
        assert r.pttl(name) > store.pending_ms * 10  # the window, not the pending time


def test_a_remix_with_a_key_is_made_once(stack: Stack, team: str) -> None:
    """The key works on remixes too: the same key and remix return the same job, the same
    key on another remix (or a create) is a 422."""
    h = key_header()
    with sdk(stack, team, max_retries=0) as c:
        source = c.videos.create_and_poll(prompt="a lake", poll_interval_ms=50)
        first = c.videos.remix(source.id, prompt="at dusk", extra_headers=h)
        again = c.videos.remix(source.id, prompt="at dusk", extra_headers=h)
        assert (again.id, again.remixed_from_video_id) == (first.id, source.id)
        with pytest.raises(openai.UnprocessableEntityError) as err:
            c.videos.remix(source.id, prompt="at dawn", extra_headers=h)
        assert err.value.code == "idempotency_key_reused"
        with pytest.raises(openai.UnprocessableEntityError):
            c.videos.create(prompt="at dusk", extra_headers=h)
    remixes = [r for r in stack.sim_requests("/v1/videos/") if r["path"].endswith("/remix")]
    assert len(remixes) == 1


@pytest.mark.parametrize("bad", ["x" * 256, "has space", "tab\tinside"])
def test_bad_keys_are_400(stack: Stack, team: str, bad: str) -> None:
    with sdk(stack, team, max_retries=0) as c:
        with pytest.raises(openai.BadRequestError) as err:
            c.videos.create(prompt="x", extra_headers={"Idempotency-Key": bad})
        assert (err.value.code, err.value.param) == ("invalid_value", "Idempotency-Key")
    assert creates(stack) == 0
