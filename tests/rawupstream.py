"""An upstream on a real socket whose answers the test writes byte for byte: for statuses and
framings no web framework would produce (a 101, a body shorter than its Content-Length)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.servers import free_port


@dataclass
class Seen:
    """What the upstream was sent, one entry per request."""

    requests: list[dict[str, Any]] = field(default_factory=list)

    def paths(self, path: str) -> int:
        return sum(1 for r in self.requests if r["path"] == path)


# Given the request (method, path, headers, json), the bytes to write, and whether to close
# the connection after them.
Answer = Callable[[dict[str, Any]], tuple[bytes, bool]]


def response(
    status: int, body: bytes, *, length: int | None = None, headers: dict[str, str] | None = None
) -> bytes:
    """A response head and ``body``; ``length`` declares another Content-Length than its size."""
    fields = {
        "content-type": "application/json",
        "content-length": str(len(body) if length is None else length),
        **(headers or {}),
    }
    head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode() + b"\r\n" + body


@contextlib.contextmanager
def raw_upstream(answer: Answer) -> Iterator[tuple[str, Seen]]:
    seen = Seen()
    port = free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, path, _ = head[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in head[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                req: dict[str, Any] = {"method": method, "path": path, "headers": headers}
                req["json"] = json.loads(body) if body else None
                seen.requests.append(req)
                data, close = answer(req)
                writer.write(data)
                await writer.drain()
                if close:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    stop: asyncio.Future[None] = loop.create_future()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", port)
        started.set()
        async with server:
            await stop

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert started.wait(5), "the raw upstream did not start"
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:

        def done() -> None:
            if not stop.done():
                stop.set_result(None)

        loop.call_soon_threadsafe(done)
        thread.join(5)
        if not thread.is_alive():
            loop.close()
