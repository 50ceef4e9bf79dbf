"""Pass-through of the routes in the route table to the upstream, streaming both ways.

A path outside the table is refused before anything else happens (``unsupported_endpoint``).
Bodies the body policy must read (chat, responses) are read whole; other small bodies are read
whole (so a request can be replayed on another key, and a small answer
leaves in one write); large or unknown-length bodies and event streams are streamed chunk by
chunk. Once a response has started, an error can no longer be reported as a body: the
connection is cut instead, so a truncated answer is never mistaken for a whole one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Protocol

from gateway.errors import GatewayError, UpstreamError
from gateway.metering import kinds
from gateway.metering.service import Meter
from gateway.observability.routes import route_label
from gateway.proxy import body_policy, media
from gateway.proxy.metered import open_call
from gateway.quota.middleware import admitted, ended
from gateway.upstream import rewrite
from gateway.upstream.client import (
    IDEMPOTENT,
    UpstreamClient,
    UpstreamRequest,
    UpstreamResponse,
    caller_error,
)
from gateway.upstream.routes import PLAIN, RouteTable
from gateway.web.asgi import Receive, Scope, Send, header

log = logging.getLogger("gateway.proxy")

BUFFER_LIMIT = 1024 * 1024  # bodies up to this size are read whole
# How long an upstream may keep a stream open after its own last event (new-api ends it right
# away): then the caller's answer ends whole, without waiting out the read timeout.
END_GRACE_SECONDS = 2.0
OVERLAP_BODY_LIMIT = 64 * 1024  # bodies read while the rate decision is out (``forwards``)
_YIELD_EVERY = 16  # chunks between forced yields, so a disconnect is noticed (see relay)


class _ClientGone(Exception):
    """The caller hung up before its request body arrived."""


class StreamObserver(Protocol):
    """Told about each streamed (not buffered) answer: for in-flight and abort metrics."""

    def started(self) -> None: ...
    def chunk(self, size: int) -> None: ...
    def ended(self, outcome: str) -> None: ...  # complete | client | upstream


class PassThrough:
    def __init__(
        self,
        client: UpstreamClient,
        *,
        routes: RouteTable,
        secrets: Callable[[], Iterable[str]],
        observer: Callable[[Scope], StreamObserver | None] = lambda scope: None,
        meter: Meter | None = None,
    ) -> None:
        self.client = client
        self.routes = routes
        self.secrets = secrets
        self.observer = observer
        self.meter = meter

    def meters(self, scope: Scope) -> bool:
        """Whether this request reaches a metered route here (its reservation then counts
        its request against the rate limit too)."""
        if self.meter is None:
            return False
        # The path was validated at the edge (RequestLimitsMiddleware): scope["path"] is the
        # one __call__ decodes.
        rule = self.routes.find(scope["method"], scope["path"])
        return rule is not None and rule.meter != kinds.FREE

    def forwards(self, scope: Scope) -> bool:
        """Whether this request reaches a route forwarded here, which awaits its rate decision
        (``admitted``) only before it calls the upstream, reading its body meanwhile. Only
        for a small body of known length sent without ``Expect: 100-continue``: a caller
        over its limit is never asked for (or made to send) a large body before its 429."""
        if self.routes.find(scope["method"], scope["path"]) is None:
            return False
        length = None
        for name, value in scope["headers"]:
            if name == b"expect" or name == b"transfer-encoding":
                return False
            if name == b"content-length":
                length = value
        return length is None or (length.isdigit() and int(length) <= OVERLAP_BODY_LIMIT)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The rate decision (RateLimitMiddleware) left before this began and is this
        # route's to await before anything goes upstream (``admitted``) and to close.
        try:
            raw_path = scope.get("raw_path") or scope["path"].encode()
            decoded, path = rewrite.upstream_path(raw_path.split(b"?", 1)[0])
            rule = self.routes.match(scope["method"], decoded)
            metered = self.meter is not None and rule.meter != kinds.FREE
            # How the gateway reads the body, which is how it leaves. A metered call finds out in
            # its own checks (which count it); an unmetered route added in config is not read.
            how = (
                None
                if metered or rule.meter == kinds.REQUEST
                else media.body_format(scope, rule.meter)
            )
            # A body without a policy of its own, unmetered, that the upstream reads as JSON.
            scan = rule.body == PLAIN and not metered and how == media.JSON
            try:
                body, body_done = await _request_body(
                    scope, receive, whole=rule.body != PLAIN or metered or scan
                )
            except _ClientGone:
                return  # nobody to answer; not an error worth a traceback in the server log
            call = None
            headers = tuple(scope["headers"])
            if metered:
                assert self.meter is not None
                assert not isinstance(body, AsyncIterator)
                call = await open_call(self.meter, scope, rule, body)
                body = call.body
                # The answer is read for its usage: it must come uncompressed.
                headers = tuple([h for h in headers if h[0] != b"accept-encoding"])
            elif rule.body != PLAIN:
                assert not isinstance(body, AsyncIterator)
                body = body_policy.apply(rule.body, body)
            elif scan:
                assert not isinstance(body, AsyncIterator)
                body_policy.scanned(
                    body
                )  # sent as it came: the check parsed it as the upstream will
            if how == media.JSON or (call is not None and call.json):
                headers = media.as_json(headers)
            req = UpstreamRequest(
                method=scope["method"],
                path=path,
                # No route in the table takes a query, and new-api reads some (e.g. a key) from
                # it: the caller's query string stays here.
                query="",
                headers=headers,
                body=body,
                route=route_label(scope["path"]),
                request_id=scope.get("request_id", ""),
                team=_team(scope),
            )
            # The rate decision left before the body was read: it is usually back by now.
            rate_headers = await admitted(scope)
            try:
                resp = await self.client.send(req)
            except GatewayError as exc:
                if call is not None:
                    await call.upstream_failed(exc)
                raise
            except BaseException:
                if call is not None:
                    await call.settle_shielded(None)
                raise
            if call is not None:
                call.admission.upstream_key = resp.key_id
            watch = receive if body_done() else None
            try:
                if _not_an_answer(resp.status, req.method):
                    if call is not None:  # nothing the caller can use ran: nothing to pay
                        await call.settle_shielded(None, failed=True)
                    resp.close()
                    raise UpstreamError(
                        f"The upstream gave an answer the gateway does not forward (HTTP "
                        f"{resp.status})."
                    )
                if resp.status >= 400:
                    if call is not None:  # new-api bills no failed call, whatever its body
                        await call.settle_shielded(None, failed=True)
                    try:
                        raw = await resp.read(BUFFER_LIMIT)
                    except GatewayError:
                        resp.close()  # never reused with part of a body in it
                        raw = b""  # too large to judge, or cut: an error all the same
                    raise self._upstream_error(resp, raw, unsafe=req.method not in IDEMPOTENT)
                if call is not None:
                    await call.answer(resp, watch, send, relay, self.observer(scope))
                else:
                    headers_out = rewrite.response_headers(resp.raw_headers)
                    await relay(resp, watch, send, headers_out + rate_headers, self.observer(scope))
            finally:
                resp.close()
                if call is not None and not call.admission.settled:
                    await call.settle_shielded(None)
        except Exception:
            # A refusal outranks whatever this found wrong after it, exactly as when the
            # check ran first: the caller is told 429, not 400.
            await admitted(scope)
            raise
        finally:
            ended(scope)

    def _upstream_error(self, resp: UpstreamResponse, raw: bytes, *, unsafe: bool) -> GatewayError:
        resp.finish()
        exc = caller_error(resp, raw, self.secrets(), unsafe=unsafe)
        rid = resp.header("x-oneapi-request-id")
        if rid and rewrite.valid_request_id(rid.encode()):
            exc.headers["x-upstream-request-id"] = rid
        return exc


def _not_an_answer(status: int, method: str) -> bool:
    """A status the caller cannot take as its call's answer: an interim one (101 would hand
    the caller's connection to another protocol) or a redirect, which no forwarded route
    follows (and whose Location is the upstream's own). 304 answers a conditional GET."""
    if status < 200:
        return True
    return 300 <= status < 400 and not (status == 304 and method in ("GET", "HEAD"))


def _team(scope: Scope) -> str:
    # Every forwarded route is authenticated; a caller nobody knows still has a budget.
    principal = scope.get("principal")
    return str(principal.team) if principal is not None else "-"


async def _request_body(
    scope: Scope, receive: Receive, *, whole: bool = False
) -> tuple[bytes | AsyncIterator[bytes] | None, Callable[[], bool]]:
    """The request body: bytes when small and of known length (or ``whole``), else a stream.

    The second value tells whether the body has been read to the end, after which ``receive``
    only reports a disconnect. A whole body is still bounded by the request size limit.
    """
    length = header(scope, b"content-length")
    chunked = header(scope, b"transfer-encoding") is not None
    if whole and (length is not None or chunked):
        return await _read_all(receive) or None, lambda: True
    if length is not None and int(length) <= BUFFER_LIMIT:
        body = await _read_all(receive)
        return (body if body or length != b"0" else None), lambda: True
    if length is None and header(scope, b"transfer-encoding") is None:
        return None, lambda: True
    done = False

    async def stream() -> AsyncIterator[bytes]:
        nonlocal done
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise asyncio.CancelledError()
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            if chunk:
                yield chunk
        done = True

    return stream(), lambda: done


async def _read_all(receive: Receive) -> bytes:
    chunks = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def relay(
    resp: UpstreamResponse,
    receive: Receive | None,
    send: Send,
    headers: list[tuple[bytes, bytes]] | None = None,
    observer: StreamObserver | None = None,
    *,
    tap: Callable[[bytes], bytes] | None = None,
    before_end: Callable[[], Awaitable[bytes]] | None = None,
    chunks: AsyncIterator[bytes] | None = None,
    ended: Callable[[], bool] | None = None,
) -> None:
    """Send the upstream's answer to the caller, streaming anything large or open-ended.

    ``receive`` (when the request body is fully read) is watched for a disconnect, on which
    the upstream response is closed at once rather than drained. A stream's chunks pass
    through ``tap`` (which may hold part of one back), ``before_end`` runs once the upstream
    has ended and before the caller is told so (what it answers leaves with the end of the
    answer, in one write), ``chunks`` replaces the response's own, and ``ended`` tells whether
    the stream's own last event has come: an upstream that breaks after it leaves the answer
    whole, and one that has not ended END_GRACE_SECONDS after it is not waited for further.
    """
    if headers is None:
        headers = rewrite.response_headers(resp.raw_headers)
    length = resp.header("content-length")
    ctype = resp.header("content-type") or ""
    if (
        tap is None
        and chunks is None
        and length is not None
        and length.isdigit()
        and int(length) <= BUFFER_LIMIT
        and ("event-stream" not in ctype.lower())
    ):
        body = await resp.read(BUFFER_LIMIT)
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if observer is not None:
            observer.chunk(len(body))  # counted as bytes sent, not as a stream
        resp.finish()
        return

    disconnected = asyncio.Event()
    watcher = (
        asyncio.create_task(_watch_disconnect(receive, disconnected, resp)) if receive else None
    )
    outcome = "client"  # until the stream is seen to end otherwise
    if observer is not None:
        observer.started()
    try:
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        n = 0
        source = chunks or resp.iter_chunks()
        grace_ends: float | None = None
        try:
            while True:
                if ended is not None and ended():
                    # The caller's answer is whole: wait only briefly for the end of the
                    # upstream's (keep-alive comments included), not the read timeout.
                    clock = asyncio.get_running_loop().time
                    if grace_ends is None:
                        grace_ends = clock() + END_GRACE_SECONDS
                    try:
                        chunk = await asyncio.wait_for(anext(source), grace_ends - clock())
                    except (StopAsyncIteration, TimeoutError):
                        break
                else:
                    try:
                        chunk = await anext(source)
                    except StopAsyncIteration:
                        break
                if disconnected.is_set():
                    return
                if tap is not None:
                    chunk = tap(chunk)
                    if not chunk:
                        continue
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if observer is not None:
                    observer.chunk(len(chunk))
                n += 1
                if n % _YIELD_EVERY == 0:
                    # A send after the caller left may complete without suspending, and
                    # buffered upstream data too: yield so the disconnect watcher can run.
                    await asyncio.sleep(0)
        except GatewayError:
            if disconnected.is_set():
                return
            if ended is None or not ended():
                outcome = "upstream"
                log.warning("upstream broke mid-answer; aborting the caller's connection")
                # Returning without the final message makes the server cut the connection.
                return
            # Broken after its last event: nothing of the answer is missing, so it ends whole.
        if not disconnected.is_set():
            last = await before_end() if before_end is not None else b""
            await send({"type": "http.response.body", "body": last, "more_body": False})
            if last and observer is not None:
                observer.chunk(len(last))
            outcome = "complete"
    finally:
        if watcher is not None:
            watcher.cancel()
        if observer is not None:
            observer.ended(outcome)


async def _watch_disconnect(receive: Receive, flag: asyncio.Event, resp: UpstreamResponse) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            flag.set()
            resp.close()
            return
