"""The reconciler: a background task in every replica, one leader at a time, that settles what
nobody else will — jobs nobody polls any more, creates whose outcome is unknown, reservations a
crash left behind — and repairs concurrency slots that drifted from the open reservations.

It only ever acts through the same exactly-once settlement the request path uses, so a
reconciler and ten pollers seeing one job fail together still refund it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.errors import StoreUnavailable
from gateway.quota.service import QuotaService
from gateway.store.keys import RECONCILER_LEADER
from gateway.store.lua import script
from gateway.videos.registry import JobRegistry
from gateway.videos.service import VideoService

log = logging.getLogger("gateway.reconciler")

LEADER_KEY = RECONCILER_LEADER
BATCH = 100


@dataclass
class Report:
    """What one pass did; ``drift`` counts repairs by kind."""

    polled: int = 0
    settled: int = 0
    unknown_kept: int = 0
    orphans_refunded: int = 0
    drift: dict[str, int] = field(default_factory=dict)
    lag_seconds: float = 0.0  # how long the stalest open job had gone unseen
    failed_teams: int = 0  # teams whose jobs could not be reconciled this pass


class Reconciler:
    def __init__(
        self,
        redis: Redis,
        videos: VideoService,
        quota: QuotaService,
        registry: JobRegistry,
        *,
        interval_seconds: float,
        idle_seconds: float,
        orphan_seconds: float,
        clock: Callable[[], float],
        on_report: Callable[[Report], None] | None = None,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.redis = redis
        self.videos = videos
        self.quota = quota
        self.registry = registry
        self.interval = interval_seconds
        self.idle_ms = int(idle_seconds * 1000)
        self.orphan_ms = int(orphan_seconds * 1000)
        self.clock = clock
        self._on_report = on_report or (lambda r: None)
        self._on_error = on_error or (lambda: None)
        self._token = secrets.token_hex(8)
        self._lead = redis.register_script(script("gateway.videos", "reconciler_lead"))
        self._runs = 0

    async def lead(self) -> bool:
        """True while this replica holds the lead (the lock outlives three missed passes)."""
        ttl_ms = int(self.interval * 3000)
        return int(await self._lead(keys=[LEADER_KEY], args=[self._token, ttl_ms])) == 1

    async def resign(self) -> None:
        with contextlib.suppress(RedisError, StoreUnavailable):
            if await self.redis.get(LEADER_KEY) == self._token.encode():
                await self.redis.delete(LEADER_KEY)

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                if await self.lead():
                    self._on_report(await self.run_once())
            except asyncio.CancelledError:
                raise
            except StoreUnavailable:
                log.warning("reconciler pass skipped: Redis is unreachable")
                self._on_error()
            except Exception:
                # One bad pass must not end reconciliation for the life of the process.
                log.exception("reconciler pass failed")
                self._on_error()

    async def run_once(self) -> Report:
        report = Report()
        now_ms = int(self.clock() * 1000)
        for team in await self.quota.teams_seen():
            try:
                await self._team(team, now_ms, report)
            except StoreUnavailable:
                raise  # Redis is gone for every team: the pass ends
            except Exception:
                # One team's jobs (an upstream answer nothing foresaw) must not leave every team
                # after it unreconciled, pass after pass.
                log.exception("reconciler skipped team %r this pass", team)
                report.failed_teams += 1
        if any(report.drift.values()):
            log.warning("reconciler repaired drift: %s", report.drift)
        return report

    async def _team(self, team: str, now_ms: int, report: Report) -> None:
        stale = await self.quota.stale_reservations(team, now_ms - self.idle_ms, BATCH)
        for job_id, res in stale:
            self._runs += 1
            if res.get("state") != "reserved":
                # Settled, but still indexed as open: a crash between two writes.
                report.drift["open_index"] = report.drift.get("open_index", 0) + 1
                await self.quota.forget_open(team, job_id)
                continue
            seen_ms = now_ms - int(res.get("reserved_ms", now_ms))
            job = await self.registry.get(job_id)
            if job is None:
                outcome = res.get("outcome")
                if outcome == "unknown":
                    # The upstream may have run (and billed) it; we can never learn its id.
                    report.unknown_kept += await self.quota.settle(team, job_id, "kept")
                elif seen_ms > self.orphan_ms and outcome == "sent":
                    # Sent, and no create can still be under way: the upstream may have run
                    # it, but its job was never recorded (Redis failed after it was accepted,
                    # or the replica died mid-call).
                    report.unknown_kept += await self.quota.settle(team, job_id, "kept")
                elif seen_ms > self.orphan_ms:
                    # Reserved, then the replica died before the create left.
                    report.orphans_refunded += await self.quota.settle(team, job_id, "refunded")
                continue
            report.lag_seconds = max(report.lag_seconds, seen_ms / 1000)
            if job.finished:
                report.settled += await self.quota.settle(
                    team,
                    job_id,
                    "kept" if job.status == "completed" else "refunded",
                    key_id=job.key_id,
                )
                continue
            report.polled += 1
            # Polls (coalesced with callers), settles if it ended, renews the lease if not,
            # and fails it past the deadline.
            await self.videos.refresh(job, request_id=f"reconciler-{self._token}-{self._runs}")
        dropped = await self.quota.drop_stray_slots(team)
        if dropped:
            report.drift["slots"] = report.drift.get("slots", 0) + dropped
