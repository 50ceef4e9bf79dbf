"""Operational endpoints: liveness, readiness and the Prometheus scrape."""

from __future__ import annotations

import hmac

from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.errors import AuthenticationFailed
from gateway.observability.metrics import CONTENT_TYPE, Metrics
from gateway.upstream.keypool import KeyPool


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


class Readiness:
    """Ready when Redis answers and at least one upstream key is usable."""

    def __init__(self, redis: Redis, pool: KeyPool, metrics: Metrics) -> None:
        self.redis = redis
        self.pool = pool
        self.metrics = metrics

    async def handle(self, request: Request) -> Response:
        checks: dict[str, str] = {}
        try:
            await self.redis.ping()
            checks["redis"] = "ok"
        except Exception:
            self.metrics.redis_errors.labels("ping").inc()
            checks["redis"] = "unreachable"
        usable = self.pool.usable_count()
        checks["upstream_keys"] = f"{usable} usable" if usable else "none usable"
        ready = checks["redis"] == "ok" and usable > 0
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
