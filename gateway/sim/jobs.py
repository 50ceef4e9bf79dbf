"""Simulated video jobs and the three response shapes Crazyrouter answers in (pure)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

QUEUED, PROCESSING, COMPLETED, FAILED = "queued", "processing", "completed", "failed"


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

    def phase(self, now: float, job_seconds: float) -> tuple[str, int]:
        elapsed = now - self.started
        if elapsed < 0.1 * job_seconds:
            return QUEUED, 0
        if self.behaviour == "never" or elapsed < job_seconds:
            return PROCESSING, min(99, int(100 * elapsed / max(job_seconds, 1e-9)))
        return (FAILED, 100) if self.behaviour == "fail" else (COMPLETED, 100)

    @property
    def dimensions(self) -> tuple[int, int]:
        w, _, h = self.size.partition("x")
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


_ENVELOPE = {
    QUEUED: "SUBMITTED",
    PROCESSING: "IN_PROGRESS",
    COMPLETED: "SUCCESS",
    FAILED: "FAILURE",
}
_OPENAI = {QUEUED: "queued", PROCESSING: "in_progress", COMPLETED: "completed", FAILED: "failed"}
_ERROR = {"message": "The simulated generation failed.", "code": "generation_failed"}


def render(job: Job, shape: str, now: float, job_seconds: float, base_url: str) -> dict[str, Any]:
    status, progress = job.phase(now, job_seconds)
    url = f"{base_url}/files/{job.id}.mp4"
    done = status == COMPLETED
    completed_at = job.created_at + int(job_seconds) if status in (COMPLETED, FAILED) else None
    if shape == "envelope":
        return {
            "code": "success",
            "message": "",
            "data": {
                "id": job.id,
                "task_id": job.id,
                "model": job.model,
                "status": _ENVELOPE[status],
                "progress": f"{progress}%",
                "artifact_url": url if done else None,
                "result_url": url if done else None,
                "fail_reason": _ERROR["message"] if status == FAILED else None,
                "submit_time": job.created_at,
                "finish_time": completed_at,
            },
        }
    if shape == "openai":
        return {
            "id": job.id,
            "object": "video",
            "model": job.model,
            "status": _OPENAI[status],
            "progress": progress,
            "created_at": job.created_at,
            "completed_at": completed_at,
            "seconds": str(job.seconds),
            "size": job.size,
            "error": _ERROR if status == FAILED else None,
            "metadata": {"url": url} if done else {},
        }
    body: dict[str, Any] = {
        "id": job.id,
        "object": "video",
        "status": status,
        "created_at": job.created_at,
    }
    if done:
        w, h = job.dimensions
        body["video"] = {"url": url, "duration": job.seconds, "width": w, "height": h}
    if status == FAILED:
        body["error"] = _ERROR
    return body
