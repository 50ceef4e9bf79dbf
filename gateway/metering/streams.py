"""Read usage out of an event stream as it passes, without holding any event back (pure).

Chat and legacy completions streams carry usage in their last chunk, and only when the
request asked (``stream_options.include_usage``); the gateway always asks. When the caller did
not, a usage-only chunk is dropped, a chunk that also has choices loses its ``usage``, and the
``"usage":null`` every other chunk then carries is taken out, so the caller receives the
stream it asked for. A quoted key cannot occur unescaped inside a JSON string, so the byte
replacement cannot touch content. Responses streams end with ``response.completed`` (or
``.incomplete``/``.failed``), whose response carries the usage; streamed transcriptions end
with ``transcript.text.done``, which does; a streamed image generation or edit sends one
``*.completed`` event per image, counted when the stream has ended.

Events end at a blank line, whichever of LF and CRLF the lines end with (mixed too); a chunk
that ends mid-event keeps that tail until the rest arrives (an incomplete event is of no use
to the caller either).
"""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.metering import kinds
from gateway.metering.answers import from_usage
from gateway.metering.prices import Usage

_NULL_USAGE = (b',"usage":null', b'"usage":null,', b', "usage": null', b'"usage": null, ')
_ENDS = (b'"response.completed"', b'"response.incomplete"', b'"response.failed"')
_IMAGE_DONE = (b'"image_generation.completed"', b'"image_edit.completed"')
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_BLANK = re.compile(rb"\n\r?\n")  # the end of a line, then an empty line
MAX_EVENT = 4 * 1024 * 1024  # an event longer than this is passed on without being read


class UsageTap:
    """Feed it the upstream's chunks; it answers what to send on, and finds the usage."""

    def __init__(self, kind: str, *, hide_usage: bool) -> None:
        self.kind = kind
        self.hide = hide_usage and kind in (kinds.CHAT, kinds.COMPLETIONS)
        self.usage: Usage | None = None
        self._images = 0
        self._tail = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._tail + chunk if self._tail else chunk
        cut = max(data.rfind(b"\n\n"), data.rfind(b"\n\r\n"))
        if cut < 0:
            if len(data) > MAX_EVENT:  # not an event stream we understand: let it through
                self._tail = b""
                return data
            self._tail = data
            return b""
        end = cut + (2 if data.startswith(b"\n\n", cut) else 3)
        whole, self._tail = data[:end], data[end:]
        if self.kind in (kinds.IMAGES, kinds.IMAGE_UPLOAD):
            self._images += sum(whole.count(mark) for mark in _IMAGE_DONE)
            return whole
        if b'"usage"' not in whole:  # the common case: nothing to read or change
            return whole
        if self.kind == kinds.RESPONSES:
            self._responses(whole)
            return whole
        if self.kind == kinds.TRANSCRIPTION:
            self._transcription(whole)
            return whole
        return self._chat(whole)

    def flush(self) -> bytes:
        """What is left when the stream has ended (an unterminated last event); from here on
        ``usage`` holds what the whole stream consumed."""
        rest, self._tail = self._tail, b""
        if self._images:
            self.usage = Usage(images=self._images)
        return rest

    def _chat(self, whole: bytes) -> bytes:
        out: list[bytes] = []
        for event in _events(whole):
            if _USAGE.search(event):
                doc = _data(event)
                found = from_usage(self.kind, doc.get("usage")) if doc is not None else None
                if doc is not None and found is not None:
                    self.usage = found
                    if self.hide:
                        if not doc.get("choices"):
                            continue
                        del doc["usage"]
                        event = b"data: " + json.dumps(doc).encode() + b"\n\n"
            if self.hide:
                for text in _NULL_USAGE:
                    event = event.replace(text, b"")
            out.append(event)
        return b"".join(out)

    def _responses(self, whole: bytes) -> None:
        for event in _events(whole):
            if any(mark in event for mark in _ENDS):
                doc = _data(event)
                response = doc.get("response") if doc else None
                if isinstance(response, dict):
                    self.usage = from_usage(self.kind, response.get("usage")) or self.usage

    def _transcription(self, whole: bytes) -> None:
        # A streamed transcription's usage rides on its transcript.text.done event.
        for event in _events(whole):
            if b'"transcript.text.done"' in event:
                doc = _data(event)
                if doc is not None:
                    self.usage = from_usage(self.kind, doc.get("usage")) or self.usage


def _events(whole: bytes) -> list[bytes]:
    """Complete events, each with the blank line that ends it."""
    out: list[bytes] = []
    start = 0
    for blank in _BLANK.finditer(whole):
        out.append(whole[start : blank.end()])
        start = blank.end()
    return out


def _data(event: bytes) -> dict[str, Any] | None:
    lines = [ln[5:].strip() for ln in event.splitlines() if ln.startswith(b"data:")]
    if not lines:
        return None
    try:
        doc = json.loads(b"\n".join(lines))
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None
