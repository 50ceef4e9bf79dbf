"""How the admin API shows jobs, keys and teams: explicit allowlists of fields, so a field
added to a record later (a secret, a result URL) never reaches an answer by accident."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.quota.model import Limit
from gateway.videos.dialect import normalise_status
from gateway.videos.registry import Job


def job_view(job: Job, *, quota: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A job as an admin sees it: who, what, where it ran (key id, upstream id), its state."""
    view: dict[str, Any] = {
        "id": job.id,
        "object": "admin.video_job",
        "team": job.team,
        "user": job.user,
        "model": job.model,
        "size": job.size,
        "seconds": job.seconds,
        "status": normalise_status(job.status),
        "progress": job.progress,
        "created_at": job.created_at,
        "completed_at": job.completed_at,
        "upstream_key_id": job.key_id,
        "upstream_id": job.upstream_id,
        "remixed_from": job.remixed_from,
        "deleted": job.deleted,
        "error": (
            {"code": job.error_code, "message": job.error_message}
            if job.error_code or job.error_message
            else None
        ),
    }
    if quota is not None:
        view["quota"] = dict(quota)
    return view


def key_view(key_id: str, state: str, in_flight: int) -> dict[str, Any]:
    return {
        "id": key_id,
        "object": "admin.upstream_key",
        "state": state,
        "in_flight": in_flight,
    }


def team_view(
    usage: Mapping[str, Any], overrides: Mapping[str, Limit], *, configured: bool
) -> dict[str, Any]:
    """``QuotaService.usage`` plus what an admin needs: the raw overrides (the same document
    ``PUT .../limits`` takes, so it can be saved and put back) and whether the config knows
    the team."""
    return {
        "object": "admin.team",
        "team": usage["team"],
        "configured": configured,
        "currency": usage["currency"],
        "time_zone": usage["time_zone"],
        "overrides": dict(overrides),
        "limits": usage["limits"],
    }
