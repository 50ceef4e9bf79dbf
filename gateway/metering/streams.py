"""Read usage out of an event stream as it passes, holding back only its end (pure).

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

The event that ends a stream (``[DONE]``, ``response.completed`` and its siblings,
``transcript.text.done``) and whatever follows it are held until the upstream has ended, and
``flush`` gives them back: the call settles first, so the caller's next call sees the real use,
and the ending then leaves in one write with the end of the answer. A client that stops reading
at ``[DONE]`` (aiohttp, httpx) finds its response complete and keeps its connection: when the
end of the answer came a Redis round trip after ``[DONE]``, it closed the connection and paid
for a new one on its next call (~0.7 ms of its next first event, measured).
"""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.metering import kinds
from gateway.metering.answers import from_usage, loads, most
from gateway.metering.prices import Usage

_NULL_USAGE = (b',"usage":null', b'"usage":null,', b', "usage": null', b'"usage": null, ')
_ENDS = (b'"response.completed"', b'"response.incomplete"', b'"response.failed"')
_IMAGE_DONE = (b'"image_generation.completed"', b'"image_edit.completed"')
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_BLANK = re.compile(rb"\n\r?\n")  # the end of a line, then an empty line
MAX_EVENT = 4 * 1024 * 1024  # an event longer than this is passed on without being read
# The types of a stream's last event, by kind (chat: the ``[DONE]`` data line). An event is
# judged by its own type, never by a mention: a Responses stream's first events repeat the
# caller's metadata, which may hold any of these words.
_LAST: dict[str, frozenset[str]] = {
    kinds.CHAT: frozenset({"[DONE]"}),
    kinds.COMPLETIONS: frozenset({"[DONE]"}),
    kinds.RESPONSES: frozenset({"response.completed", "response.incomplete", "response.failed"}),
    kinds.TRANSCRIPTION: frozenset({"transcript.text.done"}),
}


class UsageTap:
    """Feed it the upstream's chunks; it answers what to send on, and finds the usage."""

    def __init__(self, kind: str, *, hide_usage: bool) -> None:
        self.kind = kind
        self.hide = hide_usage and kind in (kinds.CHAT, kinds.COMPLETIONS)
        self.usage: Usage | None = None
        # Of a chat stream, the usage of its end only (its last chunk, which has no choices):
        # vLLM's continuous_usage_stats puts the usage so far on every chunk, which a stream
        # cut midway must not be charged as if it were its whole.
        self._final: Usage | None = None
        self._images = 0
        self._tail = b""
        self._last = _LAST.get(kind, frozenset())
        self._marks = tuple(t.encode() for t in self._last)  # a cheap test before any parsing
        self._held: bytes | None = None  # from the stream's last event on, once seen
        self._unread = False  # an event too long to read was passed on: counts are a floor

    @property
    def final_usage(self) -> Usage | None:
        """What a stream that was cut or abandoned is charged by (None: its estimate): the
        usage its end reported, never a count of a part of it."""
        return self._final if self.kind in (kinds.CHAT, kinds.COMPLETIONS) else self.usage

    @property
    def ended(self) -> bool:
        """Whether the stream's last event has come (and is held)."""
        return self._held is not None

    def feed(self, chunk: bytes) -> bytes:
        out = self._read(chunk)
        if not out or not self._marks:
            return out
        if self._held is not None:
            self._held += out
            if len(self._held) <= MAX_EVENT:
                return b""
            # An upstream that goes on after its end: let everything through from here on.
            out, self._held, self._marks = self._held, None, ()
            return out
        cut = self._ending(out)
        if cut < 0:
            return out
        self._held = out[cut:]
        return out[:cut]

    def _ending(self, out: bytes) -> int:
        """Where the stream's last event starts in ``out`` (whole events), or -1."""
        if not any(mark in out for mark in self._marks):
            return -1
        start = 0
        for event in _events(out):
            if any(mark in event for mark in self._marks) and self._type(event) in self._last:
                return start
            start += len(event)
        return -1

    def _type(self, event: bytes) -> str | None:
        """An event's type: its data line for chat's ``[DONE]``, else its ``event:`` line or
        the ``type`` of its data."""
        lines = event.splitlines()
        if self.kind in (kinds.CHAT, kinds.COMPLETIONS):
            return "[DONE]" if _data_lines(lines) == [b"[DONE]"] else None
        for ln in lines:
            if ln.startswith(b"event:"):
                return ln[6:].strip().decode("utf-8", "replace")
        doc = _data(event)
        found = doc.get("type") if doc is not None else None
        return found if isinstance(found, str) else None

    def _read(self, chunk: bytes) -> bytes:
        data = self._tail + chunk if self._tail else chunk
        cut = max(data.rfind(b"\n\n"), data.rfind(b"\n\r\n"))
        if cut < 0:
            if len(data) > MAX_EVENT:  # not an event stream we understand: let it through
                self._tail = b""
                self._unread = True
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
        """What is left when the stream has ended (its held last events, an unterminated
        one); from here on ``usage`` holds what the whole stream consumed."""
        tail, self._tail = self._tail, b""
        if tail.strip():
            # An event the upstream ended the stream on without its blank line: read like
            # any other (its usage counted, or hidden), and ended properly for the caller.
            tail = self._read(tail + b"\n\n")
        rest = (self._held or b"") + tail
        self._held = None
        if self._images and not self._unread:
            # An image event too long to read (a large picture's base64) may have been a
            # completed one: then the count is unknown, and the call is charged its estimate.
            self.usage = Usage(images=self._images)
        return rest

    def _chat(self, whole: bytes) -> bytes:
        out: list[bytes] = []
        for event in _events(whole):
            if _USAGE.search(event):
                doc = _data(event)
                found = from_usage(self.kind, doc.get("usage")) if doc is not None else None
                if found is not None:
                    self.usage = most(self.usage, found)
                    if doc is not None and not doc.get("choices"):
                        # OpenAI's last chunk: no choices. A chunk that finishes one choice
                        # ends nothing while another choice may still be running (n > 1).
                        self._final = most(self._final, found)
                if self.hide and doc is not None and isinstance(doc.get("usage"), dict):
                    # Whatever it holds (one without token names too): not asked for.
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
            # By its own type: an earlier event's metadata may name an end as a key.
            if any(mark in event for mark in _ENDS) and self._type(event) in self._last:
                doc = _data(event)
                response = doc.get("response") if doc else None
                if isinstance(response, dict):
                    found = from_usage(self.kind, response.get("usage"))
                    if found is not None:  # a second end never lowers what the first said
                        self.usage = most(self.usage, found)

    def _transcription(self, whole: bytes) -> None:
        # A streamed transcription's usage rides on its transcript.text.done event.
        for event in _events(whole):
            if b'"transcript.text.done"' in event:
                doc = _data(event)
                found = from_usage(self.kind, doc.get("usage")) if doc is not None else None
                if found is not None:
                    self.usage = most(self.usage, found)


def _events(whole: bytes) -> list[bytes]:
    """Complete events, each with the blank line that ends it."""
    out: list[bytes] = []
    start = 0
    for blank in _BLANK.finditer(whole):
        out.append(whole[start : blank.end()])
        start = blank.end()
    return out


def _data_lines(lines: list[bytes]) -> list[bytes]:
    return [ln[5:].strip() for ln in lines if ln.startswith(b"data:")]


def _data(event: bytes) -> dict[str, Any] | None:
    lines = _data_lines(event.splitlines())
    if not lines:
        return None
    try:
        doc = loads(b"\n".join(lines))
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None
