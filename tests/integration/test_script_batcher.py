"""The script batcher against a real Redis: one pipeline per loop turn, each call still its own
script run; a flushed script cache is reloaded and only unrun calls are sent again."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Sequence

import pytest
import uvloop
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from gateway.dev.embedded_redis import RedisProcess
from gateway.errors import StoreUnavailable
from gateway.settings import RedisSettings
from gateway.store.batcher import ScriptBatcher
from gateway.store.client import close_redis, make_redis
from gateway.store.wire import Reply
from tests.servers import wait_for_async

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    r = make_redis(RedisSettings(url=redis_url))
    yield r
    await close_redis(r)


async def commands(redis: Redis, name: str) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


async def test_concurrent_calls_share_one_pipeline_and_each_runs_once(redis: Redis) -> None:
    batch = ScriptBatcher(redis, INCR)
    await redis.script_load(INCR)
    before = await commands(redis, "evalsha")
    results = await asyncio.gather(*(batch(["n"], [1]) for _ in range(50)))
    assert sorted(results) == list(range(1, 51))
    assert await commands(redis, "evalsha") - before == 50


async def test_an_unknown_script_is_loaded_and_the_calls_sent_again(redis: Redis) -> None:
    batch = ScriptBatcher(redis, INCR)
    await redis.script_flush()
    # typeshed types a two-awaitable gather as a tuple; at run time it is the list compared here.
    assert list(await asyncio.gather(batch(["m"], [2]), batch(["m"], [3]))) == [2, 5]
    assert int(await redis.get("m") or 0) == 5  # each ran exactly once


async def test_a_script_error_reaches_only_its_caller(redis: Redis) -> None:
    batch = ScriptBatcher(redis, INCR)
    await redis.set("text", "not a number")
    good: object
    bad: object
    good, bad = await asyncio.gather(
        batch(["k"], [1]), batch(["text"], [1]), return_exceptions=True
    )
    assert good == 1
    assert isinstance(bad, ResponseError)


async def test_a_dead_server_fails_every_waiting_call() -> None:
    proc = RedisProcess().start()
    r = make_redis(RedisSettings(url=proc.url))
    try:
        batch = ScriptBatcher(r, INCR)
        assert await batch(["x"], [1]) == 1
        proc.stop()
        results = await asyncio.gather(
            *(batch(["x"], [1]) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(e, StoreUnavailable) for e in results)
        assert r.breaker.is_open  # type: ignore[attr-defined]
    finally:
        proc.stop()
        await close_redis(r)


async def test_a_cancelled_caller_does_not_disturb_the_others(redis: Redis) -> None:
    batch = ScriptBatcher(redis, INCR)
    doomed = asyncio.ensure_future(batch(["c"], [100]))
    kept = asyncio.ensure_future(batch(["c"], [1]))
    doomed.cancel()
    assert await kept == 1  # cancelled before the flush: never sent
    with pytest.raises(asyncio.CancelledError):
        await doomed


async def test_the_wire_authenticates_selects_the_db_and_recovers_from_a_restart() -> None:
    password = secrets.token_hex(16)
    proc = RedisProcess(extra_args=("--requirepass", password)).start()
    url = f"redis://:{password}@127.0.0.1:{proc.port}/2"
    r = make_redis(RedisSettings(url=url))
    try:
        batch = ScriptBatcher(r, INCR)
        assert batch.wire is not None  # the dedicated connection, not redis-py's pool
        assert await batch(["w"], [7]) == 7
        assert int(await r.get("w") or 0) == 7  # the same database redis-py uses
        proc.stop()
        proc = RedisProcess(port=proc.port, extra_args=("--requirepass", password)).start()
        outcomes = []
        for _ in range(3):  # the dead connection costs at most one call
            try:
                outcomes.append(await batch(["w"], [1]))
            except StoreUnavailable:
                outcomes.append("failed")
                await wait_for_async(  # the breaker's probe finds Redis back
                    lambda: not r.breaker.is_open,  # type: ignore[attr-defined]
                    timeout=5,
                    interval=0.02,
                )
        assert outcomes.count("failed") <= 1
        assert outcomes[-1] == 3 - outcomes.count("failed")
    finally:
        await close_redis(r)
        proc.stop()


async def test_batches_pipeline_on_one_connection_and_keep_their_order(redis: Redis) -> None:
    """Batches go out without waiting for earlier replies; each caller still gets its own."""
    batch = ScriptBatcher(redis, INCR)
    assert batch.wire is not None
    first = [asyncio.ensure_future(batch([f"k{i}"], [i])) for i in range(20)]
    await asyncio.sleep(0)  # the first batch is written; the second follows before its replies
    second = [asyncio.ensure_future(batch([f"k{i}"], [100])) for i in range(20)]
    assert await asyncio.gather(*first) == list(range(20))
    assert await asyncio.gather(*second) == [100 + i for i in range(20)]


def _count_writes(batch: ScriptBatcher) -> list[int]:
    """The number of calls in each write on the batcher's wire, as it makes them."""
    wire = batch.wire
    assert wire is not None
    writes: list[int] = []
    send_raw = wire.send_raw

    def spy(data: bytes, callbacks: Sequence[Reply]) -> None:
        writes.append(len(callbacks))
        send_raw(data, callbacks)

    wire.send_raw = spy  # type: ignore[method-assign]
    return writes


async def test_the_calls_of_one_loop_turn_leave_in_one_write(redis: Redis) -> None:
    """Many requests' steps run in one turn under load: the batch leaves with the last of
    them, not with the first (which made two writes and two reads a turn)."""
    batch = ScriptBatcher(redis, INCR)
    assert await batch(["t"], [0]) == 0  # connected, script loaded
    writes = _count_writes(batch)
    calls = [asyncio.ensure_future(batch(["t"], [1])) for _ in range(20)]
    assert sorted(await asyncio.gather(*calls)) == list(range(1, 21))
    assert writes == [20]


async def test_a_call_alone_leaves_before_its_caller_goes_on(redis: Redis) -> None:
    """Nothing else waits in the turn (one connection's load): the call is written at once, so
    the caller's own work (reading its body) overlaps the round trip."""
    batch = ScriptBatcher(redis, INCR)
    assert await batch(["a"], [0]) == 0
    writes = _count_writes(batch)
    pending = batch.submit(["a"], [1])
    assert writes == [1]  # before this coroutine has yielded once
    assert await pending == 1


def test_on_a_loop_without_a_readable_queue_the_first_call_leaves_at_once(redis_url: str) -> None:
    """uvloop (``server.loop: uvloop``) has no queue to read: the call leaves at once when the
    connection is idle, and the rest of the turn's calls together after it."""

    async def scenario() -> list[int]:
        r = make_redis(RedisSettings(url=redis_url))
        try:
            batch = ScriptBatcher(r, INCR)
            assert await batch(["u"], [0]) == 0
            writes = _count_writes(batch)
            calls = [asyncio.ensure_future(batch(["u"], [1])) for _ in range(5)]
            assert sorted(await asyncio.gather(*calls)) == [1, 2, 3, 4, 5]
            return writes
        finally:
            await close_redis(r)

    assert uvloop.run(scenario()) == [1, 4]
