"""The metering scripts' keys as MeterStore sends them: the call's own key last (the scripts
read it there), and the cached keys before it never outliving the day or the rate check they
were built for."""

from __future__ import annotations

from typing import Any

from gateway.auth.api_keys import KeyScope
from gateway.metering.store import MeterStore
from gateway.quota.rate import RateCall
from gateway.store.keys import TeamKeys


class _Redis:
    async def sadd(self, name: str, *values: str) -> int:
        return len(values)


class _Script:
    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.calls: list[tuple[tuple[str, ...], list[str | int]]] = []

    async def __call__(
        self, *, keys: tuple[str, ...], args: list[str | int], encoded: bytes | None = None
    ) -> bytes:
        # ``encoded`` (the arguments as the wire sends them) is tests/unit/test_store_encoding's.
        self.calls.append((keys, args))
        return self.reply


def _store() -> tuple[MeterStore, _Script, _Script]:
    store = MeterStore(_Redis())  # type: ignore[arg-type]
    reserve, settle = _Script(b"1,-1,0,-1|1,-1,0,-1,60000,-1,0,-1,0"), _Script(b"1")
    store._reserve, store._settle = reserve, settle
    return store, reserve, settle


def _rate(team: str, day: str, month: str) -> RateCall:
    k = TeamKeys(team)
    keys = (k.rate, k.video_day(day), k.video_month(month))
    return RateCall(team, None, None, keys, (1, -1, -1, -1, "m", 60000))  # type: ignore[arg-type]


async def _reserve(store: MeterStore, team: str, call: str, day: str, **kw: Any) -> None:
    await store.reserve(
        TeamKeys(team),
        call,
        now_s=1,
        tokens=10,
        spend=5,
        defaults=(-1, -1, -1, -1),
        day=day,
        month=day[:6],
        ttls=(1, 2, 3),
        tag="",
        max_tags=10,
        **kw,
    )


async def _settle(store: MeterStore, k: TeamKeys, call: str, key_id: str | None = None) -> None:
    await store.settle(
        k,
        call,
        tokens=1,
        spend=1,
        day="20261207",
        month="202612",
        ledger={},
        ledger_ttl=9,
        ttls=(8, 7),
        key_id=key_id,
    )


async def test_each_call_sends_its_own_reservation_key_last_after_the_cached_ones() -> None:
    store, reserve, settle = _store()
    k = TeamKeys("t")
    for call in ("c1", "c2"):
        await _reserve(store, "t", call, "20261207", rate=_rate("t", "20261207", "202612"))
        await _settle(store, k, call)
    (keys1, _), (keys2, _) = reserve.calls
    assert keys1[-1] == k.metered_call("c1")
    assert keys2[-1] == k.metered_call("c2")
    assert keys1[:-1] == keys2[:-1]
    assert keys1[:-1] == (
        k.limits,
        k.tokens_minute,
        k.tokens_day("20261207"),
        k.spend_day("20261207"),
        k.spend_month("202612"),
        k.tags("20261207"),
        f"{k.tokens_day('20261207')}:reset",
        f"{k.spend_day('20261207')}:reset",
        f"{k.spend_month('202612')}:reset",
        f"{k.tokens_minute}:reset",
        k.rate,
        k.video_day("20261207"),
        k.video_month("202612"),
    )
    (s1, _), (s2, _) = settle.calls
    assert s1[-1] == k.metered_call("c1")
    assert s2[-1] == k.metered_call("c2")
    assert s1[:-1] == s2[:-1]
    assert s1[0] == k.tokens_minute
    assert k.ledger("20261207") in s1


async def test_a_rate_check_of_another_day_brings_its_own_keys() -> None:
    # At midnight the rate check's clock and the reservation's may fall on two days: each
    # call carries the rate keys its own check was made for, whatever an earlier call cached.
    store, reserve, _ = _store()
    k = TeamKeys("t")
    await _reserve(store, "t", "c1", "20261208", rate=_rate("t", "20261207", "202612"))
    await _reserve(store, "t", "c2", "20261208", rate=_rate("t", "20261208", "202612"))
    (keys1, _), (keys2, _) = reserve.calls
    assert k.video_day("20261207") in keys1
    assert k.video_day("20261208") not in keys1
    assert k.video_day("20261208") in keys2
    assert k.video_day("20261207") not in keys2


async def test_a_gateway_keys_counters_follow_the_cached_team_keys() -> None:
    store, reserve, settle = _store()
    k = TeamKeys("t")
    scope = KeyScope(id="kid1", name="n", limits=(("tokens_per_minute", 5),))
    await _reserve(store, "t", "c1", "20261207")
    await _reserve(store, "t", "c2", "20261207", key=scope)
    (plain, _), (keyed, _) = reserve.calls
    counters = (k.key("kid1").tokens_minute, k.key("kid1").spend_day("20261207"))
    assert not set(counters) & set(plain)
    assert keyed[-4:-1] == (*counters, k.key("kid1").spend_month("202612"))
    await _settle(store, k, "c2", key_id="kid1")
    assert settle.calls[0][0][-4:-1] == keyed[-4:-1]
