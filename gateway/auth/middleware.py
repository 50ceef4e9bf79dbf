"""Records who is calling in the ASGI scope (the thin half; ``TokenVerifier`` decides)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.auth.api_keys import PREFIX
from gateway.auth.key_verifier import KeyVerifier
from gateway.auth.verifier import TokenVerifier
from gateway.errors import AuthenticationFailed
from gateway.web.asgi import ASGIApp, Receive, Scope, Send, header


class AuthMiddleware:
    """Requires a valid ``Authorization: Bearer`` token on every HTTP path not in public_paths:
    a JWT (``TokenVerifier``) or a gateway API key (``gwk_...``, ``KeyVerifier``).

    The principal lands in ``scope["principal"]`` and ``scope["state"]["principal"]``. A
    rejection raises a uniform 401 without calling the app; ``on_failure`` gets the reason for
    metrics. Other scope types (lifespan, websocket) pass through untouched.

    ``own_auth_prefix`` (``/console``) names one tree that authenticates by itself (the web
    console, by its session cookie): exactly that path and paths under ``prefix + "/"`` skip
    the bearer token, nothing else (``/consoles`` does not).
    """

    def __init__(
        self,
        app: ASGIApp,
        verifier: TokenVerifier,
        *,
        keys: KeyVerifier | None = None,
        public_paths: frozenset[str] = frozenset(),
        own_auth_prefix: str | None = None,
        on_failure: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.keys = keys
        self.public_paths = public_paths
        self.own_auth = own_auth_prefix
        self.own_auth_tree = None if own_auth_prefix is None else own_auth_prefix + "/"
        self.on_failure = on_failure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        if self.own_auth_tree is not None and (
            scope["path"] == self.own_auth or scope["path"].startswith(self.own_auth_tree)
        ):
            scope.pop("principal", None)  # only the tree's own check may set one
            await self.app(scope, receive, send)
            return
        try:
            value = header(scope, b"authorization") or b""
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise AuthenticationFailed("missing")
            if token.startswith(PREFIX):
                if self.keys is None:
                    raise AuthenticationFailed("key_disabled")
                principal = await self.keys.verify(token)
            else:
                principal = await self.verifier.verify(token)
        except AuthenticationFailed as exc:
            self.on_failure(exc.reason)
            raise
        scope["principal"] = principal
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)
