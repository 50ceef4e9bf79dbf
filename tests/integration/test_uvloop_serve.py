"""`server.loop: uvloop` served for real: a `gateway serve` process on uvloop, a real Redis and
the simulator, called with the official SDK. Quotas and metering talk to Redis over the
gateway's own connection, whose protocol must take uvloop's transports too."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from gateway.auth.tokens import mint_token
from gateway.dev.embedded_redis import RedisProcess
from gateway.sim.app import create_sim_app
from gateway.sim.config import SimConfig
from tests.integration.test_cli import clean_env, start_replicas
from tests.servers import run_server

CONFIG = """\
upstream: {{base_url: "{sim}", keys: [{{id: primary, secret: "${{UPSTREAM_KEY}}"}}]}}
redis: {{url: "{redis}"}}
auth: {{hs256_secrets: ["${{GATEWAY_JWT_SECRET}}"]}}
server: {{loop: uvloop}}
pricing:
  models: {{gpt-4o-mini: {{input_per_million: 0.15, output_per_million: 0.6}}}}
teams:
  default: {{}}
  uv: {{requests_per_minute: 3, tokens_per_minute: 1000000}}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisProcess) -> Iterator[str]:
    tmp = Path(tmp_path_factory.mktemp("uvloop"))
    jwt, key = secrets.token_urlsafe(48), "sk-" + secrets.token_hex(16)
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(run_server(create_sim_app(SimConfig(keys=(key,)))))
        cfg = tmp / "gateway.yaml"
        cfg.write_text(CONFIG.format(sim=sim, redis=redis_server.url))
        env = clean_env(GATEWAY_JWT_SECRET=jwt, UPSTREAM_KEY=key)
        (url,) = start_replicas(stack, cfg, tmp, env, 1)
        yield f"{url}/v1|{jwt}"


def test_quotas_and_metering_answer_on_uvloop(served: str) -> None:
    base_url, jwt = served.split("|")
    team = "uv"
    with openai.OpenAI(
        base_url=base_url,
        api_key=mint_token(jwt, team=team, user="u", ttl_seconds=300),
        max_retries=0,
        timeout=10,
    ) as client:
        models = client.models.with_raw_response.list()  # the rate check alone
        assert models.headers["x-ratelimit-remaining-requests"] == "2"
        for remaining in ("1", "0"):  # metered: the rate check folded into the reservation
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
            assert raw.headers["x-ratelimit-remaining-requests"] == remaining
            assert float(raw.headers["x-gateway-cost"]) > 0
        with pytest.raises(openai.RateLimitError) as refused:
            client.models.list()
        assert refused.value.code == "rate_limit_exceeded"
