"""HTTP to the identity provider for the auth layer (which does no I/O): its JWKS document,
and for console sign-in its discovery document and token endpoint. Redirects are never
followed and answers are bounded in size; the caller owns the meaning of a status."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

MAX_BODY_BYTES = 1024 * 1024


class IdpClient:
    def __init__(self, timeout: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def fetch(self, url: str) -> bytes:
        async with self._client().get(url, allow_redirects=False) as resp:
            resp.raise_for_status()
            return await _bounded(resp)

    async def post_form(
        self, url: str, form: Mapping[str, str], headers: Mapping[str, str]
    ) -> tuple[int, bytes]:
        """POST ``form`` urlencoded; the status and body whatever the status (a token
        endpoint explains a refusal in a 400's body)."""
        async with self._client().post(
            url, data=dict(form), headers=dict(headers), allow_redirects=False
        ) as resp:
            return resp.status, await _bounded(resp)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _bounded(resp: aiohttp.ClientResponse) -> bytes:
    # Read to the end (one read() returns only what has arrived so far), refusing rather
    # than cutting an oversized answer: a truncated document must not half-parse.
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ValueError(f"answer larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
