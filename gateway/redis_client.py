"""Build the shared redis-py asyncio client from settings."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.settings import RedisSettings


def make_redis(settings: RedisSettings, url: str | None = None) -> Redis:
    """A client with a *blocking* pool (the default pool raises "Too many connections" under
    load) and no client-side retries: a retried quota write could charge twice."""
    pool = BlockingConnectionPool.from_url(
        url or settings.url,
        max_connections=settings.max_connections,
        timeout=settings.pool_timeout,
        socket_timeout=settings.socket_timeout,
        socket_connect_timeout=settings.connect_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    return Redis(connection_pool=pool)
