"""What a forwarded JSON body may ask of the shared upstream account (pure).

Stored objects on the upstream belong to the whole account, not to a team, so a body that
names one could reach another team's data: the Responses API's ``previous_response_id`` and
``conversation``, ``background`` runs (fetched later by id), ``file_id(s)`` and
``vector_store_ids`` anywhere in a JSON body of any route, item references (typed or, in a
Responses input, an item with an id and no type), stored prompts and earlier audio
answers by id, a code-interpreter ``container`` named by id. Those are refused with 400
``unsupported_parameter``; and nothing is stored upstream in the first place: the Responses
API's ``store`` (which defaults to true) and chat's ``store`` are forced to false. Keys are
compared as the upstream's Go parser folds them (case and Unicode look-alikes), a key given
twice is refused, and the upstream receives our own serialisation of the checked document,
never the caller's bytes.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import InvalidRequest
from gateway.upstream.json_keys import fold, may_spell
from gateway.upstream.routes import RESPONSES
from gateway.web.json_values import check_value_count

# Keys that name an object stored on the upstream account, wherever they appear. Keys are
# compared in lower case: the upstream (new-api, Go) matches JSON fields case-insensitively.
_OBJECT_REFS = frozenset(
    {"file_id", "file_ids", "vector_store_ids", "previous_response_id", "conversation"}
)
# Objects that point at a stored object by their "id": {"type": "item_reference", "id": ...},
# a stored prompt ({"prompt": {"id": "pmpt_..."}}), an earlier audio answer (audio.id).
_BY_ID = frozenset({"prompt", "audio"})
# What a body that names a stored object must spell somewhere (the walk is skipped otherwise).
_MARKS = (
    *(k.encode() for k in _OBJECT_REFS),
    b"container",
    b"item_reference",
    *(k.encode() for k in _BY_ID),
)


def _refuse(param: str) -> InvalidRequest:
    return InvalidRequest(
        f"'{param}' refers to an object stored on the shared upstream account, which the "
        "gateway does not allow; send the content itself instead.",
        code="unsupported_parameter",
        param=param,
    )


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two spellings of one key ({"store": true, "store": false}, or "Store") could be read
    # differently by the upstream's parser than by ours: refuse the ambiguity.
    out: dict[str, Any] = {}
    seen: set[str] = set()
    for key, value in pairs:
        folded = fold(key)
        if folded in seen:
            raise InvalidRequest(f"The body names '{key}' twice.", code="invalid_json", param=key)
        seen.add(folded)
        out[key] = value
    return out


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or 400 ``invalid_json`` (deep nesting, duplicate keys and
    bodies of too many values included)."""
    check_value_count(body)
    try:
        doc = json.loads(body, object_pairs_hook=_pairs)
    except (ValueError, RecursionError):
        raise InvalidRequest("The body is not valid JSON.", code="invalid_json") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("The body must be a JSON object.", code="invalid_json")
    return doc


def _scan(node: Any) -> None:
    # Iterate, don't recurse: depth is bounded by the parser, but the stack need not be.
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if str(_get(item, "type") or "").lower() == "item_reference":
                raise _refuse("item_reference")
            for key, value in item.items():
                folded = fold(key)
                if folded in _OBJECT_REFS and value not in (None, "", []):
                    raise _refuse(key)
                if folded == "container" and isinstance(value, str):
                    raise _refuse(key)
                if folded in _BY_ID and isinstance(value, dict) and _get(value, "id"):
                    raise _refuse(f"{key}.id")
                if isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))


def _get(doc: dict[str, Any], name: str) -> Any:
    return next((v for k, v in doc.items() if fold(k) == name), None)


def apply(kind: str, body: bytes | None) -> bytes:
    """The body to send upstream for a route of this ``kind``, or an InvalidRequest. What
    leaves is always our own serialisation of what we checked, never the caller's bytes."""
    return serialise(checked(kind, body))


def serialise(doc: dict[str, Any]) -> bytes:
    try:
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # "\ud800" parses, but is no character: it cannot be sent
        raise InvalidRequest(
            "The body contains a lone UTF-16 surrogate escape, which is not text.",
            code="invalid_json",
        ) from None


def scanned(body: bytes | None) -> dict[str, Any]:
    """The parsed body of a route without a policy of its own (embeddings, images, audio, ...),
    refused like any other if it names a stored object (an image edit's ``file_id``, say)."""
    if not body:
        raise InvalidRequest("The body must be a JSON object.", code="invalid_json")
    doc = parse_json_object(body)
    if may_spell(body, _MARKS):
        _scan(doc)
    return doc


def _check_input_items(doc: dict[str, Any]) -> None:
    # A Responses input item that has an id and no type of its own is a reference to a stored
    # item (the API makes "type": "item_reference" optional), whoever stored it.
    items = _get(doc, "input")
    if not isinstance(items, list):
        return
    for item in items:
        if not isinstance(item, dict) or _get(item, "id") in (None, ""):
            continue
        kind = _get(item, "type")
        if not isinstance(kind, str) or not kind:  # a typed reference is the scan's
            raise _refuse("input.id")


def checked(kind: str, body: bytes | None) -> dict[str, Any]:
    """The parsed body with the policy applied (``store`` forced off), or an InvalidRequest."""
    if not body:
        raise InvalidRequest("The body must be a JSON object.", code="invalid_json")
    doc = parse_json_object(body)
    if kind == RESPONSES:
        if _get(doc, "background"):
            raise _refuse("background")
        _check_input_items(doc)
    if may_spell(body, _MARKS):
        _scan(doc)
    stored = [k for k in doc if fold(k) == "store"]
    for key in stored:
        del doc[key]
    if kind == RESPONSES or stored:  # the Responses API stores unless told not to
        doc["store"] = False
    return doc
