"""The gateway under test: one worker, pinned, configured by a temp YAML with secrets in env."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs
from gateway.dev.process import stop_process

# Placeholders, expanded by the gateway from the environment: no secret is written to disk.
_CONFIG = """\
upstream: {{base_url: "{upstream}", keys: [{{id: bench, secret: "${{BENCH_UPSTREAM_KEY}}"}}]}}
redis: {{url: "${{REDIS_URL}}"}}
auth:
  hs256_secrets: ["${{GATEWAY_JWT_SECRET}}"]
  algorithms: [HS256]
  api_key_pepper: "${{GATEWAY_API_KEY_PEPPER}}"
server: {{host: 127.0.0.1, port: {port}}}
# Limits far above what a run sends: every request pays for the checks, none is refused.
teams:
  default: {{}}
  bench:
    requests_per_minute: 100000000
    video_seconds_per_day: 100000000
    tokens_per_minute: 1000000000
    spend_per_day: 100000000
videos: {{poll_interval_seconds: {poll_interval}}}
quota: {{enabled: {quota}}}
pricing:
  enabled: {metering}
  models:
    gpt-4o-mini: {{input_per_million: 0.15, output_per_million: 0.6}}
    "*": {{input_per_million: 1, output_per_million: 1}}
"""


POLL_INTERVAL_S = 1  # short, so that a run spans several intervals


@dataclass(frozen=True)
class Secrets:
    jwt: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    upstream_key: str = field(default_factory=lambda: "sk-bench-" + secrets.token_urlsafe(24))
    pepper: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def env(self, redis_url: str) -> dict[str, str]:
        return {
            "REDIS_URL": redis_url,
            "GATEWAY_JWT_SECRET": self.jwt,
            "BENCH_UPSTREAM_KEY": self.upstream_key,
            "GATEWAY_API_KEY_PEPPER": self.pepper,
        }


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        # taskset execs the gateway, and one uvicorn worker serves in-process: same pid.
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def api_key(self, admin_token: str, team: str, *, limited: bool = False) -> str:
        """A gateway API key for ``team``, made through the admin API; ``limited``: with its
        own request and token limits, far above the load (every request pays for the key's
        checks in the scripts, none is refused)."""
        doc: dict[str, object] = {"name": f"bench-{secrets.token_hex(3)}"}
        if limited:
            doc["limits"] = {"requests_per_minute": 100_000_000, "tokens_per_minute": 10**9}
        body = json.dumps(doc).encode()
        req = urllib.request.Request(  # noqa: S310 (loopback URL)
            self.url(f"/admin/v1/teams/{team}/api-keys"),
            data=body,
            headers={"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            return str(json.loads(resp.read())["key"])

    def counted(self, metric: str, label: str) -> int:
        """The sum of ``metric``'s series carrying ``label`` (e.g. 'team="bench"') in its
        own /metrics."""
        with urllib.request.urlopen(self.url("/metrics"), timeout=10) as resp:  # noqa: S310
            text = resp.read().decode()
        return sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines()
            if line.startswith(metric + "{") and label in line
        )


def gateway_command() -> str:
    return str(Path(sys.executable).parent / "gateway")


def start(
    tmp: Path,
    name: str,
    upstream: str,
    core: int,
    env: dict[str, str],
    timeout: float = 30,
    *,
    quota: bool = True,
    metering: bool = True,
) -> Gateway:
    port = procs.free_port()
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(
        _CONFIG.format(
            upstream=upstream,
            port=port,
            poll_interval=POLL_INTERVAL_S,
            quota="true" if quota else "false",
            metering="true" if metering else "false",
        )
    )
    log = tmp / f"{name}.log"
    argv = [gateway_command(), "serve", "--config", str(cfg), "--port", str(port)]
    argv += ["--workers", "1", "--log-level", "warning"]
    proc = procs.spawn(argv, core, env={**os.environ, **env}, log=log)
    try:
        procs.wait_http(f"http://127.0.0.1:{port}/healthz", proc, log, timeout)
    except BaseException:
        stop_process(proc)
        raise
    return Gateway(proc, port, log)
