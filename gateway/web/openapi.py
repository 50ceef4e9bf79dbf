"""The OpenAPI 3.1 description of the gateway's own API, served at ``GET /openapi.json``.

It describes what the gateway answers itself: the admin API, a team's own quota, usage and API
keys, the video API it serves from its job registry, and the health endpoints. The routes it
forwards to Crazyrouter are OpenAI's API and described by OpenAI; the info text names them.
Every operation lists the error codes it can answer, each with an example of the one error
shape. A plain data structure built once by ``create_app`` (no I/O, no Starlette); the test
``tests/integration/test_openapi.py`` holds it to the routes the live app serves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from gateway.admin.service import AUDIT_PAGE, JOBS_PAGE
from gateway.errors import GatewayError
from gateway.metering.ledger import GROUPS, MAX_DAYS
from gateway.videos.service import UNSUPPORTED, VARIANTS
from gateway.web.openapi_schemas import STRING, Schema, ref, schemas

OPENAPI_VERSION = "3.1.0"
BEARER = "bearer"
METRICS_TOKEN = "metricsToken"  # noqa: S105 (a security scheme's name, not a token)

# Every code a gateway route answers: its status and an example message.
ERRORS: dict[str, tuple[int, str]] = {
    "invalid_path": (400, "The request path is invalid."),
    "invalid_request": (400, "Conflicting Content-Length headers."),
    "invalid_json": (400, "The body must be a JSON object."),
    "invalid_value": (400, "limit must be a whole number between 1 and 100."),
    "unknown_parameter": (400, "Unknown parameter 'foo'."),
    "invalid_cursor": (400, "before must be an audit entry id (like 1765000000000-0)."),
    "missing_required_parameter": (400, "window is required."),
    "too_many_keys": (400, "Team 'search' has 1000 keys, the most a team may have."),
    "model_not_found": (400, "The model 'sora-9' is not available."),
    "invalid_url": (400, "image_url must be an https URL."),
    "file_too_large": (400, "input_reference is too large."),
    "invalid_form": (400, "The multipart body is incomplete."),
    "unsupported_media_type": (400, "Send the request as JSON or multipart/form-data."),
    "video_not_ready": (400, "The video is not ready yet; poll it until it is completed."),
    "invalid_api_key": (401, "Invalid or missing bearer token."),
    "permission_denied": (403, "This endpoint needs the gateway admin role."),
    "model_not_allowed": (403, "Team 'search' may not use the model 'sora-2-pro'."),
    "not_found": (404, "Not found."),
    "variant_not_available": (404, "The thumbnail variant is not available."),
    "unsupported_endpoint": (
        404,
        "This video endpoint is not supported by the gateway's upstream.",
    ),
    "name_taken": (409, "Team 'search' already has a key named 'nightly' that is not revoked."),
    "key_not_active": (409, "Only an active key can be rotated; create a new one."),
    "idempotency_key_in_use": (
        409,
        "A request with this Idempotency-Key is still being processed; retry shortly.",
    ),
    "video_content_gone": (
        410,
        "The upstream no longer has this video's content (result URLs are temporary); create "
        "the video again.",
    ),
    "request_too_large": (413, "The request body is too large."),
    "idempotency_key_reused": (
        422,
        "This Idempotency-Key was already used with a different request.",
    ),
    "rate_limit_exceeded": (
        429,
        "Team 'search' has reached its limit of 600 requests per minute; retry in 2s.",
    ),
    "concurrency_limit_exceeded": (
        429,
        "Team 'search' would exceed its limit of 4 concurrent video jobs.",
    ),
    "video_seconds_quota_exceeded": (
        429,
        "Team 'search' would exceed its limit of 600 video seconds per day (596 used, this job "
        "needs 8); it resets at 2026-12-02T00:00:00Z.",
    ),
    "spend_quota_exceeded": (
        429,
        "Team 'search' would exceed its limit of 500 USD spend per month.",
    ),
    "request_header_fields_too_large": (431, "The request headers are too large."),
    "internal_error": (500, "The gateway failed to handle the request."),
    "upstream_unavailable": (502, "The upstream service could not be reached."),
    "upstream_auth_failed": (
        502,
        "The upstream refused the gateway's credentials; operators have been alerted.",
    ),
    "upstream_redirect_refused": (502, "The upstream redirected the download somewhere refused."),
    "service_unavailable": (
        503,
        "The gateway cannot reach its quota store; try again shortly.",
    ),
    "api_keys_disabled": (
        503,
        "Gateway API keys are not enabled on this gateway (auth.api_key_pepper is not set); "
        "ask its operators.",
    ),
    "no_upstream_key_available": (
        503,
        "Every upstream key is cooling down or disabled; try again later.",
    ),
    "upstream_timeout": (504, "The upstream service did not answer in time."),
}
# What any request can meet before its route runs (docs/api.md, the request pipeline).
_EDGE = (
    "invalid_path",
    "invalid_request",
    "request_too_large",
    "request_header_fields_too_large",
    "internal_error",
)
_ADMIN = ("permission_denied", "service_unavailable")
_BAD_BODY = ("invalid_json", "invalid_value", "unknown_parameter")
_UPSTREAM = (
    "upstream_unavailable",
    "upstream_auth_failed",
    "no_upstream_key_available",
    "upstream_timeout",
)
_CREATE_VIDEO = (
    "invalid_json",
    "invalid_value",
    "unknown_parameter",
    "missing_required_parameter",
    "model_not_found",
    "invalid_url",
    "file_too_large",
    "invalid_form",
    "unsupported_media_type",
    "model_not_allowed",
    "concurrency_limit_exceeded",
    "video_seconds_quota_exceeded",
    "spend_quota_exceeded",
    "service_unavailable",
    *_UPSTREAM,
)
_CREATE_KEY = (*_BAD_BODY, "missing_required_parameter", "too_many_keys", "name_taken")
_ROTATE_KEY = (*_BAD_BODY, "not_found", "key_not_active", "api_keys_disabled")

_HEADERS: dict[str, Schema] = {
    "x-request-id": {
        "description": "The request's id: the caller's own when well formed (8-128 of "
        "`[A-Za-z0-9._:-]`), else a new one; on every answer.",
        "schema": STRING,
    },
    "x-ratelimit-limit-requests": {
        "description": "The team's (or API key's) requests_per_minute.",
        "schema": {"type": "integer"},
    },
    "x-ratelimit-remaining-requests": {"schema": {"type": "integer"}},
    "x-ratelimit-reset-requests": {
        "description": "When a request frees up, as `1s`, `6m0s`.",
        "schema": STRING,
    },
    "x-ratelimit-limit-video-seconds": {
        "description": "The day's or month's video-seconds limit, whichever leaves less room.",
        "schema": {"type": "number"},
    },
    "x-ratelimit-remaining-video-seconds": {"schema": {"type": "number"}},
    "x-ratelimit-reset-video-seconds": {"schema": {"type": "string", "format": "date-time"}},
    "retry-after": {"description": "Seconds to wait.", "schema": {"type": "integer"}},
    "retry-after-ms": {"description": "Milliseconds to wait.", "schema": {"type": "integer"}},
    "x-should-retry": {
        "description": "`false`: waiting will not help (a long wait, or an outcome unknown "
        "upstream that must not be sent again).",
        "schema": {"type": "string", "enum": ["false"]},
    },
    "openai-poll-after-ms": {
        "description": "While the job is unfinished: when to poll again.",
        "schema": {"type": "integer"},
    },
    "cache-control": {"schema": STRING},
    "content-disposition": {"schema": STRING},
}
# On every authenticated answer while quotas are on, each trio when the team has that limit.
_RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-video-seconds",
    "x-ratelimit-remaining-video-seconds",
    "x-ratelimit-reset-video-seconds",
)
_WAIT_HEADERS = ("retry-after", "retry-after-ms", "x-should-retry")


def _header_refs(names: Iterable[str]) -> dict[str, Schema]:
    return {n: {"$ref": f"#/components/headers/{n}"} for n in names}


def _example(code: str) -> Schema:
    status, message = ERRORS[code]
    err = GatewayError(message, code=code, status=status)
    return {
        "summary": code,
        "value": {
            "error": {"message": message, "type": err.error_type, "param": None, "code": code}
        },
    }


def _param(name: str, where: str, schema: Schema, description: str, **extra: Any) -> Schema:
    return {"name": name, "in": where, "schema": schema, "description": description, **extra}


def _path_param(name: str, description: str, schema: Schema | None = None) -> Schema:
    return _param(name, "path", schema or STRING, description, required=True)


def _query(name: str, schema: Schema, description: str) -> Schema:
    return _param(name, "query", schema, description)


def _json_body(schema: Schema, *, required: bool = True) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


@dataclass(frozen=True)
class _Builder:
    """Operations with the parts every one of them shares: the edge's errors, authentication
    (and the 503 of a key that cannot be checked), the rate check's headers and errors when
    quotas are on, ``x-request-id`` everywhere."""

    quotas: bool

    def op(
        self,
        summary: str,
        *,
        tag: str,
        ok: dict[str, Schema],
        errors: Sequence[str] = (),
        params: Sequence[Schema] = (),
        body: Schema | None = None,
        description: str | None = None,
        public: bool = False,
        upstream: bool = False,
    ) -> Schema:
        codes = [*_EDGE, *errors]
        if not public:
            # 503: a gateway API key not in this replica's cache needs Redis to be checked.
            codes += ["invalid_api_key", "service_unavailable"]
            if self.quotas:
                codes.append("rate_limit_exceeded")
        by_status: dict[int, list[str]] = {}
        for code in dict.fromkeys(codes):
            by_status.setdefault(ERRORS[code][0], []).append(code)
        responses: dict[str, Schema] = {}
        for status_text, response in ok.items():
            extra: tuple[str, ...] = () if public or not self.quotas else _RATE_HEADERS
            headers = {**_header_refs(["x-request-id", *extra]), **response.get("headers", {})}
            responses[status_text] = {**response, "headers": headers}
        for status in sorted(by_status):
            responses[str(status)] = self._error_response(status, by_status[status])
        if upstream:
            responses["default"] = {
                "description": "Any other error the upstream answered, normalised into this "
                "shape with the upstream's status and its own code (else "
                "`upstream_http_<status>`); every string redacted of keys.",
                "headers": _header_refs(["x-request-id"]),
                "content": {"application/json": {"schema": ref("Error")}},
            }
        out: Schema = {"tags": [tag], "summary": summary, "responses": responses}
        if description:
            out["description"] = description
        if params:
            out["parameters"] = list(params)
        if body is not None:
            out["requestBody"] = body
        if public:
            out["security"] = []
        return out

    @staticmethod
    def _error_response(status: int, codes: Sequence[str]) -> Schema:
        names = ["x-request-id"]
        if status in (409, 429, 502, 503):
            names += _WAIT_HEADERS
        return {
            "description": f"{HTTPStatus(status).phrase}: " + ", ".join(f"`{c}`" for c in codes),
            "headers": _header_refs(names),
            "content": {
                "application/json": {
                    "schema": ref("Error"),
                    "examples": {c: {"$ref": f"#/components/examples/{c}"} for c in codes},
                }
            },
        }


def _json(description: str, schema: str, **headers: Schema) -> Schema:
    out: Schema = {
        "description": description,
        "content": {"application/json": {"schema": ref(schema)}},
    }
    if headers:
        out["headers"] = headers
    return out


_NO_STORE = {"cache-control": {"$ref": "#/components/headers/cache-control"}}


def _admin_paths(b: _Builder, admin_role: str) -> dict[str, Schema]:
    team = _path_param("team", "A team name.", ref("TeamName"))
    job_id = _path_param("id", "A gateway video id (`video_` + 32 hex digits).")
    key_id = _path_param("id", "An upstream key's id, such as `primary`.")
    api_key_id = _path_param("id", "An API key's id (16 hex digits).")
    team_view = _json("The team as it is now.", "AdminTeam", **_NO_STORE)
    admin_note = f"Needs the `{admin_role}` role."

    def admin(summary: str, **kw: Any) -> Schema:
        kw["errors"] = (*_ADMIN, *kw.get("errors", ()))
        kw["description"] = " ".join(filter(None, [kw.get("description"), admin_note]))
        return b.op(summary, tag="admin", **kw)

    def keys(summary: str, **kw: Any) -> Schema:
        kw["errors"] = (*_ADMIN, *kw.get("errors", ()))
        kw["description"] = " ".join(filter(None, [kw.get("description"), admin_note]))
        return b.op(summary, tag="api-keys", **kw)

    limits_body = _json_body(ref("Limits"))
    return {
        "/admin/v1/teams": {
            "get": admin(
                "Every known team with its limits, use and reset times",
                ok={"200": _json("The teams.", "AdminTeamList", **_NO_STORE)},
            )
        },
        "/admin/v1/teams/{team}": {
            "parameters": [team],
            "get": admin(
                "One team (any well-formed name)",
                ok={"200": team_view},
                errors=("invalid_value",),
            ),
        },
        "/admin/v1/teams/{team}/limits": {
            "parameters": [team],
            "put": admin(
                "Replace every override of the team's limits ({} removes them all)",
                ok={"200": team_view},
                errors=_BAD_BODY,
                body=limits_body,
            ),
            "patch": admin(
                "Merge overrides into the team's limits (null: unlimited)",
                ok={"200": team_view},
                errors=_BAD_BODY,
                body=limits_body,
            ),
            "delete": admin(
                "Remove every override: back to the config's limits",
                ok={"200": team_view},
                errors=("invalid_value",),
            ),
        },
        "/admin/v1/teams/{team}/usage/reset": {
            "parameters": [team],
            "post": admin(
                "Zero the team's use in one window",
                description="Running jobs keep their concurrency slots and reservations.",
                ok={"200": team_view},
                errors=(*_BAD_BODY, "missing_required_parameter"),
                body=_json_body(ref("UsageReset")),
            ),
        },
        "/admin/v1/teams/{team}/jobs": {
            "parameters": [team],
            "get": admin(
                "The team's video jobs, newest first",
                ok={"200": _json("A page of jobs.", "AdminJobList", **_NO_STORE)},
                errors=("invalid_value", "not_found"),
                params=[
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": JOBS_PAGE[1]},
                        f"Page size, default {JOBS_PAGE[0]}.",
                    ),
                    _query("after", STRING, "The last id of the previous page."),
                ],
            ),
        },
        "/admin/v1/jobs/{id}": {
            "parameters": [job_id],
            "get": admin(
                "Any team's job, with what it reserved",
                ok={"200": _json("The job.", "AdminJob", **_NO_STORE)},
                errors=("not_found",),
            ),
        },
        "/admin/v1/upstream-keys": {
            "get": admin(
                "Each upstream key's shared state and this replica's requests in flight",
                description="Never a secret. Shows this replica's last known state while "
                "Redis is unreachable.",
                ok={"200": _json("The keys.", "UpstreamKeyList", **_NO_STORE)},
            )
        },
        "/admin/v1/upstream-keys/{id}/enable": {
            "parameters": [key_id],
            "post": admin(
                "Put a key back in rotation on every replica (lifts a quarantine or cooldown)",
                ok={"200": _json("The key now.", "UpstreamKey", **_NO_STORE)},
                errors=("not_found",),
            ),
        },
        "/admin/v1/upstream-keys/{id}/disable": {
            "parameters": [key_id],
            "post": admin(
                "Take a key out of rotation on every replica",
                ok={"200": _json("The key now.", "UpstreamKey", **_NO_STORE)},
                errors=("not_found",),
            ),
        },
        "/admin/v1/audit": {
            "get": admin(
                "The audit log of admin changes, newest first",
                description="Filtered as the streams are read, so an older entry is found "
                "however many newer ones there are; `next_before` continues the same query.",
                ok={"200": _json("Entries.", "AuditLog", **_NO_STORE)},
                errors=("invalid_value", "invalid_cursor"),
                params=[
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": AUDIT_PAGE[1]},
                        f"How many entries, default {AUDIT_PAGE[0]}.",
                    ),
                    _query(
                        "before",
                        {"type": "string", "pattern": "^[0-9]{1,20}-[0-9]{1,20}$"},
                        "Only entries older than this entry id: the previous page's `next_before`.",
                    ),
                    _query("actor", {"type": "string"}, 'Part of the actor\'s "team/user".'),
                    _query(
                        "team",
                        {"type": "string"},
                        "Only entries acting on this team, or made by one of its members.",
                    ),
                    _query("action", {"type": "string"}, 'An action prefix, like "limits".'),
                ],
            )
        },
        "/admin/v1/usage": {
            "get": admin(
                "The usage ledger of every known team, or of one",
                ok={"200": _usage_answer()},
                errors=("unknown_parameter", "invalid_value"),
                params=[*_usage_params(("team", "user", "model")), _team_query()],
            )
        },
        "/admin/v1/reconcile": {
            "post": admin(
                "Reconcile now: per upstream key, its bill against the gateway's charges",
                description="Since each key's first reconciliation; drift > 0 is spend the "
                "gateway did not meter. A key whose usage cannot be read has an `error`.",
                ok={"200": _json("One line per key.", "KeyBillList", **_NO_STORE)},
            )
        },
        "/admin/v1/teams/{team}/api-keys": {
            "parameters": [team],
            "post": keys(
                "Create a gateway API key for any team",
                description="The answer holds the secret, this once.",
                ok={"201": _json("The key and its secret.", "ApiKeyWithSecret", **_NO_STORE)},
                errors=(*_CREATE_KEY, "api_keys_disabled"),
                body=_json_body(ref("ApiKeyCreate")),
            ),
            "get": keys(
                "A team's API keys (never a secret)",
                ok={"200": _json("The keys.", "ApiKeyList", **_NO_STORE)},
                errors=("invalid_value",),
            ),
        },
        "/admin/v1/api-keys/{id}": {
            "parameters": [api_key_id],
            "delete": keys(
                "Revoke any team's key (final; a revoked key changes nothing)",
                ok={"200": _json("The key now.", "ApiKey", **_NO_STORE)},
                errors=("not_found",),
            ),
        },
        "/admin/v1/api-keys/{id}/rotate": {
            "parameters": [api_key_id],
            "post": keys(
                "Give any team's key a new secret; the old one works for the grace period",
                ok={"200": _json("The key and its new secret.", "ApiKeyWithSecret", **_NO_STORE)},
                errors=_ROTATE_KEY,
                body=_json_body(ref("ApiKeyRotate"), required=False),
            ),
        },
    }


def _usage_params(default_group: Sequence[str]) -> list[Schema]:
    day = {"type": "string", "format": "date"}
    return [
        _query("from", day, "First day, default the first of this month (`quota.time_zone`)."),
        _query("to", day, f"Last day, default today; at most {MAX_DAYS} days after `from`."),
        _query(
            "group_by",
            {"type": "string", "pattern": f"^({'|'.join(GROUPS)})(,({'|'.join(GROUPS)}))*$"},
            f"Comma-separated, each once; default `{','.join(default_group)}`.",
        ),
        _query("format", {"type": "string", "enum": ["json", "csv"]}, "Default json."),
    ]


def _team_query() -> Schema:
    return _query("team", ref("TeamName"), "One team only.")


def _usage_answer() -> Schema:
    return {
        "description": "The report; with `format=csv` a header row and one line per row, as an "
        "attachment named `usage-<from>-<to>.csv` (cells starting like a formula get a `'`).",
        "headers": {
            **_NO_STORE,
            "content-disposition": {"$ref": "#/components/headers/content-disposition"},
        },
        "content": {
            "application/json": {"schema": ref("UsageReport")},
            "text/csv": {"schema": STRING},
        },
    }


def _team_paths(b: _Builder, team_admin_role: str, admin_role: str) -> dict[str, Schema]:
    key_id = _path_param("id", "An API key's id (16 hex digits).")
    role = (
        f"Needs the `{team_admin_role}` (or `{admin_role}`) role; touches only the caller's "
        "team: another team's key is a 404 like a missing one."
    )

    def keys(summary: str, **kw: Any) -> Schema:
        kw["errors"] = ("permission_denied", *kw.get("errors", ()))
        return b.op(summary, tag="api-keys", description=role, **kw)

    return {
        "/v1/gateway/quota": {
            "get": b.op(
                "The caller's team: limits, use, room and reset times",
                tag="team",
                ok={"200": _json("The team's quota.", "Quota", **_NO_STORE)},
                errors=("service_unavailable",),
            )
        },
        "/v1/gateway/usage": {
            "get": b.op(
                "The caller's team's usage ledger by user, model, tag and day",
                tag="team",
                ok={"200": _usage_answer()},
                errors=("unknown_parameter", "invalid_value", "service_unavailable"),
                params=_usage_params(("user", "model")),
            )
        },
        "/v1/gateway/api-keys": {
            "post": keys(
                "Create an API key for the caller's team",
                ok={"201": _json("The key and its secret.", "ApiKeyWithSecret", **_NO_STORE)},
                errors=(*_CREATE_KEY, "api_keys_disabled"),
                body=_json_body(ref("ApiKeyCreate")),
            ),
            "get": keys(
                "The caller's team's API keys (never a secret)",
                ok={"200": _json("The keys.", "ApiKeyList", **_NO_STORE)},
            ),
        },
        "/v1/gateway/api-keys/{id}": {
            "parameters": [key_id],
            "delete": keys(
                "Revoke one of the team's keys",
                ok={"200": _json("The key now.", "ApiKey", **_NO_STORE)},
                errors=("not_found",),
            ),
        },
        "/v1/gateway/api-keys/{id}/rotate": {
            "parameters": [key_id],
            "post": keys(
                "Give one of the team's keys a new secret",
                ok={"200": _json("The key and its new secret.", "ApiKeyWithSecret", **_NO_STORE)},
                errors=_ROTATE_KEY,
                body=_json_body(ref("ApiKeyRotate"), required=False),
            ),
        },
    }


def _video_paths(b: _Builder) -> dict[str, Schema]:
    video_id = _path_param(
        "video_id",
        "A gateway video id; another team's id answers exactly like an unknown one.",
        {"type": "string", "examples": ["video_" + "0" * 32]},
    )
    poll = {"openai-poll-after-ms": {"$ref": "#/components/headers/openai-poll-after-ms"}}
    video = _json("The Video object.", "Video", **poll)
    create_body = {
        "required": True,
        "content": {
            "application/json": {"schema": ref("VideoCreate")},
            "multipart/form-data": {
                "schema": ref("VideoCreateForm"),
                "encoding": {
                    "input_reference": {"contentType": "image/jpeg, image/png, image/webp"}
                },
            },
        },
    }
    idempotency = _param(
        "Idempotency-Key",
        "header",
        {"type": "string", "minLength": 1, "maxLength": 255},
        "The same key and request within `quota.idempotency_seconds` return the same job: no "
        "second upstream job, no second charge. Per team.",
    )
    unsupported: dict[str, Schema] = {}
    for name in UNSUPPORTED:
        for method in ("get", "post"):
            unsupported.setdefault(f"/v1/videos/{name}", {})[method] = b.op(
                f"Not supported: the SDK's videos.{name} (Crazyrouter has no such route)",
                tag="videos",
                ok={},
                errors=("unsupported_endpoint",),
            )
    return {
        "/v1/videos": {
            "post": b.op(
                "Create a video job (the SDK's videos.create)",
                tag="videos",
                description="Validated against the model table and charged (concurrency, "
                "video seconds, spend) in one step before anything goes upstream; a refused or "
                "failed job is refunded. JSON or multipart (an uploaded `input_reference`).",
                ok={"200": video},
                errors=(*_CREATE_VIDEO, "idempotency_key_in_use", "idempotency_key_reused"),
                params=[idempotency],
                body=create_body,
                upstream=True,
            ),
            "get": b.op(
                "The caller's team's video jobs (the SDK's videos.list)",
                tag="videos",
                ok={"200": _json("A page of Video objects.", "VideoList")},
                errors=("invalid_value", "not_found", "service_unavailable"),
                params=[
                    _query("after", STRING, "The last id of the previous page."),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 100},
                        "Page size, default 20.",
                    ),
                    _query(
                        "order",
                        {"type": "string", "enum": ["asc", "desc"]},
                        "Default desc (newest first).",
                    ),
                ],
            ),
        },
        "/v1/videos/{video_id}": {
            "parameters": [video_id],
            "get": b.op(
                "A job's state, polled upstream at most once per poll interval",
                tag="videos",
                ok={"200": video},
                errors=("not_found", "service_unavailable"),
            ),
            "delete": b.op(
                "Remove a job from the team's view",
                tag="videos",
                ok={"200": _json("Deleted.", "VideoDeleted")},
                errors=("not_found", "service_unavailable"),
            ),
        },
        "/v1/videos/{video_id}/remix": {
            "parameters": [video_id],
            "post": b.op(
                "A new job from an owned, completed one",
                tag="videos",
                ok={"200": video},
                errors=(*_CREATE_VIDEO, "not_found", "video_not_ready"),
                body={
                    "required": True,
                    "content": {
                        "application/json": {"schema": ref("VideoRemix")},
                        "multipart/form-data": {"schema": ref("VideoRemix")},
                    },
                },
                upstream=True,
            ),
        },
        "/v1/videos/{video_id}/content": {
            "parameters": [video_id],
            "get": b.op(
                "Download a completed job's bytes, streamed from the upstream",
                tag="videos",
                description="With the key that created the job; redirects are followed by "
                "the gateway, never shown. `Range` and `If-Range` are forwarded.",
                ok={
                    "200": _content_answer("The file."),
                    "206": _content_answer("The range asked for."),
                    "416": {"description": "The range cannot be satisfied (the upstream's)."},
                },
                errors=(
                    "invalid_value",
                    "video_not_ready",
                    "not_found",
                    "variant_not_available",
                    "video_content_gone",
                    "upstream_redirect_refused",
                    "service_unavailable",
                    *_UPSTREAM,
                ),
                params=[
                    _query("variant", {"type": "string", "enum": list(VARIANTS)}, "Default video."),
                    _param("Range", "header", STRING, "A byte range."),
                    _param("If-Range", "header", STRING, "An ETag or date."),
                ],
                upstream=True,
            ),
        },
        **unsupported,
    }


def _content_answer(description: str) -> Schema:
    binary = {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}
    return {
        "description": description + " Named by the gateway (never the upstream's file name), "
        "`cache-control: private, no-store`.",
        "headers": {
            "content-disposition": {"$ref": "#/components/headers/content-disposition"},
            "cache-control": {"$ref": "#/components/headers/cache-control"},
        },
        "content": {"video/mp4": binary, "image/webp": binary, "image/jpeg": binary},
    }


def _health_paths(b: _Builder, *, metrics_token: bool) -> dict[str, Schema]:
    metrics = b.op(
        "The Prometheus scrape",
        tag="health",
        public=True,
        errors=("invalid_api_key",) if metrics_token else (),
        description="Needs `server.metrics_token` as a bearer token."
        if metrics_token
        else "Open: no `server.metrics_token` is set.",
        ok={
            "200": {
                "description": "Prometheus text format.",
                "content": {"text/plain": {"schema": STRING}},
            }
        },
    )
    if metrics_token:
        metrics["security"] = [{METRICS_TOKEN: []}]
    return {
        "/healthz": {
            "get": b.op(
                "Liveness: the process answers",
                tag="health",
                public=True,
                ok={"200": _json("Alive.", "Health")},
            )
        },
        "/readyz": {
            "get": b.op(
                "Readiness: Redis answers, or rate checks are set to fail open without it",
                tag="health",
                public=True,
                description="The key pool's state is reported but does not decide.",
                ok={
                    "200": _json("Ready.", "Readiness"),
                    "503": _json("Not ready.", "Readiness"),
                },
            )
        },
        "/metrics": {"get": metrics},
        "/openapi.json": {
            "get": b.op(
                "This document",
                tag="health",
                public=True,
                ok={
                    "200": {
                        "description": "OpenAPI 3.1.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            )
        },
        "/docs": {
            "get": b.op(
                "This document in Swagger UI, served by the gateway itself",
                tag="health",
                public=True,
                ok={
                    "200": {
                        "description": "An HTML page.",
                        "content": {"text/html": {"schema": STRING}},
                    }
                },
            )
        },
    }


_DESCRIPTION = """\
The gateway's own API. Callers use the gateway as their OpenAI `base_url`
(`http://<gateway>/v1`); the routes it forwards to Crazyrouter (chat, completions, responses,
embeddings, moderations, images, audio, models) are OpenAI's API and are not repeated here.

**Authentication.** `Authorization: Bearer <token>`, where the token is the company JWT or a
gateway API key (`gwk_<16 hex>_<48 hex>`). Admin routes need the admin role, a team's key routes
the team-admin role. The health endpoints and this document need no token.

**Errors** always have the shape `{"error": {"message", "type", "param", "code"}}`; each
operation lists the codes it can answer, with an example of each. A route answered with another
method is `405 http_error`.
"""


def openapi_document(
    *,
    version: str,
    admin_role: str,
    team_admin_role: str,
    quotas: bool,
    metrics_token: bool,
    video_extra_fields: Sequence[str] = (),
) -> dict[str, Any]:
    """The document for a gateway configured so: ``quotas`` adds the rate check's headers and
    errors to every authenticated route, ``metrics_token`` says whether /metrics wants one.
    Takes no secret, so it can hold none."""
    b = _Builder(quotas=quotas)
    paths = {
        **_admin_paths(b, admin_role),
        **_team_paths(b, team_admin_role, admin_role),
        **_video_paths(b),
        **_health_paths(b, metrics_token=metrics_token),
    }
    security_schemes: dict[str, Schema] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT or gwk_ gateway API key",
            "description": "The company JWT, or a gateway API key (`gwk_...`).",
        }
    }
    if metrics_token:
        security_schemes[METRICS_TOKEN] = {
            "type": "http",
            "scheme": "bearer",
            "description": "`server.metrics_token`, for /metrics only.",
        }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Crazyrouter gateway",
            "version": version,
            "description": _DESCRIPTION,
        },
        "tags": [
            {"name": "admin", "description": "The admin API (admin role)."},
            {"name": "api-keys", "description": "Gateway API keys: any team's, or your own."},
            {"name": "team", "description": "The caller's own team."},
            {"name": "videos", "description": "The video API, served from the job registry."},
            {"name": "health", "description": "Liveness, readiness, metrics, this document."},
        ],
        "security": [{BEARER: []}],
        "paths": paths,
        "components": {
            "schemas": schemas(video_extra_fields=video_extra_fields),
            "securitySchemes": security_schemes,
            "headers": _HEADERS,
            "examples": {code: _example(code) for code in ERRORS},
        },
    }
