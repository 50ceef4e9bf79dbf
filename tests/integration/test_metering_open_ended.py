"""A route added in config is charged its model's ``per_request`` and, when its JSON answer
carries an OpenAI ``usage``, the tokens too (docs/metering.md): a cost no estimate bounds. The
settlement charges it to the spend windows even when the estimate was nothing, and a window
already at its limit refuses the next such call. A real gateway, Redis and an upstream of the
test's own, on sockets."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.conftest import Stack, make_stack
from tests.servers import run_server

CALLS: list[str] = []


async def rerank(request: Request) -> Response:
    CALLS.append(request.url.path)
    if (await request.json())["model"] == "listen-x":  # whisper's shape: 0.2 at 0.0002 a second
        return JSONResponse({"text": "", "usage": {"type": "duration", "seconds": 1000}})
    usage = {"prompt_tokens": 100_000, "total_tokens": 100_000}  # 0.2 at 2 per million
    return JSONResponse({"object": "list", "results": [], "usage": usage})


@pytest.fixture(params=["team", "key"])
def setup(request: pytest.FixtureRequest, redis_url: str) -> Iterator[tuple[Stack, str, str]]:
    # rerank-x is priced by its tokens, listen-x by its audio seconds: neither has a price an
    # estimate could know.
    """The budget of 0.5 a day is the team's, or its gateway key's own."""
    team = "open-" + secrets.token_hex(4)
    limit: dict[str, Any] = {"spend_per_day": 0.5} if request.param == "team" else {}
    app = Starlette(routes=[Route("/v1/rerank", rerank, methods=["POST"])])
    CALLS.clear()
    with (
        run_server(app) as upstream,
        make_stack(
            redis_url,
            sim_url=upstream,
            server={"extra_routes": ["POST /v1/rerank"]},
            teams={"default": {}, team: limit},
            pricing={
                "models": {
                    "rerank-x": {"input_per_million": 2},
                    "listen-x": {"per_audio_second": 0.0002},
                }
            },
        ) as s,
    ):
        token = s.token(team=team)
        if request.param == "key":
            admin = s.token(team="ops", user="root", roles=("gateway-admin",))
            r = httpx2.post(
                f"{s.url}/admin/v1/teams/{team}/api-keys",
                json={"name": "svc", "limits": {"spend_per_day": 0.5}},
                headers={"Authorization": f"Bearer {admin}"},
            )
            assert r.status_code == 201, r.text
            token = r.json()["key"]
        yield s, team, token


@pytest.mark.parametrize("model", ["rerank-x", "listen-x"])
def test_an_answer_charged_above_a_zero_estimate_counts_and_a_spent_budget_refuses(
    setup: tuple[Stack, str, str], model: str
) -> None:
    s, _, token = setup
    auth = {"Authorization": f"Bearer {token}"}
    costs = []
    for _ in range(3):  # 0.2 each: 0, 0.2, 0.4 used before each, all under 0.5
        r = httpx2.post(s.v1 + "/rerank", headers=auth, json={"model": model, "query": "q"})
        assert r.status_code == 200, r.text
        costs.append(r.headers["x-gateway-cost"])
    assert costs == ["0.200000"] * 3
    own = httpx2.get(s.v1 + "/gateway/quota", headers=auth).json()
    team_used = own["limits"]["spend_per_day"]["used"]
    assert float(team_used) == pytest.approx(0.6)
    # 0.6 used of 0.5: the next call, whose estimate is nothing, is refused before it leaves.
    r = httpx2.post(s.v1 + "/rerank", headers=auth, json={"model": model, "query": "q"})
    assert (r.status_code, r.json()["error"]["code"]) == (429, "spend_quota_exceeded"), r.text
    assert len(CALLS) == 3


@pytest.mark.parametrize(
    ("model", "code"), [("m" * 257, "invalid_type"), (7, "invalid_type"), ([], "invalid_type")]
)
def test_an_added_routes_model_is_checked_like_any_other(
    setup: tuple[Stack, str, str], model: Any, code: str
) -> None:
    """A model name of any length or type once went on to the price table's memory of names
    seen (kept, whether priced or not): 24 calls of 8 MiB names held 200 MiB."""
    s, _, token = setup
    got = httpx2.post(
        f"{s.url}/v1/rerank",
        json={"model": model, "query": "q", "documents": ["d"]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert got.status_code == 400, got.text
    assert (got.json()["error"]["code"], got.json()["error"]["param"]) == (code, "model")
    assert CALLS == []
