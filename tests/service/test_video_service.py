"""VideoService with the upstream faked (tests.fakes) and the registry and quotas on a real
Redis; the clock is pinned (tests.clock), so nothing here waits for the gateway's own time."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.auth.principal import Principal
from gateway.errors import GatewayError, NotFound, StoreUnavailable, UpstreamTimeout
from gateway.quota.service import QuotaService
from gateway.quota.store import QuotaStore
from gateway.settings import QuotaSettings, RedisSettings, VideoSettings, team_table
from gateway.store import keys
from gateway.store.client import close_redis, make_redis
from gateway.store.keys import TeamKeys
from gateway.upstream.client import UpstreamClient
from gateway.videos.idempotency import IdempotencyStore
from gateway.videos.reconciler import Reconciler
from gateway.videos.registry import JobRegistry, new_video_id
from gateway.videos.service import Answer, VideoService
from tests.clock import Clock
from tests.fakes import FakeResponse, FakeUpstream, SeenRequest
from tests.servers import wait_for_async

BASE = "https://gateway.test"
FIELDS = {"prompt": "a cat on a skateboard", "seconds": "4"}
TASK = {"id": "task_up_1", "status": "queued", "progress": 0}


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    r = make_redis(RedisSettings(url=redis_url))
    yield r
    await close_redis(r)


@pytest.fixture
def clock() -> Clock:
    return Clock(1_790_000_000.0)  # mid-month: no day or month boundary near


def who(team: str) -> Principal:
    return Principal(team=team, user="alice", roles=frozenset())


def service(
    client: UpstreamClient,
    redis: Redis,
    clock: Clock,
    *,
    idempotency: IdempotencyStore | None = None,
    **videos: Any,
) -> tuple[VideoService, QuotaService]:
    settings = VideoSettings(**{"poll_interval_seconds": 0.0, **videos})
    teams = team_table({})
    quota = QuotaService(
        QuotaStore(redis), QuotaSettings(), teams=teams, videos=settings, clock=clock
    )
    svc = VideoService(
        client,
        JobRegistry(redis),
        settings,
        teams=teams,
        secrets=client.pool.secrets,
        clock=clock,
        quota=quota,
        idempotency=idempotency,
    )
    return svc, quota


async def reservation(quota: QuotaService, team: str, video_id: str) -> dict[str, str]:
    return await quota.store.reservation(TeamKeys(team), video_id)


async def used(quota: QuotaService, team: str, kind: str) -> Any:
    return (await quota.usage(team))["limits"][kind]["used"]


async def create(svc: VideoService, team: str) -> Answer:
    """The usual create (FIELDS) by ``team``."""
    return await svc.create(who(team), FIELDS, upload=None, request_id="r", base_url=BASE)


def team_name() -> str:
    return "svc-" + secrets.token_hex(4)


def create_then_poll(poll: dict[str, Any]) -> Any:
    """A handler: the create answers TASK, every status poll answers ``poll``."""

    def answer(req: SeenRequest) -> FakeResponse:
        return FakeResponse(200, json=TASK if req.method == "POST" else poll)

    return answer


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "invalid_prompt"),
        (429, "rate_limited"),  # one key, nothing to retry on: refused, certainly not run
        (401, "upstream_auth_failed"),  # our key refused (the probe finds it fine)
    ],
)
async def test_a_create_the_upstream_certainly_refused_is_reserved_then_refunded(
    client: UpstreamClient,
    upstream: FakeUpstream,
    redis: Redis,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    code: str,
) -> None:
    svc, quota = service(client, redis, clock)
    team, vid = team_name(), new_video_id()
    monkeypatch.setattr("gateway.videos.service.new_video_id", lambda: vid)
    at_upstream: list[dict[str, str]] = []

    async def refuse(req: SeenRequest) -> FakeResponse:
        if req.method == "GET":  # the 401 probe: this key reads fine
            return FakeResponse(200, json={"object": "list", "data": []})
        at_upstream.append(await reservation(quota, team, vid))
        return FakeResponse(status, json={"error": {"message": "no", "code": code}})

    upstream.handler = refuse
    with pytest.raises(GatewayError) as err:
        await svc.create(who(team), FIELDS, upload=None, request_id="r-1", base_url=BASE)
    assert err.value.code == code
    assert not err.value.maybe_processed
    # The charge was in place before the upstream saw the create, marked as sent...
    assert (at_upstream[0]["state"], at_upstream[0]["outcome"]) == ("reserved", "sent")
    assert [r.method for r in upstream.requests].count("POST") == 1
    # ...and given back after it refused (never marked unknown).
    res = await reservation(quota, team, vid)
    assert (res["state"], res["outcome"]) == ("refunded", "sent")
    assert await used(quota, team, "video_seconds_per_day") == 0
    assert await used(quota, team, "concurrent_jobs") == 0
    assert await svc.registry.get(vid) is None


def _time_out(req: SeenRequest) -> FakeResponse:
    raise TimeoutError


def _cut(status: int) -> FakeResponse:
    resp = FakeResponse(status, headers=[("Content-Length", "500")])
    resp.feed(b'{"id": "task_up_1", "sta')
    resp.fail()
    return resp


@pytest.mark.parametrize(
    ("handler", "status", "code"),
    [
        (_time_out, 504, "upstream_timeout"),
        (lambda req: FakeResponse(500, b"oops"), 500, "upstream_http_500"),
        (lambda req: FakeResponse(200, json={"status": "queued"}), 502, "upstream_unavailable"),
        *(
            (
                lambda req, bad=bad: FakeResponse(200, json={"id": bad, "status": "queued"}),
                502,
                "upstream_unavailable",
            )
            for bad in ("../v1/files", "task?x=1", "a/b", "..", "t#1", "x" * 201)
        ),
        # Accepted (2xx), then the answer is not what a job's should be: a job may exist.
        (lambda req: FakeResponse(200, b"<html>busy</html>"), 502, "upstream_unavailable"),
        (lambda req: _cut(200), 502, "upstream_unavailable"),
        (lambda req: _cut(500), 502, "upstream_unavailable"),
        (lambda req: FakeResponse(200, b"x" * (4 * 1024 * 1024 + 1)), 502, "upstream_unavailable"),
    ],
    ids=[
        "timeout",
        "5xx",
        "answer-without-id",
        *(f"unusable-id-{i}" for i in range(6)),
        "2xx-not-json",
        "2xx-cut",
        "5xx-cut",
        "2xx-too-large",
    ],
)
async def test_a_create_with_an_unknown_outcome_keeps_its_charge_marked_unknown(
    client: UpstreamClient,
    upstream: FakeUpstream,
    redis: Redis,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    handler: Any,
    status: int,
    code: str,
) -> None:
    svc, quota = service(client, redis, clock)
    team, vid = team_name(), new_video_id()
    monkeypatch.setattr("gateway.videos.service.new_video_id", lambda: vid)
    upstream.handler = handler
    with pytest.raises(GatewayError) as err:
        await svc.create(who(team), FIELDS, upload=None, request_id="r-1", base_url=BASE)
    assert (err.value.status, err.value.code) == (status, code)
    assert err.value.maybe_processed
    assert err.value.headers["x-should-retry"] == "false"
    assert len(upstream.requests) == 1  # never sent twice
    res = await reservation(quota, team, vid)
    assert (res["state"], res["outcome"]) == ("reserved", "unknown")  # the reconciler settles it
    assert await used(quota, team, "video_seconds_per_day") == 4
    assert await used(quota, team, "concurrent_jobs") == 1
    assert await svc.registry.get(vid) is None


async def test_a_timeout_is_the_upstream_timeout_error(
    client: UpstreamClient, upstream: FakeUpstream, redis: Redis, clock: Clock
) -> None:
    svc, _ = service(client, redis, clock)
    upstream.handler = _time_out
    with pytest.raises(UpstreamTimeout):
        await svc.create(who(team_name()), FIELDS, upload=None, request_id="r", base_url=BASE)


async def test_another_teams_video_is_not_found_exactly_like_a_missing_one(
    client: UpstreamClient, upstream: FakeUpstream, redis: Redis, clock: Clock
) -> None:
    svc, _ = service(client, redis, clock)
    upstream.handler = create_then_poll({**TASK, "status": "completed", "progress": 100})
    owner, other = team_name(), team_name()
    made = await svc.create(who(owner), FIELDS, upload=None, request_id="r", base_url=BASE)
    vid = str(made.body["id"])
    upstream.requests.clear()

    def attempts(video_id: str) -> list[Any]:
        b = who(other)
        return [
            lambda: svc.retrieve(b, video_id, request_id="r", base_url=BASE),
            lambda: svc.delete(b, video_id),
            lambda: svc.remix(b, video_id, {"prompt": "again"}, request_id="r", base_url=BASE),
            lambda: svc.open_content(b, video_id, variant=None, headers=(), request_id="r"),
            lambda: svc.list(b, after=video_id, limit=None, order=None, base_url=BASE),
        ]

    answers = []
    for video_id in (vid, new_video_id(), "video_not-an-id", "task_up_1"):
        for attempt in attempts(video_id):
            with pytest.raises(NotFound) as err:
                await attempt()
            e = err.value
            answers.append((e.status, e.code, e.param, e.message))
    assert set(answers) == {(404, "not_found", "video_id", "No video found with that id.")}
    assert upstream.requests == []  # no id of anyone's reached the upstream
    # The owner still has it: the other team's delete touched nothing.
    mine = await svc.retrieve(who(owner), vid, request_id="r", base_url=BASE)
    assert mine.body["id"] == vid


async def test_refresh_polls_the_upstream_at_most_once_per_interval(
    client: UpstreamClient, upstream: FakeUpstream, redis: Redis, clock: Clock
) -> None:
    svc, quota = service(client, redis, clock, poll_interval_seconds=0.2)
    upstream.handler = create_then_poll({**TASK, "status": "in_progress", "progress": 40})
    team = team_name()
    made = await create(svc, team)
    job = await svc.registry.get(str(made.body["id"]))
    assert job is not None
    polls = await asyncio.gather(*(svc.refresh(job, request_id="r") for _ in range(5)))
    gets = [r for r in upstream.requests if r.method == "GET"]
    assert len(gets) == 1  # five pollers, across replicas or not, one upstream call
    assert gets[0].path == "/v1/videos/task_up_1"
    assert gets[0].headers["authorization"] == f"Bearer {client.pool.secrets()[0]}"
    assert {p.status for p in polls} == {"in_progress"}
    await svc.refresh(job, request_id="r")
    assert len([r for r in upstream.requests if r.method == "GET"]) == 1

    # The interval is held in Redis (shared by replicas): once it lapses, one more call.
    poll_lock = keys.job_poll(job.id)

    async def lapsed() -> bool:
        return not await redis.exists(poll_lock)

    await wait_for_async(lapsed, timeout=5)
    upstream.handler = create_then_poll({**TASK, "status": "completed", "progress": 100})
    job = await svc.refresh(job, request_id="r")
    assert len([r for r in upstream.requests if r.method == "GET"]) == 2
    assert job.status == "completed"
    assert job.completed_at == int(clock())
    assert (await reservation(quota, team, job.id))["state"] == "kept"
    # A finished job is never polled again, whatever the interval.
    await redis.delete(poll_lock)
    await svc.refresh(job, request_id="r")
    assert len([r for r in upstream.requests if r.method == "GET"]) == 2


async def test_a_job_past_the_deadline_fails_without_asking_the_upstream(
    client: UpstreamClient, upstream: FakeUpstream, redis: Redis, clock: Clock
) -> None:
    svc, quota = service(client, redis, clock, deadline_seconds=60)
    upstream.handler = create_then_poll(TASK)
    team = team_name()
    made = await create(svc, team)
    job = await svc.registry.get(str(made.body["id"]))
    assert job is not None
    clock.advance(60)
    job = await svc.refresh(job, request_id="r")
    assert job.status == "queued"  # at the deadline, not past it
    clock.advance(0.001)
    upstream.requests.clear()
    job = await svc.refresh(job, request_id="r")
    assert (job.status, job.error_code) == ("failed", "timeout")
    assert upstream.requests == []
    assert (await reservation(quota, team, job.id))["state"] == "refunded"


@pytest.mark.parametrize("answer", ["large", "cut"])
async def test_an_upstream_error_on_content_gives_back_the_teams_connection(
    upstream: FakeUpstream, redis: Redis, clock: Clock, answer: str
) -> None:
    """An error body over 64 KiB (a CDN's error page) or cut mid-way used to raise before the
    response was closed: the team's upstream connection and the key's count were never given
    back, and after the team's share of them every call of the team was refused."""
    client = upstream.client(team_connections=2)
    await client.start()
    svc, _ = service(client, redis, clock)

    def handler(req: SeenRequest) -> FakeResponse:
        if not req.path.endswith("/content"):
            return FakeResponse(200, json={**TASK, "status": "completed"})
        if answer == "large":
            page = b"<html>" + b"x" * 70_000 + b"</html>"
            return FakeResponse(502, page, headers=[("Content-Type", "text/html")])
        cut = FakeResponse(500, headers=[("Content-Length", "5000")])
        cut.feed(b'{"error":')
        cut.fail()
        return cut

    upstream.handler = handler
    team = team_name()
    made = await create(svc, team)
    video_id = str(made.body["id"])
    try:
        for _ in range(4):  # twice the team's share
            with pytest.raises(GatewayError) as err:
                await svc.open_content(
                    who(team), video_id, variant=None, headers=(), request_id="d"
                )
            assert err.value.status in (500, 502)  # as the upstream answered: never a 429
            assert err.value.code != "concurrency_limit_exceeded"
            assert "x" * 100 not in err.value.message
        assert client._held.get(team, 0) == 0
        assert client.pool.in_flight("primary") == 0
    finally:
        await client.close()


async def test_a_create_longer_than_its_deadline_is_an_unknown_outcome_kept_charged(
    upstream: FakeUpstream, redis: Redis, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconciler refunds a reservation with no job once a create would have ended; a
    create that ran on past that (each read within the read timeout, or a retry on another
    key) was refunded and then ran uncharged. The service now ends it at its deadline, as an
    unknown outcome whose charge is kept."""
    client = upstream.client()
    await client.start()
    svc, quota = service(client, redis, clock)
    svc.create_timeout = 0.2
    team, vid = team_name(), new_video_id()
    monkeypatch.setattr("gateway.videos.service.new_video_id", lambda: vid)
    started = asyncio.Event()

    async def slow(req: SeenRequest) -> FakeResponse:
        started.set()
        await asyncio.sleep(30)
        return FakeResponse(200, json=TASK)

    upstream.handler = slow
    try:
        with pytest.raises(GatewayError) as err:
            await create(svc, team)
        assert started.is_set()
        assert (err.value.status, err.value.code) == (504, "upstream_timeout")
        assert err.value.maybe_processed
        assert err.value.headers["x-should-retry"] == "false"
        res = await reservation(quota, team, vid)
        assert (res["state"], res["outcome"]) == ("reserved", "unknown")
        assert await used(quota, team, "video_seconds_per_day") == 4
    finally:
        await client.close()


async def test_redis_failing_after_the_upstream_accepted_never_invites_a_second_job(
    client: UpstreamClient,
    upstream: FakeUpstream,
    redis: Redis,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The job could not be recorded: it was answered 503 (retry), its Idempotency-Key freed,
    and the SDK's retry made a second upstream job. Now it is an unknown outcome: no retry,
    the charge kept."""
    svc, quota = service(client, redis, clock)
    team, vid = team_name(), new_video_id()
    monkeypatch.setattr("gateway.videos.service.new_video_id", lambda: vid)
    upstream.handler = create_then_poll(TASK)

    async def down(job: Any) -> None:
        raise StoreUnavailable()

    monkeypatch.setattr(svc.registry, "add", down)
    with pytest.raises(GatewayError) as err:
        await create(svc, team)
    assert (err.value.status, err.value.code) == (502, "upstream_unavailable")
    assert err.value.maybe_processed
    assert err.value.headers["x-should-retry"] == "false"
    res = await reservation(quota, team, vid)
    assert (res["state"], res["outcome"]) == ("reserved", "unknown")


async def test_a_poll_in_flight_at_the_deadline_cannot_revive_the_refunded_job(
    client: UpstreamClient, upstream: FakeUpstream, redis: Redis, clock: Clock
) -> None:
    """The deadline failed the job and refunded it while a slow poll was out; the poll then
    wrote 'completed' over it, and the video was served uncharged. A job's end is written
    once: the poll finds the job ended and acts on that end."""
    svc, quota = service(client, redis, clock, deadline_seconds=60)
    entered, answer = asyncio.Event(), asyncio.Event()

    async def handler(req: SeenRequest) -> FakeResponse:
        if req.method == "POST":
            return FakeResponse(200, json=TASK)
        if req.path.endswith("/content"):
            return FakeResponse(200, b"MP4", headers=[("Content-Type", "video/mp4")])
        entered.set()
        await answer.wait()  # a slow status answer
        return FakeResponse(200, json={**TASK, "status": "completed", "progress": 100})

    upstream.handler = handler
    team = team_name()
    made = await create(svc, team)
    vid = str(made.body["id"])
    clock.advance(59.9)
    job = await svc.registry.get(vid)
    assert job is not None
    slow = asyncio.create_task(svc.refresh(job, request_id="a"))
    await asyncio.wait_for(entered.wait(), timeout=5)
    clock.advance(1)  # the deadline passes while the poll is out
    now = await svc.registry.get(vid)
    assert now is not None
    ended = await svc.refresh(now, request_id="b")
    assert (ended.status, ended.error_code) == ("failed", "timeout")
    answer.set()
    seen = await slow
    assert (seen.status, seen.error_code) == ("failed", "timeout")  # the end that won
    stored = await svc.registry.get(vid)
    assert stored is not None
    assert (stored.status, stored.error_code) == ("failed", "timeout")
    assert (await reservation(quota, team, vid))["state"] == "refunded"
    assert await used(quota, team, "video_seconds_per_day") == 0
    with pytest.raises(GatewayError) as err:
        await svc.open_content(who(team), vid, variant=None, headers=(), request_id="d")
    assert err.value.code == "video_not_ready"


async def test_a_stale_copy_past_the_deadline_cannot_fail_a_completed_charged_job(
    client: UpstreamClient, upstream: FakeUpstream, redis: Redis, clock: Clock
) -> None:
    svc, quota = service(client, redis, clock, deadline_seconds=60)
    upstream.handler = create_then_poll({**TASK, "status": "completed", "progress": 100})
    team = team_name()
    made = await create(svc, team)
    vid = str(made.body["id"])
    clock.advance(59.9)
    stale = await svc.registry.get(vid)  # one request read the job while it ran...
    current = await svc.registry.get(vid)
    assert stale is not None
    assert current is not None
    assert (await svc.refresh(current, request_id="a")).status == "completed"  # ...kept
    clock.advance(1)
    seen = await svc.refresh(stale, request_id="b")  # past the deadline, on its stale copy
    assert seen.status == "completed"
    stored = await svc.registry.get(vid)
    assert stored is not None
    assert stored.status == "completed"
    assert (await reservation(quota, team, vid))["state"] == "kept"
    assert await used(quota, team, "video_seconds_per_day") == 4


async def test_a_job_redis_could_not_record_stays_charged_even_with_the_breaker_open(
    client: UpstreamClient,
    upstream: FakeUpstream,
    redis: Redis,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis failing at the record opens the breaker, so marking the outcome unknown fails
    too: the reservation, marked as sent before the create left, is kept by the reconciler
    once no create can still be under way, never refunded as a dead replica's orphan."""
    svc, quota = service(client, redis, clock)
    team, vid = team_name(), new_video_id()
    monkeypatch.setattr("gateway.videos.service.new_video_id", lambda: vid)
    upstream.handler = create_then_poll(TASK)

    async def down(*args: Any, **kw: Any) -> None:
        raise StoreUnavailable()

    monkeypatch.setattr(svc.registry, "add", down)
    monkeypatch.setattr(quota.store, "mark_unknown", down)  # the breaker is open by now
    with pytest.raises(GatewayError) as err:
        await create(svc, team)
    assert err.value.maybe_processed
    res = await reservation(quota, team, vid)
    assert (res["state"], res["outcome"]) == ("reserved", "sent")
    monkeypatch.undo()
    reconciler = Reconciler(
        redis,
        svc,
        quota,
        svc.registry,
        interval_seconds=1,
        idle_seconds=1,
        orphan_seconds=60,
        clock=clock,
    )
    clock.advance(30)  # a create could still be under way: left alone
    await reconciler.run_once()
    assert (await reservation(quota, team, vid))["state"] == "reserved"
    clock.advance(31)
    report = await reconciler.run_once()
    assert (await reservation(quota, team, vid))["state"] == "kept"
    assert report.orphans_refunded == 0
    assert await used(quota, team, "video_seconds_per_day") == 4


PENDING_S = 90.0  # how long a claim may be in flight: a create's bound plus a grace


async def _lose(*args: Any, **kwargs: Any) -> None:
    raise StoreUnavailable()


def store_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Keyed:
    """One team's idempotent creates through a service with an IdempotencyStore."""

    def __init__(self, client: UpstreamClient, redis: Redis, clock: Clock) -> None:
        self.redis = redis
        self.store = IdempotencyStore(redis, ttl_seconds=86_400, pending_seconds=PENDING_S)
        self.svc, self.quota = service(client, redis, clock, idempotency=self.store)
        self.team = team_name()
        self.key = "k-" + secrets.token_hex(4)
        self.name = TeamKeys(self.team).idempotency(store_hash(self.key))

    async def create(self) -> Any:
        return await self.svc.create(
            who(self.team),
            FIELDS,
            upload=None,
            request_id="r",
            base_url=BASE,
            idempotency_key=self.key,
        )

    async def refused(self, status: int, code: str) -> None:
        with pytest.raises(GatewayError) as err:
            await self.create()
        assert (err.value.status, err.value.code) == (status, code)

    async def flight_ends(self) -> None:
        """Redis's own clock passes the time a sent create may take (its mark expires)."""
        assert await self.redis.delete(self.name + ":flight") == 1


@pytest.mark.parametrize("answer", ["job", "unknown"])
async def test_a_sent_create_whose_end_redis_lost_is_never_sent_again(
    client: UpstreamClient,
    upstream: FakeUpstream,
    redis: Redis,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
) -> None:
    """Redis fails to take how an idempotent create ended (the job made, or an unknown
    outcome): the key was kept from the moment the create left, so a retry with it gets the
    job, or waits and then learns the outcome is unknown, and never makes a second job."""
    k = Keyed(client, redis, clock)
    vid = new_video_id()
    monkeypatch.setattr("gateway.videos.service.new_video_id", lambda: vid)
    monkeypatch.setattr(k.store, "finish", _lose)
    upstream.handler = (
        create_then_poll({**TASK, "status": "in_progress", "progress": 10})
        if answer == "job"
        else lambda req: FakeResponse(500, json={"error": {"message": "boom"}})
    )
    if answer == "job":
        assert (await k.create()).body["id"] == vid
    else:
        with pytest.raises(GatewayError) as err:
            await k.create()
        assert err.value.maybe_processed
    stored = await redis.hgetall(k.name)
    assert (stored[b"state"], stored[b"video_id"]) == (b"sent", vid.encode())
    # Kept for the window, not for the pending time after which it used to free itself.
    assert await redis.pttl(k.name) > PENDING_S * 1000 * 10
    if answer == "job":
        assert (await k.create()).body["id"] == vid
        await k.flight_ends()
        assert (await k.create()).body["id"] == vid
    else:
        # While the create could still be finishing, a retry waits, whatever this replica's
        # clock says (the time is Redis's)...
        clock.advance(10 * PENDING_S)
        await k.refused(409, "idempotency_key_in_use")
        # ...and after that the outcome is unknown: never sent again.
        await k.flight_ends()
        with pytest.raises(GatewayError) as lost:
            await k.create()
        assert lost.value.status == 502
        assert lost.value.headers["x-should-retry"] == "false"
    assert [r.method for r in upstream.requests].count("POST") == 1
    assert await used(k.quota, k.team, "video_seconds_per_day") == 4


async def test_a_create_refused_before_it_left_leaves_the_key_pending(
    client: UpstreamClient,
    upstream: FakeUpstream,
    redis: Redis,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis failing as the key is marked sent stops the create before it leaves: refunded,
    nothing upstream, and the key no more than pending (it frees itself)."""
    k = Keyed(client, redis, clock)
    monkeypatch.setattr(k.store, "sent", _lose)
    monkeypatch.setattr(k.store, "release", _lose)
    upstream.handler = create_then_poll(TASK)
    with pytest.raises(StoreUnavailable):
        await k.create()
    assert upstream.requests == []
    assert await used(k.quota, k.team, "video_seconds_per_day") == 0
    assert (await redis.hgetall(k.name))[b"state"] == b"pending"
    assert 0 < await redis.pttl(k.name) <= PENDING_S * 1000


@pytest.mark.parametrize("how", ["refused-upstream", "sent-reply-lost"])
async def test_a_sent_create_that_certainly_did_nothing_frees_its_key(
    client: UpstreamClient,
    upstream: FakeUpstream,
    redis: Redis,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    """A create marked sent that then certainly did nothing (the upstream refused it, or the
    mark's reply was lost and it never left), and whose release Redis lost: refunded, so once
    it can no longer be under way its key is free again, not an unknown outcome for a day."""
    k = Keyed(client, redis, clock)
    monkeypatch.setattr(k.store, "release", _lose)
    if how == "refused-upstream":
        upstream.handler = lambda req: FakeResponse(
            400, json={"error": {"message": "no", "code": "invalid_prompt"}}
        )
        await k.refused(400, "invalid_prompt")
        assert [r.method for r in upstream.requests].count("POST") == 1
    else:
        real_sent = k.store.sent

        async def reply_lost(*args: Any) -> bool:
            await real_sent(*args)
            raise StoreUnavailable()

        monkeypatch.setattr(k.store, "sent", reply_lost)
        upstream.handler = create_then_poll(TASK)
        with pytest.raises(StoreUnavailable):
            await k.create()
        assert upstream.requests == []
    assert (await redis.hgetall(k.name))[b"state"] == b"sent"
    assert await used(k.quota, k.team, "video_seconds_per_day") == 0
    monkeypatch.undo()
    upstream.handler = create_then_poll(TASK)
    await k.refused(409, "idempotency_key_in_use")  # it could still be under way
    await k.flight_ends()
    made = await k.create()
    assert made.body["id"].startswith("video_")
    assert (await k.create()).body["id"] == made.body["id"]  # the key holds the new job
    assert [r.method for r in upstream.requests].count("POST") == (
        2 if how == "refused-upstream" else 1
    )
    assert await used(k.quota, k.team, "video_seconds_per_day") == 4


async def test_only_the_request_that_claimed_a_key_moves_it_on(redis: Redis) -> None:
    """A request whose claim expired while it stalled (and another request claimed the key)
    may not mark it sent (so its create does not leave), record an end, or free it."""
    store = IdempotencyStore(redis, ttl_seconds=86_400, pending_seconds=PENDING_S)
    team, key = team_name(), "own-" + secrets.token_hex(4)
    name = TeamKeys(team).idempotency(store_hash(key))
    stalled = await store.begin(team, key, "fp")
    assert stalled.state == "new"
    await redis.delete(name)  # its claim expired
    holder = await store.begin(team, key, "fp")
    assert holder.state == "new"
    assert holder.token != stalled.token
    assert not await store.sent(team, key, stalled.token, "video_stalled")
    await store.finish(team, key, stalled.token, "done", "video_stalled")
    await store.release(team, key, stalled.token)
    assert await redis.hget(name, "state") == b"pending"  # still the holder's claim
    assert await store.sent(team, key, holder.token, "video_holder")
    await store.finish(team, key, holder.token, "done", "video_holder")
    again = await store.begin(team, key, "fp")
    assert (again.state, again.video_id, again.in_flight) == ("done", "video_holder", False)
    # A key holding something else is not freed as a refunded send.
    assert not await store.forget(team, key, "video_holder")


async def test_a_refused_create_whose_refund_redis_lost_still_answers_the_refusal(
    client: UpstreamClient,
    upstream: FakeUpstream,
    redis: Redis,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The upstream refused the create (400), then Redis failed the refund: the caller gets the
    400 it would have got (a 503 told it to retry a request that will be refused again), and
    the refund is tried again until Redis takes it (the reconciler would keep a reservation
    marked sent: nothing there tells it from a job that ran)."""
    svc, quota = service(client, redis, clock)
    team, vid = team_name(), new_video_id()
    monkeypatch.setattr("gateway.videos.service.new_video_id", lambda: vid)
    upstream.handler = lambda req: FakeResponse(
        400, json={"error": {"message": "no", "code": "invalid_prompt"}}
    )
    monkeypatch.setattr(quota, "settle", _lose)
    try:
        with pytest.raises(GatewayError) as err:
            await create(svc, team)
        assert (err.value.status, err.value.code) == (400, "invalid_prompt")
        assert [r.method for r in upstream.requests].count("POST") == 1
        res = await reservation(quota, team, vid)
        assert (res["state"], res["outcome"]) == ("reserved", "sent")
        monkeypatch.undo()  # Redis takes writes again
        await wait_for_async(
            lambda: _state(quota, team, vid), timeout=10, message="the refund to be written"
        )
        assert await used(quota, team, "video_seconds_per_day") == 0
    finally:
        await svc.aclose()


async def _state(quota: QuotaService, team: str, vid: str) -> bool:
    return (await reservation(quota, team, vid)).get("state") == "refunded"


async def test_a_create_whose_mark_redis_lost_is_refunded_once_redis_is_back(
    client: UpstreamClient,
    upstream: FakeUpstream,
    redis: Redis,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis froze after it took the mark that the create is about to leave: the reply was
    lost, so the create never left (503), and the refund fails too while Redis is away. Once it
    is back, the refund lands: the reconciler would have kept a reservation marked sent."""
    svc, quota = service(client, redis, clock)
    team, vid = team_name(), new_video_id()
    monkeypatch.setattr("gateway.videos.service.new_video_id", lambda: vid)
    upstream.handler = create_then_poll(TASK)
    real_mark = quota.mark_sent

    async def reply_lost(team: str, job_id: str) -> None:
        await real_mark(team, job_id)
        raise StoreUnavailable()

    monkeypatch.setattr(quota, "mark_sent", reply_lost)
    monkeypatch.setattr(quota, "settle", _lose)
    try:
        with pytest.raises(StoreUnavailable):
            await create(svc, team)
        assert upstream.requests == []
        assert (await reservation(quota, team, vid))["outcome"] == "sent"
        monkeypatch.undo()
        await wait_for_async(
            lambda: _state(quota, team, vid), timeout=10, message="the refund to be written"
        )
        assert await used(quota, team, "video_seconds_per_day") == 0
        assert await used(quota, team, "concurrent_jobs") == 0
    finally:
        await svc.aclose()


async def test_a_create_whose_claim_was_lost_never_leaves(
    client: UpstreamClient,
    upstream: FakeUpstream,
    redis: Redis,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The request stalled past its claim's life and another request claimed the key: its
    create is refused with the 409 (the SDK retries and finds the other's job), nothing
    reaches the upstream, its reservation is refunded, and the other's claim is untouched."""
    k = Keyed(client, redis, clock)
    upstream.handler = create_then_poll(TASK)
    real_sent = k.store.sent

    async def claimed_by_another(team: str, key: str, token: str, video_id: str) -> bool:
        await redis.delete(k.name)  # the claim expired...
        other = await k.store.begin(team, key, "another request")  # ...and was taken
        assert other.state == "new"
        return await real_sent(team, key, token, video_id)

    monkeypatch.setattr(k.store, "sent", claimed_by_another)
    await k.refused(409, "idempotency_key_in_use")
    assert upstream.requests == []
    assert await used(k.quota, k.team, "video_seconds_per_day") == 0
    stored = await redis.hgetall(k.name)
    assert (stored[b"state"], stored[b"fp"]) == (b"pending", b"another request")
