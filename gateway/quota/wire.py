"""A dedicated Redis connection for batched script calls: each batch is written at once and
its replies read in order, with no pool checkout, no per-reply timeout context and no response
callbacks. This is the hot path of every request (the rate check), so it is kept small and
separate; everything else goes through redis-py.

Only RESP2 replies a script can give are parsed (status, error, integer, bulk, array). Any
failure closes the connection (replies could be misaligned) and surfaces as redis-py's own
ConnectionError/TimeoutError, so callers handle it exactly like any other Redis failure.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def encode(command: Sequence[Any]) -> bytes:
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class Wire:
    """Pipelined: a batch is written as soon as it is ready, without waiting for the replies
    to earlier batches; one reader task hands replies to waiting callers in order."""

    def __init__(
        self,
        *,
        host: str | None = None,
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float | None = 0.5,
        timeout: float | None = 0.5,
    ) -> None:
        self.host, self.port, self.path, self.db = host, port, path, db
        self.username, self.password = username, password
        self.connect_timeout, self.timeout = connect_timeout, timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._reading: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()

    async def _connect(self) -> None:
        if self.path:
            opening = asyncio.open_unix_connection(self.path)
        else:
            opening = asyncio.open_connection(self.host, self.port)
        self._reader, self._writer = await asyncio.wait_for(opening, self.connect_timeout)
        self._reading = asyncio.get_running_loop().create_task(self._read_replies())
        hello: list[Sequence[Any]] = []
        if self.password:
            auth = ("AUTH", self.username, self.password) if self.username else None
            hello.append(auth or ("AUTH", self.password))
        if self.db:
            hello.append(("SELECT", self.db))
        if hello:
            for reply in await self._send(hello):
                if isinstance(reply, Exception):
                    raise RedisConnectionError(f"Redis refused the connection setup: {reply}")

    def close(self, error: BaseException | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reading is not None and self._reading is not asyncio.current_task():
            self._reading.cancel()
        self._reader = self._writer = self._reading = None
        # Whatever was sent and not answered can never be matched to a reply now.
        failure = error or RedisConnectionError("Redis connection closed")
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(failure)

    async def aclose(self) -> None:
        writer, reading = self._writer, self._reading
        self.close()
        if reading is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        if writer is not None:
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _stale(self) -> bool:
        # A server that closed the idle connection (a restart, a timeout) has left EOF behind:
        # reconnect before sending anything, which is always safe.
        return (
            self._writer is None
            or self._reader is None
            or self._reader.at_eof()
            or self._writer.is_closing()
        )

    async def call(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send ``commands`` and return their replies (a script's error reply as an exception
        object in its place)."""
        if self._stale():
            async with self._connecting:
                if self._stale():
                    self.close()
                    try:
                        await self._connect()
                    except (OSError, TimeoutError) as exc:
                        self.close()
                        raise RedisConnectionError(f"Redis connection failed: {exc}") from None
        try:
            return await asyncio.wait_for(self._send(commands), self.timeout)
        except TimeoutError:
            self.close(RedisTimeoutError("Timeout talking to Redis"))
            raise RedisTimeoutError("Timeout talking to Redis") from None

    async def _send(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        if self._writer is None:
            raise RedisConnectionError("Redis connection closed")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self._waiting.extend(futures)
        self._writer.write(b"".join(encode(c) for c in commands))
        return [await f for f in futures]

    async def _read_replies(self) -> None:
        try:
            while True:
                reply = await self._reply()
                fut = self._waiting.popleft()
                if not fut.done():
                    fut.set_result(reply)
        except asyncio.CancelledError:
            raise
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            self.close(RedisConnectionError(f"Redis connection failed: {exc!r}"))

    async def _reply(self) -> Any:
        assert self._reader is not None
        line = await self._reader.readuntil(b"\r\n")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body
        if kind == b"-":
            text = body.decode(errors="replace")
            return NoScriptError(text) if text.startswith("NOSCRIPT") else ResponseError(text)
        if kind == b":":
            return int(body)
        if kind == b"$":
            size = int(body)
            if size < 0:
                return None
            data = await self._reader.readexactly(size + 2)
            return data[:-2]
        if kind == b"*":
            count = int(body)
            return None if count < 0 else [await self._reply() for _ in range(count)]
        raise ValueError(f"unexpected Redis reply {line[:20]!r}")


def wire_for(redis: Any) -> Wire | None:
    """A Wire to the same server as a single-node redis-py client, or None (TLS, cluster)."""
    pool = getattr(redis, "connection_pool", None)
    if pool is None:
        return None
    kw = pool.connection_kwargs
    kind = pool.connection_class.__name__
    if kind not in ("Connection", "UnixDomainSocketConnection"):
        return None  # TLS and anything unusual stay on redis-py
    wire = Wire(
        host=kw.get("host"),
        port=int(kw.get("port") or 6379),
        path=kw.get("path") if kind == "UnixDomainSocketConnection" else None,
        db=int(kw.get("db") or 0),
        username=kw.get("username"),
        password=kw.get("password"),
        connect_timeout=kw.get("socket_connect_timeout"),
        timeout=kw.get("socket_timeout"),
    )
    # Closed with the client (gateway.redis_client.close_redis), which owns the server address.
    wires = getattr(redis, WIRES, None)
    if wires is None:
        wires = []
        setattr(redis, WIRES, wires)
    wires.append(wire)
    return wire


WIRES = "_gateway_wires"
