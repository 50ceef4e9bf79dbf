"""Quota decisions for the rest of the gateway: the per-request rate check, reserving a video
job's quotas before it goes upstream, settling them exactly once when it ends, and a team's
view of its own usage.

Redis failures arrive as ``StoreUnavailable`` (gateway.store): the rate check fails open or
closed by config; reservations, settlements and usage reads never guess (the 503 propagates),
because they spend money or decide across replicas.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from gateway.errors import QuotaExceeded, StoreUnavailable
from gateway.quota import model
from gateway.quota.model import Cost, Limit, Windows
from gateway.quota.store import QuotaStore
from gateway.settings import QuotaSettings, VideoSettings
from gateway.store.keys import TeamKeys

log = logging.getLogger("gateway.quota")

RETRY_CAP_S = 120.0  # longer waits: tell the SDK not to retry at all
Decision = Callable[[str, str, str], None]  # team, kind, result
_CODES = {
    "requests_per_minute": "rate_limit_exceeded",
    "concurrent_jobs": "concurrency_limit_exceeded",
    "video_seconds_per_day": "video_seconds_quota_exceeded",
    "video_seconds_per_month": "video_seconds_quota_exceeded",
    "spend_per_month": "spend_quota_exceeded",
}


@functools.lru_cache(maxsize=64)  # the same few reset times on every answer of a day
def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _wait_headers(wait_s: float | None) -> dict[str, str]:
    """retry-after with the real wait; past the cap (or never), no retry at all."""
    if wait_s is None or wait_s > RETRY_CAP_S:
        return {"x-should-retry": "false"}
    ms = max(1, math.ceil(wait_s * 1000))
    return {"retry-after": str(math.ceil(ms / 1000)), "retry-after-ms": str(ms)}


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
        teams: Mapping[str, Mapping[str, Any]],
        videos: VideoSettings,
        clock: Callable[[], float],
        on_decision: Decision | None = None,
        retry_hint_s: float = 5.0,
    ) -> None:
        self.store = store
        self.settings = settings
        self.teams = teams
        self.videos = videos
        self.clock = clock
        self.tz = ZoneInfo(settings.time_zone)
        self._on_decision = on_decision or (lambda team, kind, result: None)
        self._retry_hint_s = retry_hint_s
        # Rate-log members must be unique across replicas and requests, and cheap.
        self._member_prefix = f"{os.getpid()}.{secrets.token_hex(4)}."
        self._seq = itertools.count()
        self._window_cache: tuple[float, Windows] | None = None
        self._stored_defaults: dict[tuple[str, tuple[str, ...]], list[int]] = {}

    def _windows(self, now: float) -> Windows:
        # The calendar arithmetic was ~12 % of a rate check; the answer only changes at midnight.
        cached = self._window_cache
        if cached is not None and cached[0] <= now < cached[1].day_reset:
            return cached[1]
        w = Windows.at(now, self.tz)
        self._window_cache = (now, w)
        return w

    # -- limits -------------------------------------------------------------------------------

    def config_limits(self, team: str) -> dict[str, Limit]:
        return model.effective_limits(team, self.teams, {})

    def _defaults(self, team: str, *kinds: str) -> list[int]:
        # Called on every request's rate check; the config never changes while we run.
        key = (team, kinds)
        cached = self._stored_defaults.get(key)
        if cached is None:
            limits = self.config_limits(team)
            cached = [model.stored_limit(k, limits[k]) for k in kinds]
            if len(self._stored_defaults) < 10_000:  # team names come from tokens: bounded
                self._stored_defaults[key] = cached
        return cached

    def cost(self, model_name: str, seconds: int, size: str) -> Cost:
        m = self.videos.model(model_name)
        if m is None:
            return model.job_cost(seconds, size)
        return model.job_cost(
            seconds,
            size,
            weight=m.weight,
            price_per_second=m.price_per_second,
            size_multipliers=m.size_multipliers,
        )

    def _decided(self, team: str, kind: str, result: str) -> None:
        self._on_decision(team, kind, result)

    # -- per-request rate ---------------------------------------------------------------------

    async def check_rate(self, team: str) -> list[tuple[bytes, bytes]]:
        """Count one request; raise QuotaExceeded past the limit. Returns x-ratelimit headers."""
        now = self.clock()
        w = self._windows(now)
        k = TeamKeys(team)
        try:
            r = await self.store.rate(
                k,
                now_ms=int(now * 1000),
                member=f"{self._member_prefix}{next(self._seq)}",
                defaults=(
                    self._defaults(
                        team,
                        "requests_per_minute",
                        "video_seconds_per_day",
                        "video_seconds_per_month",
                    )
                ),
                day=w.day,
                month=w.month,
                window_ms=model.RATE_WINDOW_MS,
            )
        except StoreUnavailable:
            if self.settings.rate_fail_open:
                self._decided(team, "requests_per_minute", "fail_open")
                return []
            raise
        allowed, rpm, used, retry_ms, reset_ms, d_lim, d_used, m_lim, m_used = r
        headers = self._rate_headers(rpm, used, reset_ms, w, d_lim, d_used, m_lim, m_used)
        if allowed:
            self._decided(team, "requests_per_minute", "allowed")
            return headers
        self._decided(team, "requests_per_minute", "rejected")
        wait = None if retry_ms < 0 else retry_ms / 1000
        when = "it is 0" if wait is None else f"retry in {math.ceil(wait)} s"
        raise QuotaExceeded(
            f"Team '{team}' has reached its limit of {rpm} requests per minute; {when}.",
            code="rate_limit_exceeded",
            headers={
                **_wait_headers(wait),
                **{a.decode(): b.decode() for a, b in headers},
            },
        )

    @staticmethod
    def _rate_headers(
        rpm: int,
        used: int,
        reset_ms: int,
        w: Windows,
        d_lim: int,
        d_used: int,
        m_lim: int,
        m_used: int,
    ) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        if rpm >= 0:
            out += [
                (b"x-ratelimit-limit-requests", str(rpm).encode()),
                (b"x-ratelimit-remaining-requests", str(max(0, rpm - used)).encode()),
                (b"x-ratelimit-reset-requests", model.duration_text(reset_ms / 1000).encode()),
            ]
        # The binding video-seconds window: whichever leaves less room.
        windows = [
            (lim, used_, reset)
            for lim, used_, reset in ((d_lim, d_used, w.day_reset), (m_lim, m_used, w.month_reset))
            if lim >= 0
        ]
        if windows:
            lim, used_, reset = min(windows, key=lambda x: x[0] - x[1])
            kind = "video_seconds_per_day"
            out += [
                (b"x-ratelimit-limit-video-seconds", _num(model.shown(kind, lim))),
                (
                    b"x-ratelimit-remaining-video-seconds",
                    _num(model.shown(kind, max(0, lim - used_))),
                ),
                (b"x-ratelimit-reset-video-seconds", _iso(reset).encode()),
            ]
        return out

    # -- video jobs ---------------------------------------------------------------------------

    async def reserve(self, team: str, job_id: str, cost: Cost) -> Reservation:
        """Reserve every video quota for ``job_id`` at once, or raise QuotaExceeded."""
        now = self.clock()
        w = self._windows(now)
        k = TeamKeys(team)
        ok, kind, used, limit = await self.store.reserve(
            k,
            job_id,
            now_ms=int(now * 1000),
            video_units=cost.video_units,
            spend_units=cost.spend_units,
            lease_ms=int(self.settings.lease_seconds * 1000),
            defaults=(
                self._defaults(
                    team,
                    "concurrent_jobs",
                    "video_seconds_per_day",
                    "video_seconds_per_month",
                    "spend_per_month",
                )
            ),
            day=w.day,
            month=w.month,
            ttls=(
                model.DAY_TTL_S,
                model.MONTH_TTL_S,
                model.MONTH_TTL_S,
            ),
        )
        if ok:
            for kind_ in ("concurrent_jobs", "video_seconds", "spend"):
                self._decided(team, kind_, "allowed")
            return Reservation(job_id, cost, created=kind == "reserved")
        self._decided(team, kind.replace("_per_day", "").replace("_per_month", ""), "rejected")
        raise self._rejection(team, kind, used, limit, cost, w)

    def _rejection(
        self, team: str, kind: str, used: int, limit: int, cost: Cost, w: Windows
    ) -> QuotaExceeded:
        now = self.clock()
        if kind == "concurrent_jobs":
            return QuotaExceeded(
                f"Team '{team}' already has {used} unfinished video jobs, its limit of {limit}; "
                "retry when one completes or fails.",
                code=_CODES[kind],
                headers=_wait_headers(None if limit == 0 else self._retry_hint_s),
            )
        reset = w.day_reset if kind.endswith("_day") else w.month_reset
        needed = cost.video_units if kind.startswith("video") else cost.spend_units
        never = needed > limit  # this job can never fit, whatever resets
        if kind == "spend_per_month":
            cur = self.settings.currency
            what = (
                f"its spend limit of {model.shown(kind, limit)} {cur} per month "
                f"({model.shown(kind, used)} {cur} used, this job costs {cost.spend:g} {cur})"
            )
        else:
            window = "day" if kind.endswith("_day") else "month"
            what = (
                f"its limit of {model.shown(kind, limit)} video seconds per {window} "
                f"({model.shown(kind, used)} used, this job needs {cost.video_seconds:g})"
            )
        when = "the job is larger than the limit" if never else f"it resets at {_iso(reset)}"
        return QuotaExceeded(
            f"Team '{team}' would exceed {what}; {when}.",
            code=_CODES[kind],
            headers=_wait_headers(None if never else reset - now),
        )

    async def settle(self, team: str, job_id: str, outcome: str) -> bool:
        """Keep (``kept``) or refund (``refunded``) a reservation; True only the first time."""
        k = TeamKeys(team)
        res = await self.store.reservation(k, job_id)
        if res.get("state") != "reserved":
            return False
        done = await self.store.settle(
            k,
            job_id,
            outcome,
            now_ms=int(self.clock() * 1000),
            day=res["day"],
            month=res["month"],
        )
        if done:
            self._decided(team, "settlement", outcome)
        return done

    async def mark_unknown(self, team: str, job_id: str) -> None:
        """A create whose upstream outcome is unknown: its reservation waits for the reconciler."""
        try:
            await self.store.mark_unknown(TeamKeys(team), job_id)
        except StoreUnavailable:
            log.warning("could not mark %s unknown; the reconciler will find it", job_id)

    async def renew(self, team: str, job_id: str) -> None:
        """Extend a running job's concurrency lease (best effort; the reconciler also renews)."""
        now = self.clock()
        expires = int((now + self.settings.lease_seconds) * 1000)
        # The lease outlives many polls, and the reconciler renews it too.
        with contextlib.suppress(StoreUnavailable):
            await self.store.renew(TeamKeys(team), job_id, expires, int(now * 1000))

    # -- reporting ----------------------------------------------------------------------------

    async def usage(self, team: str) -> dict[str, Any]:
        """Limits, use, room and reset times for one team (GET /v1/gateway/quota)."""
        now = self.clock()
        w = self._windows(now)
        k = TeamKeys(team)
        used = await self.store.usage(
            k,
            now_ms=int(now * 1000),
            day=w.day,
            month=w.month,
            window_ms=model.RATE_WINDOW_MS,
        )
        overrides = await self.store.overrides(k)
        limits = self.config_limits(team)
        resets = {
            "requests_per_minute": used["rate_reset_ms"] / 1000 if used["rate_reset_ms"] else None,
            "concurrent_jobs": None,
            "video_seconds_per_day": w.day_reset,
            "video_seconds_per_month": w.month_reset,
            "spend_per_month": w.month_reset,
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
                "resets_at": None if reset is None else _iso(reset),
                "source": "override" if stored is not None else "config",
            }
        return {
            "object": "gateway.quota",
            "team": team,
            "currency": self.settings.currency,
            "time_zone": self.settings.time_zone,
            "limits": out,
        }

    # -- administration (the admin API) -------------------------------------------------------

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
        now = self.clock()
        w = self._windows(now)
        k = TeamKeys(team)
        every = window == "all"
        rate = every or window == "minute"
        buckets: list[tuple[str, str]] = []
        if every or window == "day":
            buckets.append(("video_seconds_per_day", k.video_day(w.day)))
        if every or window == "month":
            buckets.append(("video_seconds_per_month", k.video_month(w.month)))
            buckets.append(("spend_per_month", k.spend_month(w.month)))
        if not rate and not buckets:
            raise ValueError(f"unknown window {window!r}")
        since = int(now * 1000) - model.RATE_WINDOW_MS + 1 if rate else None
        requests, values = await self.store.reset_counters(
            k, rate_since_ms=since, buckets=[key for _, key in buckets]
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
        seen.update(t for t in self.teams if t != "default")
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


def _num(v: int | float) -> bytes:
    return (str(int(v)) if v == int(v) else f"{v:g}").encode()
