"""The gateway on a three-master Redis Cluster (the bundled server in cluster mode): every quota
decision's keys share a hash slot, so the Lua scripts run, and stay exact, on a cluster too."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx2
import openai
import pytest
from redis.asyncio import Redis

from gateway.errors import QuotaExceeded
from gateway.quota.model import job_cost
from gateway.quota.service import QuotaService
from gateway.quota.store import QuotaStore
from gateway.settings import QuotaSettings, RedisSettings, VideoSettings, team_table
from gateway.sim.config import SimConfig
from gateway.store.client import close_redis, make_redis, warm_up
from tests.cluster import Cluster
from tests.conftest import make_stack


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(Path(tmp_path_factory.mktemp("cluster"))).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
async def redis(cluster: Cluster) -> AsyncIterator[Redis]:
    # Generous timeouts: these tests are about exact decisions, and under a loaded CI machine
    # 400 checks queueing for 32 connections per node waited out the 0.5 s default.
    r = make_redis(
        RedisSettings(
            url=cluster.url, cluster=True, socket_timeout=10, connect_timeout=10, pool_timeout=10
        )
    )
    assert await warm_up(r)  # as the gateway does at start-up
    yield r
    await close_redis(r)


def service(redis: Redis, limits: dict[str, int]) -> tuple[QuotaService, str]:
    team = "c-" + secrets.token_hex(4)
    return (
        QuotaService(
            QuotaStore(redis),
            # A Redis failure must show as one, not pass as an admission (fail-open).
            QuotaSettings(rate_fail_open=False),
            teams=team_table({team: limits}),
            videos=VideoSettings(),
            clock=time.time,
        ),
        team,
    )


async def test_rate_limit_is_exact_on_a_cluster(redis: Redis) -> None:
    svc, team = service(redis, {"requests_per_minute": 100})
    results = await asyncio.gather(
        *(svc.rate.check(team) for _ in range(400)), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 100
    assert all(isinstance(r, QuotaExceeded) for r in results if isinstance(r, BaseException))


async def test_reservations_and_settlement_on_a_cluster(redis: Redis) -> None:
    svc, team = service(redis, {"concurrent_jobs": 5, "video_seconds_per_month": 1000})
    jobs = [f"video_{secrets.token_hex(16)}" for _ in range(20)]
    cost = job_cost(4, "1280x720")
    results = await asyncio.gather(
        *(svc.reserve(team, j, cost) for j in jobs), return_exceptions=True
    )
    admitted = [r.job_id for r in results if not isinstance(r, BaseException)]
    assert len(admitted) == 5
    settled = await asyncio.gather(*(svc.settle(team, admitted[0], "refunded") for _ in range(10)))
    assert sum(settled) == 1
    usage = (await svc.usage(team))["limits"]
    assert (usage["concurrent_jobs"]["used"], usage["video_seconds_per_month"]["used"]) == (4, 16)


def test_the_whole_video_flow_on_a_cluster(cluster: Cluster) -> None:
    team = "c-" + secrets.token_hex(4)
    with (
        make_stack(
            cluster.url,
            redis={"cluster": True},
            sim=SimConfig(job_seconds=0.2, content_bytes=50_000),
            teams={
                "default": {},
                team: {"video_seconds_per_day": 100, "requests_per_minute": 1000},
            },
            videos={"poll_after_ms": 100, "poll_interval_seconds": 0},
        ) as s,
        openai.OpenAI(base_url=s.v1, api_key=s.token(team=team), max_retries=0) as c,
    ):
        h = {"Idempotency-Key": "k-" + secrets.token_hex(4)}
        video = c.videos.create(prompt="on a cluster", seconds="4", extra_headers=h)
        assert c.videos.create(prompt="on a cluster", seconds="4", extra_headers=h).id == video.id
        done = c.videos.poll(video.id, poll_interval_ms=50)
        assert done.status == "completed"
        assert len(c.videos.download_content(video.id).read()) == 50_000
        assert [v.id for v in c.videos.list()] == [video.id]
        auth = {"Authorization": f"Bearer {s.token(team=team)}"}
        limits = httpx2.get(s.v1 + "/gateway/quota", headers=auth).json()["limits"]
        assert limits["video_seconds_per_day"]["used"] == 4
        assert limits["concurrent_jobs"]["used"] == 0
        assert c.videos.delete(video.id).deleted
        with pytest.raises(openai.NotFoundError):
            c.videos.retrieve(video.id)
