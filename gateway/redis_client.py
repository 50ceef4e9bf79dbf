"""Build the shared redis-py asyncio client from settings."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from gateway.settings import RedisSettings


class QueuedCluster(RedisCluster):
    """A cluster client whose commands queue (up to a timeout) for a free connection.

    The stock cluster client fails at once when a node's connections are all busy; under a
    burst that would turn into fail-open rate checks and 503s. The single-node client gets the
    same behaviour from its blocking pool."""

    _gate: asyncio.Semaphore | None = None
    _wait: float = 0.5

    def gate(self, in_flight: int, wait: float) -> None:
        self._gate = asyncio.Semaphore(in_flight)
        self._wait = wait

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._gate is None:
            return await super().execute_command(*args, **kwargs)
        try:
            await asyncio.wait_for(self._gate.acquire(), self._wait)
        except TimeoutError:
            raise RedisConnectionError("no free Redis connection in time") from None
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            self._gate.release()


def make_redis(settings: RedisSettings, url: str | None = None) -> Redis:
    """A client with a *blocking* pool (the default pool raises "Too many connections" under
    load) and no client-side retries: a retried quota write could charge twice.

    With ``cluster``, a cluster client (every multi-key operation the gateway runs keeps its
    keys in one hash slot). It is typed as ``Redis``: the gateway only uses commands both
    clients share, which the cluster tests exercise."""
    if settings.cluster:
        cluster = cast(
            QueuedCluster,
            QueuedCluster.from_url(
                url or settings.url,
                max_connections=settings.max_connections,
                socket_timeout=settings.socket_timeout,
                socket_connect_timeout=settings.connect_timeout,
                retry=Retry(NoBackoff(), 0),
            ),
        )
        cluster.gate(settings.max_connections, settings.pool_timeout)
        return cast(Redis, cluster)
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


async def close_wires(redis: Redis) -> None:
    """Close the dedicated connections made for this client (gateway.quota.wire)."""
    for wire in getattr(redis, "_gateway_wires", ()):
        await wire.aclose()


async def close_redis(redis: Redis) -> None:
    await close_wires(redis)
    await redis.aclose()
    # A pool passed in explicitly is not closed by aclose(); a cluster client has none.
    pool = getattr(redis, "connection_pool", None)
    if pool is not None:
        await pool.disconnect()


async def warm_up(redis: Redis) -> bool:
    """Learn a cluster's topology before traffic arrives: hundreds of first commands racing
    to do it fail (and redis-py's concurrent initialisation is not safe). False if Redis is
    unreachable; the gateway still starts, and /readyz says so."""
    client: object = redis  # typed as Redis, may be a cluster client (see make_redis)
    if not isinstance(client, RedisCluster):
        return True
    try:
        await client.initialize()
    except (RedisError, OSError):
        return False
    return True
