"""A fast stand-in for a streaming chat upstream: every answer is 64 SSE events, 20 ms apart.

One ticker writes the next event to every open stream, so 400 concurrent streams cost one timer,
not 400 (the upstream must not be what the benchmark measures).
Run: python -m bench.sse_upstream PORT
"""

from __future__ import annotations

import asyncio
import json
import sys

EVENTS = 64
INTERVAL = 0.020
_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(i: int) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}],
    }
    return _chunk(b"data: " + json.dumps(body).encode() + b"\n\n")


EVENT_BYTES = [_event(i) for i in range(EVENTS)]
DONE = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


class Stream(asyncio.Protocol):
    active: set[Stream] = set()

    def __init__(self) -> None:
        self.buf = b""
        self.sent = -1  # -1: no request in progress
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only duck-typed ones
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        Stream.active.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._maybe_start()

    def _maybe_start(self) -> None:
        if self.sent >= 0 or b"\r\n\r\n" not in self.buf:
            return
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        if len(rest) < length:
            return
        self.buf = rest[length:]
        assert self.transport is not None
        self.transport.write(_HEAD + EVENT_BYTES[0])
        self.sent = 1
        Stream.active.add(self)

    def tick(self) -> None:
        assert self.transport is not None
        if self.sent < EVENTS:
            self.transport.write(EVENT_BYTES[self.sent])
            self.sent += 1
            return
        self.transport.write(DONE)
        self.sent = -1
        Stream.active.discard(self)
        self._maybe_start()


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Stream, "127.0.0.1", port, backlog=4096)
    async with server:
        while True:
            await asyncio.sleep(INTERVAL)
            for s in list(Stream.active):
                s.tick()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(int(sys.argv[1])))
