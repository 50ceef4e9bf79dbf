"""How many values a JSON body may hold, counted before it is parsed (pure).

Parsing runs on the event loop every team shares, and a parsed value costs far more than its
bytes: 28 MiB of ``{},`` parse into ten million dicts, ~750 MiB at the peak. Every container
opens with a bracket and every value but a container's first follows a comma, so counting
those bounds the values from above, in one pass in C (brackets and commas inside strings
count too: the error is on the side of refusing).
"""

from __future__ import annotations

from gateway.errors import InvalidRequest

# More values than any real request has (a 32 MB body of tiny objects took ~6 s to parse).
MAX_JSON_VALUES = 200_000


def check_value_count(
    body: bytes | str, limit: int = MAX_JSON_VALUES, *, param: str | None = None
) -> None:
    """400 ``request_too_complex`` if ``body`` (or the field ``param``) may hold more than
    ``limit`` JSON values."""
    if isinstance(body, str):
        count = body.count("{") + body.count("[") + body.count(",")
    else:
        count = body.count(b"{") + body.count(b"[") + body.count(b",")
    if count > limit:
        raise InvalidRequest(
            f"{param or 'The body'} has more than {limit:,} JSON values.",
            code="request_too_complex",
            param=param,
        )
