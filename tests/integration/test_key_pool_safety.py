"""One caller can never take the shared key pool offline (hardening, item 1).

new-api answers 403 for reasons that belong to the request (a model the key may not use) and
401/403 when the key itself is bad. Only the second, confirmed by a probe of that key alone,
quarantines, a 403 is never retried on another key, and one request takes out one key at most.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from tests.conftest import Stack, make_stack
from tests.servers import wait_for

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@contextlib.contextmanager
def two_replicas(redis_url: str) -> Iterator[tuple[Stack, Stack]]:
    with make_stack(redis_url, key_ids=("primary", "secondary")) as a:  # noqa: SIM117
        with make_stack(redis_url, sim_url=a.sim_url, sim_app=a.sim_app, keys=a.keys) as b:
            yield a, b


def chat(stack: Stack, model: str = "m", team: str = "team-a") -> ChatCompletion:
    """One chat call through the SDK, on a client closed right after (no socket left behind)."""
    with openai.OpenAI(base_url=stack.v1, api_key=stack.token(team=team), max_retries=0) as c:
        return c.chat.completions.create(model=model, messages=CHAT)


def key_states(stack: Stack) -> dict[str, str]:
    admin = stack.token(team="ops", roles=("gateway-admin",))
    r = httpx2.get(
        stack.url + "/admin/v1/upstream-keys", headers={"Authorization": f"Bearer {admin}"}
    )
    assert r.status_code == 200
    return {k["id"]: k["state"] for k in r.json()["data"]}


def probes(stack: Stack) -> list[str]:
    return [r["key"] for r in stack.sim_requests("/v1/models")]


def test_a_model_403_is_the_callers_and_hurts_no_key(redis_url: str) -> None:
    with two_replicas(redis_url) as (a, b):
        sim = a.sim_app.state.sim
        for secret in a.sim_keys:
            sim.key_models[secret] = ("gpt-ok",)
        for _ in range(5):  # a persistent caller, on both replicas
            for replica in (a, b):
                with pytest.raises(openai.PermissionDeniedError) as info:
                    chat(replica, "gpt-banned")
                assert info.value.status_code == 403
                assert info.value.code == "model_not_allowed"
        # each refused request reached the upstream once: no retry on the other key
        assert len(a.sim_requests("/v1/chat/completions")) == 10
        assert probes(a) == []  # a 403 about the request is not even worth a probe
        for replica in (a, b):
            assert key_states(replica) == {"primary": "healthy", "secondary": "healthy"}
            for _ in range(4):  # other teams are served, by both keys, on both replicas
                answer = chat(replica, "gpt-ok", team="team-b")
                assert answer.choices


def test_a_disabled_key_is_confirmed_quarantined_and_the_call_retried(redis_url: str) -> None:
    with two_replicas(redis_url) as (a, b):
        sim = a.sim_app.state.sim
        bad = a.keys["primary"]
        sim.key_states[bad] = "disabled"
        for _ in range(6):  # every call succeeds, whichever key the pool tries first
            assert chat(a).choices
        assert probes(a) == [bad]  # one probe, of that key alone, confirmed it
        assert key_states(a) == {"primary": "quarantined", "secondary": "healthy"}

        def seen_by_b() -> bool:  # the other replica learns it through the shared health
            assert chat(b).choices
            return key_states(b)["primary"] == "quarantined"

        wait_for(seen_by_b, timeout=5)
        assert key_states(b)["secondary"] == "healthy"


def test_one_request_quarantines_at_most_one_key(redis_url: str) -> None:
    with make_stack(redis_url, key_ids=("primary", "secondary")) as s:
        sim = s.sim_app.state.sim
        for secret in s.sim_keys:
            sim.key_states[secret] = "disabled"
        with pytest.raises(openai.APIStatusError) as info:
            chat(s)
        assert (info.value.status_code, info.value.code) == (502, "upstream_auth_failed")
        states = sorted(key_states(s).values())
        assert states == ["healthy", "quarantined"]


def test_a_passing_401_the_probe_does_not_confirm_quarantines_nothing(redis_url: str) -> None:
    with make_stack(redis_url, key_ids=("primary", "secondary")) as s:
        first = s.keys["primary"]
        s.sim_app.state.sim.add_fault(kind="status_401", count=1, key=first, path_prefix="/v1/chat")
        for _ in range(6):
            assert chat(s).choices
        assert probes(s) == [first]
        assert key_states(s) == {"primary": "healthy", "secondary": "healthy"}


def test_an_exhausted_key_403_is_confirmed_but_never_retried(redis_url: str) -> None:
    with make_stack(redis_url, key_ids=("primary", "secondary")) as s:
        sim = s.sim_app.state.sim
        bad = s.keys["primary"]
        sim.key_states[bad] = "exhausted"
        codes = []
        for _ in range(6):  # whichever key the pool tries first, one call lands on the bad key
            try:
                chat(s)
                codes.append("ok")
            except openai.PermissionDeniedError as exc:
                codes.append(str(exc.code))
        assert codes.count("token_quota_exhausted") == 1
        assert codes.count("ok") == 5
        assert probes(s) == [bad]
        assert key_states(s) == {"primary": "quarantined", "secondary": "healthy"}
        # the refused call went upstream once only, on the key that refused it
        chats = s.sim_requests("/v1/chat/completions")
        assert [r["key"] for r in chats].count(bad) == 1
        assert len(chats) == 6
