"""``GET /api/pricing``: new-api's public price list, for the simulator's catalog models.

The shape is new-api's (model/pricing.go and controller/pricing.go in QuantumNous/new-api):
``{"success": true, "data": [{model_name, quota_type, model_ratio, model_price,
completion_ratio, cache_ratio?, enable_groups, supported_endpoint_types, ...}], "group_ratio":
{...}, "usable_group": {...}, ...}``. Ratios are new-api's units: ratio 1 is $2 per million
input tokens; a ``quota_type`` 1 model costs ``model_price`` USD per call. Tests change
``SimState.prices`` and ``SimState.group_ratio`` to see a refresh pick the change up.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response

from gateway.sim.call import Call
from gateway.sim.catalog import MODELS
from gateway.sim.state import SimState

GROUP_RATIO: dict[str, float] = {"default": 1, "vip": 0.8}
_USABLE = {"default": "Default group", "vip": "VIP group"}


def _tokens(
    ratio: float, completion: float, endpoint: str, cache: float | None = None
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "quota_type": 0,
        "model_ratio": ratio,
        "model_price": 0,
        "completion_ratio": completion,
        "supported_endpoint_types": [endpoint],
    }
    if cache is not None:
        entry["cache_ratio"] = cache
    return entry


def _per_call(price: float, endpoint: str) -> dict[str, Any]:
    return {
        "quota_type": 1,
        "model_ratio": 0,
        "model_price": price,
        "completion_ratio": 0,
        "supported_endpoint_types": [endpoint],
    }


# What new-api's defaults say for these models (OpenAI's list prices, in ratios).
PRICES: dict[str, dict[str, Any]] = {
    "sora-2": _per_call(0.4, "openai-video"),
    "sora-2-pro": _per_call(1.2, "openai-video"),
    "veo-3.1-fast": _per_call(0.6, "openai-video"),
    "veo-3.1-quality": _per_call(1.6, "openai-video"),
    "gpt-4o-mini": _tokens(0.075, 4, "openai", cache=0.5),
    "gpt-4o": _tokens(1.25, 4, "openai", cache=0.5),
    "o4-mini": _tokens(0.55, 4, "openai", cache=0.25),
    "gpt-3.5-turbo-instruct": _tokens(0.75, 1.3333333333333333, "openai"),
    "text-embedding-3-small": _tokens(0.01, 1, "embeddings"),
    "text-embedding-3-large": _tokens(0.065, 1, "embeddings"),
    "omni-moderation-latest": _tokens(0, 1, "openai"),
    "dall-e-2": _per_call(0.02, "image-generation"),
    "dall-e-3": _per_call(0.04, "image-generation"),
    "gpt-image-1": _per_call(0.05, "image-generation"),
    "tts-1": _tokens(7.5, 1, "openai"),
    "gpt-4o-mini-tts": _tokens(0.3, 1, "openai"),
    "whisper-1": _tokens(15, 1, "openai"),
    "gpt-4o-transcribe": _tokens(1.25, 4, "openai"),
}
assert set(PRICES) == set(MODELS), "every catalog model has a price"


def default_prices() -> dict[str, dict[str, Any]]:
    return {name: dict(entry) for name, entry in PRICES.items()}


async def pricing(state: SimState, call: Call) -> Response:
    groups = sorted(state.group_ratio)
    data = [
        {
            "model_name": name,
            "owner_by": "",
            "enable_groups": groups,
            "wallet_available": True,
            "subscription_available": True,
            **entry,
        }
        for name, entry in state.prices.items()
    ]
    return JSONResponse(
        {
            "success": True,
            "data": data,
            "vendors": [],
            "group_ratio": state.group_ratio,
            "usable_group": {g: _USABLE.get(g, g) for g in groups},
            "supported_endpoint": {},
            "auto_groups": [],
            "pricing_version": "sim",
        }
    )


async def usage_token(state: SimState, call: Call) -> Response:
    """new-api's ``GET /api/usage/token``: what the calling key has been billed, in quota."""
    used = state.billed.get(call.key or "", 0)
    return JSONResponse(
        {
            "code": True,
            "message": "ok",
            "data": {
                "object": "token_usage",
                "name": "sim",
                "total_granted": 0,
                "total_used": used,
                "total_available": 0,
                "unlimited_quota": True,
                "model_limits": {},
                "model_limits_enabled": False,
                "expires_at": 0,
            },
        }
    )
