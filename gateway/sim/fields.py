"""Reading request fields the way OpenAI validates them, JSON or multipart alike (pure).

Multipart carries every value as a string, so numbers are accepted in both spellings.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from starlette.responses import JSONResponse

from gateway.sim.errors import invalid_field


class BadField(ValueError):
    def __init__(self, param: str, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code

    def response(self) -> JSONResponse:
        return invalid_field(self.param, str(self), self.code)


def missing(param: str) -> BadField:
    return BadField(param, f"Missing required parameter: '{param}'.", "missing_required_parameter")


def text(doc: dict[str, Any], name: str, default: str | None = None) -> str:
    """A string field; required unless it has a default."""
    value = doc.get(name)
    if value is None or value == "":
        if default is None:
            raise missing(name)
        return default
    if not isinstance(value, str):
        raise BadField(name, f"Invalid type for '{name}': expected a string.", "invalid_type")
    return value


def integer(
    doc: dict[str, Any], name: str, default: int | None, *, low: int, high: int | None = None
) -> int | None:
    value = doc.get(name)
    if value is None or value == "":
        return default
    wrong = BadField(name, f"Invalid type for '{name}': expected an integer.", "invalid_type")
    if isinstance(value, bool | float):
        raise wrong
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise wrong from None
    if number < low or (high is not None and number > high):
        span = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise BadField(name, f"'{name}' must be {span}; got {number}.")
    return number


def choice(doc: dict[str, Any], name: str, options: Collection[str], default: str) -> str:
    value = doc.get(name)
    if value is None or value == "":
        return default
    if value not in options:
        allowed = ", ".join(f"'{o}'" for o in options)
        raise BadField(name, f"Invalid value: '{value}'. Supported values are: {allowed}.")
    return str(value)


def flag(doc: dict[str, Any], name: str) -> bool:
    value = doc.get(name)
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return bool(value)
