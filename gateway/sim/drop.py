"""The ``drop`` fault: a response that starts normally and then loses its connection."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from starlette.responses import Response, StreamingResponse

EVENTS_BEFORE_DROP = 2  # server-sent events a dropped stream still delivers
BYTES_BEFORE_DROP = 256 * 1024  # at most, so a dropped 1 GiB download fails quickly

Content = str | bytes | memoryview


class SimulatedDrop(Exception):
    """Raised after the response started: uvicorn then closes the connection mid-body."""


def truncate(response: Response) -> Response:
    """``response`` with the same status and headers (Content-Length included) but a body that
    breaks off part way."""
    if isinstance(response, StreamingResponse):
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            response.body_iterator = _cut(response.body_iterator, events=EVENTS_BEFORE_DROP)
        else:
            length = int(response.headers.get("content-length") or 0)
            budget = min(length // 2, BYTES_BEFORE_DROP)
            response.body_iterator = _cut(response.body_iterator, budget=budget)
        return response
    body = bytes(response.body)
    cut = StreamingResponse(_cut(_once(body), budget=len(body) // 2), response.status_code)
    cut.raw_headers = list(response.raw_headers)
    return cut


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def _cut(
    inner: AsyncIterable[Content], *, events: int | None = None, budget: int = 0
) -> AsyncIterator[Content]:
    sent = 0
    iterator = aiter(inner)
    try:
        while events is None or sent < events:
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                break
            if events is not None:
                yield chunk
                sent += 1
                continue
            data = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
            if sent + len(data) >= budget:
                yield data[: budget - sent]
                break
            yield data
            sent += len(data)
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()
    raise SimulatedDrop("simulated connection drop")
