"""The video task routes, as new-api serves them for Crazyrouter, plus the result file URLs."""

from __future__ import annotations

import time

from starlette.responses import JSONResponse, RedirectResponse, Response

from gateway.sim.call import Call
from gateway.sim.download import serve_body
from gateway.sim.errors import task_error
from gateway.sim.faults import take
from gateway.sim.jobs import COMPLETED, InvalidRequest, Job, job_from_fields, new_job_id, render
from gateway.sim.state import SimState

THUMBNAIL_BYTES = 2048
_REDIRECT = frozenset({"content_redirect"})


def thumbnail_seed(job_id: str) -> str:
    return f"{job_id}#thumbnail"


def _status(state: SimState, job: Job, call: Call) -> JSONResponse:
    config = state.config
    return JSONResponse(render(job, config.shape, state.clock(), config.job_seconds, call.base_url))


def _is_completed(state: SimState, job: Job) -> bool:
    return job.phase(state.clock(), state.config.job_seconds)[0] == COMPLETED


def _create(state: SimState, call: Call, fields: dict[str, object], source: Job | None) -> Response:
    assert call.key is not None  # routing only lets valid keys through
    try:
        job = job_from_fields(
            fields,
            job_id=new_job_id(state.config.shape),
            key=call.key,
            started=state.clock(),
            created_at=int(time.time()),
        )
    except InvalidRequest as exc:
        return task_error(400, "invalid_request", str(exc))
    job.remixed_from = source.id if source else None
    state.jobs[job.id] = job
    return _status(state, job, call)


async def create_video(state: SimState, call: Call) -> Response:
    fields = call.fields()
    if fields is None:
        return task_error(400, "invalid_request", "the body must be JSON or multipart/form-data")
    return _create(state, call, fields, None)


async def get_video(state: SimState, call: Call) -> Response:
    job = state.job_for(call.params["id"], call.key)
    if job is None:
        return task_error(400, "task_not_exist")
    return _status(state, job, call)


async def remix_video(state: SimState, call: Call) -> Response:
    source = state.job_for(call.params["id"], call.key)
    if source is None:
        return task_error(400, "task_not_exist")
    if not _is_completed(state, source):
        return task_error(400, "task_not_completed", "only a completed video can be remixed")
    fields = call.fields()
    if fields is None or not fields.get("prompt"):
        return task_error(400, "invalid_request", "prompt is required")
    inherited = {"model": source.model, "size": source.size, "seconds": source.seconds}
    return _create(state, call, {**inherited, **fields}, source)


def _file(state: SimState, call: Call, job: Job, size: int) -> Response:
    return serve_body(
        call.request,
        seed=job.id,
        size=size,
        media_type="video/mp4",
        filename=f"{job.id}.mp4",
        modified=job.created_at,
        on_abort=state.note_abort,
    )


async def video_content(state: SimState, call: Call) -> Response:
    job = state.job_for(call.params["id"], call.key)
    if job is None:
        return task_error(400, "task_not_exist")
    if not _is_completed(state, job):
        return task_error(400, "task_not_completed", "the video is not ready yet")
    variant = call.request.query_params.get("variant", "video")
    if variant == "thumbnail":
        return serve_body(
            call.request,
            seed=thumbnail_seed(job.id),
            size=THUMBNAIL_BYTES,
            media_type="image/webp",
            filename=f"{job.id}.webp",
            modified=job.created_at,
        )
    if variant != "video":
        return task_error(404, "variant_not_found", f"variant {variant} is not available")
    if take(state.faults, _REDIRECT, call.path, call.key) is not None:
        return RedirectResponse(f"{call.base_url}/files/{job.id}.mp4", 302)
    return _file(state, call, job, state.config.content_bytes)


async def result_file(state: SimState, call: Call) -> Response:
    """The public result URL: no key needed, like the temporary links Crazyrouter hands out."""
    job = state.jobs.get(call.params["id"])
    if job is None or not _is_completed(state, job):
        return task_error(404, "not_found", "no such file")
    return _file(state, call, job, state.config.content_bytes)
