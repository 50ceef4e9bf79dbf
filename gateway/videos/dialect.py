"""Translation between Crazyrouter's video dialects and the OpenAI SDK's Video object (pure).

Crazyrouter answers in at least three shapes (its documented page, new-api's
``{"code","data"}`` envelope, and an OpenAI-like object) with dozens of status spellings. The SDK
accepts exactly ``queued | in_progress | completed | failed`` and loops forever on anything
else, so every status is mapped here and nothing upstream-specific leaks through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["queued", "in_progress", "completed", "failed"]

# Every spelling new-api and the families behind it are known to use. A terminal spelling missing
# here would count as queued and poll until the gateway's deadline, holding the caller's
# reservation for an hour; each failure spelling also says why, as the Video's error.code.
_SPELLINGS: tuple[tuple[Status, str | None, str], ...] = (
    ("queued", None, "queued queueing in_queue pending submitted not_start preparing created"),
    ("queued", None, "waiting unknown"),
    ("in_progress", None, "processing in_progress running generating"),
    ("completed", None, "completed complete success succeed succeeded finished done"),
    ("failed", "generation_failed", "failed failure fail error"),
    ("failed", "expired", "expired"),
    ("failed", "cancelled", "cancelled canceled cancel"),
    ("failed", "content_policy_violation", "rejected reject blocked moderation content_filter"),
    ("failed", "content_policy_violation", "content_policy_violation sensitive"),
    ("failed", "timeout", "timeout timed_out"),
)
_STATUS: dict[str, tuple[Status, str | None]] = {
    name: (status, code) for status, code, names in _SPELLINGS for name in names.split()
}


def _classify(raw: Any) -> tuple[Status, str | None]:
    """The SDK status and, for a failure, the error code its spelling implies."""
    key = str(raw or "").strip().lower().replace("-", "_").replace(" ", "_")
    return _STATUS.get(key, ("queued", None))


def normalise_status(raw: Any) -> Status:
    """Any upstream spelling to the SDK's four statuses; an unknown one counts as queued."""
    return _classify(raw)[0]


@dataclass(frozen=True, slots=True)
class UpstreamVideo:
    """What the gateway needs from any of the upstream's answers about one job."""

    id: str | None
    status: Status
    progress: int
    url: str | None  # the upstream's result URL: never shown to callers
    error_code: str | None
    error_message: str | None
    width: int | None = None
    height: int | None = None
    duration: int | None = None


def _progress(raw: Any, status: Status) -> int:
    if status == "completed":
        return 100
    if isinstance(raw, str):
        raw = raw.strip().rstrip("%")
    try:
        value = int(float(raw))
    except (TypeError, ValueError, OverflowError):  # OverflowError: "inf%", 1e400
        return 0
    return max(0, min(99 if status != "failed" else 100, value))


def _int(raw: Any) -> int | None:
    try:
        return int(raw) if raw is not None and not isinstance(raw, bool) else None
    except (TypeError, ValueError, OverflowError):
        return None


def _dict(raw: Any) -> dict[str, Any]:
    return raw if isinstance(raw, dict) else {}


def _str(raw: Any) -> str | None:
    return raw if isinstance(raw, str) and raw else None


def parse_upstream(doc: Any) -> UpstreamVideo:
    """Read any of the three known response shapes. Raises ValueError on anything else."""
    if not isinstance(doc, dict):
        raise ValueError("upstream video answer is not an object")
    data = doc.get("data")
    if "data" in doc and not isinstance(data, dict) and "id" not in doc:
        raise ValueError("upstream envelope without data")
    body: dict[str, Any] = data if isinstance(data, dict) else doc
    status, status_code = _classify(body.get("status"))
    video = _dict(body.get("video"))
    metadata = _dict(body.get("metadata"))
    url = (
        _str(video.get("url"))
        or _str(body.get("result_url"))
        or _str(body.get("artifact_url"))
        or _str(metadata.get("url"))
        or _str(body.get("url"))
    )
    err = body.get("error")
    error_code = error_message = None
    if isinstance(err, dict):
        error_code, error_message = _str(err.get("code")), _str(err.get("message"))
    elif isinstance(err, str):
        error_message = err
    error_message = error_message or _str(body.get("fail_reason"))
    if status == "failed" and not error_code:
        # The upstream's own code, when it gives one, says more than its status spelling.
        error_code = status_code or "generation_failed"
    return UpstreamVideo(
        id=_str(body.get("id")) or _str(body.get("task_id")),
        status=status,
        progress=_progress(body.get("progress"), status),
        url=url,
        error_code=error_code,
        error_message=error_message,
        width=_int(video.get("width")),
        height=_int(video.get("height")),
        duration=_int(video.get("duration")),
    )


def video_object(
    *,
    video_id: str,
    model: str,
    status: Status,
    progress: int,
    created_at: int,
    completed_at: int | None,
    expires_at: int | None,
    prompt: str | None,
    size: str,
    seconds: int,
    remixed_from: str | None,
    error: dict[str, str] | None,
    content_url: str | None,
) -> dict[str, Any]:
    """The SDK's Video object, every key present, plus the Crazyrouter page's ``video`` block
    pointing at the gateway's own content URL (never the upstream's)."""
    out: dict[str, Any] = {
        "id": video_id,
        "object": "video",
        "model": model,
        "status": status,
        "progress": 100 if status == "completed" else progress,
        "created_at": created_at,
        "completed_at": completed_at,
        "expires_at": expires_at,
        "prompt": prompt,
        "size": size,
        "seconds": str(seconds),
        "remixed_from_video_id": remixed_from,
        "error": error if status == "failed" else None,
    }
    if status == "completed" and content_url:
        w, _, h = size.partition("x")
        out["video"] = {
            "url": content_url,
            "duration": seconds,
            "width": int(w) if w.isdigit() else None,
            "height": int(h) if h.isdigit() else None,
        }
    return out
