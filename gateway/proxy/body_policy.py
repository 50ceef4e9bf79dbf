"""What a forwarded JSON body may ask of the shared upstream account (pure).

Stored objects on the upstream belong to the whole account, not to a team, so a body that
names one could reach another team's data: the Responses API's ``previous_response_id`` and
``conversation``, ``background`` runs (fetched later by id), ``file_id`` and
``vector_store_ids`` anywhere in the input, a code-interpreter ``container`` named by id. Those
are refused with 400 ``unsupported_parameter``; and nothing is stored upstream in the first
place: the Responses API's ``store`` (which defaults to true) and chat's ``store`` are forced
to false.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import InvalidRequest
from gateway.upstream.routes import CHAT, RESPONSES

# Keys that name an object stored on the upstream account, wherever they appear.
_OBJECT_REFS = ("file_id", "vector_store_ids", "previous_response_id", "conversation")
# Substrings that make a body worth parsing: most chat bodies contain none of them. A JSON
# escape (\u0066ile_id is "file_id" to the upstream's parser) counts too.
_CHAT_MARKERS = (b"file_id", b"vector_store_ids", b'"store"', b"container", b"\\u")


def _refuse(param: str) -> InvalidRequest:
    return InvalidRequest(
        f"'{param}' refers to an object stored on the shared upstream account, which the "
        "gateway does not allow; send the content itself instead.",
        code="unsupported_parameter",
        param=param,
    )


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or 400 ``invalid_json`` (deep nesting included)."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidRequest("The body is not valid JSON.", code="invalid_json") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("The body must be a JSON object.", code="invalid_json")
    return doc


def _scan(node: Any, depth: int = 0) -> None:
    # Bodies already parsed, so depth is bounded by the JSON parser; iterate, don't recurse.
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key in _OBJECT_REFS and value not in (None, "", []):
                    raise _refuse(key)
                if key == "container" and isinstance(value, str):
                    raise _refuse(key)
                if isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))


def apply(kind: str, body: bytes | None) -> bytes | None:
    """The body to send upstream for a route of this ``kind``, or an InvalidRequest."""
    if kind == RESPONSES:
        if not body:
            raise InvalidRequest("The body must be a JSON object.", code="invalid_json")
        doc = parse_json_object(body)
        if doc.get("background"):
            raise _refuse("background")
        _scan(doc)
        doc["store"] = False
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    if kind == CHAT and body and any(m in body for m in _CHAT_MARKERS):
        doc = parse_json_object(body)
        _scan(doc)
        if doc.get("store"):
            doc["store"] = False
            return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    return body
