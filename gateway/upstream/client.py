"""The only place that talks HTTP to the upstream.

aiohttp was chosen by measurement (see README, "Benchmarks"): at 32 connections it sustains
several times the throughput of httpx/httpx2 on this hardware. It stays behind this seam:
callers get an ``UpstreamResponse`` and never touch aiohttp types.

Retry policy (money is at stake): a request the upstream certainly did not process
(connection refused, 429, 401) is retried once on another key when its body can be replayed.
Anything whose outcome is unknown (timeout after sending, reset, 5xx) is never re-sent, and
for a non-idempotent method the caller is told ``x-should-retry: false``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

import aiohttp
from yarl import URL

from gateway import __version__
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout
from gateway.upstream import rewrite
from gateway.upstream.keypool import KeyPool, Lease

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "PUT"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 3
USER_AGENT = f"crazyrouter-gateway/{__version__}"


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    method: str
    path: str  # already validated and quoted
    query: str
    headers: tuple[tuple[bytes, bytes], ...]  # the caller's headers (filtered here)
    body: bytes | AsyncIterator[bytes] | None
    route: str  # a bounded label for metrics
    request_id: str
    key_id: str | None = None  # pin a key (video jobs); None lets the pool choose


class UpstreamResponse:
    """A response whose body is still on the wire; ``close`` exactly once (idempotent)."""

    def __init__(self, resp: aiohttp.ClientResponse, lease: Lease) -> None:
        self._resp = resp
        self._lease = lease
        self._done = False
        self.status = resp.status
        self.key_id = lease.key_id

    @property
    def lease(self) -> Lease:
        return self._lease

    @property
    def url(self) -> URL:
        return self._resp.url

    def detach(self) -> None:
        """Close this response but keep the key lease for the response that replaces it."""
        if not self._done:
            self._done = True
            self._resp.close()

    @property
    def raw_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        return self._resp.raw_headers

    def header(self, name: str) -> str | None:
        return self._resp.headers.get(name)

    async def read(self, limit: int = 16 * 1024 * 1024) -> bytes:
        body = bytearray()
        async for chunk in self.iter_chunks():
            body += chunk
            if len(body) > limit:
                raise UpstreamError("The upstream answer is too large.")
        return bytes(body)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive; a broken upstream raises UpstreamError."""
        content = self._resp.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError("The upstream connection broke mid-answer.") from exc

    def close(self) -> None:
        """Close (not release) the connection: an unread body must not be drained."""
        if not self._done:
            self._done = True
            self._resp.close()
            self._lease.release()

    def finish(self) -> None:
        """Return a fully read connection to the pool for reuse."""
        if not self._done:
            self._done = True
            self._resp.release()
            self._lease.release()


class UpstreamClient:
    def __init__(
        self,
        base_url: str,
        pool: KeyPool,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        on_response: Callable[[str, str, int, float], None] = lambda k, r, s, d: None,
        on_retry: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._base_url = base_url
        self.pool = pool
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._max_connections = max_connections
        self._on_response = on_response
        self._on_retry = on_retry
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=0, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self, req: UpstreamRequest, *, follow_redirects: bool = False
    ) -> UpstreamResponse:
        resp = await self._send(req)
        hops = 0
        while follow_redirects and resp.status in _REDIRECTS and hops < MAX_REDIRECTS:
            hops += 1
            resp = await self._follow(resp, req)
        return resp

    async def _follow(self, prev: UpstreamResponse, req: UpstreamRequest) -> UpstreamResponse:
        """Follow a download redirect ourselves: the caller never sees an upstream URL. Our key
        goes only to the upstream's own origin, never to a CDN it points at."""
        location = prev.header("location")
        base = prev.url
        prev.detach()
        if not location or self._session is None:
            raise UpstreamError("The upstream redirected without a location.")
        target = base.join(URL(location))
        if target.scheme not in ("http", "https"):
            raise UpstreamError("The upstream redirected to an unsupported URL.")
        headers = {
            k.decode(): v.decode("latin-1") for k, v in req.headers if k in (b"range", b"if-range")
        }
        headers["user-agent"] = USER_AGENT
        if target.origin() == URL(self._base_url).origin():
            headers["authorization"] = f"Bearer {prev.lease.secret}"
        try:
            resp = await self._session.get(target, headers=headers, allow_redirects=False)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            prev.lease.release()
            raise UpstreamTimeout() from exc
        except (aiohttp.ClientError, OSError) as exc:
            prev.lease.release()
            raise UpstreamError("The upstream's download location could not be reached.") from exc
        return UpstreamResponse(resp, prev.lease)

    async def _send(self, req: UpstreamRequest) -> UpstreamResponse:
        session = self._session
        if session is None:
            raise UpstreamError("The upstream client is not started.")
        replayable = not isinstance(req.body, AsyncIterator)
        body = req.body
        body_errors: list[GatewayError] = []
        if isinstance(body, AsyncIterator):
            body = _keep_errors(body, body_errors)
        unsafe = req.method not in IDEMPOTENT
        no_retry = {"x-should-retry": "false"} if unsafe else {}
        url = self._base_url + req.path + (f"?{req.query}" if req.query else "")
        tried: set[str] = set()
        while True:
            lease = self.pool.lease(req.key_id) if req.key_id else self.pool.acquire(tried)
            tried.add(lease.key_id)
            can_retry = replayable and req.key_id is None and len(tried) < 2
            headers = rewrite.request_headers(
                req.headers, secret=lease.secret, request_id=req.request_id, user_agent=USER_AGENT
            )
            started = time.perf_counter()
            try:
                resp = await session.request(
                    req.method, url, headers=headers, data=body, allow_redirects=False
                )
            except aiohttp.ClientConnectorError as exc:
                lease.release()
                self._on_response(lease.key_id, req.route, 0, time.perf_counter() - started)
                if can_retry and self._has_other_key(tried):
                    self._on_retry("connect")
                    continue
                raise UpstreamError() from exc
            except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
                lease.release()
                self._on_response(lease.key_id, req.route, 0, time.perf_counter() - started)
                raise _unknown(UpstreamTimeout(headers=no_retry), unsafe) from exc
            except (aiohttp.ClientError, OSError) as exc:
                lease.release()
                if body_errors:  # the caller's body was refused (e.g. too large), not the upstream
                    raise body_errors[0] from exc
                self._on_response(lease.key_id, req.route, 0, time.perf_counter() - started)
                raise _unknown(
                    UpstreamError(
                        "The upstream connection broke before it answered.", headers=no_retry
                    ),
                    unsafe,
                ) from exc
            except BaseException:
                lease.release()
                raise
            self._on_response(lease.key_id, req.route, resp.status, time.perf_counter() - started)
            out = UpstreamResponse(resp, lease)
            if resp.status == 429:
                wait = rewrite.retry_after_seconds(resp.headers, self.pool.cooldown_seconds)
                await self.pool.cool_down(lease.key_id, wait)
            elif resp.status in (401, 403):
                await self.pool.quarantine(lease.key_id)
            else:
                return out
            if can_retry and self._has_other_key(tried):
                out.close()
                self._on_retry(str(resp.status))
                continue
            return out

    def _has_other_key(self, tried: set[str]) -> bool:
        try:
            self.pool.acquire(tried).release()
        except GatewayError:
            return False
        return True


async def _keep_errors(
    body: AsyncIterator[bytes], errors: list[GatewayError]
) -> AsyncIterator[bytes]:
    """aiohttp wraps an exception raised by a streamed body; remember ours to re-raise it."""
    try:
        async for chunk in body:
            yield chunk
    except GatewayError as exc:
        errors.append(exc)
        raise


def caller_error(
    resp: UpstreamResponse, raw: bytes, secrets: Iterable[str], *, unsafe: bool
) -> GatewayError:
    """The upstream's error answer, normalised, adjusted so the caller's SDK reacts correctly."""
    exc = rewrite.normalise_error(
        resp.status, rewrite.decode_body(raw, resp.header("content-encoding")), secrets=secrets
    )
    if resp.status == 401:
        # Our key was refused. Passing 401 on would tell the caller *their* token is bad.
        return GatewayError(
            "The upstream refused the gateway's credentials; operators have been alerted.",
            code="upstream_auth_failed",
            status=502,
            headers={"x-should-retry": "false"} if unsafe else None,
        )
    if resp.status == 429:
        wait = resp.header("retry-after")
        if wait and wait.isdigit():
            exc.headers["retry-after"] = wait
    elif resp.status >= 500 and unsafe:
        # The upstream may have acted on it: the SDK must not send it again.
        exc.headers["x-should-retry"] = "false"
        exc.maybe_processed = True
    return exc


def _unknown(exc: GatewayError, unsafe: bool) -> GatewayError:
    exc.maybe_processed = unsafe
    return exc
