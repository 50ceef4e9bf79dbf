"""A dedicated, pipelined Redis connection for the rate check: the hot path of every request.

Commands are written the moment they are handed over, without waiting for the replies to
earlier ones, and replies are parsed in ``data_received`` and handed to their callers'
callbacks right there. No reader task, no ``wait_for`` task, no pool checkout: measured on
the pure-Python event loop at one connection, every loop turn a check spends costs ~25 µs
of the gateway's CPU, and the stream-and-task version took eight of them per check (the
protocol takes one: the caller resuming).

Only RESP2 replies a script can give are parsed (status, error, integer, bulk, array). Any
failure closes the connection (replies could be misaligned) and every waiting caller gets
redis-py's own ConnectionError/TimeoutError, so callers treat it like any other Redis
failure. A command's timeout runs from when it was written.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

Reply = Callable[[Any], None]  # called once with the reply, an error reply, or the failure


_TEXT = frozenset((str, int))  # what encode_args may write as text


def encode(command: Sequence[Any]) -> bytes:
    return b"*%d\r\n" % len(command) + encode_args(command)


def encode_args(args: Sequence[Any]) -> bytes:
    """The bulk strings of ``args``, without the array header."""
    if _TEXT.issuperset(map(type, args)):
        # Built as text and encoded once, cheaper than bytes formatting per argument (a
        # metered reservation's ~35: 14.5 -> 12.3 us). A length counts characters here, which
        # are bytes only in ASCII: anything else takes the general way.
        text = "".join([f"${len(s)}\r\n{s}\r\n" for s in map(str, args)])
        if text.isascii():
            return text.encode()
    parts = []
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def bulk(value: int) -> bytes:
    """One integer argument as a bulk string: ``encode_args((value,))`` without its checks,
    for the amounts a metered call sends one by one."""
    text = str(value)
    return f"${len(text)}\r\n{text}\r\n".encode()


class Runs:
    """Runs of script arguments that repeat from call to call (a team's configured limits,
    the day, the tag), each encoded once and found again by its values: encoding costs a
    metered reservation more than building its arguments does.

    Callers pass ``str`` and ``int`` only: a ``bool`` or ``float`` equal to a kept ``int`` would
    be found as it (``True`` as ``1``), so none is ever kept."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._runs: dict[tuple[str | int, ...], bytes] = {}

    def __call__(self, values: tuple[str | int, ...]) -> bytes:
        data = self._runs.get(values)
        if data is None:
            data = encode_args(values)
            if _TEXT.issuperset(map(type, values)):
                if len(self._runs) >= self._size:  # values come from credentials: bounded
                    self._runs.clear()
                self._runs[values] = data
        return data


class _Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


def parse(buf: bytes | bytearray, pos: int = 0) -> tuple[Any, int]:
    """One RESP2 reply from ``buf`` at ``pos``: (value, position after it)."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, body = buf[pos : pos + 1], bytes(buf[pos + 1 : end])
    pos = end + 2
    if kind == b"+":
        return body, pos
    if kind == b"-":
        # redis-py's own mapping: LOADING, NOAUTH, max clients... are ConnectionErrors (Redis
        # cannot serve now), NOSCRIPT a NoScriptError, the rest ResponseErrors.
        return BaseParser.parse_error(body.decode(errors="replace")), pos  # type: ignore[no-untyped-call]
    if kind == b":":
        return int(body), pos
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise _Incomplete
        return bytes(buf[pos : pos + size]), pos + size + 2
    if kind == b"*":
        count = int(body)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = parse(buf, pos)
            items.append(item)
        return items, pos
    raise ValueError(f"unexpected Redis reply {bytes(buf[pos - 2 : pos + 18])!r}")


class _Connection(asyncio.Protocol):
    """One TCP (or Unix) connection: its transport and the callbacks waiting on it, in write
    order. A connection that is replaced keeps its own queue, so nothing it receives or loses
    can ever reach the callers of the connection after it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[tuple[float, Reply]] = collections.deque()
        self.buf = bytearray()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream connection's transport: uvloop's do not derive from asyncio.Transport (an
        # isinstance check here left every call on ``server.loop: uvloop`` waiting forever).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        pos = 0
        try:
            while pos < len(self.buf) and not self.closed:
                reply, pos = parse(self.buf, pos)
                _, callback = self.waiting.popleft()
                callback(reply)
        except _Incomplete:
            pass
        except (ValueError, IndexError) as exc:
            self.fail(RedisConnectionError(f"Redis connection failed: {exc!r}"))
            return
        del self.buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError("Redis connection closed"))

    def fail(self, error: BaseException) -> None:
        """Abort the connection (unsent bytes are dropped, never sent late) and fail every
        callback still waiting on it."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        waiting, self.waiting = self.waiting, collections.deque()
        for _, callback in waiting:
            callback(error)


class Wire:
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
        self._conn: _Connection | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Future[None] | None = None

    @property
    def ready(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.closed and conn.transport is not None

    @property
    def idle(self) -> bool:
        """Nothing written is still unanswered (a command sent now leaves alone)."""
        return self._conn is None or not self._conn.waiting

    def send(self, commands: Sequence[Sequence[Any]], callbacks: Sequence[Reply]) -> None:
        """Write ``commands`` now; each callback later gets its reply (or the failure).
        Only on a ready wire."""
        self.send_raw(b"".join(encode(c) for c in commands), callbacks)

    def send_raw(self, data: bytes, callbacks: Sequence[Reply]) -> None:
        """``send`` for commands already encoded, one callback per command in ``data``."""
        conn = self._conn
        assert conn is not None
        assert conn.transport is not None
        deadline = time.monotonic() + (self.timeout or 0)
        conn.waiting.extend((deadline, cb) for cb in callbacks)
        conn.transport.write(data)
        if self.timeout and self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + self.timeout, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        conn = self._conn
        if conn is None or not conn.waiting:
            return
        oldest = conn.waiting[0][0]
        now = time.monotonic()
        if now >= oldest:
            self.close(RedisTimeoutError("Timeout talking to Redis"))
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + (oldest - now), self._check_deadline)

    async def call(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send ``commands`` (connecting first if needed) and return their replies, a command's
        error reply as an exception object in its place."""
        await self.connect()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in commands]
        self.send(commands, [_resolver(f) for f in futures])
        replies = []
        for f in futures:
            reply = await f
            if isinstance(reply, (RedisConnectionError, RedisTimeoutError)):
                raise reply
            replies.append(reply)
        return replies

    async def connect(self) -> None:
        """Connect (again) unless ready. One attempt at a time, shared by everyone waiting
        for it: callers queued behind a failing attempt must not each wait out their own.
        AUTH and SELECT are part of it, all within the connect timeout."""
        if self.ready:
            return
        attempt = self._connecting
        if attempt is None or attempt.done():
            attempt = asyncio.ensure_future(self._reconnect())
            self._connecting = attempt
        await asyncio.shield(attempt)

    async def _reconnect(self) -> None:
        self.close()
        try:
            await asyncio.wait_for(self._open(), self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            self.close()
            raise RedisConnectionError(f"Redis connection failed: {exc!r}") from None
        except BaseException:
            self.close()
            raise

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        if self.path:
            _, conn = await loop.create_unix_connection(_Connection, self.path)
        else:
            _, conn = await loop.create_connection(_Connection, self.host or "127.0.0.1", self.port)
        self._conn = conn
        hello: list[Sequence[Any]] = []
        if self.password:
            auth = ("AUTH", self.username, self.password) if self.username else None
            hello.append(auth or ("AUTH", self.password))
        if self.db:
            hello.append(("SELECT", self.db))
        if hello:
            futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in hello]
            self.send(hello, [_resolver(f) for f in futures])
            for f in futures:
                reply = await f
                if isinstance(reply, Exception):
                    raise RedisConnectionError(f"Redis refused the connection setup: {reply}")

    def close(self, error: BaseException | None = None) -> None:
        conn, self._conn = self._conn, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if conn is not None:
            # Whatever was sent and not answered can never be matched to a reply now.
            conn.fail(error or RedisConnectionError("Redis connection closed"))

    async def aclose(self) -> None:
        self.close()
        attempt = self._connecting
        if attempt is not None and not attempt.done():
            attempt.cancel()
            with contextlib.suppress(BaseException):
                await attempt


def _resolver(fut: asyncio.Future[Any]) -> Reply:
    def resolve(reply: Any) -> None:
        if not fut.done():
            fut.set_result(reply)

    return resolve


def wire_for(redis: Any) -> Wire | None:
    """A Wire to the same server as a client from gateway.store.client.make_redis, or None
    (TLS, cluster, a plain client): the client owns it and closes it with itself."""
    pool = getattr(redis, "connection_pool", None)
    wires = getattr(redis, "wires", None)
    if pool is None or not isinstance(wires, list):
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
    wires.append(wire)
    return wire
