"""In-process fakes for the gateway's I/O seams, for the middle test tier (tests/service).

``FakeUpstream`` stands where aiohttp's session stands inside ``UpstreamClient`` (its
``session_factory``): every request the client makes is recorded and answered by a handler the
test scripts, so key choice, retries, header filtering, error mapping and streaming all run the
production code, with no socket and no simulator.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.settings import UpstreamKey
from gateway.upstream.client import UpstreamClient
from gateway.upstream.keypool import KeyPool
from tests.clock import Clock

BASE_URL = "http://upstream.test"


@dataclass
class SeenRequest:
    """One request as it left the client (a streamed body is read whole)."""

    method: str
    url: URL
    headers: dict[str, str]
    body: bytes | None

    @property
    def path(self) -> str:
        return self.url.path

    def json(self) -> Any:
        assert self.body is not None
        return json.loads(self.body)


_CLOSED = object()


class FakeResponse:
    """An ``aiohttp.ClientResponse`` look-alike, as far as ``UpstreamResponse`` reads one.

    With ``body`` (or ``json``) the answer is whole; without either it is a stream the test
    drives with ``feed``, ``end`` and ``fail``. ``closed`` and ``released`` tell how the
    gateway let go of it."""

    def __init__(
        self,
        status: int = 200,
        body: bytes | None = None,
        *,
        json: Any = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.status = status
        pairs = list(headers)
        if json is not None:
            body = _json_bytes(json)
            pairs.append(("Content-Type", "application/json"))
        if body is not None and not any(k.lower() == "content-length" for k, _ in pairs):
            pairs.append(("Content-Length", str(len(body))))
        self.headers = CIMultiDictProxy(CIMultiDict(pairs))
        self.raw_headers = tuple((k.encode(), v.encode("latin-1")) for k, v in pairs)
        self.url = URL(BASE_URL)
        self.closed = False
        self.released = False
        self._chunks: asyncio.Queue[Any] = asyncio.Queue()
        self._eof = False
        self.content = self  # aiohttp reads the body through ``resp.content.readany()``
        if body is not None:
            if body:
                self.feed(body)
            self.end()

    def feed(self, chunk: bytes) -> None:
        self._chunks.put_nowait(chunk)

    def end(self) -> None:
        self._chunks.put_nowait(b"")

    def fail(self) -> None:
        """The upstream connection breaks here."""
        self._chunks.put_nowait(aiohttp.ClientPayloadError("Response payload is not completed"))

    async def readany(self) -> bytes:
        if self.closed:
            raise aiohttp.ClientConnectionError("Connection closed")
        if self._eof:
            return b""
        item = await self._chunks.get()
        if item is _CLOSED:
            raise aiohttp.ClientConnectionError("Connection closed")
        if isinstance(item, BaseException):
            raise item
        if not item:
            self._eof = True
        return bytes(item)

    async def read(self) -> bytes:
        body = bytearray()
        while chunk := await self.readany():
            body += chunk
        return bytes(body)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._chunks.put_nowait(_CLOSED)  # wakes a reader waiting for the next chunk

    def release(self) -> None:
        self.released = True


Handler = Callable[[SeenRequest], FakeResponse | Awaitable[FakeResponse]]


class FakeUpstream:
    """The upstream, in process. ``handler`` answers each request (it may be a coroutine
    function, or raise what aiohttp would, e.g. ``TimeoutError``); the default answers
    ``200 {}``. ``requests`` and ``responses`` keep everything that crossed, in order."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler: Handler = handler or (lambda req: FakeResponse(200, json={}))
        self.requests: list[SeenRequest] = []
        self.responses: list[FakeResponse] = []
        self.sessions: list[FakeSession] = []

    def session(self) -> FakeSession:
        session = FakeSession(self)
        self.sessions.append(session)
        return session

    def client(
        self, key_ids: Sequence[str] = ("primary",), *, clock: Clock | None = None, **kw: Any
    ) -> UpstreamClient:
        """An ``UpstreamClient`` (not yet started) whose every request lands here."""
        keys = [UpstreamKey(id=k, secret=f"sk-{k}-{secrets.token_hex(12)}") for k in key_ids]
        pool = KeyPool(keys, None, clock=clock or Clock())
        return UpstreamClient(
            BASE_URL,
            pool,
            connect_timeout=1,
            read_timeout=1,
            max_connections=8,
            session_factory=self.session,  # type: ignore[arg-type]
            **kw,
        )

    async def answer(self, req: SeenRequest) -> FakeResponse:
        self.requests.append(req)
        result = self.handler(req)
        resp = await result if inspect.isawaitable(result) else result
        resp.url = req.url
        self.responses.append(resp)
        return resp


class FakeSession:
    """The part of ``aiohttp.ClientSession`` the upstream client uses."""

    def __init__(self, upstream: FakeUpstream) -> None:
        self.upstream = upstream
        self.closed = False

    def request(
        self,
        method: str,
        url: str | URL,
        *,
        headers: dict[str, str] | None = None,
        data: bytes | AsyncIterator[bytes] | None = None,
        **_: Any,
    ) -> _Pending:
        return _Pending(self.upstream, method, URL(url), dict(headers or {}), data)

    def get(self, url: str | URL, **kw: Any) -> _Pending:
        return self.request("GET", url, **kw)

    async def close(self) -> None:
        self.closed = True


class _Pending:
    """What ``session.request`` returns: awaited, or used as ``async with`` (the probe)."""

    def __init__(
        self,
        upstream: FakeUpstream,
        method: str,
        url: URL,
        headers: dict[str, str],
        data: bytes | AsyncIterator[bytes] | None,
    ) -> None:
        self._args = (upstream, method, url, headers, data)
        self._resp: FakeResponse | None = None

    async def _run(self) -> FakeResponse:
        upstream, method, url, headers, data = self._args
        body = data
        if isinstance(data, AsyncIterator):
            body = b"".join([chunk async for chunk in data])
        assert body is None or isinstance(body, bytes)
        return await upstream.answer(SeenRequest(method, url, headers, body))

    def __await__(self) -> Any:
        return self._run().__await__()

    async def __aenter__(self) -> FakeResponse:
        self._resp = await self._run()
        return self._resp

    async def __aexit__(self, *exc: object) -> None:
        assert self._resp is not None
        self._resp.release()


def _json_bytes(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()
