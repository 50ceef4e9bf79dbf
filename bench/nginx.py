"""nginx in a temp dir: the fast static upstream, a video upstream, and the reference proxy."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from bench import procs
from gateway.dev.process import stop_process

DOWNLOAD_NAME = "big.bin"
DOWNLOAD_BYTES = 1024**3

_CHAT: dict[str, object] = {
    "id": "chatcmpl-bench0000000000000000000000",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello! A canned answer from the benchmark upstream.",
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
    "system_fingerprint": "fp_bench",
    "service_tier": "",
}
_CHAT_SIZE = 534  # the size perf.md's reference figures were measured with


def chat_completion() -> str:
    body = dict(_CHAT)
    short = _CHAT_SIZE - len(json.dumps(body, separators=(",", ":")))
    body["service_tier"] = "x" * short
    return json.dumps(body, separators=(",", ":"))


# The video upstream: a job that is done (its content is the 1 GiB file) and one that never is.
DONE_TASK, PENDING_TASK, PENDING_PREFIX = "task_bench", "task_pending", "/pending"


def video_job(task: str, status: str, progress: int) -> str:
    job: dict[str, object] = {"id": task, "object": "video", "model": "sora-2", "status": status}
    job |= {"progress": progress, "seconds": "4", "size": "1280x720", "created_at": 1700000000}
    return json.dumps(job, separators=(",", ":"))


MODELS = json.dumps(
    {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "owned_by": "bench"}]},
    separators=(",", ":"),
)


def render_config(tmp: Path, upstream_port: int, proxy_port: int, video_port: int) -> str:
    chat = chat_completion()
    done, pending = video_job(DONE_TASK, "completed", 100), video_job(PENDING_TASK, "queued", 0)
    created = video_job(DONE_TASK, "queued", 0)
    # nginx would expand "$" and end the string at "'": neither may appear in the bodies.
    if any(c in body for body in (chat, MODELS, done, pending, created) for c in "$'"):
        raise ValueError("a canned body contains $ or '")
    temp_paths = "\n".join(
        f"  {kind}_temp_path {tmp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
  access_log off;
{temp_paths}
  # wrk reuses each connection for the whole run; the default (1000) would add reconnects.
  keepalive_requests 10000000;
  sendfile on;
  upstream fast {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  upstream video {{ server 127.0.0.1:{video_port}; }}
  server {{
    listen 127.0.0.1:{upstream_port} backlog=4096;
    location = /v1/chat/completions {{ default_type application/json; return 200 '{chat}'; }}
    location = /v1/models {{ default_type application/json; return 200 '{MODELS}'; }}
    location /files/ {{ root {tmp}; }}
  }}
  server {{
    # No keep-alive: every connection a proxy holds to it is a download or a poll in progress,
    # so counting them shows when an aborted download's upstream connection was closed.
    listen 127.0.0.1:{video_port} backlog=4096;
    keepalive_timeout 0;
    default_type application/json;
    location = /v1/videos {{ return 200 '{created}'; }}
    location = /v1/videos/{DONE_TASK} {{ return 200 '{done}'; }}
    location = /v1/videos/{DONE_TASK}/content {{
      default_type video/mp4;
      alias {tmp}/files/{DOWNLOAD_NAME};
    }}
    location = {PENDING_PREFIX}/v1/videos {{
      return 200 '{pending}';
    }}
    location = {PENDING_PREFIX}/v1/videos/{PENDING_TASK} {{ return 200 '{pending}'; }}
  }}
  server {{
    listen 127.0.0.1:{proxy_port} backlog=4096;
    location /v1/videos/ {{
      proxy_pass http://video;
      proxy_http_version 1.1;
      proxy_buffering off;
    }}
    location / {{
      proxy_pass http://fast;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


def start(
    tmp: Path, upstream_port: int, proxy_port: int, video_port: int, core: int
) -> subprocess.Popen[bytes]:
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi", "files"):
        (tmp / kind).mkdir(exist_ok=True)
    # Sparse: 1 GiB to download without 1 GiB of disk.
    big = tmp / "files" / DOWNLOAD_NAME
    with open(big, "wb") as f:
        os.truncate(f.fileno(), DOWNLOAD_BYTES)
    # Started as root, nginx's worker runs as an unprivileged user: it must be able to reach
    # the files (traverse only: the rest of the temp dir, e.g. the token script, stays private).
    tmp.chmod(0o711)
    (tmp / "files").chmod(0o755)
    big.chmod(0o644)
    conf = tmp / "nginx.conf"
    conf.write_text(render_config(tmp, upstream_port, proxy_port, video_port))
    log = tmp / "nginx.out"
    proc = procs.spawn(["nginx", "-p", str(tmp), "-c", str(conf)], core, log=log)
    try:
        procs.wait_http(f"http://127.0.0.1:{upstream_port}/v1/models", proc, log, timeout=10)
        procs.wait_http(f"http://127.0.0.1:{proxy_port}/v1/models", proc, log, timeout=10)
        procs.wait_http(f"http://127.0.0.1:{video_port}/v1/videos/{DONE_TASK}", proc, log, 10)
    except BaseException:
        stop_process(proc)
        raise
    return proc
