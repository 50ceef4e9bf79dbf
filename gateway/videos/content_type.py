"""What a job's content is, read from the upstream's ``Content-Type`` the way a browser would
read it, so that the gateway never judges one type while the browser renders another.

A browser joins repeated ``Content-Type`` headers with commas and, for a list of types, uses
the last one it can parse (the Fetch standard's "extract a MIME type"): ``video/webm,
text/html``, or ``video/webm`` then ``text/html`` as two headers, is HTML to Chromium. So only
an answer with exactly one header naming exactly one type has a type at all; anything else is
opaque bytes.
"""

from __future__ import annotations

from collections.abc import Iterable

# No script runs in any of these, so the console may show them in place.
INLINE = frozenset({"video/mp4", "video/webm", "image/png", "image/jpeg", "image/webp"})
OPAQUE = "application/octet-stream"


def declared(raw_headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The one ``Content-Type`` value, parameters included, if the answer has exactly one
    header naming one type; else None."""
    values = [v for k, v in raw_headers if k.lower() == b"content-type"]
    if len(values) != 1 or b"," in values[0]:
        return None
    try:
        value = values[0].decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    return value or None


def essence(value: str | None) -> str:
    """The type without its parameters, lower case ("" for none)."""
    return (value or "").split(";")[0].strip().lower()


def inline_type(raw_headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The allowed media type the content may be shown as in place, else None."""
    found = essence(declared(raw_headers))
    return found if found in INLINE else None
