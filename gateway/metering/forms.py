"""The plain fields of a multipart body (images/edits, audio/transcriptions), for the estimate.

Only what the estimate reads is kept (the model, ``n``, ``size``, ``quality``); file parts are
skipped as they stream past, so a 25 MB upload costs one pass and no copy. A field the
estimate reads that appears twice is refused: the upstream might read the other one.
"""

from __future__ import annotations

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.errors import InvalidRequest

READ = frozenset({"model", "n", "size", "quality"})
MAX_VALUE = 1024  # longer than any model name or size; a longer value is refused


def _bad(message: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, code="invalid_form", param=param)


def form_fields(body: bytes, content_type: str) -> dict[str, str]:
    """The fields in ``READ`` of a multipart/form-data body, or 400 ``invalid_form``."""
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data":
        raise InvalidRequest(
            "Send this request as multipart/form-data.", code="unsupported_media_type"
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise _bad("The multipart body names no boundary.")
    out: dict[str, str] = {}
    state: dict[str, bytes] = {"field": b"", "value": b"", "disposition": b""}
    value = bytearray()
    current: list[str | None] = [None]
    ended = [False]

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        if state["field"].strip().lower() == b"content-disposition":
            state["disposition"] = state["value"]
        state["field"] = state["value"] = b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state["disposition"])
        state["disposition"] = b""
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        is_file = b"filename" in disp
        current[0] = name if name in READ and not is_file else None
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
