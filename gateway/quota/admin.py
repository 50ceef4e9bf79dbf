"""Quota administration for the admin API: limit overrides, usage resets, the list of known
teams and a job's reservation, in readable units. Redis failures propagate as 503s."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.quota import model
from gateway.quota.model import Limit
from gateway.quota.policy import QuotaPolicy
from gateway.quota.store import QuotaStore
from gateway.store.keys import TeamKeys


class QuotaAdmin:
    def __init__(self, store: QuotaStore, policy: QuotaPolicy) -> None:
        self.store = store
        self.policy = policy

    @staticmethod
    def _shown_overrides(stored: Mapping[str, int]) -> dict[str, Limit]:
        return {kind: None if v < 0 else model.shown(kind, v) for kind, v in stored.items()}

    async def write_overrides(
        self, team: str, limits: Mapping[str, Limit], *, replace: bool
    ) -> tuple[dict[str, Limit], dict[str, Limit]]:
        """Merge validated limits into the overrides (or replace them all); (before, after).

        The scripts read the hash on every decision, so the change binds from the next one."""
        stored = {kind: model.stored_limit(kind, value) for kind, value in limits.items()}
        before, after = await self.store.write_overrides(TeamKeys(team), stored, replace=replace)
        return self._shown_overrides(before), self._shown_overrides(after)

    async def reset_usage(self, team: str, window: str) -> dict[str, int | float]:
        """Zero one window's counters (``minute``, ``day``, ``month`` or ``all``) and answer
        what they held. Concurrency slots and reservations stay: they belong to jobs still
        running, whose settlement must find them."""
        now = self.policy.clock()
        w = self.policy.windows(now)
        k = TeamKeys(team)
        every = window == "all"
        rate = every or window == "minute"
        buckets: list[tuple[str, str]] = []
        if rate:
            buckets.append(("tokens_per_minute", k.tokens_minute))
        if every or window == "day":
            buckets.append(("video_seconds_per_day", k.video_day(w.day)))
            buckets.append(("tokens_per_day", k.tokens_day(w.day)))
            buckets.append(("spend_per_day", k.spend_day(w.day)))
        if every or window == "month":
            buckets.append(("video_seconds_per_month", k.video_month(w.month)))
            buckets.append(("spend_per_month", k.spend_month(w.month)))
        if not rate and not buckets:
            raise ValueError(f"unknown window {window!r}")
        since = int(now * 1000) - model.RATE_WINDOW_MS + 1 if rate else None
        # The minute's tokens held: its seconds still counted (the rest wait to be pruned).
        live_after = int(now) - model.TOKEN_WINDOW_S
        requests, values = await self.store.reset_counters(
            k,
            rate_since_ms=since,
            buckets=[key for _, key in buckets],
            hashes={k.tokens_minute: live_after},
        )
        held: dict[str, int | float] = {}
        if rate:
            held["requests_per_minute"] = requests
        for (kind, _), value in zip(buckets, values, strict=True):
            held[kind] = model.shown(kind, value)
        return held

    async def known_teams(self) -> list[str]:
        """Configured teams (not ``default``), teams that ever reserved, teams with overrides."""
        seen = set(await self.store.teams())
        seen.update(await self.store.teams_with_overrides())
        seen.update(t for t in self.policy.teams if t != "default")
        return sorted(seen)

    async def reservation(self, team: str, job_id: str) -> dict[str, Any] | None:
        """What a job reserved and how it was settled, in readable units; None once expired."""
        res = await self.store.reservation(TeamKeys(team), job_id)
        if not res:
            return None
        return {
            "state": res.get("state"),
            "outcome": res.get("outcome"),
            "day": res.get("day"),
            "month": res.get("month"),
            "video_seconds": model.shown("video_seconds_per_day", int(res.get("vu") or 0)),
            "spend": model.shown("spend_per_month", int(res.get("su") or 0)),
        }
