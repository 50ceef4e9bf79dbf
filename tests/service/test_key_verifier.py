"""The gateway API key verifier against a counting fake store and a pinned clock: what a key
costs in Redis reads (steady traffic: one per period; an unknown key: one per period, however
often it is tried; concurrent look-ups: one), and the bounds it keeps (revocation within the
cache period, expiry and the rotation grace to the second, a bounded cache)."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets

import pytest

from gateway.auth import api_keys
from gateway.auth.api_keys import ACTIVE, REVOKED, KeyRecord
from gateway.auth.key_store import KeyStore
from gateway.auth.key_verifier import KeyVerifier
from gateway.errors import AuthenticationFailed
from tests.clock import Clock

PEPPER = secrets.token_bytes(32)


class CountingStore:
    """The key store's two calls the verifier makes, counting reads; ``gate`` holds reads."""

    def __init__(self) -> None:
        self.records: dict[str, KeyRecord] = {}
        self.reads = 0
        self.gate: asyncio.Event | None = None

    async def get(self, key_id: str) -> KeyRecord | None:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        return self.records.get(key_id)

    async def touch(self, key_id: str, now: float) -> None:
        pass


def issue(store: CountingStore, now: float, **changes: object) -> tuple[str, KeyRecord]:
    key_id, key = api_keys.new_key()
    record = KeyRecord(
        id=key_id,
        team="t",
        name="svc",
        roles=(),
        models=None,
        limits=(),
        created=now,
        expires=None,
        state=ACTIVE,
        digest=api_keys.digest(PEPPER, key),
    )
    record = dataclasses.replace(record, **changes)  # type: ignore[arg-type]
    store.records[key_id] = record
    return key, record


def verifier(store: CountingStore, clock: Clock, size: int = 100) -> KeyVerifier:
    fake: KeyStore = store  # type: ignore[assignment]
    return KeyVerifier(fake, PEPPER, clock=clock, cache_seconds=1.0, cache_size=size)


async def reason(v: KeyVerifier, key: str) -> str:
    with pytest.raises(AuthenticationFailed) as caught:
        await v.verify(key)
    return caught.value.reason


async def test_steady_traffic_costs_one_read_per_period() -> None:
    store, clock = CountingStore(), Clock(1000.0)
    key, _ = issue(store, clock())
    v = verifier(store, clock)
    for _ in range(500):
        assert (await v.verify(key)).user == "key:svc"
        clock.advance(0.001)  # half a second in all
    assert store.reads == 1
    clock.advance(0.6)  # past the second since the read began
    await v.verify(key)
    assert store.reads == 2


async def test_an_unknown_or_forged_key_costs_one_read_per_period() -> None:
    store, clock = CountingStore(), Clock(1000.0)
    key, _ = issue(store, clock())
    v = verifier(store, clock)
    unknown = "gwk_" + secrets.token_hex(8) + "_" + secrets.token_hex(24)
    forged = key[:21] + secrets.token_hex(24)
    for _ in range(100):
        assert await reason(v, unknown) == "key_unknown"
        assert await reason(v, forged) == "key_unknown"
    assert store.reads == 2
    assert await reason(v, "gwk_short") == "key_malformed"
    assert store.reads == 2  # a malformed key never reaches Redis


async def test_concurrent_look_ups_of_one_key_share_one_read() -> None:
    store, clock = CountingStore(), Clock(1000.0)
    key, _ = issue(store, clock())
    v = verifier(store, clock)
    store.gate = asyncio.Event()
    waiting = [asyncio.create_task(v.verify(key)) for _ in range(50)]
    await asyncio.sleep(0)
    store.gate.set()
    assert {p.team for p in await asyncio.gather(*waiting)} == {"t"}
    assert store.reads == 1


async def test_a_revocation_is_seen_within_the_cache_period() -> None:
    store, clock = CountingStore(), Clock(1000.0)
    key, record = issue(store, clock())
    v = verifier(store, clock)
    await v.verify(key)
    store.records[record.id] = dataclasses.replace(record, state=REVOKED)
    clock.advance(0.999)
    await v.verify(key)  # still within what this replica read a moment ago
    clock.advance(0.001)
    assert await reason(v, key) == "key_revoked"


async def test_expiry_and_the_rotation_grace_hold_to_the_second_from_the_cache() -> None:
    store, clock = CountingStore(), Clock(1000.0)
    key, record = issue(store, clock(), expires=1000.5)
    v = verifier(store, clock)
    await v.verify(key)
    clock.advance(0.5)
    assert await reason(v, key) == "key_expired"
    assert store.reads == 1  # refused from the cache, no new read needed
    old, record = issue(store, clock())
    new = api_keys.rekey(record.id)
    store.records[record.id] = dataclasses.replace(
        record,
        digest=api_keys.digest(PEPPER, new),
        previous_digest=record.digest,
        previous_until=clock() + 0.25,
    )
    await v.verify(old)
    await v.verify(new)
    clock.advance(0.25)
    assert await reason(v, old) == "key_unknown"
    assert (await v.verify(new)).team == "t"


async def test_the_cache_is_bounded() -> None:
    store, clock = CountingStore(), Clock(1000.0)
    v = verifier(store, clock, size=10)
    for _ in range(50):
        await reason(v, "gwk_" + secrets.token_hex(8) + "_" + secrets.token_hex(24))
    assert len(v._cache) <= 10


async def test_without_a_pepper_no_key_reaches_redis() -> None:
    store, clock = CountingStore(), Clock(1000.0)
    key, _ = issue(store, clock())
    fake: KeyStore = store  # type: ignore[assignment]
    v = KeyVerifier(fake, None, clock=clock)
    assert await reason(v, key) == "key_disabled"
    assert store.reads == 0
