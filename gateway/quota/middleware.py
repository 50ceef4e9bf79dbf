"""Pure ASGI middleware: count every authenticated request against its team's rate limit and
put the x-ratelimit-* headers on every answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Protocol

from gateway.quota.service import QuotaService
from gateway.web.asgi import ASGIApp, Message, Receive, Scope, Send

# Where an overlapped rate decision waits for the app, which must await it (``admitted``).
RATE_DECISION = "rate_decision"


class _Pending(Protocol):
    def admitted(self) -> Awaitable[list[tuple[bytes, bytes]]]: ...


async def admitted(scope: Scope) -> list[tuple[bytes, bytes]]:
    """Wait for this request's rate decision if it is still under way, and return the
    x-ratelimit headers its answer carries; raises QuotaExceeded (or StoreUnavailable) when
    it refuses. Called before anything leaves for the upstream."""
    pending: _Pending | None = scope.get(RATE_DECISION)
    return [] if pending is None else await pending.admitted()


class RateLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        quota: QuotaService,
        public_paths: Collection[str],
        deferred: Callable[[Scope], bool] = lambda scope: False,
        overlapped: Callable[[Scope], bool] = lambda scope: False,
    ) -> None:
        self.app = app
        self.quota = quota
        self.public_paths = public_paths
        # Metered calls count their request in their own reservation (one round trip fewer).
        self.deferred = deferred
        # Requests whose app awaits the decision (``admitted``) before its first side effect
        # and puts its headers on the answer (the forwarded routes): the check leaves now,
        # and the app reads and checks the body during the round trip.
        self.overlapped = overlapped

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope.get("principal") if scope["type"] == "http" else None
        if principal is None or scope["path"] in self.public_paths or self.deferred(scope):
            await self.app(scope, receive, send)
            return
        if self.overlapped(scope):
            # Inline rather than a helper coroutine: every resumption of the app passes
            # through each coroutine frame above it.
            check = self.quota.rate.start(principal.team, principal.key)
            if check.decided:  # e.g. Redis known down: answer before the body is read
                await check.admitted()
            scope[RATE_DECISION] = check
            try:
                # No wrapped send: the app answers only after ``admitted``, with its headers.
                await self.app(scope, receive, send)
            except Exception:
                # A refusal outranks whatever the app found wrong after it, exactly as when
                # the check ran first: the caller is told 429, not 400.
                await check.admitted()
                raise
            finally:
                check.forget()
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
