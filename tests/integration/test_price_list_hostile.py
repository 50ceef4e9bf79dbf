"""``pricing.source: crazyrouter`` against hostile ``GET /api/pricing`` answers, on real
sockets: after a good list, every broken one keeps the last good list (document-level
failures) or leaves out only the broken entry, and no model is ever priced at zero or below."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import httpx2
import pytest

from gateway import app as gateway_app
from tests.conftest import Stack
from tests.integration.test_metering_what_is_charged import GPT, Upstream, list_of, stack_on
from tests.servers import wait_for

GOOD = list_of(**{"gpt-4o-mini": GPT, "other": GPT})
GOOD_INPUT = Fraction("0.15")


@contextlib.contextmanager
def listed(redis_url: str, state: Upstream, team: str) -> Iterator[Stack]:
    """A gateway pricing from the good list, the upstream answering chats of 1M tokens each
    way (0.75 at the good list's prices), the team's budget far above that."""
    state.pricing = GOOD
    state.chat = chat_answer(1_000_000, 1_000_000)
    with stack_on(
        redis_url,
        state,
        team=team,
        limits={"spend_per_day": 100},
        pricing={"source": "crazyrouter", "unpriced": "refuse"},
    ) as s:
        yield s


def refreshes(app: Any, result: str) -> float:
    got = app.metrics.registry.get_sample_value("gateway_price_refresh_total", {"result": result})
    return got or 0.0


def bad_doc(change: Any) -> Any:
    doc = json.loads(json.dumps(GOOD))
    return change(doc)


def entry(**kw: Any) -> Any:
    def change(doc: dict[str, Any]) -> dict[str, Any]:
        doc["data"][0].update(kw)
        return doc

    return change


def raw(text: str) -> Any:
    return lambda doc: text.encode()


DOCUMENT_FAILURES = {
    "html": raw("<html><body>maintenance</body></html>"),
    "success-false": lambda d: {**d, "success": False},
    "no-group": lambda d: {**d, "group_ratio": {"vip": 1}},
    "group-nan": raw(json.dumps(GOOD).replace('"default": 1}', '"default": NaN}')),
    "group-inf": raw(json.dumps(GOOD).replace('"default": 1}', '"default": Infinity}')),
    "group-string": lambda d: {**d, "group_ratio": {"default": "1"}},
    "group-negative": lambda d: {**d, "group_ratio": {"default": -1}},
    "group-huge": lambda d: {**d, "group_ratio": {"default": 1e300}},
    "empty": lambda d: {**d, "data": []},
    "data-object": lambda d: {**d, "data": {}},
    "all-bad": lambda d: {**d, "data": [{"model_name": "gpt-4o-mini", "quota_type": 7}]},
    "deep": raw("[" * 100000 + "]" * 100000),
    "giant": raw('{"pad": "' + "x" * (33 << 20) + '"}'),
    "array": raw("[]"),
}

ENTRY_FAILURES = {
    "ratio-nan": raw(json.dumps(GOOD).replace('"model_ratio": 0.075', '"model_ratio": NaN', 1)),
    "ratio-inf": raw(json.dumps(GOOD).replace('"model_ratio": 0.075', '"model_ratio": 1e999', 1)),
    "ratio-negative": entry(model_ratio=-0.075),
    "ratio-string": entry(model_ratio="0.075"),
    "ratio-bool": entry(model_ratio=True),
    "ratio-null": entry(model_ratio=None),
    "ratio-huge": entry(model_ratio=1e300),
    "completion-negative": entry(completion_ratio=-4),
    "completion-nan": raw(
        json.dumps(GOOD).replace('"completion_ratio": 4', '"completion_ratio": NaN', 1)
    ),
    "cache-negative": entry(cache_ratio=-1),
    "cache-string": entry(cache_ratio="0.5"),
    "quota-type-2": entry(quota_type=2),
    "quota-type-string": entry(quota_type="0"),
    "quota-type-bool": entry(quota_type=False),
    "quota-type-null": entry(quota_type=None),
    "price-negative": entry(quota_type=1, model_price=-1),
    "price-nan": raw(
        json.dumps(list_of(**{"gpt-4o-mini": {**GPT, "quota_type": 1}, "other": GPT})).replace(
            '"model_price": 0', '"model_price": NaN', 1
        )
    ),
    "duplicate": lambda d: {**d, "data": [*d["data"], {**d["data"][0], "model_ratio": 0.001}]},
    "billing-tiered": entry(billing_mode="tiered_expr"),
    "groups-string": entry(enable_groups="default"),
    "name-spaces": entry(model_name=" gpt-4o-mini"),
}


def chat_answer(inp: int, out: int) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out},
    }


def call(s: Any, team: str) -> httpx2.Response:
    return httpx2.post(
        s.v1 + "/chat/completions",
        headers={"Authorization": f"Bearer {s.token(team=team)}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )


@pytest.mark.parametrize("name", sorted(DOCUMENT_FAILURES))
def test_a_broken_list_keeps_the_last_good_one(redis_url: str, name: str) -> None:
    team, state = "pl-" + secrets.token_hex(4), Upstream()
    with listed(redis_url, state, team) as s:
        assert s.app.prices().lookup("gpt-4o-mini").input_per_million == GOOD_INPUT
        state.pricing = bad_doc(DOCUMENT_FAILURES[name])
        errors = refreshes(s.app, "error")
        wait_for(lambda: refreshes(s.app, "error") >= errors + 2, timeout=60)
        price = s.app.prices().lookup("gpt-4o-mini")
        assert price is not None
        assert price.input_per_million == GOOD_INPUT
        got = call(s, team)
        assert got.status_code == 200
        assert got.headers["x-gateway-cost"] == "0.750000"  # 1M x 0.15 + 1M x 0.6


@pytest.mark.parametrize("name", sorted(ENTRY_FAILURES))
def test_a_broken_entry_is_left_out_never_priced_at_zero(redis_url: str, name: str) -> None:
    team, state = "pl-" + secrets.token_hex(4), Upstream()
    with listed(redis_url, state, team) as s:
        state.pricing = bad_doc(ENTRY_FAILURES[name])
        ok = refreshes(s.app, "ok") + refreshes(s.app, "error")
        wait_for(lambda: refreshes(s.app, "ok") + refreshes(s.app, "error") >= ok + 2, timeout=60)
        price = s.app.prices().lookup("gpt-4o-mini")
        if price is not None:
            assert price.input_per_million > 0, price
            assert price.output_per_million > 0, price
        got = call(s, team)
        assert got.status_code in (200, 403), got.text
        if got.status_code == 200:
            assert Fraction(got.headers["x-gateway-cost"]) > 0


def test_a_slow_list_is_given_up_and_the_last_good_one_kept(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_app, "PRICING_TIMEOUT_S", 1.0)
    team, state = "pl-" + secrets.token_hex(4), Upstream()
    with listed(redis_url, state, team) as s:
        state.pricing = "slow"  # a body that trickles for a minute
        errors = refreshes(s.app, "error")
        wait_for(lambda: refreshes(s.app, "error") >= errors + 1, timeout=30)
        assert s.app.prices().lookup("gpt-4o-mini").input_per_million == GOOD_INPUT
        assert call(s, team).headers["x-gateway-cost"] == "0.750000"


def test_a_large_hostile_list_does_not_stall_the_gateway(redis_url: str) -> None:
    """A list within the size limit whose every entry is refused is read at every retry: off
    the event loop, so that everything else is served meanwhile (on the loop, a 32 MiB one
    held every request for 6 s)."""
    team, state = "pl-" + secrets.token_hex(4), Upstream()
    with listed(redis_url, state, team) as s:
        bad = {**GPT, "cache_ratio": "x"}
        big = {
            "success": True,
            "group_ratio": {"default": 1},
            "data": [{"model_name": f"m{i}", **bad} for i in range(40_000)],
        }
        state.pricing = json.dumps(big).encode()
        assert len(state.pricing) < gateway_app.PRICING_MAX_BYTES
        errors = refreshes(s.app, "error")
        worst = 0.0
        with httpx2.Client(timeout=60) as client:
            while refreshes(s.app, "error") < errors + 2:
                t = time.perf_counter()
                assert client.get(s.url + "/healthz").status_code == 200
                worst = max(worst, time.perf_counter() - t)
        assert worst < 1.0, f"/healthz took {worst:.2f} s while the list was parsed"
