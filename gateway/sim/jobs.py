"""Simulated video jobs and the three response shapes Crazyrouter answers in (pure)."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

QUEUED, PROCESSING, COMPLETED, FAILED = "queued", "processing", "completed", "failed"
DEFAULT_SIZE = "1920x1080"
DEFAULT_SECONDS = 4
QUEUED_SHARE = 0.1  # of job_seconds


class InvalidRequest(ValueError):
    """A create body new-api would refuse with its ``invalid_request`` task error."""


@dataclass
class Job:
    id: str
    key: str  # the upstream key that created it: only it may see the job
    model: str
    prompt: str
    size: str
    seconds: int
    started: float  # on the simulator's clock
    created_at: int  # wall-clock seconds, as the upstream reports it
    behaviour: str = "normal"  # normal | fail | never
    remixed_from: str | None = None
    image_url: str | None = None
    storyboard: list[Any] | None = None
    private: bool = False
    # A raw status to report instead of the simulated one, so tests can script the terminal
    # spellings new-api passes through (expired, cancelled, ...) at a moment they choose.
    reported_status: str | None = None

    def phase(self, now: float, job_seconds: float) -> tuple[str, int]:
        elapsed = now - self.started
        if elapsed < QUEUED_SHARE * job_seconds:
            return QUEUED, 0
        if self.behaviour == "never" or elapsed < job_seconds:
            return PROCESSING, min(99, int(100 * elapsed / max(job_seconds, 1e-9)))
        return (FAILED, 100) if self.behaviour == "fail" else (COMPLETED, 100)

    @property
    def dimensions(self) -> tuple[int, int]:
        w, _, h = self.size.lower().partition("x")
        try:
            return int(w), int(h)
        except ValueError:
            return 1920, 1080


def new_job_id(shape: str) -> str:
    return ("video_" if shape == "page" else "task_") + secrets.token_hex(12)


def behaviour_for(prompt: str) -> str:
    if "SIMFAIL" in prompt:
        return "fail"
    if "SIMNEVER" in prompt:
        return "never"
    return "normal"


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise InvalidRequest(f"{name} must be an integer")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{name} must be an integer") from None


def _storyboard(value: Any) -> list[Any] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):  # multipart carries it as JSON text
        try:
            value = json.loads(value)
        except ValueError:
            raise InvalidRequest("storyboard must be a JSON array") from None
    if not isinstance(value, list) or not all(isinstance(s, dict) for s in value):
        raise InvalidRequest("storyboard must be an array of {prompt, duration}")
    return value


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


def job_from_fields(
    fields: dict[str, Any], *, job_id: str, key: str, started: float, created_at: int
) -> Job:
    """A job from a create body, JSON or multipart (whose values are all strings)."""
    model = fields.get("model")
    if not model or not isinstance(model, str):
        raise InvalidRequest("model is required")
    storyboard = _storyboard(fields.get("storyboard"))
    raw_seconds = fields.get("duration", fields.get("seconds"))
    if raw_seconds not in (None, ""):
        seconds = _int(raw_seconds, "duration")
    elif storyboard:
        seconds = sum(_int(s.get("duration", 0), "storyboard duration") for s in storyboard)
    else:
        seconds = DEFAULT_SECONDS
    prompt = str(fields.get("prompt") or "")
    if storyboard:
        prompt = prompt or " / ".join(str(s.get("prompt", "")) for s in storyboard)
    image_url = fields.get("image_url")
    return Job(
        id=job_id,
        key=key,
        model=model,
        prompt=prompt,
        size=str(fields.get("size") or DEFAULT_SIZE),
        seconds=seconds,
        started=started,
        created_at=created_at,
        behaviour=behaviour_for(prompt),
        image_url=str(image_url) if image_url else None,
        storyboard=storyboard,
        private=_bool(fields.get("private", False)),
    )


_ENVELOPE = {
    QUEUED: "SUBMITTED",
    PROCESSING: "IN_PROGRESS",
    COMPLETED: "SUCCESS",
    FAILED: "FAILURE",
}
_OPENAI = {QUEUED: "queued", PROCESSING: "in_progress", COMPLETED: "completed", FAILED: "failed"}
_ERROR = {"message": "The simulated generation failed.", "code": "generation_failed"}


def render(job: Job, shape: str, now: float, job_seconds: float, base_url: str) -> dict[str, Any]:
    """The job's status document in one of Crazyrouter's three shapes."""
    status, progress = job.phase(now, job_seconds)
    url = f"{base_url}/files/{job.id}.mp4"
    done = status == COMPLETED
    finished_at = job.created_at + round(job_seconds) if status in (COMPLETED, FAILED) else None
    if shape == "envelope":
        return {
            "code": "success",
            "message": "",
            "data": {
                "id": job.id,
                "task_id": job.id,
                "model": job.model,
                "status": job.reported_status or _ENVELOPE[status],
                "progress": f"{progress}%",
                "artifact_url": url if done else None,
                "result_url": url if done else None,
                "fail_reason": _ERROR["message"] if status == FAILED else None,
                "submit_time": job.created_at,
                "finish_time": finished_at,
            },
        }
    if shape == "openai":
        return {
            "id": job.id,
            "object": "video",
            "model": job.model,
            "status": job.reported_status or _OPENAI[status],
            "progress": progress,
            "created_at": job.created_at,
            "completed_at": finished_at,
            "seconds": str(job.seconds),
            "size": job.size,
            "remixed_from_video_id": job.remixed_from,
            "error": _ERROR if status == FAILED else None,
            "metadata": {"url": url} if done else {},
        }
    body: dict[str, Any] = {
        "id": job.id,
        "object": "video",
        "status": job.reported_status or status,
        "created_at": job.created_at,
    }
    if done:
        w, h = job.dimensions
        body["video"] = {"url": url, "duration": job.seconds, "width": w, "height": h}
    if status == FAILED:
        body["error"] = _ERROR
    return body
