"""``/v1/audio/speech``, ``/v1/audio/transcriptions`` and ``/v1/audio/translations``.

Speech is ``BYTES_PER_CHAR`` bytes of audio per input character, streamed, starting with the
format's magic bytes. An upload lasts one second per ``BYTES_PER_SECOND`` bytes (128 kbit/s
MP3; one character of speech is 64 ms), and its transcript has ``WORDS_PER_SECOND`` words per
second. Whisper bills by the second (``usage`` of type ``duration``), the GPT-4o transcribe
models by tokens (``usage`` of type ``tokens``), as OpenAI does.
"""

from __future__ import annotations

import base64
import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from gateway.sim import content, fields, sse, tokens
from gateway.sim.call import Call
from gateway.sim.errors import openai_error
from gateway.sim.state import SimState

BYTES_PER_CHAR = 1024
BYTES_PER_SECOND = 16_000
WORDS_PER_SECOND = 2.5
AUDIO_TOKENS_PER_SECOND = 10
MAX_SPEECH_CHARS = 4096
WORDS_PER_SEGMENT = 10

# format -> (media type, the bytes such a file starts with)
SPEECH_FORMATS = {
    "mp3": ("audio/mpeg", b"\xff\xfb\x90\x64"),
    "opus": ("audio/ogg", b"OggS"),
    "aac": ("audio/aac", b"\xff\xf1"),
    "flac": ("audio/flac", b"fLaC"),
    "wav": ("audio/wav", b"RIFF"),
    "pcm": ("audio/pcm", b""),
}
TEXT_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


def speech_bytes(text: str) -> int:
    return len(text) * BYTES_PER_CHAR


def duration_of(upload_bytes: int) -> float:
    return round(upload_bytes / BYTES_PER_SECOND, 2)


def transcript(duration: float) -> str:
    return "".join(tokens.answer(max(1, math.ceil(duration * WORDS_PER_SECOND)))).strip()


async def speech(state: SimState, call: Call) -> Response:
    doc = call.json
    if not isinstance(doc, dict):
        return openai_error(400, "invalid_request_error", "the body must be a JSON object")
    try:
        fields.text(doc, "model")
        fields.text(doc, "voice")
        text = fields.text(doc, "input")
        if len(text) > MAX_SPEECH_CHARS:
            raise fields.BadField("input", f"'input' is longer than {MAX_SPEECH_CHARS} characters.")
        fmt = fields.choice(doc, "response_format", SPEECH_FORMATS, "mp3")
        events = fields.choice(doc, "stream_format", ("audio", "sse"), "audio") == "sse"
    except fields.BadField as exc:
        return exc.response()
    media_type, magic = SPEECH_FORMATS[fmt]
    size = speech_bytes(text)
    if events:
        return _speech_events(state, text, magic, size)

    def body() -> Iterator[bytes]:
        yield magic
        yield from content.iter_content(f"speech#{text}", len(magic), size)

    # Chunked, with no Content-Length, as OpenAI streams it while it speaks.
    return StreamingResponse(body(), media_type=media_type)


def _speech_events(state: SimState, text: str, magic: bytes, size: int) -> Response:
    """``stream_format: sse``: the audio in base64 ``speech.audio.delta`` events, then
    ``speech.audio.done`` with the token usage the GPT-4o speech models report."""
    audio = magic + b"".join(content.iter_content(f"speech#{text}", len(magic), size))
    step = 64 * 1024

    async def events() -> AsyncIterator[bytes]:
        for i, start in enumerate(range(0, len(audio), step)):
            await sse.pace(state, i)
            piece = base64.b64encode(audio[start : start + step]).decode()
            yield sse.data({"type": "speech.audio.delta", "audio": piece})
        count = tokens.count(text)
        yield sse.data(
            {
                "type": "speech.audio.done",
                "usage": {"input_tokens": count, "output_tokens": count, "total_tokens": 2 * count},
            }
        )

    return sse.stream(state, events())


def _timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _segments(text: str, duration: float) -> list[dict[str, Any]]:
    words = text.split()
    out: list[dict[str, Any]] = []
    for i in range(0, len(words), WORDS_PER_SEGMENT):
        part = words[i : i + WORDS_PER_SEGMENT]
        out.append(
            {
                "id": len(out),
                "seek": 0,
                "start": round(duration * i / len(words), 2),
                "end": round(duration * (i + len(part)) / len(words), 2),
                "text": " " + " ".join(part),
                "tokens": list(range(50364, 50364 + len(part))),
                "temperature": 0.0,
                "avg_logprob": -0.2,
                "compression_ratio": 1.2,
                "no_speech_prob": 0.01,
            }
        )
    return out


def _usage(model: str, duration: float, text: str, prompt: str) -> dict[str, Any]:
    if "whisper" in model:
        return {"type": "duration", "seconds": math.ceil(duration)}
    audio = math.ceil(duration * AUDIO_TOKENS_PER_SECOND)
    text_in = tokens.count(prompt)
    out = tokens.count(text)
    return {
        "type": "tokens",
        "input_tokens": audio + text_in,
        "input_token_details": {"text_tokens": text_in, "audio_tokens": audio},
        "output_tokens": out,
        "total_tokens": audio + text_in + out,
    }


async def _transcribe(call: Call, *, translate: bool) -> Response:
    doc = call.fields()
    try:
        if call.files is None or doc is None:
            raise fields.BadField("file", "The body must be multipart/form-data.")
        upload = call.files.get("file")
        if upload is None:
            raise fields.missing("file")
        if not upload["size"]:
            raise fields.BadField("file", "The audio file is empty.")
        model = fields.text(doc, "model")
        fmt = fields.choice(doc, "response_format", TEXT_FORMATS, "json")
        if fmt == "verbose_json" and "whisper" not in model:
            raise fields.BadField(
                "response_format",
                f"response_format 'verbose_json' is not compatible with model '{model}'. "
                "Use 'json' or 'text' instead.",
                "unsupported_value",
            )
    except fields.BadField as exc:
        return exc.response()
    duration = duration_of(int(upload["size"]))
    text = transcript(duration)
    if fmt == "text":
        return PlainTextResponse(text + "\n")
    if fmt in ("srt", "vtt"):
        sep = "," if fmt == "srt" else "."
        cue = f"{_timestamp(0, sep)} --> {_timestamp(duration, sep)}\n{text}\n\n"
        return PlainTextResponse("1\n" + cue if fmt == "srt" else "WEBVTT\n\n" + cue)
    used = _usage(model, duration, text, str(doc.get("prompt") or ""))
    if fmt == "json":
        return JSONResponse({"text": text, "usage": used})
    language = "english" if translate else str(doc.get("language") or "english")
    return JSONResponse(
        {
            "task": "translate" if translate else "transcribe",
            "language": language,
            "duration": duration,
            "text": text,
            "segments": _segments(text, duration),
            "usage": used,
        }
    )


async def transcriptions(state: SimState, call: Call) -> Response:
    return await _transcribe(call, translate=False)


async def translations(state: SimState, call: Call) -> Response:
    return await _transcribe(call, translate=True)
