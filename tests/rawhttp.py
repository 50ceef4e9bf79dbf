"""Send hand-written HTTP/1.1 requests, for inputs no well-behaved client would produce."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(base_url: str, head: str, body: bytes = b"", timeout: float = 5.0) -> RawResponse:
    """``head`` is the request line and headers without the final blank line."""
    parts = urlsplit(base_url)
    data = head.replace("\n", "\r\n").rstrip("\r\n").encode("latin-1") + b"\r\n\r\n" + body
    chunks = []
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as s:
        s.sendall(data)
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            raw = b"".join(chunks)
            if b"\r\n\r\n" in raw:
                hdr, _, rest = raw.partition(b"\r\n\r\n")
                length = _content_length(hdr)
                if length is not None and len(rest) >= length:
                    break
    raw = b"".join(chunks)
    hdr, _, rest = raw.partition(b"\r\n\r\n")
    lines = hdr.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return RawResponse(status, headers, rest)


def _content_length(hdr: bytes) -> int | None:
    for line in hdr.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return int(v.strip())
    return None
