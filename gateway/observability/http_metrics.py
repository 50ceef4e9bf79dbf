"""Count, time and log every HTTP request (pure ASGI: it only wraps ``send``)."""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.errors import GatewayError
from gateway.observability.access_log import CURRENT, AccessLog, RequestRecord
from gateway.observability.metrics import Children, Metrics
from gateway.observability.routes import route_label
from gateway.web.asgi import ASGIApp, Message, Receive, Scope, Send

# The HTTP parser accepts some 35 methods (PROPFIND, MKCALENDAR, ...), and anyone can send them
# without a token: as labels, each would multiply the route x status x team series.
LABELLED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in LABELLED_METHODS else "other"


class HttpMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: AccessLog | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log if access_log is not None and access_log.enabled else None
        self._requests = Children()
        self._seconds = Children()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app dies before answering, the server answers 500
        sent = 0
        record = RequestRecord()
        token = CURRENT.set(record)

        async def send_observed(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        m = self.metrics
        m.in_flight.inc()
        try:
            await self.app(scope, receive, send_observed)
        finally:
            CURRENT.reset(token)
            m.in_flight.dec()
            seconds = time.perf_counter() - started
            route = route_label(scope["path"])
            principal = scope.get("principal")
            team = m.team_label(principal.team if principal is not None else None)
            method = method_label(scope["method"])
            self._requests.get(
                (route, method, status, team),
                lambda: m.requests.labels(route, method, str(status), team),
            ).inc()
            self._seconds.get((route,), lambda: m.request_duration.labels(route)).observe(seconds)
            if self.access_log is not None:
                self.access_log.write(
                    request_id=scope.get("request_id"),
                    team=principal.team if principal is not None else None,
                    user=principal.user if principal is not None else None,
                    method=scope["method"],
                    route=route,
                    status=status,
                    seconds=seconds,
                    bytes_sent=sent,
                    record=record,
                )


class ServerRefusals:
    """Requests the HTTP server answers itself, before any app sees them (a head too large or
    too slow, bytes that are not HTTP): counted and logged like every other answer, so an
    attack on the parser shows in the metrics and the log. Route and method are unknown."""

    def __init__(
        self,
        metrics: Metrics,
        access_log: AccessLog | None,
        on_error: Callable[[GatewayError], None],
    ) -> None:
        self.metrics = metrics
        self.access_log = access_log if access_log is not None and access_log.enabled else None
        self.on_error = on_error

    def __call__(self, exc: GatewayError) -> None:
        self.on_error(exc)
        m = self.metrics
        m.requests.labels("-", "other", str(exc.status), m.team_label(None)).inc()
        if self.access_log is not None:
            self.access_log.write(
                request_id=None,
                team=None,
                user=None,
                method="-",
                route="-",
                status=exc.status,
                seconds=0.0,
                bytes_sent=0,
                record=RequestRecord(reason=exc.code),
            )
