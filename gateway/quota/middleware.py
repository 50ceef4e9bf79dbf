"""Pure ASGI middleware: count every authenticated request against its team's rate limit and
put the x-ratelimit-* headers on every answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Protocol

from gateway.auth.api_keys import KeyScope
from gateway.quota.service import QuotaService
from gateway.web.asgi import ASGIApp, Message, Receive, Scope, Send

# Where an overlapped rate decision waits for the app, which must await it (``admitted``).
RATE_DECISION = "rate_decision"


class _Pending(Protocol):
    def admitted(self) -> Awaitable[list[tuple[bytes, bytes]]]: ...
    def forget(self) -> None: ...


async def admitted(scope: Scope) -> list[tuple[bytes, bytes]]:
    """Wait for this request's rate decision if it is still under way, and return the
    x-ratelimit headers its answer carries; raises QuotaExceeded (or StoreUnavailable) when
    it refuses. Called before anything leaves for the upstream."""
    pending: _Pending | None = scope.get(RATE_DECISION)
    return [] if pending is None else await pending.admitted()


def ended(scope: Scope) -> None:
    """The request is over: a decision it never awaited (its caller left first) is still
    counted in the metrics once Redis answers."""
    pending: _Pending | None = scope.get(RATE_DECISION)
    if pending is not None:
        pending.forget()


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
        # Requests served by an app that awaits the decision (``admitted``) before its first
        # side effect, puts its headers on the answer, lets a refusal outrank any error of
        # its own and calls ``ended`` when it is done (the forwarded routes): the check leaves
        # now, and the app reads and checks the body during the round trip.
        self.overlapped = overlapped

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine itself on the ways most requests take: the app's coroutine is
        # returned, and every resumption of it passes through one frame fewer.
        principal = scope.get("principal") if scope["type"] == "http" else None
        if principal is None or scope["path"] in self.public_paths or self.deferred(scope):
            return self.app(scope, receive, send)
        if self.overlapped(scope):
            check = self.quota.rate.start(principal.team, principal.key)
            scope[RATE_DECISION] = check
            if check.decided:  # e.g. Redis known down: answer before the body is read
                return self._decided(check, scope, receive, send)
            return self.app(scope, receive, send)
        return self._checked(principal.team, principal.key, scope, receive, send)

    async def _decided(self, check: _Pending, scope: Scope, receive: Receive, send: Send) -> None:
        await check.admitted()
        await self.app(scope, receive, send)

    async def _checked(
        self, team: str, key: KeyScope | None, scope: Scope, receive: Receive, send: Send
    ) -> None:
        headers = await self.quota.rate.check(team, key)
        if not headers:
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
