"""The gateway's error tree and the one place errors become OpenAI-shaped responses.

    GatewayError                       any error a caller may see
    ├── InvalidRequest (400)           bad path, bad header combination, bad field
    ├── AuthenticationFailed (401)     missing/invalid token (reason kept for metrics only)
    ├── PermissionDenied (403)
    ├── NotFound (404)
    ├── PayloadTooLarge (413)
    ├── HeadersTooLarge (431)
    ├── QuotaExceeded (429)            a team limit; the code names which
    ├── ServiceUnavailable (503)       Redis cannot be reached for a decision that must not guess
    │   └── StoreUnavailable           raised by the Redis client itself (gateway.store)
    ├── UpstreamError (502/503/504)    the upstream is down, slow, or refused every key
    └── UpstreamResponseError (any)    an error the upstream answered, normalised

Callers only ever see ``{"error": {"message", "type", "param", "code"}}``; the SDK parses
exactly that. Nothing that renders an error may include a secret: messages are fixed strings
chosen here or upstream messages that never carry our key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from gateway.web.asgi import Send

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
}


class GatewayError(Exception):
    status = 500
    code = "internal_error"
    type: str | None = None
    message = "The gateway failed to handle the request."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        error_type: str | None = None,
    ) -> None:
        if message is not None:
            self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if error_type is not None:
            self.type = error_type
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})
        # Set on upstream failures of a non-idempotent call that the upstream may have acted
        # on (timeout after sending, broken connection, 5xx): its outcome is unknown.
        self.maybe_processed = False
        super().__init__(self.message)

    @property
    def error_type(self) -> str:
        if self.type:
            return self.type
        return _TYPE_BY_STATUS.get(
            self.status, "api_error" if self.status >= 500 else "invalid_request_error"
        )


class InvalidRequest(GatewayError):
    status = 400
    code = "invalid_request"
    message = "The request is invalid."


class AuthenticationFailed(GatewayError):
    status = 401
    code = "invalid_api_key"
    message = "Invalid or missing bearer token."

    def __init__(self, reason: str) -> None:
        # The reason goes to metrics and logs, never to the caller: it would help an attacker.
        super().__init__(headers={"www-authenticate": "Bearer"})
        self.reason = reason


class PermissionDenied(GatewayError):
    status = 403
    code = "permission_denied"
    message = "You do not have access to this resource."


class NotFound(GatewayError):
    status = 404
    code = "not_found"
    message = "Not found."


class PayloadTooLarge(GatewayError):
    status = 413
    code = "request_too_large"
    message = "The request body is too large."


class HeadersTooLarge(GatewayError):
    status = 431
    code = "request_header_fields_too_large"
    message = "The request headers are too large."


class QuotaExceeded(GatewayError):
    status = 429
    code = "rate_limit_exceeded"


class ServiceUnavailable(GatewayError):
    status = 503
    code = "service_unavailable"
    message = "The gateway cannot reach its quota store; try again shortly."


class StoreUnavailable(ServiceUnavailable):
    """Redis did not answer (refused, timed out, or known down by the circuit breaker).

    Raised once, by the Redis client the gateway shares, so every route that needs Redis
    answers the same 503 and no service has to know redis-py's exception tree."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"retry-after": "1", "retry-after-ms": "1000"})


class StoreKnownDown(StoreUnavailable):
    """Refused at once by the circuit breaker: nothing was sent to Redis."""


class UpstreamError(GatewayError):
    status = 502
    code = "upstream_unavailable"
    message = "The upstream service could not be reached."


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    message = "The upstream service did not answer in time."


class NoUpstreamKey(UpstreamError):
    status = 503
    code = "no_upstream_key_available"
    message = "Every upstream key is cooling down or disabled; try again later."


class UpstreamResponseError(GatewayError):
    """An error the upstream answered, normalised; the upstream's own code is kept."""


def error_body(exc: GatewayError) -> bytes:
    return json.dumps(
        {
            "error": {
                "message": exc.message,
                "type": exc.error_type,
                "param": exc.param,
                "code": exc.code,
            }
        },
        separators=(",", ":"),
    ).encode()


def error_headers(exc: GatewayError, body: bytes) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers.extend((k.lower().encode(), v.encode("latin-1")) for k, v in exc.headers.items())
    return headers


async def send_error(send: Send, exc: GatewayError) -> None:
    """Send ``exc`` as a complete response. Only valid before the response has started."""
    body = error_body(exc)
    await send(
        {"type": "http.response.start", "status": exc.status, "headers": error_headers(exc, body)}
    )
    await send({"type": "http.response.body", "body": body})
