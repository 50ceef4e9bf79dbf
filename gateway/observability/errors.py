"""The one place an error becomes an answer: every GatewayError raised by a middleware, a
route or the pass-through, and every unexpected exception, is rendered here in the OpenAI
shape, counted by code, and named in the access log.

It sits inside the request-id and metrics middleware, so a 500 carries ``x-request-id`` and
is counted like any other answer. Once a response has started nothing can be said any more:
the connection is cut instead, so a truncated answer is never mistaken for a whole one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.errors import AuthenticationFailed, GatewayError, QuotaExceeded, send_error
from gateway.observability.access_log import note_reason
from gateway.web.asgi import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("gateway")


def reason(exc: GatewayError) -> str:
    """What the access log says about a refusal: the kind and a bounded reason, no secrets."""
    if isinstance(exc, AuthenticationFailed):
        return f"auth: {exc.reason}"
    if isinstance(exc, QuotaExceeded):
        return "quota: " + exc.code.removesuffix("_exceeded").removesuffix("_quota").removesuffix(
            "_limit"
        )
    return exc.code


class ErrorMiddleware:
    def __init__(self, app: ASGIApp, *, on_error: Callable[[GatewayError], None]) -> None:
        self.app = app
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except GatewayError as exc:
            await self._answer(exc, started, send)
        except Exception:
            log.exception("unhandled error (request %s)", scope.get("request_id", "-"))
            await self._answer(GatewayError(), started, send)

    async def _answer(self, exc: GatewayError, started: bool, send: Send) -> None:
        self.on_error(exc)
        note_reason(reason(exc))
        if not started:
            await send_error(send, exc)
        # Started: returning without the final body message makes the server cut the connection.
