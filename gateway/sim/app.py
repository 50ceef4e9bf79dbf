"""A Crazyrouter simulator: what the gateway talks to in development, tests and benchmarks.

It behaves like a new-api deployment where that matters to the gateway: keys are checked, jobs
belong to the key that created it (another key gets new-api's ``task_not_exist`` as HTTP 400),
video status comes in one of three shapes, downloads honour ``Range``, and every answer carries
headers the gateway must not pass on (``Set-Cookie``, ``Server``, ``X-Powered-By``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.sim import content as content_mod
from gateway.sim.config import SimConfig
from gateway.sim.faults import Fault, take
from gateway.sim.jobs import COMPLETED, Job, behaviour_for, new_job_id, render

content_bytes = content_mod.content_bytes  # re-exported: tests compare downloads against it

_STATUS_FAULTS = frozenset({"status_401", "status_403", "status_429", "status_500", "status_503"})
_ERRORS = {
    "status_401": (401, "invalid_api_key", "Invalid token"),
    "status_403": (403, "insufficient_quota", "The account's quota is used up"),
    "status_429": (429, "rate_limit_exceeded", "rate limited"),
    "status_500": (500, "internal_error", "simulated server error"),
    "status_503": (503, "service_unavailable", "simulated outage"),
}
THUMBNAIL_BYTES = 2048
MODELS = ("sora-2", "sora-2-pro", "veo-3.1-fast", "veo-3.1-quality", "gpt-4o-mini")


class SimulatedDrop(Exception):
    """Raised after a response started: the server then cuts the connection."""


class SimState:
    def __init__(self, config: SimConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.jobs: dict[str, Job] = {}
        self.requests: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self.aborted = 0  # streams whose client went away before the end

    def add_fault(self, **doc: Any) -> Fault:
        fault = Fault.from_json(doc)
        self.faults.append(fault)
        return fault

    def requests_for(self, path_prefix: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].startswith(path_prefix)]

    def clear(self) -> None:
        self.requests.clear()
        self.faults.clear()


def _headers() -> dict[str, str]:
    return {
        "x-oneapi-request-id": time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(8),
        "server": "crazyrouter-sim",
        "set-cookie": "sim_session=abc; Path=/",
        "x-powered-by": "new-api",
    }


def _json(body: Any, status: int = 200, extra: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers={**_headers(), **(extra or {})})


def _openai_error(status: int, code: str, message: str) -> JSONResponse:
    return _json({"error": {"message": message, "type": "new_api_error", "code": code}}, status)


def _task_error(status: int, code: str, message: str | None = None) -> JSONResponse:
    return _json({"code": code, "message": message or code, "data": None}, status)


def create_sim_app(config: SimConfig, *, clock: Callable[[], float] = time.monotonic) -> Starlette:
    state = SimState(config, clock)

    async def record(request: Request, key: str | None) -> tuple[dict[str, Any] | None, Any]:
        body = await request.body()
        doc: Any = None
        form: dict[str, Any] | None = None
        ctype = request.headers.get("content-type", "")
        if "json" in ctype and body:
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
        elif "multipart/form-data" in ctype or "x-www-form-urlencoded" in ctype:
            parsed = await request.form()
            form = {}
            for k, v in parsed.multi_items():
                if isinstance(v, UploadFile):
                    form[k] = {
                        "filename": v.filename,
                        "content_type": v.content_type,
                        "size": len(await v.read()),
                    }
                else:
                    form[k] = v
        state.requests.append(
            {
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body_size": len(body),
                "json": doc,
                "form": form,
                "key": key,
            }
        )
        return form, doc

    async def v1(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        key = auth[7:] if auth.lower().startswith("bearer ") else None
        form, doc = await record(request, key)
        path = request.url.path
        slow = take(state.faults, path, key, frozenset({"slow"}))
        if slow is not None:
            await asyncio.sleep(slow.delay)
        fault = take(state.faults, path, key, _STATUS_FAULTS)
        if fault is not None:
            status, code, message = _ERRORS[fault.kind]
            resp = _openai_error(status, code, message)
            if fault.retry_after is not None:
                resp.headers["retry-after"] = str(fault.retry_after)
            return resp
        if key is None or key not in config.keys:
            return _openai_error(401, "invalid_api_key", "Invalid token")
        drop = take(state.faults, path, key, frozenset({"drop"})) is not None
        parts = path.strip("/").split("/")
        method = request.method
        if parts[:2] == ["v1", "chat"] and parts[2:] == ["completions"] and method == "POST":
            return chat(doc if isinstance(doc, dict) else {}, drop)
        if parts == ["v1", "embeddings"] and method == "POST":
            return embeddings(doc if isinstance(doc, dict) else {})
        if parts == ["v1", "models"] and method == "GET":
            return _json({"object": "list", "data": [_model(m) for m in MODELS]})
        if len(parts) == 3 and parts[:2] == ["v1", "models"] and method == "GET":
            if parts[2] in MODELS:
                return _json(_model(parts[2]))
            return _openai_error(404, "model_not_found", f"model {parts[2]} not found")
        if parts == ["v1", "videos"] and method == "POST":
            fields = form if form is not None else (doc if isinstance(doc, dict) else {})
            return create_video(fields, key, None, request)
        if len(parts) >= 3 and parts[:2] == ["v1", "videos"]:
            job = state.jobs.get(parts[2])
            if job is None or job.key != key:
                return _task_error(400, "task_not_exist")
            if len(parts) == 3 and method == "GET":
                return _json(render(job, config.shape, clock(), config.job_seconds, _base(request)))
            if parts[3:] == ["content"] and method == "GET":
                return video_content(job, request, drop)
            if parts[3:] == ["remix"] and method == "POST":
                if job.phase(clock(), config.job_seconds)[0] != COMPLETED:
                    return _task_error(400, "task_not_completed")
                fields = doc if isinstance(doc, dict) else (form or {})
                return create_video({"model": job.model, **fields}, key, job, request)
        return _openai_error(404, "not_found", f"Invalid URL ({method} {path})")

    def chat(doc: dict[str, Any], drop: bool) -> Response:
        model = str(doc.get("model", "gpt-4o-mini"))
        cid = "chatcmpl-" + secrets.token_hex(8)
        created = int(time.time())
        if not doc.get("stream"):
            return _json(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": "Hello from the simulator.",
                            },
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
                }
            )

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            chunk = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        async def events() -> AsyncIterator[bytes]:
            try:
                async for e in _events():
                    yield e
            except (asyncio.CancelledError, GeneratorExit):
                state.aborted += 1
                raise

        async def _events() -> AsyncIterator[bytes]:
            for i in range(config.stream_events):
                if drop and i == 2:
                    raise SimulatedDrop("simulated connection drop")
                delta = {"content": f"word{i} "}
                if i == 0:
                    delta["role"] = "assistant"
                yield event(delta)
                if config.stream_interval:
                    await asyncio.sleep(config.stream_interval)
            yield event({}, "stop")
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=_headers())

    def embeddings(doc: dict[str, Any]) -> Response:
        inputs = doc.get("input", "")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = []
        for i, item in enumerate(items):
            digest = hashlib.sha256(str(item).encode()).digest()
            data.append(
                {"object": "embedding", "index": i, "embedding": [b / 255 for b in digest[:8]]}
            )
        return _json(
            {
                "object": "list",
                "data": data,
                "model": doc.get("model", "text-embedding-3-small"),
                "usage": {"prompt_tokens": len(items), "total_tokens": len(items)},
            }
        )

    def create_video(
        fields: dict[str, Any], key: str, source: Job | None, request: Request
    ) -> Response:
        model = fields.get("model")
        if not model:
            return _task_error(400, "invalid_request", "model is required")
        raw_seconds = fields.get("duration", fields.get("seconds", 4))
        try:
            seconds = int(raw_seconds)
        except (TypeError, ValueError):
            return _task_error(400, "invalid_request", "duration must be an integer")
        prompt = str(fields.get("prompt", ""))
        job = Job(
            id=new_job_id(config.shape),
            key=key,
            model=str(model),
            prompt=prompt,
            size=str(fields.get("size") or "1920x1080"),
            seconds=seconds,
            started=clock(),
            created_at=int(time.time()),
            behaviour=behaviour_for(prompt),
            remixed_from=source.id if source else None,
        )
        state.jobs[job.id] = job
        return _json(render(job, config.shape, clock(), config.job_seconds, _base(request)))

    def video_content(job: Job, request: Request, drop: bool) -> Response:
        if job.phase(clock(), config.job_seconds)[0] != COMPLETED:
            return _task_error(400, "task_not_completed", "the video is not ready")
        variant = request.query_params.get("variant", "video")
        if variant not in ("video", "thumbnail"):
            return _task_error(404, "variant_not_found", f"variant {variant} is not available")
        if take(state.faults, request.url.path, job.key, frozenset({"content_redirect"})):
            return RedirectResponse(f"{_base(request)}/files/{job.id}.mp4", 302, _headers())
        if variant == "thumbnail":
            return _file(f"{job.id}:thumbnail", THUMBNAIL_BYTES, request, "image/webp", drop)
        return _file(job.id, config.content_bytes, request, "video/mp4", drop)

    async def files(request: Request) -> Response:
        name = request.path_params["name"]
        job_id = name.removesuffix(".mp4")
        if job_id not in state.jobs:
            return _task_error(404, "not_found")
        return _file(job_id, config.content_bytes, request, "video/mp4", False)

    async def faults_endpoint(request: Request) -> Response:
        if request.method == "DELETE":
            state.faults.clear()
            return JSONResponse({"ok": True})
        try:
            fault = state.add_fault(**(await request.json()))
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"ok": True, "kind": fault.kind})

    async def requests_endpoint(request: Request) -> Response:
        if request.method == "DELETE":
            state.requests.clear()
            return JSONResponse({"ok": True})
        return JSONResponse(state.requests)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    app = Starlette(
        routes=[
            Route("/_sim/health", health),
            Route("/_sim/faults", faults_endpoint, methods=["POST", "DELETE"]),
            Route("/_sim/requests", requests_endpoint, methods=["GET", "DELETE"]),
            Route("/files/{name}", files),
            Route("/v1/{rest:path}", v1, methods=methods),
        ]
    )
    app.state.sim = state
    return app


def _base(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1_700_000_000, "owned_by": "crazyrouter"}


def _file(seed: str, size: int, request: Request, ctype: str, drop: bool) -> Response:
    etag = '"' + hashlib.sha1(seed.encode()).hexdigest()[:16] + '"'  # noqa: S324 (an ETag)
    headers = {
        **_headers(),
        "etag": etag,
        "last-modified": formatdate(1_700_000_000, usegmt=True),
        "accept-ranges": "bytes",
        "content-disposition": f'attachment; filename="{seed.replace(":", "-")}.mp4"',
    }
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range != etag:
        range_header = None  # the representation changed: send it whole
    try:
        span = content_mod.parse_range(range_header, size)
    except content_mod.RangeNotSatisfiable:
        return Response(status_code=416, headers={**headers, "content-range": f"bytes */{size}"})
    status = 200
    start, end = 0, size
    if span is not None:
        start, end = span
        status = 206
        headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
    headers["content-length"] = str(end - start)

    async def body() -> AsyncIterator[bytes]:
        sent = 0
        for chunk in content_mod.iter_content(seed, start, end):
            if drop and sent >= (end - start) // 2:
                raise SimulatedDrop("simulated connection drop")
            sent += len(chunk)
            yield chunk

    return StreamingResponse(body(), status_code=status, media_type=ctype, headers=headers)
