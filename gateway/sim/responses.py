"""``POST /v1/responses``: a ``response`` object, or the Responses API's stream of named events.

The stream goes as OpenAI's does: ``response.created``, ``response.in_progress``, the output
items (a reasoning item first for reasoning models, then the message, each with its
``added``/``done`` events and the text as ``response.output_text.delta`` events), and last
``response.completed`` (``response.incomplete`` when ``max_output_tokens`` cut the answer)
carrying the whole response with its usage. Every event has a ``sequence_number``; no
``[DONE]`` follows, as none does from OpenAI.
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

MIN_OUTPUT_TOKENS = 16  # OpenAI refuses a smaller max_output_tokens

_ECHOED = ("temperature", "top_p", "user", "metadata", "max_output_tokens", "instructions")


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message(item_id: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


async def create_response(state: SimState, call: Call) -> Response:
    doc = call.json
    if not isinstance(doc, dict):
        return openai_error(400, "invalid_request_error", "the body must be a JSON object")
    try:
        model = fields.text(doc, "model")
        given = doc.get("input")
        if not isinstance(given, str | list) or not given:
            raise fields.missing("input")
        limit = fields.integer(doc, "max_output_tokens", None, low=MIN_OUTPUT_TOKENS)
        instructions = doc.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise fields.BadField("instructions", "'instructions' must be a string.")
    except fields.BadField as exc:
        return exc.response()
    pieces = tokens.answer(state.config.stream_events)
    cut = limit is not None and limit < len(pieces)
    if cut:
        pieces = pieces[:limit]
    input_tokens = tokens.count(instructions or "") + tokens.messages_tokens(given)
    reasoning = tokens.reasoning_tokens(model, len(pieces))
    totals = usage.responses(
        input_tokens,
        len(pieces),
        cached=state.prompt_cache.cached_tokens(model, [instructions, given], input_tokens),
        reasoning=reasoning,
    )
    state.bill(call.key, model, totals)
    status = "incomplete" if cut else "completed"
    created = int(time.time())
    base: dict[str, Any] = {
        "id": "resp_" + secrets.token_hex(24),
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "model": model,
        "output": [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": doc.get("store", True) is not False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": doc.get("tools") or [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": None,
        "user": None,
        "metadata": {},
        "instructions": None,
        "max_output_tokens": None,
    }
    base.update({k: doc[k] for k in _ECHOED if doc.get(k) is not None})
    if isinstance(doc.get("reasoning"), dict):
        base["reasoning"] = {"effort": None, "summary": None, **doc["reasoning"]}
    thought = (
        [{"id": "rs_" + secrets.token_hex(24), "type": "reasoning", "summary": []}]
        if reasoning
        else []
    )
    message_id = "msg_" + secrets.token_hex(24)
    text = "".join(pieces)
    message = _message(message_id, status, [_text_part(text)])
    final = {
        **base,
        "status": status,
        "completed_at": created if not cut else None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "output": [*thought, message],
        "usage": totals,
    }
    if not doc.get("stream"):
        return JSONResponse(final)

    async def events() -> AsyncIterator[dict[str, Any]]:
        yield {"type": "response.created", "response": base}
        yield {"type": "response.in_progress", "response": base}
        for item in thought:
            yield {"type": "response.output_item.added", "output_index": 0, "item": item}
            yield {"type": "response.output_item.done", "output_index": 0, "item": item}
        where = {"item_id": message_id, "output_index": len(thought), "content_index": 0}
        yield {
            "type": "response.output_item.added",
            "output_index": len(thought),
            "item": _message(message_id, "in_progress", []),
        }
        yield {"type": "response.content_part.added", **where, "part": _text_part("")}
        for i, piece in enumerate(pieces):
            await sse.pace(state, i)
            yield {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
        yield {"type": "response.output_text.done", **where, "text": text, "logprobs": []}
        yield {"type": "response.content_part.done", **where, "part": _text_part(text)}
        yield {"type": "response.output_item.done", "output_index": len(thought), "item": message}
        yield {"type": f"response.{status}", "response": final}

    async def numbered() -> AsyncIterator[bytes]:
        sequence = 0
        async for event in events():
            yield sse.named({**event, "sequence_number": sequence})
            sequence += 1

    return sse.stream(state, numbered())
