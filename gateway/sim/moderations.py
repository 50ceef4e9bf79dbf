"""``POST /v1/moderations``: one result per input, in the omni-moderation format.

Nothing is flagged unless the text contains ``SIMFLAG`` (violence), so a test can choose.
Moderations are free at OpenAI, so the answer has no ``usage``.
"""

from __future__ import annotations

import secrets
from typing import Any

from starlette.responses import JSONResponse, Response

from gateway.sim import fields
from gateway.sim.call import Call
from gateway.sim.errors import openai_error
from gateway.sim.state import SimState

FLAG = "SIMFLAG"
CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
# The categories omni-moderation also judges images for.
_IMAGE_CATEGORIES = (
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "violence",
    "violence/graphic",
)


def _result(texts: list[str], images: int) -> dict[str, Any]:
    flagged = any(FLAG in t for t in texts)
    kinds = {c: (["text"] if texts else []) for c in CATEGORIES}
    for c in _IMAGE_CATEGORIES if images else ():
        kinds[c] = [*kinds[c], "image"]
    return {
        "flagged": flagged,
        "categories": {c: flagged and c == "violence" for c in CATEGORIES},
        "category_scores": {
            c: (0.97 if flagged and c == "violence" else 0.0001) for c in CATEGORIES
        },
        "category_applied_input_types": kinds,
    }


def _inputs(given: Any) -> list[tuple[list[str], int]]:
    """(texts, images) per result: a list of strings is many inputs, a list of parts one."""
    if isinstance(given, str):
        return [([given], 0)]
    if isinstance(given, list) and given and all(isinstance(g, str) for g in given):
        return [([g], 0) for g in given]
    if isinstance(given, list) and given and all(isinstance(g, dict) for g in given):
        texts = [str(g.get("text", "")) for g in given if g.get("type") == "text"]
        return [(texts, sum(1 for g in given if g.get("type") == "image_url"))]
    raise fields.missing("input")


async def moderations(state: SimState, call: Call) -> Response:
    doc = call.json
    if not isinstance(doc, dict):
        return openai_error(400, "invalid_request_error", "the body must be a JSON object")
    try:
        inputs = _inputs(doc.get("input"))
    except fields.BadField as exc:
        return exc.response()
    return JSONResponse(
        {
            "id": "modr-" + secrets.token_hex(12),
            "model": str(doc.get("model") or "omni-moderation-latest"),
            "results": [_result(texts, images) for texts, images in inputs],
        }
    )
