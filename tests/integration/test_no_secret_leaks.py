"""Collect every response header, body, log line and metric of a mixed workload, and prove
that neither the upstream keys nor the callers' tokens appear in any of them."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

import pytest

from tests.conftest import make_stack
from tests.rawhttp import raw_request


def _fetch(url: str, token: str | None, data: bytes | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, str(r.headers) + r.read().decode("latin-1")
    except urllib.error.HTTPError as e:
        return e.code, str(e.headers) + e.read().decode("latin-1")


def test_no_secret_in_any_output(
    redis_url: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    outputs: list[str] = []
    with make_stack(redis_url, key_ids=("primary", "secondary", "third")) as s:
        sim = s.sim_app.state.sim
        good = s.token()
        other = s.token(team="team-b", user="bob", roles=("gateway-admin",))
        chat = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
        stream = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
        statuses = []
        for url, token, data in [
            (s.v1 + "/chat/completions", good, chat),
            (s.v1 + "/chat/completions", other, stream),
            (s.v1 + "/models", good, None),
            (s.v1 + "/models", good[:-4] + "AAAA", None),
            (s.v1 + "/models/%2e%2e", good, None),
            (s.url + "/nope", good, None),
        ]:
            status, text = _fetch(url, token, data)
            statuses.append(status)
            outputs.append(text)
        # upstream trouble: a refused key, a rate limit, a server error
        first, second, _ = s.sim_keys
        sim.add_fault(kind="status_401", count=1, key=first)
        sim.add_fault(kind="status_429", count=1, key=second, retry_after=5)
        sim.add_fault(kind="status_500", count=1, path_prefix="/v1/chat")
        for _ in range(4):
            status, text = _fetch(s.v1 + "/chat/completions", good, chat)
            statuses.append(status)
            outputs.append(text)
        outputs.append(
            str(
                raw_request(
                    s.url,
                    f"GET /v1/models HTTP/1.1\nHost: x\nConnection: close\nAuthorization: Bearer "
                    f"{good}\nX-Big: {'a' * 20000}",
                )
            )
        )
        # A gateway API key's life: only the answers to its create and its rotation carry a
        # secret (each its own, once); every other output is evidence.
        admin_keys = s.url + "/admin/v1/teams/team-a/api-keys"
        status, made = _fetch(admin_keys, other, b'{"name":"svc"}')
        assert status == 201
        key = json.loads(made[made.index("{") :])
        key_id, first_secret = key["id"], key["key"]
        for data in (chat, stream):
            status, text = _fetch(s.v1 + "/chat/completions", first_secret, data)
            statuses.append(status)
            outputs.append(text)
        status, rotated = _fetch(
            s.url + f"/admin/v1/api-keys/{key_id}/rotate", other, b'{"grace_seconds":0}'
        )
        assert status == 200
        second_secret = json.loads(rotated[rotated.index("{") :])["key"]
        outputs.append(_fetch(s.v1 + "/chat/completions", second_secret, chat)[1])
        outputs.append(_fetch(admin_keys, other)[1])
        outputs.append(_fetch(s.url + "/admin/v1/audit", other)[1])
        outputs.append(_fetch(s.v1 + "/gateway/usage?group_by=user", second_secret)[1])
        for path in ("/healthz", "/readyz", "/metrics"):
            status, text = _fetch(s.url + path, None)
            statuses.append(status)
            outputs.append(text)
        pepper = s.settings.auth.api_key_pepper
        assert pepper is not None
        secrets_ = [*s.sim_keys, good, other, s.jwt_secret, first_secret, second_secret, pepper]
    assert 200 in statuses
    assert 401 in statuses
    assert 500 in statuses
    outputs.extend(r.getMessage() for r in caplog.records)
    access_log = capsys.readouterr()
    outputs += [access_log.out, access_log.err]
    assert '"user":"key:svc"' in access_log.out  # the key's calls were logged, by name
    outputs.extend(str(r.exc_info) for r in caplog.records if r.exc_info)
    blob = "\n".join(outputs)
    assert "gateway_requests_total" in blob  # the metrics scrape is part of the evidence
    for secret in secrets_:
        assert secret not in blob
        # nor a recognisable fragment of it
        assert secret[-16:] not in blob
