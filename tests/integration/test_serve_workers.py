"""`gateway serve` as deployed: with two workers a scrape of either adds up both; on SIGTERM it
stops accepting, lets a download in flight finish within the drain time, then exits cleanly."""

from __future__ import annotations

import contextlib
import re
import secrets
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2

from gateway.auth.tokens import mint_token
from gateway.sim.app import create_sim_app
from gateway.sim.config import SimConfig
from tests.integration.test_cli import Served, clean_env, gateway_cmd
from tests.servers import free_port, run_server, wait_for

CONFIG = """\
upstream: {{base_url: "{sim}", keys: [{{id: primary, secret: "${{UPSTREAM_KEY}}"}}]}}
redis: {{url: "{redis}"}}
auth: {{hs256_secrets: ["${{GATEWAY_JWT_SECRET}}"]}}
server: {{metrics_dir: "{metrics_dir}", drain_seconds: {drain}, access_log: "off"}}
teams: {{default: {{}}, team-a: {{}}}}
videos: {{poll_interval_seconds: 0}}
"""


@contextlib.contextmanager
def serve(
    tmp: Path, redis_url: str, *, workers: int, content_bytes: int = 1000, drain: float = 10
) -> Iterator[dict[str, Any]]:
    jwt, key = secrets.token_urlsafe(48), "sk-" + secrets.token_hex(16)
    sim_app = create_sim_app(SimConfig(keys=(key,), job_seconds=0, content_bytes=content_bytes))
    with run_server(sim_app, server_header=False) as sim:
        cfg = tmp / "gateway.yaml"
        metrics_dir = tmp / "metrics"
        cfg.write_text(
            CONFIG.format(sim=sim, redis=redis_url, metrics_dir=metrics_dir, drain=drain)
        )
        port = free_port()
        served = Served(
            gateway_cmd(
                "serve", "--config", str(cfg), "--port", str(port), "--workers", str(workers)
            ),
            tmp,
            clean_env(GATEWAY_JWT_SECRET=jwt, UPSTREAM_KEY=key),
        )
        try:

            def all_started() -> bool:
                if served.output.count("Application startup complete") >= workers:
                    return True
                assert served.proc.poll() is None, served.output
                return False

            wait_for(all_started, timeout=60, interval=0.05)
            yield {
                "url": f"http://127.0.0.1:{port}",
                "port": port,
                "token": mint_token(jwt, team="team-a", user="u", ttl_seconds=600),
                "served": served,
                "metrics_dir": metrics_dir,
            }
        finally:
            served.stop()


def requests_counted(url: str) -> float:
    text = httpx2.get(url + "/metrics").text
    return sum(
        float(m.group(1))
        for m in re.finditer(
            r'^gateway_requests_total\{[^}]*route="/v1/models"[^}]*team="team-a"[^}]*\} (\S+)$',
            text,
            re.M,
        )
    )


def test_two_workers_add_up(tmp_path: Path, redis_url: str) -> None:
    # A stale file from an earlier run must not count.
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "counter_1.db").write_bytes(b"stale")
    with serve(tmp_path, redis_url, workers=2) as g:
        auth = {"Authorization": f"Bearer {g['token']}"}
        for _ in range(40):  # a new connection each: the kernel spreads them over the workers
            with httpx2.Client() as c:
                assert c.get(g["url"] + "/v1/models", headers=auth).status_code == 200
        pids = {p.name.split("_")[-1] for p in g["metrics_dir"].glob("counter_*.db")}
        assert "1.db" not in pids
        assert len(pids) == 2, "both workers should have served requests"
        for _ in range(6):  # whichever worker answers the scrape
            assert requests_counted(g["url"]) == 40


def test_sigterm_drains_a_download_and_refuses_new_connections(
    tmp_path: Path, redis_url: str
) -> None:
    size = 40_000_000
    with serve(tmp_path, redis_url, workers=1, content_bytes=size, drain=15) as g:
        auth = {"Authorization": f"Bearer {g['token']}"}
        with httpx2.Client(timeout=30) as c:
            video = c.post(g["url"] + "/v1/videos", json={"prompt": "x"}, headers=auth).json()
            assert (
                c.get(g["url"] + f"/v1/videos/{video['id']}", headers=auth).json()["status"]
                == "completed"
            )
            with c.stream("GET", g["url"] + f"/v1/videos/{video['id']}/content", headers=auth) as r:
                chunks = r.iter_bytes(65536)
                got = len(next(chunks))
                served: Served = g["served"]
                served.proc.send_signal(signal.SIGTERM)

                def refused() -> bool:
                    try:
                        socket.create_connection(("127.0.0.1", g["port"]), timeout=1).close()
                    # A probe that reached the backlog just as the listener closed is reset
                    # rather than refused: not accepted either way.
                    except (ConnectionRefusedError, ConnectionResetError):
                        return True
                    return False

                # the listener closes at once; the download carries on
                wait_for(
                    refused, timeout=10, interval=0.02, message="still accepting after SIGTERM"
                )
                for chunk in chunks:
                    got += len(chunk)
        assert got == size
        # uvicorn re-raises the signal once it has shut down cleanly: the exit says "SIGTERM".
        assert served.proc.wait(timeout=15) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in served.output
        assert "Finished server process" in served.output
