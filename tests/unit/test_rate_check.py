"""RateCheck, the rate decision under way, with a stub limiter in place of RateLimiter: judged
once however often it is awaited, fail-open counted once, a refusal raised to every awaiter,
and a decision nobody awaited judged (and its error retrieved) when the reply comes."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.errors import QuotaExceeded, StoreUnavailable
from gateway.quota.model import Windows
from gateway.quota.rate import RateCall, RateCheck

HEADERS = [(b"x-ratelimit-limit-requests", b"3")]
CALL = RateCall("team-a", None, Windows.at(0, ZoneInfo("UTC")), (), ())


class StubLimiter:
    def __init__(self, *, refuse: bool = False, fail_open: bool = True) -> None:
        self.refuse = refuse
        self.fail_open = fail_open
        self.judged: list[list[int]] = []
        self.failed: list[str] = []

    def judge(self, call: RateCall, reply: list[int]) -> list[tuple[bytes, bytes]]:
        self.judged.append(reply)
        if self.refuse:
            raise QuotaExceeded("over", code="rate_limit_exceeded")
        return list(HEADERS)

    def failed_open(self, team: str) -> bool:
        if self.fail_open:
            self.failed.append(team)
        return self.fail_open


def decided(c: RateCheck) -> bool:
    return c.decided  # read through a call: mypy would keep a narrowed property's value


def check(limiter: StubLimiter, reply: Any) -> RateCheck:
    return RateCheck(limiter, CALL, reply)  # type: ignore[arg-type]


async def test_an_allowed_decision_is_judged_once_however_often_awaited() -> None:
    limiter = StubLimiter()
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    c = check(limiter, fut)
    assert decided(c) is False
    fut.set_result(b"1,3,1,0,0,-1,0,-1,0")
    assert decided(c) is True
    assert await c.admitted() == HEADERS
    assert await c.admitted() == HEADERS
    assert limiter.judged == [[1, 3, 1, 0, 0, -1, 0, -1, 0]]
    c.forget()  # awaited already: nothing more
    await asyncio.sleep(0)
    assert len(limiter.judged) == 1


async def test_a_refusal_is_raised_to_every_awaiter_and_judged_once() -> None:
    limiter = StubLimiter(refuse=True)
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_result(b"0,3,3,1000,1000,-1,0,-1,0")
    c = check(limiter, fut)
    with pytest.raises(QuotaExceeded) as first:
        await c.admitted()
    with pytest.raises(QuotaExceeded) as second:
        await c.admitted()
    assert first.value is second.value
    assert len(limiter.judged) == 1


@pytest.mark.parametrize("fail_open", [True, False])
async def test_redis_known_down_is_decided_at_once_by_config(fail_open: bool) -> None:
    limiter = StubLimiter(fail_open=fail_open)
    c = check(limiter, StoreUnavailable())
    assert c.decided
    for _ in range(2):
        if fail_open:
            assert await c.admitted() == []
        else:
            with pytest.raises(StoreUnavailable):
                await c.admitted()
    assert limiter.failed == (["team-a"] if fail_open else [])  # counted once
    assert limiter.judged == []


async def test_a_decision_nobody_awaited_is_judged_when_it_comes() -> None:
    limiter = StubLimiter(refuse=True)
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    c = check(limiter, fut)
    c.forget()
    assert limiter.judged == []
    fut.set_result(b"0,3,3,1000,1000,-1,0,-1,0")
    await asyncio.sleep(0)  # the done callback runs on the next turn
    assert limiter.judged == [[0, 3, 3, 1000, 1000, -1, 0, -1, 0]]  # counted as rejected


@pytest.mark.parametrize("fail_open", [True, False])
async def test_an_unawaited_failure_is_retrieved_never_logged(
    fail_open: bool, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = StubLimiter(fail_open=fail_open)
    loop = asyncio.get_running_loop()
    for error in (StoreUnavailable(), RuntimeError("script error")):
        fut: asyncio.Future[Any] = loop.create_future()
        check(limiter, fut).forget()
        fut.set_exception(error)
        await asyncio.sleep(0)
        del fut
    gc.collect()
    await asyncio.sleep(0)
    assert limiter.failed == (["team-a"] if fail_open else [])
    lost = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert lost == []


async def test_a_cancelled_decision_is_not_judged() -> None:
    limiter = StubLimiter()
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    c = check(limiter, fut)
    c.forget()
    fut.cancel()
    await asyncio.sleep(0)
    assert limiter.judged == []
    assert limiter.failed == []
