"""uvicorn's httptools protocol with bounds on what a client may make the server hold.

httptools buffers a header value until it is complete and uvicorn sets no limit, so one
connection sending a 96 MiB header block made the gateway hold it all (and answer only after
seconds); a client trickling a byte a second held a connection open forever. Here:

- the request head is counted as it arrives and never fed to the parser beyond
  ``max_header_bytes``: the client gets a complete 431 and the connection closes;
- the head must be complete within ``header_timeout_seconds`` of its first byte (408), and a
  connection that sends nothing at all is closed after the same time;
- the body must be complete within ``body_timeout_seconds`` of the end of the head; after that
  the connection closes and the app sees ``http.disconnect``.

Both clocks are only a bound on what the client does: while reading is paused because the
gateway itself is behind (a pipelined request waiting, the app not yet reading the body), an
expiring clock starts over instead of cutting the client.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from asyncio import TimerHandle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.errors import GatewayError, HeadersTooLarge, error_body, error_headers
from gateway.settings import ServerSettings


@dataclass(frozen=True, kw_only=True)
class HeadLimits:
    max_header_bytes: int = 16 * 1024
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 120.0

    @classmethod
    def of(cls, server: ServerSettings) -> HeadLimits:
        return cls(
            max_header_bytes=server.max_header_bytes,
            header_timeout_seconds=server.header_timeout_seconds,
            body_timeout_seconds=server.body_timeout_seconds,
        )


def not_http() -> GatewayError:
    return GatewayError("The request is not valid HTTP.", code="invalid_request", status=400)


def head_timeout() -> GatewayError:
    return GatewayError(
        "The request headers did not arrive in time.", code="request_timeout", status=408
    )


class GatewayHttpProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: HeadLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        # Bytes of the current head fed to the parser; None once the head is complete. A
        # pipelined head that starts inside the read that ended the previous request is
        # counted from the next read on: at most one read (256 KiB) more than the limit.
        self._head_bytes: int | None = 0
        self._head_started = False
        self._head_timer: TimerHandle | None = None
        self._body_timer: TimerHandle | None = None
        self._refusal: GatewayError | None = None  # to answer once earlier responses are out
        self._completed = 0  # requests whose message ended (a piece may end one, start the next)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self._arm(self.limits.header_timeout_seconds, self._head_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return
        while data:
            seen = self._head_bytes
            if seen is None:
                super().data_received(data)
                return
            room = self.limits.max_header_bytes - seen
            piece, data = data[:room], data[room:]
            self._head_bytes = seen + len(piece)
            completed = self._completed
            if piece:
                super().data_received(piece)
            if self.parser is None or self.transport.is_closing():
                return
            if not self._in_head() or self._completed != completed:
                # The head ended in this piece (or a whole request did, and the next head
                # started): the rest is counted afresh.
                if self.parser.should_upgrade():
                    return  # the upgrade took the connection (uvicorn drops the rest likewise)
                continue
            if data:
                self._refuse(HeadersTooLarge())
                return

    def _in_head(self) -> bool:
        return self._head_bytes is not None

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = True
        self._cancel(self._head_timer)
        self._head_timer = self._arm(self.limits.header_timeout_seconds, self._head_expired)

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        self._head_started = False
        self._cancel(self._head_timer)
        self._head_timer = None
        super().on_headers_complete()
        if not self.parser.should_upgrade():
            self._body_timer = self._arm(self.limits.body_timeout_seconds, self._body_expired)

    def on_message_complete(self) -> None:
        self._cancel(self._body_timer)
        self._body_timer = None
        self._head_bytes = 0
        self._completed += 1
        super().on_message_complete()

    # Deadlines

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            self._head_timer = self._arm(self.limits.header_timeout_seconds, self._head_expired)
            return
        if self._head_started:
            self._refuse(head_timeout())
        else:
            self.transport.close()  # connected and never sent a byte: nothing to answer

    def _body_expired(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            self._body_timer = self._arm(self.limits.body_timeout_seconds, self._body_expired)
            return
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        # uvicorn's own answer to bytes that are not HTTP (a raw 0xff in the path, a
        # Content-Length of "abc") is plain text; ours is the error every client expects.
        exc = not_http()
        if self._in_head():
            self._refuse(exc)
            return
        # In a body (a malformed chunk): that request cannot go on, and its app may be
        # waiting for the rest of it, so nothing waits for its answer. Closing tells the app
        # (http.disconnect), and the caller gets the 400 if nothing was answered yet.
        self._cancel_timers()
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            self._answer(exc)
        else:
            self.transport.close()
            self._report(exc)

    def _refuse(self, exc: GatewayError) -> None:
        """Answer ``exc`` and close; after the responses still owed to earlier pipelined
        requests, if there are any (the client reads its answers in order)."""
        self._cancel_timers()
        if self._owed():
            self._refusal = exc
            self.flow.pause_reading()
            return
        self._answer(exc)

    def _answer(self, exc: GatewayError) -> None:
        body = error_body(exc)
        headers = [
            *self.server_state.default_headers,
            *error_headers(exc, body),
            (b"connection", b"close"),
        ]
        head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        self.transport.write(STATUS_LINE[exc.status] + head + b"\r\n" + body)
        self.transport.close()
        self._report(exc)

    def _report(self, exc: GatewayError) -> None:
        """The app's own errors are counted and logged by its middleware; these never reach
        it. uvicorn hands the protocol the app it serves (in its own middleware, if any): the
        gateway reports them. After the answer, and never at its expense."""
        app = self.app
        try:
            for _ in range(4):
                refused = getattr(app, "refused", None)
                if callable(refused):
                    refused(exc)
                    return
                app = getattr(app, "app", None)
        except Exception:
            logging.getLogger("gateway").exception("reporting a refused request failed")

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refusal is not None and not self.transport.is_closing():
            if self._owed():
                self.flow.pause_reading()  # super() resumed it for the next request
            else:
                self._refuse(self._refusal)

    def _owed(self) -> bool:
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def _arm(self, seconds: float, callback: Callable[[], None]) -> TimerHandle:
        return self.loop.call_later(seconds, callback)

    @staticmethod
    def _cancel(timer: TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()

    def _cancel_timers(self) -> None:
        self._cancel(self._head_timer)
        self._cancel(self._body_timer)
        self._head_timer = self._body_timer = None


def protocol_factory(limits: HeadLimits) -> type[asyncio.Protocol]:
    """What to pass as uvicorn's ``http=``: the protocol with ``limits`` bound.

    A partial rather than a generated subclass because uvicorn pickles its config into each
    worker process, and a partial of an importable class survives that. uvicorn only ever
    calls it, so it stands in for the class it types ``http`` as.
    """
    return cast("type[asyncio.Protocol]", functools.partial(GatewayHttpProtocol, limits=limits))
