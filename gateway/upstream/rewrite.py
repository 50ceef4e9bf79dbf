"""Pure functions that build upstream requests and caller responses (no I/O).

Upstream requests are built, not copied: only allowlisted headers cross in either direction,
path segments are validated then re-quoted, and error bodies are normalised into the OpenAI
shape. Nothing here may let the caller's token reach the upstream or the upstream's key,
cookies or identity reach the caller.
"""

from __future__ import annotations

import ipaddress
import json
import re
import zlib
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote_to_bytes, urlsplit

from gateway.errors import InvalidRequest, UpstreamResponseError

MAX_PATH_BYTES = 2048
_SEGMENT_SAFE = "-._~!$&'()*+,;=:@"
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{8,128}$")
_SECRET_LIKE = re.compile(r"sk-[A-Za-z0-9_-]{4,}")
# Where the upstream's own machines are: new-api's messages can name the channel it failed to
# reach ("Post \"http://10.20.30.40:8080/v1/...\": dial tcp ..."). A URL or an IPv4 address
# whose host is not a public one is removed; a public help link stays.
# A scheme starts only where no scheme character precedes it: tried at every word boundary of a
# run like "a-a-a-...", a pattern free to start inside the run read to its end from each
# (quadratic: 5 s for 128 KB of an error message); from the run's start alone it is linear.
_URL = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>`]+")
_IPV4 = re.compile(r"(?<![\w.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?::[0-9]{1,5})?(?![\w.])")
_INTERNAL_SUFFIXES = (".internal", ".local", ".lan", ".intranet", ".corp", ".home", ".svc")
HIDDEN_ADDRESS = "[internal address]"

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


def upstream_path(raw_path: bytes) -> tuple[str, str]:
    """Validate the caller's raw path; return it decoded (for routing) and re-quoted (for the
    upstream).

    Rejects traversal (``.``/``..`` segments, also percent-encoded), encoded slashes and
    backslashes, NUL and control characters, empty segments (``//host`` tricks) and over-long
    paths with 400 ``invalid_path``.
    """
    if len(raw_path) > MAX_PATH_BYTES:
        raise InvalidRequest("The request path is too long.", code="invalid_path")
    if not raw_path.startswith(b"/"):
        raise InvalidRequest("The request path must be absolute.", code="invalid_path")
    if raw_path == b"/":
        return "/", "/"
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
    decoded = "/" + "/".join(segments)
    return decoded, "/" + "/".join(quote(s, safe=_SEGMENT_SAFE) for s in segments)


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
    # Longest first: a key that is a prefix of another must not leave the longer one's tail.
    for s in sorted(secrets, key=len, reverse=True):
        if s:
            text = text.replace(s, "***")
    text = _SECRET_LIKE.sub("sk-***", text)
    if "://" in text:
        text = _URL.sub(_url_shown, text)
    return _IPV4.sub(_ipv4_shown, text)


def _internal_host(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_global
    except ValueError:
        name = host.rstrip(".").lower()
        return "." not in name or name.endswith(_INTERNAL_SUFFIXES)


def _url_shown(m: re.Match[str]) -> str:
    try:
        host = urlsplit(m.group(0)).hostname
    except ValueError:  # an unparsable authority: not worth the risk
        return HIDDEN_ADDRESS
    return HIDDEN_ADDRESS if host is None or _internal_host(host) else m.group(0)


def _ipv4_shown(m: re.Match[str]) -> str:
    try:
        address = ipaddress.ip_address(m.group(0).split(":", 1)[0])
    except ValueError:  # 999.1.1.1: a version number, not an address
        return m.group(0)
    return m.group(0) if address.is_global else HIDDEN_ADDRESS


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


def _text(v: Any, secrets: Iterable[str], limit: int) -> str | None:
    """An upstream string field, redacted and bounded; numbers (new-api's numeric codes) too."""
    if isinstance(v, bool) or not isinstance(v, str | int):
        return None
    text = redact(str(v), secrets)[:limit]
    return text or None


def normalise_error(
    status: int, body: bytes, *, secrets: Iterable[str] = ()
) -> UpstreamResponseError:
    """Turn any upstream error body into an OpenAI-shaped error, keeping the upstream code.

    Accepts ``{"error": {...}}`` (most routes), new-api's top-level shape
    ``{"code", "message", "data"}`` and anything else (plain text, HTML from a proxy). Every
    string that reaches the caller — message, code, param and type — is redacted: an upstream
    that echoes our key in any field must not hand it to a caller.
    """
    secrets = tuple(secrets)
    message = code = param = etype = None
    try:
        doc = json.loads(body) if body else None
    except (ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):
            message = _text(err.get("message"), secrets, 1000)
            code = _text(err.get("code"), secrets, 100)
            param = _text(err.get("param"), secrets, 100)
            etype = _text(err.get("type"), secrets, 100)
        elif isinstance(err, str):
            message = _text(err, secrets, 1000)
        else:
            message = _text(doc.get("message"), secrets, 1000)
            code = _text(doc.get("code"), secrets, 100)
    if not message:
        message = f"The upstream service answered HTTP {status}."
    return UpstreamResponseError(
        message,
        code=code or f"upstream_http_{status}",
        param=param,
        status=status,
        error_type=etype if etype and etype not in ("new_api_error", "one_api_error") else None,
    )


ERROR_PEEK_BYTES = 64 * 1024
# What new-api (and OpenAI) say when the key itself is unusable: invalid, expired, disabled,
# banned or out of quota (new-api's token validation and pre-consume messages). Anything
# else a 403 says is about the request, e.g. "该令牌无权访问模型 x" (a model the key may not use).
_KEY_BAD_CODES = frozenset(
    {
        "invalid_api_key",
        "token_expired",
        "token_quota_exhausted",
        "pre_consume_token_quota_failed",
        "insufficient_user_quota",
        "insufficient_quota",
        "account_deactivated",
    }
)
_KEY_BAD_WORDS = (
    "无效的令牌",
    "该令牌已过期",
    "该令牌额度已用尽",
    "该令牌状态不可用",
    "未提供令牌",
    "用户额度不足",
    "用户已被封禁",
    "invalid token",
    "invalid api key",
    "incorrect api key",
    "token has expired",
    "token expired",
    "token is disabled",
    "key is disabled",
    "quota exhausted",
    "quota is used up",
    "insufficient quota",
    "insufficient user quota",
    "account has been deactivated",
)


def says_key_is_bad(body: bytes) -> bool:
    """Whether an error body blames the key itself (a hint to probe, never proof alone)."""
    err = normalise_error(403, body)
    if err.code in _KEY_BAD_CODES:
        return True
    text = err.message.lower()
    return any(word in text for word in _KEY_BAD_WORDS)


def retry_after_seconds(headers: Mapping[str, str], default: float) -> float:
    """Seconds from a Retry-After header (delta form), else ``default``."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    if value:
        try:
            return max(0.0, min(float(value), 24 * 3600.0))
        except ValueError:
            pass
    return default
