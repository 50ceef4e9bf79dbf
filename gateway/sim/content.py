"""Deterministic video bytes of any size, generated lazily, and HTTP Range parsing (pure)."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator

BLOCK = 64 * 1024  # also the largest chunk iter_content yields
_INDEX = 8  # every block starts with its own index, so no two blocks of a body are equal


class RangeNotSatisfiable(ValueError):
    pass


@functools.lru_cache(maxsize=64)
def _pattern(seed: str) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(BLOCK)


def _block(seed: str, index: int) -> bytes:
    # A body made of one repeated block would hide a resume at an offset off by whole blocks.
    return index.to_bytes(_INDEX, "big") + _pattern(seed)[_INDEX:]


def iter_content(seed: str, start: int, end: int) -> Iterator[bytes]:
    """Bytes ``[start, end)`` of the body named ``seed``, in chunks of at most ``BLOCK``."""
    pos = start
    while pos < end:
        index, offset = divmod(pos, BLOCK)
        n = min(BLOCK - offset, end - pos)
        yield _block(seed, index)[offset : offset + n]
        pos += n


def content_bytes(job_id: str, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of the video of ``job_id``."""
    return b"".join(iter_content(job_id, start, end))


def _number(text: str) -> int:
    text = text.strip()
    # int() would also take "+5", "5_0" and non-ASCII digits, none of which RFC 9110 allows.
    if not (text.isascii() and text.isdigit()):
        raise ValueError(text)
    return int(text)


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """A single ``bytes=`` range as ``(start, end_exclusive)``; None means: send the whole body.

    Malformed, multi-range and non-byte ranges are ignored, as RFC 9110 allows; a well-formed
    range outside the body raises RangeNotSatisfiable (416).
    """
    if not value:
        return None
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep:
        return None
    try:
        if first.strip() == "":
            suffix = _number(last)
            if suffix == 0 or size == 0:
                raise RangeNotSatisfiable(value)
            return max(0, size - suffix), size
        start = _number(first)
        end = _number(last) + 1 if last.strip() else None
    except RangeNotSatisfiable:
        raise
    except ValueError:
        return None
    if end is not None and end <= start:
        return None  # last-pos < first-pos makes the range invalid, not unsatisfiable
    if start >= size:
        raise RangeNotSatisfiable(value)
    return start, size if end is None else min(end, size)
