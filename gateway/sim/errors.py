"""The two error bodies new-api answers with: OpenAI's on most routes, its own on task routes."""

from __future__ import annotations

from starlette.responses import JSONResponse

from gateway.sim.faults import Fault

_STATUS_FAULTS = {
    "status_401": (401, "invalid_api_key", "Invalid token"),
    "status_403": (403, "insufficient_quota", "The account's quota is used up"),
    # what an OpenAI-style channel answers for an object it no longer has
    "status_404": (404, "not_found", "The requested resource was not found"),
    "status_429": (429, "rate_limit_exceeded", "rate limited"),
    "status_500": (500, "internal_error", "simulated server error"),
    "status_503": (503, "service_unavailable", "simulated outage"),
}


def openai_error(status: int, code: str, message: str) -> JSONResponse:
    body = {"error": {"message": message, "type": "new_api_error", "code": code}}
    return JSONResponse(body, status_code=status)


def invalid_field(param: str, message: str, code: str = "invalid_value") -> JSONResponse:
    """OpenAI's own validation error, which new-api relays as it came."""
    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": code,
        }
    }
    return JSONResponse(body, status_code=400)


def task_error(status: int, code: str, message: str | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message or code, "data": None}, status)


def invalid_key() -> JSONResponse:
    return openai_error(401, "invalid_api_key", "Invalid token")


def refused_key(state: str) -> JSONResponse:
    """new-api's token validation messages (they are Chinese there too)."""
    if state == "exhausted":
        return openai_error(403, "token_quota_exhausted", "该令牌额度已用尽")
    return openai_error(401, "invalid_api_key", "该令牌状态不可用")


def model_not_allowed(model: str) -> JSONResponse:
    """The 403 new-api answers when a token's model whitelist excludes the model: about the
    request, not the key (the same key serves its other models)."""
    return openai_error(403, "model_not_allowed", f"该令牌无权访问模型 {model}")


def fault_error(fault: Fault) -> JSONResponse:
    status, code, message = _STATUS_FAULTS[fault.kind]
    response = openai_error(status, code, message)
    if fault.kind == "status_429" and fault.retry_after is not None:
        response.headers["retry-after"] = fault.retry_after
    return response
