"""Headers every Crazyrouter answer carries, some of which the gateway must never pass on."""

from __future__ import annotations

import secrets
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_REPLACED = {b"server", b"set-cookie", b"x-powered-by", b"x-oneapi-request-id"}


def upstream_headers() -> list[tuple[bytes, bytes]]:
    request_id = time.strftime("%Y%m%d%H%M%S", time.gmtime()) + secrets.token_hex(8)
    return [
        (b"x-oneapi-request-id", request_id.encode()),
        (b"server", b"crazyrouter-sim"),
        (b"set-cookie", b"sim_session=abc; Path=/"),
        (b"x-powered-by", b"new-api"),
    ]


class UpstreamHeaders:
    """Adds them at the ASGI level, so that even the framework's own 404/405/500 carry them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [h for h in message.get("headers", []) if h[0].lower() not in _REPLACED]
                message = {**message, "headers": kept + upstream_headers()}
            await send(message)

        await self.app(scope, receive, send_with_headers)
