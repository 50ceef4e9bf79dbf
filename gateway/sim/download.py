"""A generated body served like a file: lazily, with Range, If-Range, ETag and Last-Modified."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.sim import content


def etag_for(seed: str, size: int) -> str:
    return f'"{hashlib.blake2b(seed.encode(), digest_size=12).hexdigest()}-{size:x}"'


def serve_body(
    request: Request,
    *,
    seed: str,
    size: int,
    media_type: str,
    filename: str,
    modified: int,
    on_abort: Callable[[], None] = lambda: None,
) -> Response:
    etag = etag_for(seed, size)
    last_modified = formatdate(modified, usegmt=True)
    headers = {
        "etag": etag,
        "last-modified": last_modified,
        "accept-ranges": "bytes",
        "content-disposition": f'attachment; filename="{filename}"',
    }
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() not in (etag, last_modified):
        range_header = None  # the caller's partial copy is of another version: send it whole
    try:
        span = content.parse_range(range_header, size)
    except content.RangeNotSatisfiable:
        headers["content-range"] = f"bytes */{size}"
        return Response(status_code=416, headers=headers)
    start, end = span or (0, size)
    if span is not None:
        headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
    headers["content-length"] = str(end - start)

    async def body() -> AsyncIterator[bytes]:
        try:
            for chunk in content.iter_content(seed, start, end):
                yield chunk
                # After a disconnect the server's send returns at once without suspending;
                # yielding here lets the disconnect be noticed, as a real server would.
                await asyncio.sleep(0)
        except (asyncio.CancelledError, GeneratorExit):
            on_abort()  # the client left early: tests check the gateway lets go at once
            raise

    status = 200 if span is None else 206
    return StreamingResponse(body(), status_code=status, media_type=media_type, headers=headers)
