"""What an admin sends, validated: team names, limit documents, reset windows, page sizes.

Pure functions that raise ``InvalidRequest`` naming the ``param``, so every bad input gets a
400 in the OpenAI error shape before anything touches Redis.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from gateway.errors import InvalidRequest
from gateway.quota.model import KINDS, Limit, LimitError, parse_limit
from gateway.web.json_values import check_value_count

# The settings' and the token verifier's rule: the name becomes part of Redis key names
# (inside a hash tag), so it must never carry a brace, a colon or a newline.
TEAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RESET_WINDOWS = ("minute", "day", "month", "all")
DEFAULT_TEAM = "default"  # the teams table's fallback entry, not a team


def well_formed_team(team: str) -> bool:
    # fullmatch, not match with "$": "$" also matches before a trailing newline.
    return TEAM_NAME.fullmatch(team) is not None and team != DEFAULT_TEAM


def check_team(team: str) -> str:
    if team == DEFAULT_TEAM:
        # An override on "default" would bind only a team literally called so, not every
        # team: refuse rather than let an admin believe the defaults changed.
        raise InvalidRequest(
            "'default' holds the config's fallback limits; change them in the config.",
            code="invalid_value",
            param="team",
        )
    if not well_formed_team(team):
        raise InvalidRequest(
            "Team names are 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit.",
            code="invalid_value",
            param="team",
        )
    return team


# An admin body is a handful of fields (a key's 64 models at most); counted before parsing,
# since a team admin's body is parsed on the event loop every team shares.
MAX_BODY_VALUES = 1_000


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object of at most MAX_BODY_VALUES values."""
    check_value_count(raw, MAX_BODY_VALUES)
    try:
        doc = json.loads(raw) if raw.strip() else None
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the stack
        doc = None
    if not isinstance(doc, dict):
        raise InvalidRequest("The body must be a JSON object.", code="invalid_json")
    return doc


def parse_limits(doc: Mapping[str, Any]) -> dict[str, Limit]:
    """Limit kinds to a number or null (unlimited), in the units a person reads."""
    out: dict[str, Limit] = {}
    for key, value in doc.items():
        if key not in KINDS:
            raise InvalidRequest(
                f"Unknown limit {key!r}; the limits are {', '.join(KINDS)}.",
                code="unknown_parameter",
                param=key,
            )
        try:
            out[key] = parse_limit(key, value)
        except LimitError as exc:
            raise InvalidRequest(f"{key} {exc.problem}.", code="invalid_value", param=key) from None
    return out


def parse_window(doc: Mapping[str, Any]) -> str:
    unknown = [k for k in doc if k != "window"]
    if unknown:
        raise InvalidRequest(
            f"Unknown parameter {unknown[0]!r}.", code="unknown_parameter", param=unknown[0]
        )
    if "window" not in doc:
        raise InvalidRequest(
            "window is required.", code="missing_required_parameter", param="window"
        )
    window = doc["window"]
    if window not in RESET_WINDOWS:
        raise InvalidRequest(
            f"window must be one of {', '.join(RESET_WINDOWS)}.",
            code="invalid_value",
            param="window",
        )
    return str(window)


def page_size(value: str | None, *, default: int, maximum: int, param: str = "limit") -> int:
    if value is None:
        return default
    n = int(value) if re.fullmatch(r"[0-9]{1,6}", value) else 0
    if not 1 <= n <= maximum:
        raise InvalidRequest(
            f"{param} must be a whole number between 1 and {maximum}.",
            code="invalid_value",
            param=param,
        )
    return n
