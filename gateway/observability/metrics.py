"""Every metric the gateway exports, declared up front on a registry of its own.

Nothing registers on prometheus_client's global registry, so a test can build many apps in
one process. Labels stay bounded: teams outside the configured set become ``other``, routes are
templates, upstream keys appear by id only, and no video id is ever a label.

With several uvicorn workers, ``PROMETHEUS_MULTIPROC_DIR`` is set by ``gateway serve`` before
the workers start: counters and histograms then live in shared files and a scrape of any worker
adds up all of them. Values read at scrape time (key states, quota usage) come from collectors
that report the scraping worker's own view; the data behind them is shared through Redis.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_JOB_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MAX_ERROR_CODES = 200
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, teams: Iterable[str] = (), registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._teams = frozenset(t for t in teams if t != "default")
        r = self.registry
        self.requests = Counter(
            "gateway_requests_total",
            "Requests answered by the gateway",
            ["route", "method", "status", "team"],
            registry=r,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request start to the end of the response",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self._live: list[Collector] = []
        self.in_flight = Gauge(
            "gateway_requests_in_flight",
            "Requests being handled",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.upstream_requests = Counter(
            "gateway_upstream_requests_total",
            "Requests sent to the upstream, by key id and upstream status",
            ["key", "route", "status"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds",
            "Time until the upstream's response headers arrived",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_retries = Counter(
            "gateway_upstream_retries_total",
            "Requests retried on another key, by the reason",
            ["reason"],
            registry=r,
        )
        self.auth_failures = Counter(
            "gateway_auth_failures_total",
            "Rejected credentials, by reason",
            ["reason"],
            registry=r,
        )
        self.redis_errors = Counter(
            "gateway_redis_errors_total",
            "Redis operations that failed, by operation",
            ["operation"],
            registry=r,
        )
        self.quota_decisions = Counter(
            "gateway_quota_decisions_total",
            "Quota decisions by team, limit kind and result (allowed, rejected, fail_open, "
            "kept, refunded)",
            ["team", "kind", "result"],
            registry=r,
        )
        self.reconciler_runs = Counter(
            "gateway_reconciler_runs_total",
            "Reconciler passes this replica ran as the leader, by result",
            ["result"],
            registry=r,
        )
        self.reconciler_lag = Gauge(
            "gateway_reconciler_lag_seconds",
            "How long the stalest unfinished job had gone unseen at the last pass",
            registry=r,
            multiprocess_mode="max",
        )
        self.reconciler_last_run = Gauge(
            "gateway_reconciler_last_run_timestamp_seconds",
            "When this deployment's reconciler leader last finished a pass (Unix time)",
            registry=r,
            multiprocess_mode="max",
        )
        self.video_jobs_created = Counter(
            "gateway_video_jobs_created_total",
            "Video jobs the upstream accepted",
            ["team", "model"],
            registry=r,
        )
        self.video_jobs_finished = Counter(
            "gateway_video_jobs_finished_total",
            "Video jobs that ended, by status (each counted once, whichever replica saw it)",
            ["team", "model", "status"],
            registry=r,
        )
        self.video_job_duration = Histogram(
            "gateway_video_job_duration_seconds",
            "From create to completed or failed",
            ["model"],
            buckets=_JOB_BUCKETS,
            registry=r,
        )
        self.video_seconds = Counter(
            "gateway_video_seconds_total",
            "Seconds of video requested by jobs the upstream accepted",
            ["team", "model"],
            registry=r,
        )
        self.video_spend = Counter(
            "gateway_video_spend_total",
            "Spend of jobs the upstream accepted, from the price table (quota.currency)",
            ["team", "model"],
            registry=r,
        )
        self.tokens = Counter(
            "gateway_tokens_total",
            "Tokens charged to metered calls, by type (input, cached, output)",
            ["team", "model", "type"],
            registry=r,
        )
        self.spend = Counter(
            "gateway_spend_total",
            "Spend charged, in quota.currency, by kind of call (chat, images, video, ...)",
            ["team", "model", "kind"],
            registry=r,
        )
        self.usage_estimated = Counter(
            "gateway_usage_estimated_total",
            "Metered calls charged their estimate because no usage arrived, by kind",
            ["kind"],
            registry=r,
        )
        self.unpriced_calls = Counter(
            "gateway_unpriced_calls_total",
            "Calls forwarded for a model with no price (pricing.unpriced: allow), charged zero",
            ["model"],
            registry=r,
        )
        self.price_refreshes = Counter(
            "gateway_price_refresh_total",
            "Loads of the upstream's price list (pricing.source: crazyrouter), by result (ok, "
            "error: the last good list is kept)",
            ["result"],
            registry=r,
        )
        self.prices_loaded = Gauge(
            "gateway_prices_loaded",
            "Models priced by the upstream's price list in use (0 until a load succeeds)",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.upstream_drift = Gauge(
            "gateway_upstream_spend_drift",
            "Per upstream key, what the upstream billed minus what the gateway charged since "
            "the first reconciliation, in quota.currency: spend the gateway did not meter",
            ["key"],
            registry=r,
            multiprocess_mode="max",
        )
        self.reconciliations = Counter(
            "gateway_upstream_reconcile_total",
            "Per-key readings of the upstream's bill, by result (ok, error: it could not be read)",
            ["result"],
            registry=r,
        )
        self.budget_alert_share = Gauge(
            "gateway_budget_alert_share",
            "The share of a budget at which the budget alert fires (quota.budget_alert_share)",
            registry=r,
            multiprocess_mode="max",
        )
        self.content_bytes = Counter(
            "gateway_content_bytes_total",
            "Video content bytes sent to callers",
            ["team"],
            registry=r,
        )
        self.streams_in_flight = Gauge(
            "gateway_streams_in_flight",
            "Streamed answers (event streams, downloads) being relayed",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.stream_aborts = Counter(
            "gateway_stream_aborts_total",
            "Streamed answers cut short, by the side that left (client or upstream)",
            ["side"],
            registry=r,
        )
        self.quota_drift = Counter(
            "gateway_quota_drift_repaired_total",
            "Quota state the reconciler found inconsistent and repaired, by kind",
            ["kind"],
            registry=r,
        )
        self.errors = Counter(
            "gateway_errors_total",
            "Error answers, by code (every one: auth, limits, quotas, upstream and 500s)",
            ["code"],
            registry=r,
        )
        self._error_codes: set[str] = set()
        self.redis_breaker_open = Gauge(
            "gateway_redis_breaker_open",
            "1 while this replica knows Redis is unreachable and fails fast without asking it",
            registry=r,
            multiprocess_mode="max",
        )

    def team_label(self, team: str | None) -> str:
        if team is None:
            return "none"
        return team if team in self._teams else "other"

    def error_code_label(self, code: str) -> str:
        # Upstream codes are kept in answers but come from outside: bound the label set.
        if code in self._error_codes:
            return code
        if len(self._error_codes) < MAX_ERROR_CODES and len(code) <= 64:
            self._error_codes.add(code)
            return code
        return "other"

    def model_label(self, model: str, known: Iterable[str]) -> str:
        return model if model in known else "other"

    def watch_keys(
        self, key_ids: Iterable[str], states: Iterable[str], state_of: Callable[[str], str]
    ) -> None:
        """Report key states at scrape time (no work on the request path)."""
        self.add_live(_KeyStates(tuple(key_ids), tuple(states), state_of))

    def watch_quota(self, snapshot: Callable[[], Mapping[str, QuotaView]]) -> None:
        """Report per-team usage and limits from a snapshot refreshed in the background."""
        self.add_live(_QuotaGauges(snapshot, self.team_label))

    def add_live(self, collector: Collector) -> None:
        self._live.append(collector)
        if not self.multiprocess:
            self.registry.register(collector)

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        # Every worker's counters from the shared directory, plus this worker's live view.
        scrape = CollectorRegistry(auto_describe=True)
        MultiProcessCollector(scrape)  # type: ignore[no-untyped-call]
        for collector in self._live:
            scrape.register(collector)
        return generate_latest(scrape)


# Per team: use per limit kind, the effective limits (None: unlimited), open reservations.
QuotaView = tuple[Mapping[str, float], Mapping[str, float | None], int]


class _KeyStates(Collector):
    def __init__(
        self, keys: tuple[str, ...], states: tuple[str, ...], state_of: Callable[[str], str]
    ) -> None:
        self.keys, self.states, self.state_of = keys, states, state_of

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "gateway_upstream_key_state",
            "1 for the current state of each upstream key",
            labels=["key", "state"],
        )
        for kid in self.keys:
            current = self.state_of(kid)
            for state in self.states:
                g.add_metric([kid, state], 1.0 if current == state else 0.0)
        yield g


class _QuotaGauges(Collector):
    def __init__(
        self, snapshot: Callable[[], Mapping[str, QuotaView]], label: Callable[[str], str]
    ) -> None:
        self.snapshot, self.label = snapshot, label

    def collect(self) -> Iterator[Metric]:
        usage = GaugeMetricFamily(
            "gateway_quota_usage",
            "Current use per team and limit kind (refreshed every few seconds)",
            labels=["team", "kind"],
        )
        limit = GaugeMetricFamily(
            "gateway_quota_limit",
            "Effective limit per team and kind (absent when unlimited)",
            labels=["team", "kind"],
        )
        reservations = GaugeMetricFamily(
            "gateway_quota_open_reservations",
            "Video jobs holding a reservation that is not settled yet",
            labels=["team"],
        )
        for team, (used, limits, open_jobs) in sorted(self.snapshot().items()):
            name = self.label(team)
            if name == "other":
                continue  # bounded labels: only configured teams get their own series
            for kind, value in used.items():
                usage.add_metric([name, kind], float(value))
            for kind, lim in limits.items():
                if lim is not None:
                    limit.add_metric([name, kind], float(lim))
            reservations.add_metric([name], float(open_jobs))
        yield usage
        yield limit
        yield reservations


MAX_CACHED_CHILDREN = 10_000  # label values come from callers (team and model names): bounded


class Children:
    """Labelled children looked up once per combination, not per call: prometheus_client's
    labels() takes a lock and builds its key every time, and these run on every request."""

    def __init__(self) -> None:
        self._children: dict[tuple[Any, ...], Any] = {}

    def get(self, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        child = self._children.get(key)
        if child is None:
            child = make()
            if len(self._children) < MAX_CACHED_CHILDREN:
                self._children[key] = child
        return child
