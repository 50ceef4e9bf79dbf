"""One team's 429s cannot take the upstream key pool offline for the others, however long the
upstream's Retry-After; and an admin enabling a key lifts its cooldown on every replica."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import openai
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.settings import UpstreamKey
from gateway.sim.config import SimConfig
from gateway.store import keys
from gateway.upstream.health_store import RedisKeyHealthStore, health_key
from gateway.upstream.keypool import KeyPool
from tests.clock import Clock
from tests.conftest import Stack, make_stack
from tests.integration.test_videos_sdk import VIDEOS, upstream_job
from tests.servers import wait_for


def sdk(stack: Stack, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.v1, api_key=token, max_retries=0)


@contextlib.contextmanager
def replicas(
    redis_url: str,
    *,
    b_cache_seconds: float = 0.1,
    key_ids: tuple[str, ...] = ("primary", "secondary"),
) -> Iterator[tuple[Stack, Stack]]:
    """Two gateways on one Redis, sharing the simulator and its keys: a looks at the keys'
    shared health every 0.1 s, b every ``b_cache_seconds``."""
    with (
        make_stack(redis_url, key_ids=key_ids, upstream={"health_cache_seconds": 0.1}) as a,
        make_stack(
            redis_url,
            keys=a.keys,
            sim_url=a.sim_url,
            sim_app=a.sim_app,
            upstream={"health_cache_seconds": b_cache_seconds},
        ) as b,
    ):
        yield a, b


def test_one_team_cannot_keep_every_key_cooling_with_long_retry_afters(redis_url: str) -> None:
    """A team whose own calls (a saturated model) get 429 with a long Retry-After cools a key
    for up to ten cooldown periods. Its hold on that key lasts as long: were it one period, the
    team would cool a new key each period, and after N periods every key of an N-key pool
    would be cooling and another team would get no key at all."""
    with make_stack(
        redis_url,
        key_ids=("k1", "k2", "k3"),
        upstream={"cooldown_seconds": 1, "health_cache_seconds": 0.1},
    ) as s:
        s.sim_app.state.sim.add_fault(
            kind="status_429", count=-1, path_prefix="/v1/chat", retry_after="3600"
        )
        noisy = sdk(s, s.token(team="noisy"))
        deadline = time.monotonic() + 5  # five cooldown periods of one team's own 429s
        while time.monotonic() < deadline:
            with pytest.raises(openai.RateLimitError):
                noisy.chat.completions.create(
                    model="saturated", messages=[{"role": "user", "content": "x"}]
                )
            if all(s.app.pool.state(k) == "cooling" for k in ("k1", "k2", "k3")):
                break
            time.sleep(0.05)  # pacing the attacker, not waiting for an outcome
        # Another team, asking for something the upstream would serve, must still be served.
        with sdk(s, s.token(team="quiet")) as quiet:
            assert quiet.models.list().data  # was 503 no_upstream_key_available


def test_enabling_a_cooled_key_lifts_the_cooldown_on_every_replica(redis_url: str) -> None:
    """docs/security.md: an admin can re-enable a key, lifting a quarantine or cooldown, on
    every replica at once. A replica that had learnt the cooldown kept it (its refresh took the
    larger of the shared and its own cooling_until), for up to ten cooldowns."""
    with replicas(redis_url) as (a, b):
        primary = a.keys["primary"]
        a.sim_app.state.sim.add_fault(kind="status_429", count=1, key=primary, retry_after="60")
        client_a, client_b = sdk(a, a.token()), sdk(b, b.token())
        for _ in range(2):
            assert client_a.models.list().data
        assert a.app.pool.state("primary") == "cooling"

        def b_cooling() -> bool:
            client_b.models.list()
            return bool(b.app.pool.state("primary") == "cooling")

        wait_for(b_cooling, timeout=5, interval=0.05, message="b never saw the cooldown")

        admin = a.token(team="ops", roles=("gateway-admin",))
        r = httpx2.post(
            a.url + "/admin/v1/upstream-keys/primary/enable",
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert r.status_code == 200
        assert r.json()["state"] == "healthy"

        def b_healthy() -> bool:
            client_b.models.list()  # traffic drives b's background refresh
            return bool(b.app.pool.state("primary") == "healthy")

        wait_for(b_healthy, timeout=5, interval=0.05, message="b still cools the enabled key")


def test_one_teams_video_polls_cool_no_more_keys_than_its_other_calls(redis_url: str) -> None:
    """A job's status poll is its team's call: the upstream's 429s on a team's polls cool one
    key per cooldown period, as on its other calls. Polls went out as the gateway's own (no
    team), so a team with a job on every key, its polls refused with a long Retry-After,
    cooled the whole pool, and every other team got 503 no_upstream_key_available."""
    keys = ("k1", "k2", "k3")
    with make_stack(
        redis_url,
        key_ids=keys,
        sim=SimConfig(job_seconds=3600),
        upstream={"cooldown_seconds": 1, "health_cache_seconds": 0.1},
        videos={**VIDEOS, "deadline_seconds": 3600},
    ) as s:
        noisy = sdk(s, s.token(team="noisy"))
        on: dict[str, str] = {}  # a job of the team's on each key
        for _ in range(30):
            video = noisy.videos.create(prompt="a lighthouse at dusk", seconds="4")
            on.setdefault(upstream_job(s, video.id)[1].key_id or "", video.id)
            if set(on) >= set(keys):
                break
        assert set(on) >= set(keys), on
        s.sim_app.state.sim.add_fault(
            kind="status_429", count=-1, path_prefix="/v1/videos/", retry_after="3600"
        )
        for video_id in on.values():
            # The poll is refused; the caller still gets the job's last known state.
            assert noisy.videos.retrieve(video_id).status in ("queued", "in_progress")
        cooling = [k for k in keys if s.app.pool.state(k) == "cooling"]
        assert len(cooling) == 1, cooling
        with sdk(s, s.token(team="quiet")) as quiet:
            assert quiet.models.list().data


def test_a_replica_that_has_not_heard_of_a_disable_cannot_undo_it(redis_url: str) -> None:
    """An admin disables a key on one replica; another, whose view is older (its health
    cache), gets a 429 on that key and cools it. Saving its whole view of the key's health
    wrote 'enabled' over the admin's 'disabled', and every replica used the key again. A
    replica's verdict now changes only its own time (cooling, quarantine); only an admin
    changes whether a key is disabled."""
    # b does not look at the shared health again in this test
    with replicas(redis_url, b_cache_seconds=3600) as (a, b):
        client_a, client_b = sdk(a, a.token()), sdk(b, b.token())
        assert client_b.models.list().data  # b has loaded the shared health once
        admin = a.token(team="ops", roles=("gateway-admin",))
        r = httpx2.post(
            a.url + "/admin/v1/upstream-keys/primary/disable",
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert r.status_code == 200
        assert a.app.pool.state("primary") == "disabled"
        assert b.app.pool.state("primary") == "healthy"  # not heard of it yet
        a.sim_app.state.sim.add_fault(
            kind="status_429", count=-1, key=a.keys["primary"], retry_after="1"
        )
        for _ in range(4):  # b takes turns between the keys: some calls reach primary
            client_b.models.list()
        assert b.app.pool.state("primary") == "cooling"

        def a_refreshed() -> bool:
            before = a.app.pool._loaded_at
            client_a.models.list()  # traffic drives a's background refresh
            return bool(a.app.pool._loaded_at > before)

        wait_for(a_refreshed, timeout=5, interval=0.15, message="a never refreshed")
        wait_for(a_refreshed, timeout=5, interval=0.15, message="a never refreshed")
        assert a.app.pool.state("primary") == "disabled"
        r = httpx2.get(
            a.url + "/admin/v1/upstream-keys", headers={"Authorization": f"Bearer {admin}"}
        )
        assert r.status_code == 200
        assert {k["id"]: k["state"] for k in r.json()["data"]}["primary"] == "disabled"


def test_one_teams_concurrent_429s_cool_one_key_with_redis_unreachable(redis_url: str) -> None:
    """The pool's Redis calls time out (rate checks fail open, so calls still go out). The
    claim's fallback, "this replica's own record still bounds the team", wrote the record
    only after the failed claim returned: one team's concurrent requests, spread over every
    key and all refused 429 (a saturated model), each passed the local check and cooled its
    key, and every other team got 503 on this replica. Found by an attack on b52c0cc."""
    keys = ("k1", "k2", "k3")
    with make_stack(redis_url, key_ids=keys, upstream={"cooldown_seconds": 30}) as s:
        store = s.app.pool._store

        async def unreachable(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0.2)  # a socket timeout
            raise RedisConnectionError("Timeout connecting to server")

        store.claim = unreachable
        store.raise_time = unreachable
        s.sim_app.state.sim.add_fault(kind="status_429", count=-1, path_prefix="/v1/chat")
        noisy = sdk(s, s.token(team="noisy"))

        def call(_: int) -> int:
            try:
                noisy.chat.completions.create(
                    model="saturated", messages=[{"role": "user", "content": "x"}]
                )
            except openai.APIStatusError as exc:
                return exc.status_code
            return 200

        with ThreadPoolExecutor(len(keys)) as ex:
            assert list(ex.map(call, range(len(keys)))) == [429] * len(keys)
        cooling = [k for k in keys if s.app.pool.state(k) == "cooling"]
        assert len(cooling) == 1, cooling
        with sdk(s, s.token(team="quiet")) as quiet:
            assert quiet.models.list().data


def test_a_lift_holds_on_a_replica_whose_older_refresh_finishes_last(redis_url: str) -> None:
    """Replica b has a background refresh in flight whose read of Redis predates the admin's
    enable (made on a); b's admin GET then reads the lift and applies it. When the older
    refresh finished, its pre-lift quarantine was merged back and, its lift stamp being no
    newer than b's, no later refresh took the lifted times again: b kept the key out for the
    whole quarantine_seconds, and its admin API said 'quarantined'. Found by an attack on
    b52c0cc."""
    with replicas(redis_url) as (a, b):
        sim = a.sim_app.state.sim
        admin_a = {"Authorization": f"Bearer {a.token(team='ops', roles=('gateway-admin',))}"}
        admin_b = {"Authorization": f"Bearer {b.token(team='ops', roles=('gateway-admin',))}"}

        def states(stack: Stack, headers: dict[str, str]) -> dict[str, str]:
            r = httpx2.get(stack.url + "/admin/v1/upstream-keys", headers=headers)
            assert r.status_code == 200, r.text
            return {k["id"]: k["state"] for k in r.json()["data"]}

        # primary is refused, and the probe confirms it: quarantined, shared.
        fault = sim.add_fault(kind="status_401", count=-1, key=a.keys["primary"])
        client_a, client_b = sdk(a, a.token()), sdk(b, b.token())
        wait_for(
            lambda: (client_a.models.list(), a.app.pool.state("primary"))[1] == "quarantined",
            timeout=5,
            interval=0.05,
            message="a never quarantined primary",
        )
        sim.faults.remove(fault)  # the operator fixes the key upstream
        wait_for(
            lambda: states(b, admin_b)["primary"] == "quarantined",
            timeout=5,
            interval=0.05,
            message="b never saw the quarantine",
        )
        # b's next background load reads Redis at once; its answer is handled only once the
        # admin's enable and b's own refresh after it are done (a slow connection, a busy loop).
        store = b.app.pool._store
        real_load = store.load
        read, go, done = threading.Event(), threading.Event(), threading.Event()
        slow = {"once": True}

        async def load(key_ids: Sequence[str]) -> Any:
            rows = await real_load(key_ids)
            if slow.pop("once", False):
                read.set()
                while not go.is_set():
                    await asyncio.sleep(0.01)
                done.set()
            return rows

        store.load = load

        def refresh_started() -> bool:
            client_b.models.list()  # traffic starts b's background refresh
            return read.is_set()

        wait_for(refresh_started, timeout=5, interval=0.05, message="b never refreshed")
        r = httpx2.post(a.url + "/admin/v1/upstream-keys/primary/enable", headers=admin_a)
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "healthy"
        assert states(b, admin_b)["primary"] == "healthy"  # b's own refresh reads the lift
        go.set()
        assert done.wait(5)  # the older refresh has finished
        for _ in range(10):  # refreshes later, the lift still holds on b
            client_b.models.list()
            assert states(b, admin_b)["primary"] == "healthy"
        assert states(a, admin_a)["primary"] == "healthy"


class ExpiresBetween:
    """Replica a's Redis connection: its GET arrives just after the claim expired, and
    replica b's claim lands right after that GET."""

    def __init__(self, redis: Redis, then: Any) -> None:
        self._redis = redis
        self._then = then

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    async def get(self, key: str) -> Any:
        await self._redis.delete(key)  # the old claim's PX ran out just now
        raw = await self._redis.get(key)
        then, self._then = self._then, None
        if then is not None:
            await then()
        return raw


async def test_two_replicas_never_both_hold_one_teams_claim(redis_url: str) -> None:
    """The claim was SET NX, then GET, then a plain SET when the GET found it gone (expired in
    between): another replica's SET NX landing in that gap was overwritten, and both believed
    the team held their key, so the team cooled two keys in one period. Found by an attack."""
    redis = Redis.from_url(redis_url)
    try:
        b = RedisKeyHealthStore(redis)
        got_b: list[str] = []

        async def b_claims() -> None:
            got_b.append(await b.claim("noisy", "k2", 30))

        a = RedisKeyHealthStore(ExpiresBetween(redis, b_claims))  # type: ignore[arg-type]
        await redis.set(keys.upstream_cooler("noisy"), "k0", px=30_000)  # an earlier claim
        got_a = await a.claim("noisy", "k1", 30)
        # Each replica cools the key claim() says the team holds: only one may be its own.
        assert not (got_a == "k1" and got_b == ["k2"]), (got_a, got_b)
    finally:
        await redis.aclose()


def _pool_pair(redis: Redis, ca: Clock, cb: Clock, ids: tuple[str, str]) -> tuple[KeyPool, KeyPool]:
    listed = [UpstreamKey(id=k, secret=f"s-{k}") for k in ids]
    return (
        KeyPool(listed, RedisKeyHealthStore(redis), clock=ca, quarantine_seconds=600),
        KeyPool(listed, RedisKeyHealthStore(redis), clock=cb, quarantine_seconds=600),
    )


async def _forget(redis: Redis, *ids: str) -> None:
    """Redis restarted without its data (or was flushed), for these keys' health."""
    await redis.delete(*(health_key(k) for k in ids))


@contextlib.asynccontextmanager
async def _known_then_forgotten(
    redis_url: str,
) -> AsyncIterator[tuple[Redis, tuple[str, str], KeyPool, KeyPool, Clock, Clock]]:
    """Two replicas whose clocks are 5 s apart (a ahead); an admin enabled a key on a, b
    learnt the decision's stamp, and then Redis lost the keys' health."""
    redis = Redis.from_url(redis_url)
    ids = (f"k0-{secrets.token_hex(3)}", f"k1-{secrets.token_hex(3)}")
    try:
        ca, cb = Clock(time.time() + 5), Clock(time.time())
        a, b = _pool_pair(redis, ca, cb, ids)
        await a.set_disabled(ids[0], False)
        await b.refresh()
        await _forget(redis, *ids)
        yield redis, ids, a, b, ca, cb
    finally:
        await redis.aclose()


async def test_after_redis_forgets_an_enable_from_a_slower_replica_lifts_everywhere(
    redis_url: str,
) -> None:
    """Replica clocks 5 s apart. An admin enables a key on the fast replica a, b learns the
    decision's stamp, then Redis loses its data. The key is quarantined (on b), fixed, and
    enabled on b: the decision was stamped with b's clock, below the stamp both replicas
    held, so a kept the quarantine. Decisions are stamped by Redis's own clock now. Found by
    an attack on 52a2663."""
    async with _known_then_forgotten(redis_url) as (redis, ids, a, b, ca, _cb):
        await b.quarantine(ids[0])
        await a.refresh()
        assert a.state(ids[0]) == "quarantined"
        await b.refresh()
        await b.set_disabled(ids[0], False)  # the admin, on b
        assert b.state(ids[0]) == "healthy"
        for _ in range(3):
            ca.advance(1)
            await a.refresh()
        assert a.state(ids[0]) == "healthy", await redis.hgetall(health_key(ids[0]))


async def test_after_redis_forgets_a_verdict_predating_an_enable_does_not_undo_it(
    redis_url: str,
) -> None:
    """After Redis lost its data the admin enables a key on b (slower clock); a, not yet
    aware of it, confirms a 401 on the key. Its verdict carried a's old stamp, above the new
    decision's, so Redis took it and every replica, b included, was quarantined again. Found
    by an attack on 52a2663."""
    async with _known_then_forgotten(redis_url) as (redis, ids, a, b, _ca, cb):
        await b.refresh()
        await b.set_disabled(ids[0], False)  # the admin, on b (a has not refreshed since)
        await a.quarantine(ids[0])  # a's verdict, made before it heard of the enable
        for _ in range(3):
            cb.advance(1)
            await b.refresh()
        assert b.state(ids[0]) == "healthy", await redis.hgetall(health_key(ids[0]))


async def test_a_disable_outlives_redis_forgetting_it(redis_url: str) -> None:
    """An admin disables a (leaked) key; Redis then loses its data. Every replica's next
    refresh read 'not disabled' and took it, though each held the decision's stamp, newer
    than anything Redis now had: the key was back in rotation, decided by no admin. Found by
    an attack on 52a2663."""
    redis = Redis.from_url(redis_url)
    ids = (f"k0-{secrets.token_hex(3)}", f"k1-{secrets.token_hex(3)}")
    try:
        clock = Clock(time.time())
        a, b = _pool_pair(redis, clock, clock, ids)
        await a.set_disabled(ids[0], True)
        await b.refresh()
        assert (a.state(ids[0]), b.state(ids[0])) == ("disabled", "disabled")
        await _forget(redis, *ids)
        clock.advance(1)
        await a.refresh()
        await b.refresh()
        assert (a.state(ids[0]), b.state(ids[0])) == ("disabled", "disabled")
    finally:
        await redis.aclose()


async def test_an_enable_both_replicas_knew_outlives_redis_restarting_from_an_older_snapshot(
    redis_url: str,
) -> None:
    """Redis restarted from its last snapshot (no append-only file, or a lagging replica
    promoted): the key's health is back as it was before an admin's enable, quarantined, with
    the older stamp. Both replicas knew the enable; their refresh kept the decision's flag but
    merged the snapshot's quarantine back, on every replica for the whole period. A time now
    merges only if its verdict knew of the decision. Found by an attack on bb560a4."""
    redis = Redis.from_url(redis_url)
    ids = (f"k0-{secrets.token_hex(3)}", f"k1-{secrets.token_hex(3)}")
    try:
        clock = Clock(time.time())
        a, b = _pool_pair(redis, clock, clock, ids)
        await a.set_disabled(ids[0], False)  # an earlier decision: the hash has a stamp
        await b.refresh()
        await b.quarantine(ids[0])  # a probe-confirmed 401, on b
        snapshot = await redis.dump(health_key(ids[0]))  # the snapshot Redis saves
        assert snapshot is not None
        await a.refresh()
        assert a.state(ids[0]) == "quarantined"
        clock.advance(1)
        await a.set_disabled(ids[0], False)  # the admin fixed the key and enabled it
        await b.refresh()
        assert (a.state(ids[0]), b.state(ids[0])) == ("healthy", "healthy")
        await redis.restore(health_key(ids[0]), 0, snapshot, replace=True)  # Redis restarts
        clock.advance(1)
        await a.refresh()
        await b.refresh()
        shared = await redis.hgetall(health_key(ids[0]))
        assert (a.state(ids[0]), b.state(ids[0])) == ("healthy", "healthy"), shared
    finally:
        await redis.aclose()


async def test_a_disable_after_redis_lost_its_data_reaches_every_replica(redis_url: str) -> None:
    """The Redis that stamped the last decision had a clock an hour ahead; it is replaced by
    one that knows nothing (its clock right). A key leaks and the admin disables it, as
    docs/operations.md says to re-issue decisions after a loss: stamped by the new Redis's
    clock, below the stamp replica a held, the disable never took on a, which kept serving
    the key for an hour. A replica that sees Redis's stamp below its own now leaves it as a
    floor the next decision is stamped above. Found by an attack on bb560a4."""
    redis = Redis.from_url(redis_url)
    ids = (f"k0-{secrets.token_hex(3)}", f"k1-{secrets.token_hex(3)}")
    try:
        clock = Clock(time.time())
        a, b = _pool_pair(redis, clock, clock, ids)
        await a.set_disabled(ids[0], False)
        # what the old Redis, its clock an hour ahead, had stamped
        await redis.hset(health_key(ids[0]), "lifted_at", repr(time.time() + 3600))
        await a.refresh()
        await _forget(redis, ids[0])  # the new Redis knows nothing
        clock.advance(1)
        await a.refresh()  # every replica has looked since the loss
        await b.refresh()
        await b.set_disabled(ids[0], True)  # the admin, on b
        assert b.state(ids[0]) == "disabled"
        for _ in range(3):
            clock.advance(1)
            await a.refresh()
        assert a.state(ids[0]) == "disabled", await redis.hgetall(health_key(ids[0]))
        lease = a.acquire()
        try:
            assert lease.key_id != ids[0]
        finally:
            lease.release()
    finally:
        await redis.aclose()


def test_a_probe_sent_before_an_enable_does_not_quarantine_after_it(redis_url: str) -> None:
    """b gets a 401 on the key and probes it, slowly. Meanwhile the operator fixes the key and
    enables it on a, and b learns the enable while its probe is still out. The probe, sent
    before the fix, answered 401, and b quarantined the key under the enable's stamp (read
    after the probe): Redis took it and every replica dropped the key the admin had just
    enabled. A verdict now carries the stamp known when its request went out. Found by an
    attack on bb560a4."""
    with replicas(redis_url, key_ids=("primary",)) as (a, b):
        sim = a.sim_app.state.sim
        secret = a.keys["primary"]
        auth = {"Authorization": f"Bearer {a.token(team='ops', roles=('gateway-admin',))}"}
        b_auth = {"Authorization": f"Bearer {b.token(team='ops', roles=('gateway-admin',))}"}
        client_b = sdk(b, b.token())
        assert client_b.models.list().data
        sim.clear()
        sim.add_fault(kind="status_401", count=1, path_prefix="/v1/chat", key=secret)
        sim.add_fault(kind="slow", count=1, path_prefix="/v1/models", key=secret, delay=3.0)
        sim.add_fault(kind="status_401", count=1, path_prefix="/v1/models", key=secret)
        done = threading.Event()
        refused: list[int] = []

        def call() -> None:
            try:
                client_b.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
                )
            except openai.APIStatusError as exc:
                refused.append(exc.status_code)
            finally:
                done.set()

        threading.Thread(target=call, daemon=True).start()
        wait_for(
            lambda: bool(sim.requests_for("/v1/models")),
            timeout=5,
            interval=0.02,
            message="b never probed",
        )
        # The probe is out; the operator fixes the key upstream and enables it on a.
        r = httpx2.post(a.url + "/admin/v1/upstream-keys/primary/enable", headers=auth)
        assert r.status_code == 200, r.text
        r = httpx2.get(b.url + "/admin/v1/upstream-keys", headers=b_auth)  # b refreshes
        assert r.status_code == 200
        assert not done.is_set(), "inconclusive: the probe came back before the enable"
        assert done.wait(10)
        assert refused == [502]  # the pooled key refused: never a 401 about the caller
        r = httpx2.get(a.url + "/admin/v1/upstream-keys", headers=auth)
        assert {k["id"]: k["state"] for k in r.json()["data"]}["primary"] == "healthy", r.json()


async def test_a_replica_started_after_a_loss_is_heard_by_the_others(redis_url: str) -> None:
    """An admin had decided on two keys; Redis lost their health; replica a keeps the
    decisions and leaves their floors. Replica c starts after the loss, confirms a 401 on
    one key and gets a 429 on the other. a merged neither: c's verdicts carried no stamp (c
    never learnt the floor), and after a loss a merges only times made knowing its decision.
    A replica now takes a floor newer than anything it knows as its stamp. Found by an attack
    on d946695."""
    redis = Redis.from_url(redis_url)
    ids = (f"k0-{secrets.token_hex(3)}", f"k1-{secrets.token_hex(3)}")
    try:
        clock = Clock(time.time())
        a, _ = _pool_pair(redis, clock, clock, ids)
        await a.set_disabled(ids[0], False)
        await a.set_disabled(ids[1], False)
        await _forget(redis, *ids)  # Redis restarts without its data
        await a.refresh()  # a keeps the decisions and leaves their floors
        c, _ = _pool_pair(redis, clock, clock, ids)
        await c.refresh()  # c's start-up refresh
        lease = c.lease(ids[0])
        lease.release()
        await c.quarantine(ids[0], lease.seen)  # a probe-confirmed 401, on c
        lease = c.lease(ids[1])
        lease.release()
        assert await c.cool_down(ids[1], 30.0, team="t", seen=lease.seen)  # a 429, on c
        assert (c.state(ids[0]), c.state(ids[1])) == ("quarantined", "cooling")
        for _ in range(3):
            clock.advance(1)
            await a.refresh()
        shared = [await redis.hgetall(health_key(k)) for k in ids]
        assert (a.state(ids[0]), a.state(ids[1])) == ("quarantined", "cooling"), shared
    finally:
        await redis.aclose()
