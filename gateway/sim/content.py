"""Deterministic video bytes of any size, generated lazily, and HTTP Range parsing (pure)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

# A prime block length, so an off-by-a-block Range bug cannot go unnoticed by accident.
BLOCK = 65521
CHUNK = 64 * 1024


class RangeNotSatisfiable(ValueError):
    pass


def _block(job_id: str) -> bytes:
    return hashlib.shake_256(job_id.encode()).digest(BLOCK)


def content_bytes(job_id: str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of the video of ``job_id``."""
    return b"".join(iter_content(job_id, start, end))


def iter_content(job_id: str, start: int, end: int, chunk: int = CHUNK) -> Iterator[bytes]:
    block = _block(job_id)
    doubled = block + block
    pos = start
    while pos < end:
        n = min(chunk, end - pos, BLOCK)
        off = pos % BLOCK
        yield doubled[off : off + n]
        pos += n


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """A single ``bytes=`` range as ``(start, end_exclusive)``; None means the whole body."""
    if not value:
        return None
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # unsupported forms are ignored, as RFC 9110 allows
    first, sep, last = spec.strip().partition("-")
    if not sep:
        return None
    try:
        if first == "":
            start, end = size - int(last), size
            if start >= size:
                raise RangeNotSatisfiable(value)
            return max(0, start), end
        start = int(first)
        end = int(last) + 1 if last else size
    except RangeNotSatisfiable:
        raise
    except ValueError:
        return None
    if start >= size or end <= start:
        raise RangeNotSatisfiable(value)
    return start, min(end, size)
