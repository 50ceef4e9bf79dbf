"""``/v1/models`` and ``/v1/embeddings``: plain OpenAI routes the gateway passes through.

Embeddings are a hash of their input, so the same input always gets the same vector; an input
costs what ``tokens.piece_tokens`` says, text or token ids.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from typing import Any

from starlette.responses import JSONResponse, Response

from gateway.sim import fields, tokens
from gateway.sim.call import Call
from gateway.sim.errors import openai_error
from gateway.sim.state import SimState

MODELS = (
    "sora-2",
    "sora-2-pro",
    "veo-3.1-fast",
    "veo-3.1-quality",
    "gpt-4o-mini",
    "gpt-4o",
    "o4-mini",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "omni-moderation-latest",
    "dall-e-2",
    "dall-e-3",
    "gpt-image-1",
    "tts-1",
    "gpt-4o-mini-tts",
    "whisper-1",
    "gpt-4o-transcribe",
)
EMBEDDING_SIZE = 8  # unless the caller asks for ``dimensions``
MAX_DIMENSIONS = 3072


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "crazyrouter"}


async def list_models(state: SimState, call: Call) -> Response:
    return JSONResponse({"object": "list", "data": [_model(m) for m in MODELS]})


async def get_model(state: SimState, call: Call) -> Response:
    name = call.params["model"]
    if name not in MODELS:
        return openai_error(404, "model_not_found", f"The model '{name}' does not exist")
    return JSONResponse(_model(name))


def embedding(text: str, dimensions: int = EMBEDDING_SIZE) -> list[float]:
    digest = hashlib.shake_256(text.encode()).digest(dimensions)
    return [round(b / 255, 6) for b in digest]


def _encoded(vector: list[float], fmt: str) -> list[float] | str:
    if fmt == "float":
        return vector
    # What the SDK asks for by default: little-endian float32, base64.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def embeddings(state: SimState, call: Call) -> Response:
    doc = call.json
    if not isinstance(doc, dict) or "input" not in doc:
        return openai_error(400, "invalid_request_error", "input is required")
    items = tokens.prompt_pieces(doc["input"])
    try:
        if not items or any(p in ("", []) for p in items):
            raise fields.BadField("input", "'input' must be a non-empty string or array.")
        dimensions = fields.integer(doc, "dimensions", EMBEDDING_SIZE, low=1, high=MAX_DIMENSIONS)
        fmt = fields.choice(doc, "encoding_format", ("float", "base64"), "float")
    except fields.BadField as exc:
        return exc.response()
    size = dimensions or EMBEDDING_SIZE
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": _encoded(embedding(json.dumps(item), size), fmt),
        }
        for i, item in enumerate(items)
    ]
    used = sum(tokens.piece_tokens(item) for item in items)
    model = str(doc.get("model") or "text-embedding-3-small")
    state.bill(call.key, model, {"prompt_tokens": used})
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": used, "total_tokens": used},
        }
    )
