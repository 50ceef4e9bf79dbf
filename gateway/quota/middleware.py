"""Pure ASGI middleware: count every authenticated request against its team's rate limit and
put the x-ratelimit-* headers on every answer."""

from __future__ import annotations

from collections.abc import Callable, Collection

from gateway.quota.service import QuotaService
from gateway.web.asgi import ASGIApp, Message, Receive, Scope, Send


class RateLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        quota: QuotaService,
        public_paths: Collection[str],
        deferred: Callable[[Scope], bool] = lambda scope: False,
    ) -> None:
        self.app = app
        self.quota = quota
        self.public_paths = public_paths
        # Metered calls count their request in their own reservation (one round trip fewer).
        self.deferred = deferred

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope.get("principal") if scope["type"] == "http" else None
        if principal is None or scope["path"] in self.public_paths or self.deferred(scope):
            await self.app(scope, receive, send)
            return
        headers = await self.quota.rate.check(principal.team, principal.key)
        if not headers:
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
