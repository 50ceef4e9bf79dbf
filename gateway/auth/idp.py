"""Fetches the identity provider's JWKS document for the auth layer (which does no I/O)."""

from __future__ import annotations

import aiohttp


class IdpClient:
    def __init__(self, timeout: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def fetch(self, url: str) -> bytes:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        async with self._session.get(url, allow_redirects=False) as resp:
            resp.raise_for_status()
            return await resp.content.read(1024 * 1024)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
