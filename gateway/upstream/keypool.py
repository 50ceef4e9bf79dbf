"""The pool of upstream keys: which key serves the next request, and which keys are unusable.

Selection is local and cheap (fewest requests in flight, round-robin on ties). Health (cooling
down after a 429, quarantined after a 401/403, disabled by an admin) is shared through a
``KeyHealthStore`` so every replica skips a bad key; the local copy is refreshed in the
background at most once per ``cache_seconds``, never on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.errors import NoUpstreamKey, StoreUnavailable
from gateway.settings import UpstreamKey

log = logging.getLogger("gateway.upstream")

HEALTHY, COOLING, QUARANTINED, DISABLED = "healthy", "cooling", "quarantined", "disabled"
KEY_STATES = (HEALTHY, COOLING, QUARANTINED, DISABLED)


@dataclass(slots=True)
class KeyHealth:
    """Shared health of one key. Times are wall-clock seconds (shared across replicas)."""

    cooling_until: float = 0.0
    quarantined_until: float = 0.0
    disabled: bool = False
    # When an admin last lifted the key's cooldown and quarantine (enabling it): a replica
    # that sees a newer lift takes the shared times as they are, its own older ones dropped.
    lifted_at: float = 0.0
    # The decision stamp the verdict behind each time knew of (raise_time's ``seen``): after
    # Redis lost a decision, only a time set knowing of it is merged.
    cooling_seen: float = 0.0
    quarantined_seen: float = 0.0
    # The stamp of a decision Redis lost (floor.lua), as a replica that knew it left it.
    floor: float = 0.0

    def state(self, now: float) -> str:
        if self.disabled:
            return DISABLED
        if self.quarantined_until > now:
            return QUARANTINED
        if self.cooling_until > now:
            return COOLING
        return HEALTHY

    def usable_at(self, now: float) -> float:
        """When the key becomes usable again (``now`` if it is; infinity if disabled)."""
        if self.disabled:
            return float("inf")
        return max(now, self.cooling_until, self.quarantined_until)


class KeyHealthStore(Protocol):
    async def load(self, key_ids: Sequence[str]) -> dict[str, KeyHealth]: ...
    async def save(self, key_id: str, health: KeyHealth) -> float:
        """Write the whole of a key's health: an admin's decision, stamped (``lifted_at``)
        by the store's own clock, later than every decision before it; answers the stamp."""
        ...

    async def raise_time(self, key_id: str, name: str, until: float, seen: float) -> None:
        """Set one of a key's times (``cooling_until``, ``quarantined_until``) to ``until``
        unless it already runs longer or an admin has decided on the key after the decision
        stamped ``seen`` (the last the verdict's replica knew of); the rest is left as it is."""
        ...

    async def raise_floor(self, key_id: str, stamp: float) -> None:
        """Redis has lost the decision stamped ``stamp`` (its own is older): the next decision
        on the key is stamped above it, whatever Redis's clock says."""
        ...

    async def claim(self, name: str, value: str, seconds: float) -> str:
        """Hold ``name`` with ``value`` for ``seconds`` unless it is held: the value held."""
        ...


@dataclass(slots=True)
class _Key:
    key: UpstreamKey
    health: KeyHealth = field(default_factory=KeyHealth)
    in_flight: int = 0


class Lease:
    """One request's use of a key; ``release`` exactly once when the response is done."""

    __slots__ = ("_entry", "_released", "seen")

    def __init__(self, entry: _Key) -> None:
        self._entry = entry
        self._released = False
        # The last admin decision known when the request went out: a verdict on its answer
        # predates any decision learnt after.
        self.seen = entry.health.lifted_at
        entry.in_flight += 1

    @property
    def key_id(self) -> str:
        return self._entry.key.id

    @property
    def secret(self) -> str:
        return self._entry.key.secret

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._entry.in_flight -= 1


class KeyPool:
    def __init__(
        self,
        keys: Sequence[UpstreamKey],
        store: KeyHealthStore | None,
        *,
        clock: Callable[[], float],
        cache_seconds: float = 1.0,
        cooldown_seconds: float = 30.0,
        quarantine_seconds: float = 3600.0,
        on_store_error: Callable[[str], None] = lambda op: None,
    ) -> None:
        self._keys = [_Key(k) for k in keys]
        self._by_id = {e.key.id: e for e in self._keys}
        self._store = store
        self._clock = clock
        self._cache_seconds = cache_seconds
        self.cooldown_seconds = cooldown_seconds
        self.quarantine_seconds = quarantine_seconds
        self._on_store_error = on_store_error
        self._rr = itertools.count()
        self._loaded_at = float("-inf")
        self._refreshing: asyncio.Task[None] | None = None
        # Refreshes started, and the latest whose reading (or an admin's decision made here
        # after it) has been applied: an older reading that comes back later is stale.
        self._started = 0
        self._applied = 0
        # team -> (until when, the key) its cooldown claim holds
        self._cooled_by: dict[str, tuple[float, str]] = {}

    @property
    def key_ids(self) -> list[str]:
        return [e.key.id for e in self._keys]

    def secrets(self) -> list[str]:
        return [e.key.secret for e in self._keys]

    def state(self, key_id: str) -> str:
        return self._by_id[key_id].health.state(self._clock())

    def in_flight(self, key_id: str) -> int:
        return self._by_id[key_id].in_flight

    def usable_count(self) -> int:
        now = self._clock()
        return sum(1 for e in self._keys if e.health.state(now) == HEALTHY)

    def acquire(self, exclude: frozenset[str] | set[str] = frozenset()) -> Lease:
        """Lease the healthy key with the fewest requests in flight (round-robin on ties)."""
        self._maybe_refresh()
        now = self._clock()
        n = len(self._keys)
        start = next(self._rr) % n if n else 0
        best: _Key | None = None
        for i in range(n):
            e = self._keys[(start + i) % n]
            if e.key.id in exclude or e.health.state(now) != HEALTHY:
                continue
            if best is None or e.in_flight < best.in_flight:
                best = e
        if best is None:
            raise self._exhausted(now, exclude)
        return Lease(best)

    def lease(self, key_id: str) -> Lease:
        """Lease one particular key (a video job must be polled with the key that created it)."""
        self._maybe_refresh()
        e = self._by_id.get(key_id)
        if e is None:
            raise NoUpstreamKey("The upstream key for this object is no longer configured.")
        now = self._clock()
        if e.health.state(now) in (QUARANTINED, DISABLED):
            raise self._exhausted(now, frozenset())
        # A cooling key still serves its own jobs' polls: they are cheap, and no other key can.
        return Lease(e)

    def _exhausted(self, now: float, exclude: frozenset[str] | set[str]) -> NoUpstreamKey:
        waits = [e.health.usable_at(now) - now for e in self._keys if e.key.id not in exclude]
        wait = min(waits, default=float("inf"))
        headers = {}
        if wait != float("inf"):
            headers["retry-after"] = str(max(1, int(wait + 0.999)))
        else:
            headers["x-should-retry"] = "false"
        return NoUpstreamKey(headers=headers)

    async def cool_down(
        self, key_id: str, seconds: float | None, *, team: str = "", seen: float | None = None
    ) -> bool:
        """The upstream said 429 for this key: skip it for ``seconds`` (default configured).

        A ``team``'s 429s cool one key per cooldown period, on every replica: a 429 can be
        about what one caller asks (a saturated model), and a caller sending one request per
        key would otherwise cool the whole pool for everyone. Answers whether it cooled (a
        team may cool its key again, e.g. from a replica that had not yet heard of it)."""
        seconds = self.cooldown_seconds if seconds is None else seconds
        e = self._by_id[key_id]
        seen = e.health.lifted_at if seen is None else seen
        if seen < e.health.lifted_at:
            return False  # an admin decided after the request went out
        if team and not await self._claim(team, key_id, seconds):
            return False
        if seen < e.health.lifted_at:
            return False  # ... or while the claim was out
        until = self._clock() + seconds
        if until > e.health.cooling_until:
            e.health.cooling_until = until
            log.warning("upstream key %s cooling down for %.0fs", key_id, until - self._clock())
            await self._raise(e, "cooling_until", until, seen)
        return True

    async def _claim(self, team: str, key_id: str, seconds: float) -> bool:
        """Whether ``team`` may cool ``key_id`` for ``seconds``: it holds no other key. Its
        hold lasts as long as the cooldown (at least one period): a hold shorter than the
        cooling it caused let a team cool a new key each period while the earlier ones still
        cooled, up to the whole pool."""
        now = self._clock()
        hold = max(seconds, self.cooldown_seconds)
        until, held = self._cooled_by.get(team, (0.0, ""))
        if until > now and held != key_id:  # known here: no round trip
            return False
        # Recorded before the round trip: a concurrent claim of this team here sees it.
        self._cooled_by[team] = (max(until, now + hold), key_id)
        if self._store is not None:
            try:
                held = await self._store.claim(team, key_id, hold)
            except Exception:  # Redis down: this replica's own record still bounds the team
                self._on_store_error("key_cooler_claim")
                held = key_id
            if held != key_id:
                if self._cooled_by.get(team, (0.0, ""))[1] == key_id:
                    self._cooled_by[team] = (until, held)  # not ours: undo the record
                return False
        if len(self._cooled_by) >= 10_000:  # team names come from tokens: bounded
            self._cooled_by = {t: c for t, c in self._cooled_by.items() if c[0] > now}
        self._cooled_by[team] = (max(until, now + hold), key_id)
        return True

    async def quarantine(self, key_id: str, seen: float | None = None) -> None:
        """The upstream refused this key (401/403): keep it out until an admin or time frees it."""
        e = self._by_id[key_id]
        seen = e.health.lifted_at if seen is None else seen
        if seen < e.health.lifted_at:
            return  # the refusal (and its probe) predate an admin's decision learnt since
        e.health.quarantined_until = self._clock() + self.quarantine_seconds
        log.error("upstream key %s quarantined after an authentication failure", key_id)
        await self._raise(e, "quarantined_until", e.health.quarantined_until, seen)

    async def set_disabled(self, key_id: str, disabled: bool) -> None:
        """Admin switch; enabling also lifts a quarantine and a cooldown. The decision is
        Redis's to stamp (by its clock, later than any decision before it) and holds here
        once Redis has it; raises StoreUnavailable when Redis did not take it (it would hold
        on this replica alone, and its refreshes would undo it)."""
        e = self._by_id[key_id]
        decided = KeyHealth(
            cooling_until=0.0 if not disabled else e.health.cooling_until,
            quarantined_until=0.0 if not disabled else e.health.quarantined_until,
            disabled=disabled,
            lifted_at=e.health.lifted_at,
        )
        if self._store is not None:
            try:
                decided.lifted_at = await self._store.save(key_id, decided)
            except Exception:
                log.warning("could not store an admin's decision on upstream key %s", key_id)
                self._on_store_error("key_health_save")
                raise StoreUnavailable() from None
            # A refresh that read Redis before the decision must not apply after it.
            self._applied = self._started
        e.health.disabled = disabled
        if not disabled:
            e.health.cooling_until = e.health.quarantined_until = 0.0
        e.health.lifted_at = max(e.health.lifted_at, decided.lifted_at)

    async def _raise(self, e: _Key, name: str, until: float, seen: float) -> None:
        """Share this replica's verdict on a key: its one time, never the rest of its view
        (which may predate an admin's decision on another replica: saving it whole undid a
        disable), and only if no admin has decided on the key since the last decision this
        replica knows of (a slow write must not undo a later lift)."""
        if self._store is None:
            return
        try:
            await self._store.raise_time(e.key.id, name, until, seen)
        except Exception:  # the local view still protects this replica
            log.warning("could not share the health of upstream key %s", e.key.id)
            self._on_store_error("key_health_save")

    async def refresh(self) -> None:
        """Load the shared health of every key (keeps the local view when the store fails)."""
        if self._store is None:
            return
        self._loaded_at = self._clock()
        self._started += 1
        ticket = self._started
        try:
            shared = await self._store.load(self.key_ids)
        except Exception:
            self._on_store_error("key_health_load")
            return
        if ticket <= self._applied:
            # Read before a later refresh (the background one and an admin route's can both
            # be in flight) or an admin's decision here had applied: stale, and merging its
            # times back would undo a lift for good.
            return
        self._applied = ticket
        lost: list[tuple[str, float]] = []
        for kid, health in shared.items():
            e = self._by_id.get(kid)
            if e is None:
                continue
            if health.floor > max(health.lifted_at, e.health.lifted_at):
                # Redis lost a decision this replica never knew of (it started since): its
                # verdicts must carry that stamp, or the replicas that knew it never merge them.
                e.health.lifted_at = health.floor
            if health.lifted_at < e.health.lifted_at:
                # Redis has lost a decision this replica knows of (it restarted without its
                # data, or was flushed): its "not disabled" is no admin's. The decision
                # stands here; a time merges only if its verdict knew of that decision (a
                # snapshot older than it, restored, must not bring back what it lifted).
                if health.cooling_seen >= e.health.lifted_at:
                    e.health.cooling_until = max(health.cooling_until, e.health.cooling_until)
                if health.quarantined_seen >= e.health.lifted_at:
                    e.health.quarantined_until = max(
                        health.quarantined_until, e.health.quarantined_until
                    )
                lost.append((kid, e.health.lifted_at))
                continue
            e.health.disabled = health.disabled
            if health.lifted_at > e.health.lifted_at:
                # An admin lifted the key since this replica last looked: the shared times
                # are what holds now, whatever this replica had seen before the lift.
                e.health.lifted_at = health.lifted_at
                e.health.cooling_until = health.cooling_until
                e.health.quarantined_until = health.quarantined_until
                continue
            # Never forget a local verdict the store has not heard of yet (its save failed):
            # only an admin's lift, above, ends one early.
            e.health.cooling_until = max(health.cooling_until, e.health.cooling_until)
            e.health.quarantined_until = max(health.quarantined_until, e.health.quarantined_until)
        for kid, stamp in lost:
            # The next decision must be stamped above the lost one, whatever Redis's clock.
            try:
                await self._store.raise_floor(kid, stamp)
            except Exception:
                self._on_store_error("key_health_save")

    def _maybe_refresh(self) -> None:
        if self._store is None or self._clock() - self._loaded_at < self._cache_seconds:
            return
        if self._refreshing is not None and not self._refreshing.done():
            return
        self._loaded_at = self._clock()
        with contextlib.suppress(RuntimeError):  # no running loop: a sync caller, skip
            self._refreshing = asyncio.get_running_loop().create_task(self.refresh())

    async def close(self) -> None:
        if self._refreshing is not None and not self._refreshing.done():
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refreshing
