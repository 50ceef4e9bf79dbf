"""Request size limits and framing checks, before anything else looks at a request.

A path with encoded slashes, dot segments or control characters answers 400 ``invalid_path``
before routing, for every route. Headers over the limit answer 431, a body over the limit 413
(up front from Content-Length, or as soon as a chunked body crosses it), and a request carrying
both Content-Length and Transfer-Encoding 400: that ambiguity is how request smuggling starts.
So is a request with two Host headers (400), and one with two Content-Type headers (400): the
gateway reads a body by the first, and the upstream would be sent the last.
"""

from __future__ import annotations

from gateway.errors import HeadersTooLarge, InvalidRequest, PayloadTooLarge
from gateway.upstream import rewrite
from gateway.web.asgi import ASGIApp, Message, Receive, Scope, Send

# Marks of a path worth validating in full (encoded bytes, dot or empty segments, backslash);
# a plain path costs four substring checks.
_SUSPECT = (b"%", b"/.", b"//", b"\\")


class RequestLimitsMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.max_headers = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self._check(scope)
        limit = self.max_body
        seen = 0

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge()
            return message

        await self.app(scope, counted_receive, send)

    def _check(self, scope: Scope) -> None:
        raw = scope.get("raw_path")
        if raw and any(mark in raw for mark in _SUSPECT):
            # The router sees the decoded path: "video_x%2Fcontent" would match the content
            # route. Every route, the gateway's own included, gets the pass-through's rules.
            rewrite.upstream_path(raw)
        size = 0
        length: bytes | None = None
        chunked = False
        hosts = types = 0
        for k, v in scope["headers"]:
            size += len(k) + len(v) + 4
            if k == b"content-length":
                if length is not None and length != v:
                    raise InvalidRequest(
                        "Conflicting Content-Length headers.", code="invalid_request"
                    )
                length = v
            elif k == b"transfer-encoding":
                chunked = True
            elif k == b"host":
                hosts += 1
            elif k == b"content-type":
                types += 1
        if size > self.max_headers:
            raise HeadersTooLarge()
        if hosts > 1:
            # A proxy in front may have routed on the other one (RFC 9112 section 3.2: 400).
            raise InvalidRequest("Duplicate Host headers.", code="invalid_request")
        if types > 1:
            raise InvalidRequest("Duplicate Content-Type headers.", code="invalid_request")
        if length is not None and chunked:
            raise InvalidRequest(
                "Content-Length and Transfer-Encoding must not be combined.",
                code="invalid_request",
            )
        if length is not None:
            if not length.isdigit():
                raise InvalidRequest("Invalid Content-Length.", code="invalid_request")
            if int(length) > self.max_body:
                raise PayloadTooLarge()
