"""Build the shared redis-py asyncio client from settings.

This is the one place Redis failures are translated: a command or pipeline that cannot reach
Redis raises ``StoreUnavailable`` (a 503 with retry-after), and trips the client's circuit
breaker so the calls after it fail at once instead of waiting out a timeout each. So does
an answer that says Redis cannot serve writes now (READONLY after a failover, OOM, MISCONF,
BUSY, NOREPLICAS: ``store_down``). Other errors Redis answers (a script's error, a wrong type)
stay redis-py's: they are bugs.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterUnreachableError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import StoreUnavailable
from gateway.settings import RedisSettings
from gateway.store.breaker import Breaker
from gateway.store.wire import Wire

# Redis could not answer: connection, timeout, and a cluster without a reachable node or with
# its slots moving (redis-py raises those outside its ConnectionError tree).
UNREACHABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    RedisClusterUnreachableError,
    ClusterDownError,
    TryAgainError,
)
# Redis answered, but cannot do what the gateway needs of it now: a failover left this client
# on a replica (READONLY), it is at maxmemory (OOM), its last snapshot failed (MISCONF), a
# script is past its time limit (BUSY), too few replicas would take a write (NOREPLICAS). For
# the gateway that is Redis down: a 503 or fail-open by config, counted, never a 500.
_REFUSED = (ReadOnlyError, OutOfMemoryError)
_REFUSED_CODES = ("MISCONF ", "BUSY ", "NOREPLICAS ")
# What to catch, then sort with ``store_down``: any other answer (a script's own error, a
# wrong type) is a bug and stays redis-py's.
MAYBE_DOWN = (*UNREACHABLE, ResponseError)


def store_down(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis cannot serve the gateway now (unreachable or refusing)."""
    if isinstance(exc, (*UNREACHABLE, *_REFUSED)):
        return True
    if not isinstance(exc, ResponseError):
        return False
    # A pipeline's error comes as "Command # 1 (...) of pipeline caused error: MISCONF ...".
    text = str(exc).rpartition(" caused error: ")[2]
    return text.startswith(_REFUSED_CODES)


# redis-py raises this ConnectionError when its pool is busy: Redis is fine, we are loaded.
_POOL_BUSY = "No connection available."


def unreachable(breaker: Breaker, op: str, exc: BaseException) -> StoreUnavailable:
    """The StoreUnavailable for ``exc``; trips the breaker unless only our pool was busy."""
    if str(exc) != _POOL_BUSY:
        breaker.failed(op)
    return StoreUnavailable()


class GuardedRedis(Redis):
    """The single-node client: every command and pipeline goes through the breaker."""

    breaker: Breaker
    wires: list[Wire]

    def guard(self, breaker: Breaker) -> None:
        self.breaker = breaker
        self.wires = []

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.breaker.check()
        try:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except MAYBE_DOWN as exc:
            if not store_down(exc):
                raise
            raise unreachable(self.breaker, str(args[0]).lower(), exc) from exc

    async def ping_unguarded(self) -> object:
        """For the breaker's probe, which must reach Redis while the breaker is open."""
        return await super().execute_command("PING")  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = GuardedPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )
        pipe.breaker = self.breaker
        return pipe


class GuardedPipeline(Pipeline):
    breaker: Breaker

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        self.breaker.check()
        try:
            return await super().execute(raise_on_error)
        except MAYBE_DOWN as exc:
            if not store_down(exc):
                raise
            raise unreachable(self.breaker, "pipeline", exc) from exc


class GuardedClusterPipeline(ClusterPipeline):
    breaker: Breaker

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        self.breaker.check()
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except MAYBE_DOWN as exc:
            if not store_down(exc):
                raise
            raise unreachable(self.breaker, "pipeline", exc) from exc


class QueuedCluster(RedisCluster):
    """A cluster client whose commands queue (up to a timeout) for a free connection.

    The stock cluster client fails at once when a node's connections are all busy; under a
    burst that would turn into fail-open rate checks and 503s. The single-node client gets the
    same behaviour from its blocking pool."""

    _gate: asyncio.Semaphore | None = None
    _wait: float = 0.5
    breaker: Breaker
    wires: list[Wire]

    def gate(self, in_flight: int, wait: float, breaker: Breaker) -> None:
        self._gate = asyncio.Semaphore(in_flight)
        self._wait = wait
        self.breaker = breaker
        self.wires = []

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        self.breaker.check()
        assert self._gate is not None
        try:
            await asyncio.wait_for(self._gate.acquire(), self._wait)
        except TimeoutError:
            raise StoreUnavailable() from None  # our own queue is full: Redis may be fine
        try:
            return await super().execute_command(*args, **kwargs)
        except MAYBE_DOWN as exc:
            if not store_down(exc):
                raise
            raise unreachable(self.breaker, str(args[0]).lower(), exc) from exc
        finally:
            self._gate.release()

    async def ping_unguarded(self) -> object:
        return await super().execute_command("PING")

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        pipe = GuardedClusterPipeline(self, transaction)  # type: ignore[abstract]
        pipe.breaker = self.breaker
        return pipe


def make_redis(
    settings: RedisSettings,
    url: str | None = None,
    *,
    on_error: Any = lambda op: None,
    on_breaker: Any = lambda is_open: None,
) -> Redis:
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
        cluster.gate(
            settings.max_connections,
            settings.pool_timeout,
            Breaker(lambda: cluster.ping_unguarded(), on_change=on_breaker, on_error=on_error),
        )
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
    client = GuardedRedis(connection_pool=pool)
    client.guard(Breaker(lambda: client.ping_unguarded(), on_change=on_breaker, on_error=on_error))
    return client


def breaker_of(redis: Redis) -> Breaker | None:
    """The breaker of a client made by make_redis (None for a plain client tests pass in)."""
    breaker = getattr(redis, "breaker", None)
    return breaker if isinstance(breaker, Breaker) else None


async def close_redis(redis: Redis) -> None:
    for wire in getattr(redis, "wires", ()):
        await wire.aclose()
    breaker = breaker_of(redis)
    if breaker is not None:
        await breaker.close()
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
