"""The HTTP edge bounds what one client can make the gateway hold: a huge header block gets a
431 at once without growing the process, a trickled head a 408, a trickled body a closed
connection; well-behaved requests (pipelined, or with a head right at the limit) still work.

`gateway serve` runs as a subprocess (the memory of a process of its own is measured), and a
small app under the same protocol shows what the application sees."""

from __future__ import annotations

import contextlib
import json
import secrets
import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway.auth.tokens import mint_token
from gateway.dev.embedded_redis import RedisProcess
from gateway.sim.app import create_sim_app
from gateway.sim.config import SimConfig
from gateway.web.protocol import HeadLimits
from tests.integration.test_cli import Served, clean_env, gateway_cmd
from tests.servers import free_port, run_server, wait_for

MiB = 1024 * 1024
MAX_HEADER_BYTES = 16 * 1024  # the default, kept in the config below

CONFIG = """\
upstream: {{base_url: "{sim}", keys: [{{id: primary, secret: "${{UPSTREAM_KEY}}"}}]}}
redis: {{url: "{redis}"}}
auth: {{hs256_secrets: ["${{GATEWAY_JWT_SECRET}}"]}}
server: {{header_timeout_seconds: 1, body_timeout_seconds: 1, access_log: "off"}}
teams: {{default: {{}}, team-a: {{}}}}
"""


@dataclass
class Gateway:
    url: str
    token: str
    served: Served
    sim_app: Any

    def sim_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.sim_app.state.sim.requests if r["path"].startswith("/v1")]


@pytest.fixture(scope="module")
def gateway(
    redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("heads")
    jwt, key = secrets.token_urlsafe(48), "sk-" + secrets.token_hex(16)
    sim_app = create_sim_app(SimConfig(keys=(key,)))
    with run_server(sim_app, server_header=False) as sim:
        cfg = tmp / "gateway.yaml"
        cfg.write_text(CONFIG.format(sim=sim, redis=redis_server.url))
        port = free_port()
        served = Served(
            gateway_cmd("serve", "--config", str(cfg), "--port", str(port)),
            tmp,
            clean_env(GATEWAY_JWT_SECRET=jwt, UPSTREAM_KEY=key),
        )
        try:
            served.wait_for(r"Application startup complete")
            yield Gateway(
                f"http://127.0.0.1:{port}",
                mint_token(jwt, team="team-a", user="u", ttl_seconds=600),
                served,
                sim_app,
            )
        finally:
            served.stop()


# -- a raw HTTP/1.1 client ---------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Conn:
    """One client connection that reads whole responses, several in a row if pipelined."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
        self.buf = b""
        self.eof = False

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """False once the server has closed the connection."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def poll(self, timeout: float) -> None:
        """Read what arrives within ``timeout``; note the end of the connection."""
        if self.eof or not select.select([self.sock], [], [], timeout)[0]:
            return
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        self.buf += chunk
        self.eof = not chunk

    def response(self, timeout: float = 5) -> Answer | None:
        """The next complete response, or None if the connection ends before one."""
        deadline = time.monotonic() + timeout
        while (got := self._take()) is None:
            if self.eof:
                return None
            assert time.monotonic() < deadline, f"no complete response: {self.buf[:200]!r}"
            self.poll(deadline - time.monotonic())
        return got

    def wait_closed(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.eof:
            assert time.monotonic() < deadline, "the server kept the connection open"
            self.poll(deadline - time.monotonic())

    def _take(self) -> Answer | None:
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return None
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
        }
        length = int(headers.get("content-length", "0"))
        if len(rest) < length:
            return None
        self.buf = rest[length:]
        return Answer(int(lines[0].split()[1]), headers, rest[:length])


@pytest.fixture
def connect() -> Iterator[Callable[[str], Conn]]:
    """Open connections, every one closed after the test whatever it asserted."""
    opened: list[Conn] = []

    def make(url: str) -> Conn:
        opened.append(Conn(url))
        return opened[-1]

    yield make
    for conn in opened:
        conn.close()


def get(token: str, path: str = "/v1/models", extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n{extra}\r\n".encode()
    )


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak so far) of a process."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def assert_error(answer: Answer | None, status: int, code: str) -> None:
    assert answer is not None, "the connection closed without an answer"
    assert answer.status == status
    assert answer.headers["connection"] == "close"
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert error["code"] == code
    assert set(error) == {"message", "type", "param", "code"}


# -- through `gateway serve` ----------------------------------------------------------------------


def test_a_96_mib_header_block_is_refused_at_once_without_growing_the_process(
    gateway: Gateway, connect: Callable[[str], Conn]
) -> None:
    pid = gateway.served.proc.pid
    warm = connect(gateway.url)
    warm.send(get(gateway.token, "/healthz"))
    assert (r := warm.response()) is not None
    assert r.status == 200
    before = memory_kib(pid)

    total = 96 * MiB
    line = b"X-Filler: " + b"a" * 1012 + b"\r\n"  # 1 KiB
    block = line * 256  # 256 KiB of header lines
    conn = connect(gateway.url)
    conn.sock.setblocking(False)
    sent, refused = 0, False
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n"
    conn.sock.sendall(head)
    started = time.monotonic()
    answer = None
    while answer is None and not conn.eof:
        assert time.monotonic() - started < 2, "no answer within 2 s"
        want_write = not refused and sent < total
        readable, writable, _ = select.select(
            [conn.sock], [conn.sock] if want_write else [], [], 0.1
        )
        if writable:
            try:
                sent += conn.sock.send(block[: min(len(block), total - sent)])
            except (BrokenPipeError, ConnectionResetError):
                refused = True
        if readable:
            conn.poll(0)
        answer = conn._take()
    elapsed = time.monotonic() - started
    assert_error(answer, 431, "request_header_fields_too_large")
    assert elapsed < 2
    # It stopped reading long before everything was sent: what left the client is what
    # loopback socket buffers hold, not 96 MiB.
    assert sent < 32 * MiB, sent

    # ...and it hung up: more data is refused (reset or broken pipe) rather than swallowed.
    conn.sock.setblocking(True)
    conn.sock.settimeout(2)
    deadline = time.monotonic() + 5
    while conn.send(block):
        assert time.monotonic() < deadline, "the server is still reading"

    after = memory_kib(pid)
    assert after["VmRSS"] - before["VmRSS"] <= 32 * 1024, (before, after)
    assert after["VmHWM"] - before["VmHWM"] <= 32 * 1024, (before, after)
    assert gateway.sim_requests() == []
    assert gateway.served.proc.poll() is None


def test_a_head_right_at_the_limit_works_and_one_byte_more_is_431(
    gateway: Gateway, connect: Callable[[str], Conn]
) -> None:
    def head_of_size(size: int) -> bytes:
        base = get(gateway.token, extra="X-Pad: ")
        pad = size - len(base) - 2  # the pad header's value, then its CRLF
        return base[:-2] + b"p" * pad + b"\r\n\r\n"

    at_limit = head_of_size(MAX_HEADER_BYTES)
    assert len(at_limit) == MAX_HEADER_BYTES
    conn = connect(gateway.url)
    conn.send(at_limit)
    answer = conn.response()
    assert answer is not None
    assert answer.status == 200

    conn = connect(gateway.url)
    conn.send(head_of_size(MAX_HEADER_BYTES + 1))
    assert_error(conn.response(), 431, "request_header_fields_too_large")
    conn.wait_closed(2)


def test_pipelined_requests_in_one_write_are_both_answered(
    gateway: Gateway, connect: Callable[[str], Conn]
) -> None:
    gateway.sim_app.state.sim.requests.clear()
    conn = connect(gateway.url)
    conn.send(get(gateway.token) + get(gateway.token, "/v1/models/sora-2"))
    first, second = conn.response(), conn.response()
    assert first is not None
    assert second is not None
    assert (first.status, second.status) == (200, 200)
    assert first.json()["object"] == "list"
    assert second.json()["id"] == "sora-2"
    assert [r["path"] for r in gateway.sim_requests()] == ["/v1/models", "/v1/models/sora-2"]
    # keep-alive still works after the pair
    conn.send(get(gateway.token))
    third = conn.response()
    assert third is not None
    assert third.status == 200


def test_a_trickled_head_is_cut_with_408(gateway: Gateway, connect: Callable[[str], Conn]) -> None:
    conn = connect(gateway.url)
    request = get(gateway.token)
    started = time.monotonic()
    for i in range(len(request)):
        if not conn.send(request[i : i + 1]):
            break
        conn.poll(0.2)  # one byte every 0.2 s; stop as soon as the server speaks
        if conn.buf or conn.eof:
            break
    answer = conn.response(timeout=1.5)
    cut_after = time.monotonic() - started
    assert_error(answer, 408, "request_timeout")
    assert answer is not None
    assert answer.json()["error"]["type"] == "timeout_error"
    assert cut_after < 1.5
    conn.wait_closed(1)


def test_a_trickled_body_is_cut_and_never_forwarded(
    gateway: Gateway, connect: Callable[[str], Conn]
) -> None:
    gateway.sim_app.state.sim.requests.clear()
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    conn = connect(gateway.url)
    conn.send(
        (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {gateway.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
    )
    started = time.monotonic()
    for ch in body.encode()[:-1]:  # never the last byte
        if not conn.send(bytes([ch])):
            break
        conn.poll(0.2)
        if conn.eof:
            break
    conn.wait_closed(max(0.1, 1.5 - (time.monotonic() - started)))
    assert time.monotonic() - started < 1.5
    assert conn.buf == b""  # nothing of a response had started
    assert gateway.sim_requests() == []


def test_a_connection_that_sends_nothing_is_closed(
    gateway: Gateway, connect: Callable[[str], Conn]
) -> None:
    conn = connect(gateway.url)
    started = time.monotonic()
    conn.wait_closed(1.5)
    assert time.monotonic() - started >= 0.9  # the header timeout, not at once
    assert conn.buf == b""


# -- what the application sees -------------------------------------------------------------------


class Recorder:
    """Reads the whole body, then answers with its length; keeps every message it received."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        size = 0
        while True:
            message = await receive()
            self.messages.append(message)
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = str(size).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


LIMITS = HeadLimits(max_header_bytes=2048, header_timeout_seconds=1, body_timeout_seconds=1)


@contextlib.contextmanager
def recorder_server() -> Iterator[tuple[str, Recorder]]:
    app = Recorder()
    with run_server(app, head_limits=LIMITS) as url:
        yield url, app


def test_the_app_sees_a_disconnect_when_the_body_deadline_passes(
    connect: Callable[[str], Conn],
) -> None:
    with recorder_server() as (url, app):
        conn = connect(url)
        conn.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        started = time.monotonic()
        while not conn.eof:
            assert time.monotonic() - started < 1.5, "the body deadline did not cut"
            if not conn.send(b"x"):
                break
            conn.poll(0.2)
        wait_for(lambda: app.messages and app.messages[-1]["type"] == "http.disconnect", 2)
        assert conn.buf == b""


def test_a_head_at_the_limit_with_its_body_in_the_same_write_is_read_whole(
    connect: Callable[[str], Conn],
) -> None:
    with recorder_server() as (url, _):
        body = b"b" * 5000
        base = f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nX-Pad: ".encode()
        head = base + b"p" * (LIMITS.max_header_bytes - len(base) - 4) + b"\r\n\r\n"
        assert len(head) == LIMITS.max_header_bytes
        conn = connect(url)
        conn.send(head + body + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first, second = conn.response(), conn.response()
        assert first is not None
        assert second is not None
        assert (first.status, first.body) == (200, b"5000")
        assert (second.status, second.body) == (200, b"0")


def test_an_oversized_head_after_a_pipelined_request_is_refused(
    connect: Callable[[str], Conn],
) -> None:
    with recorder_server() as (url, _):
        conn = connect(url)
        big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n"
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + big)
        first = conn.response()
        assert first is not None
        assert first.status == 200
        assert_error(conn.response(), 431, "request_header_fields_too_large")


@pytest.mark.parametrize("size", [1975, 1985, 1995])
def test_a_request_ending_inside_the_head_budget_leaves_the_next_head_its_own(
    connect: Callable[[str], Conn], size: int
) -> None:
    # The body of the first request ends inside the bytes counted against the head limit and
    # a small pipelined request follows in the same write: it used to get a false 431.
    with recorder_server() as (url, _):
        conn = connect(url)
        body = b"b" * size
        first = f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
        conn.send(first + body + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        one, two = conn.response(), conn.response()
        assert one is not None
        assert two is not None
        assert (one.status, one.body) == (200, str(size).encode())
        assert (two.status, two.body) == (200, b"0")
