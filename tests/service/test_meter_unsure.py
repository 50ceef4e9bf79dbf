"""A settlement Redis did not confirm is written again once Redis answers, exactly once, with
the call counted once; shutting down gives it one last, bounded try and leaves nothing
behind. The meter runs on a store whose settlements fail while ``down`` is set (the
integration tests in test_money_faults.py freeze a real Redis)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.errors import StoreUnavailable
from gateway.metering import kinds, service
from gateway.metering.estimate import Estimate
from gateway.metering.prices import ModelPrice, PriceTable, Usage, exact
from gateway.metering.service import Admission, Meter
from gateway.quota.policy import QuotaPolicy
from gateway.settings import PricingSettings, QuotaSettings, TeamSettings, VideoSettings

PRICE = ModelPrice(input_per_million=exact(1), output_per_million=exact(2))


class Store:
    def __init__(self) -> None:
        self.down = True
        self.settled: list[str] = []  # call ids, in the order Redis took them
        self.cancelled: list[str] = []

    async def settle(self, k: Any, call_id: str, **fields: Any) -> bool:
        if self.down:
            raise StoreUnavailable()
        first = call_id not in self.settled
        self.settled.append(call_id)
        return first

    async def cancel(self, k: Any, call_id: str, *, ttl: int) -> bool:
        if self.down:
            raise StoreUnavailable()
        self.cancelled.append(call_id)
        return True


class Events:
    def __init__(self) -> None:
        self.costs: list[int] = []

    def decision(self, team: str, kind: str, result: str) -> None: ...
    def estimated(self, kind: str) -> None: ...
    def unpriced(self, model: str) -> None: ...

    def charged(self, team: str, model: str, kind: str, usage: Usage, cost: int) -> None:
        self.costs.append(cost)


def meter(store: Store, events: Events) -> Meter:
    policy = QuotaPolicy(
        QuotaSettings(),
        teams={"default": TeamSettings()},
        videos=VideoSettings(),
        clock=time.time,
    )
    return Meter(
        store,  # type: ignore[arg-type]
        policy,
        PricingSettings(),
        team_models=lambda team: None,
        prices=lambda: PriceTable({}),
        events=events,
    )


def admission(call_id: str) -> Admission:
    bound = Usage(input_tokens=1000, output_tokens=1000)
    return Admission(
        team="t",
        user="u",
        kind=kinds.CHAT,
        tag="",
        call_id=call_id,
        day="2026-12-08",
        month="2026-12",
        estimate=Estimate("m", bound),
        price=PRICE,
        reserved_tokens=2000,
        reserved_units=PRICE.cost_units(bound),
    )


async def until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "DRAIN_RETRY_MIN_S", 0.02)
    monkeypatch.setattr(service, "DRAIN_RETRY_MAX_S", 0.05)


def retry_waits(m: Meter) -> bool:
    return m._retrying is not None


def usage(out: int) -> Usage:
    return Usage(input_tokens=100, output_tokens=out)


async def test_settlements_redis_missed_are_written_once_each_when_it_answers() -> None:
    store, events = Store(), Events()
    m = meter(store, events)
    calls = [admission(f"c{i}") for i in range(20)]
    costs = [await m.settle(a, usage(i)) for i, a in enumerate(calls)]
    # Charged at once what each call cost, not the estimate; nothing reached Redis yet.
    assert costs == [PRICE.cost_units(usage(i)) for i in range(20)]
    assert events.costs == costs
    assert store.settled == []
    store.down = False  # Redis answers again: a retry writes them, with no other traffic
    await until(lambda: len(store.settled) == 20)
    assert store.settled == [f"c{i}" for i in range(20)]
    assert store.cancelled == []  # their reservations ran: no mark may forbid them
    assert events.costs == costs  # counted once, when they settled
    await m.aclose()


async def test_one_retry_waits_at_a_time_however_many_settlements_fail() -> None:
    store, events = Store(), Events()
    m = meter(store, events)
    for i in range(50):
        await m.settle(admission(f"c{i}"), usage(1))
    await asyncio.sleep(0.2)  # several retries, all failing
    handles = [h for h in asyncio.get_running_loop()._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
    assert len(handles) <= 1
    await m.aclose()
    assert all(h.cancelled() for h in handles)


async def test_shutting_down_writes_what_redis_now_takes_and_starts_nothing_after() -> None:
    store, events = Store(), Events()
    m = meter(store, events)
    await m.settle(admission("before"), usage(5))
    await until(lambda: retry_waits(m))  # Redis refused the first try
    store.down = False  # back: shutdown writes it at once, without waiting for the retry
    await m.aclose()
    assert store.settled == ["before"]
    store.down = True
    await m.settle(admission("after"), usage(5))  # a call that outlived shutdown
    assert not retry_waits(m)
    assert m._draining is None or m._draining.done()
    assert store.settled == ["before"]


async def test_shutting_down_while_redis_is_still_down_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Frozen(Store):
        async def settle(self, k: Any, call_id: str, **fields: Any) -> bool:
            await asyncio.sleep(3600)  # a Redis that never answers
            return True

    monkeypatch.setattr(service, "SHUTDOWN_DRAIN_S", 0.1)
    store, events = Frozen(), Events()
    store.down = False
    m = meter(store, events)
    m._defer(service._Settlement("t", "c", "2026-12-08", "2026-12", None, reserved=True))
    started = time.monotonic()
    await m.aclose()
    assert time.monotonic() - started < 2
    assert m._draining is not None
    assert m._draining.done()
