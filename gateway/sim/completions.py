"""``POST /v1/completions``, the legacy text API, plain and streamed, in OpenAI's format.

Each prompt gets ``n`` choices, numbered prompt by prompt; ``max_tokens`` defaults to 16 as
OpenAI's does, and a cut answer ends with ``finish_reason: "length"``.
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

DEFAULT_MAX_TOKENS = 16
MAX_CHOICES = 128


async def completions(state: SimState, call: Call) -> Response:
    doc = call.json
    if not isinstance(doc, dict):
        return openai_error(400, "invalid_request_error", "the body must be a JSON object")
    try:
        model = fields.text(doc, "model")
        prompts = tokens.prompt_pieces(doc.get("prompt"))
        if not prompts:
            raise fields.missing("prompt")
        n = fields.integer(doc, "n", 1, low=1, high=MAX_CHOICES) or 1
        limit = fields.integer(doc, "max_tokens", DEFAULT_MAX_TOKENS, low=1)
    except fields.BadField as exc:
        return exc.response()
    pieces = tokens.answer(state.config.stream_events)
    finish = "stop"
    if limit is not None and limit < len(pieces):
        pieces, finish = pieces[:limit], "length"
    echo = fields.flag(doc, "echo")
    prompt_tokens = sum(tokens.piece_tokens(p) for p in prompts)
    totals = usage.completion(prompt_tokens, len(prompts) * n * len(pieces))
    state.bill(call.key, model, totals)
    head = {
        "id": "cmpl-" + secrets.token_hex(12),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_sim",
    }
    indexes = range(len(prompts) * n)

    def prefix(index: int) -> str:
        prompt = prompts[index // n]
        return prompt if echo and isinstance(prompt, str) else ""

    if not doc.get("stream"):
        text = "".join(pieces)
        choices = [
            {"text": prefix(i) + text, "index": i, "logprobs": None, "finish_reason": finish}
            for i in indexes
        ]
        return JSONResponse({**head, "choices": choices, "usage": totals})
    options = doc.get("stream_options")
    with_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    extra: dict[str, Any] = {"usage": None} if with_usage else {}

    def event(choices: list[dict[str, Any]], **more: Any) -> bytes:
        return sse.data({**head, "choices": choices, **extra, **more})

    def choice(index: int, text: str, done: str | None) -> dict[str, Any]:
        return {"text": text, "index": index, "logprobs": None, "finish_reason": done}

    async def events() -> AsyncIterator[bytes]:
        for i, piece in enumerate(pieces):
            await sse.pace(state, i)
            done = finish if i == len(pieces) - 1 else None
            for index in indexes:
                yield event([choice(index, (prefix(index) if i == 0 else "") + piece, done)])
        if not pieces:
            for index in indexes:
                yield event([choice(index, prefix(index), finish)])
        if with_usage:
            yield event([], usage=totals)
        yield sse.DONE

    return sse.stream(state, events())
