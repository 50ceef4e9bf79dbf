"""A periodically refreshed copy of each configured team's usage and limits, for the metrics
scrape: the scrape reads memory, never Redis, so a slow Redis cannot stall it and a busy
Prometheus cannot load Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping

from redis.exceptions import RedisError

from gateway.errors import GatewayError
from gateway.quota.service import QuotaService
from gateway.store.keys import TeamKeys

log = logging.getLogger("gateway.quota")

View = tuple[Mapping[str, float], Mapping[str, float | None], int]


class UsageSnapshot:
    def __init__(self, quota: QuotaService, teams: Iterable[str], interval_seconds: float) -> None:
        self.quota = quota
        self.teams = tuple(t for t in teams if t != "default")
        self.interval = interval_seconds
        self._views: dict[str, View] = {}

    def __call__(self) -> Mapping[str, View]:
        return self._views

    async def refresh(self) -> None:
        views: dict[str, View] = {}
        for team in self.teams:
            report = (await self.quota.usage(team))["limits"]
            open_jobs = await self.quota.store.open_count(TeamKeys(team))
            views[team] = (
                {kind: float(v["used"]) for kind, v in report.items()},
                {kind: v["limit"] for kind, v in report.items()},
                int(open_jobs),
            )
        self._views = views

    async def run_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except (GatewayError, RedisError, OSError, ValueError):
                # Redis is down: keep the last values; the redis error metrics tell the story.
                log.debug("quota snapshot refresh failed", exc_info=True)
            await asyncio.sleep(self.interval)
