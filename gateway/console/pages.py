"""What each console page shows and what each of its forms does, without HTTP.

Every read and every change goes through the services the admin API uses (``AdminService``,
``KeyAdmin``, ``UsageReport``, ``VideoService``), so a change made here is checked, applied and
audited exactly as through the API, with the signed-in person as the actor.

Scope is decided here, once: an admin sees every team; anyone else sees their own team, and
anything else, by any URL, is the same ``NotFound`` as something that does not exist. Pages
only an admin has (upstream keys, the audit log, other teams) are a ``NotFound`` for others
too, so the console does not even say they exist.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from gateway.admin import inputs
from gateway.admin.api_keys import KeyAdmin
from gateway.admin.audit_query import AuditFilter
from gateway.admin.service import AdminService
from gateway.auth.principal import Principal
from gateway.console import format
from gateway.console.chart import Chart, stacked_by_day
from gateway.errors import InvalidRequest, NotFound
from gateway.metering import ledger
from gateway.metering.report import UsageQuery, UsageReport, parse_query
from gateway.quota.model import SPEND_KINDS
from gateway.settings import Settings
from gateway.videos.dialect import normalise_status
from gateway.videos.registry import Job, valid_video_id
from gateway.videos.service import VideoService

JOB_STATUSES = ("queued", "in_progress", "completed", "failed")
JOBS_PER_TEAM = 50  # the newest jobs read per team for the jobs page
JOBS_SHOWN = 100
READS_IN_PARALLEL = 8  # the Redis pool is shared with live traffic
AUDIT_SHOWN = "200"  # entries on one audit page; older ones a link away
AUDIT_ACTIONS = (  # what the audit page's action filter offers
    "api_key.create",
    "api_key.revoke",
    "api_key.rotate",
    "limits.clear",
    "limits.merge",
    "limits.replace",
    "upstream_key.disable",
    "upstream_key.enable",
    "usage.reset",
)
TOP_MODELS = 5
OVERVIEW_KINDS = ("spend_per_day", "spend_per_month", "tokens_per_day")
UNLIMITED_WORDS = frozenset({"unlimited", "none", "null", "-", "∞"})
RESET_EFFECTS = {
    "minute": "the request log and tokens of the last minute",
    "day": "today's video seconds, tokens and spend",
    "month": "this month's video seconds and spend",
    "all": "the last minute's, today's and this month's counters",
}
KEY_FORM_LIMITS = ("requests_per_minute", "tokens_per_minute", "spend_per_day", "spend_per_month")


@dataclass(frozen=True)
class Viewer:
    """The signed-in person and what they may do."""

    principal: Principal
    admin: bool
    team_admin: bool

    @property
    def team(self) -> str:
        return self.principal.team

    def may_see(self, team: str) -> bool:
        return self.admin or team == self.principal.team

    def may_manage_keys(self, team: str) -> bool:
        return self.admin or (self.team_admin and team == self.principal.team)


class Console:
    def __init__(
        self,
        *,
        admin: AdminService,
        keys: KeyAdmin,
        report: UsageReport,
        videos: VideoService,
        settings: Settings,
        clock: Callable[[], float],
    ) -> None:
        self.admin_service = admin
        self.keys = keys
        self.report = report
        self.videos = videos
        self.settings = settings
        self.clock = clock
        self.currency = settings.quota.currency
        self.tz = report.tz
        self.alert_share = settings.quota.budget_alert_share * 100

    def viewer(self, principal: Principal) -> Viewer:
        auth = self.settings.auth
        admin = principal.has_role(auth.admin_role)
        return Viewer(principal, admin, admin or principal.has_role(auth.team_admin_role))

    # -- scope -------------------------------------------------------------------------------

    def _team(self, viewer: Viewer, team: str) -> str:
        if not inputs.well_formed_team(team) or not viewer.may_see(team):
            raise NotFound("No such team.")
        return team

    def _admin_only(self, viewer: Viewer) -> None:
        if not viewer.admin:
            raise NotFound()

    async def _teams_of(self, viewer: Viewer) -> list[dict[str, Any]]:
        if viewer.admin:
            teams: list[dict[str, Any]] = (await self.admin_service.teams())["data"]
            return teams
        return [await self.admin_service.team(viewer.team)]

    # -- reading -----------------------------------------------------------------------------

    def _limits(self, view: Mapping[str, Any]) -> list[dict[str, Any]]:
        """A team view's limits in display order, each with its share used."""
        out = []
        for kind in format.KIND_ORDER:
            v = view["limits"].get(kind)
            if v is None:
                continue
            out.append(
                {
                    "kind": kind,
                    "label": format.KIND_LABELS[kind],
                    "limit": v["limit"],
                    "used": v["used"],
                    "share": format.share(v["used"], v["limit"]),
                    "resets_at": v["resets_at"],
                    "source": v["source"],
                    "money": kind in SPEND_KINDS,
                }
            )
        return out

    def _row(self, view: Mapping[str, Any]) -> dict[str, Any]:
        limits = self._limits(view)
        shares = [lim["share"] for lim in limits if lim["share"] is not None]
        by_kind = {lim["kind"]: lim for lim in limits}
        return {
            "team": view["team"],
            "configured": view.get("configured", True),
            "overrides": view.get("overrides", {}),
            "limits": limits,
            "by_kind": by_kind,
            "burn": max(shares, default=None),
            "in_flight": by_kind["concurrent_jobs"]["used"] if "concurrent_jobs" in by_kind else 0,
        }

    def today(self) -> date:
        return self.report.today()

    async def overview(self, viewer: Viewer) -> dict[str, Any]:
        today = self.today()
        # One read of the month's ledger answers both the per-team tokens and the top models.
        month = UsageQuery(today.replace(day=1), today, ("team", "model"), "json")
        views = await self._teams_of(viewer)
        names = [v["team"] for v in views]
        usage, keys = await asyncio.gather(
            self.report.document(names, month),
            self.admin_service.upstream_keys() if viewer.admin else _nothing(),
        )
        rows = sorted(
            (self._row(v) for v in views),
            key=lambda r: (-(r["burn"] or 0), r["team"]),
        )
        by_model: dict[str, dict[str, Any]] = {}
        month_tokens: dict[str, int] = {}
        for r in usage["data"]:
            tokens = r["input_tokens"] + r["output_tokens"]
            month_tokens[r["team"]] = month_tokens.get(r["team"], 0) + tokens
            m = by_model.setdefault(r["model"], {"model": r["model"], "requests": 0, "tokens": 0})
            m["requests"] += r["requests"]
            m["tokens"] += tokens
            m["spend"] = m.get("spend", 0) + r["spend"]
        for row in rows:
            row["month_tokens"] = month_tokens.get(row["team"], 0)
        models = sorted(by_model.values(), key=lambda m: (-m["spend"], m["model"]))[:TOP_MODELS]
        alerts = [
            (r["team"], lim)
            for r in rows
            for lim in r["limits"]
            if lim["share"] is not None and lim["share"] >= self.alert_share
        ]
        return {
            "teams": rows,
            "kinds": OVERVIEW_KINDS,
            "top_models": models,
            "month_total": usage["total"],
            "in_flight": sum(r["in_flight"] for r in rows),
            "upstream_keys": keys["data"] if keys else None,
            "alerts": alerts,
            "month": today.strftime("%B %Y"),
        }

    async def teams(self, viewer: Viewer) -> dict[str, Any]:
        rows = sorted(
            (self._row(v) for v in await self._teams_of(viewer)),
            key=lambda r: (-(r["burn"] or 0), r["team"]),
        )
        return {"teams": rows, "kinds": format.KIND_ORDER}

    def usage_query(self, params: Mapping[str, str], group_by: tuple[str, ...]) -> UsageQuery:
        """The date range asked for (default: this month so far), checked by the report's own
        rules; an empty field means its default."""
        given = {k: v for k, v in params.items() if k in ("from", "to") and v}
        return parse_query(given, today=self.today(), default_group=group_by, allow_team=False)

    async def team(self, viewer: Viewer, team: str, params: Mapping[str, str]) -> dict[str, Any]:
        team = self._team(viewer, team)
        error = None
        try:
            q = self.usage_query(params, ("day", "model"))
        except InvalidRequest as exc:
            error = exc.message
            q = self.usage_query({}, ("day", "model"))
        groups = (("day", "model"), ("user",), ("model",), ("tag",))
        manage = viewer.may_manage_keys(team)
        view, keys, *docs = await asyncio.gather(
            self.admin_service.team(team),
            self.keys.list(team) if manage else _nothing(),
            *(self.report.document([team], dataclasses.replace(q, group_by=g)) for g in groups),
        )
        by_day, by_user, by_model, by_tag = docs
        chart = self._chart(by_day["data"], q)
        now = self.clock()
        return {
            "team": team,
            "row": self._row(view),
            "view": view,
            "query": q,
            "range_error": error,
            "usage_chart": chart,
            "total": by_day["total"],
            "by_user": _by_spend(by_user["data"]),
            "by_model": _by_spend(by_model["data"]),
            "by_tag": _by_spend(by_tag["data"]),
            "keys": keys["data"] if keys else None,
            "manage_keys": manage,
            "edit_limits": viewer.admin,
            "windows": inputs.RESET_WINDOWS,
            "key_limits": KEY_FORM_LIMITS,
            "now": now,
        }

    def _chart(self, rows: list[dict[str, Any]], q: UsageQuery) -> Chart:
        return stacked_by_day(
            rows,
            ledger.days(q.first, q.last),
            measure="spend",
            show=lambda v: format.money(v, self.currency),
            scale=lambda v: format.number(v, 6),  # the currency is in the caption
        )

    async def usage_csv(
        self, viewer: Viewer, team: str, params: Mapping[str, str]
    ) -> tuple[str, str]:
        """The team's usage over the range as CSV, and a file name for it."""
        team = self._team(viewer, team)
        group = tuple(g for g in params.get("group_by", "day,user,model,tag").split(",") if g)
        try:
            q = self.usage_query(params, group)
        except InvalidRequest:
            q = self.usage_query({}, group)
        if any(g not in ledger.GROUPS for g in q.group_by) or not q.group_by:
            raise InvalidRequest("group_by names ledger columns.", param="group_by")
        name = f"usage-{team}-{q.first.isoformat()}-{q.last.isoformat()}.csv"
        return name, await self.report.csv([team], q)

    async def jobs(self, viewer: Viewer, params: Mapping[str, str]) -> dict[str, Any]:
        team = params.get("team") or ""
        status = params.get("status") or ""
        model = params.get("model") or ""
        if team:
            self._team(viewer, team)
        known = (
            await self.admin_service.quota.admin.known_teams() if viewer.admin else [viewer.team]
        )
        teams = [team] if team else known
        gate = asyncio.Semaphore(READS_IN_PARALLEL)

        async def newest(t: str) -> list[Job]:
            async with gate:
                jobs, _ = await self.videos.registry.page(
                    t, after=None, limit=JOBS_PER_TEAM, descending=True
                )
                return jobs

        found = [j for batch in await asyncio.gather(*map(newest, teams)) for j in batch]
        found.sort(key=lambda j: -j.created_ms)
        models = sorted({j.model for j in found})
        shown = [
            self._job_row(j)
            for j in found
            if (not status or normalise_status(j.status) == status)
            and (not model or j.model == model)
        ][:JOBS_SHOWN]
        return {
            "jobs": shown,
            "filters": {"team": team, "status": status, "model": model},
            "teams": known,
            "statuses": JOB_STATUSES,
            "models": models,
        }

    def _job_row(self, job: Job) -> dict[str, Any]:
        cost = self.admin_service.quota.policy.cost(job.model, job.seconds, job.size)
        return {
            "id": job.id,
            "team": job.team,
            "user": job.user,
            "model": job.model,
            "size": job.size,
            "seconds": job.seconds,
            "status": normalise_status(job.status),
            "progress": job.progress,
            "created_at": job.created_at,
            "completed_at": job.completed_at,
            "cost": cost.spend,
            "error": (
                {"code": job.error_code, "message": job.error_message}
                if job.error_code or job.error_message
                else None
            ),
        }

    async def _job(self, viewer: Viewer, video_id: str) -> Job:
        job = await self.videos.registry.get(video_id) if valid_video_id(video_id) else None
        if job is None or job.deleted or not viewer.may_see(job.team):
            raise NotFound("No video job has this id.")
        return job

    async def job(self, viewer: Viewer, video_id: str, *, request_id: str) -> dict[str, Any]:
        job = await self._job(viewer, video_id)
        job = await self.videos.refresh(job, request_id=request_id)
        row = self._job_row(job)
        reservation = await self.admin_service.quota.admin.reservation(job.team, job.id)
        timeline = [("created", job.created_at, f"{job.user} asked for {job.seconds} s")]
        if job.completed_at is not None:
            what = "completed" if row["status"] == "completed" else "failed"
            why = row["error"]["message"] if row["error"] else "the video is ready"
            timeline.append((what, job.completed_at, why))
        return {
            "job": row,
            "prompt": job.prompt,
            "remixed_from": job.remixed_from,
            "upstream_key": job.key_id if viewer.admin else None,
            "reservation": reservation,
            "timeline": timeline,
            "playable": row["status"] == "completed",
            "refresh_ms": self.settings.videos.poll_after_ms if not job.finished else None,
        }

    async def content_principal(self, viewer: Viewer, video_id: str) -> Principal:
        """Who the video service should see asking for a job's content: the viewer, or for
        an admin watching another team's job, the admin acting within that team."""
        job = await self._job(viewer, video_id)
        p = viewer.principal
        if job.team == p.team:
            return p
        return Principal(team=job.team, user=p.user, roles=p.roles)

    async def upstream_keys(self, viewer: Viewer) -> dict[str, Any]:
        self._admin_only(viewer)
        return {"keys": (await self.admin_service.upstream_keys())["data"]}

    async def upstream_key(self, viewer: Viewer, key_id: str) -> dict[str, Any]:
        for key in (await self.upstream_keys(viewer))["keys"]:
            if key["id"] == key_id:
                return dict(key)
        raise NotFound("No upstream key has this id.")

    async def audit(self, viewer: Viewer, params: Mapping[str, str]) -> dict[str, Any]:
        self._admin_only(viewer)
        keep = AuditFilter.of(params)
        doc = await self.admin_service.audit_log(
            limit=AUDIT_SHOWN, before=params.get("before") or None, keep=keep
        )
        shown = doc["data"]
        for e in shown:
            e["epoch"] = _epoch(e.get("time"))
        return {
            "entries": shown,
            "filters": {"actor": keep.actor, "team": keep.team, "action": keep.action},
            "actions": AUDIT_ACTIONS,
            "next_before": doc["next_before"],  # older entries, filtered alike, from here
            "paged": bool(params.get("before")),
        }

    # -- changing ----------------------------------------------------------------------------

    def reset_effect(self, viewer: Viewer, team: str, window: str) -> str:
        """What resetting ``window`` does, in words, for the confirmation; 404 for anyone
        but an admin, and for a window that does not exist."""
        team = self._team(viewer, team)
        self._admin_only(viewer)
        what = RESET_EFFECTS.get(window)
        if what is None:
            raise NotFound()
        return (
            f"This sets {what} of team {team} to zero, so its members can spend that again. "
            "Running video jobs keep their slots and reservations. The reset is recorded in "
            "the audit log under your name."
        )

    async def set_limits(self, viewer: Viewer, team: str, form: Mapping[str, str]) -> None:
        """Replace the team's overrides with the filled-in fields (blank: the config's)."""
        team = self._team(viewer, team)
        self._admin_only(viewer)
        doc = {kind: _limit_field(form[kind]) for kind in format.KIND_ORDER if form.get(kind)}
        await self.admin_service.set_limits(viewer.principal, team, doc, replace=True)

    async def clear_limits(self, viewer: Viewer, team: str) -> None:
        team = self._team(viewer, team)
        self._admin_only(viewer)
        await self.admin_service.clear_limits(viewer.principal, team)

    async def reset_usage(self, viewer: Viewer, team: str, window: str) -> None:
        team = self._team(viewer, team)
        self._admin_only(viewer)
        await self.admin_service.reset_usage(viewer.principal, team, {"window": window})

    def _keys_of(self, viewer: Viewer, team: str) -> str:
        team = self._team(viewer, team)
        if not viewer.may_manage_keys(team):
            raise NotFound()
        return team

    async def create_key(
        self, viewer: Viewer, team: str, form: Mapping[str, str]
    ) -> dict[str, Any]:
        team = self._keys_of(viewer, team)
        doc: dict[str, Any] = {"name": form.get("name", "").strip()}
        days = form.get("expires_in_days", "").strip()
        if days:
            doc["expires_in_days"] = _number_field(days, "expires_in_days")
        models = [m.strip() for m in form.get("models", "").replace("\n", ",").split(",")]
        if any(models):
            doc["models"] = [m for m in models if m]
        limits = {
            kind: _limit_field(form[kind]) for kind in KEY_FORM_LIMITS if form.get(kind, "").strip()
        }
        if limits:
            doc["limits"] = limits
        return await self.keys.create(viewer.principal, team, doc, may_grant_roles=False)

    async def api_key(self, viewer: Viewer, team: str, key_id: str) -> dict[str, Any]:
        team = self._keys_of(viewer, team)
        for key in (await self.keys.list(team))["data"]:
            if key["id"] == key_id:
                return dict(key)
        raise NotFound("No API key has this id.")

    async def revoke_key(self, viewer: Viewer, team: str, key_id: str) -> dict[str, Any]:
        team = self._keys_of(viewer, team)
        return await self.keys.revoke(viewer.principal, key_id, team=team)

    async def rotate_key(
        self, viewer: Viewer, team: str, key_id: str, form: Mapping[str, str]
    ) -> dict[str, Any]:
        team = self._keys_of(viewer, team)
        doc: dict[str, Any] = {}
        grace = form.get("grace_hours", "").strip()
        if grace:
            doc["grace_seconds"] = _number_field(grace, "grace_hours") * 3600
        return await self.keys.rotate(viewer.principal, key_id, doc, team=team)

    async def set_upstream_key(self, viewer: Viewer, key_id: str, *, enabled: bool) -> None:
        self._admin_only(viewer)
        await self.admin_service.set_key_enabled(viewer.principal, key_id, enabled=enabled)


async def _nothing() -> None:
    return None


def _by_spend(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (-r["spend"], -r["requests"]))


def _number_field(raw: str, name: str) -> float:
    try:
        return float(raw.replace(",", "").replace("_", ""))
    except ValueError:
        raise InvalidRequest(f"{name} must be a number.", param=name) from None


def _limit_field(raw: str) -> Any:
    """A limit as typed into a form: a number (thousands separators allowed) or unlimited.
    Anything else goes to the service as it is, which refuses it with its own message."""
    text = raw.strip()
    if text.lower() in UNLIMITED_WORDS:
        return None
    cleaned = text.replace(",", "").replace("_", "")
    try:
        value = float(cleaned)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in cleaned else value


def _epoch(iso: Any) -> float | None:
    if not isinstance(iso, str):
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
