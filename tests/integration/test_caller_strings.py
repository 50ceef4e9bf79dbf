"""What a caller chooses in a body costs the gateway bounded memory and time: a team with one
token sends JSON keys that are large or all different, or a body of millions of tiny values,
and `gateway serve` (a process of its own, measured from /proc; the simulator in another one)
neither keeps them nor holds the event loop every other team shares."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from gateway.auth.tokens import mint_token
from gateway.dev.embedded_redis import RedisProcess
from tests.integration.test_cli import Served, clean_env, gateway_cmd
from tests.servers import free_port, wait_for

MiB = 1024 * 1024

CONFIG = """\
upstream: {{base_url: "{sim}", keys: [{{id: primary, secret: "${{UPSTREAM_KEY}}"}}]}}
redis: {{url: "{redis}"}}
auth: {{hs256_secrets: ["${{GATEWAY_JWT_SECRET}}"]}}
server: {{access_log: "off"}}
pricing: {{unpriced: allow}}
teams: {{default: {{requests_per_minute: 100000}}}}
"""


@dataclass
class Gateway:
    url: str
    pid: int
    attacker: str
    victim: str
    sim: str  # the simulator's base URL: /_sim/requests lists what reached the upstream


def _up(url: str) -> bool:
    try:
        return httpx2.get(url, timeout=1).status_code == 200
    except httpx2.HTTPError:
        return False


@pytest.fixture(scope="module")
def gateway(
    redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("strings")
    jwt, key = secrets.token_urlsafe(48), "sk-" + secrets.token_hex(16)
    # The simulator runs in a process of its own too: in this one, its parsing of a 30 MB body
    # would hold the GIL the victim's client needs, and show as the gateway's stall.
    sim_port, port = free_port(), free_port()
    sim = Served(gateway_cmd("sim", "--port", str(sim_port)), tmp, clean_env(GATEWAY_SIM_KEYS=key))
    cfg = tmp / "gateway.yaml"
    cfg.write_text(CONFIG.format(sim=f"http://127.0.0.1:{sim_port}", redis=redis_server.url))
    served = Served(
        gateway_cmd("serve", "--config", str(cfg), "--port", str(port)),
        tmp,
        clean_env(GATEWAY_JWT_SECRET=jwt, UPSTREAM_KEY=key),
    )
    try:
        served.wait_for(r"Application startup complete")
        wait_for(lambda: _up(f"http://127.0.0.1:{sim_port}/_sim/health"), timeout=30)
        yield Gateway(
            f"http://127.0.0.1:{port}",
            served.proc.pid,
            mint_token(jwt, team="t", user="u", ttl_seconds=600),
            mint_token(jwt, team="v", user="v", ttl_seconds=600),
            f"http://127.0.0.1:{sim_port}",
        )
    finally:
        served.stop()
        sim.stop()


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (the peak since the last reset) of a process."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) / 1024
    return out


def chat_with(key: str, value: str) -> bytes:
    return (
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "'
        + key.encode()
        + b'": "'
        + value.encode()
        + b'"}'
    )


def test_distinct_large_json_keys_are_not_kept(gateway: Gateway) -> None:
    """Every key of every JSON body is folded as the upstream reads it, and the fold is
    cached: only short keys may be, or the cache keeps what callers chose."""
    headers = {"Authorization": f"Bearer {gateway.attacker}", "content-type": "application/json"}
    with httpx2.Client(timeout=60) as http:
        r = http.post(
            gateway.url + "/v1/chat/completions", content=chat_with("k", "v"), headers=headers
        )
        assert r.status_code == 200, r.text
        before = memory_mib(gateway.pid)["VmRSS"]
        for i in range(24):
            big = f"k{i:04d}" + "x" * (8 * MiB)
            r = http.post(
                gateway.url + "/v1/chat/completions", content=chat_with(big, "v"), headers=headers
            )
            assert r.status_code < 500, r.text
    # 192 MiB of keys were answered; none of them is the gateway's to keep. The last body may
    # still be on its way out when the answer arrives: wait for it, not for luck.
    grown: list[float] = []

    def settled() -> bool:
        grown.append(memory_mib(gateway.pid)["VmRSS"] - before)
        return grown[-1] < 64

    try:
        wait_for(settled, timeout=10, interval=0.1)
    except TimeoutError:
        pytest.fail(f"gateway RSS grew {grown[-1]:.0f} MiB and stayed")


@pytest.mark.parametrize("path", ["/v1/videos", "/v1/videos/video_0/remix"])
def test_a_video_create_of_many_tiny_values_is_refused_before_it_is_parsed(
    gateway: Gateway, path: str
) -> None:
    """The pass-through refuses a body of more than MAX_JSON_VALUES values before parsing it;
    so must a video create or remix. 28 MiB of ``{}`` parsed are ten million dicts: most of a
    gigabyte, in a pod limited to 512 MiB (deploy/kubernetes/deployment.yaml)."""
    headers = {"Authorization": f"Bearer {gateway.attacker}", "content-type": "application/json"}
    body = b'{"prompt": "p", "x": [' + b"{}," * 10_000_000 + b"{}]}"
    # Reset the process's peak to its present size (proc(5), clear_refs): the tests before
    # this one may have raised it already.
    Path(f"/proc/{gateway.pid}/clear_refs").write_text("5")
    before = memory_mib(gateway.pid)["VmRSS"]
    with httpx2.Client(timeout=120) as http:
        http.delete(gateway.sim + "/_sim/requests")
        r = http.post(gateway.url + path, content=body, headers=headers)
        reached = http.get(gateway.sim + "/_sim/requests").json()
    assert (r.status_code, r.json()["error"]["code"]) == (400, "request_too_complex"), r.text
    assert reached == []
    grown = memory_mib(gateway.pid)["VmHWM"] - before
    assert grown < 128, f"one request raised the gateway's peak RSS by {grown:.0f} MiB"
