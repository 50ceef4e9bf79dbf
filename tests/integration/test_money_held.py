"""Fault scenarios on the money paths that were tried and hold (kept as regression tests)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import httpx2
import pytest

from tests.conftest import make_stack
from tests.metering_views import get_json, metric, shown, stored, summed, token_cost

MODEL = "gpt-4o-mini"
PRICE = {"input_per_million": 150, "output_per_million": 600}


@pytest.mark.parametrize("status", ["status_429", "status_401"])
def test_a_call_retried_on_another_key_is_charged_once(redis_url: str, status: str) -> None:
    team = "retry-" + secrets.token_hex(4)
    with make_stack(
        redis_url,
        key_ids=("primary", "secondary"),
        teams={"default": {}, team: {"spend_per_day": 1000}},
        pricing={"models": {MODEL: PRICE}},
    ) as s:
        bearer = s.token(team=team)
        sim = s.sim_app.state.sim
        sim.add_fault(
            kind=status, path_prefix="/v1/chat/completions", key=s.keys["primary"], count=-1
        )
        if status == "status_401":
            sim.add_fault(kind=status, path_prefix="/v1/models", key=s.keys["primary"], count=-1)
        sent = 0
        for _ in range(2):  # whichever key the pool picks first, one call meets the fault
            r = httpx2.post(
                s.v1 + "/chat/completions",
                json={
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 20,
                },
                headers={"Authorization": f"Bearer {bearer}"},
            )
            assert r.status_code == 200, r.text
            u = r.json()["usage"]
            sent += token_cost(PRICE, u["prompt_tokens"], u["completion_tokens"])
            assert r.headers["x-gateway-cost"] == shown(
                token_cost(PRICE, u["prompt_tokens"], u["completion_tokens"])
            )
        chat_calls = [q for q in s.sim_requests("/v1/chat/completions")]
        assert len(chat_calls) >= 3  # at least one call was sent twice
        day = datetime.now(UTC).date().isoformat()
        usage = get_json(s.v1 + "/gateway/usage", bearer, **{"from": day, "to": day})
        quota = get_json(s.v1 + "/gateway/quota", bearer)["limits"]
        assert usage["total"]["requests"] == 2
        assert stored(usage["total"]["spend"]) == sent
        assert stored(quota["spend_per_day"]["used"]) == sent
        assert summed(metric(s, "gateway_spend_total", team=team)) == sent
