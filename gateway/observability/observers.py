"""What the rest of the gateway tells observability: one method per event, each turning it
into metrics (and the access-log record) so services never import prometheus_client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import Counter

from gateway.errors import GatewayError
from gateway.metering.prices import PriceTable, Usage
from gateway.metering.service import MeterEvents
from gateway.observability.access_log import note_quota, note_upstream
from gateway.observability.metrics import Children, Metrics
from gateway.observability.streams import StreamMetrics
from gateway.quota.model import SPEND_UNITS
from gateway.videos.events import VideoEvents
from gateway.videos.reconciler import Report
from gateway.web.asgi import Scope


class Observers:
    def __init__(self, metrics: Metrics, *, video_models: Iterable[str]) -> None:
        self.metrics = metrics
        self._models = frozenset(video_models)
        self._decisions = Children()
        self._upstream = Children()
        self._upstream_seconds = Children()

    def redis_error(self, op: str) -> None:
        self.metrics.redis_errors.labels(op).inc()

    def redis_breaker(self, is_open: bool) -> None:
        self.metrics.redis_breaker_open.set(1 if is_open else 0)

    def upstream(self, key: str, route: str, status: int, seconds: float) -> None:
        m = self.metrics
        self._upstream.get(
            (key, route, status), lambda: m.upstream_requests.labels(key, route, str(status))
        ).inc()
        self._upstream_seconds.get((route,), lambda: m.upstream_duration.labels(route)).observe(
            seconds
        )
        note_upstream(key, status)

    def upstream_retry(self, reason: str) -> None:
        self.metrics.upstream_retries.labels(reason).inc()

    def auth_failure(self, reason: str) -> None:
        self.metrics.auth_failures.labels(reason).inc()

    def quota_decision(self, team: str, kind: str, result: str) -> None:
        m = self.metrics
        self._decisions.get(
            (team, kind, result),
            lambda: m.quota_decisions.labels(m.team_label(team), kind, result),
        ).inc()
        note_quota(result)

    def error(self, exc: GatewayError) -> None:
        self.metrics.errors.labels(self.metrics.error_code_label(exc.code)).inc()

    def video_events(self) -> VideoEvents:
        return VideoEvents(created=self._video_created, finished=self._video_finished)

    def _video_created(self, team: str, model: str, seconds: int, spend: float) -> None:
        m = self.metrics
        labels = (m.team_label(team), m.model_label(model, self._models))
        m.video_jobs_created.labels(*labels).inc()
        m.video_seconds.labels(*labels).inc(seconds)
        m.video_spend.labels(*labels).inc(spend)

    def video_charged(self, team: str, model: str, spend: float) -> None:
        m = self.metrics
        if spend:
            m.spend.labels(m.team_label(team), m.model_label(model, self._models), "video").inc(
                spend
            )

    def _video_finished(self, team: str, model: str, status: str, seconds: float) -> None:
        m = self.metrics
        name = m.model_label(model, self._models)
        m.video_jobs_finished.labels(m.team_label(team), name, status).inc()
        m.video_job_duration.labels(name).observe(seconds)

    def price_refresh(self, result: str, loaded: int) -> None:
        self.metrics.price_refreshes.labels(result).inc()
        self.metrics.prices_loaded.set(loaded)

    def upstream_drift(self, key: str, drift: float) -> None:
        self.metrics.upstream_drift.labels(key).set(drift)

    def bill_read(self, result: str) -> None:
        self.metrics.reconciliations.labels(result).inc()

    def meter_events(self, prices: Callable[[], PriceTable]) -> MeterEvents:
        """Metering's events; ``prices`` is the table calls are priced with now, whose
        models by exact name are the only model labels."""
        return _MeterMetrics(self.metrics, self.quota_decision, prices)

    def streams(self, *, content: bool) -> Callable[[Scope], StreamMetrics]:
        """Per streamed answer: in-flight and abort metrics, by the caller's team."""

        def make(scope: Scope) -> StreamMetrics:
            principal = scope.get("principal")
            team = principal.team if principal else None
            return StreamMetrics(self.metrics, team, content=content)

        return make

    def reconciled(self, report: Report) -> None:
        m = self.metrics
        m.reconciler_runs.labels("ok").inc()
        m.reconciler_last_run.set(time.time())
        m.reconciler_lag.set(report.lag_seconds)
        for kind, n in report.drift.items():
            m.quota_drift.labels(kind).inc(n)

    def reconciler_failed(self) -> None:
        self.metrics.reconciler_runs.labels("error").inc()


_TOKEN_TYPES = ("input", "cached", "output")


class _MeterMetrics:
    """Metering's events as metrics. Model names come from callers (a glob price or
    ``pricing.unpriced: allow`` lets any name through), so a name is a label only if the price
    table names it exactly, configured or loaded; the rest are 'other'. Labelling the first
    names seen instead would let one caller's made-up names take every slot and turn the
    other teams' models into 'other'."""

    def __init__(
        self,
        metrics: Metrics,
        decision: Callable[[str, str, str], None],
        prices: Callable[[], PriceTable],
    ) -> None:
        self.metrics = metrics
        self._decision = decision
        self._prices = prices
        self._children = Children()

    def decision(self, team: str, kind: str, result: str) -> None:
        self._decision(team, kind, result)

    def _model(self, model: str) -> str:
        return model if self._prices().names(model) else "other"

    def charged(self, team: str, model: str, kind: str, usage: Usage, spend_units: int) -> None:
        # Keyed by the label, not the name: a model the loaded price list adds later gets its
        # own series from then on, and made-up names share one cache entry.
        label = self._model(model)
        key = (team, label, kind)
        counters: list[Counter | None] = self._children.get(key, lambda: [None] * 4)
        # input counts every input token, as the ledger does; cached is the part of it cached.
        for i, n in enumerate((usage.input_tokens, usage.cached_tokens, usage.output_tokens)):
            if n:
                (counters[i] or self._counter(counters, i, key)).inc(n)
        if spend_units:
            (counters[3] or self._counter(counters, 3, key)).inc(spend_units / SPEND_UNITS)

    def _counter(
        self, counters: list[Counter | None], i: int, key: tuple[str, str, str]
    ) -> Counter:
        """The counter ``i`` (input, cached, output tokens; spend) of one team's calls of one
        model and kind, made when first used (a series of nothing is none at all: an image
        model has no token series)."""
        team, label, kind = key
        shown = self.metrics.team_label(team)
        if i < 3:
            child = self.metrics.tokens.labels(shown, label, _TOKEN_TYPES[i])
        else:
            child = self.metrics.spend.labels(shown, label, kind)
        counters[i] = child
        return child

    def estimated(self, kind: str) -> None:
        self.metrics.usage_estimated.labels(kind).inc()

    def unpriced(self, model: str) -> None:
        self.metrics.unpriced_calls.labels(self._model(model)).inc()
