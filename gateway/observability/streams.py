"""Metrics for streamed answers: how many are in flight, how they end, and download volume."""

from __future__ import annotations

from gateway.observability.metrics import Metrics


class StreamMetrics:
    """One per streamed answer (it satisfies proxy.passthrough.StreamObserver)."""

    def __init__(self, metrics: Metrics, team: str | None, *, content: bool) -> None:
        self.metrics = metrics
        # Resolved once: a 1 GiB download is tens of thousands of chunks.
        self._bytes = metrics.content_bytes.labels(metrics.team_label(team)) if content else None

    def started(self) -> None:
        self.metrics.streams_in_flight.inc()

    def chunk(self, size: int) -> None:
        if self._bytes is not None:
            self._bytes.inc(size)

    def ended(self, outcome: str) -> None:
        self.metrics.streams_in_flight.dec()
        if outcome != "complete":
            self.metrics.stream_aborts.labels(outcome).inc()
