"""Count and time every HTTP request (pure ASGI: it only wraps ``send``)."""

from __future__ import annotations

import time

from gateway.asgi import ASGIApp, Message, Receive, Scope, Send
from gateway.observability.metrics import Metrics
from gateway.observability.routes import route_label


class HttpMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app dies before answering, the server answers 500

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        m = self.metrics
        m.in_flight.inc()
        try:
            await self.app(scope, receive, send_observed)
        finally:
            m.in_flight.dec()
            route = route_label(scope["path"])
            principal = scope.get("principal")
            team = m.team_label(principal.team if principal is not None else None)
            m.requests.labels(route, scope["method"], str(status), team).inc()
            m.request_duration.labels(route).observe(time.perf_counter() - started)
