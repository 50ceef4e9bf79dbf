"""The composition root: the one place where the gateway's parts are built and wired."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import IO

from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import __version__
from gateway.admin.api_keys import KeyAdmin, unenforced_key_scope
from gateway.admin.routes import admin_routes, team_key_routes
from gateway.admin.service import AdminService
from gateway.auth.idp import IdpClient
from gateway.auth.jwks import JWKSCache
from gateway.auth.key_store import KeyStore
from gateway.auth.key_verifier import KeyVerifier
from gateway.auth.middleware import AuthMiddleware
from gateway.auth.oidc_provider import OidcProvider
from gateway.auth.verifier import TokenVerifier
from gateway.console.identity import KeyRecheck, TokenSignIn
from gateway.console.oidc_sign_in import OidcSignIn
from gateway.console.pages import Console
from gateway.console.render import Renderer
from gateway.console.routes import BASE as CONSOLE_BASE
from gateway.console.routes import ConsoleRoutes, unconfigured_routes
from gateway.console.sessions import SessionStore
from gateway.errors import GatewayError, NotFound
from gateway.metering.prices import PriceTable
from gateway.metering.reconcile import BillReconciler, SpendByKey
from gateway.metering.refresher import PriceRefresher
from gateway.metering.report import UsageReport
from gateway.metering.routes import UsageEndpoint
from gateway.metering.service import Meter
from gateway.metering.store import MeterStore
from gateway.observability.access_log import AccessLog
from gateway.observability.errors import ErrorMiddleware
from gateway.observability.http_metrics import HttpMetricsMiddleware, ServerRefusals
from gateway.observability.metrics import Metrics
from gateway.observability.observers import Observers
from gateway.observability.request_id import RequestIdMiddleware
from gateway.proxy.limits import RequestLimitsMiddleware
from gateway.proxy.passthrough import PassThrough
from gateway.quota.middleware import RateLimitMiddleware
from gateway.quota.rate import RateLimiter
from gateway.quota.routes import QuotaEndpoint
from gateway.quota.service import QuotaService
from gateway.quota.snapshot import UsageSnapshot
from gateway.quota.store import QuotaStore
from gateway.settings import Settings, team_connections
from gateway.store.client import breaker_of, close_redis, make_redis, warm_up
from gateway.upstream.client import UpstreamClient
from gateway.upstream.health_store import RedisKeyHealthStore
from gateway.upstream.keypool import KEY_STATES, KeyPool
from gateway.upstream.routes import DEFAULT_ROUTES, RouteTable
from gateway.videos.idempotency import IdempotencyStore
from gateway.videos.reconciler import Reconciler
from gateway.videos.registry import JobRegistry
from gateway.videos.routes import video_routes
from gateway.videos.service import VideoService
from gateway.web import docs_files
from gateway.web.asgi import Receive, Scope, Send
from gateway.web.openapi import openapi_document
from gateway.web.routes import (
    ApiDocs,
    Forwarded,
    MetricsEndpoint,
    PrefixGroup,
    Readiness,
    healthz,
)

log = logging.getLogger("gateway")

# Exact paths only: the docs' few files are listed one by one, so no prefix is ever public.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", *docs_files.PATHS})
PRICING_PATH = "/api/pricing"  # new-api's public price list
PRICING_TIMEOUT_S = 15.0  # one fetch of it, start-up included (a failed one delays no more)
# A real list is a few hundred kilobytes; reading and pricing one runs beside every request.
PRICING_MAX_BYTES = 8 * 1024 * 1024
USAGE_PATH = "/api/usage/token"  # new-api: what the calling key has been billed


@dataclass(frozen=True, eq=False)
class Gateway:
    """The built gateway: an ASGI app (serve it as it is), and the parts tests reach for."""

    asgi: Starlette
    settings: Settings
    metrics: Metrics
    redis: Redis
    pool: KeyPool
    quota: QuotaService
    videos: VideoService
    reconciler: Reconciler
    prices: Callable[[], PriceTable]  # the table calls are priced with now
    # What the HTTP server answers itself (gateway/web/protocol.py) is reported here.
    refused: Callable[[GatewayError], None] = lambda exc: None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.asgi(scope, receive, send)


def create_app(
    settings: Settings,
    *,
    redis: Redis | None = None,
    metrics: Metrics | None = None,
    clock: Callable[[], float] = time.time,
    log_stream: IO[str] | None = None,
    on_started: Callable[[], None] = lambda: None,
) -> Gateway:
    """Build the gateway. ``redis`` and ``metrics`` may be passed in (tests share them);
    ``on_started`` runs once start-up is done (the server entry tunes the GC there)."""
    if settings.redis.embedded and redis is None:
        raise ValueError("redis.url is 'embedded': start it first (gateway serve --dev does)")
    metrics = metrics or Metrics(teams=settings.teams)
    videos_conf, up, q = settings.videos, settings.upstream, settings.quota
    obs = Observers(metrics, video_models={*videos_conf.models, videos_conf.resolve_model(None)})
    owns_redis = redis is None
    redis = redis or make_redis(
        settings.redis, on_error=obs.redis_error, on_breaker=obs.redis_breaker
    )
    pool = KeyPool(
        up.keys,
        RedisKeyHealthStore(redis),
        clock=clock,
        cache_seconds=up.health_cache_seconds,
        cooldown_seconds=up.cooldown_seconds,
        quarantine_seconds=up.quarantine_seconds,
        on_store_error=obs.redis_error,
    )
    metrics.watch_keys(pool.key_ids, KEY_STATES, pool.state)
    client = UpstreamClient(
        up.base_url,
        pool,
        connect_timeout=up.connect_timeout,
        read_timeout=up.read_timeout,
        max_connections=up.max_connections,
        team_connections=team_connections(up),
        trusted_networks=up.trusted_networks,
        on_response=obs.upstream,
        on_retry=obs.upstream_retry,
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
    spend_by_key = SpendByKey(redis)  # what each upstream key's calls were charged
    quota = QuotaService(
        QuotaStore(redis),
        q,
        teams=settings.teams,
        videos=videos_conf,
        clock=clock,
        on_decision=obs.quota_decision,
        on_charged=obs.video_charged,
        on_key_charged=spend_by_key.add,
        retry_hint_s=videos_conf.poll_after_ms / 1000,
        ledger_ttl_s=settings.pricing.ledger_retention_days * 86_400,
    )
    # A create's upstream call (a retry on another key and the answer included) ends within
    # this, so a reservation with no job after it, plus a grace, was left by a dead replica.
    create_timeout = up.connect_timeout + up.read_timeout
    videos = VideoService(
        client,
        JobRegistry(redis),
        videos_conf,
        teams=settings.teams,
        secrets=pool.secrets,
        clock=clock,
        quota=quota if q.enabled else None,
        idempotency=IdempotencyStore(
            redis,
            ttl_seconds=q.idempotency_seconds,
            # A create still pending this long died with its replica: the key frees itself.
            pending_seconds=create_timeout + 60,
        ),
        events=obs.video_events(),
        create_timeout=create_timeout,
    )
    reconciler = Reconciler(
        redis,
        videos,
        quota,
        videos.registry,
        interval_seconds=q.reconcile_interval_seconds,
        idle_seconds=q.reconcile_idle_seconds,
        # Longer than any create can take (the service ends one at create_timeout), so a
        # create still in flight is never taken for dead.
        orphan_seconds=max(q.reconcile_idle_seconds, create_timeout + q.orphan_grace_seconds),
        clock=clock,
        on_report=obs.reconciled,
        on_error=obs.reconciler_failed,
    )
    admin = AdminService(
        redis=redis,
        quota=quota,
        registry=videos.registry,
        pool=pool,
        settings=settings,
        clock=clock,
    )
    auth = settings.auth
    pepper = auth.api_key_pepper.encode() if auth.api_key_pepper else None
    key_store = KeyStore(redis)
    key_verifier = KeyVerifier(
        key_store,
        pepper,
        clock=clock,
        cache_seconds=auth.api_key_cache_seconds,
        cache_size=auth.cache_size,
    )
    key_admin = KeyAdmin(
        key_store,
        auth,
        digest=key_verifier.digest if key_verifier.enabled else None,
        audit=admin.audited,
        clock=clock,
        unenforced=unenforced_key_scope(
            quota=q.enabled, metering=q.enabled and settings.pricing.enabled
        ),
    )
    configured = PriceTable(settings.pricing.models)
    refresher: PriceRefresher | None = None

    def configured_only() -> PriceTable:
        return configured

    prices: Callable[[], PriceTable] = configured_only
    # Prices are read only by metering, which runs with quotas: no quotas, no list to fetch.
    if settings.pricing.source == "crazyrouter" and q.enabled and settings.pricing.enabled:

        async def fetch_prices() -> bytes:
            async with asyncio.timeout(PRICING_TIMEOUT_S):
                return await client.fetch_public(PRICING_PATH, limit=PRICING_MAX_BYTES)

        refresher = PriceRefresher(
            configured,
            fetch_prices,
            group=settings.pricing.group,
            interval_seconds=settings.pricing.refresh_seconds,
            on_result=obs.price_refresh,
        )
        prices = refresher.current

    async def fetch_usage(key_id: str) -> bytes:
        async with asyncio.timeout(PRICING_TIMEOUT_S):
            return await client.fetch_as(key_id, USAGE_PATH, limit=PRICING_MAX_BYTES)

    bill = BillReconciler(
        redis,
        spend_by_key,
        keys=lambda: pool.key_ids,
        fetch_usage=fetch_usage,
        quota_per_unit=settings.pricing.upstream_quota_per_unit,
        on_drift=obs.upstream_drift,
        on_result=obs.bill_read,
    )
    meter = Meter(
        MeterStore(redis),
        quota.policy,
        settings.pricing,
        team_models=settings.team_models,
        prices=prices,
        events=obs.meter_events(prices),
        on_key_charged=spend_by_key.add,
        rate=quota.rate,
    )
    breaker = breaker_of(redis)
    if breaker is not None:
        breaker.when_back(meter.redis_back)
    usage = UsageEndpoint(
        UsageReport(
            meter.store,
            tz=quota.policy.tz,
            currency=q.currency,
            clock=clock,
            configured_teams=settings.teams,
        )
    )
    api_docs = ApiDocs(
        openapi_document(
            version=__version__,
            admin_role=auth.admin_role,
            team_admin_role=auth.team_admin_role,
            quotas=q.enabled,
            metrics_token=bool(settings.server.metrics_token),
            video_extra_fields=videos_conf.extra_fields,
        ),
        docs_files.DocsFiles(),
    )
    token_verifier = TokenVerifier(settings.auth, jwks=jwks, clock=clock)
    oidc_conf = settings.console.oidc
    # Its own client: the IdP's timeout for sign-in is console.oidc's, not the JWKS fetch's.
    oidc_http = IdpClient(oidc_conf.timeout_seconds) if oidc_conf is not None else None
    console = _console(
        settings,
        redis=redis,
        admin=admin,
        key_admin=key_admin,
        report=usage.report,
        videos=videos,
        sign_in=TokenSignIn(token_verifier, key_verifier),
        key_check=KeyRecheck(key_store, key_verifier, clock=clock),
        clock=clock,
        on_sign_in_failure=obs.auth_failure,
        oidc_http=oidc_http,
        rate=quota.rate if q.enabled else None,
    )
    snapshot = UsageSnapshot(quota, settings.teams, settings.server.quota_metrics_seconds)
    if q.enabled:
        metrics.watch_quota(snapshot)
        metrics.budget_alert_share.set(q.budget_alert_share)

    passthrough = PassThrough(
        client,
        routes=RouteTable((*DEFAULT_ROUTES, *settings.server.extra_routes)),
        secrets=pool.secrets,
        observer=obs.streams(content=False),
        # Metering is part of the quota: a gateway without quotas charges nobody.
        meter=meter if q.enabled and settings.pricing.enabled else None,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await client.start()
        if not await warm_up(redis):
            log.warning("Redis is unreachable at start-up; quota decisions will fail until it is")
        await pool.refresh()
        if refresher is not None:
            # Before serving, so the first calls are priced; a failure only delays start-up
            # by one bounded fetch, and the refresher keeps trying.
            await refresher.refresh()
        on_started()
        background = [asyncio.create_task(reconciler.run_forever(), name="reconciler")]
        if refresher is not None:
            background.append(asyncio.create_task(refresher.run_forever(), name="prices"))
        metering = q.enabled and settings.pricing.enabled
        if metering:
            background.append(asyncio.create_task(spend_by_key.run_forever(), name="spend"))
        if metering and settings.pricing.reconcile_interval_seconds > 0:
            every = settings.pricing.reconcile_interval_seconds
            background.append(asyncio.create_task(bill.run_forever(every), name="bill"))
        if q.enabled:
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
            await videos.aclose()
            with contextlib.suppress(Exception):  # what is not flushed shows as drift
                await spend_by_key.flush()
            await client.close()
            await pool.close()
            await idp.close()
            if oidc_http is not None:
                await oidc_http.close()
            await quota.store.aclose()
            await meter.aclose()
            await meter.store.aclose()
            if owns_redis:
                await close_redis(redis)

    access_log = AccessLog(settings.server.access_log, log_stream)
    app = Starlette(
        routes=[
            Forwarded(passthrough.routes.find, passthrough),
            # Behind prefixes: a request for another route skips these with a string check.
            PrefixGroup(
                "/v1/videos",
                video_routes(
                    videos,
                    public_base_url=settings.server.public_base_url,
                    observer=obs.streams(content=True),
                ),
            ),
            PrefixGroup(
                "/admin/",
                admin_routes(
                    admin,
                    admin_role=settings.auth.admin_role,
                    usage=usage.any_team,
                    reconcile=bill.run,
                    api_keys=key_admin,
                ),
            ),
            *team_key_routes(
                key_admin, team_admin_role=auth.team_admin_role, admin_role=auth.admin_role
            ),
            Route("/v1/gateway/quota", QuotaEndpoint(quota).handle, methods=["GET"]),
            Route("/v1/gateway/usage", usage.own, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route(
                "/readyz",
                Readiness(redis, pool, fail_open=q.rate_fail_open).handle,
                methods=["GET"],
            ),
            Route(
                "/metrics",
                MetricsEndpoint(metrics, settings.server.metrics_token).handle,
                methods=["GET"],
            ),
            *api_docs.routes(),
            *console,
        ],
        middleware=[
            Middleware(RequestIdMiddleware),
            Middleware(HttpMetricsMiddleware, metrics=metrics, access_log=access_log),
            Middleware(ErrorMiddleware, on_error=obs.error),
            Middleware(
                RequestLimitsMiddleware,
                max_body_bytes=settings.server.max_body_bytes,
                max_header_bytes=settings.server.max_header_bytes,
            ),
            Middleware(
                AuthMiddleware,
                verifier=token_verifier,
                keys=key_verifier,
                public_paths=PUBLIC_PATHS,
                # The console authenticates by its own session cookie (gateway/console).
                own_auth_prefix=CONSOLE_BASE if console else None,
                on_failure=obs.auth_failure,
            ),
            *(
                [
                    Middleware(
                        RateLimitMiddleware,
                        quota=quota,
                        public_paths=PUBLIC_PATHS,
                        deferred=passthrough.meters,
                        overlapped=passthrough.forwards,
                    )
                ]
                if q.enabled
                else []
            ),
        ],
        exception_handlers={HTTPException: _raise_http_error},
        lifespan=lifespan,
    )
    app.router.default = passthrough
    refused = ServerRefusals(metrics, access_log, obs.error)
    return Gateway(app, settings, metrics, redis, pool, quota, videos, reconciler, prices, refused)


def _console(
    settings: Settings,
    *,
    redis: Redis,
    admin: AdminService,
    key_admin: KeyAdmin,
    report: UsageReport,
    videos: VideoService,
    sign_in: TokenSignIn,
    key_check: KeyRecheck,
    clock: Callable[[], float],
    on_sign_in_failure: Callable[[str], None],
    oidc_http: IdpClient | None,
    rate: RateLimiter | None,
) -> list[PrefixGroup]:
    """The web console's routes (none when it is switched off)."""
    conf = settings.console
    if not conf.enabled:
        return []
    if conf.session_secret is None:
        log.warning(
            "console.session_secret is not set (GATEWAY_CONSOLE_SECRET): /console explains "
            "this and serves nothing else"
        )
        return [PrefixGroup(CONSOLE_BASE, unconfigured_routes())]
    pages = Console(
        admin=admin,
        keys=key_admin,
        report=report,
        videos=videos,
        settings=settings,
        clock=clock,
    )
    oidc = None
    if conf.oidc is not None and oidc_http is not None:
        provider = OidcProvider(
            conf.oidc,
            settings.auth,
            oidc_http,
            redirect_url=conf.oidc.callback_url(settings.server.public_base_url),
            clock=clock,
        )
        oidc = OidcSignIn(provider, redis)
    routes = ConsoleRoutes(
        pages,
        sessions=SessionStore(redis, clock=clock),
        sign_in=sign_in,
        key_check=key_check,
        renderer=Renderer(
            currency=settings.quota.currency,
            tz=report.tz,
            clock=clock,
            alert_share=settings.quota.budget_alert_share,
        ),
        secret=conf.session_secret.encode(),
        session_hours=conf.session_hours,
        # Plain-http development only: anywhere else the cookie never crosses the wire bare.
        secure_cookies=not settings.server.public_base_url.lower().startswith("http://"),
        clock=clock,
        on_sign_in=lambda outcome: None if outcome == "ok" else on_sign_in_failure(outcome),
        oidc=oidc,
        rate=(lambda who: rate.check(who.team, who.key)) if rate is not None else None,
    )
    return [PrefixGroup(CONSOLE_BASE, routes.routes())]


async def _raise_http_error(request: Request, exc: Exception) -> Response:
    # Starlette's own 404/405: raised on as ours, for the one renderer (ErrorMiddleware).
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        raise NotFound()
    raise GatewayError(exc.detail, code="http_error", status=exc.status_code)
