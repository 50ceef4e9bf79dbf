"""A property-based test of the metering scripts against a real Redis server.

A hypothesis state machine drives ``meter_reserve.lua`` and ``meter_settle.lua`` through
``MeterStore``, as ``Meter`` calls them (the windows and default limits from a ``QuotaPolicy``
on a pinned clock), and interleaves:

* reservations of random tokens and spend (and tags) against ``tokens_per_minute``,
  ``tokens_per_day``, ``spend_per_day`` and ``spend_per_month``, set as config defaults and
  sometimes overridden by the admin API's limits hash;
* settlements to a random real usage, failed calls (refunded: settled to nothing, no ledger),
  aborted calls (settled to their estimate, as ``Meter.settle(adm, None)`` does), several
  settlements of one call racing, settlements of a call already settled (or never admitted),
  and a settlement naming the wrong day or month;
* clock moves within the minute, past it, and across the day and month boundaries;
* the admin usage reset (``QuotaAdmin.reset_usage``: minute, day, month, all).

The model keeps no counters: after every step it derives what Redis must hold from the list of
calls and the resets alone, and the machine compares the team's *whole* keyspace with it:

* a day or month bucket holds, of the calls charged to it (a non-zero estimate, or a zero one
  settled above it) since its last reset, the estimate of each unsettled one and the real usage
  of each settled one (a refunded call: nothing), and exists iff such a call exists; the minute
  hash the same per second, for the seconds no reservation has pruned yet (and a second is
  absent when it holds nothing);
* so each call is charged exactly once, refunded at most once, and its correction goes only to
  the buckets (and the minute second) it was charged to, whatever the clock says when it
  settles; a reset bucket is never corrected by a call charged before the reset;
* each call settles exactly once (one ``settle`` answers True, every later one False and
  changes no byte), and the ledger of its admission day holds exactly its entries;
* every admission decision is the model's: admitted iff every window fits (minute, day tokens,
  day spend, month spend, then the day's tags), with the same refusing limit, use, limit and
  wait; an admitted call's reply carries the minute's use and its oldest second;
* every key but the limits hash has a TTL, and the team's own usage view agrees.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
import redis.exceptions
from hypothesis import Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis

from gateway.metering import ledger
from gateway.metering.prices import Usage
from gateway.metering.service import CALL_TTL_S
from gateway.metering.store import MeterStore, Verdict
from gateway.quota.model import DAY_TTL_S, MONTH_TTL_S, TOKEN_WINDOW_S, Limit, shown, stored_limit
from gateway.quota.service import QuotaService
from gateway.quota.store import QuotaStore
from gateway.settings import QuotaSettings, RedisSettings, VideoSettings, team_table
from gateway.store.client import close_redis, make_redis
from gateway.store.keys import TEAMS, TeamKeys, reset_mark
from tests.clock import Clock

T = TypeVar("T")

# Set by the test function from the session's Redis server before the machine runs.
REDIS_URL: str | None = None

# A minute before a new year: the first day jump crosses a day and a month at once.
START_S = int(datetime(2026, 12, 31, 23, 59, tzinfo=UTC).timestamp())
KINDS = ("tokens_per_minute", "tokens_per_day", "spend_per_day", "spend_per_month")
TOKEN_KINDS = ("tokens_per_minute", "tokens_per_day")
MAX_TAGS = 2
TAGS = ("", "a", "b", "c")
LEDGER_TTL_S = 400 * 86_400
# Limits in readable units (spend in currency; stored in millionths), None: unlimited.
LIMIT_CHOICES: dict[str, list[Limit]] = {
    "tokens_per_minute": [None, 1200],
    "tokens_per_day": [None, 1000, 3000],
    "spend_per_day": [None, 0.006, 0.02],
    "spend_per_month": [None, 0.005, 0.03],  # below a day's: the month refuses first
}
OVERRIDE_CHOICES: dict[str, list[Limit]] = {
    "tokens_per_minute": [None, 0, 2000],
    "tokens_per_day": [None, 2500],
    "spend_per_day": [None, 0, 0.01],
    "spend_per_month": [None, 0.012],
}


def windows_at(now: int) -> tuple[str, str]:
    """The day and month ids of ``now`` in UTC (the default quota.time_zone)."""
    t = datetime.fromtimestamp(now, UTC)
    return t.strftime("%Y%m%d"), t.strftime("%Y%m")


@dataclass
class Call:
    """What the model knows about one call id."""

    id: str
    at: int  # the second it was reserved in
    tokens: int  # its estimate
    spend: int
    day: str
    month: str
    tag: str
    admitted: bool
    gens: dict[str, int]  # bucket key -> its reset generation when the call was reserved
    settled: bool = False
    failed: bool = False
    used_tokens: int = 0
    used_spend: int = 0
    wins: int = 0  # settle calls that reported settling it

    def entries(self) -> dict[str, int]:
        """The ledger increments its settlement wrote (a failed call writes none)."""
        if not self.settled or self.failed:
            return {}
        return ledger_entries(self.tag, self.used_tokens, self.used_spend)


def ledger_entries(tag: str, tokens: int, spend: int) -> dict[str, int]:
    usage = Usage(input_tokens=tokens // 2, output_tokens=tokens - tokens // 2)
    return ledger.entries("alice", "gpt-test", tag, usage, spend)


async def _connect(url: str) -> Redis:
    return make_redis(RedisSettings(url=url))  # as the gateway builds it


class MeteringScripts(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert REDIS_URL is not None
        self.loop = asyncio.new_event_loop()
        self.redis = self.loop.run_until_complete(_connect(REDIS_URL))
        self.store = MeterStore(self.redis)
        self.team = "meter-" + secrets.token_hex(4)
        self.k = TeamKeys(self.team)
        self.clock = Clock(float(START_S))
        self.svc: QuotaService | None = None
        # The model: the calls and resets; everything Redis holds is derived from them.
        self.calls: list[Call] = []
        self.gens: dict[str, int] = {}  # bucket key -> admin resets of it
        self.horizon = -1  # every second <= this was pruned from the minute hash
        self.overrides: dict[str, int] = {}
        self.reserved_once = False

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
                await self.store.aclose()
                await close_redis(self.redis)

        try:
            self.loop.run_until_complete(clean())
        finally:
            self.loop.close()

    @property
    def quota(self) -> QuotaService:
        assert self.svc is not None
        return self.svc

    @property
    def now(self) -> int:
        return int(self.clock())

    def bucket(self, which: str, day: str, month: str) -> str:
        return {
            "tokens_per_minute": self.k.tokens_minute,
            "tokens_per_day": self.k.tokens_day(day),
            "spend_per_day": self.k.spend_day(day),
            "spend_per_month": self.k.spend_month(month),
        }[which]

    def limit(self, kind: str) -> int:
        if kind in self.overrides:
            return self.overrides[kind]
        return self.quota.policy.defaults(self.team, kind)[0]

    # -- what Redis must hold, derived from the calls ---------------------------------------

    @staticmethod
    def charge(call: Call, which: str) -> int:
        """What ``call`` contributes to its ``which`` bucket now (0 if it never charged it)."""
        token = which in TOKEN_KINDS
        reserved = call.tokens if token else call.spend
        if not call.admitted:
            return 0
        if not call.settled:
            return reserved
        return call.used_tokens if token else call.used_spend

    def charged_to(self, call: Call, which: str) -> str | None:
        """The bucket key ``call`` still counts in (None: never charged, or reset since)."""
        token = which in TOKEN_KINDS
        reserved = call.tokens if token else call.spend
        # A call that reserved nothing counts in a bucket once it settles above nothing (a
        # route added in config whose answer reports more than its estimate).
        if not call.admitted or (self.charge(call, which) == 0 and reserved == 0):
            return None
        key = self.bucket(which, call.day, call.month)
        if call.gens[key] != self.gens.get(key, 0):
            return None  # reset since: the charge (and any correction of it) is forgiven
        return key

    def counters(self) -> dict[str, int]:
        """Every day and month bucket that must exist, and what it must hold."""
        out: dict[str, int] = {}
        for call in self.calls:
            for which in KINDS[1:]:
                key = self.charged_to(call, which)
                if key is not None:
                    out[key] = out.get(key, 0) + self.charge(call, which)
        return out

    def minute(self) -> dict[int, int]:
        """The minute hash: tokens per second, for the seconds not pruned, non-zero only."""
        out: dict[int, int] = {}
        for call in self.calls:
            if (
                call.at > self.horizon
                and call.tokens
                and self.charged_to(call, "tokens_per_minute")
            ):
                out[call.at] = out.get(call.at, 0) + self.charge(call, "tokens_per_minute")
        return {s: v for s, v in out.items() if v > 0}

    def ledgers(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for call in self.calls:
            for name, amount in call.entries().items():
                day = out.setdefault(call.day, {})
                day[name] = day.get(name, 0) + amount
        return out

    def tags(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for call in self.calls:
            if call.admitted and call.tag:
                out.setdefault(call.day, set()).add(call.tag)
        return out

    def expected_keys(self) -> dict[str, Any]:
        """The team's whole keyspace: key -> value, as ``dump`` reads it."""
        out: dict[str, Any] = {}
        if self.overrides:
            out[self.k.limits] = {a: str(b) for a, b in self.overrides.items()}
        minute = self.minute()
        if minute:
            out[self.k.tokens_minute] = {str(s): str(v) for s, v in minute.items()}
        for key, value in self.counters().items():
            out[key] = str(value)
        for key, gen in self.gens.items():
            out[reset_mark(key)] = str(gen)
        for call in self.calls:
            if call.admitted and not call.settled:
                out[self.k.metered_call(call.id)] = self.record(call)
        for day, tags in self.tags().items():
            out[self.k.tags(day)] = tags
        for day, entries in self.ledgers().items():
            out[self.k.ledger(day)] = {a: str(b) for a, b in entries.items()}
        return out

    def record(self, call: Call) -> dict[str, str]:
        """The reservation hash of an unsettled call."""
        g = [
            call.gens[self.bucket(w, call.day, call.month)]
            for w in ("tokens_per_day", "spend_per_day", "spend_per_month", "tokens_per_minute")
        ]
        return {
            "s": str(call.at),
            "t": str(call.tokens),
            "c": str(call.spend),
            "d": call.day,
            "m": call.month,
            **{f"g{i + 1}": str(v) for i, v in enumerate(g)},
        }

    def dump(self) -> tuple[dict[str, Any], dict[str, int]]:
        """The team's keyspace as it is in Redis (key -> value), and each key's TTL."""

        async def read() -> tuple[dict[str, Any], dict[str, int]]:
            keys = sorted([_text(k) async for k in self.redis.scan_iter(match=f"{self.k.prefix}*")])
            async with self.redis.pipeline(transaction=True) as pipe:
                for key in keys:
                    pipe.type(key)
                types = [_text(t) for t in await pipe.execute()]
            async with self.redis.pipeline(transaction=True) as pipe:
                for key, kind in zip(keys, types, strict=True):
                    {"string": pipe.get, "hash": pipe.hgetall, "set": pipe.smembers}[kind](key)
                    pipe.ttl(key)
                replies = await pipe.execute()
            values: dict[str, Any] = {}
            ttls: dict[str, int] = {}
            for i, (key, kind) in enumerate(zip(keys, types, strict=True)):
                raw, ttls[key] = replies[2 * i], int(replies[2 * i + 1])
                if kind == "string":
                    values[key] = _text(raw)
                elif kind == "hash":
                    values[key] = {_text(a): _text(b) for a, b in raw.items()}
                else:
                    values[key] = {_text(m) for m in raw}
            return values, ttls

        return self.run(read())

    # -- setting up ---------------------------------------------------------------------------

    @initialize(data=st.data())
    def configure(self, data: st.DataObject) -> None:
        limits = {
            kind: data.draw(st.sampled_from(choices), label=kind)
            for kind, choices in LIMIT_CHOICES.items()
        }
        self.svc = QuotaService(
            QuotaStore(self.redis),
            QuotaSettings(),
            teams=team_table({self.team: limits}),
            videos=VideoSettings(),
            clock=self.clock,
        )
        assert self.quota.policy.defaults(self.team, *KINDS) == [
            stored_limit(kind, limits[kind]) for kind in KINDS
        ]

    # -- admission ----------------------------------------------------------------------------

    def expected_verdict(self, tokens: int, spend: int, tag: str, day: str) -> Verdict:
        """What the reserve script must answer at ``now`` (after pruning the minute)."""
        now = self.now
        minute = self.minute()
        live = sorted((s, v) for s, v in minute.items() if s > now - TOKEN_WINDOW_S)
        used = sum(v for _, v in live)
        tpm = self.limit("tokens_per_minute")
        if tpm >= 0 and tokens > 0 and used + tokens > tpm:
            wait = -1
            if tokens <= tpm:
                left = used
                for s, v in live:
                    left -= v
                    if left + tokens <= tpm:
                        wait = s + TOKEN_WINDOW_S - now
                        break
                assert wait >= 0
            return Verdict(False, "tokens_per_minute", used, tpm, wait, -1)
        counters = self.counters()
        month = windows_at(now)[1]
        for kind, amount in (
            ("tokens_per_day", tokens),
            ("spend_per_day", spend),
            ("spend_per_month", spend),
        ):
            lim = self.limit(kind)
            have = counters.get(self.bucket(kind, day, month), 0)
            if lim >= 0 and amount > 0 and have + amount > lim:
                return Verdict(False, kind, have, lim, -1 if amount > lim else 0, -1)
        tags = self.tags().get(day, set())
        if tag and tag not in tags and len(tags) >= MAX_TAGS:
            return Verdict(False, "tags", len(tags), MAX_TAGS, -1, -1)
        oldest = min([s for s, _ in live] + ([now] if tokens > 0 else []), default=-1)
        return Verdict(True, "", used + tokens, tpm, -1, oldest)

    def reserve_one(self, tokens: int, spend: int, tag: str) -> None:
        now = self.now
        day, month = windows_at(now)
        w = self.quota.policy.windows(now)
        assert (w.day, w.month) == (day, month)
        # The script drops the seconds that left the minute before it decides.
        self.horizon = max(self.horizon, now - TOKEN_WINDOW_S)
        expected = self.expected_verdict(tokens, spend, tag, day)
        call_id = f"c{len(self.calls)}"
        gens = {key: self.gens.get(key, 0) for key in (self.bucket(w, day, month) for w in KINDS)}
        verdict = self.run(
            self.store.reserve(
                self.k,
                call_id,
                now_s=now,
                tokens=tokens,
                spend=spend,
                defaults=self.quota.policy.defaults(self.team, *KINDS),
                day=day,
                month=month,
                ttls=(DAY_TTL_S, MONTH_TTL_S, CALL_TTL_S),
                tag=tag,
                max_tags=MAX_TAGS,
            )
        )
        assert verdict == expected, (verdict, expected)
        event("admitted" if verdict.admitted else f"refused by {verdict.kind}")
        self.calls.append(
            Call(call_id, now, tokens, spend, day, month, tag, verdict.admitted, gens)
        )
        self.reserved_once = True

    amounts = st.tuples(
        st.one_of(st.just(0), st.integers(1, 600)),
        st.one_of(st.just(0), st.integers(1, 6000)),
        st.sampled_from(TAGS),
    )

    @rule(call=amounts)
    def reserve(self, call: tuple[int, int, str]) -> None:
        self.reserve_one(*call)

    @rule(calls=st.lists(amounts, min_size=2, max_size=6), spread=st.booleans())
    def reserve_several(self, calls: list[tuple[int, int, str]], spread: bool) -> None:
        """A burst of calls: in the same second, or one second apart."""
        for call in calls:
            self.reserve_one(*call)
            if spread:
                self.clock.advance(1)

    def edge(self, kinds: tuple[str, ...], to: str) -> int | None:
        """The room the tightest of ``kinds`` has left (``to='room'``), or the smallest limit
        (``'limit'``); None when they are all unlimited."""
        now = self.now
        day, month = windows_at(now)
        counters = self.counters()
        out: list[int] = []
        for kind in kinds:
            lim = self.limit(kind)
            if lim < 0:
                continue
            if kind == "tokens_per_minute":
                used = sum(v for s, v in self.minute().items() if s > now - TOKEN_WINDOW_S)
            else:
                used = counters.get(self.bucket(kind, day, month), 0)
            out.append(lim - used if to == "room" else lim)
        return min(out, default=None)

    def finite(self) -> list[str]:
        return [kind for kind in KINDS if self.limit(kind) >= 0]

    def has_finite(self) -> bool:
        return bool(self.finite())

    @precondition(has_finite)
    @rule(
        data=st.data(),
        to=st.sampled_from(["room", "room", "limit"]),
        delta=st.sampled_from([0, 0, -1, 1]),
        at_the_minute_edge=st.booleans(),
    )
    def reserve_at_the_edge(
        self, data: st.DataObject, to: str, delta: int, at_the_minute_edge: bool
    ) -> None:
        """A call of exactly the room a limited window has left (or of its whole limit),
        give or take one: where ``>`` and ``>=`` differ. Perhaps at the second the oldest
        second counted in the minute leaves it."""
        if at_the_minute_edge:
            self.to_the_minute_edge(delta)
        kind = data.draw(st.sampled_from(self.finite()), label="kind")
        room = self.edge((kind,), to)
        assert room is not None
        amount = max(0, room + delta)
        if kind in TOKEN_KINDS:
            self.reserve_one(amount, 0, "")
        else:
            self.reserve_one(0, amount, "")

    # -- settlement ---------------------------------------------------------------------------

    def open_calls(self) -> list[Call]:
        return [c for c in self.calls if c.admitted and not c.settled]

    def closed_calls(self) -> list[Call]:
        return [c for c in self.calls if not c.admitted or c.settled]

    def has_open(self) -> bool:
        return bool(self.open_calls())

    def has_closed(self) -> bool:
        return bool(self.closed_calls())

    def has_open_from_another_window(self) -> bool:
        day, month = windows_at(self.now)
        return any(c.day != day or c.month != month for c in self.open_calls())

    def pick_open(self, data: st.DataObject) -> Call:
        return data.draw(st.sampled_from(self.open_calls()), label="call")

    def settle_call(self, call: Call, tokens: int, spend: int, failed: bool) -> bool:
        entries = {} if failed else ledger_entries(call.tag, tokens, spend)
        return self.run(
            self.store.settle(
                self.k,
                call.id,
                tokens=tokens,
                spend=spend,
                day=call.day,
                month=call.month,
                ledger=entries,
                ledger_ttl=LEDGER_TTL_S,
                ttls=(DAY_TTL_S, MONTH_TTL_S),
            )
        )

    def settled(self, call: Call, tokens: int, spend: int, failed: bool) -> None:
        """Apply one settlement to the model."""
        assert not call.settled, f"{call.id} settled twice"
        call.settled, call.failed = True, failed
        call.used_tokens, call.used_spend = tokens, spend
        call.wins += 1
        day, month = windows_at(self.now)
        if call.day != day or call.month != month:
            event("settled after its window rolled over")
        if any(self.charged_to(call, w) is None and self.charge(call, w) for w in KINDS):
            event("settled after an admin reset of one of its buckets")
        if call.tokens and call.at <= self.horizon:
            event("settled after its second left the minute hash")
            if tokens > call.tokens:
                event("... having used more than its estimate")

    def usage_for(self, call: Call, data: st.DataObject) -> tuple[int, int]:
        """A real usage: within the estimate (it is an upper bound), exactly it, or over it
        (a wrong bound: settlement charges the difference all the same)."""

        def around(estimate: int, slack: int) -> st.SearchStrategy[int]:
            over = st.integers(estimate + 1, 2 * estimate + slack)
            return st.integers(0, estimate) | st.just(estimate) | over

        tokens = data.draw(around(call.tokens, 50), label="tokens")
        spend = data.draw(around(call.spend, 500), label="spend")
        return tokens, spend

    @precondition(has_open)
    @rule(data=st.data(), how=st.sampled_from(["usage", "usage", "failed", "aborted"]))
    def settle(self, data: st.DataObject, how: str) -> None:
        """One call ends: with the usage its answer reported; ``failed`` (the upstream refused
        it: refunded, as ``Meter.settle(adm, usage, failed=True)``); or ``aborted`` (no usage
        came: a cut stream, a timeout; ``Meter.settle(adm, None)`` charges the estimate, so
        nothing is corrected, but the ledger gets it)."""
        call = self.pick_open(data)
        if how == "usage":
            tokens, spend = self.usage_for(call, data)
        elif how == "failed":
            tokens, spend = 0, 0
        else:
            tokens, spend = call.tokens, call.spend
        failed = how == "failed"
        assert self.settle_call(call, tokens, spend, failed=failed)
        self.settled(call, tokens, spend, failed=failed)

    @precondition(has_open)
    @rule(data=st.data(), n=st.integers(2, 4))
    def racing_settlements(self, data: st.DataObject, n: int) -> None:
        """Several settlements of one call at once (each in its own script run): one wins."""
        call = self.pick_open(data)
        usages = [self.usage_for(call, data) for _ in range(n)]
        failed = [data.draw(st.booleans(), label="failed") for _ in range(n)]
        usages = [(0, 0) if f else u for u, f in zip(usages, failed, strict=True)]

        async def race() -> list[bool]:
            return list(
                await asyncio.gather(
                    *(
                        self.store.settle(
                            self.k,
                            call.id,
                            tokens=t,
                            spend=s,
                            day=call.day,
                            month=call.month,
                            ledger={} if f else ledger_entries(call.tag, t, s),
                            ledger_ttl=LEDGER_TTL_S,
                            ttls=(DAY_TTL_S, MONTH_TTL_S),
                        )
                        for (t, s), f in zip(usages, failed, strict=True)
                    )
                )
            )

        done = self.run(race())
        assert sum(done) == 1, done
        i = done.index(True)
        self.settled(call, *usages[i], failed=failed[i])

    @precondition(has_closed)
    @rule(data=st.data(), failed=st.booleans())
    def settle_again(self, data: st.DataObject, failed: bool) -> None:
        """A settled call (or one never admitted) settled again: False, and nothing moves."""
        call = data.draw(st.sampled_from(self.closed_calls()), label="call")
        tokens, spend = (0, 0) if failed else self.usage_for(call, data)
        before = self.dump()
        assert not self.settle_call(call, tokens, spend, failed=failed)
        assert self.dump()[0] == before[0]

    @precondition(has_open_from_another_window)
    @rule(data=st.data())
    def settle_in_the_wrong_window(self, data: st.DataObject) -> None:
        """A settlement naming today's buckets for a call admitted on another day is refused
        by the script, and changes nothing (the call stays open)."""
        day, month = windows_at(self.now)
        call = data.draw(
            st.sampled_from([c for c in self.open_calls() if (c.day, c.month) != (day, month)]),
            label="call",
        )
        before = self.dump()
        with pytest.raises(redis.exceptions.ResponseError, match="buckets do not match"):
            self.run(
                self.store.settle(
                    self.k,
                    call.id,
                    tokens=0,
                    spend=0,
                    day=day,
                    month=month,
                    ledger=ledger_entries(call.tag, 1, 1),
                    ledger_ttl=LEDGER_TTL_S,
                    ttls=(DAY_TTL_S, MONTH_TTL_S),
                )
            )
        assert self.dump()[0] == before[0]

    # -- administration -----------------------------------------------------------------------

    @rule(
        window=st.sampled_from(["minute", "day", "month", "all"]),
        busy=st.none() | st.tuples(amounts, amounts),
    )
    def admin_reset(
        self, window: str, busy: tuple[tuple[int, int, str], tuple[int, int, str]] | None
    ) -> None:
        """``gateway admin reset-usage --window ...``. When ``busy``, in a busy second: a call
        just before it and one just after, in the same second, so that the later call's
        buckets (and minute second) are the reset's new generation, which the first call's
        settlement must leave alone."""
        if busy is not None:
            self.reserve_one(*busy[0])
        self.reset(window)
        if busy is not None:
            self.reserve_one(*busy[1])

    def reset(self, window: str) -> None:
        now = self.now
        day, month = windows_at(now)
        kinds = {
            "minute": ["tokens_per_minute"],
            "day": ["tokens_per_day", "spend_per_day"],
            "month": ["spend_per_month"],
            "all": list(KINDS),
        }[window]
        counters = self.counters()
        stored_minute = sum(self.minute().values())
        live_minute = sum(v for s, v in self.minute().items() if s > now - TOKEN_WINDOW_S)
        held = self.run(self.quota.admin.reset_usage(self.team, window))
        for kind in kinds:
            key = self.bucket(kind, day, month)
            if kind == "tokens_per_minute":
                # What the minute held: its live seconds, as the team's view counts them, not
                # the stale ones still in the hash because no reservation has pruned them.
                assert held[kind] == live_minute, (held, live_minute, stored_minute)
                if stored_minute != live_minute:
                    event("a minute reset while the hash still held seconds that had left it")
            else:
                assert held[kind] == shown(kind, counters.get(key, 0)), (kind, held)
            self.gens[key] = self.gens.get(key, 0) + 1
        # The same reset also starts a generation of the video buckets (none used here).
        if window in ("day", "all"):
            key = self.k.video_day(day)
            self.gens[key] = self.gens.get(key, 0) + 1
        if window in ("month", "all"):
            key = self.k.video_month(month)
            self.gens[key] = self.gens.get(key, 0) + 1

    @rule(kind=st.sampled_from(KINDS), data=st.data(), clear=st.booleans())
    def set_limit(self, kind: str, data: st.DataObject, clear: bool) -> None:
        """An admin override (the scripts read it on every decision, over the default), or
        all of them cleared."""
        if clear and self.overrides:
            self.run(self.quota.admin.write_overrides(self.team, {}, replace=True))
            self.overrides.clear()
            return
        value = data.draw(st.sampled_from(OVERRIDE_CHOICES[kind]), label="value")
        self.run(self.quota.admin.write_overrides(self.team, {kind: value}, replace=False))
        self.overrides[kind] = stored_limit(kind, value)

    # -- time ---------------------------------------------------------------------------------

    def to_the_minute_edge(self, delta: int) -> None:
        """To the second the oldest second counted in the minute leaves it (+ ``delta``)."""
        now = self.now
        live = [s for s in self.minute() if s > now - TOKEN_WINDOW_S]
        edge = min(live, default=now) + TOKEN_WINDOW_S + delta
        self.clock.now = max(self.clock.now, edge)

    @rule(
        to=st.sampled_from(["second", "second", "minute", "day", "month"]),
        seconds=st.integers(0, 40),
    )
    def advance(self, to: str, seconds: int) -> None:
        """A few seconds; to the second the minute's oldest second leaves the window (or one
        before or after); to just before or after the next midnight; or into the next
        month."""
        w = self.quota.policy.windows(self.now)
        if to == "second":
            self.clock.advance(seconds)
        elif to == "minute":
            self.to_the_minute_edge(seconds % 4 - 1 if seconds % 4 < 3 else 0)
        elif to == "day":
            self.clock.now = max(self.clock.now, w.day_reset + seconds - 3)
        else:
            self.clock.now = w.month_reset + seconds

    # -- the invariant ------------------------------------------------------------------------

    @invariant()
    def redis_matches_the_model(self) -> None:
        if self.svc is None:
            return
        values, ttls = self.dump()
        expected = self.expected_keys()
        assert set(values) == set(expected), (
            sorted(set(values) - set(expected)),
            sorted(set(expected) - set(values)),
        )
        for key, value in expected.items():
            assert values[key] == value, (key, values[key], value)
        # Nothing is kept forever but the overrides.
        assert all(ttl > 0 for key, ttl in ttls.items() if key != self.k.limits), ttls
        for call in self.calls:
            assert call.wins == (1 if call.settled else 0), call
        if self.reserved_once:
            assert self.run(self.redis.sismember(TEAMS, self.team))
        # The team's own view (GET /v1/gateway/quota) reads the same buckets.
        now = self.now
        day, month = windows_at(now)
        counters = self.counters()
        limits = self.run(self.quota.usage(self.team))["limits"]
        live = sum(v for s, v in self.minute().items() if s > now - TOKEN_WINDOW_S)
        assert limits["tokens_per_minute"]["used"] == live, limits
        for kind in KINDS[1:]:
            used = shown(kind, counters.get(self.bucket(kind, day, month), 0))
            assert limits[kind]["used"] == used, (kind, limits)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def test_metering_scripts_keep_the_model(redis_url: str) -> None:
    global REDIS_URL
    REDIS_URL = redis_url  # the session's server, flushed for this test
    run_state_machine_as_test(
        MeteringScripts,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            database=None,  # no example database in the working tree
            phases=[p for p in Phase if p is not Phase.explain],
        ),
    )


async def test_a_minute_reset_reports_only_the_seconds_still_counted(redis_url: str) -> None:
    """The seconds that left the minute stay in its hash until a reservation prunes them; a
    reset must not report them as used (its audit record says what the team had used)."""
    redis = await _connect(redis_url)
    store = MeterStore(redis)
    try:
        team = "meter-" + secrets.token_hex(4)
        k = TeamKeys(team)
        clock = Clock(float(START_S))
        svc = QuotaService(
            QuotaStore(redis),
            QuotaSettings(),
            teams=team_table({team: {"tokens_per_minute": 1000}}),
            videos=VideoSettings(),
            clock=clock,
        )

        async def reserve(call_id: str, tokens: int) -> None:
            now = int(clock())
            day, month = windows_at(now)
            verdict = await store.reserve(
                k,
                call_id,
                now_s=now,
                tokens=tokens,
                spend=0,
                defaults=svc.policy.defaults(team, *KINDS),
                day=day,
                month=month,
                ttls=(DAY_TTL_S, MONTH_TTL_S, CALL_TTL_S),
                tag="",
                max_tags=MAX_TAGS,
            )
            assert verdict.admitted, verdict

        await reserve("old", 300)
        clock.advance(30)
        await reserve("new", 40)
        clock.advance(TOKEN_WINDOW_S - 30)  # "old"'s second has just left the minute
        stored = await redis.hgetall(k.tokens_minute)
        assert sorted(int(v) for v in stored.values()) == [40, 300]  # not pruned yet
        assert (await svc.usage(team))["limits"]["tokens_per_minute"]["used"] == 40
        held = await svc.admin.reset_usage(team, "minute")
        assert held["tokens_per_minute"] == 40
        assert await redis.exists(k.tokens_minute) == 0
    finally:
        await store.aclose()
        await close_redis(redis)
