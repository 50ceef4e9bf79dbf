"""The processes a benchmark runs: nginx (fast upstream and reference proxy) and the gateway."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHAT_COMPLETION = {
    "id": "chatcmpl-bench0000000000000000000000",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello! A canned answer from the benchmark upstream, padded.",
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
    "system_fingerprint": "fp_bench",
}
# Padded to 534 bytes, the size perf.md's figures were measured with.
CHAT_COMPLETION["service_tier"] = "x" * (
    534 - 18 - len(json.dumps(CHAT_COMPLETION, separators=(",", ":")))
)


def require_tools() -> list[str]:
    return [t for t in ("nginx", "wrk", "taskset") if shutil.which(t) is None]


def wait_http(url: str, proc: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 (loopback)
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process for {url} exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up") from None
            time.sleep(0.05)


def start_nginx(
    tmp: Path, upstream_port: int, proxy_port: int, core: int
) -> subprocess.Popen[bytes]:
    """nginx with one worker: a static upstream and a reference proxy in front of it."""
    (tmp / "files").mkdir(exist_ok=True)
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / d).mkdir(exist_ok=True)
    chat = json.dumps(CHAT_COMPLETION, separators=(",", ":"))
    models = json.dumps({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})
    conf = f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  keepalive_requests 1000000;
  upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{upstream_port};
    location = /v1/chat/completions {{ default_type application/json; return 200 '{chat}'; }}
    location = /v1/models {{ default_type application/json; return 200 '{models}'; }}
    location /files/ {{ root {tmp}; sendfile on; }}
  }}
  server {{
    listen 127.0.0.1:{proxy_port};
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""
    (tmp / "nginx.conf").write_text(conf)
    proc = subprocess.Popen(
        ["taskset", "-c", str(core), "nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{upstream_port}/v1/models", proc)
    return proc


def start_gateway(
    tmp: Path, name: str, upstream: str, port: int, core: int, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(
        f"""
upstream: {{base_url: "{upstream}", keys: [{{id: bench, secret: "${{BENCH_UPSTREAM_KEY}}"}}],
           max_connections: 1024}}
redis: {{url: "${{REDIS_URL}}"}}
auth: {{hs256_secrets: ["${{GATEWAY_JWT_SECRET}}"], algorithms: [HS256]}}
server: {{host: 127.0.0.1, port: {port}}}
teams: {{default: {{}}, bench: {{}}}}
"""
    )
    bin_dir = Path(sys.executable).parent
    proc = subprocess.Popen(
        [
            "taskset",
            "-c",
            str(core),
            str(bin_dir / "gateway"),
            "serve",
            "--config",
            str(cfg),
            "--workers",
            "1",
            "--log-level",
            "warning",
        ],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / f"{name}.log", "wb"),  # noqa: SIM115 (closed with the process)
    )
    wait_http(f"http://127.0.0.1:{port}/healthz", proc)
    return proc


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
