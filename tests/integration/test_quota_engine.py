"""The quota engine against a real Redis server, with a clock the tests move: exact limits
under concurrency, all-or-nothing reservations, settlement exactly once, calendar buckets."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from gateway.errors import QuotaExceeded, ServiceUnavailable, StoreUnavailable
from gateway.quota.model import Cost, job_cost
from gateway.quota.service import QuotaService
from gateway.quota.store import QuotaStore
from gateway.settings import QuotaSettings, RedisSettings, VideoSettings, team_table
from gateway.store.client import close_redis, make_redis
from gateway.store.keys import TeamKeys
from gateway.videos.reconciler import Reconciler
from gateway.videos.registry import Job, JobRegistry
from tests.clock import Clock


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("UTC")).timestamp()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    r = make_redis(RedisSettings(url=redis_url))  # as the gateway builds it
    yield r
    await close_redis(r)


def service(redis: Redis, clock: Clock, limits: dict[str, Any]) -> tuple[QuotaService, str]:
    team = "q-" + secrets.token_hex(4)  # a fresh team: the server is shared by the session
    svc = QuotaService(
        QuotaStore(redis),
        QuotaSettings(lease_seconds=600),
        teams=team_table({team: limits}),
        videos=VideoSettings(),
        clock=clock,
    )
    return svc, team


def four_seconds() -> Cost:
    return job_cost(4, "1280x720")


async def counters(redis: Redis, team: str, day: str, month: str) -> tuple[int, int, int]:
    k = TeamKeys(team)
    values = await redis.mget(k.video_day(day), k.video_month(month), k.spend_month(month))
    return tuple(int(v or 0) for v in values)  # type: ignore[return-value]


async def test_rate_limit_admits_exactly_the_limit_and_says_when(redis: Redis) -> None:
    clock = Clock(at("2026-12-01T10:00:00"))
    svc, team = service(redis, clock, {"requests_per_minute": 5})
    for i in range(5):
        headers = dict(await svc.rate.check(team))
        assert headers[b"x-ratelimit-remaining-requests"] == str(4 - i).encode()
    clock.now += 20
    with pytest.raises(QuotaExceeded) as err:
        await svc.rate.check(team)
    e = err.value
    assert (e.status, e.code) == (429, "rate_limit_exceeded")
    assert (e.headers["retry-after"], e.headers["retry-after-ms"]) == ("40", "40000")
    assert e.headers["x-ratelimit-remaining-requests"] == "0"
    assert "5 requests per minute" in e.message
    # A rejected request is not counted: 40 s later the first five have left the window.
    clock.now += 40
    await svc.rate.check(team)


async def test_no_double_burst_at_a_window_boundary(redis: Redis) -> None:
    clock = Clock(at("2026-12-01T10:00:59.900"))
    svc, team = service(redis, clock, {"requests_per_minute": 4})
    for _ in range(4):
        await svc.rate.check(team)
    clock.now = at("2026-12-01T10:01:00.100")  # a fixed window would reset here
    with pytest.raises(QuotaExceeded):
        await svc.rate.check(team)


async def test_concurrent_rate_checks_admit_exactly_the_limit(redis: Redis) -> None:
    svc, team = service(redis, Clock(at("2026-12-01T10:00:00")), {"requests_per_minute": 100})
    results = await asyncio.gather(
        *(svc.rate.check(team) for _ in range(400)), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 100
    assert all(isinstance(r, QuotaExceeded) for r in results if isinstance(r, BaseException))


async def test_zero_means_blocked_and_not_worth_retrying(redis: Redis) -> None:
    svc, team = service(redis, Clock(at("2026-12-01T10:00:00")), {"requests_per_minute": 0})
    with pytest.raises(QuotaExceeded) as err:
        await svc.rate.check(team)
    assert err.value.headers["x-should-retry"] == "false"
    assert "retry-after" not in err.value.headers


async def test_twenty_creates_with_five_slots_reserve_exactly_five(redis: Redis) -> None:
    svc, team = service(redis, Clock(at("2026-12-01T10:00:00")), {"concurrent_jobs": 5})
    jobs = [f"video_{i:032x}" for i in range(20)]
    results = await asyncio.gather(
        *(svc.reserve(team, j, four_seconds()) for j in jobs), return_exceptions=True
    )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    rejected = [r for r in results if isinstance(r, QuotaExceeded)]
    assert (len(admitted), len(rejected)) == (5, 15)
    assert {r.code for r in rejected} == {"concurrency_limit_exceeded"}
    assert await redis.zcard(TeamKeys(team).slots) == 5
    # Finishing one frees exactly one slot.
    assert await svc.settle(team, admitted[0].job_id, "kept")
    await svc.reserve(team, jobs[-1] + "x", four_seconds())
    with pytest.raises(QuotaExceeded):
        await svc.reserve(team, jobs[-1] + "y", four_seconds())


async def test_month_exhausted_rejects_and_reserves_nothing(redis: Redis) -> None:
    clock = Clock(at("2026-12-01T10:00:00"))
    limits = {"video_seconds_per_day": 100, "video_seconds_per_month": 6, "concurrent_jobs": 3}
    svc, team = service(redis, clock, limits)
    await svc.reserve(team, "video_" + "a" * 32, four_seconds())
    before = await counters(redis, team, "20261201", "202612")
    with pytest.raises(QuotaExceeded) as err:
        await svc.reserve(team, "video_" + "b" * 32, four_seconds())
    e = err.value
    assert e.code == "video_seconds_quota_exceeded"
    assert "per month" in e.message
    assert "2027-01-01T00:00:00Z" in e.message
    # The month resets in weeks: no point in the SDK retrying.
    assert e.headers == {"x-should-retry": "false"}
    assert await counters(redis, team, "20261201", "202612") == before == (4000, 4000, 0)
    assert await redis.zcard(TeamKeys(team).slots) == 1


async def test_spend_limit_uses_the_price_table(redis: Redis) -> None:
    svc, team = service(redis, Clock(at("2026-12-01T10:00:00")), {"spend_per_month": 1})
    cost = job_cost(8, "1280x720", price_per_second=0.1)
    await svc.reserve(team, "video_" + "c" * 32, cost)
    with pytest.raises(QuotaExceeded) as err:
        await svc.reserve(team, "video_" + "d" * 32, cost)
    assert err.value.code == "spend_quota_exceeded"
    assert "0.8 USD used" in err.value.message


async def test_a_job_bigger_than_the_limit_is_never_retryable(redis: Redis) -> None:
    svc, team = service(redis, Clock(at("2026-12-01T10:00:00")), {"video_seconds_per_day": 3})
    with pytest.raises(QuotaExceeded) as err:
        await svc.reserve(team, "video_" + "e" * 32, four_seconds())
    assert "larger than the limit" in err.value.message
    assert err.value.headers == {"x-should-retry": "false"}


async def test_short_waits_carry_retry_after(redis: Redis) -> None:
    clock = Clock(at("2026-12-01T23:59:00"))
    svc, team = service(redis, clock, {"video_seconds_per_day": 4})
    await svc.reserve(team, "video_" + "f" * 32, four_seconds())
    with pytest.raises(QuotaExceeded) as err:
        await svc.reserve(team, "video_" + "0" * 32, four_seconds())
    assert (err.value.headers["retry-after"], err.value.headers["retry-after-ms"]) == (
        "60",
        "60000",
    )


async def test_settlement_happens_exactly_once(redis: Redis) -> None:
    clock = Clock(at("2026-12-01T10:00:00"))
    svc, team = service(redis, clock, {"video_seconds_per_day": 100, "concurrent_jobs": 2})
    job = "video_" + "1" * 32
    await svc.reserve(team, job, four_seconds())
    outcomes = await asyncio.gather(*(svc.settle(team, job, "refunded") for _ in range(10)))
    assert sorted(outcomes) == [False] * 9 + [True]
    assert await counters(redis, team, "20261201", "202612") == (0, 0, 0)
    assert not await svc.settle(team, job, "kept")  # already settled: nothing changes
    assert await counters(redis, team, "20261201", "202612") == (0, 0, 0)
    assert await redis.zcard(TeamKeys(team).slots) == 0


async def test_refund_goes_back_to_the_day_it_was_charged_to(redis: Redis) -> None:
    clock = Clock(at("2026-12-31T23:59:59"))
    svc, team = service(redis, clock, {"video_seconds_per_day": 100})
    job = "video_" + "2" * 32
    await svc.reserve(team, job, four_seconds())
    clock.now = at("2027-01-01T00:00:01")
    await svc.reserve(team, "video_" + "3" * 32, four_seconds())
    assert await svc.settle(team, job, "refunded")
    assert await counters(redis, team, "20261231", "202612") == (0, 0, 0)
    assert await counters(redis, team, "20270101", "202701") == (4000, 4000, 0)


async def test_a_replayed_reservation_charges_once(redis: Redis) -> None:
    """A lost reply (Redis timeout after the script ran) replayed for the same job id."""
    svc, team = service(redis, Clock(at("2026-12-01T10:00:00")), {"video_seconds_per_day": 100})
    job = "video_" + "4" * 32
    first = await svc.reserve(team, job, four_seconds())
    again = await svc.reserve(team, job, four_seconds())
    assert (first.created, again.created) == (True, False)
    assert await counters(redis, team, "20261201", "202612") == (4000, 4000, 0)


async def test_a_slot_never_outlives_its_lease(redis: Redis) -> None:
    clock = Clock(at("2026-12-01T10:00:00"))
    svc, team = service(redis, clock, {"concurrent_jobs": 1})
    await svc.reserve(team, "video_" + "5" * 32, four_seconds())
    clock.now += 300
    await svc.renew(team, "video_" + "5" * 32)  # seen running: the lease runs from now
    clock.now += 599
    with pytest.raises(QuotaExceeded):
        await svc.reserve(team, "video_" + "6" * 32, four_seconds())
    clock.now += 2  # nobody renewed it: the slot is free again
    await svc.reserve(team, "video_" + "6" * 32, four_seconds())


async def test_usage_report(redis: Redis) -> None:
    clock = Clock(at("2026-12-01T10:00:00"))
    svc, team = service(
        redis, clock, {"requests_per_minute": 10, "video_seconds_per_day": 30, "concurrent_jobs": 2}
    )
    await svc.rate.check(team)
    await svc.reserve(team, "video_" + "7" * 32, four_seconds())
    report = await svc.usage(team)
    limits = report["limits"]
    assert limits["requests_per_minute"] == {
        "limit": 10,
        "used": 1,
        "remaining": 9,
        "resets_at": "2026-12-01T10:01:00Z",
        "source": "config",
    }
    assert limits["video_seconds_per_day"]["used"] == 4
    assert limits["video_seconds_per_day"]["remaining"] == 26
    assert limits["video_seconds_per_day"]["resets_at"] == "2026-12-02T00:00:00Z"
    assert limits["concurrent_jobs"]["used"] == 1
    assert limits["spend_per_month"] == {
        "limit": None,
        "used": 0,
        "remaining": None,
        "resets_at": "2027-01-01T00:00:00Z",
        "source": "config",
    }


async def test_a_refund_after_an_admin_reset_spares_later_charges(redis: Redis) -> None:
    clock = Clock(at("2026-12-01T10:00:00"))
    svc, team = service(redis, clock, {"video_seconds_per_day": 100})
    early, late = "video_" + "8" * 32, "video_" + "9" * 32
    await svc.reserve(team, early, four_seconds())
    clock.now += 1
    await svc.admin.reset_usage(team, "all")
    clock.now += 1
    await svc.reserve(team, late, four_seconds())
    assert await svc.settle(team, early, "refunded")
    # The reset already forgave the early job: its refund must not eat the late job's charge.
    assert await counters(redis, team, "20261201", "202612") == (4000, 4000, 0)
    assert await svc.settle(team, late, "refunded")
    assert await counters(redis, team, "20261201", "202612") == (0, 0, 0)


class LostReply(QuotaStore):
    """The script runs on Redis, then the reply is lost (a timeout on the way back)."""

    async def reserve(self, *args: Any, **kwargs: Any) -> tuple[bool, str, int, int]:
        await super().reserve(*args, **kwargs)
        raise StoreUnavailable()  # what the client makes of a timeout (gateway.store.client)


async def test_a_lost_reply_is_charged_once_in_the_end(redis: Redis) -> None:
    clock = Clock(at("2026-12-01T10:00:00"))
    svc, team = service(redis, clock, {"video_seconds_per_day": 100})
    lossy = QuotaService(
        LostReply(redis),
        svc.policy.settings,
        teams=svc.policy.teams,
        videos=svc.policy.videos,
        clock=clock,
    )
    lost = "video_" + "a" * 32
    with pytest.raises(ServiceUnavailable):
        await lossy.reserve(team, lost, four_seconds())
    # The caller saw a 503 and sends the create again: a new job, a new reservation; that job
    # exists (and has completed by the time the reconciler looks).
    retried = "video_" + "b" * 32
    await svc.reserve(team, retried, four_seconds())
    await JobRegistry(redis).add(
        Job(
            id=retried,
            team=team,
            user="u",
            upstream_id="task_1",
            key_id="primary",
            model="sora-2",
            size="1280x720",
            seconds=4,
            prompt="p",
            created_at=int(clock.now),
            created_ms=int(clock.now * 1000),
            status="completed",
        )
    )
    assert await counters(redis, team, "20261201", "202612") == (8000, 8000, 0)
    reconciler = Reconciler(
        redis,
        None,  # type: ignore[arg-type]  # only jobs with a record need the video service
        svc,
        JobRegistry(redis),
        interval_seconds=30,
        idle_seconds=60,
        orphan_seconds=120,
        clock=clock,
    )
    clock.now += 121
    report = await reconciler.run_once()
    assert (report.orphans_refunded, report.settled) == (1, 1)
    assert await counters(redis, team, "20261201", "202612") == (4000, 4000, 0)
    assert (await svc.store.reservation(TeamKeys(team), lost))["state"] == "refunded"


async def test_a_request_after_a_burst_sweeps_a_bounded_part_of_it(redis: Redis) -> None:
    clock = Clock(at("2026-12-01T10:00:00"))
    svc, team = service(redis, clock, {"requests_per_minute": 1000})
    allowed = await asyncio.gather(*(svc.rate.check(team) for _ in range(1000)))
    assert len(allowed) == 1000
    log = TeamKeys(team).rate
    # The same team, now at 5 a minute, a minute later: the burst has left the window.
    strict = QuotaService(
        QuotaStore(redis),
        QuotaSettings(lease_seconds=600),
        teams=team_table({team: {"requests_per_minute": 5}}),
        videos=VideoSettings(),
        clock=clock,
    )
    clock.now += 61
    for i in range(5):
        headers = dict(await strict.rate.check(team))
        # Each call removes at most 64 of the old entries (the rest are skipped by rank),
        # and counts only what is in the window.
        assert await redis.zcard(log) == 1000 - 64 * (i + 1) + (i + 1)
        assert headers[b"x-ratelimit-remaining-requests"] == str(4 - i).encode()
        assert headers[b"x-ratelimit-reset-requests"] == b"1m0s"  # the first in the window
    clock.now += 15
    with pytest.raises(QuotaExceeded) as err:
        await strict.rate.check(team)
    # The wait is read from the first entry in the window, behind 680 old ones still there.
    assert (err.value.headers["retry-after"], err.value.headers["retry-after-ms"]) == (
        "45",
        "45000",
    )
    clock.now += 45
    await strict.rate.check(team)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rpm=st.integers(min_value=1, max_value=150),
    steps=st.lists(
        st.tuples(st.integers(min_value=0, max_value=90_000), st.integers(0, 160)), max_size=6
    ),
)
def test_the_rate_log_decides_as_a_sliding_window_would(
    redis_url: str, rpm: int, steps: list[tuple[int, int]]
) -> None:
    """Whatever the old entries still in the log (swept a bounded number per call), every
    decision, remaining count and wait is the sliding window's."""

    async def run() -> None:
        r = make_redis(RedisSettings(url=redis_url))
        try:
            clock = Clock(at("2026-12-01T10:00:00"))
            svc, team = service(r, clock, {"requests_per_minute": rpm})
            accepted: list[int] = []  # the model: when each admitted request came, in ms
            for advance_ms, calls in steps:
                clock.ms += advance_ms
                now_ms = clock.ms
                for _ in range(calls):
                    live = sorted(t for t in accepted if t > now_ms - 60_000)
                    if len(live) < rpm:
                        headers = dict(await svc.rate.check(team))
                        accepted.append(now_ms)
                        left = str(rpm - len(live) - 1).encode()
                        assert headers[b"x-ratelimit-remaining-requests"] == left
                    else:
                        with pytest.raises(QuotaExceeded) as err:
                            await svc.rate.check(team)
                        wait = live[len(live) - rpm] + 60_000 - now_ms
                        assert err.value.headers["retry-after-ms"] == str(max(1, wait))
        finally:
            await close_redis(r)

    asyncio.run(run())
