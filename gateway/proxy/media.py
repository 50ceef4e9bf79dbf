"""How a forwarded body is read, which is how the upstream is made to read it (pure).

new-api picks its parser from the Content-Type it is sent, not from the route: JSON when the
type starts with ``application/json``, a form when it contains
``application/x-www-form-urlencoded``, multipart when it contains ``multipart/form-data``
(``common.UnmarshalBodyReusable``). A JSON body declared as a form would be checked, priced and
charged by the gateway as one document and run upstream as another (``{"input":
"x&model=big&z="}`` is the model ``big`` to a form parser). So each route accepts the types the
gateway can read it as, a body read as JSON leaves declared exactly ``application/json`` (a
missing type filled in, parameters dropped), and a form leaves with the very header its fields
were read by.
"""

from __future__ import annotations

from typing import Literal

from gateway.errors import InvalidRequest
from gateway.metering import kinds
from gateway.web.asgi import Scope, header

Format = Literal["json", "form"]
JSON: Format = "json"
FORM: Format = "form"
JSON_TYPE = b"application/json"
FORM_TYPE = b"multipart/form-data"


def _declared(scope: Scope) -> bytes | None:
    """The media type the caller declared, parameters and blanks removed, or None."""
    raw = header(scope, b"content-type")
    return None if raw is None else raw.split(b";", 1)[0].strip(b" \t")


def body_format(scope: Scope, kind: str, *, has_body: bool = True) -> Format | None:
    """How a body for a route metered as ``kind`` is read (None: the route reads none); raises
    400 ``unsupported_media_type`` for a declared type the route cannot be read as.

    JSON routes take ``application/json`` or no declared type (read as JSON, as every OpenAI
    client sends them). Upload routes and routes added in config take JSON or
    ``multipart/form-data``, the latter spelled exactly so: Go's ``strings.Contains`` that picks
    new-api's parser is case-sensitive, while the gateway's would not be."""
    if kind == kinds.FREE or (kind == kinds.REQUEST and not has_body):
        return None
    media = _declared(scope)
    if kind in kinds.JSON_KINDS:
        if media is None or media.lower() == JSON_TYPE:
            return JSON
        raise InvalidRequest(
            "Send this request's body as JSON, with Content-Type: application/json.",
            code="unsupported_media_type",
        )
    if media is not None and media.lower() == JSON_TYPE:
        return JSON
    if media == FORM_TYPE:
        return FORM
    raise InvalidRequest(
        "Send this request's body as JSON or multipart/form-data.", code="unsupported_media_type"
    )


def as_json(headers: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[bytes, bytes], ...]:
    """The caller's headers with the one Content-Type the upstream must read the body by."""
    return (*[h for h in headers if h[0] != b"content-type"], (b"content-type", JSON_TYPE))
