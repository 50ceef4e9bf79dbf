"""Pure functions that build upstream requests and caller responses (no I/O).

Upstream requests are built, not copied: only allowlisted headers cross in either direction,
path segments are validated then re-quoted, and error bodies are normalised into the OpenAI
shape. Nothing here may let the caller's token reach the upstream or the upstream's key,
cookies or identity reach the caller.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from gateway.errors import InvalidRequest, NotFound, UpstreamResponseError

MAX_PATH_BYTES = 2048
_SEGMENT_SAFE = "-._~!$&'()*+,;=:@"
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{8,128}$")
_SECRET_LIKE = re.compile(r"sk-[A-Za-z0-9_-]{4,}")

# Request headers the upstream may see. Everything else (the caller's Authorization, cookies,
# forwarding headers, hop-by-hop headers, X-Stainless-*, OpenAI-Organization) stays behind.
REQUEST_ALLOW = frozenset(
    {
        "content-type",
        "accept",
        "openai-beta",
        "range",
        "if-range",
        "if-none-match",
        "if-modified-since",
    }
)
# Only encodings we can decode ourselves when we must rewrite an error body.
_ENCODINGS = ("gzip", "deflate", "identity")

RESPONSE_ALLOW = frozenset(
    {
        b"content-type",
        b"content-length",
        b"content-encoding",
        b"content-range",
        b"accept-ranges",
        b"etag",
        b"last-modified",
        b"content-disposition",
        b"cache-control",
        b"retry-after",
        b"openai-processing-ms",
        b"openai-poll-after-ms",
    }
)
UPSTREAM_REQUEST_ID = b"x-oneapi-request-id"


def upstream_path(raw_path: bytes, allowed_prefixes: Iterable[str]) -> str:
    """Validate the caller's raw path and return it re-quoted for the upstream.

    Rejects traversal (``.``/``..`` segments, also percent-encoded), encoded slashes and
    backslashes, NUL and control characters, empty segments (``//host`` tricks) and over-long
    paths with 400; a path outside the allowed prefixes is 404.
    """
    if len(raw_path) > MAX_PATH_BYTES:
        raise InvalidRequest("The request path is too long.", code="invalid_path")
    if not raw_path.startswith(b"/"):
        raise InvalidRequest("The request path must be absolute.", code="invalid_path")
    segments = []
    for raw in raw_path[1:].split(b"/"):
        try:
            seg = unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest("The request path is invalid.", code="invalid_path") from None
        if (
            not seg
            or seg in (".", "..")
            or "/" in seg
            or "\\" in seg
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in seg)
        ):
            raise InvalidRequest("The request path is invalid.", code="invalid_path")
        segments.append(seg)
    path = "/" + "/".join(segments)
    if not any(path == p or path.startswith(p + "/") for p in allowed_prefixes):
        raise NotFound("Unknown path.", code="not_found")
    return "/" + "/".join(quote(s, safe=_SEGMENT_SAFE) for s in segments)


def valid_request_id(value: bytes | None) -> bool:
    return value is not None and _REQUEST_ID.match(value) is not None


def request_headers(
    caller: Iterable[tuple[bytes, bytes]], *, secret: str, request_id: str, user_agent: str
) -> dict[str, str]:
    """Headers for the upstream request: an allowlist of the caller's plus our own."""
    out: dict[str, str] = {}
    for k, v in caller:
        name = k.decode("latin-1")
        if name in REQUEST_ALLOW:
            out[name] = v.decode("latin-1")
        elif name == "accept-encoding":
            wanted = [e.strip() for e in v.decode("latin-1").split(",")]
            kept = [e for e in wanted if e.split(";")[0].strip() in _ENCODINGS]
            if kept:
                out[name] = ", ".join(kept)
    out.setdefault("accept-encoding", "identity")
    out["authorization"] = f"Bearer {secret}"
    out["x-request-id"] = request_id
    out["user-agent"] = user_agent
    return out


def response_headers(upstream: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's safe headers, plus its request id renamed to x-upstream-request-id."""
    out = []
    for k, v in upstream:
        name = k.lower()
        if name in RESPONSE_ALLOW:
            out.append((name, v))
        elif name == UPSTREAM_REQUEST_ID and valid_request_id(v):
            out.append((b"x-upstream-request-id", v))
    return out


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove anything that looks like an upstream key from an upstream-provided message."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return _SECRET_LIKE.sub("sk-***", text)


def decode_body(body: bytes, content_encoding: str | None) -> bytes:
    enc = (content_encoding or "").lower().strip()
    try:
        if enc == "gzip":
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if enc == "deflate":
            return zlib.decompress(body)
    except zlib.error:
        return b""
    return body


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def normalise_error(
    status: int, body: bytes, *, secrets: Iterable[str] = ()
) -> UpstreamResponseError:
    """Turn any upstream error body into an OpenAI-shaped error, keeping the upstream code.

    Accepts ``{"error": {...}}`` (most routes), new-api's task shape
    ``{"code", "message", "data"}`` and anything else (plain text, HTML from a proxy).
    """
    message: str | None = None
    code: str | None = None
    param: str | None = None
    etype: str | None = None
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):
            message = _str_or_none(err.get("message"))
            code = _str_or_none(err.get("code")) or (
                str(err["code"]) if isinstance(err.get("code"), int) else None
            )
            param = _str_or_none(err.get("param"))
            etype = _str_or_none(err.get("type"))
        elif isinstance(err, str):
            message = err
        else:
            message = _str_or_none(doc.get("message"))
            code = _str_or_none(doc.get("code"))
    if not message:
        message = f"The upstream service answered HTTP {status}."
    message = redact(message, secrets)[:1000]
    return UpstreamResponseError(
        message,
        code=code or f"upstream_http_{status}",
        param=param,
        status=status,
        error_type=etype if etype and etype not in ("new_api_error", "one_api_error") else None,
    )


def retry_after_seconds(headers: Mapping[str, str], default: float) -> float:
    """Seconds from a Retry-After header (delta form), else ``default``."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    if value:
        try:
            return max(0.0, min(float(value), 24 * 3600.0))
        except ValueError:
            pass
    return default
