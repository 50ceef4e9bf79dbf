"""Every metric the gateway exports, declared up front on a registry of its own.

Nothing registers on prometheus_client's global registry, so a test can build many apps in
one process. Labels stay bounded: teams outside the configured set become ``other``, routes are
templates, upstream keys appear by id only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
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
        self.in_flight = Gauge("gateway_requests_in_flight", "Requests being handled", registry=r)
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
        self.key_state = Gauge(
            "gateway_upstream_key_state",
            "1 for the current state of each upstream key",
            ["key", "state"],
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
        )
        self.quota_drift = Counter(
            "gateway_quota_drift_repaired_total",
            "Quota state the reconciler found inconsistent and repaired, by kind",
            ["kind"],
            registry=r,
        )
        self.errors = Counter(
            "gateway_errors_total",
            "Errors translated into OpenAI-shaped responses, by code",
            ["code"],
            registry=r,
        )

    def team_label(self, team: str | None) -> str:
        if team is None:
            return "none"
        return team if team in self._teams else "other"

    def watch_keys(
        self, key_ids: Iterable[str], states: Iterable[str], state_of: Callable[[str], str]
    ) -> None:
        """Report key states at scrape time (no work on the request path)."""
        states = tuple(states)
        for kid in key_ids:
            for state in states:
                self.key_state.labels(kid, state).set_function(_is_state(state_of, kid, state))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _is_state(state_of: Callable[[str], str], kid: str, state: str) -> Callable[[], float]:
    return lambda: 1.0 if state_of(kid) == state else 0.0
