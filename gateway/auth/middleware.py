"""Records who is calling in the ASGI scope (the thin half; ``TokenVerifier`` decides)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.asgi import ASGIApp, Receive, Scope, Send, header
from gateway.auth.verifier import TokenVerifier
from gateway.errors import AuthenticationFailed, send_error


class AuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        verifier: TokenVerifier,
        *,
        public_paths: frozenset[str] = frozenset(),
        on_failure: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.public_paths = public_paths
        self.on_failure = on_failure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        try:
            value = header(scope, b"authorization")
            scheme, _, token = (value or b"").decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthenticationFailed("missing")
            principal = await self.verifier.verify(token.strip())
        except AuthenticationFailed as exc:
            self.on_failure(exc.reason)
            await send_error(send, exc)
            return
        scope["principal"] = principal
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
