"""Simulated jobs: create bodies, progress over time, the three status shapes, and faults."""

import json
from typing import Any

import pytest

from gateway.sim.config import SimConfig
from gateway.sim.faults import Fault, take
from gateway.sim.jobs import InvalidRequest, Job, job_from_fields, new_job_id, render


def make(fields: dict[str, Any]) -> Job:
    return job_from_fields(fields, job_id="video_1", key="k", started=0.0, created_at=1_700_000_000)


def test_json_and_multipart_bodies_give_the_same_job() -> None:
    board = [{"prompt": "forest", "duration": 3}, {"prompt": "deer", "duration": 4}]
    from_json = make({"model": "sora-2", "storyboard": board, "private": True, "size": "1080x1920"})
    from_form = make(
        {
            "model": "sora-2",
            "storyboard": json.dumps(board),
            "private": "true",
            "size": "1080x1920",
        }
    )
    assert from_json == from_form
    assert (from_json.seconds, from_json.private, from_json.prompt) == (7, True, "forest / deer")
    assert from_json.dimensions == (1080, 1920)


@pytest.mark.parametrize(
    ("fields", "seconds"),
    [
        ({"duration": 10}, 10),
        ({"duration": "10"}, 10),
        ({"seconds": "8"}, 8),
        ({"seconds": 12}, 12),
        ({}, 4),
    ],
)
def test_duration_or_seconds(fields: dict[str, Any], seconds: int) -> None:
    assert make({"model": "m", "prompt": "p", **fields}).seconds == seconds


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt": "p"}, "model is required"),
        ({"model": "", "prompt": "p"}, "model is required"),
        ({"model": "m", "duration": "ten"}, "duration must be an integer"),
        ({"model": "m", "duration": True}, "duration must be an integer"),
        ({"model": "m", "storyboard": "{not json"}, "storyboard must be a JSON array"),
        ({"model": "m", "storyboard": [1, 2]}, "storyboard must be an array of {prompt, duration}"),
    ],
)
def test_invalid_create_bodies(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        make(fields)
    assert str(info.value) == message


def test_ids_follow_the_shape() -> None:
    assert new_job_id("page").startswith("video_")
    assert new_job_id("openai").startswith("task_")
    assert new_job_id("envelope").startswith("task_")
    assert new_job_id("page") != new_job_id("page")


def test_prompt_markers_pick_the_behaviour() -> None:
    assert make({"model": "m", "prompt": "a SIMFAIL b"}).behaviour == "fail"
    assert make({"model": "m", "prompt": "SIMNEVER"}).behaviour == "never"
    assert make({"model": "m", "prompt": "simfail"}).behaviour == "normal"


JOB = make({"model": "sora-2", "prompt": "p", "size": "1280x720", "duration": 8})


@pytest.mark.parametrize(
    ("now", "page", "envelope", "openai", "progress"),
    [
        (0.0, "queued", "SUBMITTED", "queued", 0),
        (0.5, "queued", "SUBMITTED", "queued", 0),
        (4.5, "processing", "IN_PROGRESS", "in_progress", 45),
        (9.99, "processing", "IN_PROGRESS", "in_progress", 99),
        (10.0, "completed", "SUCCESS", "completed", 100),
    ],
)
def test_progress_over_time_in_three_shapes(
    now: float, page: str, envelope: str, openai: str, progress: int
) -> None:
    assert render(JOB, "page", now, 10, "http://s")["status"] == page
    env = render(JOB, "envelope", now, 10, "http://s")
    assert (env["code"], env["message"]) == ("success", "")
    assert (env["data"]["status"], env["data"]["progress"]) == (envelope, f"{progress}%")
    oai = render(JOB, "openai", now, 10, "http://s")
    assert (oai["status"], oai["progress"]) == (openai, progress)


def test_completed_documents_carry_the_result_url() -> None:
    url = "http://s/files/video_1.mp4"
    page = render(JOB, "page", 11.0, 10, "http://s")
    assert page == {
        "id": "video_1",
        "object": "video",
        "status": "completed",
        "created_at": 1_700_000_000,
        "video": {"url": url, "duration": 8, "width": 1280, "height": 720},
    }
    env = render(JOB, "envelope", 11.0, 10, "http://s")["data"]
    assert (env["id"], env["task_id"], env["artifact_url"], env["result_url"]) == (
        "video_1",
        "video_1",
        url,
        url,
    )
    assert env["fail_reason"] is None
    oai = render(JOB, "openai", 11.0, 10, "http://s")
    assert oai["metadata"] == {"url": url}
    assert (oai["seconds"], oai["size"], oai["model"]) == ("8", "1280x720", "sora-2")
    assert oai["completed_at"] == 1_700_000_010


def test_unfinished_documents_have_no_url() -> None:
    assert "video" not in render(JOB, "page", 5.0, 10, "http://s")
    assert render(JOB, "envelope", 5.0, 10, "http://s")["data"]["result_url"] is None
    oai = render(JOB, "openai", 5.0, 10, "http://s")
    assert (oai["metadata"], oai["completed_at"], oai["error"]) == ({}, None, None)


def test_failed_and_never_ending_jobs() -> None:
    failing = make({"model": "m", "prompt": "SIMFAIL"})
    assert render(failing, "page", 11.0, 10, "x")["error"]["code"] == "generation_failed"
    env = render(failing, "envelope", 11.0, 10, "x")["data"]
    assert (env["status"], env["fail_reason"] is not None) == ("FAILURE", True)
    assert render(failing, "openai", 11.0, 10, "x")["status"] == "failed"
    never = render(make({"model": "m", "prompt": "SIMNEVER"}), "openai", 1e9, 10, "x")
    assert (never["status"], never["progress"]) == ("in_progress", 99)


def test_faults_fire_count_times_and_match_path_and_key() -> None:
    kinds = frozenset({"status_500"})
    once = Fault.from_json({"kind": "status_500", "path_prefix": "/v1/videos", "key": "a"})
    faults = [once]
    assert take(faults, kinds, "/v1/chat/completions", "a") is None
    assert take(faults, kinds, "/v1/videos/x", "b") is None
    assert take(faults, frozenset({"slow"}), "/v1/videos/x", "a") is None
    assert take(faults, kinds, "/v1/videos/x", "a") is once
    assert take(faults, kinds, "/v1/videos/x", "a") is None
    forever = Fault.from_json({"kind": "status_500", "count": -1})
    assert all(take([forever], kinds, "/any", None) is forever for _ in range(5))
    assert forever.count == -1


@pytest.mark.parametrize("doc", [{"kind": "nope"}, {}, {"kind": "slow", "dealy": 1}])
def test_bad_faults_are_refused(doc: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"^(kind|unknown)"):
        Fault.from_json(doc)


def test_retry_after_is_kept_as_given() -> None:
    assert Fault.from_json({"kind": "status_429", "retry_after": 7}).retry_after == "7"
    assert Fault.from_json({"kind": "status_429"}).retry_after is None


def test_config_refuses_unknown_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        SimConfig(shape="xml")
