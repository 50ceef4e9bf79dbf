"""The official SDK's client.videos against the gateway against the simulator, in each of the
simulator's three response shapes, on real sockets with a real Redis."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import openai
import pytest
import redis as redis_sync

from gateway.sim.app import content_bytes
from gateway.sim.config import SimConfig
from gateway.videos.registry import Job, job_key
from tests.conftest import Stack, make_stack

VIDEOS = {
    "default_model": "sora-2",
    "aliases": {"sora": "sora-2"},
    "models": {
        "sora-2": {"sizes": ["1280x720", "720x1280", "1920x1080"], "seconds": [4, 8, 12]},
        "sora-2-pro": {"sizes": ["1920x1080"], "max_seconds": 20},
    },
    "poll_after_ms": 100,
    "poll_interval_seconds": 0,
    "deadline_seconds": 2,
}


@pytest.fixture(params=["page", "envelope", "openai"])
def vstack(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Stack]:
    sim = SimConfig(shape=request.param, job_seconds=0.3, content_bytes=300_000)
    with make_stack(redis_url, key_ids=("primary", "secondary"), sim=sim, videos=VIDEOS) as s:
        yield s


def client(stack: Stack, team: str = "team-a", **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=stack.v1,
        api_key=stack.token(team=team),
        _strict_response_validation=True,
        **kw,
    )


def upstream_job(stack: Stack, video_id: str) -> tuple[Any, Job]:
    """The simulator's job behind one of our ids, and our registry record of it."""
    r = redis_sync.Redis.from_url(stack.settings.redis.url)
    try:
        record = Job.from_hash(r.hgetall(job_key(video_id)))
    finally:
        r.close()
    return stack.sim_app.state.sim.jobs[record.upstream_id], record


def test_create_defaults_and_dialect(vstack: Stack) -> None:
    video = client(vstack).videos.create(prompt="a lighthouse at dusk")
    assert video.id.startswith("video_")
    assert video.status in ("queued", "in_progress")
    assert video.model == "sora-2"
    assert video.seconds == "4"
    sent = next(r for r in vstack.sim_requests("/v1/videos") if r["method"] == "POST")
    assert sent["json"] == {
        "model": "sora-2",
        "size": "1280x720",
        "duration": 4,
        "prompt": "a lighthouse at dusk",
        "private": True,
    }
    # our id, never the upstream's
    assert video.id not in vstack.sim_app.state.sim.jobs


def test_create_with_model_seconds_size_and_extras(vstack: Stack) -> None:
    # 1920x1080 is a Crazyrouter size outside the SDK's literals, so a strict client would
    # refuse the (truthful) answer; the default client accepts it.
    lenient = openai.OpenAI(base_url=vstack.v1, api_key=vstack.token())
    video = lenient.videos.create(
        prompt="p",
        model="sora-2-pro",
        seconds="12",
        size="1920x1080",  # type: ignore[arg-type]  # the SDK's Literal lacks Crazyrouter's sizes
        extra_body={"private": False},
    )
    assert (video.model, video.seconds, video.size) == ("sora-2-pro", "12", "1920x1080")
    sent = next(r for r in vstack.sim_requests("/v1/videos") if r["method"] == "POST")["json"]
    assert (sent["duration"], sent["private"]) == (12, True)


def test_create_with_file_and_storyboard(vstack: Stack) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 100
    c = client(vstack)
    c.videos.create(prompt="p", input_reference=("ref.png", png, "image/png"))
    board = [{"prompt": "a", "duration": 4}, {"prompt": "b", "duration": 4}]
    v = c.videos.create(prompt="p", extra_body={"storyboard": board})
    assert v.seconds == "8"
    posts = [r["json"] for r in vstack.sim_requests("/v1/videos") if r["method"] == "POST"]
    assert posts[0]["image_url"].startswith("data:image/png;base64,")
    assert posts[1]["storyboard"] == board


def test_create_and_poll_then_download(vstack: Stack) -> None:
    c = client(vstack)
    # no poll_interval_ms: the SDK must follow the gateway's openai-poll-after-ms (100 ms here;
    # its own default is 1 s, which would need a single poll for this 0.3 s job)
    video = c.videos.create_and_poll(prompt="waves")
    assert video.status == "completed"
    assert video.progress == 100
    sim_job, record = upstream_job(vstack, video.id)
    polls = [r for r in vstack.sim_requests(f"/v1/videos/{sim_job.id}") if r["method"] == "GET"]
    assert len(polls) >= 2
    data = c.videos.download_content(video.id).read()
    assert (
        hashlib.sha256(data).digest()
        == hashlib.sha256(content_bytes(sim_job.id, 0, 300_000)).digest()
    )
    thumb = c.videos.download_content(video.id, variant="thumbnail").read()
    assert len(thumb) == 2048
    with pytest.raises(openai.NotFoundError) as info:
        c.videos.download_content(video.id, variant="spritesheet")
    assert info.value.code == "variant_not_available"
    # polled and downloaded with the key that created it
    key = vstack.keys[record.key_id]
    assert {r["key"] for r in vstack.sim_requests(f"/v1/videos/{sim_job.id}")} == {key}


def test_failed_job_ends_the_poll_with_an_error(vstack: Stack) -> None:
    video = client(vstack).videos.create_and_poll(prompt="SIMFAIL now", poll_interval_ms=50)
    assert video.status == "failed"
    assert video.error is not None
    assert video.error.code == "generation_failed"


def test_stuck_job_fails_at_the_deadline(vstack: Stack) -> None:
    video = client(vstack).videos.create_and_poll(prompt="SIMNEVER", poll_interval_ms=50)
    assert video.status == "failed"
    assert video.error is not None
    assert video.error.code == "timeout"


def test_download_before_completion_is_400_without_retries(vstack: Stack) -> None:
    c = client(vstack, max_retries=2)
    video = c.videos.create(prompt="SIMNEVER")
    with pytest.raises(openai.BadRequestError) as info:
        c.videos.download_content(video.id)
    assert info.value.code == "video_not_ready"
    assert vstack.sim_requests(f"/v1/videos/{video.id}/content") == []
    assert not [r for r in vstack.sim_requests("/v1/videos") if r["path"].endswith("/content")]


def test_list_paginates_and_terminates(vstack: Stack) -> None:
    c = client(vstack)
    made = [c.videos.create(prompt=f"clip {i}").id for i in range(7)]
    client(vstack, team="team-b").videos.create(prompt="someone else's")
    seen = [v.id for v in c.videos.list(limit=3)]
    assert seen == list(reversed(made))
    asc = [v.id for v in c.videos.list(limit=3, order="asc")]
    assert asc == made
    page = c.videos.list(limit=3)
    assert page.has_more is True
    assert len(page.data) == 3


def test_delete_then_retrieve_is_404(vstack: Stack) -> None:
    c = client(vstack)
    video = c.videos.create(prompt="p")
    deleted = c.videos.delete(video.id)
    assert (deleted.id, deleted.deleted) == (video.id, True)
    with pytest.raises(openai.NotFoundError):
        c.videos.retrieve(video.id)
    assert video.id not in [v.id for v in c.videos.list()]


def test_remix(vstack: Stack) -> None:
    c = client(vstack)
    source = c.videos.create_and_poll(prompt="first", poll_interval_ms=50)
    remix = c.videos.remix(source.id, prompt="again, at night")
    assert remix.remixed_from_video_id == source.id
    assert remix.id != source.id
    pending = c.videos.create(prompt="SIMNEVER")
    with pytest.raises(openai.BadRequestError) as info:
        c.videos.remix(pending.id, prompt="x")
    assert info.value.code == "video_not_ready"


def test_other_team_sees_exactly_what_a_made_up_id_gets(vstack: Stack) -> None:
    a = client(vstack)
    video = a.videos.create_and_poll(prompt="secret roadmap", poll_interval_ms=50)
    b = client(vstack, team="team-b", max_retries=0)
    vstack.clear_sim()
    for vid in (video.id, "video_" + "0" * 32, "not-even-an-id"):
        calls: list[Callable[[], object]] = [
            partial(b.videos.retrieve, vid),
            partial(b.videos.delete, vid),
            partial(b.videos.download_content, vid),
            partial(b.videos.remix, vid, prompt="mine now"),
        ]
        for call in calls:
            with pytest.raises(openai.NotFoundError) as info:
                call()
            assert info.value.code == "not_found"
            assert info.value.body == {
                "message": "No video found with that id.",
                "type": "invalid_request_error",
                "param": "video_id",
                "code": "not_found",
            }
    assert video.id not in [v.id for v in b.videos.list()]
    assert vstack.sim_requests() == []
    assert a.videos.retrieve(video.id).status == "completed"


@pytest.mark.parametrize("path", ["edits", "extensions", "characters", "characters/char_1"])
def test_unsupported_endpoints_are_clean_404s(vstack: Stack, path: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(vstack).post(f"/videos/{path}", body={"prompt": "x"}, cast_to=object)
    assert info.value.code == "unsupported_endpoint"
    assert vstack.sim_requests() == []


@pytest.mark.parametrize(
    ("kwargs", "param", "code"),
    [
        ({"prompt": "p", "seconds": "5"}, "seconds", "invalid_value"),
        ({"prompt": "p", "size": "640x480"}, "size", "invalid_value"),
        ({"prompt": "p", "model": "veo-9"}, "model", "model_not_found"),
        ({"prompt": "p", "extra_body": {"colour": "red"}}, "colour", "unknown_parameter"),
        (
            {"prompt": "p", "extra_body": {"image_url": "https://127.0.0.1/x.png"}},
            "image_url",
            "invalid_url",
        ),
        (
            {"prompt": "p", "extra_body": {"image_url": "https://169.254.169.254/m"}},
            "image_url",
            "invalid_url",
        ),
        (
            {"prompt": "p", "extra_body": {"image_url": "https://10.0.0.7/x.png"}},
            "image_url",
            "invalid_url",
        ),
        (
            {"prompt": "p", "extra_body": {"image_url": "http://example.com/x.png"}},
            "image_url",
            "invalid_url",
        ),
        (
            {
                "prompt": "p",
                "extra_body": {"image_url": "data:image/png;base64," + "A" * 20_000_000},
            },
            "image_url",
            "file_too_large",
        ),
    ],
)
def test_bad_create_fields(vstack: Stack, kwargs: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client(vstack, max_retries=0).videos.create(**kwargs)
    assert (info.value.param, info.value.code) == (param, code)
    assert vstack.sim_requests() == []


def test_oversized_upload_is_rejected(vstack: Stack) -> None:
    big = b"\x89PNG" + b"0" * (30 * 1000 * 1000)
    with pytest.raises(openai.BadRequestError) as info:
        client(vstack, max_retries=0).videos.create(
            prompt="p", input_reference=("big.png", big, "image/png")
        )
    assert info.value.code == "file_too_large"
    assert vstack.sim_requests() == []


def test_polls_are_coalesced_across_callers(redis_url: str) -> None:
    sim = SimConfig(job_seconds=60, content_bytes=1000)
    videos = {**VIDEOS, "poll_interval_seconds": 30}
    with make_stack(redis_url, sim=sim, videos=videos) as s:
        c = client(s)
        video = c.videos.create(prompt="p")
        sim_job, _ = upstream_job(s, video.id)
        s.clear_sim()
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=10) as pool:
            answers = list(pool.map(lambda _: c.videos.retrieve(video.id), range(40)))
        assert {a.id for a in answers} == {video.id}
        polls = [r for r in s.sim_requests(f"/v1/videos/{sim_job.id}") if r["method"] == "GET"]
        assert len(polls) <= 1
        # a second gateway replica sharing Redis respects the same interval
        with make_stack(
            redis_url, sim_url=s.sim_url, sim_app=s.sim_app, keys=s.keys, videos=videos
        ) as b:
            # b shares Redis (the registry and the poll locks) but not the process
            assert client(b).videos.retrieve(video.id).status in ("queued", "in_progress")
        polls = [r for r in s.sim_requests(f"/v1/videos/{sim_job.id}") if r["method"] == "GET"]
        assert len(polls) <= 1


@pytest.mark.parametrize(
    "path",
    [
        "/videos/..%2F..%2Fadmin",
        "/videos/video_%2e%2e",
        "/videos/%2e%2e",
        "/videos/video_" + "0" * 31 + "%00",
        "/videos/VIDEO_" + "A" * 32,
        "/videos/video_" + "0" * 32 + "%2Fcontent",
    ],
)
def test_traversal_and_encoded_ids_are_not_found(vstack: Stack, path: str) -> None:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        vstack.v1 + path, headers={"Authorization": f"Bearer {vstack.token()}"}
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req)
    assert info.value.code in (400, 404)
    body = info.value.read()
    assert b'"code":"not_found"' in body or b'"code":"invalid_path"' in body
    assert vstack.sim_requests() == []


def test_team_may_be_allowed_public_videos(redis_url: str) -> None:
    teams = {"default": {}, "team-a": {}, "marketing": {"videos_private": False}}
    with make_stack(redis_url, videos=VIDEOS, teams=teams) as s:
        client(s, team="marketing").videos.create(
            prompt="launch teaser", extra_body={"private": False}
        )
        client(s).videos.create(prompt="internal demo", extra_body={"private": False})
        sent = [r["json"] for r in s.sim_requests("/v1/videos") if r["method"] == "POST"]
    assert [x["private"] for x in sent] == [False, True]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/videos/task_abc123/thumbnail", 404),
        ("GET", "/videos/video_" + "0" * 32 + "/content/extra", 404),
        ("POST", "/videos/task_abc123/cancel", 404),
        ("DELETE", "/videos/task_abc123/remix", 404),
    ],
)
def test_other_video_paths_never_reach_the_upstream(
    vstack: Stack, method: str, path: str, status: int
) -> None:
    """An unrouted /v1/videos path would carry an id the registry never checked."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        vstack.v1 + path,
        method=method,
        headers={"Authorization": f"Bearer {vstack.token()}"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req)
    body = json.loads(info.value.read())
    info.value.close()
    assert info.value.code == status
    if status == 404:
        assert body["error"]["code"] == "not_found"
    assert vstack.sim_requests() == []
