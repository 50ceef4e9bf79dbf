"""Bounded route labels: a raw path never becomes a metric label."""

from __future__ import annotations

_EXACT = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/moderations",
        "/v1/responses",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/images/variations",
        "/v1/audio/speech",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/videos",
        "/v1/gateway/quota",
        "/v1/gateway/usage",
    }
)
_VIDEO_SUFFIXES = ("content", "remix")


def route_label(path: str) -> str:
    if path in _EXACT:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    if path.startswith("/v1/videos/"):
        parts = path.split("/")
        if len(parts) == 4:
            return "/v1/videos/{id}"
        if len(parts) == 5 and parts[4] in _VIDEO_SUFFIXES:
            return "/v1/videos/{id}/" + parts[4]
        return "/v1/videos/other"
    if path.startswith("/admin/"):
        return "/admin"
    if path.startswith("/v1/"):
        return "/v1/other"
    return "other"
