"""The admin API's logic, without HTTP: team limits and usage, jobs, upstream keys, audit.

Every change is applied first and audited second, with the before/after the change itself
observed. Redis trouble is a 503 (admin fails closed); a change applied whose audit entry
could not be written is also a 503 that says so, and the entry goes to the error log.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from redis.asyncio import Redis

from gateway.admin import inputs
from gateway.admin.audit import EVERYTHING, AuditLog
from gateway.admin.audit_query import AuditFilter, parse_before
from gateway.admin.views import job_view, key_view, team_view
from gateway.auth.principal import Principal
from gateway.errors import NotFound, ServiceUnavailable, StoreUnavailable
from gateway.quota.service import QuotaService
from gateway.settings import Settings
from gateway.upstream.keypool import KeyPool
from gateway.videos.registry import Job, JobRegistry, valid_video_id

log = logging.getLogger("gateway.admin")

TEAM_READS_IN_PARALLEL = 8  # the Redis pool is shared with live traffic: don't take it all
JOBS_PAGE = (20, 100)  # default, maximum
AUDIT_PAGE = (50, 1000)


class AdminService:
    def __init__(
        self,
        *,
        redis: Redis,
        quota: QuotaService,
        registry: JobRegistry,
        pool: KeyPool,
        settings: Settings,
        clock: Callable[[], float],
        audit: AuditLog | None = None,
    ) -> None:
        self.quota = quota
        self.registry = registry
        self.pool = pool
        self.settings = settings
        self.audit = audit or AuditLog(redis, clock=clock)

    # -- teams ----------------------------------------------------------------------------------

    async def teams(self) -> dict[str, Any]:
        names = await self.quota.admin.known_teams()
        # gw:teams and hand-made keys are not validated on the way in; one odd name must not
        # take the whole listing down with a 400.
        names = [n for n in names if inputs.well_formed_team(n)]
        gate = asyncio.Semaphore(TEAM_READS_IN_PARALLEL)

        async def one(name: str) -> dict[str, Any]:
            async with gate:
                return await self.team(name)

        return {"object": "list", "data": list(await asyncio.gather(*map(one, names)))}

    async def team(self, team: str) -> dict[str, Any]:
        """Any well-formed name has a view: a team exists as soon as a token names it."""
        inputs.check_team(team)
        usage = await self.quota.usage(team)
        # usage() already read the overrides: a limit whose source is "override" is one.
        overrides = {
            kind: v["limit"] for kind, v in usage["limits"].items() if v["source"] == "override"
        }
        return team_view(usage, overrides, configured=team in self.settings.teams)

    async def set_limits(
        self, actor: Principal, team: str, doc: Mapping[str, Any], *, replace: bool
    ) -> dict[str, Any]:
        """PUT (``replace``) or PATCH the team's overrides; null means unlimited."""
        inputs.check_team(team)
        limits = inputs.parse_limits(doc)
        before, after = await self.quota.admin.write_overrides(team, limits, replace=replace)
        action = "limits.replace" if replace else "limits.merge"
        await self.audited(
            actor, action, f"team:{team}", {"overrides": before}, {"overrides": after}
        )
        return await self.team(team)

    async def clear_limits(self, actor: Principal, team: str) -> dict[str, Any]:
        """Back to the config's limits for this team."""
        inputs.check_team(team)
        before, after = await self.quota.admin.write_overrides(team, {}, replace=True)
        await self.audited(
            actor, "limits.clear", f"team:{team}", {"overrides": before}, {"overrides": after}
        )
        return await self.team(team)

    async def reset_usage(
        self, actor: Principal, team: str, doc: Mapping[str, Any]
    ) -> dict[str, Any]:
        inputs.check_team(team)
        window = inputs.parse_window(doc)
        held = await self.quota.admin.reset_usage(team, window)
        await self.audited(
            actor,
            "usage.reset",
            f"team:{team}",
            {"window": window, "used": held},
            {"window": window, "used": dict.fromkeys(held, 0)},
        )
        return await self.team(team)

    # -- jobs -----------------------------------------------------------------------------------

    async def team_jobs(self, team: str, *, limit: str | None, after: str | None) -> dict[str, Any]:
        """The team's visible jobs, newest first, paged like ``GET /v1/videos``."""
        inputs.check_team(team)
        n = inputs.page_size(limit, default=JOBS_PAGE[0], maximum=JOBS_PAGE[1])
        if after is not None:
            cursor = await self._job(after)
            if cursor is None or cursor.team != team or cursor.deleted:
                raise NotFound("No job of this team has that id.", param="after")
        jobs, more = await self.registry.page(team, after=after, limit=n, descending=True)
        data = [job_view(j) for j in jobs]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }

    async def job(self, video_id: str) -> dict[str, Any]:
        """Any team's job, with what it reserved from its team's quotas."""
        job = await self._job(video_id)
        if job is None:
            raise NotFound()
        return job_view(job, quota=await self.quota.admin.reservation(job.team, job.id))

    async def _job(self, video_id: str) -> Job | None:
        return await self.registry.get(video_id) if valid_video_id(video_id) else None

    # -- upstream keys --------------------------------------------------------------------------

    async def upstream_keys(self) -> dict[str, Any]:
        # This replica's copy of the shared health may be a second stale: read it now.
        await self.pool.refresh()
        return {"object": "list", "data": [self._key(k) for k in self.pool.key_ids]}

    async def set_key_enabled(
        self, actor: Principal, key_id: str, *, enabled: bool
    ) -> dict[str, Any]:
        """Disable a key everywhere, or enable it (which also lifts a quarantine or cooldown)."""
        if key_id not in self.pool.key_ids:
            raise NotFound("No upstream key has this id.")
        await self.pool.refresh()
        before = self.pool.state(key_id)
        await self.pool.set_disabled(key_id, not enabled)
        view = self._key(key_id)
        action = "upstream_key.enable" if enabled else "upstream_key.disable"
        await self.audited(
            actor, action, f"upstream_key:{key_id}", {"state": before}, {"state": view["state"]}
        )
        return view

    def _key(self, key_id: str) -> dict[str, Any]:
        return key_view(key_id, self.pool.state(key_id), self.pool.in_flight(key_id))

    # -- audit ----------------------------------------------------------------------------------

    async def audit_log(
        self, *, limit: str | None, before: str | None = None, keep: AuditFilter = EVERYTHING
    ) -> dict[str, Any]:
        n = inputs.page_size(limit, default=AUDIT_PAGE[0], maximum=AUDIT_PAGE[1])
        page = await self.audit.page(n, before=parse_before(before), keep=keep)
        return {
            "object": "list",
            "data": page.entries,
            "has_more": page.more,
            "next_before": page.next_before,
        }

    async def audited(
        self,
        actor: Principal,
        action: str,
        target: str,
        before: Any,
        after: Any,
        *,
        team: str | None = None,
    ) -> None:
        """Record a change applied; ``team`` puts it in that team's own stream."""
        try:
            await self.audit.record(actor, action, target, before=before, after=after, team=team)
        except StoreUnavailable:
            # The change is done and cannot be taken back safely; keep the record somewhere.
            log.error(
                "audit log unavailable, entry: %s",
                json.dumps(
                    {
                        "team": actor.team,
                        "user": actor.user,
                        "action": action,
                        "target": target,
                        "before": before,
                        "after": after,
                    },
                    sort_keys=True,
                ),
            )
            raise ServiceUnavailable(
                "The change was applied, but the audit log could not be written "
                "(the entry went to the gateway's error log)."
            ) from None
