"""Video-job quotas: reserving a job's quotas before it goes upstream, settling them exactly
once when it ends, a team's view of its own usage, and what the reconciler needs. The
service also holds the quota package's other concepts: ``rate`` (the per-request check,
gateway.quota.rate) and ``admin`` (overrides and resets, gateway.quota.admin).

Redis failures arrive as ``StoreUnavailable`` (gateway.store): the rate check fails open or
closed by config; reservations, settlements and usage reads never guess (the 503 propagates),
because they spend money or decide across replicas.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.auth.api_keys import KeyScope
from gateway.errors import QuotaExceeded, StoreUnavailable
from gateway.metering import ledger
from gateway.quota import model
from gateway.quota.admin import QuotaAdmin
from gateway.quota.model import Cost, Limit, Windows
from gateway.quota.policy import Decision, QuotaPolicy, iso, wait_headers
from gateway.quota.rate import RateLimiter
from gateway.quota.store import QuotaStore
from gateway.settings import QuotaSettings, TeamSettings, VideoSettings
from gateway.store.keys import TeamKeys

log = logging.getLogger("gateway.quota")

_CODES = {
    "requests_per_minute": "rate_limit_exceeded",
    "concurrent_jobs": "concurrency_limit_exceeded",
    "video_seconds_per_day": "video_seconds_quota_exceeded",
    "video_seconds_per_month": "video_seconds_quota_exceeded",
    "spend_per_month": "spend_quota_exceeded",
    "spend_per_day": "spend_quota_exceeded",
    "tokens_per_minute": "token_quota_exceeded",
    "tokens_per_day": "token_quota_exceeded",
}


@dataclass(frozen=True)
class Reservation:
    job_id: str
    cost: Cost
    created: bool  # False: this job id had already reserved (a replay)


class QuotaService:
    def __init__(
        self,
        store: QuotaStore,
        settings: QuotaSettings,
        *,
        teams: Mapping[str, TeamSettings],
        videos: VideoSettings,
        clock: Callable[[], float],
        on_decision: Decision | None = None,
        on_charged: Callable[[str, str, float], None] | None = None,
        on_key_charged: Callable[[str | None, int], None] | None = None,
        retry_hint_s: float = 5.0,
        ledger_ttl_s: int = 400 * 86_400,
    ) -> None:
        self.store = store
        # A kept job's spend, by team and model: the spend metric counts it with every call.
        self._on_charged = on_charged or (lambda team, model, spend: None)
        # ... and by the upstream key that ran it, for the reconciliation with the bill.
        self._on_key_charged = on_key_charged or (lambda key, units: None)
        self._ledger_ttl_s = ledger_ttl_s
        self.policy = QuotaPolicy(settings, teams=teams, videos=videos, clock=clock)
        self._on_decision = on_decision or (lambda team, kind, result: None)
        self._retry_hint_s = retry_hint_s
        # The other concepts of the quota package, sharing this store and policy.
        self.rate = RateLimiter(store, self.policy, on_decision=self._on_decision)
        self.admin = QuotaAdmin(store, self.policy)

    # -- video jobs ---------------------------------------------------------------------------

    async def reserve(
        self,
        team: str,
        job_id: str,
        cost: Cost,
        *,
        user: str = "",
        model_name: str = "-",
        key: KeyScope | None = None,
    ) -> Reservation:
        """Reserve every video quota for ``job_id`` at once (the team's, and the gateway
        key's it was made with), or raise QuotaExceeded. A job that is kept enters the usage
        ledger under ``user`` and ``model_name``."""
        now = self.policy.clock()
        w = self.policy.windows(now)
        k = TeamKeys(team)
        ok, kind, used, limit = await self.store.reserve(
            k,
            job_id,
            now_ms=int(now * 1000),
            video_units=cost.video_units,
            spend_units=cost.spend_units,
            lease_ms=int(self.policy.settings.lease_seconds * 1000),
            defaults=(
                self.policy.defaults(
                    team,
                    "concurrent_jobs",
                    "video_seconds_per_day",
                    "video_seconds_per_month",
                    "spend_per_month",
                    "spend_per_day",
                )
            ),
            day=w.day,
            month=w.month,
            ttls=(
                model.DAY_TTL_S,
                model.MONTH_TTL_S,
                model.MONTH_TTL_S,
            ),
            ledger_prefix=ledger.field(user, model_name, "", ""),
            raw_seconds_units=cost.seconds * model.SECOND_UNITS,
            key=key,
        )
        if ok:
            for kind_ in ("concurrent_jobs", "video_seconds", "spend"):
                self._on_decision(team, kind_, "allowed")
            return Reservation(job_id, cost, created=kind == "reserved")
        who = f"Team '{team}'"
        if kind.startswith("key:") and key is not None:
            who, kind = f"API key '{key.name}'", kind[4:]
        self._on_decision(team, kind.replace("_per_day", "").replace("_per_month", ""), "rejected")
        raise self._rejection(who, kind, used, limit, cost, w)

    def _rejection(
        self, who: str, kind: str, used: int, limit: int, cost: Cost, w: Windows
    ) -> QuotaExceeded:
        now = self.policy.clock()
        if kind == "concurrent_jobs":
            return QuotaExceeded(
                f"{who} already has {used} unfinished video jobs, its limit of {limit}; "
                "retry when one completes or fails.",
                code=_CODES[kind],
                headers=wait_headers(None if limit == 0 else self._retry_hint_s),
            )
        reset = w.day_reset if kind.endswith("_day") else w.month_reset
        needed = cost.video_units if kind.startswith("video") else cost.spend_units
        never = needed > limit  # this job can never fit, whatever resets
        if kind in model.SPEND_KINDS:
            cur = self.policy.settings.currency
            window = "day" if kind.endswith("_day") else "month"
            what = (
                f"its spend limit of {model.shown(kind, limit)} {cur} per {window} "
                f"({model.shown(kind, used)} {cur} used, this job costs {cost.spend:g} {cur})"
            )
        else:
            window = "day" if kind.endswith("_day") else "month"
            what = (
                f"its limit of {model.shown(kind, limit)} video seconds per {window} "
                f"({model.shown(kind, used)} used, this job needs {cost.video_seconds:g})"
            )
        when = "the job is larger than the limit" if never else f"it resets at {iso(reset)}"
        return QuotaExceeded(
            f"{who} would exceed {what}; {when}.",
            code=_CODES[kind],
            headers=wait_headers(None if never else reset - now),
        )

    async def settle(
        self, team: str, job_id: str, outcome: str, *, key_id: str | None = None
    ) -> bool:
        """Keep (``kept``) or refund (``refunded``) a reservation; True only the first time.
        ``key_id``: the upstream key that ran the job, when known."""
        k = TeamKeys(team)
        res = await self.store.reservation(k, job_id)
        if res.get("state") != "reserved":
            return False
        done = await self.store.settle(
            k,
            job_id,
            outcome,
            now_ms=int(self.policy.clock() * 1000),
            day=res["day"],
            month=res["month"],
            ledger_ttl=self._ledger_ttl_s,
            key_id=res.get("kid") or None,
        )
        if done:
            self._on_decision(team, "settlement", outcome)
            if outcome == "kept" and res.get("lp"):
                units = int(res.get("su") or 0)
                self._on_charged(team, ledger.model_of_prefix(res["lp"]), units / model.SPEND_UNITS)
                self._on_key_charged(key_id, units)
        return done

    async def mark_sent(self, team: str, job_id: str) -> None:
        """A create about to leave for the upstream: from now on its reservation, if no job
        is ever recorded for it, is kept, not refunded as a dead replica's (raises
        StoreUnavailable: then it is not sent)."""
        await self.store.mark_sent(TeamKeys(team), job_id)

    async def refunded(self, team: str, job_id: str) -> bool:
        """Whether the job's reservation was given back (its create certainly did nothing, or
        its job failed)."""
        return (await self.store.reservation(TeamKeys(team), job_id)).get("state") == "refunded"

    async def mark_unknown(self, team: str, job_id: str) -> None:
        """A create whose upstream outcome is unknown: its reservation waits for the reconciler."""
        try:
            await self.store.mark_unknown(TeamKeys(team), job_id)
        except StoreUnavailable:
            log.warning("could not mark %s unknown; the reconciler will find it", job_id)

    async def renew(self, team: str, job_id: str) -> None:
        """Extend a running job's concurrency lease (best effort; the reconciler also renews)."""
        now = self.policy.clock()
        expires = int((now + self.policy.settings.lease_seconds) * 1000)
        # The lease outlives many polls, and the reconciler renews it too.
        with contextlib.suppress(StoreUnavailable):
            await self.store.renew(TeamKeys(team), job_id, expires, int(now * 1000))

    # -- reporting ----------------------------------------------------------------------------

    async def usage(self, team: str) -> dict[str, Any]:
        """Limits, use, room and reset times for one team (GET /v1/gateway/quota)."""
        now = self.policy.clock()
        w = self.policy.windows(now)
        k = TeamKeys(team)
        used = await self.store.usage(
            k,
            now_ms=int(now * 1000),
            day=w.day,
            month=w.month,
            window_ms=model.RATE_WINDOW_MS,
        )
        overrides = await self.store.overrides(k)
        limits = self.policy.config_limits(team)
        resets = {
            "requests_per_minute": used["rate_reset_ms"] / 1000 if used["rate_reset_ms"] else None,
            "concurrent_jobs": None,
            "video_seconds_per_day": w.day_reset,
            "video_seconds_per_month": w.month_reset,
            "spend_per_month": w.month_reset,
            "tokens_per_minute": (
                used["tokens_reset_ms"] / 1000 if used["tokens_reset_ms"] else None
            ),
            "tokens_per_day": w.day_reset,
            "spend_per_day": w.day_reset,
        }
        out: dict[str, Any] = {}
        for kind in model.KINDS:
            stored = overrides.get(kind)
            limit: Limit
            if stored is not None:
                limit = None if stored < 0 else model.shown(kind, stored)
            else:
                limit = limits[kind]
            value = model.shown(kind, used[kind])
            reset = resets[kind]
            out[kind] = {
                "limit": limit,
                "used": value,
                "remaining": None if limit is None else max(0, round(limit - value, 6)),
                "resets_at": None if reset is None else iso(reset),
                "source": "override" if stored is not None else "config",
            }
        return {
            "object": "gateway.quota",
            "team": team,
            "currency": self.policy.settings.currency,
            "time_zone": self.policy.settings.time_zone,
            "limits": out,
        }

    # -- what the reconciler needs ------------------------------------------------------------

    async def teams_seen(self) -> list[str]:
        """Every team that ever reserved (the reconciler's work list)."""
        return await self.store.teams()

    async def stale_reservations(
        self, team: str, older_than_ms: int, limit: int
    ) -> list[tuple[str, dict[str, str]]]:
        """Open reservations nobody has seen since ``older_than_ms``, with their records."""
        k = TeamKeys(team)
        ids = await self.store.open_jobs(k, older_than_ms, limit)
        return [(job_id, await self.store.reservation(k, job_id)) for job_id in ids]

    async def forget_open(self, team: str, job_id: str) -> None:
        """A settled reservation still indexed as open (a crash between two writes)."""
        await self.store.drop_open(TeamKeys(team), [job_id])

    async def drop_stray_slots(self, team: str) -> int:
        """Free concurrency slots whose reservation is no longer open; how many were freed.
        A stray slot would block the team forever."""
        k = TeamKeys(team)
        holders = await self.store.slot_holders(k)
        if not holders:
            return 0
        is_open = await self.store.is_open(k, holders)
        strays = [h for h, o in zip(holders, is_open, strict=True) if not o]
        return await self.store.drop_slots(k, strays) if strays else 0
