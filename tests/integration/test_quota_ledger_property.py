"""A property-based test of the quota ledger against a real Redis server (issue 4).

A hypothesis state machine interleaves creates, completions, failures, polls, crashed creates,
creates with an unknown outcome, reconciler passes, admin resets of a window, racing
settlements and clock jumps (across day and month boundaries), and after every step checks
the ledger in Redis against a model:

* every usage counter (video seconds per day and per month, spend per month) equals the sum of
  the costs of the live reservations charged to it: those still ``reserved`` or ``kept``, less
  those an admin reset of that bucket forgave (a reset zeroes the bucket; a job charged before
  it no longer counts there, and its later refund must not touch the bucket);
* no counter is ever negative;
* each job is settled at most once, by whichever path (complete, fail, racing callers, the
  reconciler): at most one settle call returns True, and the reservation's state only ever
  goes reserved -> kept or reserved -> refunded;
* the concurrency slots are exactly the unsettled jobs whose lease has not been pruned, and the
  open index is exactly the unsettled jobs.

The machine also predicts every admission decision (which limit rejects a create) and which
reservations a reconciler pass settles, and checks both.

The reconciler runs with a real (empty) job registry, so every reservation looks like a create
without a job record: one whose outcome is unknown is kept, any other is refunded once it is
older than ``orphan_seconds`` and nobody polled it for ``idle_seconds``.

This machine found that a refund of a job reserved in the same millisecond as an admin reset,
after it, skipped the reset bucket (see the comment on ``admin_reset``); fixed in e5a70fb.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from hypothesis import Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis

from gateway.errors import QuotaExceeded
from gateway.quota.model import Cost, job_cost, shown, stored_limit
from gateway.quota.service import QuotaService, Reservation
from gateway.quota.store import QuotaStore
from gateway.settings import QuotaSettings, RedisSettings, VideoSettings, team_table
from gateway.store.client import close_redis, make_redis
from gateway.store.keys import TEAMS, TeamKeys
from gateway.videos.reconciler import Reconciler
from gateway.videos.registry import JobRegistry
from tests.clock import Clock

T = TypeVar("T")

# Set by the test function from the session's Redis server before the machine runs.
REDIS_URL: str | None = None

# Ten minutes before a new year: the first clock jumps cross a day and a month.
START_MS = int(datetime(2026, 12, 31, 23, 50, tzinfo=UTC).timestamp()) * 1000
LEASE_S = 3600
IDLE_S = 60
ORPHAN_S = 600
PRICE_PER_SECOND = 0.1
SIZE_MULTIPLIERS = {"1280x720": 1.0, "1792x1024": 2.5}
LIMITS: dict[str, Any] = {
    "concurrent_jobs": 3,
    "video_seconds_per_day": 40,
    "video_seconds_per_month": 100,
    "spend_per_month": 6,
}
CODES = {
    "concurrent_jobs": "concurrency_limit_exceeded",
    "video_seconds_per_day": "video_seconds_quota_exceeded",
    "video_seconds_per_month": "video_seconds_quota_exceeded",
    "spend_per_month": "spend_quota_exceeded",
}
LIVE = ("reserved", "kept")


@dataclass
class Job:
    """What the model knows about one job id."""

    id: str
    admitted: bool
    reserved_ms: int = 0
    charges: tuple[tuple[str, str, int], ...] = ()  # (kind, bucket key, amount)
    state: str = "rejected"  # 'reserved' | 'kept' | 'refunded' | 'rejected' (never reserved)
    unknown: bool = False
    forgiven: set[str] = field(default_factory=set)  # buckets reset after it was charged
    wins: int = 0  # settle calls, on any path, that reported settling this job


async def _connect(url: str) -> Redis:
    return make_redis(RedisSettings(url=url))  # as the gateway builds it


class QuotaLedger(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert REDIS_URL is not None
        self.loop = asyncio.new_event_loop()
        self.redis = self.loop.run_until_complete(_connect(REDIS_URL))
        self.team = "prop-" + secrets.token_hex(4)
        self.k = TeamKeys(self.team)
        self.clock = Clock(START_MS / 1000)
        self.svc = QuotaService(
            QuotaStore(self.redis),
            QuotaSettings(lease_seconds=LEASE_S),
            teams=team_table({self.team: LIMITS}),
            videos=VideoSettings(),
            clock=self.clock,
        )
        self.reconciler = Reconciler(
            self.redis,
            None,  # type: ignore[arg-type]  # only used for jobs that have a record
            self.svc,
            JobRegistry(self.redis),  # on the same Redis, and empty
            interval_seconds=30,
            idle_seconds=IDLE_S,
            orphan_seconds=ORPHAN_S,
            clock=self.clock,
        )
        # The model.
        self.jobs: dict[str, Job] = {}
        self.order: list[str] = []
        self.counters: dict[str, int] = {}  # bucket key -> what it must hold
        self.slots: dict[str, int] = {}  # job -> lease expiry (ms), as the slots ZSET holds it
        self.open: dict[str, int] = {}  # job -> last seen (ms), as the open index holds it

    # -- plumbing ---------------------------------------------------------------------------

    def run(self, aw: Awaitable[T]) -> T:
        async def go() -> T:
            return await aw

        return self.loop.run_until_complete(go())

    def teardown(self) -> None:
        async def clean() -> None:
            try:
                keys = [key async for key in self.redis.scan_iter(match=f"{self.k.prefix}*")]
                if keys:
                    await self.redis.delete(*keys)
                await self.redis.srem(TEAMS, self.team)
            finally:
                await close_redis(self.redis)

        try:
            self.loop.run_until_complete(clean())
        finally:
            self.loop.close()

    @property
    def now(self) -> int:
        return self.clock.ms

    def pick(self, data: st.DataObject) -> Job:
        # From every id ever tried, admitted or not: which creates were admitted can depend on
        # how an earlier race ended, and hypothesis needs the draws themselves reproducible.
        return self.jobs[data.draw(st.sampled_from(self.order), label="job")]

    def has_jobs(self) -> bool:
        return bool(self.order)

    def windows(self) -> tuple[str, str]:
        t = datetime.fromtimestamp(self.now / 1000, UTC)
        return t.strftime("%Y%m%d"), t.strftime("%Y%m")

    def bucket_keys(self) -> dict[str, str]:
        day, month = self.windows()
        return {
            "video_seconds_per_day": self.k.video_day(day),
            "video_seconds_per_month": self.k.video_month(month),
            "spend_per_month": self.k.spend_month(month),
        }

    def settled(self, job: Job, outcome: str) -> None:
        """Apply one settlement to the model."""
        assert job.state == "reserved", f"{job.id} settled again from {job.state}"
        job.state = outcome
        job.wins += 1
        assert job.wins == 1
        if outcome == "refunded":
            if job.forgiven:
                event("a refund after an admin reset of its bucket")
            for _, key, amount in job.charges:
                if key not in job.forgiven:
                    self.counters[key] -= amount
                    assert self.counters[key] >= 0
        self.slots.pop(job.id, None)
        self.open.pop(job.id, None)

    # -- creating ----------------------------------------------------------------------------

    def _reserve(self, seconds: int, size: str, weight: float) -> Job:
        job_id = f"video_{len(self.order) + 1:032x}"
        cost: Cost = job_cost(
            seconds,
            size,
            weight=weight,
            price_per_second=PRICE_PER_SECOND,
            size_multipliers=SIZE_MULTIPLIERS,
        )
        keys = self.bucket_keys()
        amounts = {
            "video_seconds_per_day": cost.video_units,
            "video_seconds_per_month": cost.video_units,
            "spend_per_month": cost.spend_units,
        }
        # What the script must decide: expired leases are pruned first, then the concurrency
        # limit, then day, month and spend, in that order.
        lapsed = [j for j, exp in self.slots.items() if exp <= self.now]
        if lapsed:
            event("a lapsed lease was pruned")
        self.slots = {j: exp for j, exp in self.slots.items() if exp > self.now}
        expected: str | None = None
        if len(self.slots) + 1 > LIMITS["concurrent_jobs"]:
            expected = "concurrent_jobs"
        else:
            for kind in ("video_seconds_per_day", "video_seconds_per_month", "spend_per_month"):
                limit = stored_limit(kind, LIMITS[kind])
                if self.counters.get(keys[kind], 0) + amounts[kind] > limit:
                    expected = kind
                    break
        res: Reservation | None = None
        code: str | None = None
        try:
            res = self.run(self.svc.reserve(self.team, job_id, cost))
        except QuotaExceeded as e:
            code = e.code
            event(f"create rejected: {code}")
        if res is None:
            assert expected is not None, f"{job_id} rejected ({code}), expected admitted"
            assert code == CODES[expected], (code, expected)
            job = Job(job_id, admitted=False)
        else:
            assert expected is None, f"{job_id} admitted, expected rejected by {expected}"
            assert res.created
            job = Job(
                job_id,
                admitted=True,
                reserved_ms=self.now,
                charges=tuple((kind, keys[kind], amounts[kind]) for kind in keys),
                state="reserved",
            )
            for kind, key in keys.items():
                self.counters[key] = self.counters.get(key, 0) + amounts[kind]
            self.slots[job_id] = self.now + LEASE_S * 1000
            self.open[job_id] = self.now
        self.jobs[job_id] = job
        self.order.append(job_id)
        return job

    seconds = st.sampled_from([4, 8, 12])
    sizes = st.sampled_from(sorted(SIZE_MULTIPLIERS))
    weights = st.sampled_from([1.0, 1.5])

    @rule(seconds=seconds, size=sizes, weight=weights)
    def create(self, seconds: int, size: str, weight: float) -> None:
        self._reserve(seconds, size, weight)

    @rule(seconds=seconds, size=sizes, weight=weights)
    def crash(self, seconds: int, size: str, weight: float) -> None:
        """Reserved, then the replica died before the upstream answered: nobody settles it
        but the reconciler (no rule picks it specially; the others may still touch it)."""
        self._reserve(seconds, size, weight)

    @rule(seconds=seconds, size=sizes, weight=weights)
    def unknown(self, seconds: int, size: str, weight: float) -> None:
        """Reserved, then the upstream call's outcome was lost: the charge waits for the
        reconciler, which keeps it."""
        job = self._reserve(seconds, size, weight)
        self.run(self.svc.mark_unknown(self.team, job.id))
        job.unknown = job.admitted

    # -- the request path ---------------------------------------------------------------------

    def _settle(self, job: Job, outcome: str) -> None:
        expected = job.state == "reserved"
        done = self.run(self.svc.settle(self.team, job.id, outcome))
        assert done == expected, f"settle({job.id}, {outcome}) -> {done} from {job.state}"
        if done:
            self.settled(job, outcome)

    @precondition(has_jobs)
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        self._settle(self.pick(data), "kept")

    @precondition(has_jobs)
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        self._settle(self.pick(data), "refunded")

    @precondition(has_jobs)
    @rule(data=st.data())
    def poll(self, data: st.DataObject) -> None:
        job = self.pick(data)
        self.run(self.svc.renew(self.team, job.id))
        # Only members that exist are touched: a pruned lease stays pruned, a settled job
        # stays settled; a lapsed lease not yet pruned is extended.
        if job.id in self.open:
            self.open[job.id] = self.now
        if job.id in self.slots:
            self.slots[job.id] = self.now + LEASE_S * 1000

    @precondition(has_jobs)
    @rule(
        data=st.data(),
        outcomes=st.lists(st.sampled_from(["kept", "refunded"]), min_size=2, max_size=6),
    )
    def racing_settlements(self, data: st.DataObject, outcomes: list[str]) -> None:
        """Several pollers see the job end at once (and one renews it): one settles it."""
        job = self.pick(data)
        was_open = job.state == "reserved"

        async def race() -> list[bool]:
            results = await asyncio.gather(
                *(self.svc.settle(self.team, job.id, o) for o in outcomes),
                self.svc.renew(self.team, job.id),
            )
            return [bool(r) for r in results[: len(outcomes)]]

        done = self.run(race())
        assert sum(done) == (1 if was_open else 0), (job.id, outcomes, done)
        if was_open:
            self.settled(job, outcomes[done.index(True)])

    # -- the reconciler -----------------------------------------------------------------------

    def _expected_pass(self) -> dict[str, str]:
        """What a reconciler pass at ``now`` must settle: job -> outcome."""
        cutoff = self.now - IDLE_S * 1000
        stale = sorted((seen, j) for j, seen in self.open.items() if seen <= cutoff)
        out: dict[str, str] = {}
        for _, job_id in stale[:100]:
            job = self.jobs[job_id]
            if job.unknown:
                out[job_id] = "kept"
            elif self.now - job.reserved_ms > ORPHAN_S * 1000:
                out[job_id] = "refunded"
        return out

    @rule(jump=st.booleans())
    def reconcile(self, jump: bool) -> None:
        if jump:
            self.clock.ms += (ORPHAN_S + 1) * 1000
        expected = self._expected_pass()
        report = self.run(self.reconciler.run_once())
        assert report.unknown_kept == sum(o == "kept" for o in expected.values()), report
        assert report.orphans_refunded == sum(o == "refunded" for o in expected.values())
        assert not any(report.drift.values()), report.drift
        for job_id, outcome in expected.items():
            self.settled(self.jobs[job_id], outcome)

    @precondition(has_jobs)
    @rule(data=st.data(), outcome=st.sampled_from(["kept", "refunded"]), jump=st.booleans())
    def reconcile_racing_a_settlement(self, data: st.DataObject, outcome: str, jump: bool) -> None:
        """A reconciler pass and a poller that sees the job end, at the same time."""
        if jump:
            self.clock.ms += (ORPHAN_S + 1) * 1000
        job = self.pick(data)
        was_open = job.state == "reserved"
        expected = self._expected_pass()

        async def race() -> tuple[Any, bool]:
            report, done = await asyncio.gather(
                self.reconciler.run_once(), self.svc.settle(self.team, job.id, outcome)
            )
            return report, bool(done)

        report, done = self.run(race())
        state = self.run(self.redis.hget(self.k.reservation(job.id), "state"))
        if not was_open:
            assert not done
        elif job.id not in expected:
            assert done, "the reconciler had no business with it"
        else:
            # Exactly one of them settled it, and the state says which.
            winner = outcome if done else expected[job.id]
            assert isinstance(state, bytes)
            assert state.decode() == winner, (state, done, expected)
        reconciler_got = was_open and job.id in expected and not done
        others = {j: o for j, o in expected.items() if j != job.id}
        if reconciler_got:
            others[job.id] = expected[job.id]
        assert report.unknown_kept == sum(o == "kept" for o in others.values()), report
        assert report.orphans_refunded == sum(o == "refunded" for o in others.values()), report
        # The only drift a race may show: the job the poller settled under the pass's feet.
        drift = {kind: n for kind, n in report.drift.items() if n}
        assert set(drift) <= {"open_index"}, report.drift
        assert sum(drift.values()) <= 1, report.drift
        if done:
            self.settled(job, outcome)
        for job_id, o in others.items():
            self.settled(self.jobs[job_id], o)

    # -- administration and time --------------------------------------------------------------

    # The model forgives, in a reset bucket, exactly the charges made *before* the reset (in
    # the order Redis ran them, not by clock). This machine found the gateway deciding it by
    # time (a refund skipped a bucket whose reset mark, the reset's now_ms, was >= the job's
    # reserved_ms), so a job reserved after a reset in the same millisecond kept its charge
    # once refunded: admin_reset('day'); create (same ms); fail -> the day bucket held 4000
    # with no live reservation. Fixed in e5a70fb (reset generations); the minimal case is
    # test_a_job_reserved_in_the_reset_millisecond_is_refunded below.
    @rule(window=st.sampled_from(["day", "month", "all"]))
    def admin_reset(self, window: str) -> None:
        keys = self.bucket_keys()
        kinds = {
            "day": ["video_seconds_per_day"],
            "month": ["video_seconds_per_month", "spend_per_month"],
            "all": list(keys),
        }[window]
        held = self.run(self.svc.admin.reset_usage(self.team, window))
        for kind in kinds:
            key = keys[kind]
            assert held[kind] == shown(kind, self.counters.get(key, 0)), (kind, held)
            self.counters[key] = 0
            # Every charge in the bucket is forgiven: a later refund must leave it alone.
            for job in self.jobs.values():
                if any(k == key for _, k, _ in job.charges):
                    job.forgiven.add(key)

    @rule(
        seconds=st.one_of(
            st.integers(1, 120), st.integers(121, 3 * 3600), st.sampled_from([IDLE_S + 1])
        )
    )
    def advance(self, seconds: int) -> None:
        self.clock.ms += seconds * 1000

    # -- the invariant ------------------------------------------------------------------------

    @invariant()
    def ledger_holds(self) -> None:
        admitted = [self.jobs[j] for j in self.order if self.jobs[j].admitted]
        rejected = [j for j in self.order if not self.jobs[j].admitted]
        buckets = sorted(self.counters)

        async def read() -> list[Any]:
            async with self.redis.pipeline(transaction=True) as pipe:
                for key in buckets:
                    pipe.get(key)
                for job in admitted:
                    pipe.hgetall(self.k.reservation(job.id))
                for job_id in rejected:
                    pipe.exists(self.k.reservation(job_id))
                pipe.zrange(self.k.slots, 0, -1, withscores=True)
                pipe.zrange(self.k.open, 0, -1, withscores=True)
                return list(await pipe.execute())

        replies = self.run(read())
        values = replies[: len(buckets)]
        hashes = replies[len(buckets) : len(buckets) + len(admitted)]
        exists = replies[len(buckets) + len(admitted) : -2]
        slots = {m.decode(): int(s) for m, s in replies[-2]}
        open_ = {m.decode(): int(s) for m, s in replies[-1]}

        # Every job's reservation is in the state the model says, and was settled at most once.
        states: dict[str, str] = {}
        for job, raw in zip(admitted, hashes, strict=True):
            h = {a.decode(): b.decode() for a, b in raw.items()}
            states[job.id] = h.get("state", "<missing>")
            assert states[job.id] == job.state, (job.id, h, job.state)
            assert job.wins == (0 if job.state == "reserved" else 1), (job.id, job.wins)
            assert h.get("outcome") == ("unknown" if job.unknown else None), (job.id, h)
        assert not any(exists), "a rejected create left a reservation"

        # Each counter is what the live reservations charged to it add up to.
        for key, raw in zip(buckets, values, strict=True):
            value = int(raw or 0)
            assert value >= 0, (key, value)
            live = sum(
                amount
                for job in admitted
                if states[job.id] in LIVE
                for _, k, amount in job.charges
                if k == key and k not in job.forgiven
            )
            assert value == live == self.counters[key], (key, value, live, self.counters[key])

        # Slots and the open index hold exactly the unsettled jobs (less pruned leases).
        reserved = {job.id for job in admitted if states[job.id] == "reserved"}
        assert set(open_) == reserved, (open_, reserved)
        assert open_ == self.open
        assert slots == self.slots, (slots, self.slots)
        assert set(slots) <= reserved
        unexpired = {j for j in reserved if self.slots.get(j, -1) > self.now}
        assert {j for j, exp in slots.items() if exp > self.now} == unexpired

        # And the team's own view agrees.
        usage = self.run(self.svc.usage(self.team))["limits"]
        assert usage["concurrent_jobs"]["used"] == len(unexpired)
        for kind, key in self.bucket_keys().items():
            assert usage[kind]["used"] == shown(kind, self.counters.get(key, 0)), (kind, usage)


def test_interleaved_jobs_keep_the_ledger(redis_url: str) -> None:
    global REDIS_URL
    REDIS_URL = redis_url  # the session's server, flushed for this test
    run_state_machine_as_test(
        QuotaLedger,
        settings=settings(
            max_examples=25,
            stateful_step_count=25,
            deadline=None,
            database=None,  # no example database in the working tree
            # No explain phase: once a case fails, it traces every line while shrinking, which
            # makes each later example several times slower (the shrinking alone took 20-60 s).
            phases=[p for p in Phase if p is not Phase.explain],
        ),
    )


# The machine's minimal failing case (see the comment on QuotaLedger.admin_reset) as a plain
# regression test: when a refund compared the reset's ms with the job's reserved_ms, a job
# charged after a reset in the same millisecond kept its charge after it was refunded (and
# across replicas, clock skew widened that window both ways). Fixed in e5a70fb.
async def test_a_job_reserved_in_the_reset_millisecond_is_refunded(redis_url: str) -> None:
    redis = await _connect(redis_url)
    try:
        team = "prop-" + secrets.token_hex(4)
        svc = QuotaService(
            QuotaStore(redis),
            QuotaSettings(lease_seconds=LEASE_S),
            teams=team_table({team: LIMITS}),
            videos=VideoSettings(),
            clock=Clock(START_MS / 1000),  # never moves: all three calls share one millisecond
        )
        job = f"video_{1:032x}"
        await svc.admin.reset_usage(team, "day")
        await svc.reserve(team, job, job_cost(4, "1280x720"))
        assert await svc.settle(team, job, "refunded")
        day = TeamKeys(team).video_day("20261231")
        assert int(await redis.get(day) or 0) == 0  # was 4000: charged and never returned
    finally:
        await close_redis(redis)
