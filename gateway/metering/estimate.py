"""The estimate a call is admitted on: an upper bound of what it can consume (pure).

Input tokens are bounded by the request's size in bytes: every tokenizer the upstream's
models use (byte-level BPE) spends at least one byte of text per token, and the JSON around the
text (keys, quotes, message framing) is longer than the few tokens the model adds per message.
An image, audio clip or file sent by URL is only a few bytes but costs tokens, so each one
adds ``pricing.image_input_tokens``. No tokenizer runs on the hot path: the bound is one
length and one walk over the parsed body.

Output tokens are bounded by the caller's own cap (``max_tokens``, ``max_completion_tokens``,
``max_output_tokens``) times the number of answers asked for; a call that names no cap is
sent upstream with the model's cap added, so that the bound holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from types import MappingProxyType
from typing import Any, NamedTuple

from gateway.errors import InvalidRequest
from gateway.metering import kinds
from gateway.metering.prices import ModelPrice, Usage
from gateway.upstream.json_keys import fold, may_spell

# What makes a part of the input cost tokens beyond its bytes: an object with one of these
# keys, or of one of these types, is one image, file or audio clip.
_MEDIA = frozenset(
    {
        "image_url",
        "input_image",
        "file_url",
        "input_file",
        "input_audio",
        "file",
        # new-api takes these too (Gemini's video and audio understanding)
        "video_url",
        "input_video",
        "audio_url",
    }
)
# new-api's thinking adapter raises a "*-thinking" Claude model's max_tokens to at least this
# (its thinking budget must exceed 1024), whatever the call asked for.
THINKING_MIN_CAP = 1280
# Service tiers the list price is for: new-api multiplies the others by a ratio of its own.
_LIST_TIERS = frozenset({"auto", "default"})
# Tools the upstream runs itself and bills per call, outside the usage the answer reports.
_OWN_TOOLS = frozenset({"function", "custom"})
MAX_N = 128  # answers per call the upstream accepts at most (chat's n)
MAX_CAP = 10_000_000  # a max_tokens beyond this is not a cap anyone means
MIN_SPEED, MAX_SPEED = 0.25, 4.0  # what the speech API accepts
LEGACY_DEFAULT_CAP = 16  # the completions API's max_tokens when a call names none
# Opus speech at 4.8 kbit/s: below what any format the transcription API takes is made of.
AUDIO_BYTES_PER_SECOND = 600


class Estimate(NamedTuple):
    model: str
    bound: Usage
    size: str | None = None
    quality: str | None = None
    # Fields the forwarded body gains so that the bound holds (an output cap).
    inject: Mapping[str, Any] = MappingProxyType({})


def _bad(param: str, message: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, code=code, param=param)


def _int_field(doc: Mapping[str, Any], name: str, *, low: int, high: int) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, f"'{name}' must be an integer.", "invalid_type")
    if not low <= value <= high:
        raise _bad(name, f"'{name}' must be between {low} and {high}.")
    return value


def _model(doc: Mapping[str, Any], default: str | None) -> str:
    value = doc.get("model", default)
    if value is None:
        raise _bad("model", "You must provide a model parameter.", "missing_required_parameter")
    if not isinstance(value, str) or not value or len(value) > 256:
        raise _bad("model", "'model' must be a non-empty string.", "invalid_type")
    return value


def model_of(kind: str, doc: Mapping[str, Any]) -> str:
    """The model a call names (or the upstream's default for routes that have one)."""
    if kind in (kinds.IMAGES, kinds.IMAGE_UPLOAD):
        return _model(doc, "dall-e-2")
    if kind == kinds.MODERATIONS:
        return _model(doc, "omni-moderation-latest")
    if kind == kinds.REQUEST:
        # A route added in config may have no model: '-' is what its price entry is named.
        return "-" if doc.get("model") in (None, "") else _model(doc, None)
    return _model(doc, None)


def media_parts(doc: Any) -> int:
    """How many images, files and audio clips a parsed body sends. Read from the parsed
    document, not the bytes, so that no escape (``image\\u005furl``) or spelling the
    upstream folds (``Image_URL``) hides one."""
    found = 0
    stack = [doc]
    while stack:  # iterate: the parser bounds depth, the stack need not
        item = stack.pop()
        if isinstance(item, dict):
            kind = next((v for k, v in item.items() if fold(k) == "type"), None)
            if (isinstance(kind, str) and kind.lower() in _MEDIA) or any(
                fold(k) in _MEDIA for k in item
            ):
                found += 1
            stack.extend(v for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))
    return found


_MEDIA_WORDS = (b"image", b"file", b"audio", b"video")  # every name in _MEDIA has one


def input_bound(doc: Any, body: bytes, media_tokens: int) -> int:
    parts = media_parts(doc) if may_spell(body, _MEDIA_WORDS) else 0
    return len(body) + parts * media_tokens


def _check_tools(doc: Mapping[str, Any]) -> None:
    if doc.get("web_search_options") is not None:
        # new-api turns it into the provider's web search tool, billed per search.
        raise _bad(
            "web_search_options",
            "Web search runs on the upstream and is billed per search outside the usage the "
            "gateway meters.",
            "unsupported_parameter",
        )
    tier = doc.get("service_tier")
    if tier is not None and not (isinstance(tier, str) and tier in _LIST_TIERS):
        raise _bad(
            "service_tier",
            f"The service tier {tier!r} is priced apart from the list prices the gateway "
            "charges; only 'auto' and 'default' are allowed.",
            "unsupported_parameter",
        )
    tools = doc.get("tools")
    if not isinstance(tools, list):
        return
    for tool in tools:
        kind = (
            next((v for k, v in tool.items() if fold(k) == "type"), None)
            if isinstance(tool, dict)
            else None
        )
        if isinstance(kind, str) and kind not in _OWN_TOOLS:
            raise _bad(
                "tools",
                f"The tool type '{kind}' runs on the upstream and is billed per call outside "
                "the usage the gateway meters; only function and custom tools are allowed.",
                "unsupported_parameter",
            )


def _audio_part(part: Any) -> bool:
    if not isinstance(part, dict):
        return False
    kind = next((v for k, v in part.items() if fold(k) == "type"), None)
    return (isinstance(kind, str) and kind.lower() == "input_audio") or any(
        fold(k) == "input_audio" for k in part
    )


def _check_audio(doc: Mapping[str, Any], body: bytes) -> None:
    """new-api bills a chat's audio tokens, in and out, at audio ratios of their own, apart
    from the list prices the gateway charges: a call that asks for or sends audio is refused
    rather than charged as text."""
    modalities = doc.get("modalities")
    if doc.get("audio") is not None or (
        isinstance(modalities, list) and any(m == "audio" for m in modalities)
    ):
        param = "audio" if doc.get("audio") is not None else "modalities"
        raise _bad(
            param,
            "Audio output is billed at audio rates apart from the list prices the gateway "
            "charges; ask for text.",
            "unsupported_parameter",
        )
    if not may_spell(body, (b"input_audio",)):
        return
    messages = doc.get("messages")
    for message in messages if isinstance(messages, list) else ():
        content = (
            next((v for k, v in message.items() if fold(k) == "content"), None)
            if isinstance(message, dict)
            else None
        )
        if isinstance(content, list) and any(_audio_part(p) for p in content):
            raise _bad(
                "messages",
                "Audio input is billed at audio rates apart from the list prices the gateway "
                "charges; send a transcription instead.",
                "unsupported_parameter",
            )


def _speech_characters(doc: Mapping[str, Any]) -> int:
    """What a speech call is charged: the characters of ``input`` and of ``instructions`` (the
    model reads both), stretched by a ``speed`` below 1 (slower speech is more audio, which
    new-api bills by its length). A stream of events is billed by the tokens it reports,
    which no character price covers: refused."""
    text = doc.get("input")
    if not isinstance(text, str):
        raise _bad("input", "'input' must be a string.", "invalid_type")
    told = doc.get("instructions")
    if told is not None and not isinstance(told, str):
        raise _bad("instructions", "'instructions' must be a string.", "invalid_type")
    if doc.get("stream_format") not in (None, "audio"):
        raise _bad(
            "stream_format",
            "Speech as a stream of events is billed by the tokens it reports, apart from the "
            "characters the gateway charges; ask for audio.",
            "unsupported_parameter",
        )
    speed = doc.get("speed")
    if speed is None:
        speed = 1
    elif isinstance(speed, bool) or not isinstance(speed, int | float):
        raise _bad("speed", "'speed' must be a number.", "invalid_type")
    elif not MIN_SPEED <= speed <= MAX_SPEED:
        raise _bad("speed", f"'speed' must be between {MIN_SPEED} and {MAX_SPEED}.")
    stretch = Fraction(1) / min(Fraction(speed), Fraction(1))
    return math.ceil(len(text) * stretch) + len(told or "")


def _upstream_cap(model: str | None, cap: int) -> int:
    """The output cap the upstream will really apply to a call that sends ``cap``."""
    if model is not None and model.endswith("-thinking"):
        return max(cap, THINKING_MIN_CAP)
    return cap


def _prompts(prompt: Any) -> int:
    """How many prompts a legacy completions call sends (a list of strings or of token lists)."""
    if isinstance(prompt, list) and prompt and not all(isinstance(t, int) for t in prompt):
        return len(prompt)
    return 1


def estimate(
    kind: str,
    doc: Mapping[str, Any],
    body: bytes,
    price: ModelPrice | None,
    *,
    default_cap: int,
    media_tokens: int,
    max_audio_seconds: int,
) -> Estimate:
    """The bound for a call of ``kind`` whose parsed body (or form fields) is ``doc``; raises
    InvalidRequest for a field the bound depends on that is not what the API accepts."""
    model = model_of(kind, doc)
    cap = (price.max_output_tokens if price else None) or default_cap
    if kind in (kinds.CHAT, kinds.RESPONSES):
        _check_tools(doc)
    if kind == kinds.CHAT:
        _check_audio(doc, body)
        n = _int_field(doc, "n", low=1, high=MAX_N) or 1
        given = _int_field(doc, "max_completion_tokens", low=1, high=MAX_CAP)
        legacy = _int_field(doc, "max_tokens", low=1, high=MAX_CAP)
        # Given both, which one an upstream model obeys is its own choice: bound by the larger.
        caps = [c for c in (given, legacy) if c is not None]
        out = max(caps) if caps else None
        inject = {} if out is not None else {"max_completion_tokens": cap}
        return Estimate(
            model,
            Usage(
                input_tokens=input_bound(doc, body, media_tokens),
                output_tokens=n * _upstream_cap(model, out or cap),
            ),
            inject=inject,
        )
    if kind == kinds.RESPONSES:
        out = _int_field(doc, "max_output_tokens", low=1, high=MAX_CAP)
        inject = {} if out is not None else {"max_output_tokens": cap}
        return Estimate(
            model,
            Usage(
                input_tokens=input_bound(doc, body, media_tokens),
                output_tokens=_upstream_cap(model, out or cap),
            ),
            inject=inject,
        )
    if kind == kinds.COMPLETIONS:
        n = _int_field(doc, "n", low=1, high=MAX_N) or 1
        best = _int_field(doc, "best_of", low=1, high=MAX_N) or 1
        # 1 at least, as OpenAI requires: the upstream's Go parser would drop a 0 (omitempty)
        # and the model would write up to its default instead.
        out = _int_field(doc, "max_tokens", low=1, high=MAX_CAP)
        # The legacy API's own default cap is 16 tokens: sent explicitly, the answer is the
        # same and the bound cannot depend on the upstream keeping that default.
        inject = {} if out is not None else {"max_tokens": LEGACY_DEFAULT_CAP}
        per = LEGACY_DEFAULT_CAP if out is None else out
        total = per * max(n, best) * _prompts(doc.get("prompt"))
        return Estimate(
            model,
            Usage(input_tokens=input_bound(doc, body, media_tokens), output_tokens=total),
            inject=inject,
        )
    if kind in (kinds.EMBEDDINGS, kinds.MODERATIONS):
        return Estimate(model, Usage(input_tokens=input_bound(doc, body, media_tokens)))
    if kind in (kinds.IMAGES, kinds.IMAGE_UPLOAD):
        n = _int_field(doc, "n", low=1, high=10) or 1
        # What DALL-E makes when a call names neither, so that it is priced as made.
        dalle = model.startswith("dall-e")
        size = doc.get("size") or ("1024x1024" if dalle else None)
        quality = doc.get("quality") or ("standard" if dalle else None)
        return Estimate(
            model,
            Usage(images=n),
            size=size if isinstance(size, str) else None,
            quality=quality if isinstance(quality, str) else None,
        )
    if kind == kinds.SPEECH:
        return Estimate(model, Usage(characters=_speech_characters(doc)))
    if kind == kinds.TRANSCRIPTION:
        # The duration is known only once the upstream has decoded the audio; no accepted
        # format holds audio in fewer bytes a second than the floor, so the upload's size
        # bounds it (a 25 MB file of low-bitrate speech can be hours long).
        seconds = Fraction(max(max_audio_seconds, -(-len(body) // AUDIO_BYTES_PER_SECOND)))
        return Estimate(
            model,
            Usage(input_tokens=len(body), output_tokens=cap, audio_seconds=seconds),
        )
    return Estimate(model, Usage())
