"""The routes the gateway forwards to the upstream, and nothing else (pure).

Every forwarded route spends money on the shared upstream account or reads from it, so each
must be known: stateless OpenAI routes are listed here, the video routes are the gateway's
own, and anything else — new-api's native task routes (``/v1/video/generations``, Midjourney,
Suno, Kling), and object routes whose ids belong to the whole upstream account
(``/v1/files/{id}``, ``/v1/batches``, ``/v1/responses/{id}``, stored chat completions) — is
``404 unsupported_endpoint`` before anything is sent. An operator can add routes in config
(``server.extra_routes``), accepting what they reveal; each call on one is metered at the
``per_request`` price of the model its JSON body names (``-`` when it names none).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.errors import NotFound
from gateway.metering import kinds

# How a forwarded JSON body is checked before it leaves (gateway.proxy.body_policy).
PLAIN, CHAT, RESPONSES = "plain", "chat", "responses"


@dataclass(frozen=True, slots=True)
class RouteRule:
    method: str
    template: str  # "/v1/models/{model}": a {name} segment matches any one segment
    body: str = PLAIN
    # How a call is metered (gateway.metering.kinds); FREE spends nothing.
    meter: str = kinds.REQUEST


DEFAULT_ROUTES: tuple[RouteRule, ...] = (
    RouteRule("POST", "/v1/chat/completions", CHAT, kinds.CHAT),
    RouteRule("POST", "/v1/completions", meter=kinds.COMPLETIONS),
    RouteRule("POST", "/v1/embeddings", meter=kinds.EMBEDDINGS),
    RouteRule("POST", "/v1/moderations", meter=kinds.MODERATIONS),
    RouteRule("POST", "/v1/images/generations", meter=kinds.IMAGES),
    RouteRule("POST", "/v1/images/edits", meter=kinds.IMAGE_UPLOAD),
    RouteRule("POST", "/v1/images/variations", meter=kinds.IMAGE_UPLOAD),
    RouteRule("POST", "/v1/audio/speech", meter=kinds.SPEECH),
    RouteRule("POST", "/v1/audio/transcriptions", meter=kinds.TRANSCRIPTION),
    RouteRule("POST", "/v1/audio/translations", meter=kinds.TRANSCRIPTION),
    RouteRule("GET", "/v1/models", meter=kinds.FREE),
    RouteRule("GET", "/v1/models/{model}", meter=kinds.FREE),
    RouteRule("POST", "/v1/responses", RESPONSES, kinds.RESPONSES),
)


def unsupported() -> NotFound:
    return NotFound("The gateway does not support this endpoint.", code="unsupported_endpoint")


def parse_route(spec: str) -> RouteRule:
    """``"POST /v1/foo/{id}"`` from config; raises ValueError with the reason."""
    method, _, path = spec.strip().partition(" ")
    path = path.strip()
    if method not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        raise ValueError(f"{spec!r}: want 'METHOD /v1/path'")
    if not path.startswith("/v1/") or path.endswith("/") or "//" in path:
        raise ValueError(f"{spec!r}: the path must start with /v1/ and have no empty segment")
    for seg in path[1:].split("/"):
        if seg in (".", "..") or ("{" in seg and not (seg.startswith("{") and seg.endswith("}"))):
            raise ValueError(f"{spec!r}: bad segment {seg!r}")
    # /v1/videos and /v1/gateway are served by the gateway itself, whose routes are matched
    # first: a table route that fits a path there would decide how the request is counted (a
    # forwarded route's rate decision is awaited by the passthrough alone) without ever
    # serving it. So neither tree, nor a {name} that could stand for either, may be named.
    first = path.split("/")[2]
    if first in _OWN_TREES or first.startswith("{"):
        raise ValueError(
            f"{spec!r}: /v1/videos and /v1/gateway are served by the gateway itself; name the "
            "route's first segment after /v1/ literally"
        )
    return RouteRule(method, path)


_OWN_TREES = ("videos", "gateway")


class RouteTable:
    def __init__(self, rules: Iterable[RouteRule]) -> None:
        self._exact: dict[tuple[str, str], RouteRule] = {}
        self._templates: list[tuple[RouteRule, tuple[str, ...]]] = []
        for rule in rules:
            if "{" in rule.template:
                self._templates.append((rule, tuple(rule.template[1:].split("/"))))
            else:
                self._exact[(rule.method, rule.template)] = rule

    def match(self, method: str, path: str) -> RouteRule:
        """The rule for a validated, decoded path; ``unsupported_endpoint`` for anything else."""
        rule = self.find(method, path)
        if rule is None:
            raise unsupported()
        return rule

    def find(self, method: str, path: str) -> RouteRule | None:
        """The rule for a validated, decoded path, if the table has one."""
        rule = self._exact.get((method, path))
        if rule is not None:
            return rule
        if self._templates:
            segments = path[1:].split("/")
            for rule, pattern in self._templates:
                if rule.method == method and _fits(pattern, segments):
                    return rule
        return None


def _fits(pattern: tuple[str, ...], segments: list[str]) -> bool:
    return len(pattern) == len(segments) and all(
        p == s or p.startswith("{") for p, s in zip(pattern, segments, strict=True)
    )
