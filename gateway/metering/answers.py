"""What a call consumed, read from the upstream's answer (pure).

JSON answers carry ``usage``; streams carry it in an event the tap in ``streams`` finds. An
answer without usage (a shape that has none, a cut connection) yields None, and the call is
charged its estimate.
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from typing import Any

import orjson

from gateway.metering import kinds
from gateway.metering.prices import Usage


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _cached(details: Any) -> int:
    return _count(details.get("cached_tokens")) if isinstance(details, dict) else 0


def from_usage(kind: str, usage: Any) -> Usage | None:
    """A ``usage`` object of chat, completions, embeddings or responses (either naming)."""
    if not isinstance(usage, dict):
        return None
    get = usage.get
    counts = (
        get("prompt_tokens"),
        get("input_tokens"),
        get("completion_tokens"),
        get("output_tokens"),
    )
    if counts == _NONE:
        if _TOKEN_NAMES.isdisjoint(usage) and get("type") == "duration":  # whisper's seconds
            return _heard(get("seconds"))
        return None  # named with nulls only: a count of nothing, charged the estimate
    for value in counts:
        if value is not None and (type(value) is not int or not 0 <= value <= MAX_COUNT):
            # A count that is not a whole number of tokens (text, a fraction, below 0) says
            # nothing reliable: the call is charged its estimate, never 0 for it.
            return None
    # Both namings can come in one object: new-api's usage writes all four, 0 where its
    # channel filled only one (a chat answer converted from Claude carries input_tokens and
    # output_tokens 0). Each count is the larger of its two names, so no naming's 0 ever
    # hides what the other reports.
    prompt, given, completion, made = counts
    inp = max(prompt or 0, given or 0)
    out = 0 if kind == kinds.EMBEDDINGS else max(completion or 0, made or 0)
    if inp == 0 and out == 0:
        # No call reads nothing: new-api, given zeros by its channel, bills a count of its
        # own, which the gateway does not make. The estimate bounds it.
        return None
    cached = max(_cached(get("prompt_tokens_details")), _cached(get("input_tokens_details")))
    return Usage(input_tokens=inp, cached_tokens=min(cached, inp), output_tokens=out)


_NONE = (None, None, None, None)
_TOKEN_NAMES = frozenset({"prompt_tokens", "completion_tokens", "input_tokens", "output_tokens"})
# More than any call consumes: a count past it is a broken answer, charged the estimate (at
# 2**63 it broke the settlement, and the per-key spend counters with it).
MAX_COUNT = 10**12
# Seconds of audio in a transcription, likewise (a 25 MB upload at 600 bytes a second is
# under 12 hours).
MAX_SECONDS = 10**6


def most(seen: Usage | None, found: Usage) -> Usage:
    """Two reports of one call's usage (an upstream that repeats it, or follows it with
    zeros) as one that never charges less than either: each count the larger, the cached
    part (charged less) the smaller."""
    if seen is None:
        return found
    inp = max(seen.input_tokens, found.input_tokens)
    return Usage(
        input_tokens=inp,
        cached_tokens=min(seen.cached_tokens, found.cached_tokens, inp),
        output_tokens=max(seen.output_tokens, found.output_tokens),
        images=max(seen.images, found.images),
        audio_seconds=max(seen.audio_seconds, found.audio_seconds),
        characters=max(seen.characters, found.characters),
        requests=max(seen.requests, found.requests),
    )


def _heard(value: Any) -> Usage | None:
    """The audio a duration the answer reports; None when it is no number of seconds a call
    could take (text, below 0, not finite, absurdly long): the call is charged its estimate."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    if not 0 <= value <= MAX_SECONDS:
        return None
    return Usage(audio_seconds=Fraction(str(value)))


# Digits as zeros, to find runs of them with a plain search: a regular expression scanned a
# 534-byte answer in 4 us, more than orjson takes to read it.
_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_RUN = b"0" * 19
_ZEROS = re.compile(rb"0+")
# What may come before the digits of a number, its fraction or its exponent.
_NUMBER_STARTS = frozenset(b" \t\n\r[:,.eE+-")


def _long_number(data: bytes | bytearray) -> bool:
    """Whether ``data`` has a number of 19 digits or more, which orjson may read as a float
    where the standard parser keeps an integer (past 2**64, or below -2**63:
    -9999999999999999999 has 19). A run of digits inside a string (an id such as
    "chatcmpl-000...") has a letter before it and is no number."""
    digits = data.translate(_AS_ZEROS)
    at = digits.find(_RUN)
    while at >= 0:
        if at == 0 or data[at - 1] in _NUMBER_STARTS:
            return True
        run = _ZEROS.match(digits, at)
        assert run is not None
        at = digits.find(_RUN, run.end())
    return False


def loads(data: bytes | bytearray) -> Any:
    """``data`` as the standard library's parser reads it, in a fifth of its time: orjson
    reads every document it accepts the same way, but numbers past 64 bits (as floats);
    what it refuses (NaN, a BOM, an escaped lone surrogate, UTF-16) goes to the standard
    parser, which raises ValueError or RecursionError as before."""
    if not _long_number(data):
        try:  # not contextlib.suppress: a third of what this costs on the common answer
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def from_json(kind: str, body: bytes | bytearray) -> Usage | None:
    """The usage a buffered JSON answer reports; None when it reports none (a transcription
    that does not say how long its audio was, as whisper's text, srt and vtt answers)."""
    try:
        doc = loads(body)
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        return None
    if kind in (kinds.IMAGES, kinds.IMAGE_UPLOAD):
        data = doc.get("data")
        if not isinstance(data, list):
            return None
        return Usage(images=sum(1 for d in data if isinstance(d, dict)))
    if kind == kinds.SPEECH:
        return None
    if kind == kinds.TRANSCRIPTION:
        found = from_usage(kind, doc.get("usage"))
        if found is None and "duration" in doc:
            found = _heard(doc.get("duration"))
        return found
    if kind == kinds.MODERATIONS:
        return from_usage(kind, doc.get("usage")) or Usage()
    return from_usage(kind, doc.get("usage"))
