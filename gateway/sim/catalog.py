"""``/v1/models`` and ``/v1/embeddings``: plain OpenAI routes the gateway passes through."""

from __future__ import annotations

import hashlib
from typing import Any

from starlette.responses import JSONResponse, Response

from gateway.sim.call import Call
from gateway.sim.errors import openai_error
from gateway.sim.state import SimState

MODELS = (
    "sora-2",
    "sora-2-pro",
    "veo-3.1-fast",
    "veo-3.1-quality",
    "gpt-4o-mini",
    "text-embedding-3-small",
)
EMBEDDING_SIZE = 8


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "crazyrouter"}


async def list_models(state: SimState, call: Call) -> Response:
    return JSONResponse({"object": "list", "data": [_model(m) for m in MODELS]})


async def get_model(state: SimState, call: Call) -> Response:
    name = call.params["model"]
    if name not in MODELS:
        return openai_error(404, "model_not_found", f"The model '{name}' does not exist")
    return JSONResponse(_model(name))


def embedding(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255, 6) for b in digest[:EMBEDDING_SIZE]]


async def embeddings(state: SimState, call: Call) -> Response:
    doc = call.json
    if not isinstance(doc, dict) or "input" not in doc:
        return openai_error(400, "invalid_request_error", "input is required")
    items = doc["input"] if isinstance(doc["input"], list) else [doc["input"]]
    data = [
        {"object": "embedding", "index": i, "embedding": embedding(str(item))}
        for i, item in enumerate(items)
    ]
    tokens = sum(len(str(item).split()) for item in items)
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": str(doc.get("model") or "text-embedding-3-small"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
