"""The reconciler on a live stack with its own Redis: it finishes jobs nobody polls, keeps the
charge of creates with an unknown outcome, refunds orphans, repairs stray slots, settles a
failure once however many see it, and only one replica leads at a time."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
import redis as redis_sync

from gateway.dev.embedded_redis import RedisProcess
from gateway.quota.service import QuotaService
from gateway.quota.store import QuotaStore
from gateway.settings import RedisSettings
from gateway.sim.config import SimConfig
from gateway.store.client import close_redis, make_redis
from gateway.store.keys import TeamKeys
from gateway.videos.reconciler import LEADER_KEY, Reconciler
from tests.conftest import Stack, make_stack
from tests.servers import wait_for

FAST = {
    "reconcile_interval_seconds": 0.1,
    "reconcile_idle_seconds": 0.1,
    "orphan_grace_seconds": 0,
}
VIDEOS = {"poll_after_ms": 100, "poll_interval_seconds": 0, "deadline_seconds": 30}


@pytest.fixture(scope="module")
def own_redis() -> Iterator[str]:
    # Its own server: the leader lock and the team set are not shared with other tests' stacks.
    proc = RedisProcess().start()
    try:
        yield proc.url
    finally:
        proc.stop()


@pytest.fixture
def team() -> str:
    return "r-" + secrets.token_hex(4)


def stack_for(redis_url: str, team: str, **kw: Any) -> Any:
    return make_stack(
        redis_url,
        sim=SimConfig(job_seconds=0.2, content_bytes=1000),
        teams={"default": {}, team: {"video_seconds_per_day": 100, "concurrent_jobs": 3}},
        videos=VIDEOS,
        quota=FAST,
        upstream={"read_timeout": 1, "connect_timeout": 0.5},
        **kw,
    )


def usage(s: Stack, team: str) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {s.token(team=team)}"}
    return httpx2.get(s.v1 + "/gateway/quota", headers=auth).json()["limits"]  # type: ignore[no-any-return]


def sdk(s: Stack, team: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.v1, api_key=s.token(team=team), max_retries=0)


def test_a_job_nobody_polls_is_finished_and_settled(own_redis: str, team: str) -> None:
    with stack_for(own_redis, team) as s, sdk(s, team) as c:
        video = c.videos.create(prompt="fire and forget", seconds="4")
        assert video.status in ("queued", "in_progress")
        wait_for(lambda: usage(s, team)["concurrent_jobs"]["used"] == 0)
        assert usage(s, team)["video_seconds_per_day"]["used"] == 4  # completed: kept
        assert c.videos.retrieve(video.id).status == "completed"
        assert s.metric("gateway_quota_decisions_total", kind="settlement", result="kept") == 1
        assert s.metric("gateway_reconciler_runs_total", result="ok") >= 1


def test_a_failure_seen_by_many_is_refunded_once(own_redis: str, team: str) -> None:
    with stack_for(own_redis, team) as s, sdk(s, team) as c:
        video = c.videos.create(prompt="SIMFAIL", seconds="8")
        errors: list[BaseException] = []

        def poll() -> None:
            try:
                with sdk(s, team) as mine:
                    mine.videos.poll(video.id, poll_interval_ms=20)
            except BaseException as exc:
                errors.append(exc)

        pollers = [threading.Thread(target=poll) for _ in range(10)]
        for t in pollers:
            t.start()
        for t in pollers:
            t.join(timeout=20)
        assert errors == []
        wait_for(lambda: usage(s, team)["concurrent_jobs"]["used"] == 0)
        assert usage(s, team)["video_seconds_per_day"]["used"] == 0
        refunds = s.metric("gateway_quota_decisions_total", kind="settlement", result="refunded")
        assert refunds == 1


def test_an_unknown_create_keeps_its_charge_and_frees_its_slot(own_redis: str, team: str) -> None:
    with stack_for(own_redis, team) as s, sdk(s, team) as c:
        s.sim_app.state.sim.add_fault(kind="status_500", path_prefix="/v1/videos", count=1)
        with pytest.raises(openai.InternalServerError):
            c.videos.create(prompt="did it run?", seconds="4")
        wait_for(lambda: usage(s, team)["concurrent_jobs"]["used"] == 0)
        assert usage(s, team)["video_seconds_per_day"]["used"] == 4
        assert s.metric("gateway_quota_decisions_total", kind="settlement", result="kept") == 1


def test_orphans_are_refunded_and_stray_slots_dropped(own_redis: str, team: str) -> None:
    with stack_for(own_redis, team) as s:
        orphan = "video_" + secrets.token_hex(16)

        async def reserve_without_a_job() -> None:
            # What a replica leaves behind when it dies between the reservation and the create.
            r = make_redis(RedisSettings(url=own_redis))
            try:
                st = s.settings
                quota = QuotaService(
                    QuotaStore(r), st.quota, teams=st.teams, videos=st.videos, clock=time.time
                )
                await quota.reserve(team, orphan, quota.policy.cost("sora-2", 8, "1280x720"))
            finally:
                await close_redis(r)

        asyncio.run(reserve_without_a_job())
        sync = redis_sync.Redis.from_url(own_redis)
        try:
            sync.zadd(TeamKeys(team).slots, {"video_" + "f" * 32: time.time() * 1000 + 600_000})
            wait_for(lambda: usage(s, team)["concurrent_jobs"]["used"] == 0)
            assert usage(s, team)["video_seconds_per_day"]["used"] == 0
            # Counted when the whole pass ends, a moment after Redis shows the repair.
            wait_for(lambda: s.metric("gateway_quota_drift_repaired_total", kind="slots") >= 1)
        finally:
            sync.close()


def test_one_leader_at_a_time(own_redis: str) -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        r = make_redis(RedisSettings(url=own_redis))
        try:
            await r.delete(LEADER_KEY)
            a, b = (
                Reconciler(
                    r,
                    None,  # type: ignore[arg-type]
                    None,  # type: ignore[arg-type]
                    None,  # type: ignore[arg-type]
                    interval_seconds=10,
                    idle_seconds=1,
                    orphan_seconds=1,
                    clock=time.time,
                )
                for _ in range(2)
            )
            first, second = await a.lead(), await b.lead()
            await a.resign()
            return first, second, await b.lead()
        finally:
            await r.delete(LEADER_KEY)
            await close_redis(r)

    assert asyncio.run(scenario()) == (True, False, True)
