"""Real servers for tests: ASGI apps on loopback sockets, and a real Redis process."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from gateway.web.protocol import HeadLimits, protocol_factory


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Any, timeout: float = 10.0, interval: float = 0.01, *, message: str = ""
) -> None:
    """Poll ``predicate`` until it is truthy or the deadline passes (never sleep for luck)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(_timed_out(message, timeout))
        time.sleep(interval)


async def wait_for_async(
    predicate: Any, timeout: float = 10.0, interval: float = 0.01, *, message: str = ""
) -> None:
    """``wait_for`` for a test on the event loop, which keeps running while it polls (a
    blocking sleep would freeze the very thing being waited for). ``predicate`` may return an
    awaitable."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(_timed_out(message, timeout))
        await asyncio.sleep(interval)


def _timed_out(message: str, timeout: float) -> str:
    return (
        f"{message} (not within {timeout}s)" if message else f"condition not met within {timeout}s"
    )


@contextlib.contextmanager
def run_server(
    app: Any,
    host: str = "127.0.0.1",
    *,
    head_limits: HeadLimits | None = None,
    port: int | None = None,
    **config: Any,
) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yield its base URL.

    With ``head_limits`` it is served by the protocol ``gateway serve`` uses; ``port`` is
    for an app that must know its own URL before it starts (from ``free_port``)."""
    port = free_port(host) if port is None else port
    if head_limits is not None:
        config["http"] = protocol_factory(head_limits)
    cfg = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", **config)
    server = uvicorn.Server(cfg)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive())
        if not server.started:
            raise RuntimeError("server failed to start")
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
