"""A tiny, fast streaming-chat upstream: each request gets 64 SSE events 20 ms apart (fewer
when its body asks for fewer ``max_tokens``), then ``data: [DONE]``, chunked, on a keep-alive
connection.

Raw ``asyncio.Protocol`` on uvloop so that 400 concurrent streams cost the upstream little: it
shares a core with the load generator and must not be what the benchmark measures. Events are
scheduled at absolute times from each stream's start, so the gaps it sends are exactly 20 ms
and any growth seen by the client comes from the path in between.

Run: ``python -m bench.sse_upstream PORT``
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
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


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
    return _chunk(b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n")


EVENT_BYTES = tuple(_event(i) for i in range(EVENTS))
DONE = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


def _events(body: bytes) -> int:
    """How many events a stream gets: ``max_tokens`` of them when the body asks for fewer
    than 64 (a first-event measurement needs one, on a connection it can reuse)."""
    try:
        asked = json.loads(body).get("max_tokens")
    except (ValueError, AttributeError):
        return EVENTS
    if isinstance(asked, int) and 1 <= asked < EVENTS:
        return asked
    return EVENTS


class StreamProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.streaming = False
        self.transport: asyncio.WriteTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.events = EVENTS

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports only duck-type asyncio.WriteTransport
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._next_request()

    def _next_request(self) -> None:
        if self.streaming or self.transport is None or b"\r\n\r\n" not in self.buf:
            return
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        request_line, *header_lines = head.split(b"\r\n")
        length = 0
        for line in header_lines:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(rest) < length:
            return
        body, self.buf = rest[:length], rest[length:]
        if not request_line.startswith(b"POST /v1/chat/completions "):
            self.transport.write(_NOT_FOUND)
            self._next_request()
            return
        self.streaming = True
        self.events = _events(body)
        self.transport.write(_HEAD + EVENT_BYTES[0])
        loop = asyncio.get_running_loop()
        self._schedule(loop, loop.time(), 1)

    def _schedule(self, loop: asyncio.AbstractEventLoop, start: float, i: int) -> None:
        self.timer = loop.call_at(start + i * INTERVAL, self._tick, loop, start, i)

    def _tick(self, loop: asyncio.AbstractEventLoop, start: float, i: int) -> None:
        if self.transport is None:
            return
        if i < self.events:
            self.transport.write(EVENT_BYTES[i])
            self._schedule(loop, start, i + 1)
            return
        self.transport.write(DONE)
        self.timer = None
        self.streaming = False
        self._next_request()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(StreamProtocol, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    import uvloop

    uvloop.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
