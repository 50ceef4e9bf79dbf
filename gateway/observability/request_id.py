"""Give every request an id: a well-formed incoming ``x-request-id`` is kept (unless it takes
the gateway's own ``req_`` form), else one is made.

The id is stored in ``scope["request_id"]``, returned to the caller and sent upstream.
"""

from __future__ import annotations

import itertools
import os

from gateway.upstream.rewrite import valid_request_id
from gateway.web.asgi import ASGIApp, Message, Receive, Scope, Send, header

OWN_PREFIX = b"req_"


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # A random per-process prefix and a counter: unique across replicas, and far cheaper
        # than uuid4 (which cost ~3 % of the gateway's CPU). Ids are for tracing, not secrets.
        self._prefix = f"{OWN_PREFIX.decode()}{os.urandom(6).hex()}"
        self._counter = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = header(scope, b"x-request-id")
        # A caller's own id is kept for its tracing, but never one in the gateway's own form:
        # an id made here names one request of one team, in the log and upstream.
        rid = (
            incoming.decode()
            if incoming and valid_request_id(incoming) and not incoming.startswith(OWN_PREFIX)
            else None
        )
        rid = rid or f"{self._prefix}{next(self._counter):012x}"
        scope["request_id"] = rid
        raw = rid.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", raw)]
            await send(message)

        await self.app(scope, receive, send_with_id)
