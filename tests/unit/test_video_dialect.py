import pytest

from gateway.videos.dialect import normalise_status, parse_upstream, video_object

UPSTREAM_STATUSES = {
    "queued": [
        *("queued", "pending", "submitted", "not_start", "preparing", "unknown", "QUEUED"),
        *("queueing", "created", "waiting", "in_queue", "In Queue", "NOT_START"),
    ],
    "in_progress": ["processing", "in_progress", "running", "generating", "IN_PROGRESS"],
    "completed": [
        *("completed", "complete", "success", "succeeded", "finished", "SUCCESS"),
        *("succeed", "done", "Succeeded"),
    ],
    "failed": ["failed", "failure", "fail", "error", "cancelled", "canceled", "FAILURE"],
}

# Each terminal spelling and the error.code a failed Video carries for it.
FAILURE_CODES = {
    "expired": ["expired", "EXPIRED"],
    "cancelled": ["cancelled", "canceled", "cancel", "CANCELLED"],
    "content_policy_violation": [
        *("rejected", "reject", "blocked", "moderation", "content_filter"),
        *("content_policy_violation", "sensitive", "REJECTED", "content-filter"),
    ],
    "timeout": ["timeout", "timed_out", "TIMEOUT", "timed out"],
    "generation_failed": ["failure", "failed", "fail", "error", "FAILURE"],
}


@pytest.mark.parametrize(
    ("raw", "expected"), [(r, s) for s, raws in UPSTREAM_STATUSES.items() for r in raws]
)
def test_every_upstream_status_maps_to_one_of_four(raw: str, expected: str) -> None:
    assert normalise_status(raw) == expected


@pytest.mark.parametrize(
    ("raw", "code"), [(r, c) for c, raws in FAILURE_CODES.items() for r in raws]
)
@pytest.mark.parametrize("shape", ["page", "envelope", "openai"])
def test_every_terminal_spelling_fails_with_its_own_code(raw: str, code: str, shape: str) -> None:
    body = {"id": "task_1", "status": raw, "progress": "30%"}
    doc = {"code": "success", "message": "", "data": body} if shape == "envelope" else body
    v = parse_upstream(doc)
    assert (v.status, v.error_code, v.progress) == ("failed", code, 30)


@pytest.mark.parametrize("raw", ["expired", "cancelled", "rejected", "timeout", "failure"])
def test_the_upstreams_own_error_code_wins_over_the_status_default(raw: str) -> None:
    v = parse_upstream(
        {
            "code": "success",
            "data": {"id": "t", "status": raw, "error": {"code": "task_failed", "message": "m"}},
        }
    )
    assert (v.status, v.error_code, v.error_message) == ("failed", "task_failed", "m")


def test_a_non_failure_status_carries_no_code() -> None:
    for raw in ("queued", "running", "succeed", "done"):
        assert parse_upstream({"id": "t", "status": raw}).error_code is None


def test_unknown_or_missing_status_is_queued() -> None:
    assert normalise_status("weird") == "queued"
    assert normalise_status(None) == "queued"


def test_page_shape() -> None:
    v = parse_upstream(
        {
            "id": "video_abc",
            "object": "video",
            "status": "completed",
            "created_at": 1,
            "video": {
                "url": "https://cr/files/a.mp4",
                "duration": 10,
                "width": 1920,
                "height": 1080,
            },
        }
    )
    assert (v.id, v.status, v.progress, v.url, v.width, v.duration) == (
        "video_abc",
        "completed",
        100,
        "https://cr/files/a.mp4",
        1920,
        10,
    )


def test_envelope_shape() -> None:
    v = parse_upstream(
        {
            "code": "success",
            "message": "",
            "data": {"task_id": "task_1", "status": "IN_PROGRESS", "progress": "45%"},
        }
    )
    assert (v.id, v.status, v.progress, v.url) == ("task_1", "in_progress", 45, None)
    failed = parse_upstream(
        {"code": "success", "data": {"id": "t", "status": "FAILURE", "fail_reason": "nsfw"}}
    )
    assert (failed.status, failed.error_code, failed.error_message) == (
        "failed",
        "generation_failed",
        "nsfw",
    )
    done = parse_upstream(
        {"code": "success", "data": {"id": "t", "status": "SUCCESS", "result_url": "https://x/y"}}
    )
    assert (done.status, done.url) == ("completed", "https://x/y")


def test_openai_like_shape() -> None:
    v = parse_upstream(
        {
            "id": "task_9",
            "object": "video",
            "status": "in_progress",
            "progress": 45.7,
            "metadata": {"url": None},
        }
    )
    assert (v.id, v.status, v.progress, v.url) == ("task_9", "in_progress", 45, None)
    failed = parse_upstream(
        {"id": "t", "status": "failed", "error": {"code": "moderation", "message": "no"}}
    )
    assert (failed.error_code, failed.error_message) == ("moderation", "no")


@pytest.mark.parametrize("doc", [None, [], "x", {"code": "success", "data": None}])
def test_garbage_is_rejected(doc: object) -> None:
    with pytest.raises(ValueError, match="upstream"):
        parse_upstream(doc)


def test_progress_is_clamped_below_100_until_done() -> None:
    assert parse_upstream({"id": "t", "status": "running", "progress": 100}).progress == 99
    assert parse_upstream({"id": "t", "status": "running", "progress": -3}).progress == 0
    assert parse_upstream({"id": "t", "status": "running", "progress": "n/a"}).progress == 0


@pytest.mark.parametrize("raw", ["inf%", "Infinity", "-inf", float("inf"), 1e400, "nan", "1e999"])
def test_an_infinite_or_undefined_progress_reads_as_0(raw: object) -> None:
    """float() takes them; int() of an infinity raises OverflowError, which nothing caught:
    a poll answered 500 and the reconciler's pass stopped at that job."""
    doc = {"id": "t", "status": "running", "progress": raw, "seconds": raw, "width": raw}
    v = parse_upstream(doc)
    assert (v.progress, v.width) == (0, None)


def test_video_object_has_every_key_and_string_seconds() -> None:
    obj = video_object(
        video_id="video_gw1",
        model="sora-2",
        status="completed",
        progress=100,
        created_at=10,
        completed_at=20,
        expires_at=None,
        prompt="p",
        size="1280x720",
        seconds=8,
        remixed_from=None,
        error=None,
        content_url="http://gw/v1/videos/video_gw1/content",
    )
    assert set(obj) >= {
        "id",
        "object",
        "model",
        "status",
        "progress",
        "created_at",
        "completed_at",
        "expires_at",
        "prompt",
        "size",
        "seconds",
        "remixed_from_video_id",
        "error",
    }
    assert obj["seconds"] == "8"
    assert obj["video"] == {
        "url": "http://gw/v1/videos/video_gw1/content",
        "duration": 8,
        "width": 1280,
        "height": 720,
    }
    queued = video_object(
        video_id="v",
        model="m",
        status="queued",
        progress=0,
        created_at=1,
        completed_at=None,
        expires_at=None,
        prompt=None,
        size="720x1280",
        seconds=4,
        remixed_from="v0",
        error={"code": "x", "message": "y"},
        content_url="u",
    )
    assert "video" not in queued
    assert queued["error"] is None
