"""Validate a caller's video create request and build Crazyrouter's create body (pure).

Callers send the SDK's fields (``seconds`` as a string, ``input_reference`` as a file or
``input_reference[image_url]``) or Crazyrouter's documented ones (``duration``, ``image_url``,
``storyboard``, ``private``), as JSON or multipart. Every rule failure is a 400 naming the
``param``, raised before anything is sent upstream.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import InvalidRequest
from gateway.settings import VideoModel, VideoSettings
from gateway.web.json_values import check_value_count

_SIZE = re.compile(r"^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$")
_DIGITS = re.compile(r"[0-9]{1,18}")
_KNOWN = frozenset(
    {
        "prompt",
        "model",
        "seconds",
        "duration",
        "size",
        "input_reference",
        "input_reference[image_url]",
        "image_url",
        "storyboard",
        "private",
    }
)


@dataclass(frozen=True)
class Upload:
    """A file from a multipart body, already read (its size is bounded by the body limit)."""

    filename: str | None
    content_type: str | None
    data: bytes


@dataclass(frozen=True)
class CreateRequest:
    model: str
    prompt: str | None
    size: str
    seconds: int
    image_url: str | None  # a caller's URL: still to be checked against the URL policy
    body: dict[str, Any] = field(repr=False)  # what goes upstream


def bad(param: str, message: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, code=code, param=param)


def _int_field(value: Any, param: str) -> int:
    if isinstance(value, bool):
        raise bad(param, f"{param} must be a whole number of seconds.")
    if isinstance(value, int):
        return value
    # ASCII digits only: str.isdigit() accepts "²", which int() refuses; and a bounded length,
    # since int() refuses more than 4300 digits.
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        return int(value.strip())
    raise bad(param, f"{param} must be a whole number of seconds.")


def _bool_field(value: Any, param: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise bad(param, f"{param} must be true or false.")


def _storyboard(value: Any, limits: VideoModel) -> list[dict[str, Any]]:
    if isinstance(value, str):
        check_value_count(value, param="storyboard")  # a form field of up to 32 MiB
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the stack
            raise bad("storyboard", "storyboard must be a JSON array of scenes.") from None
    if not isinstance(value, list) or not value:
        raise bad("storyboard", "storyboard must be a non-empty array of {prompt, duration}.")
    if len(value) > limits.max_storyboard_scenes:
        raise bad("storyboard", f"storyboard allows at most {limits.max_storyboard_scenes} scenes.")
    scenes = []
    for i, scene in enumerate(value):
        if not isinstance(scene, dict) or set(scene) - {"prompt", "duration"}:
            raise bad(f"storyboard[{i}]", "each scene must be {prompt, duration}.")
        prompt = scene.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise bad(f"storyboard[{i}].prompt", "each scene needs a prompt.")
        if len(prompt) > limits.max_prompt_chars:
            raise bad(f"storyboard[{i}].prompt", "the scene prompt is too long.")
        duration = _int_field(scene.get("duration"), f"storyboard[{i}].duration")
        if duration < 1:
            raise bad(f"storyboard[{i}].duration", "scene durations must be at least 1 second.")
        scenes.append({"prompt": prompt, "duration": duration})
    return scenes


def _data_url(upload: Upload, settings: VideoSettings) -> str:
    ctype = (upload.content_type or "").split(";")[0].strip().lower()
    if ctype not in settings.reference_types:
        raise bad(
            "input_reference",
            f"input_reference must be one of {', '.join(settings.reference_types)}.",
        )
    if len(upload.data) > settings.reference_max_bytes:
        raise bad("input_reference", "input_reference is too large.", code="file_too_large")
    if not upload.data:
        raise bad("input_reference", "input_reference is empty.")
    return f"data:{ctype};base64,{base64.b64encode(upload.data).decode()}"


def _check_data_url(url: str, settings: VideoSettings, param: str) -> None:
    head, sep, payload = url.partition(",")
    ctype = head[5:].split(";")[0].lower()
    if not sep or ";base64" not in head or ctype not in settings.reference_types:
        raise bad(param, f"{param} must be a base64 data URL of an allowed image type.")
    if len(payload) * 3 // 4 > settings.reference_max_bytes:
        raise bad(param, f"{param} is too large.", code="file_too_large")


def parse_create(
    fields: Mapping[str, Any],
    settings: VideoSettings,
    *,
    force_private: bool,
    upload: Upload | None = None,
    source_model: str | None = None,
) -> CreateRequest:
    """Validate ``fields`` (JSON object or form fields) against the model table."""
    unknown = sorted(k for k in fields if k not in _KNOWN and k not in settings.extra_fields)
    if unknown:
        raise bad(unknown[0], f"Unknown parameter: {unknown[0]}.", code="unknown_parameter")
    raw_model = fields.get("model") or source_model
    if raw_model is not None and not isinstance(raw_model, str):
        raise bad("model", "model must be a string.")
    model = settings.resolve_model(raw_model)
    limits = settings.model(model)
    if limits is None:
        raise bad("model", f"The model {raw_model or model!r} is not available.", "model_not_found")

    prompt = fields.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise bad("prompt", "prompt must be a string.")
    if prompt is not None and len(prompt) > limits.max_prompt_chars:
        raise bad("prompt", f"prompt allows at most {limits.max_prompt_chars} characters.")

    storyboard = None
    if fields.get("storyboard") is not None:
        storyboard = _storyboard(fields["storyboard"], limits)
    if not (prompt and prompt.strip()) and storyboard is None:
        raise bad("prompt", "prompt is required.", code="missing_required_parameter")

    seconds = None
    for param in ("seconds", "duration"):
        if fields.get(param) is not None:
            value = _int_field(fields[param], param)
            if seconds is not None and value != seconds:
                raise bad("duration", "seconds and duration disagree.")
            seconds = value
    if storyboard is not None:
        total = sum(s["duration"] for s in storyboard)
        if seconds is not None and seconds != total:
            raise bad("storyboard", f"storyboard durations add up to {total}, not {seconds}.")
        seconds = total
    if seconds is None:
        seconds = limits.default_seconds
    if limits.seconds and seconds not in limits.seconds:
        allowed = ", ".join(str(x) for x in limits.seconds)
        raise bad("seconds", f"seconds must be one of {allowed} for {model}.")
    if seconds < 1 or seconds > limits.max_seconds:
        raise bad("seconds", f"seconds must be between 1 and {limits.max_seconds} for {model}.")

    size = fields.get("size") or limits.default_size or "1280x720"
    if not isinstance(size, str) or not _SIZE.fullmatch(size):  # match() allows a final "\n"
        raise bad("size", "size must look like 1280x720.")
    if limits.sizes and size not in limits.sizes:
        raise bad("size", f"size must be one of {', '.join(limits.sizes)} for {model}.")

    image_url = fields.get("image_url")
    ref = fields.get("input_reference")
    nested = fields.get("input_reference[image_url]")
    if isinstance(ref, dict):
        if set(ref) - {"image_url"}:
            raise bad("input_reference", "input_reference accepts only image_url.")
        nested = ref.get("image_url")
    elif ref is not None and upload is None:
        raise bad("input_reference", "input_reference must be an uploaded image file.")
    candidates = [u for u in (image_url, nested) if u is not None]
    if upload is not None:
        candidates.append(_data_url(upload, settings))
    if len(candidates) > 1:
        raise bad("input_reference", "Give one reference image, not several.")
    url = candidates[0] if candidates else None
    if url is not None and (not isinstance(url, str) or not url):
        raise bad("image_url", "image_url must be a URL.")
    if url is not None and url.startswith("data:") and upload is None:
        _check_data_url(url, settings, "image_url")

    asked = _bool_field(fields["private"], "private") if fields.get("private") is not None else None

    body: dict[str, Any] = {"model": model, "size": size, "duration": seconds}
    if prompt:
        body["prompt"] = prompt
    if storyboard is not None:
        body["storyboard"] = storyboard
    if url is not None:
        body["image_url"] = url
    # Company videos stay out of Crazyrouter's public gallery unless the team may publish.
    if force_private or asked is not None:
        body["private"] = True if force_private else asked
    for extra in settings.extra_fields:
        if extra in fields:
            body[extra] = fields[extra]
    return CreateRequest(
        model=model,
        prompt=prompt,
        size=size,
        seconds=seconds,
        image_url=url if url is not None and not url.startswith("data:") else None,
        body=body,
    )
