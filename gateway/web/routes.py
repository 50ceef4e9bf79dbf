"""The gateway's own routes and routing: liveness, readiness, the Prometheus scrape, the API's
description and its viewer (``ApiDocs``), and ``PrefixGroup``, which puts a group of routes
behind one path prefix: a request outside the prefix is turned away with a single
``startswith`` instead of one regex per route. Unlike Starlette's ``Mount`` it keeps each
route's own full path and matching rules, so behaviour is exactly that of the routes.
``Forwarded`` sends a request for one of the upstream's routes straight to the pass-through."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, NoMatchFound, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import AuthenticationFailed, GatewayError, NotFound
from gateway.observability.metrics import CONTENT_TYPE, Metrics
from gateway.upstream.keypool import KeyPool
from gateway.web.docs_files import OPENAPI_PATH, PATHS, SECURITY_HEADERS, DocsFiles


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


class Readiness:
    """Ready means "this process can serve": Redis answers, or rate checks are configured to
    fail open without it. The key pool's state is not part of it: with every key cooling
    down, pulling every replica out of the load balancer would turn the gateway's clear 503
    into ingress errors; key states belong in metrics and alerts."""

    def __init__(self, redis: Redis, pool: KeyPool, *, fail_open: bool) -> None:
        self.redis = redis
        self.pool = pool
        self.fail_open = fail_open

    async def handle(self, request: Request) -> Response:
        checks: dict[str, str] = {}
        try:
            await self.redis.ping()  # fails at once while the breaker knows Redis is down
            checks["redis"] = "ok"
        except (GatewayError, RedisError):
            checks["redis"] = (
                "unreachable (rate checks fail open)" if self.fail_open else ("unreachable")
            )
        usable = self.pool.usable_count()
        checks["upstream_keys"] = f"{usable} usable" if usable else "none usable"
        ready = checks["redis"] == "ok" or self.fail_open
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": checks},
            status_code=200 if ready else 503,
        )


class MetricsEndpoint:
    def __init__(self, metrics: Metrics, token: str | None) -> None:
        self.metrics = metrics
        self.token = token.encode() if token else None

    async def handle(self, request: Request) -> Response:
        if self.token is not None:
            got = request.headers.get("authorization", "").removeprefix("Bearer ").encode()
            if not hmac.compare_digest(got, self.token):
                raise AuthenticationFailed("metrics_token")
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)


class ApiDocs:
    """``GET /openapi.json``, ``GET /docs`` and the viewer's files: public, read-only, served
    from memory with an ETag, each under the docs' strict security headers."""

    def __init__(self, document: Mapping[str, Any], files: DocsFiles) -> None:
        self.document = json.dumps(document, separators=(",", ":")).encode()
        self.files = files

    def routes(self) -> list[BaseRoute]:
        """One route per exact path: nothing else under /docs is public."""
        return [
            Route(OPENAPI_PATH, self.openapi, methods=["GET"]),
            *(Route(p, self.file, methods=["GET"]) for p in sorted(PATHS - {OPENAPI_PATH})),
        ]

    async def openapi(self, request: Request) -> Response:
        headers = {**SECURITY_HEADERS, "cache-control": "no-cache"}
        return Response(self.document, media_type="application/json", headers=headers)

    async def file(self, request: Request) -> Response:
        found = self.files.get(request.scope["path"])
        if found is None:
            raise NotFound()
        headers = {**SECURITY_HEADERS, "cache-control": "no-cache", "etag": found.etag}
        if found.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type=found.media_type, headers=headers)


class Forwarded(BaseRoute):
    """The forwarded routes (the route table's), matched first. The pass-through is also the
    router's default, for what no route matches (it answers unsupported_endpoint); reached
    that way, a chat call was first tried against every other route, twice (Starlette tries
    each path again with its trailing slash flipped): ~30 matches, ~10 us per call. No table
    route can be one of the gateway's own (``parse_route`` keeps them out of /v1/videos and
    /v1/gateway), so matching them first changes nothing else."""

    def __init__(self, find: Callable[[str, str], object | None], app: ASGIApp) -> None:
        self.find = find
        self.app = app

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and self.find(scope["method"], scope["path"]) is not None:
            return Match.FULL, {}
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)


_CHOSEN = "gateway.route"


class PrefixGroup(BaseRoute):
    def __init__(self, prefix: str, routes: Sequence[BaseRoute]) -> None:
        self.prefix = prefix
        self.routes = list(routes)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if not scope["path"].startswith(self.prefix):
            return Match.NONE, {}
        partial: tuple[BaseRoute, Scope] | None = None
        for route in self.routes:
            match, child = route.matches(scope)
            if match == Match.FULL:
                return Match.FULL, {**child, _CHOSEN: route}
            if match == Match.PARTIAL and partial is None:
                partial = (route, child)
        if partial is not None:
            return Match.PARTIAL, {**partial[1], _CHOSEN: partial[0]}
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope[_CHOSEN].handle(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        for route in self.routes:
            try:
                return route.url_path_for(name, **path_params)
            except Exception:  # noqa: S112 (NoMatchFound from this route: try the next)
                continue
        raise ValueError(name)
