"""HTTP routes of the video API (thin: parsing in, answers out; the service decides)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.auth.principal import Principal
from gateway.errors import InvalidRequest, NotFound
from gateway.proxy.passthrough import StreamObserver, relay
from gateway.upstream.client import UpstreamResponse
from gateway.videos import content_type
from gateway.videos.create_request import Upload
from gateway.videos.registry import Job
from gateway.videos.service import UNSUPPORTED, Answer, VideoService
from gateway.web.asgi import Receive, Scope, Send
from gateway.web.json_values import check_value_count

# Content-Type is not among them: it is rebuilt (videos/content_type.py says why).
_CONTENT_HEADERS = (
    b"content-length",
    b"content-range",
    b"accept-ranges",
    b"etag",
    b"last-modified",
)
MAX_FIELD_BYTES = 32 * 1024 * 1024
_EXTENSIONS = {
    "video/mp4": "mp4",
    "video/webm": "webm",
    "image/webp": "webp",
    "image/jpeg": "jpg",
    "image/png": "png",
}


def _who(request: Request) -> Principal:
    principal: Principal = request.scope["principal"]
    return principal


def _rid(request: Request) -> str:
    return str(request.scope.get("request_id", ""))


def _json(answer: Answer) -> Response:
    return JSONResponse(answer.body, headers=answer.headers)


async def read_fields(request: Request) -> tuple[dict[str, Any], Upload | None]:
    """A JSON object or a multipart/urlencoded form, as plain fields plus an optional file."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        body = await request.body()
        check_value_count(body)  # before parsing, as on every pass-through route
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the stack
            raise InvalidRequest("The body is not valid JSON.", code="invalid_json") from None
        if not isinstance(doc, dict):
            raise InvalidRequest("The body must be a JSON object.", code="invalid_json")
        return doc, None
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        if ctype == "multipart/form-data":
            await _refuse_truncated_multipart(request)
        # Field size is bounded by the request body limit; the create rules check each field.
        try:
            form = await request.form(max_files=2, max_fields=64, max_part_size=MAX_FIELD_BYTES)
        except MultiPartException as exc:  # outside an app (unit tests) Starlette raises it bare
            raise InvalidRequest(exc.message, code="invalid_form") from None
        except HTTPException as exc:  # what Starlette turns a MultiPartException into
            raise InvalidRequest(str(exc.detail), code="invalid_form") from None
        fields: dict[str, Any] = {}
        columns: dict[str, dict[str, list[str]]] = {}
        upload = None
        try:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if key != "input_reference" or upload is not None:
                        raise InvalidRequest(
                            "Only one file, input_reference, may be uploaded.",
                            code="invalid_value",
                            param=key,
                        )
                    upload = Upload(value.filename, value.content_type, await value.read())
                else:
                    _put(fields, columns, key, value)
        finally:
            await form.close()  # a refused form too: its files are spooled to disk
        _zip_columns(fields, columns)
        return fields, upload
    raise InvalidRequest(
        "Send the request as JSON or multipart/form-data.", code="unsupported_media_type"
    )


async def _refuse_truncated_multipart(request: Request) -> None:
    # Starlette takes a body that stops inside a part for a whole form without that part, and
    # leaves the part's spooled file open. The body is bounded by the request body limit, and
    # its one file is read into memory below anyway.
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if boundary and b"--" + boundary + b"--" not in await request.body():
        raise InvalidRequest("The multipart body is incomplete.", code="invalid_form")


def _put(
    fields: dict[str, Any], columns: dict[str, dict[str, list[str]]], key: str, value: str
) -> None:
    """Rebuild what the SDK flattened into multipart bracket keys: ``a[b]`` is a dict,
    ``a[]`` a list, ``a[][b]`` a list of dicts. The SDK groups repeated keys (all prompts, then
    all durations), so ``a[][b]`` values are collected per column and zipped afterwards."""
    name, _, rest = key.partition("[")
    if not rest:
        if name in fields:
            raise InvalidRequest(f"{key} was given twice.", code="invalid_value", param=key)
        fields[name] = value
        return
    if rest == "]":
        items = fields.setdefault(name, [])
        if not isinstance(items, list):
            raise InvalidRequest(f"{name} is malformed.", code="invalid_value", param=name)
        items.append(value)
        return
    sub = rest[2:] if rest.startswith("][") else rest
    sub = sub.removesuffix("]")
    if "[" in sub or "]" in sub or not sub:
        raise InvalidRequest(f"{key} is malformed.", code="invalid_value", param=name)
    if rest.startswith("]["):
        columns.setdefault(name, {}).setdefault(sub, []).append(value)
        return
    holder = fields.setdefault(name, {})
    if not isinstance(holder, dict) or sub in holder:
        raise InvalidRequest(f"{key} is malformed.", code="invalid_value", param=name)
    holder[sub] = value


def _zip_columns(fields: dict[str, Any], columns: dict[str, dict[str, list[str]]]) -> None:
    for name, cols in columns.items():
        lengths = {len(v) for v in cols.values()}
        if name in fields or len(lengths) != 1:
            raise InvalidRequest(f"{name} is malformed.", code="invalid_value", param=name)
        n = lengths.pop()
        fields[name] = [{sub: vals[i] for sub, vals in cols.items()} for i in range(n)]


def content_headers(
    resp: UpstreamResponse, job: Job, variant: str | None
) -> list[tuple[bytes, bytes]]:
    """A download's headers: the upstream's type when it names exactly one (an SDK saves
    what it gets), else opaque bytes; always an attachment, never sniffed."""
    out = [(k.lower(), v) for k, v in resp.raw_headers if k.lower() in _CONTENT_HEADERS]
    ctype = content_type.declared(resp.raw_headers) or content_type.OPAQUE
    name = job.id + ("" if variant in (None, "video") else f"-{variant}")
    ext = _EXTENSIONS.get(content_type.essence(ctype), "bin")
    out.append((b"content-type", ctype.encode()))
    # Our own file name: the upstream's would reveal its job id.
    out.append((b"content-disposition", f'attachment; filename="{name}.{ext}"'.encode()))
    out.append((b"cache-control", b"private, no-store"))
    out.append((b"x-content-type-options", b"nosniff"))
    return out


async def send_content(
    resp: UpstreamResponse,
    scope: Scope,
    receive: Receive,
    send: Send,
    headers: list[tuple[bytes, bytes]],
    observer: StreamObserver | None = None,
) -> None:
    """A job's content to the caller, streamed, and the upstream response closed; to a HEAD
    request (which Starlette routes with GET) the headers only: relaying the body for the
    server to discard would pull the whole video from the upstream for an empty answer, as
    fast as the network allows."""
    try:
        if scope["method"] == "HEAD":
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await relay(resp, receive, send, headers=headers, observer=observer)
    finally:
        resp.close()


def video_routes(
    service: VideoService,
    *,
    public_base_url: str,
    observer: Callable[[Scope], StreamObserver | None] = lambda scope: None,
) -> list[BaseRoute]:
    # URLs in answers start with the configured base, never with the caller's Host: a forged
    # Host would otherwise point a cached or shared answer somewhere else.
    base = public_base_url.rstrip("/")

    async def create(request: Request) -> Response:
        fields, upload = await read_fields(request)
        return _json(
            await service.create(
                _who(request),
                fields,
                upload=upload,
                request_id=_rid(request),
                base_url=base,
                idempotency_key=request.headers.get("idempotency-key"),
            )
        )

    async def listing(request: Request) -> Response:
        q = request.query_params
        return _json(
            await service.list(
                _who(request),
                after=q.get("after"),
                limit=q.get("limit"),
                order=q.get("order"),
                base_url=base,
            )
        )

    async def one(request: Request) -> Response:
        video_id = request.path_params["video_id"]
        if request.method == "DELETE":
            return _json(await service.delete(_who(request), video_id))
        return _json(
            await service.retrieve(_who(request), video_id, request_id=_rid(request), base_url=base)
        )

    async def remix(request: Request) -> Response:
        fields, upload = await read_fields(request)
        if upload is not None:
            raise InvalidRequest(
                "remix takes no file.", code="invalid_value", param="input_reference"
            )
        return _json(
            await service.remix(
                _who(request),
                request.path_params["video_id"],
                fields,
                request_id=_rid(request),
                base_url=base,
                idempotency_key=request.headers.get("idempotency-key"),
            )
        )

    async def unknown_path(request: Request) -> Response:
        raise NotFound("No such video endpoint.", code="not_found")

    async def unsupported(request: Request) -> Response:
        raise NotFound(
            "This video endpoint is not supported by the gateway's upstream.",
            code="unsupported_endpoint",
        )

    async def content(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        variant = request.query_params.get("variant")
        job, resp = await service.open_content(
            _who(request),
            request.path_params["video_id"],
            variant=variant,
            headers=tuple(scope["headers"]),
            request_id=_rid(request),
        )
        await send_content(
            resp, scope, receive, send, content_headers(resp, job, variant), observer(scope)
        )

    unsupported_paths = [f"/v1/videos/{name}" for name in UNSUPPORTED]
    return [
        *(Route(p, unsupported, methods=["GET", "POST"]) for p in unsupported_paths),
        Route("/v1/videos/characters/{rest:path}", unsupported, methods=["GET", "POST"]),
        Route("/v1/videos", create, methods=["POST"]),
        Route("/v1/videos", listing, methods=["GET"]),
        Route("/v1/videos/{video_id}", one, methods=["GET", "DELETE"]),
        Route("/v1/videos/{video_id}/remix", remix, methods=["POST"]),
        Route("/v1/videos/{video_id}/content", _AsgiEndpoint(content), methods=["GET"]),
        # Anything else under /v1/videos would go to the generic pass-through, carrying an id
        # the registry never checked: refuse it here.
        Route("/v1/videos/{rest:path}", unknown_path, methods=_ALL_METHODS),
    ]


_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class _AsgiEndpoint:
    """Starlette treats a non-function endpoint as a raw ASGI app: downloads need ``receive``
    to notice a caller who hangs up."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
