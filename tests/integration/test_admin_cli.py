"""``gateway admin ...`` as operators run it: a subprocess against a live gateway, with the URL
and the admin token from the environment. Tables by default, the API's JSON with --json, exit
1 with the gateway's message on an error answer, 2 on usage errors or no gateway at all."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.sim.config import SimConfig
from tests.conftest import Stack, make_stack
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
VIDEOS = {"models": {"sora-2": {"sizes": ["1280x720"], "seconds": [4, 8]}}}


def fresh() -> str:
    return "c-" + secrets.token_hex(4)  # the Redis server is shared by the session


def run_cli(*args: str, url: str, token: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GATEWAY_", "CRAZYROUTER_", "REDIS_URL"))
    }
    env.update(PYTHONPATH=str(ROOT), GATEWAY_URL=url, GATEWAY_ADMIN_TOKEN=token)
    return subprocess.run(
        [sys.executable, "-m", "gateway", "admin", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@dataclass
class Cli:
    stack: Stack
    team: str
    token: str

    def run(
        self, *args: str, token: str | None = None, url: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(
            *args, url=url or self.stack.url, token=self.token if token is None else token
        )

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        return done.stdout


@pytest.fixture
def cli(redis_url: str) -> Iterator[Cli]:
    team = fresh()
    with make_stack(
        redis_url,
        key_ids=("primary", "secondary"),
        sim=SimConfig(job_seconds=30, content_bytes=100),
        teams={"default": {}, team: {"requests_per_minute": 50}},
        videos=VIDEOS,
    ) as stack:
        token = stack.token(team=fresh(), user="root", roles=("gateway-admin",))
        yield Cli(stack, team, token)


def rows(table: str) -> list[list[str]]:
    return [line.split() for line in table.strip().splitlines()]


def test_limits_teams_show_and_reset_as_tables_and_json(cli: Cli) -> None:
    t = cli.team
    out = cli.ok("set-limits", t, "requests_per_minute=5", "video_seconds_per_day=unlimited")
    lines = out.splitlines()
    assert lines[0] == f"team {t} (configured; currency USD, time zone UTC)"
    table = rows("\n".join(lines[1:]))
    assert table[0] == ["KIND", "LIMIT", "USED", "REMAINING", "RESETS", "AT", "SOURCE"]
    by_kind = {r[0]: r[1:] for r in table[1:]}
    assert by_kind["requests_per_minute"][0:3] == ["5", "0", "5"]
    assert by_kind["requests_per_minute"][-1] == "override"
    assert by_kind["video_seconds_per_day"] == [
        "unlimited",
        "0",
        "-",
        by_kind["video_seconds_per_day"][3],
        "override",
    ]
    assert by_kind["concurrent_jobs"] == ["unlimited", "0", "-", "-", "config"]
    # columns line up: every row's SOURCE starts where the header's does
    col = lines[1].index("SOURCE")
    assert all(line[col:].strip() in ("SOURCE", "config", "override") for line in lines[1:])

    teams = cli.ok("teams")
    header, *body = teams.strip().splitlines()
    assert header.split() == [
        "TEAM",
        "CONFIGURED",
        "REQ/MIN",
        "CONCURRENT",
        "VIDEO-S/DAY",
        "VIDEO-S/MONTH",
        "SPEND/MONTH",
        "TOK/MIN",
        "TOK/DAY",
        "SPEND/DAY",
    ]
    assert body[-1] == "used/limit per kind; * = admin override"
    free = ["0/unlimited"] * 3
    assert [
        t,
        "yes",
        "0/5*",
        "0/unlimited",
        "0/unlimited*",
        "0/unlimited",
        "0/unlimited",
        *free,
    ] in [line.split() for line in body]

    # --json is the API's answer as it is, before or after the subcommand
    shown = json.loads(cli.ok("--json", "show", t))
    assert shown == json.loads(cli.ok("show", t, "--json"))
    assert shown["overrides"] == {"requests_per_minute": 5, "video_seconds_per_day": None}

    replaced = json.loads(cli.ok("set-limits", t, "concurrent_jobs=2", "--replace", "--json"))
    assert replaced["overrides"] == {"concurrent_jobs": 2}
    merged = json.loads(cli.ok("set-limits", t, "spend_per_month=12.5", "--json"))
    assert merged["overrides"] == {"concurrent_jobs": 2, "spend_per_month": 12.5}
    cleared = json.loads(cli.ok("clear-limits", t, "--json"))
    assert cleared["overrides"] == {}
    assert cleared["limits"]["requests_per_minute"]["limit"] == 50

    reset = json.loads(cli.ok("reset-usage", t, "--window", "all", "--json"))
    assert reset["limits"]["requests_per_minute"]["used"] == 0


def test_jobs_keys_and_audit_tables(cli: Cli) -> None:
    t = fresh()
    job_id = create_video(cli, team=t)

    jobs = rows(cli.ok("jobs", t))
    assert jobs[0] == ["ID", "STATUS", "MODEL", "SECONDS", "SIZE", "USER", "KEY", "CREATED"]
    assert jobs[1][0] == job_id
    assert jobs[1][2:6] == ["sora-2", "4", "1280x720", "carol"]
    assert jobs[1][6] in ("primary", "secondary")
    one = cli.ok("job", job_id)
    assert f"team             {t}" in one
    assert "upstream_key_id" in one

    assert rows(cli.ok("keys")) == [
        ["KEY", "STATE", "IN", "FLIGHT"],
        ["primary", "healthy", "0"],
        ["secondary", "healthy", "0"],
    ]
    assert rows(cli.ok("keys", "disable", "secondary"))[1] == ["secondary", "disabled", "0"]
    assert rows(cli.ok("keys", "enable", "secondary"))[1] == ["secondary", "healthy", "0"]

    audit = rows(cli.ok("audit", "--limit", "5"))
    assert audit[0] == ["TIME", "WHO", "ACTION", "TARGET", "BEFORE", "AFTER"]
    assert [r[2:] for r in audit[1:]] == [
        [
            "upstream_key.enable",
            "upstream_key:secondary",
            '{"state":"disabled"}',
            '{"state":"healthy"}',
        ],
        [
            "upstream_key.disable",
            "upstream_key:secondary",
            '{"state":"healthy"}',
            '{"state":"disabled"}',
        ],
    ]
    assert audit[1][1].startswith("root@c-")
    newest = cli.ok("audit", "--limit", "1").strip().splitlines()
    assert newest[-1].startswith("older entries: --before ")
    older = rows(cli.ok("audit", "--limit", "1", "--before", newest[-1].split()[-1]))
    assert older[1][2] == "upstream_key.disable"
    assert cli.ok("audit", "--actor", "nobody/at-all").strip() == "no audit entries"
    for text in (cli.ok("audit"), cli.ok("--json", "audit"), cli.ok("--json", "keys")):
        assert cli.token not in text
        assert not any(secret in text for secret in cli.stack.keys.values())


def test_an_error_answer_exits_1_with_the_gateways_message(cli: Cli) -> None:
    done = cli.run("set-limits", cli.team, "requests_per_minute=-1")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        "gateway admin: 400 invalid_value (param requests_per_minute): "
        "requests_per_minute must be a finite number >= 0.\n"
    )
    done = cli.run("--json", "set-limits", cli.team, "rpm=1")
    assert done.returncode == 1
    assert json.loads(done.stdout)["error"]["code"] == "unknown_parameter"
    assert "400 unknown_parameter (param rpm)" in done.stderr

    not_admin = cli.stack.token(team=cli.team, user="bob")
    done = cli.run("teams", token=not_admin)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        "gateway admin: 403 permission_denied: This endpoint needs the gateway admin role.\n"
    )
    done = cli.run("keys", "enable", "nope")
    assert done.returncode == 1
    assert "404 not_found: No upstream key has this id." in done.stderr
    done = cli.run("teams", token="not-a-jwt")
    assert done.returncode == 1
    assert "401 invalid_api_key" in done.stderr
    assert "not-a-jwt" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("set-limits", "t", "requests_per_minute"), "expected KIND=VALUE"),
        (("set-limits", "t", "requests_per_minute=lots"), "is not a number"),
        (("reset-usage", "t"), "--window"),
        (("reset-usage", "t", "--window", "week"), "invalid choice"),
        (("keys", "enable"), "which key?"),
        (("frobnicate",), "invalid choice"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...], message: str) -> None:
    # caught before any request: nothing needs to listen there
    done = run_cli(*args, url=f"http://127.0.0.1:{free_port()}", token="x.y.z")
    assert done.returncode == 2
    assert message in done.stderr


def test_no_token_or_no_gateway_exits_2(cli: Cli) -> None:
    done = cli.run("teams", token="")
    assert done.returncode == 2
    assert "GATEWAY_ADMIN_TOKEN" in done.stderr
    nowhere = f"http://127.0.0.1:{free_port()}"
    done = cli.run("teams", url=nowhere)
    assert done.returncode == 2
    assert f"cannot reach the gateway at {nowhere}" in done.stderr
    done = cli.run("--url", "file:///etc/passwd", "teams")
    assert done.returncode == 2
    assert "must be an http(s) URL" in done.stderr


@pytest.fixture
def quick(redis_url: str) -> Iterator[Cli]:
    """Jobs that finish in about a second, and a reconciler that polls them meanwhile: the
    admin API reads the registry, which the reconciler keeps current when no caller polls."""
    with make_stack(
        redis_url,
        sim=SimConfig(job_seconds=1.5, content_bytes=100),
        videos={**VIDEOS, "poll_interval_seconds": 0.2},
        quota={"reconcile_interval_seconds": 0.2, "reconcile_idle_seconds": 0.1},
    ) as stack:
        token = stack.token(team=fresh(), user="root", roles=("gateway-admin",))
        yield Cli(stack, fresh(), token)


def create_video(
    cli: Cli, prompt: str = "SIMNEVER", *, team: str | None = None, user: str = "carol"
) -> str:
    """A job made by ``user`` of ``team`` (the fixture's own by default); the simulator reads
    the prompt (SIMNEVER: it never finishes, SIMFAIL: it fails)."""
    req = urllib.request.Request(
        cli.stack.v1 + "/videos",
        data=json.dumps({"model": "sora-2", "prompt": prompt, "seconds": "4"}).encode(),
        headers={
            "Authorization": f"Bearer {cli.stack.token(team=team or cli.team, user=user)}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return str(json.load(r)["id"])


def test_job_wait_prints_each_change_until_completed(quick: Cli) -> None:
    job_id = create_video(quick, "a lighthouse")
    done = quick.run("job", job_id, "--wait", "--interval", "0.1")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    changes = [line.split()[1:] for line in lines if re.match(r"\d\d:\d\d:\d\dZ ", line)]
    assert {c[0] for c in changes} == {job_id}
    statuses = [c[1] for c in changes]
    assert statuses[0] in ("queued", "in_progress")
    assert statuses[-1] == "completed"
    assert changes[-1][2] == "100%"
    assert set(statuses) <= {"queued", "in_progress", "completed"}
    assert len(changes) == len({tuple(c) for c in changes})  # a line per change, not per poll
    # then the job as `gateway admin job` shows it
    assert "status           completed" in lines
    assert f"id               {job_id}" in lines

    again = json.loads(quick.ok("job", job_id, "--wait", "--json").splitlines()[-1])
    assert (again["id"], again["status"]) == (job_id, "completed")


def test_job_wait_exits_1_when_the_job_fails(quick: Cli) -> None:
    job_id = create_video(quick, "SIMFAIL please")
    done = quick.run("job", job_id, "--wait", "--interval", "0.1")
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1].split()[1:3] == [job_id, "failed"]
    assert done.stderr.startswith(f"gateway admin: job {job_id} failed: ")


def test_ctrl_c_stops_waiting_cleanly(cli: Cli) -> None:
    import signal
    import threading

    job_id = create_video(cli, "SIMNEVER")  # never finishes
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GATEWAY_", "CRAZYROUTER_", "REDIS_URL"))
    }
    env.update(PYTHONPATH=str(ROOT), GATEWAY_URL=cli.stack.url, GATEWAY_ADMIN_TOKEN=cli.token)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "admin", "job", job_id, "--wait", "--interval", "0.2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout = proc.stdout
    assert stdout is not None
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(stdout.readline()))
    reader.start()
    reader.join(timeout=30)
    try:
        assert first, "no status line while waiting"
        assert first[0].split()[1:3] in ([job_id, "queued"], [job_id, "in_progress"])
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    assert err.startswith(f"gateway admin: stopped waiting for {job_id} (still ")
    assert "Traceback" not in err


def test_api_keys_from_the_terminal_in_both_views(cli: Cli) -> None:
    out = cli.ok(
        "api-keys",
        "create",
        "nightly",
        "--team",
        cli.team,
        "--limit",
        "requests_per_minute=5",
        "--models",
        "gpt-4o-mini,o4-*",
        "--expires-in-days",
        "7",
    )
    key = re.search(r"^key\s+(gwk_\S+)$", out, re.M)
    assert key is not None
    assert "shown this once" in out
    key_id = re.search(r"^id\s+(\S+)$", out, re.M)
    assert key_id is not None
    listed = cli.ok("api-keys", "list", "--team", cli.team)
    assert key_id.group(1) in listed
    assert "requests_per_minute=5" in listed
    assert "gpt-4o-mini,o4-*" in listed
    assert key.group(1) not in listed
    # A team admin's own view: no --team, its own token.
    lead = cli.stack.token(team=cli.team, user="lead", roles=("team-admin",))
    done = cli.run("api-keys", "list", token=lead)
    assert done.returncode == 0, done.stderr
    assert key_id.group(1) in done.stdout
    done = cli.run("api-keys", "rotate", key_id.group(1), "--grace-seconds", "0", token=lead)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^key\s+gwk_", done.stdout, re.M)
    done = cli.run("api-keys", "revoke", key_id.group(1), "--any-team")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^state\s+revoked$", done.stdout, re.M)
    # Errors: a usage error is 2, a refusal 1 with the gateway's code.
    assert cli.run("api-keys", "create").returncode == 2
    member = cli.stack.token(team=cli.team, user="member")
    done = cli.run("api-keys", "list", token=member)
    assert done.returncode == 1
    assert "403 permission_denied" in done.stderr


def test_a_callers_subject_cannot_write_to_the_operators_terminal(cli: Cli) -> None:
    """A JWT's subject is the caller's to choose: one carrying an escape sequence (clear the
    screen, retitle the window), a line break (a forged row) or a bidirectional override is
    shown by every text view as its escape, and the JSON view carries it as JSON escapes."""
    t = fresh()
    user = "mallory\x1b[2J\x1b]0;pwned\x07\nFAKE ROW\u202e"
    job_id = create_video(cli, team=t, user=user)

    table = cli.ok("jobs", t)
    one = cli.ok("job", job_id)
    for text in (table, one, cli.ok("--json", "jobs", t)):
        assert not any(c in text for c in "\x1b\x07\u202e"), text
        assert "FAKE ROW" in text
    shown = "mallory\\x1b[2J\\x1b]0;pwned\\x07\\nFAKE ROW\\u202e"
    assert len(table.strip().splitlines()) == 2  # the header and the job: no forged row
    assert shown in table.splitlines()[1]
    assert f"user             {shown}" in one
    assert json.loads(cli.ok("--json", "job", job_id))["user"] == user
