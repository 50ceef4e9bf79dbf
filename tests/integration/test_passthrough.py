"""The gateway as users run it: official SDK -> gateway (socket) -> simulator (socket)."""

from __future__ import annotations

import json

import openai
import pytest

from tests.conftest import Stack, make_stack
from tests.servers import free_port, wait_for


def sdk(stack: Stack, token: str | None = None, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=stack.v1,
        api_key=token or stack.token(),
        max_retries=kw.pop("max_retries", 0),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def test_chat_completion_through_sdk(stack: Stack) -> None:
    client = sdk(stack, _strict_response_validation=True)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
    )
    completion = raw.parse()
    assert completion.model == "gpt-4o-mini"
    assert completion.choices[0].message.content
    assert raw.headers["x-request-id"].startswith("req_")
    seen = stack.sim_requests("/v1/chat/completions")
    assert len(seen) == 1
    # the upstream saw one of our keys and our request id, never the caller's token
    assert seen[0]["key"] in stack.sim_keys
    assert seen[0]["headers"]["x-request-id"] == raw.headers["x-request-id"]
    assert stack.token() not in json.dumps(seen)


def test_incoming_request_id_is_kept_when_well_formed(stack: Stack) -> None:
    client = sdk(stack)
    raw = client.models.with_raw_response.list(extra_headers={"x-request-id": "trace-12345678"})
    assert raw.headers["x-request-id"] == "trace-12345678"
    raw = client.models.with_raw_response.list(extra_headers={"x-request-id": "bad id\twith tab"})
    assert raw.headers["x-request-id"].startswith("req_")
    # The gateway's own form is never taken from a caller: such an id could repeat one the
    # gateway gave another team's request, in the access log and upstream.
    first = client.models.with_raw_response.list().headers["x-request-id"]
    raw = client.models.with_raw_response.list(extra_headers={"x-request-id": first})
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-request-id"] != first


async def test_streamed_chat_arrives_event_by_event(stack: Stack) -> None:
    client = openai.AsyncOpenAI(base_url=stack.v1, api_key=stack.token(), max_retries=0)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [c async for c in stream]
    await client.close()
    expected = stack.sim_app.state.sim.config.stream_events
    words = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(words) == expected


def test_embeddings_and_models(stack: Stack) -> None:
    client = sdk(stack)
    emb = client.embeddings.create(model="text-embedding-3-small", input="x")
    assert len(emb.data[0].embedding) > 0
    models = [m.id for m in client.models.list()]
    assert "sora-2" in models
    assert client.models.retrieve("sora-2").id == "sora-2"


def test_caller_headers_do_not_reach_upstream_and_upstream_headers_do_not_leak(
    stack: Stack,
) -> None:
    client = sdk(stack, organization="org-secret", project="proj-x")
    raw = client.models.with_raw_response.list(
        extra_headers={
            "cookie": "session=abc",
            "x-forwarded-for": "10.1.2.3",
            "forwarded": "for=10.1.2.3",
            "x-real-ip": "10.1.2.3",
            "proxy-authorization": "Basic abc",
        }
    )
    sent = stack.sim_requests("/v1/models")[0]["headers"]
    for name in (
        "cookie",
        "x-forwarded-for",
        "forwarded",
        "x-real-ip",
        "proxy-authorization",
        "openai-organization",
        "openai-project",
        "x-stainless-lang",
        "x-stainless-retry-count",
    ):
        assert name not in sent, name
    assert sent["authorization"].removeprefix("Bearer ") in stack.sim_keys
    for name in ("set-cookie", "server", "x-powered-by", "x-oneapi-request-id"):
        assert name not in raw.headers, name
    assert raw.headers["x-upstream-request-id"]


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [("status_500", 500, "upstream_http_500"), ("status_503", 503, "upstream_http_503")],
)
def test_upstream_5xx_on_post_is_never_retried(
    stack: Stack, kind: str, status: int, code: str
) -> None:
    stack.sim_app.state.sim.add_fault(kind=kind, count=-1)
    client = sdk(stack, max_retries=2)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == status
    assert info.value.response.headers["x-should-retry"] == "false"
    assert info.value.code is not None
    # exactly one upstream call: neither the gateway nor the SDK sent it again
    assert len(stack.sim_requests("/v1/chat/completions")) == 1


def test_upstream_error_code_is_kept(stack: Stack) -> None:
    with make_stack(stack.settings.redis.url, key_ids=("only",)) as single:
        single.sim_app.state.sim.add_fault(kind="status_403", count=1)
        with pytest.raises(openai.PermissionDeniedError) as info:
            sdk(single).models.list()
        assert info.value.code == "insufficient_quota"
        # One 403 the key's probe does not confirm takes nothing out of the pool.
        assert single.app.pool.state("only") == "healthy"


def test_429_moves_to_the_next_key_and_cools_the_first(stack: Stack) -> None:
    first, second = stack.sim_keys
    stack.sim_app.state.sim.add_fault(kind="status_429", count=-1, key=first, retry_after=20)
    client = sdk(stack)
    for _ in range(4):
        assert client.models.list().data
    calls = stack.sim_requests("/v1/models")
    served = [c["key"] for c in calls if c["key"] == second]
    assert len(served) == 4
    # at most one request ever went to the cooled key
    assert len([c for c in calls if c["key"] == first]) <= 1
    assert stack.app.pool.state("primary") == "cooling"


def test_one_teams_429s_cool_one_key_and_other_teams_are_served(redis_url: str) -> None:
    """Calls the upstream answers 429 for whatever the key (a saturated model), sent once per
    key and more: the team's first 429 cools one key, the rest are its own answers, and
    another team is still served."""
    with make_stack(redis_url, key_ids=("primary", "secondary")) as s:
        s.sim_app.state.sim.add_fault(kind="status_429", count=-1, path_prefix="/v1/chat")
        with sdk(s, token=s.token(team="noisy")) as mine:
            for _ in range(3):
                with pytest.raises(openai.RateLimitError):
                    mine.chat.completions.create(
                        model="saturated", messages=[{"role": "user", "content": "x"}]
                    )
        states = {k: s.app.pool.state(k) for k in ("primary", "secondary")}
        assert sorted(states.values()) == ["cooling", "healthy"]
        # one request tried a second key after the first 429, the others none
        assert len(s.sim_requests("/v1/chat")) == 4
        with sdk(s, token=s.token(team="quiet")) as other:
            assert other.models.list().data


def test_other_replica_skips_a_cooled_key(redis_url: str) -> None:
    with (
        make_stack(redis_url, key_ids=("primary", "secondary")) as a,
        make_stack(redis_url, keys=a.keys, sim_url=a.sim_url, sim_app=a.sim_app) as b,
    ):
        primary = a.keys["primary"]
        a.sim_app.state.sim.add_fault(kind="status_429", count=-1, key=primary, retry_after=60)
        client_a, client_b = sdk(a), sdk(b)
        for _ in range(2):
            client_a.models.list()
        assert a.app.pool.state("primary") == "cooling"
        # b learns it through Redis within its cache window (refreshed in the background)

        def b_sees_the_cooldown() -> bool:
            if b.app.pool.state("primary") == "cooling":
                return True
            client_b.models.list()
            return False

        wait_for(
            b_sees_the_cooldown,
            timeout=5,
            interval=0.05,
            message="replica b never saw the cooldown",
        )
        a.clear_sim()
        for _ in range(6):
            client_b.models.list()
        assert {r["key"] for r in a.sim_requests()} == {a.keys["secondary"]}


def test_401_quarantines_key_and_retries_on_another(stack: Stack) -> None:
    first, _ = stack.sim_keys
    stack.sim_app.state.sim.add_fault(kind="status_401", count=-1, key=first)
    client = sdk(stack)
    for _ in range(3):
        assert client.models.list().data
    assert stack.app.pool.state("primary") == "quarantined"


def test_single_key_rejected_is_502_not_401(redis_url: str) -> None:
    with make_stack(redis_url, key_ids=("only",)) as s:
        s.sim_app.state.sim.add_fault(kind="status_401", count=-1)
        with pytest.raises(openai.APIStatusError) as info:
            sdk(s).models.list()
        assert info.value.status_code == 502
        assert info.value.code == "upstream_auth_failed"
        # the key is out now: the next call fails fast without reaching the upstream
        s.clear_sim()
        with pytest.raises(openai.APIStatusError) as info:
            sdk(s).models.list()
        assert info.value.status_code == 503
        assert info.value.code == "no_upstream_key_available"
        assert s.sim_requests() == []


def test_upstream_down_is_502_in_openai_shape(redis_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with make_stack(redis_url, sim_url=dead) as s:
        with pytest.raises(openai.APIStatusError) as info:
            sdk(s).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert info.value.status_code == 502
        assert info.value.code == "upstream_unavailable"


def test_healthz_readyz_metrics(stack: Stack) -> None:
    import urllib.request

    with urllib.request.urlopen(stack.url + "/healthz") as r:
        assert json.load(r) == {"status": "ok"}
    with urllib.request.urlopen(stack.url + "/readyz") as r:
        body = json.load(r)
        assert body["status"] == "ready"
    sdk(stack).models.list()
    with pytest.raises(openai.AuthenticationError):
        sdk(stack, token="garbage").models.list()
    with urllib.request.urlopen(stack.url + "/metrics") as r:
        text = r.read().decode()
    assert 'gateway_auth_failures_total{reason="malformed"} 1.0' in text
    assert (
        'gateway_requests_total{method="GET",route="/v1/models",status="200",team="team-a"} 1.0'
        in text
    )
    assert 'gateway_upstream_key_state{key="primary",state="healthy"} 1.0' in text
