"""The plain fields of a multipart body (images/edits, audio/transcriptions), for the estimate.

Only what the estimate reads is kept (the model, ``n``, ``size``, ``quality``); file parts are
skipped as they stream past, so a 25 MB upload costs one pass and no copy. A part is read as
the upstream (Go's mime/multipart) reads it: a value unless its ``filename`` is non-empty,
skipped unless its disposition is ``form-data``. Whatever the two parsers could read
differently is refused: a field the estimate reads given twice, a part with two
Content-Disposition headers, a disposition that is not plain ``type; name=value`` pairs (Go
drops a part whose disposition it cannot parse, e.g. one with a bare ``; x``, and joins RFC
2231 continuations, ``name*0=``, which python-multipart ignores), a parameter given twice, an
escape inside a part's name, and a field the estimate reads sent with a
Content-Transfer-Encoding (Go decodes quoted-printable, we would not).
"""

from __future__ import annotations

import re

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from gateway.errors import InvalidRequest

READ = frozenset({"model", "n", "size", "quality"})
MAX_VALUE = 1024  # longer than any model name or size; a longer value is refused
# What Go's mime.ParseMediaType reads as a type and its parameters, less what could read
# differently: tokens without "*" (RFC 2231), quoted strings without line breaks, ASCII blanks,
# one trailing ";" (Go ignores it). Anything else is refused, never guessed at. Possessive
# (no backtracking): a hostile header of blanks costs one pass, not the square of its length.
_TOKEN = rb"[!#$%&'+\-.0-9A-Z^_`a-z|~]++"
_VALUE = rb"(?:" + _TOKEN + rb'|"(?:[^"\\\r\n]|\\[^\r\n])*+")'
_PARAM = rb";[ \t]*+(" + _TOKEN + rb")[ \t]*+=[ \t]*+(" + _VALUE + rb")[ \t]*+"
_DISPOSITION = re.compile(rb"[ \t]*+(" + _TOKEN + rb")[ \t]*+(?:" + _PARAM + rb")*+;?[ \t]*+")
# The request's own Content-Type, in the same grammar: a "type/subtype" and its parameters (so
# no "boundary*=", which Go lets replace the boundary python-multipart would read).
_MEDIA_TYPE = re.compile(
    rb"[ \t]*+(" + _TOKEN + rb"/" + _TOKEN + rb")[ \t]*+(?:" + _PARAM + rb")*+;?[ \t]*+"
)
_PARAMS = re.compile(_PARAM)
# Go unquotes a backslash before a special character only; before any other it is kept.
_ESCAPED = re.compile(rb'\\([()<>@,;:\\"/\[\]?=])')


def _disposition(raw: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """A part's disposition type and parameters, read as Go reads them (python-multipart's
    reader unquotes differently, and drops a path's backslashes from a filename), or 400."""
    found = _DISPOSITION.fullmatch(raw)
    if found is None:
        raise _bad("A part's Content-Disposition is not a type and name=value parameters.")
    return found[1].lower(), _parameters(raw, "A part's Content-Disposition")


def _parameters(raw: bytes, what: str) -> dict[bytes, bytes]:
    params: dict[bytes, bytes] = {}
    for key, value in _PARAMS.findall(raw):
        key = key.lower()
        if key in params:
            raise _bad(f"{what} names a parameter twice.")
        params[key] = _ESCAPED.sub(rb"\1", value[1:-1]) if value[:1] == b'"' else value
    return params


def _bad(message: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, code="invalid_form", param=param)


def form_fields(body: bytes, content_type: str) -> dict[str, str]:
    """The fields in ``READ`` of a multipart/form-data body, or 400 ``invalid_form``."""
    raw = content_type.encode("latin-1")
    found = _MEDIA_TYPE.fullmatch(raw)
    if found is None or found[1].lower() != b"multipart/form-data":
        if raw.lstrip(b" \t").lower().startswith(b"multipart/form-data"):
            # The boundary the upstream would read could differ from ours: never guessed at.
            raise _bad("The request's Content-Type is not a type and name=value parameters.")
        raise InvalidRequest(
            "Send this request as multipart/form-data.", code="unsupported_media_type"
        )
    boundary = _parameters(raw, "The request's Content-Type").get(b"boundary")
    if not boundary:
        raise _bad("The multipart body names no boundary.")
    out: dict[str, str] = {}
    state: dict[str, bytes] = {"field": b"", "value": b"", "disposition": b"", "encoded": b""}
    dispositions = [0]
    value = bytearray()
    current: list[str | None] = [None]
    ended = [False]

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        field = state["field"].strip().lower()
        if field == b"content-disposition":
            state["disposition"] = state["value"]
            dispositions[0] += 1
        elif field == b"content-transfer-encoding":
            state["encoded"] = b"1"
        state["field"] = state["value"] = b""

    def on_headers_finished() -> None:
        raw_disp = state["disposition"]
        encoded = bool(state["encoded"])
        if dispositions[0] > 1:
            raise _bad("A part of the form has two Content-Disposition headers.")
        state["disposition"] = state["encoded"] = b""
        dispositions[0] = 0
        kind, disp = _disposition(raw_disp) if raw_disp else (b"", {})
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        if "\\" in name:
            raise _bad("A part's name has an escape in it.")
        is_file = bool(disp.get(b"filename"))  # filename="" is a value, as Go reads it
        wanted = kind == b"form-data" and name in READ and not is_file
        current[0] = name if wanted else None
        if current[0] is not None and encoded:
            raise _bad(f"The form field '{name}' has a Content-Transfer-Encoding.", name)
        if current[0] is not None and current[0] in out:
            raise _bad(f"The form names '{name}' twice.", name)
        value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if current[0] is not None:
            value.extend(data[start:end])
            if len(value) > MAX_VALUE:
                raise _bad(f"The form field '{current[0]}' is too long.", current[0])

    def on_part_end() -> None:
        if current[0] is not None:
            out[current[0]] = value.decode("utf-8", "replace")
            current[0] = None

    def on_end() -> None:
        ended[0] = True

    parser = MultipartParser(
        boundary,
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_end": on_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError:
        raise _bad("The multipart body is malformed.") from None
    if not ended[0]:
        # A body cut inside a part would otherwise read as a form without that part.
        raise _bad("The multipart body ends before its closing boundary.")
    return out
