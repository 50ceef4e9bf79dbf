"""The only place that talks HTTP to the upstream.

aiohttp was chosen by measurement (see bench/RESULTS.md): at 32 connections it sustains
several times the throughput of httpx/httpx2 on this hardware. It stays behind this seam:
callers get an ``UpstreamResponse`` and never touch aiohttp types.

Retry policy (money is at stake): a request the upstream certainly did not process
(connection refused, 429, a 401 confirmed by a probe of the key) is retried once on another
key when its body can be replayed; a 403 never is.
Anything whose outcome is unknown (timeout after sending, reset, 5xx) is never re-sent, and
for a non-idempotent method the caller is told ``x-should-retry: false``.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass

import aiohttp
from yarl import URL

from gateway import __version__
from gateway.errors import GatewayError, QuotaExceeded, UpstreamError, UpstreamTimeout
from gateway.upstream import rewrite
from gateway.upstream.address_policy import parse_networks
from gateway.upstream.keypool import KeyPool, Lease
from gateway.upstream.redirect_policy import (
    AddressRefused,
    PolicyResolver,
    check_target,
    redirect_refused,
    upstream_endpoint,
)

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "PUT"})
CHUNKED_BODY_BYTES = 1024 * 1024  # a larger body read whole is written upstream in chunks
PROBE_PATH = "/v1/models"  # cheap, free, and readable with any valid key
PROBE_TIMEOUT = 5.0
COOLDOWN_CAP_FACTOR = 10  # an upstream Retry-After cools a key for at most this many cooldowns
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
    team: str = ""  # whose call it is ("" for the gateway's own)
    counted: bool = True  # False for a job's poll: one connection past the team's share


class UpstreamResponse:
    """A response whose body is still on the wire; ``close`` exactly once (idempotent)."""

    def __init__(self, resp: aiohttp.ClientResponse, lease: Lease, *, unsafe: bool = False) -> None:
        self._resp = resp
        # Answering a request that is not idempotent: a body that breaks off means the call
        # ran (and was billed) upstream, so the caller must not send it again.
        self._unsafe = unsafe
        self._lease = lease
        self._done = False
        self.after: Callable[[], None] | None = None  # once, when closed or finished
        self._peeked: bytes | None = None
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

    @property
    def headers(self) -> Mapping[str, str]:
        return self._resp.headers

    async def read(self, limit: int = 16 * 1024 * 1024) -> bytes:
        body = bytearray()
        async for chunk in self.iter_chunks():
            body += chunk
            if len(body) > limit:
                raise UpstreamError("The upstream answer is too large.")
        return bytes(body)

    async def peek(self, limit: int) -> bytes:
        """Read a small (error) body ahead, to judge it; ``read``/``iter_chunks`` still yield it."""
        if self._peeked is None:
            body = bytearray()
            async for chunk in self.iter_chunks():
                body += chunk
                if len(body) > limit:
                    break
            self._peeked = bytes(body)
        return self._peeked

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive; a broken upstream raises UpstreamError."""
        if self._peeked is not None:
            peeked, self._peeked = self._peeked, b""
            if peeked:
                yield peeked
        content = self._resp.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            # An error answer's body breaking off changes nothing: the call failed upstream.
            unsafe = self._unsafe and self.status < 400
            raise _unknown(
                UpstreamError(
                    "The upstream connection broke mid-answer.",
                    headers={"x-should-retry": "false"} if unsafe else None,
                ),
                unsafe,
            ) from exc

    def close(self) -> None:
        """Close (not release) the connection: an unread body must not be drained."""
        if not self._done:
            self._done = True
            self._resp.close()
            self._lease.release()
            self._after()

    def finish(self) -> None:
        """Return a fully read connection to the pool for reuse."""
        if not self._done:
            self._done = True
            self._resp.release()
            self._lease.release()
            self._after()

    def _after(self) -> None:
        after, self.after = self.after, None
        if after is not None:
            after()


class UpstreamClient:
    def __init__(
        self,
        base_url: str,
        pool: KeyPool,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        team_connections: int | None = None,
        on_response: Callable[[str, str, int, float], None] = lambda k, r, s, d: None,
        on_retry: Callable[[str], None] = lambda reason: None,
        trusted_networks: Iterable[str] = (),
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
    ) -> None:
        self._base_url = base_url
        self._trusted = parse_networks(trusted_networks)
        self.pool = pool
        # ``connect`` bounds the wait for a pooled connection too: with the pool full, a caller
        # gets a fast 503 instead of waiting behind other teams' long streams.
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=connect_timeout,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self._max_connections = max_connections
        self._team_connections = team_connections or max_connections
        self._held: dict[str, int] = {}  # upstream answers each team holds open here
        self._on_response = on_response
        self._on_retry = on_retry
        self._session: aiohttp.ClientSession | None = None
        self._probes: dict[str, asyncio.Future[bool]] = {}
        self._session_factory = session_factory

    async def start(self) -> None:
        if self._session_factory is not None:
            # The seam tests swap (tests/fakes.py): retry and key policy stay on the real path,
            # only the socket I/O is replaced.
            self._session = self._session_factory()
            return
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            ttl_dns_cache=300,
            resolver=PolicyResolver(upstream_endpoint(self._base_url), self._trusted),
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
        team = req.team
        if team:
            # A caller that stops reading holds its connection as long as it likes: one team
            # may hold only its share of the pool, and the rest stays for the others. A job's
            # poll (short, read whole) counts too, with one connection more: downloads the
            # team holds never keep its jobs from being polled, nor can its polls (one per
            # job) hold the pool.
            held = self._held.get(team, 0)
            if held >= self._team_connections + (0 if req.counted else 1):
                raise QuotaExceeded(
                    f"Team '{team}' has {held} calls to the upstream open on this replica, its "
                    "most at once; retry when one has ended.",
                    code="concurrency_limit_exceeded",
                    headers={"retry-after": "1"},
                )
            self._held[team] = held + 1
        try:
            resp = await self._send(req)
            hops = 0
            while follow_redirects and resp.status in _REDIRECTS and hops < MAX_REDIRECTS:
                hops += 1
                resp = await self._follow(resp, req)
        except BaseException:
            if team:
                self._let_go(team)
            raise
        if team:
            resp.after = lambda: self._let_go(team)
        return resp

    def _let_go(self, team: str) -> None:
        held = self._held.get(team, 0) - 1
        if held > 0:
            self._held[team] = held
        else:
            self._held.pop(team, None)

    async def _follow(self, prev: UpstreamResponse, req: UpstreamRequest) -> UpstreamResponse:
        """Follow a download redirect chain ourselves: the caller never sees an upstream URL.
        The whole chain is bounded here (a redirect after MAX_REDIRECTS hops is refused, not
        streamed to the caller as a 3xx), so ``send`` gets a final answer from one call."""
        resp = prev
        for _ in range(MAX_REDIRECTS):
            resp = await self._hop(resp, req)
            if resp.status not in _REDIRECTS:
                return resp
        resp.close()
        raise redirect_refused()

    async def _hop(self, prev: UpstreamResponse, req: UpstreamRequest) -> UpstreamResponse:
        """One redirect. Our key goes only to the upstream's own origin, never to a CDN it
        points at; a hop off that origin must pass the address policy (redirect_policy)."""
        location = prev.header("location")
        base = prev.url
        lease = prev.lease
        prev.detach()
        try:
            if not location or self._session is None:
                raise UpstreamError("The upstream redirected without a location.")
            try:
                target = base.join(URL(location))
                own = target.origin() == URL(self._base_url).origin()
            except ValueError:
                raise redirect_refused() from None
            if target.scheme not in ("http", "https"):
                raise UpstreamError("The upstream redirected to an unsupported URL.")
            if target.user is not None or target.password is not None:
                raise redirect_refused()
            if not own:
                check_target(target, self._trusted)
        except GatewayError:
            lease.release()
            raise
        headers = {
            k.decode(): v.decode("latin-1") for k, v in req.headers if k in (b"range", b"if-range")
        }
        headers["user-agent"] = USER_AGENT
        if own:
            headers["authorization"] = f"Bearer {lease.secret}"
        try:
            resp = await self._session.get(target, headers=headers, allow_redirects=False)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            lease.release()
            raise UpstreamTimeout() from exc
        except (aiohttp.ClientError, OSError) as exc:
            lease.release()
            if isinstance(getattr(exc, "os_error", None), AddressRefused):
                raise redirect_refused() from exc
            raise UpstreamError("The upstream's download location could not be reached.") from exc
        return UpstreamResponse(resp, lease)

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
        touched = False  # one request never changes the health of more than one key
        while True:
            lease = self.pool.lease(req.key_id) if req.key_id else self.pool.acquire(tried)
            tried.add(lease.key_id)
            can_retry = replayable and req.key_id is None and len(tried) < 2
            headers = rewrite.request_headers(
                req.headers, secret=lease.secret, request_id=req.request_id, user_agent=USER_AGENT
            )
            data: bytes | io.BytesIO | AsyncIterator[bytes] | None = body
            if isinstance(body, bytes) and len(body) > CHUNKED_BODY_BYTES:
                # aiohttp writes a bytes body in one call (and warns past 1 MiB that it may
                # hold the loop): a file object goes out in chunks. A fresh one each try, so
                # a retry on another key sends it whole.
                data = io.BytesIO(body)
            started = time.perf_counter()
            try:
                resp = await session.request(
                    req.method, url, headers=headers, data=data, allow_redirects=False
                )
            except aiohttp.ConnectionTimeoutError as exc:
                # No connection in time (the pool is full, or connecting is slow): certainly
                # not sent, so never an unknown outcome.
                lease.release()
                self._on_response(lease.key_id, req.route, 0, time.perf_counter() - started)
                raise UpstreamError(
                    "The upstream could not be reached in time; try again shortly.",
                    status=503,
                    headers={"retry-after": "1"},
                ) from exc
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
            out = UpstreamResponse(resp, lease, unsafe=unsafe)
            try:
                retry = await self._judge(out, lease, touched=touched, team=req.team)
            except BaseException:
                out.close()  # a body that broke off mid-error, a cancelled caller: no leak
                raise
            if retry is None:
                return out
            touched = touched or retry
            if can_retry and self._has_other_key(tried):
                out.close()
                self._on_retry(str(resp.status))
                continue
            return out

    async def _judge(
        self, out: UpstreamResponse, lease: Lease, *, touched: bool, team: str = ""
    ) -> bool | None:
        """What a refusal says about the key. None: answer the caller with ``out``; True or
        False: this key's health was (or was not) changed and another key may be tried.

        One request changes the health of one key at most (``touched``): otherwise a caller
        whose requests are refused for their own reasons could take the pool offline."""
        if out.status == 429:
            if touched:
                return None
            # Capped: a long Retry-After may be about one model, not the whole key.
            wait = rewrite.retry_after_seconds(out.headers, self.pool.cooldown_seconds)
            cooled = await self.pool.cool_down(
                lease.key_id,
                min(wait, self.pool.cooldown_seconds * COOLDOWN_CAP_FACTOR),
                team=team,
                seen=lease.seen,
            )
            # A team that has cooled a key this period gets its 429 as it is: neither another
            # key cooled nor another tried (which would cool it the next time).
            return True if cooled else None
        if out.status == 401:
            # Not processed, so safe to send on another key; but only the probe's verdict
            # takes this key out of the pool.
            if not touched and await self._confirm_bad_key(lease):
                await self.pool.quarantine(lease.key_id, lease.seen)
                return True
            return False
        if out.status == 403:
            # Often about the request (a model this key may not use): only a 403 that says the
            # key itself is bad is worth a probe. Never retried on another key: it would refuse
            # the same request, and be blamed for it.
            body = await out.peek(rewrite.ERROR_PEEK_BYTES)
            if (
                not touched
                and rewrite.says_key_is_bad(
                    rewrite.decode_body(body, out.header("content-encoding"))
                )
                and await self._confirm_bad_key(lease)
            ):
                await self.pool.quarantine(lease.key_id, lease.seen)
        return None

    async def _confirm_bad_key(self, lease: Lease) -> bool:
        """Ask the upstream, with this key alone, for something every valid key may read.

        Concurrent refusals of one key share one probe; a probe that cannot reach the upstream
        says nothing, and nothing is quarantined on doubt."""
        probe = self._probes.get(lease.key_id)
        if probe is None:
            probe = asyncio.ensure_future(self._probe(lease.key_id, lease.secret))
            self._probes[lease.key_id] = probe
            probe.add_done_callback(lambda _: self._probes.pop(lease.key_id, None))
        return await asyncio.shield(probe)

    async def _probe(self, key_id: str, secret: str) -> bool:
        if self._session is None:
            return False
        started = time.perf_counter()
        try:
            async with self._session.get(
                self._base_url + PROBE_PATH,
                headers={"authorization": f"Bearer {secret}", "user-agent": USER_AGENT},
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT),
            ) as resp:
                await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False
        self._on_response(key_id, "probe", status, time.perf_counter() - started)
        return status in (401, 403)

    async def fetch_public(self, path: str, *, limit: int) -> bytes:
        """GET one of the upstream's public pages (``/api/pricing``): no key is sent (none of
        ours belongs on new-api's own routes), no redirect is followed, and anything but a
        200 of at most ``limit`` bytes raises UpstreamError. The caller bounds its time."""
        if self._session is None:
            raise UpstreamError("The upstream client is not started.")
        try:
            async with self._session.get(
                self._base_url + path,
                headers={
                    "user-agent": USER_AGENT,
                    "accept": "application/json",
                    "accept-encoding": "identity",
                },
                allow_redirects=False,
            ) as resp:
                if resp.status != 200:
                    raise UpstreamError(f"GET {path} answered HTTP {resp.status}.")
                body = bytearray()
                async for chunk in resp.content.iter_any():
                    body += chunk
                    if len(body) > limit:
                        raise UpstreamError(f"GET {path} answered more than {limit} bytes.")
                return bytes(body)
        except aiohttp.ServerTimeoutError as exc:
            raise UpstreamTimeout(f"GET {path} timed out.") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"GET {path} failed: {type(exc).__name__}.") from exc

    async def fetch_as(self, key_id: str, path: str, *, limit: int) -> bytes:
        """GET one of new-api's own pages about a key (``/api/usage/token``) with that key:
        anything but a 200 of at most ``limit`` bytes raises UpstreamError. The caller bounds
        its time."""
        req = UpstreamRequest(
            method="GET",
            path=path,
            query="",
            headers=(),
            body=None,
            route=path,
            request_id="",
            key_id=key_id,
        )
        resp = await self.send(req)
        try:
            if resp.status != 200:
                raise UpstreamError(f"GET {path} answered HTTP {resp.status}.")
            return await resp.read(limit)
        finally:
            resp.close()

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
        if wait and wait.isascii() and wait.isdigit():
            exc.headers["retry-after"] = wait
    elif resp.status >= 500 and unsafe:
        # The upstream may have acted on it: the SDK must not send it again.
        exc.headers["x-should-retry"] = "false"
        exc.maybe_processed = True
    return exc


def _unknown(exc: GatewayError, unsafe: bool) -> GatewayError:
    exc.maybe_processed = unsafe
    return exc
