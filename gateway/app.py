"""The composition root: the one place where the gateway's parts are built and wired."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import IO

from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.admin.routes import admin_routes
from gateway.admin.service import AdminService
from gateway.auth.idp import IdpClient
from gateway.auth.jwks import JWKSCache
from gateway.auth.middleware import AuthMiddleware
from gateway.auth.verifier import TokenVerifier
from gateway.errors import GatewayError, NotFound
from gateway.observability.access_log import AccessLog, note_quota, note_upstream
from gateway.observability.errors import ErrorMiddleware
from gateway.observability.http_metrics import HttpMetricsMiddleware
from gateway.observability.metrics import Metrics
from gateway.observability.request_id import RequestIdMiddleware
from gateway.observability.streams import StreamMetrics
from gateway.proxy.limits import RequestLimitsMiddleware
from gateway.proxy.passthrough import PassThrough
from gateway.quota.middleware import RateLimitMiddleware
from gateway.quota.routes import QuotaEndpoint
from gateway.quota.service import QuotaService
from gateway.quota.snapshot import UsageSnapshot
from gateway.quota.store import QuotaStore
from gateway.settings import Settings
from gateway.store.client import close_redis, make_redis, warm_up
from gateway.upstream.client import UpstreamClient
from gateway.upstream.health_store import RedisKeyHealthStore
from gateway.upstream.keypool import KEY_STATES, KeyPool
from gateway.upstream.routes import DEFAULT_ROUTES, RouteTable
from gateway.videos.events import VideoEvents
from gateway.videos.idempotency import IdempotencyStore
from gateway.videos.reconciler import Reconciler, Report
from gateway.videos.registry import JobRegistry
from gateway.videos.routes import video_routes
from gateway.videos.service import VideoService
from gateway.web.asgi import Scope
from gateway.web.routes import MetricsEndpoint, PrefixGroup, Readiness, healthz

log = logging.getLogger("gateway")

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
GC_THRESHOLDS = (20_000, 20, 100)


def create_app(
    settings: Settings,
    *,
    redis: Redis | None = None,
    metrics: Metrics | None = None,
    clock: Callable[[], float] = time.time,
    log_stream: IO[str] | None = None,
) -> Starlette:
    """Build the gateway. ``redis`` and ``metrics`` may be passed in (tests share them)."""
    if settings.redis.embedded and redis is None:
        raise ValueError("redis.url is 'embedded': start it first (gateway serve --dev does)")
    metrics = metrics or Metrics(teams=settings.teams)
    owns_redis = redis is None
    redis = redis or make_redis(
        settings.redis,
        on_error=lambda op: metrics.redis_errors.labels(op).inc(),
        on_breaker=lambda is_open: metrics.redis_breaker_open.set(1 if is_open else 0),
    )
    up = settings.upstream
    pool = KeyPool(
        up.keys,
        RedisKeyHealthStore(redis),
        clock=clock,
        cache_seconds=up.health_cache_seconds,
        cooldown_seconds=up.cooldown_seconds,
        quarantine_seconds=up.quarantine_seconds,
        on_store_error=lambda op: metrics.redis_errors.labels(op).inc(),
    )
    metrics.watch_keys(pool.key_ids, KEY_STATES, pool.state)

    def observe_upstream(key: str, route: str, status: int, seconds: float) -> None:
        metrics.upstream_requests.labels(key, route, str(status)).inc()
        metrics.upstream_duration.labels(route).observe(seconds)
        note_upstream(key, status)

    def on_quota_decision(team: str, kind: str, result: str) -> None:
        metrics.quota_decisions.labels(metrics.team_label(team), kind, result).inc()
        note_quota(result)

    known_models = set(settings.videos.models) | {settings.videos.resolve_model(None)}

    def video_created(team: str, model: str, seconds: int, spend: float) -> None:
        labels = (metrics.team_label(team), metrics.model_label(model, known_models))
        metrics.video_jobs_created.labels(*labels).inc()
        metrics.video_seconds.labels(*labels).inc(seconds)
        metrics.video_spend.labels(*labels).inc(spend)

    def video_finished(team: str, model: str, status: str, seconds: float) -> None:
        name = metrics.model_label(model, known_models)
        metrics.video_jobs_finished.labels(metrics.team_label(team), name, status).inc()
        metrics.video_job_duration.labels(name).observe(seconds)

    def stream_observer(content: bool) -> Callable[[Scope], StreamMetrics]:
        def make(scope: Scope) -> StreamMetrics:
            principal = scope.get("principal")
            return StreamMetrics(metrics, principal.team if principal else None, content=content)

        return make

    client = UpstreamClient(
        up.base_url,
        pool,
        connect_timeout=up.connect_timeout,
        read_timeout=up.read_timeout,
        max_connections=up.max_connections,
        trusted_networks=up.trusted_networks,
        on_response=observe_upstream,
        on_retry=lambda reason: metrics.upstream_retries.labels(reason).inc(),
    )
    idp = IdpClient(settings.auth.jwks_timeout)
    jwks = None
    if settings.auth.jwks_url:
        jwks = JWKSCache(
            settings.auth.jwks_url,
            idp.fetch,
            cache_seconds=settings.auth.jwks_cache_seconds,
            refetch_cooldown=settings.auth.jwks_refetch_cooldown,
            clock=time.monotonic,
        )
    verifier = TokenVerifier(settings.auth, jwks=jwks, clock=clock)
    quota = QuotaService(
        QuotaStore(redis),
        settings.quota,
        teams=settings.teams,
        videos=settings.videos,
        clock=clock,
        on_decision=on_quota_decision,
        retry_hint_s=settings.videos.poll_after_ms / 1000,
    )
    videos = VideoService(
        client,
        JobRegistry(redis),
        settings.videos,
        teams=settings.teams,
        secrets=pool.secrets,
        clock=clock,
        quota=quota if settings.quota.enabled else None,
        idempotency=IdempotencyStore(
            redis,
            ttl_seconds=settings.quota.idempotency_seconds,
            # A create still pending this long died with its replica: the key frees itself.
            pending_seconds=up.connect_timeout + up.read_timeout + 60,
        ),
        events=VideoEvents(created=video_created, finished=video_finished),
    )

    def on_reconciled(report: Report) -> None:
        metrics.reconciler_runs.labels("ok").inc()
        metrics.reconciler_last_run.set(time.time())
        metrics.reconciler_lag.set(report.lag_seconds)
        for kind, n in report.drift.items():
            metrics.quota_drift.labels(kind).inc(n)

    q = settings.quota
    reconciler = Reconciler(
        redis,
        videos,
        quota,
        videos.registry,
        interval_seconds=q.reconcile_interval_seconds,
        idle_seconds=q.reconcile_idle_seconds,
        # Longer than any create can take, so a create still in flight is never taken for dead.
        orphan_seconds=max(
            q.reconcile_idle_seconds,
            up.connect_timeout + up.read_timeout + q.orphan_grace_seconds,
        ),
        clock=clock,
        on_report=on_reconciled,
        on_error=lambda: metrics.reconciler_runs.labels("error").inc(),
    )
    admin = AdminService(
        redis=redis,
        quota=quota,
        registry=videos.registry,
        pool=pool,
        settings=settings,
        clock=clock,
    )
    passthrough = PassThrough(
        client,
        routes=RouteTable((*DEFAULT_ROUTES, *settings.server.extra_routes)),
        secrets=pool.secrets,
        observer=stream_observer(content=False),
    )
    snapshot = UsageSnapshot(quota, settings.teams, settings.server.quota_metrics_seconds)
    if settings.quota.enabled:
        metrics.watch_quota(snapshot)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await client.start()
        if not await warm_up(redis):
            log.warning("Redis is unreachable at start-up; quota decisions will fail until it is")
        await pool.refresh()
        # Move everything built at start-up out of the collector's sight: measured under load,
        # full collections rescanned ~93k long-lived objects, pausing the loop ~27 ms each
        # (most of the p99 at 32 connections); frozen, they take ~1 ms.
        gc.collect()
        gc.freeze()
        # Fewer, larger young collections and rare full ones: with 400 open streams, the
        # default thresholds paused the loop often enough to add ~30 ms to the p99 gap between
        # events; these keep it under 10 ms (README "Benchmarks"). Cycles are still collected.
        gc.set_threshold(*GC_THRESHOLDS)
        background = [asyncio.create_task(reconciler.run_forever(), name="reconciler")]
        if settings.quota.enabled:
            background.append(asyncio.create_task(snapshot.run_forever(), name="quota-metrics"))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await reconciler.resign()
            await client.close()
            await pool.close()
            await idp.close()
            await quota.store.aclose()
            if owns_redis:
                await close_redis(redis)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        # Starlette's own 404/405: raised on as ours, for the one renderer (ErrorMiddleware).
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            raise NotFound()
        raise GatewayError(exc.detail, code="http_error", status=exc.status_code)

    def on_error(exc: GatewayError) -> None:
        metrics.errors.labels(metrics.error_code_label(exc.code)).inc()

    app = Starlette(
        routes=[
            # Behind prefixes: a chat request skips these routes with two string checks.
            PrefixGroup(
                "/v1/videos",
                video_routes(
                    videos,
                    public_base_url=settings.server.public_base_url,
                    observer=stream_observer(content=True),
                ),
            ),
            PrefixGroup("/admin/", admin_routes(admin, admin_role=settings.auth.admin_role)),
            Route("/v1/gateway/quota", QuotaEndpoint(quota).handle, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route(
                "/readyz",
                Readiness(redis, pool, fail_open=settings.quota.rate_fail_open).handle,
                methods=["GET"],
            ),
            Route(
                "/metrics",
                MetricsEndpoint(metrics, settings.server.metrics_token).handle,
                methods=["GET"],
            ),
        ],
        middleware=[
            Middleware(RequestIdMiddleware),
            Middleware(
                HttpMetricsMiddleware,
                metrics=metrics,
                access_log=AccessLog(settings.server.access_log, log_stream),
            ),
            Middleware(ErrorMiddleware, on_error=on_error),
            Middleware(
                RequestLimitsMiddleware,
                max_body_bytes=settings.server.max_body_bytes,
                max_header_bytes=settings.server.max_header_bytes,
            ),
            Middleware(
                AuthMiddleware,
                verifier=verifier,
                public_paths=PUBLIC_PATHS,
                on_failure=lambda reason: metrics.auth_failures.labels(reason).inc(),
            ),
            *(
                [Middleware(RateLimitMiddleware, quota=quota, public_paths=PUBLIC_PATHS)]
                if settings.quota.enabled
                else []
            ),
        ],
        exception_handlers={HTTPException: on_http_error},
        lifespan=lifespan,
    )
    app.router.default = passthrough
    app.state.pool = pool
    app.state.metrics = metrics
    app.state.redis = redis
    app.state.videos = videos
    app.state.quota = quota
    app.state.reconciler = reconciler
    app.state.settings = settings
    return app
