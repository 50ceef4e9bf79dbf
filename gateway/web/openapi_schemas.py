"""The schemas of the gateway's OpenAPI description: every body its own routes take and give.

Each schema follows the view that builds the answer (``gateway.admin.views``,
``gateway.admin.api_keys.key_view``, ``QuotaService.usage``, ``gateway.metering.report``,
``gateway.videos.dialect.video_object``) and takes its names and bounds from the constants the
code checks against, so a limit kind, a key limit or a report group added there shows up here.
Pure data, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, get_args

from gateway.admin.api_keys import MAX_MODELS
from gateway.admin.inputs import RESET_WINDOWS, TEAM_NAME
from gateway.auth.api_keys import KEY_LIMITS, NAME, PATTERN
from gateway.metering.ledger import GROUPS, MEASURES
from gateway.quota.model import INTEGER_KINDS, KINDS, MAX_LIMIT
from gateway.upstream.keypool import KEY_STATES
from gateway.videos.dialect import Status

Schema = dict[str, Any]

# Obviously fake, shaped like the real thing: a secret scanner must never flag the document.
PLACEHOLDER_KEY = "gwk_" + "0" * 16 + "_" + "0" * 48
STRING: Schema = {"type": "string"}
EPOCH: Schema = {"type": "integer", "description": "Unix time, seconds."}
_LIMIT_UNITS = {
    "requests_per_minute": "requests in a sliding 60 s",
    "concurrent_jobs": "video jobs not yet completed or failed",
    "video_seconds_per_day": "video seconds (times the model's weight) per calendar day",
    "video_seconds_per_month": "video seconds (times the model's weight) per calendar month",
    "spend_per_month": "spend in `quota.currency` per calendar month",
    "tokens_per_minute": "input plus output tokens in the last 60 whole seconds",
    "tokens_per_day": "input plus output tokens per calendar day",
    "spend_per_day": "spend in `quota.currency` per calendar day",
}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(properties: dict[str, Schema], *, optional: Sequence[str] = ()) -> Schema:
    """An object whose every property but ``optional`` is always present."""
    return {
        "type": "object",
        "required": [p for p in properties if p not in optional],
        "properties": properties,
    }


def _const(value: str) -> Schema:
    return {"type": "string", "const": value}


def _list_of(item: str, *, paged: bool = False) -> Schema:
    props: dict[str, Schema] = {
        "object": _const("list"),
        "data": {"type": "array", "items": ref(item)},
    }
    if paged:
        props |= {
            "first_id": nullable(STRING),
            "last_id": nullable(STRING),
            "has_more": {"type": "boolean"},
        }
    return _object(props)


def _limit_value(kind: str) -> Schema:
    number = "integer" if kind in INTEGER_KINDS else "number"
    return {
        "type": [number, "null"],
        "minimum": 0,
        "maximum": MAX_LIMIT,
        "description": f"{_LIMIT_UNITS.get(kind, kind)}; null: unlimited",
    }


def _limits_document(kinds: Sequence[str], description: str) -> Schema:
    return {
        "type": "object",
        "description": description,
        "properties": {k: _limit_value(k) for k in kinds},
        "additionalProperties": False,
    }


def _video_create(extra_fields: Sequence[str], *, multipart: bool) -> Schema:
    seconds: Schema = {
        "type": ["string", "integer"],
        "description": 'One of the model\'s allowed seconds (the SDK sends a string: "8").',
        "examples": ["8"],
    }
    scene = _object({"prompt": STRING, "duration": {"type": "integer", "minimum": 1}})
    storyboard: Schema = {
        "type": "array",
        "items": scene,
        "minItems": 1,
        "description": "Crazyrouter's scenes; their durations add up to the job's seconds.",
    }
    props: dict[str, Schema] = {
        "prompt": {
            "type": "string",
            "description": "Required unless a storyboard is given; at most the model's "
            "`max_prompt_chars`.",
        },
        "model": {
            "type": "string",
            "description": "Default `videos.default_model`; aliases apply; an unknown model is "
            "`model_not_found`.",
            "examples": ["sora-2"],
        },
        "seconds": seconds,
        "duration": {"type": ["integer", "string"], "description": "Crazyrouter's `seconds`."},
        "size": {
            "type": "string",
            "pattern": r"^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$",
            "description": "One of the model's sizes.",
            "examples": ["1280x720"],
        },
        "image_url": {
            "type": "string",
            "description": "A reference image: https only, resolving to public addresses "
            "(`invalid_url` otherwise), or a base64 `data:` URL of an allowed type.",
        },
        "storyboard": storyboard,
        "private": {
            "type": ["boolean", "string"],
            "description": "Sent upstream as true whatever is asked, unless the team's config "
            "says `videos_private: false`.",
        },
    }
    if multipart:
        props["input_reference"] = {
            "type": "string",
            "format": "binary",
            "description": "An uploaded jpeg, png or webp up to `videos.reference_max_bytes` "
            "(`file_too_large` beyond).",
        }
        props["input_reference[image_url]"] = {"type": "string", "description": "As image_url."}
        props["storyboard"] = {
            "description": "As in JSON, or as a JSON string.",
            "anyOf": [storyboard, STRING],
        }
    else:
        props["input_reference"] = _object({"image_url": STRING})
    for name in extra_fields:
        props.setdefault(name, {"description": "Passed upstream as is (`videos.extra_fields`)."})
    return {"type": "object", "properties": props, "additionalProperties": False}


def schemas(*, video_extra_fields: Sequence[str] = ()) -> dict[str, Schema]:
    """``components.schemas``; ``video_extra_fields`` are the create fields the config admits."""
    team_name = {"type": "string", "pattern": f"^{TEAM_NAME.pattern}$"}
    usage_of_limit = _object(
        {
            "limit": {"type": ["number", "null"], "description": "null: unlimited"},
            "used": {"type": "number"},
            "remaining": {"type": ["number", "null"]},
            "resets_at": nullable({"type": "string", "format": "date-time"}),
            "source": {"type": "string", "enum": ["config", "override"]},
        }
    )
    limits_usage = {
        "type": "object",
        "required": list(KINDS),
        "properties": {k: ref("LimitUsage") for k in KINDS},
    }
    quota_header = {
        "team": STRING,
        "currency": {"type": "string", "examples": ["USD"]},
        "time_zone": {"type": "string", "examples": ["UTC"]},
    }
    measures: dict[str, Schema] = {
        m: {"type": "number" if m in ("audio_seconds", "video_seconds", "spend") else "integer"}
        for m in MEASURES
    }
    key_limits = {
        "type": "object",
        "properties": {
            k: {
                "type": "number",
                "minimum": 0,
                "maximum": MAX_LIMIT,
                "description": _LIMIT_UNITS[k],
            }
            for k in KEY_LIMITS
        },
        "additionalProperties": False,
    }
    models = {
        "type": "array",
        "items": {"type": "string", "examples": ["gpt-4o-mini", "o4-*"]},
        "minItems": 1,
        "maxItems": MAX_MODELS,
        "description": "Model names or globs the key may call (and its team too).",
    }
    api_key = _object(
        {
            "id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
            "object": _const("gateway.api_key"),
            "name": STRING,
            "team": STRING,
            "prefix": {"type": "string", "examples": [PLACEHOLDER_KEY[:21]]},
            "user": {"type": "string", "description": "`key:<name>`, in logs and the ledger."},
            "state": {"type": "string", "enum": ["active", "expired", "revoked"]},
            "roles": {"type": "array", "items": STRING},
            "models": nullable({"type": "array", "items": STRING}),
            "limits": {"type": "object", "additionalProperties": {"type": "number"}},
            "created_at": EPOCH,
            "created_by": {"type": "string", "description": "`<team>/<user>` of its creator."},
            "expires_at": nullable(EPOCH),
            "last_used_at": nullable(EPOCH),
            "revoked_at": nullable(EPOCH),
            "previous_key_valid_until": nullable(EPOCH),
        }
    )
    secret = {
        "type": "string",
        "pattern": f"^{PATTERN.pattern}$",
        "examples": [PLACEHOLDER_KEY],
        "description": "The whole key: shown in this answer only.",
    }
    video_error = _object({"code": STRING, "message": STRING})
    video = _object(
        {
            "id": {"type": "string", "pattern": "^video_[0-9a-f]{32}$"},
            "object": _const("video"),
            "model": STRING,
            "status": {"type": "string", "enum": list(get_args(Status))},
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "created_at": EPOCH,
            "completed_at": nullable(EPOCH),
            "expires_at": {"type": "null"},
            "prompt": nullable(STRING),
            "size": STRING,
            "seconds": {"type": "string", "examples": ["8"]},
            "remixed_from_video_id": nullable(STRING),
            "error": nullable(video_error),
            "video": {
                "description": "Only once completed: the gateway's own content URL (never the "
                "upstream's), from `server.public_base_url`.",
                **_object(
                    {
                        "url": {"type": "string", "format": "uri"},
                        "duration": {"type": "integer"},
                        "width": {"type": ["integer", "null"]},
                        "height": {"type": ["integer", "null"]},
                    }
                ),
            },
        },
        optional=("video",),
    )
    job = _object(
        {
            "id": STRING,
            "object": _const("admin.video_job"),
            "team": STRING,
            "user": STRING,
            "model": STRING,
            "size": STRING,
            "seconds": {"type": "integer"},
            "status": {"type": "string", "enum": list(get_args(Status))},
            "progress": {"type": "integer"},
            "created_at": EPOCH,
            "completed_at": nullable(EPOCH),
            "upstream_key_id": {"type": "string", "description": "A key id, never a secret."},
            "upstream_id": STRING,
            "remixed_from": nullable(STRING),
            "deleted": {"type": "boolean"},
            "error": nullable(video_error),
            "quota": {
                "description": "Only on GET /admin/v1/jobs/{id}, while the reservation is kept.",
                **_object(
                    {
                        "state": nullable(STRING),
                        "outcome": nullable(STRING),
                        "day": nullable(STRING),
                        "month": nullable(STRING),
                        "video_seconds": {"type": "number"},
                        "spend": {"type": "number"},
                    }
                ),
            },
        },
        optional=("quota",),
    )
    return {
        "Error": {
            "description": "Every error the gateway answers: the OpenAI shape the SDK parses.",
            **_object(
                {
                    "error": _object(
                        {
                            "message": STRING,
                            "type": {
                                "type": "string",
                                "examples": ["invalid_request_error", "rate_limit_error"],
                            },
                            "param": nullable(STRING),
                            "code": STRING,
                        }
                    )
                }
            ),
        },
        "Health": _object({"status": _const("ok")}),
        "Readiness": _object(
            {
                "status": {"type": "string", "enum": ["ready", "not_ready"]},
                "checks": _object(
                    {
                        "redis": {"type": "string", "examples": ["ok"]},
                        "upstream_keys": {"type": "string", "examples": ["2 usable"]},
                    }
                ),
            }
        ),
        "LimitUsage": usage_of_limit,
        "LimitsUsage": limits_usage,
        "Quota": _object(
            {"object": _const("gateway.quota"), **quota_header, "limits": ref("LimitsUsage")}
        ),
        "Limits": _limits_document(
            KINDS, "Overrides of a team's limits, in the units people read; null: unlimited."
        ),
        "AdminTeam": _object(
            {
                "object": _const("admin.team"),
                "team": STRING,
                "configured": {"type": "boolean"},
                **{k: v for k, v in quota_header.items() if k != "team"},
                "overrides": ref("Limits"),
                "limits": ref("LimitsUsage"),
            }
        ),
        "AdminTeamList": _list_of("AdminTeam"),
        "UsageReset": {
            **_object({"window": {"type": "string", "enum": list(RESET_WINDOWS)}}),
            "additionalProperties": False,
        },
        "AdminJob": job,
        "AdminJobList": _list_of("AdminJob", paged=True),
        "UpstreamKey": _object(
            {
                "id": {"type": "string", "description": "The key's id; never its secret."},
                "object": _const("admin.upstream_key"),
                "state": {"type": "string", "enum": list(KEY_STATES)},
                "in_flight": {"type": "integer", "description": "On this replica."},
            }
        ),
        "UpstreamKeyList": _list_of("UpstreamKey"),
        "AuditEntry": _object(
            {
                "id": STRING,
                "object": _const("admin.audit_entry"),
                "time": nullable({"type": "string", "format": "date-time"}),
                "actor": _object({"team": nullable(STRING), "user": nullable(STRING)}),
                "action": nullable({"type": "string", "examples": ["limits.merge"]}),
                "target": nullable({"type": "string", "examples": ["team:search"]}),
                "before": {"description": "The state before the change (any JSON)."},
                "after": {"description": "The state after the change (any JSON)."},
            }
        ),
        "AuditLog": _object(
            {
                "object": _const("list"),
                "data": {"type": "array", "items": ref("AuditEntry")},
                "has_more": {"type": "boolean"},
                "next_before": nullable({"type": "string"}),
            }
        ),
        "UsageTotals": _object(measures),
        "UsageRow": {
            "description": "The grouping's fields (those in `group_by`), then the measures; an "
            'untagged call\'s tag is "".',
            "type": "object",
            "required": list(MEASURES),
            "properties": {**{g: STRING for g in GROUPS}, **measures},
        },
        "UsageReport": _object(
            {
                "object": _const("gateway.usage"),
                "from": {"type": "string", "format": "date"},
                "to": {"type": "string", "format": "date"},
                "group_by": {"type": "array", "items": {"type": "string", "enum": list(GROUPS)}},
                "currency": STRING,
                "data": {"type": "array", "items": ref("UsageRow")},
                "total": ref("UsageTotals"),
            }
        ),
        "KeyBill": _object(
            {
                "key": {"type": "string", "description": "An upstream key id, never a secret."},
                "upstream_spend": {
                    "type": ["number", "null"],
                    "description": "What the upstream billed since the baseline.",
                },
                "gateway_spend": {"type": ["number", "null"]},
                "drift": {"type": ["number", "null"], "description": "Upstream minus gateway."},
                "error": nullable(STRING),
            }
        ),
        "KeyBillList": _list_of("KeyBill"),
        "ApiKeyCreate": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {
                    "type": "string",
                    "pattern": f"^{NAME.pattern}$",
                    "description": "Unique among the team's keys that are not revoked.",
                },
                "expires_in_days": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": "At most `auth.api_key_max_days`; none: it never expires.",
                },
                "models": models,
                "limits": key_limits,
                "roles": {
                    "type": "array",
                    "items": STRING,
                    "description": "Admin routes only: `auth.admin_role` and/or "
                    "`auth.team_admin_role`.",
                },
            },
            "additionalProperties": False,
        },
        "ApiKeyRotate": {
            "type": "object",
            "properties": {
                "grace_seconds": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 30 * 86_400,
                    "description": "How long the old secret keeps working; default "
                    "`auth.api_key_rotate_grace_seconds`.",
                }
            },
            "additionalProperties": False,
        },
        "ApiKey": api_key,
        "ApiKeyWithSecret": {
            "description": "The key's view and, this once, its secret.",
            **_object({**api_key["properties"], "key": secret}),
        },
        "ApiKeyList": _list_of("ApiKey"),
        "Video": video,
        "VideoList": _list_of("Video", paged=True),
        "VideoDeleted": _object(
            {"id": STRING, "object": _const("video.deleted"), "deleted": {"const": True}}
        ),
        "VideoCreate": _video_create(video_extra_fields, multipart=False),
        "VideoCreateForm": _video_create(video_extra_fields, multipart=True),
        "VideoRemix": {
            **_object({"prompt": STRING}),
            "additionalProperties": False,
        },
        "TeamName": team_name,
    }
