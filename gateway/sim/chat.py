"""``POST /v1/chat/completions``, plain and streamed, in OpenAI's format.

A stream carries ``usage`` only when the caller asked with ``stream_options.include_usage``:
then every chunk has ``"usage": null`` and one last chunk, with no choices, has the totals.
With ``continuous_usage_stats`` too (vLLM's extension, which new-api passes on), every chunk
carries the usage so far instead of null.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import JSONResponse, Response

from gateway.sim import fields, sse, tokens, usage
from gateway.sim.call import Call
from gateway.sim.errors import openai_error
from gateway.sim.state import SimState

MAX_CHOICES = 128


def _limit(doc: dict[str, Any]) -> int | None:
    newer = fields.integer(doc, "max_completion_tokens", None, low=1)
    return newer if newer is not None else fields.integer(doc, "max_tokens", None, low=1)


async def chat_completions(state: SimState, call: Call) -> Response:
    doc = call.json
    if not isinstance(doc, dict):
        return openai_error(400, "invalid_request_error", "the body must be a JSON object")
    messages = doc.get("messages")
    try:
        if not isinstance(messages, list):
            raise fields.missing("messages")
        n = fields.integer(doc, "n", 1, low=1, high=MAX_CHOICES) or 1
        limit = _limit(doc)
    except fields.BadField as exc:
        return exc.response()
    model = str(doc.get("model") or "gpt-4o-mini")
    pieces = tokens.answer(state.config.stream_events)
    finish = "stop"
    if limit is not None and limit < len(pieces):
        pieces, finish = pieces[:limit], "length"
    prompt = tokens.messages_tokens(messages)
    totals = usage.chat(
        prompt,
        n * len(pieces),
        cached=state.prompt_cache.cached_tokens(model, messages, prompt),
        reasoning=n * tokens.reasoning_tokens(model, len(pieces)),
        converted=model.startswith("claude-"),
    )
    state.bill(call.key, model, totals)
    head = {
        "id": "chatcmpl-" + secrets.token_hex(12),
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_sim",
    }
    if not doc.get("stream"):
        message = {"role": "assistant", "content": "".join(pieces).strip()}
        choices = [
            {"index": i, "message": message, "logprobs": None, "finish_reason": finish}
            for i in range(n)
        ]
        return JSONResponse(
            {**head, "object": "chat.completion", "choices": choices, "usage": totals}
        )
    options = doc.get("stream_options")
    with_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    continuous = (
        isinstance(options, dict) and with_usage and bool(options.get("continuous_usage_stats"))
    )
    extra: dict[str, Any] = {"usage": None} if with_usage else {}

    def event(choices: list[dict[str, Any]], **more: Any) -> bytes:
        return sse.data(
            {**head, "object": "chat.completion.chunk", "choices": choices, **extra, **more}
        )

    def so_far(written: int) -> dict[str, Any]:
        return {"usage": usage.chat(prompt, written)} if continuous else {}

    async def events() -> AsyncIterator[bytes]:
        for i, piece in enumerate(pieces):
            await sse.pace(state, i)
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            done = finish if i == len(pieces) - 1 else None
            for index in range(n):
                choice = {"index": index, "delta": delta, "finish_reason": done}
                yield event([choice], **so_far(i * n + index + 1))
        if not pieces:
            for index in range(n):
                choice = {"index": index, "delta": {"role": "assistant"}, "finish_reason": finish}
                yield event([choice])
        if with_usage:
            yield event([], usage=totals)
        yield sse.DONE

    return sse.stream(state, events())
