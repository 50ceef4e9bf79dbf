"""Server-sent events as OpenAI sends them: ``data:`` lines for chat and completions, named
events for the Responses API. One event per yielded chunk, so the ``drop`` fault can count."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse

from gateway.sim.state import SimState

DONE = b"data: [DONE]\n\n"


def data(doc: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def named(doc: dict[str, Any]) -> bytes:
    """A Responses API event: its ``type`` is also the SSE event name."""
    return f"event: {doc['type']}\n".encode() + data(doc)


async def pace(state: SimState, index: int) -> None:
    """The configured pause before every generated piece but the first."""
    if index and state.config.stream_interval:
        await asyncio.sleep(state.config.stream_interval)


def stream(state: SimState, events: AsyncIterator[bytes]) -> StreamingResponse:
    async def counted() -> AsyncIterator[bytes]:
        try:
            async for chunk in events:
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            state.note_abort()  # the client left early: tests check the gateway lets go
            raise

    return StreamingResponse(
        counted(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )
