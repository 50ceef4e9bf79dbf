"""``POST /v1/chat/completions``, plain and streamed, in OpenAI's format."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.sim.call import Call
from gateway.sim.errors import openai_error
from gateway.sim.state import SimState


def words(n: int) -> list[str]:
    """The answer: the same for every request, so tests can check what arrived."""
    return [f"word{i} " for i in range(n)]


def _prompt_tokens(doc: dict[str, Any]) -> int:
    messages = doc.get("messages")
    if not isinstance(messages, list):
        return 0
    return sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))


async def chat_completions(state: SimState, call: Call) -> Response:
    doc = call.json
    if not isinstance(doc, dict):
        return openai_error(400, "invalid_request_error", "the body must be a JSON object")
    model = str(doc.get("model") or "gpt-4o-mini")
    answer = words(state.config.stream_events)
    usage = {
        "prompt_tokens": _prompt_tokens(doc),
        "completion_tokens": len(answer),
        "total_tokens": _prompt_tokens(doc) + len(answer),
    }
    head = {
        "id": "chatcmpl-" + secrets.token_hex(12),
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_sim",
    }
    if not doc.get("stream"):
        message = {"role": "assistant", "content": "".join(answer).strip()}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return JSONResponse(
            {**head, "object": "chat.completion", "choices": [choice], "usage": usage}
        )
    options = doc.get("stream_options")
    with_usage = isinstance(options, dict) and bool(options.get("include_usage"))

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {**head, "object": "chat.completion.chunk", "choices": choices, **extra}
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    async def events() -> AsyncIterator[bytes]:
        interval = state.config.stream_interval
        for i, word in enumerate(answer):
            if i and interval:
                await asyncio.sleep(interval)
            delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
            finish = "stop" if i == len(answer) - 1 else None
            yield event([{"index": 0, "delta": delta, "finish_reason": finish}])
        if not answer:
            yield event([{"index": 0, "delta": {"role": "assistant"}, "finish_reason": "stop"}])
        if with_usage:
            yield event([], usage=usage)
        yield b"data: [DONE]\n\n"

    async def counted() -> AsyncIterator[bytes]:
        try:
            async for chunk in events():
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            state.aborted += 1
            raise

    return StreamingResponse(
        counted(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )
