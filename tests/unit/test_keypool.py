import asyncio
from collections.abc import Sequence
from dataclasses import replace

import pytest

from gateway.errors import NoUpstreamKey, StoreUnavailable
from gateway.settings import UpstreamKey
from gateway.upstream.keypool import COOLING, DISABLED, HEALTHY, QUARANTINED, KeyHealth, KeyPool
from tests.clock import Clock


class MemoryStore:
    """In-process stand-in for the Redis store (pure selection logic only)."""

    def __init__(self) -> None:
        self.rows: dict[str, KeyHealth] = {}
        self.claims: dict[str, str] = {}  # never expire here: the tests' clock moves the pool's
        self.fail = False
        self.time = 0.0  # the store's own clock, which stamps admin decisions
        self.floors: dict[str, float] = {}  # raise_floor's

    async def load(self, key_ids: Sequence[str]) -> dict[str, KeyHealth]:
        if self.fail:
            raise ConnectionError("down")
        return {k: replace(self.rows[k]) if k in self.rows else KeyHealth() for k in key_ids}

    async def save(self, key_id: str, health: KeyHealth) -> float:
        if self.fail:
            raise ConnectionError("down")
        before = max(
            self.rows[key_id].lifted_at if key_id in self.rows else 0.0,
            self.floors.get(key_id, 0.0),
        )
        self.time += 1
        stamp = max(before + 0.001, self.time)  # as decide.lua stamps it, by its own clock
        self.rows[key_id] = replace(health, lifted_at=stamp)
        return stamp

    async def raise_time(self, key_id: str, name: str, until: float, seen: float) -> None:
        if self.fail:
            raise ConnectionError("down")
        row = self.rows.setdefault(key_id, KeyHealth())
        if row.lifted_at > seen:  # as raise_time.lua: an admin decided since
            return
        if until > getattr(row, name):
            setattr(row, name, until)
            setattr(row, name.replace("_until", "_seen"), seen)

    async def raise_floor(self, key_id: str, stamp: float) -> None:
        self.floors[key_id] = max(self.floors.get(key_id, 0.0), stamp)

    async def claim(self, name: str, value: str, seconds: float) -> str:
        if self.fail:
            raise ConnectionError("down")
        return self.claims.setdefault(name, value)


def _keys(n: int) -> list[UpstreamKey]:
    return [UpstreamKey(id=f"k{i}", secret=f"s{i}") for i in range(n)]


def _replicas(store: MemoryStore, clock: Clock) -> tuple[KeyPool, KeyPool]:
    """Two replicas' pools of two keys on one store, with one clock."""
    return (
        KeyPool(_keys(2), store, clock=clock, quarantine_seconds=600),
        KeyPool(_keys(2), store, clock=clock, quarantine_seconds=600),
    )


def _pool(n: int = 3, store: MemoryStore | None = None, clock: Clock | None = None) -> KeyPool:
    return KeyPool(
        _keys(n), store, clock=clock or Clock(), cooldown_seconds=30, quarantine_seconds=600
    )


def test_round_robin_on_ties() -> None:
    pool = _pool(3)
    chosen = []
    for _ in range(6):
        lease = pool.acquire()
        chosen.append(lease.key_id)
        lease.release()
    assert sorted(chosen) == ["k0", "k0", "k1", "k1", "k2", "k2"]


def test_fewest_in_flight_wins() -> None:
    pool = _pool(2)
    a = pool.acquire()
    b = pool.acquire()
    assert {a.key_id, b.key_id} == {"k0", "k1"}
    a.release()
    c = pool.acquire()
    assert c.key_id == a.key_id
    c.release()
    c.release()  # releasing twice must not go negative
    assert pool.in_flight(a.key_id) == 0


async def test_cooldown_skips_key_until_it_expires() -> None:
    clock = Clock()
    pool = _pool(2, clock=clock)
    await pool.cool_down("k0", 10)
    assert pool.state("k0") == COOLING
    assert {pool.acquire().key_id for _ in range(4)} == {"k1"}
    clock.now += 10.5
    assert pool.state("k0") == HEALTHY


async def test_a_team_cools_one_key_per_cooldown_period_on_every_replica() -> None:
    store = MemoryStore()
    clock = Clock()
    a, b = _pool(3, store, clock), _pool(3, store, clock)
    assert await a.cool_down("k0", 10, team="t1") is True
    assert await a.cool_down("k1", 10, team="t1") is False  # known on this replica
    assert await b.cool_down("k2", 10, team="t1") is False  # and on the others, via the store
    assert [a.state(k) for k in ("k1", "k2")] == [HEALTHY, HEALTHY]
    assert await b.cool_down("k0", 10, team="t1") is True  # its own key again: b had not heard
    assert await b.cool_down("k1", 10, team="t2") is True  # another team's own budget
    assert await a.cool_down("k2", 10) is True  # a call of no team's is not bounded


async def test_a_teams_claim_lapses_with_its_period_here_even_without_the_store() -> None:
    store = MemoryStore()
    clock = Clock()
    errors: list[str] = []
    pool = KeyPool(_keys(2), store, clock=clock, cooldown_seconds=30, on_store_error=errors.append)
    store.fail = True
    assert await pool.cool_down("k0", 5, team="t") is True  # Redis down: this replica decides
    assert await pool.cool_down("k1", 5, team="t") is False
    clock.now += 30.5
    assert await pool.cool_down("k1", 5, team="t") is True
    assert "key_cooler_claim" in errors


async def test_all_cooling_raises_503_with_retry_after() -> None:
    pool = _pool(2)
    await pool.cool_down("k0", 5)
    await pool.cool_down("k1", 12)
    with pytest.raises(NoUpstreamKey) as info:
        pool.acquire()
    assert info.value.status == 503
    assert info.value.headers["retry-after"] == "5"


async def test_quarantine_and_admin_enable() -> None:
    store = MemoryStore()
    pool = _pool(1, store)
    await pool.quarantine("k0")
    assert pool.state("k0") == QUARANTINED
    assert store.rows["k0"].quarantined_until > 0
    with pytest.raises(NoUpstreamKey):
        pool.acquire()
    await pool.set_disabled("k0", False)
    assert pool.state("k0") == HEALTHY
    await pool.set_disabled("k0", True)
    assert pool.state("k0") == DISABLED
    with pytest.raises(NoUpstreamKey) as info:
        pool.acquire()
    assert info.value.headers["x-should-retry"] == "false"


async def test_health_is_shared_between_replicas() -> None:
    store = MemoryStore()
    clock = Clock()
    a, b = _pool(2, store, clock), _pool(2, store, clock)
    await a.cool_down("k1", 60)
    await b.refresh()
    assert b.state("k1") == COOLING
    # an admin enabling the key on one replica lifts the quarantine on the others
    await a.quarantine("k0")
    await b.refresh()
    assert b.state("k0") == QUARANTINED
    await a.set_disabled("k0", False)
    await b.refresh()
    assert b.state("k0") == HEALTHY


async def test_store_failure_keeps_local_view_and_reports() -> None:
    store = MemoryStore()
    errors: list[str] = []
    pool = KeyPool(_keys(2), store, clock=Clock(), on_store_error=errors.append)
    store.fail = True
    await pool.cool_down("k0", 30)
    await pool.refresh()
    assert pool.state("k0") == COOLING
    assert errors == ["key_health_save", "key_health_load"]


async def test_pinned_lease_uses_that_key_even_while_cooling() -> None:
    pool = _pool(2)
    await pool.cool_down("k1", 30)
    assert pool.lease("k1").key_id == "k1"
    await pool.quarantine("k1")
    with pytest.raises(NoUpstreamKey):
        pool.lease("k1")
    with pytest.raises(NoUpstreamKey):
        pool.lease("missing")


async def test_a_quarantine_the_store_never_heard_of_outlives_a_refresh() -> None:
    """Redis was down when the replica quarantined a key: its next refresh, Redis back, read
    no quarantine and erased the replica's own, putting the bad key back in turn."""
    store = MemoryStore()
    pool = _pool(2, store)
    store.fail = True
    await pool.quarantine("k0")
    store.fail = False
    await pool.refresh()
    assert pool.state("k0") == QUARANTINED
    await pool.set_disabled("k0", False)  # an admin's lift still ends it
    await pool.refresh()
    assert pool.state("k0") == HEALTHY


class TimingOutStore(MemoryStore):
    """Redis unreachable the way a real client sees it: each call waits (a connect or socket
    timeout) before it fails."""

    async def claim(self, name: str, value: str, seconds: float) -> str:
        await asyncio.sleep(0.01)
        raise ConnectionError("timed out")

    async def raise_time(self, key_id: str, name: str, until: float, seen: float) -> None:
        await asyncio.sleep(0.01)
        raise ConnectionError("timed out")


async def test_concurrent_429s_of_one_team_cool_one_key_when_redis_is_down() -> None:
    """Redis down (rate checks fail open, so calls still go out): one team's concurrent
    requests, spread over every key by least-in-flight selection, all get 429. 'This replica's
    own record still bounds the team', but the record is written only after the failed claim
    returns, so every concurrent claim passes the local check and every key cools: the other
    teams get 503 no_upstream_key_available on this replica."""
    pool = KeyPool(_keys(3), TimingOutStore(), clock=Clock(), cooldown_seconds=30)
    cooled = await asyncio.gather(
        *(pool.cool_down(k, 30, team="noisy") for k in ("k0", "k1", "k2"))
    )
    assert cooled.count(True) == 1, cooled
    pool.acquire().release()  # another team still gets a key


class SnapshotThenWaitStore(MemoryStore):
    """A load reads Redis at once and its reply is processed later (a slow connection, a busy
    loop): the first load after ``hold()`` waits for ``release()``."""

    def __init__(self) -> None:
        super().__init__()
        self._gate: asyncio.Event | None = None
        self._held: asyncio.Event | None = None
        self.snapshotted = asyncio.Event()

    def hold(self) -> None:
        self._gate = self._held = asyncio.Event()

    def release(self) -> None:
        assert self._held is not None
        self._held.set()

    async def load(self, key_ids: Sequence[str]) -> dict[str, KeyHealth]:
        rows = await super().load(key_ids)
        gate, self._gate = self._gate, None
        if gate is not None:
            self.snapshotted.set()
            await gate.wait()
        return rows


async def test_a_lift_is_not_undone_by_a_refresh_that_read_redis_before_it() -> None:
    """The admin enables a quarantined key while the replica's background refresh is in flight
    (its snapshot read before the lift). That stale snapshot, applied after the lift, took the
    larger quarantine back; and since its lifted_at is no newer than the replica's, no later
    refresh ever takes the shared (lifted) times again: the key stays quarantined on this
    replica for the whole quarantine_seconds, and the admin API here says so."""
    store = SnapshotThenWaitStore()
    clock = Clock()
    pool = KeyPool(_keys(2), store, clock=clock, cooldown_seconds=30, quarantine_seconds=600)
    await pool.quarantine("k0")
    assert pool.state("k0") == QUARANTINED
    store.hold()
    background = asyncio.create_task(pool.refresh())  # _maybe_refresh's task
    await store.snapshotted.wait()
    # the admin: AdminService.set_upstream_key refreshes, then enables
    clock.advance(0.5)
    await pool.refresh()
    await pool.set_disabled("k0", False)
    assert pool.state("k0") == HEALTHY
    store.release()
    await background
    for _ in range(5):  # however many refreshes later
        clock.advance(1)
        await pool.refresh()
    assert pool.state("k0") == HEALTHY, store.rows["k0"]


async def test_a_lift_seen_by_a_newer_refresh_is_not_undone_by_an_older_one() -> None:
    """Another replica's view: b has two refreshes in flight (its background one, and the one
    an admin's GET /admin/v1/upstream-keys makes), the lift landing between their reads. The
    newer one applies the lift; the older, finishing after it, put the quarantine back for
    good."""
    store = SnapshotThenWaitStore()
    clock = Clock()
    a, b = _replicas(store, clock)
    await a.quarantine("k0")
    await b.refresh()
    assert b.state("k0") == QUARANTINED
    store.hold()
    older = asyncio.create_task(b.refresh())
    await store.snapshotted.wait()
    clock.advance(0.5)
    await a.set_disabled("k0", False)  # the admin, on replica a
    await b.refresh()  # the admin's GET on b
    assert b.state("k0") == HEALTHY
    store.release()
    await older
    for _ in range(5):
        clock.advance(1)
        await b.refresh()
    assert b.state("k0") == HEALTHY, store.rows["k0"]


class SaveFailsOnce(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.fail_next_save = False

    async def save(self, key_id: str, health: KeyHealth) -> float:
        if self.fail_next_save:
            self.fail_next_save = False
            raise ConnectionError("timed out")
        return await super().save(key_id, health)


async def test_a_replica_whose_lift_save_failed_still_learns_a_later_disable() -> None:
    """Admin enables k0 on replica a; that one HSET times out (swallowed by _save). Later an
    admin disables k0 on replica b (its refresh + save succeed). a's lifted_at is newer than
    the shared one, so a skips every snapshot of k0 forever: it keeps using the disabled key."""
    store = SaveFailsOnce()
    clock = Clock()
    a, b = _replicas(store, clock)
    store.fail_next_save = True
    clock.advance(1)
    await a.refresh()
    with pytest.raises(StoreUnavailable):  # the admin gets a 503, not a 200 held here only
        await a.set_disabled("k0", False)  # admin enable on a: the save fails
    assert a.state("k0") == HEALTHY  # as it was: nothing was decided
    clock.advance(1)
    await b.refresh()
    await b.set_disabled("k0", True)  # admin disable on b: reaches Redis
    assert store.rows["k0"].disabled
    for _ in range(5):
        clock.advance(1)
        await a.refresh()
    assert a.state("k0") == DISABLED, (a.state("k0"), store.rows["k0"])


async def test_a_replica_whose_lift_save_failed_still_learns_other_replicas_quarantine() -> None:
    store = SaveFailsOnce()
    clock = Clock()
    a, b = _replicas(store, clock)
    store.fail_next_save = True
    clock.advance(1)
    with pytest.raises(StoreUnavailable):
        await a.set_disabled("k0", False)  # save fails
    clock.advance(1)
    await b.quarantine("k0")  # the upstream refused k0 (401 + probe) on b
    for _ in range(5):
        clock.advance(1)
        await a.refresh()
    assert a.state("k0") == QUARANTINED, (a.state("k0"), store.rows["k0"])


async def test_racing_enable_and_disable_the_later_disable_holds_everywhere() -> None:
    """Admin 1 enables k0 on a while admin 2 disables it on b. b's route refreshes (reads the
    old lifted_at), a's enable lands, then b's disable lands last: Redis says disabled, with
    b's older lifted_at. a skips that snapshot forever and serves the disabled key."""
    store = MemoryStore()
    clock = Clock()
    a, b = _replicas(store, clock)
    await a.quarantine("k0")
    await b.refresh()
    clock.advance(1)
    await b.refresh()  # admin 2's route on b: refresh ...
    await a.refresh()  # admin 1's route on a: refresh, enable
    await a.set_disabled("k0", False)
    await b.set_disabled("k0", True)  # ... then b's disable lands last
    assert store.rows["k0"].disabled
    assert b.state("k0") == DISABLED
    for _ in range(5):
        clock.advance(1)
        await a.refresh()
    assert a.state("k0") == DISABLED, (a.state("k0"), store.rows["k0"])


class SlowRaise(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.sent = asyncio.Event()

    async def raise_time(self, key_id: str, name: str, until: float, seen: float) -> None:
        self.sent.set()
        await self.gate.wait()
        await super().raise_time(key_id, name, until, seen)


async def test_a_verdict_made_before_a_lift_that_lands_after_it_does_not_undo_it() -> None:
    """b quarantines k0; its raise_time is slow. The admin enables k0 on a (after b's verdict).
    b's raise lands after the lift: Redis says quarantined again with the new lift stamp, and
    every replica, a included, takes the quarantine back: the admin's enable is undone."""
    store = SlowRaise()
    clock = Clock()
    a, b = _replicas(store, clock)
    verdict = asyncio.create_task(b.quarantine("k0"))
    await store.sent.wait()
    clock.advance(1)
    await a.refresh()
    await a.set_disabled("k0", False)  # the admin lifts, after the verdict
    store.gate.set()
    await verdict
    for _ in range(3):
        clock.advance(1)
        await a.refresh()
    assert a.state("k0") == HEALTHY, (a.state("k0"), store.rows["k0"])


async def test_an_enable_on_a_replica_with_a_slower_clock_lifts_everywhere() -> None:
    """Replica clocks differ by 5 s. Admin enables k0 on a (stamp = a's clock). Later k0 is
    quarantined; the admin enables it on b, whose clock is behind: b's stamp is
    max(b's clock, the stamp it read) = a's old stamp, equal to a's; a's refresh then takes
    the max of times and keeps its quarantine for the full period."""
    store = MemoryStore()
    ca, cb = Clock(1000.0), Clock(995.0)
    a = KeyPool(_keys(2), store, clock=ca, quarantine_seconds=600)
    b = KeyPool(_keys(2), store, clock=cb, quarantine_seconds=600)
    await a.set_disabled("k0", False)
    ca.advance(2)
    cb.advance(2)
    await a.quarantine("k0")
    ca.advance(2)
    cb.advance(2)
    await b.refresh()
    await b.set_disabled("k0", False)
    assert b.state("k0") == HEALTHY
    for _ in range(3):
        ca.advance(1)
        await a.refresh()
    assert a.state("k0") == HEALTHY, (a.state("k0"), store.rows["k0"])
