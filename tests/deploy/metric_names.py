"""The metric set the gateway is expected to export: the one list, shared by two tests.

- tests/deploy/test_monitoring.py checks that every metric the alert rules and the Grafana
  dashboard query is in this list (so a typo or a renamed metric cannot silently blank a panel
  or disarm an alert);
- tests/integration/test_metrics_scrape.py checks the live ``/metrics`` scrape against the same
  names and labels.

Names are as they appear in PromQL: counters with their ``_total``, histograms by their base
name (queries use ``_bucket``, ``_sum`` and ``_count``). Labels exclude ``le`` and the target
labels Prometheus adds (``instance``, ``job``).
"""

from __future__ import annotations

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"

# name -> (type, label names)
EXPORTED_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    # HTTP traffic
    "gateway_requests_total": (COUNTER, ("route", "method", "status", "team")),
    "gateway_request_duration_seconds": (HISTOGRAM, ("route",)),
    "gateway_requests_in_flight": (GAUGE, ()),
    # upstream and the key pool
    "gateway_upstream_requests_total": (COUNTER, ("key", "route", "status")),
    "gateway_upstream_duration_seconds": (HISTOGRAM, ("route",)),
    # 1 for the current state; states: healthy, cooling, quarantined, disabled
    "gateway_upstream_key_state": (GAUGE, ("key", "state")),
    "gateway_upstream_retries_total": (COUNTER, ("reason",)),
    # failures
    "gateway_auth_failures_total": (COUNTER, ("reason",)),
    "gateway_redis_errors_total": (COUNTER, ("operation",)),
    # 1 while the replica's circuit breaker knows Redis is down
    "gateway_redis_breaker_open": (GAUGE, ()),
    "gateway_errors_total": (COUNTER, ("code",)),
    # quotas; result: allowed, rejected, fail_open, kept, refunded; kind: requests_per_minute,
    # concurrent_jobs, video_seconds_per_day, video_seconds_per_month, spend_per_month
    "gateway_quota_decisions_total": (COUNTER, ("team", "kind", "result")),
    "gateway_quota_usage": (GAUGE, ("team", "kind")),
    "gateway_quota_limit": (GAUGE, ("team", "kind")),  # absent when unlimited
    "gateway_quota_open_reservations": (GAUGE, ("team",)),
    # the reconciler
    "gateway_reconciler_runs_total": (COUNTER, ("result",)),
    "gateway_reconciler_lag_seconds": (GAUGE, ()),
    "gateway_reconciler_last_run_timestamp_seconds": (GAUGE, ()),
    "gateway_quota_drift_repaired_total": (COUNTER, ("kind",)),
    # video jobs
    "gateway_video_jobs_created_total": (COUNTER, ("team", "model")),
    "gateway_video_jobs_finished_total": (COUNTER, ("team", "model", "status")),
    "gateway_video_job_duration_seconds": (HISTOGRAM, ("model",)),
    "gateway_video_seconds_total": (COUNTER, ("team", "model")),
    "gateway_video_spend_total": (COUNTER, ("team", "model")),
    # metering; type: input (every input token), cached (the cached part), output; kind: chat,
    # completions, responses, embeddings, moderations, images, image_upload, speech,
    # transcription, request, video
    "gateway_tokens_total": (COUNTER, ("team", "model", "type")),
    "gateway_spend_total": (COUNTER, ("team", "model", "kind")),
    "gateway_usage_estimated_total": (COUNTER, ("kind",)),
    "gateway_unpriced_calls_total": (COUNTER, ("model",)),
    # the share of a budget at which GatewayTeamBudgetAboveShare fires (quota.budget_alert_share)
    "gateway_budget_alert_share": (GAUGE, ()),
    # pricing.source: crazyrouter; result: ok, error (the last good list is kept)
    "gateway_price_refresh_total": (COUNTER, ("result",)),
    "gateway_prices_loaded": (GAUGE, ()),
    # the reconciliation with the upstream's bill, per pooled key; result: ok, error
    "gateway_upstream_spend_drift": (GAUGE, ("key",)),
    "gateway_upstream_reconcile_total": (COUNTER, ("result",)),
    # downloads and streams; side: client, upstream
    "gateway_content_bytes_total": (COUNTER, ("team",)),
    "gateway_streams_in_flight": (GAUGE, ()),
    "gateway_stream_aborts_total": (COUNTER, ("side",)),
}

METRIC_NAMES: frozenset[str] = frozenset(EXPORTED_METRICS)
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def sample_names(name: str) -> tuple[str, ...]:
    """The series names one metric appears under in a scrape."""
    kind, _ = EXPORTED_METRICS[name]
    if kind == HISTOGRAM:
        return tuple(name + s for s in HISTOGRAM_SUFFIXES)
    return (name,)


def base_name(series: str) -> str:
    """``gateway_x_seconds_bucket`` -> ``gateway_x_seconds`` for a listed histogram."""
    for suffix in HISTOGRAM_SUFFIXES:
        stem = series.removesuffix(suffix)
        if stem != series and EXPORTED_METRICS.get(stem, ("", ()))[0] == HISTOGRAM:
            return stem
    return series
