"""The pipelined Redis wire against a tiny scripted Redis on 127.0.0.1, and its RESP2 parser
under hypothesis."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.store import wire as wire_module
from gateway.store.batcher import ScriptBatcher
from gateway.store.wire import Wire, parse
from tests.servers import wait_for_async

Command = list[bytes]
# What the scripted server does with each command it reads: write (or not) through ``writer``.
Script = Callable[[Command, asyncio.StreamWriter, "FakeRedis"], Awaitable[None]]


class FakeRedis:
    """A Redis that only does what its script says, recording every command it reads."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.commands: list[Command] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> FakeRedis:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ValueError):
            while not writer.is_closing() and (command := await _read_command(reader)):
                self.commands.append(command)
                await self.script(command, writer, self)


async def _read_command(reader: asyncio.StreamReader) -> Command | None:
    head = await reader.readline()
    if not head:
        return None
    parts = []
    for _ in range(int(head[1:])):
        size = int((await reader.readline())[1:])
        parts.append((await reader.readexactly(size + 2))[:-2])
    return parts


async def ok(command: Command, writer: asyncio.StreamWriter, server: FakeRedis) -> None:
    writer.write(b"+OK\r\n")


async def silent(command: Command, writer: asyncio.StreamWriter, server: FakeRedis) -> None:
    pass


class Replies:
    """Callbacks for ``Wire.send``, each keeping what it was called with."""

    def __init__(self, n: int) -> None:
        self.got: list[list[Any]] = [[] for _ in range(n)]

    @property
    def callbacks(self) -> list[Callable[[Any], None]]:
        return [box.append for box in self.got]

    @property
    def done(self) -> bool:
        return all(self.got)

    @property
    def values(self) -> list[Any]:
        assert all(len(box) == 1 for box in self.got), self.got  # each called exactly once
        return [box[0] for box in self.got]


@pytest.fixture
def received(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every chunk the wire's protocol is handed by the event loop, in order."""
    chunks: list[bytes] = []
    original = wire_module._Connection.data_received

    def spy(self: Any, data: bytes) -> None:
        chunks.append(bytes(data))
        original(self, data)

    monkeypatch.setattr(wire_module._Connection, "data_received", spy)
    return chunks


@contextlib.asynccontextmanager
async def connected(server: FakeRedis, **kw: Any) -> AsyncIterator[Wire]:
    wire = Wire(host="127.0.0.1", port=server.port, **kw)
    await wire.connect()
    try:
        yield wire
    finally:
        await wire.aclose()


async def test_a_reply_split_across_writes_is_handed_over_once_whole(received: list[bytes]) -> None:
    go_on = asyncio.Event()

    async def halves(command: Command, writer: asyncio.StreamWriter, server: FakeRedis) -> None:
        writer.write(b"$11\r\nhello")
        await writer.drain()
        await go_on.wait()
        writer.write(b" world\r\n")

    async with FakeRedis(halves) as server, connected(server) as wire:
        replies = Replies(1)
        wire.send([("GET", "k")], replies.callbacks)
        await wait_for_async(lambda: b"".join(received) == b"$11\r\nhello", timeout=5)
        assert not replies.done  # half a reply is not a reply
        go_on.set()
        await wait_for_async(lambda: replies.done, timeout=5)
        assert replies.values == [b"hello world"]
        assert len(received) >= 2  # it did arrive in pieces
        assert wire.ready
        assert wire.idle


async def test_pipelined_commands_leave_at_once_and_their_replies_find_their_callers() -> None:
    async def after_three(
        command: Command, writer: asyncio.StreamWriter, server: FakeRedis
    ) -> None:
        if len(server.commands) == 3:  # nothing was answered until all three had arrived
            writer.write(b":1\r\n-NOSCRIPT No matching script\r\n*2\r\n$1\r\na\r\n$-1\r\n")

    async with FakeRedis(after_three) as server, connected(server) as wire:
        replies = await wire.call([("INCR", "a"), ("EVALSHA", "abc", "0"), ("MGET", "a", "b")])
        assert server.commands == [
            [b"INCR", b"a"],
            [b"EVALSHA", b"abc", b"0"],
            [b"MGET", b"a", b"b"],
        ]
        assert replies[0] == 1
        assert isinstance(replies[1], NoScriptError)
        assert str(replies[1]) == "No matching script"  # as redis-py words it
        assert replies[2] == [b"a", None]

        # Separate callers on the one connection, answered in one write.
        server.commands.clear()
        r1, r2, r3 = await asyncio.gather(
            wire.call([("GET", "x")]), wire.call([("GET", "y")]), wire.call([("GET", "z")])
        )
        assert (r1, r3) == ([1], [[b"a", None]])
        assert isinstance(r2[0], NoScriptError)
        assert wire.ready  # an error reply is an answer, not a broken connection


async def test_a_server_that_never_answers_times_out_every_waiting_callback() -> None:
    timeout = 0.05
    async with FakeRedis(silent) as server, connected(server, timeout=timeout) as wire:
        loop = asyncio.get_running_loop()
        first, second = Replies(2), Replies(1)
        started = loop.time()
        wire.send([("INCR", "a"), ("INCR", "b")], first.callbacks)
        wire.send([("INCR", "c")], second.callbacks)
        await wait_for_async(lambda: first.done and second.done, timeout=5)
        assert loop.time() - started >= timeout * 0.9  # not before the timeout
        for reply in [*first.values, *second.values]:
            assert isinstance(reply, RedisTimeoutError)
        assert not wire.ready  # replies could now arrive misaligned: the connection is gone
        await wait_for_async(lambda: len(server.commands) == 3, timeout=5)
        with pytest.raises(RedisTimeoutError):
            await wire.call([("PING",)])  # a fresh connection, and the same silence


async def test_a_server_that_closes_mid_reply_fails_every_waiting_callback() -> None:
    async def cut(command: Command, writer: asyncio.StreamWriter, server: FakeRedis) -> None:
        if len(server.commands) == 3:
            writer.write(b":7\r\n$10\r\nhalf")
            await writer.drain()
            writer.close()

    async with FakeRedis(cut) as server, connected(server, timeout=5) as wire:
        replies = Replies(3)
        wire.send([("INCR", "a"), ("GET", "b"), ("GET", "c")], replies.callbacks)
        await wait_for_async(lambda: replies.done, timeout=5)
        first, *rest = replies.values
        assert first == 7  # the one whole reply still reached its caller
        assert [type(r) for r in rest] == [RedisConnectionError, RedisConnectionError]
        assert not wire.ready
        assert wire.idle


@pytest.mark.parametrize(
    ("kw", "hello"),
    [
        (
            {"username": "svc", "password": "pw-1", "db": 3},
            [[b"AUTH", b"svc", b"pw-1"], [b"SELECT", b"3"]],
        ),
        ({"password": "pw-1"}, [[b"AUTH", b"pw-1"]]),
        ({"db": 2}, [[b"SELECT", b"2"]]),
        ({}, []),
    ],
)
async def test_auth_and_select_are_sent_first_when_configured(
    kw: dict[str, Any], hello: list[Command]
) -> None:
    async with FakeRedis(ok) as server, connected(server, **kw) as wire:
        assert server.commands == hello  # before connect returns: part of the connection
        assert await wire.call([("PING",)]) == [b"OK"]
        assert server.commands == [*hello, [b"PING"]]


async def test_a_refused_auth_fails_the_connect_and_sends_nothing_more() -> None:
    async def refuse(command: Command, writer: asyncio.StreamWriter, server: FakeRedis) -> None:
        writer.write(b"-WRONGPASS invalid username-password pair\r\n")

    async with FakeRedis(refuse) as server:
        wire = Wire(host="127.0.0.1", port=server.port, password="pw-1")
        with pytest.raises(RedisConnectionError, match="refused the connection setup"):
            await wire.call([("PING",)])
        assert server.commands == [[b"AUTH", b"pw-1"]]
        assert not wire.ready


async def test_a_server_frozen_during_setup_fails_the_connect_within_the_connect_timeout() -> None:
    connect_timeout = 0.1
    async with FakeRedis(silent) as server:
        # The command timeout is far longer: only the connect timeout can end this.
        wire = Wire(
            host="127.0.0.1",
            port=server.port,
            password="pw-1",
            connect_timeout=connect_timeout,
            timeout=30,
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RedisConnectionError):
            await wire.connect()
        elapsed = loop.time() - started
        assert connect_timeout * 0.9 <= elapsed < connect_timeout + 1.0
        assert server.commands == [[b"AUTH", b"pw-1"]]
        assert not wire.ready
        assert wire.idle


# -- the parser --------------------------------------------------------------------------------

_line = st.binary(max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b)
_text = st.text(
    st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=20
)


def _encoded(draw_value: tuple[str, Any]) -> tuple[bytes, Any]:
    """(the reply as Redis writes it, what ``parse`` must give back; errors as (type, text))."""
    kind, value = draw_value
    if kind == "status":
        return b"+" + value + b"\r\n", value
    if kind == "error":
        # what redis-py itself would raise: its class and its message
        err = BaseParser.parse_error(value)  # type: ignore[no-untyped-call]
        return b"-" + value.encode() + b"\r\n", (type(err), str(err))
    if kind == "int":
        return b":%d\r\n" % value, value
    if kind == "bulk":
        return b"$%d\r\n%s\r\n" % (len(value), value), value
    if kind == "null_bulk":
        return b"$-1\r\n", None
    if kind == "null_array":
        return b"*-1\r\n", None
    items = [_encoded(v) for v in value]
    return b"*%d\r\n" % len(items) + b"".join(e for e, _ in items), [x for _, x in items]


_leaf = st.one_of(
    st.tuples(st.just("status"), _line),
    st.tuples(st.just("error"), st.one_of(_text, _text.map(lambda t: "NOSCRIPT " + t))),
    st.tuples(st.just("int"), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    st.tuples(st.just("bulk"), st.binary(max_size=64)),  # any bytes, CRLF included
    st.tuples(st.just("null_bulk"), st.none()),
    st.tuples(st.just("null_array"), st.none()),
)
_values = st.recursive(
    _leaf, lambda inner: st.tuples(st.just("array"), st.lists(inner, max_size=5)), max_leaves=20
)
replies = _values.map(_encoded)


def _plain(value: Any) -> Any:
    if isinstance(value, ResponseError):
        return (type(value), str(value))
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples every run: this tier stays deterministic
    database=None,  # no example database in the working tree
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ
@given(reply=replies, junk=st.binary(max_size=8))
def test_parse_reads_any_reply_back_and_waits_inside_one(
    reply: tuple[bytes, Any], junk: bytes
) -> None:
    data, expected = reply
    value, end = parse(junk + data + b"+next\r\n", len(junk))
    assert (_plain(value), end) == (expected, len(junk) + len(data))
    for cut in range(len(data)):  # every proper prefix: wait for more, never a wrong value
        with pytest.raises(wire_module._Incomplete):
            parse(data[:cut])


@FUZZ
@given(
    batch=st.lists(replies, min_size=1, max_size=6),
    cuts=st.lists(st.floats(min_value=0, max_value=1), max_size=8),
)
def test_replies_fed_in_any_split_reach_their_callers_in_order(
    batch: list[tuple[bytes, Any]], cuts: list[float]
) -> None:
    stream = b"".join(data for data, _ in batch)
    points = sorted({math.floor(c * len(stream)) for c in cuts} | {0, len(stream)})
    got: list[Any] = []
    protocol = wire_module._Connection()
    protocol.waiting.extend((math.inf, got.append) for _ in batch)
    for a, b in itertools.pairwise(points):
        protocol.data_received(stream[a:b])
    assert [_plain(v) for v in got] == [expected for _, expected in batch]
    assert not protocol.waiting
    assert protocol.buf == b""


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = False
        self.written: list[bytes] = []

    def abort(self) -> None:
        self.aborted = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.aborted


def test_a_replaced_connection_never_reaches_the_next_ones_callers() -> None:
    # A connection closed while its write buffer was full used to report connection_lost
    # later, after a reconnect, and fail (or feed) the new connection's callers.
    wire = Wire(timeout=None)
    old = wire_module._Connection()
    old.connection_made(_Transport())
    wire._conn = old
    got_old: list[Any] = []
    wire.send_raw(b"*1\r\n$4\r\nPING\r\n", [got_old.append])
    wire.close()
    assert old.transport is not None
    assert old.transport.is_closing()  # aborted: unsent bytes are dropped, never sent late
    assert [type(x) for x in got_old] == [RedisConnectionError]
    new = wire_module._Connection()
    new.connection_made(_Transport())
    wire._conn = new
    got_new: list[Any] = []
    wire.send_raw(b"*1\r\n$4\r\nPING\r\n", [got_new.append])
    old.data_received(b"+PONG\r\n")  # a late reply on the old socket
    old.connection_lost(None)
    assert got_new == []
    assert wire.ready
    new.data_received(b"+PONG\r\n")
    assert got_new == [b"PONG"]


async def test_callers_share_one_connect_attempt() -> None:
    # A Redis that accepts the connection but never answers AUTH (a paused process): six
    # callers must fail together after one connect timeout, not one after another.
    writers: list[asyncio.StreamWriter] = []
    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read(1 << 16)
        await done.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    wire = Wire(host="127.0.0.1", port=port, password="x", connect_timeout=0.3, timeout=5)
    started = time.monotonic()
    try:
        results = await asyncio.gather(
            *(wire.call([("PING",)]) for _ in range(6)), return_exceptions=True
        )
    finally:
        await wire.aclose()
        done.set()
        server.close()
        await server.wait_closed()
        for writer in writers:
            writer.close()
            await writer.wait_closed()
    assert all(isinstance(r, RedisConnectionError) for r in results)
    assert time.monotonic() - started < 1.0  # one 0.3 s attempt, not six


@given(
    st.lists(
        st.one_of(
            st.text(),
            st.integers(),
            st.binary(),
            st.booleans(),
        ),
        max_size=40,
    )
)
def test_commands_are_encoded_as_redis_reads_them(args: list[Any]) -> None:
    # RESP as redis-py writes it: each argument's bytes (text as UTF-8), after their count.
    expected = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(d), d)
        for d in (a if isinstance(a, bytes) else str(a).encode() for a in args)
    )
    assert wire_module.encode(args) == expected


@given(
    st.lists(
        st.tuples(
            st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=6),
            st.lists(st.one_of(st.text(max_size=12), st.integers()), max_size=8),
        ),
        min_size=1,
        max_size=6,
    ),
    st.integers(min_value=0, max_value=1),
)
def test_a_script_call_is_encoded_whole_whatever_its_head_cache_holds(
    calls: list[tuple[list[str], list[str | int]]], varying: int
) -> None:
    # The batcher caches each command's head (all keys but the varying last ones): every call,
    # first or repeated, with the same head and another varying key, must still leave as the
    # whole EVALSHA Redis reads.
    batcher = ScriptBatcher(object(), "return 1", varying_keys=varying)  # type: ignore[arg-type]
    for keys, args in [*calls, *calls, *(([*k[:-1], k[-1] + "x"], a) for k, a in calls)]:
        expected = wire_module.encode(["EVALSHA", batcher.sha, len(keys), *keys, *args])
        assert batcher._encode(keys, args) == expected
