"""A scrape after a workload through the official SDK shows each metric with the expected labels
and values, no label or log line carries a secret or an unbounded value, and every access-log
line is one JSON object with the documented fields."""

from __future__ import annotations

import contextlib
import io
import json
import re
import secrets
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from gateway.app import create_app
from gateway.sim.app import create_sim_app
from gateway.sim.config import SimConfig
from tests.conftest import gateway_config, make_stack
from tests.deploy.metric_names import EXPORTED_METRICS, sample_names
from tests.rawhttp import raw_request
from tests.servers import run_server, wait_for

TEAMS = {"default": {}, "team-a": {"video_seconds_per_day": 100, "requests_per_minute": 1000}}
VIDEOS = {
    "models": {"sora-2": {"sizes": ["1280x720"], "seconds": [4, 8], "price_per_second": 0.25}},
    "poll_after_ms": 100,
    "poll_interval_seconds": 0,
}


class Live:
    def __init__(self, url: str, sim: Any, jwt: str, keys: dict[str, str], log: io.StringIO):
        self.url, self.sim, self.jwt, self.keys, self.log = url, sim, jwt, keys, log

    def scrape(self) -> str:
        return httpx2.get(self.url + "/metrics").text

    def value(self, name: str, **labels: str) -> float:
        total, found = 0.0, False
        for line in self.scrape().splitlines():
            m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
            if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
                total += float(m.group(2))
                found = True
        if not found:
            raise AssertionError(f"no {name} with {labels}")
        return total


@pytest.fixture
def live(redis_url: str) -> Iterator[Live]:
    from gateway.auth.tokens import mint_token  # noqa: F401 (the token helper below)

    keys = {"primary": "sk-primary-" + secrets.token_hex(12)}
    jwt = secrets.token_urlsafe(48)
    log = io.StringIO()
    with contextlib.ExitStack() as stack:
        sim_app = create_sim_app(
            SimConfig(keys=tuple(keys.values()), job_seconds=0.2, content_bytes=50_000_000)
        )
        sim_url = stack.enter_context(run_server(sim_app, server_header=False))
        settings = gateway_config(
            sim_url,
            redis_url,
            jwt,
            keys,
            teams=TEAMS,
            videos=VIDEOS,
            server={"access_log": "json", "quota_metrics_seconds": 0.1},
        )
        url = stack.enter_context(
            run_server(create_app(settings, log_stream=log), server_header=False)
        )
        yield Live(url, sim_app, jwt, keys, log)


def token(live: Live, team: str = "team-a") -> str:
    from gateway.auth.tokens import mint_token

    return mint_token(live.jwt, team=team, user="alice", ttl_seconds=600)


def test_a_workload_shows_in_every_metric(live: Live) -> None:
    tok = token(live)
    with openai.OpenAI(base_url=live.url + "/v1", api_key=tok, max_retries=0) as c:
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        for _ in c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            pass
        done = c.videos.create_and_poll(prompt="a cat", seconds="8", poll_interval_ms=20)
        failed = c.videos.create_and_poll(prompt="SIMFAIL", seconds="4", poll_interval_ms=20)
        assert (done.status, failed.status) == ("completed", "failed")
        assert len(c.videos.download_content(done.id).read()) == 50_000_000
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=live.url + "/v1", api_key="not-a-jwt", max_retries=0).models.list()

    v = live.value
    route = "/v1/chat/completions"
    assert v("gateway_requests_total", route=route, method="POST", status="200", team="team-a") == 2
    assert v("gateway_upstream_requests_total", key="primary", route=route, status="200") == 2
    assert v("gateway_request_duration_seconds_count", route=route) == 2
    assert v("gateway_video_jobs_created_total", team="team-a", model="sora-2") == 2
    assert v("gateway_video_jobs_finished_total", team="team-a", status="completed") == 1
    assert v("gateway_video_jobs_finished_total", team="team-a", status="failed") == 1
    assert v("gateway_video_job_duration_seconds_count", model="sora-2") == 2
    assert v("gateway_video_seconds_total", team="team-a", model="sora-2") == 12
    assert v("gateway_video_spend_total", team="team-a", model="sora-2") == pytest.approx(3.0)
    assert v("gateway_content_bytes_total", team="team-a") == 50_000_000
    assert v("gateway_streams_in_flight") == 0
    assert v("gateway_auth_failures_total", reason="malformed") >= 1
    assert v("gateway_upstream_key_state", key="primary", state="healthy") == 1
    assert v("gateway_quota_decisions_total", team="team-a", kind="settlement", result="kept") == 1
    assert (
        v("gateway_quota_decisions_total", team="team-a", kind="settlement", result="refunded") == 1
    )
    assert v("gateway_requests_in_flight") == 1  # the scrape itself
    wait_for(lambda: v("gateway_quota_usage", team="team-a", kind="video_seconds_per_day") == 8)
    assert v("gateway_quota_limit", team="team-a", kind="video_seconds_per_day") == 100
    assert v("gateway_quota_open_reservations", team="team-a") == 0


def test_a_client_abort_is_counted_by_side(live: Live) -> None:
    tok = token(live)
    with openai.OpenAI(base_url=live.url + "/v1", api_key=tok, max_retries=0) as c:
        video = c.videos.create_and_poll(prompt="a dog", seconds="4", poll_interval_ms=20)
    with httpx2.stream(
        "GET",
        f"{live.url}/v1/videos/{video.id}/content",
        headers={"Authorization": f"Bearer {tok}"},
    ) as r:
        next(r.iter_bytes(1024))  # read a little, then hang up
    wait_for(lambda: live.value("gateway_stream_aborts_total", side="client") >= 1)
    wait_for(lambda: live.value("gateway_streams_in_flight") == 0)


def test_no_secret_or_unbounded_value_in_labels_or_logs(live: Live) -> None:
    tok = token(live)
    stranger = token(live, team="not-configured")
    with openai.OpenAI(base_url=live.url + "/v1", api_key=tok, max_retries=0) as c:
        video = c.videos.create_and_poll(prompt="a fox", seconds="4", poll_interval_ms=20)
        c.videos.download_content(video.id).read()
        with pytest.raises(openai.NotFoundError):
            c.videos.retrieve("video_" + "0" * 32)
    with openai.OpenAI(base_url=live.url + "/v1", api_key=stranger, max_retries=0) as c:
        c.models.list()
    upstream_ids = {
        r["path"].split("/")[3]
        for r in live.sim.state.sim.requests
        if r["path"].startswith("/v1/videos/")
    }
    wait_for(lambda: '"team":"not-configured"' in live.log.getvalue())  # the last request logged
    scrape, log = live.scrape(), live.log.getvalue()
    for secret in (tok, stranger, live.jwt, *live.keys.values()):
        assert secret not in scrape
        assert secret not in log
    assert video.id not in scrape
    assert "video_" + "0" * 32 not in scrape
    for uid in upstream_ids:
        assert uid not in scrape
    assert 'team="not-configured"' not in scrape  # unknown teams are "other"
    assert 'team="other"' in scrape
    for line in scrape.splitlines():
        for path in re.findall(r'route="([^"]*)"', line):
            assert "video_" not in path  # templates only


def test_access_log_lines(live: Live) -> None:
    tok = token(live)
    with openai.OpenAI(base_url=live.url + "/v1", api_key=tok, max_retries=0) as c:
        raw = c.models.with_raw_response.list()
    request_id = raw.headers["x-request-id"]
    wait_for(lambda: request_id in live.log.getvalue())  # lines leave in batches, within 50 ms
    lines = [json.loads(x) for x in live.log.getvalue().splitlines()]
    mine = [x for x in lines if x["request_id"] == request_id]
    assert len(mine) == 1
    entry = mine[0]
    assert set(entry) == {
        "time",
        "request_id",
        "team",
        "user",
        "method",
        "route",
        "status",
        "duration_ms",
        "upstream_key",
        "upstream_status",
        "bytes",
        "quota",
        "reason",
    }
    assert (entry["team"], entry["user"], entry["method"], entry["route"]) == (
        "team-a",
        "alice",
        "GET",
        "/v1/models",
    )
    assert (entry["status"], entry["upstream_key"], entry["upstream_status"]) == (
        200,
        "primary",
        200,
    )
    assert entry["quota"] == "allowed"
    assert entry["bytes"] == len(raw.http_response.content)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])


def test_the_scrape_exports_every_metric_the_dashboards_and_alerts_use(live: Live) -> None:
    tok = token(live)
    with openai.OpenAI(base_url=live.url + "/v1", api_key=tok, max_retries=0) as c:
        c.models.list()
        c.videos.create_and_poll(prompt="x", seconds="4", poll_interval_ms=20)
    wait_for(lambda: "gateway_quota_usage{" in live.scrape())
    scrape = live.scrape()
    declared = set(re.findall(r"^# TYPE (\S+) ", scrape, re.M))
    for name, (_, labels) in EXPORTED_METRICS.items():
        family = name.removesuffix("_total")
        assert family in declared or name in declared, f"{name} is not exported"
        for series in sample_names(name):
            for m in re.finditer(rf"^{series}\{{([^}}]*)\}} ", scrape, re.M):
                got = {kv.split("=", 1)[0] for kv in m.group(1).split(",") if kv} - {"le"}
                assert got == set(labels), f"{series} has labels {got}, expected {labels}"


def test_made_up_model_names_cannot_take_a_priced_models_label(redis_url: str) -> None:
    """The first 200 model names seen used to become labels: one team sending 200 made-up
    names (unpriced, or matching a glob price) turned every other team's models into
    'other' until a restart (found by review). Only names the price table lists exactly are
    labels now."""
    pricing = {
        "models": {
            "gpt-4o-mini": {"input_per_million": 0.15, "output_per_million": 0.6},
            "junk-*": {"input_per_million": 1},
        },
        "unpriced": "allow",
    }
    with make_stack(redis_url, pricing=pricing) as stack, httpx2.Client(timeout=10) as http:

        def chat(team: str, model: str) -> int:
            r = http.post(
                stack.v1 + "/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {stack.token(team=team)}"},
            )
            return r.status_code

        junk = [f"junk-{i:03d}" for i in range(150)] + [f"made-up-{i:03d}" for i in range(60)]
        assert {chat("team-b", model) for model in junk} == {200}
        assert chat("team-a", "gpt-4o-mini") == 200

        assert stack.metric("gateway_tokens_total", team="team-a", model="gpt-4o-mini") > 0
        assert stack.metric("gateway_spend_total", team="team-a", model="gpt-4o-mini") > 0
        # A glob's match and an unpriced name are 'other', whoever sends them.
        assert stack.metric("gateway_tokens_total", team="team-b", model="other") > 0
        assert stack.metric("gateway_unpriced_calls_total", model="other") == 60
        scrape = httpx2.get(stack.url + "/metrics").text
        assert "junk-" not in scrape
        assert "made-up-" not in scrape


def test_odd_methods_share_one_method_label(live: Live) -> None:
    """Every method the HTTP parser accepts (some 35: PROPFIND, MKCALENDAR, ...) became a
    method label, so callers without a token could multiply the request series by them
    (found by review). Methods outside the seven an API uses are counted as 'other'."""
    for method in ("PROPFIND", "MKCALENDAR", "PURGE", "OPTIONS"):
        r = raw_request(
            live.url, f"{method} /v1/models HTTP/1.1\nHost: x\nContent-Length: 0\nConnection: close"
        )
        assert r.status == 401, (method, r.body)
        assert r.json()["error"]["code"] == "invalid_api_key"
    v = live.value
    route = "/v1/models"
    assert v("gateway_requests_total", route=route, method="other", status="401") == 3
    assert v("gateway_requests_total", route=route, method="OPTIONS", status="401") == 1
    scrape = live.scrape()
    for method in ("PROPFIND", "MKCALENDAR", "PURGE"):
        assert f'method="{method}"' not in scrape
