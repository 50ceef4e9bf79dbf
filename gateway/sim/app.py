"""A Crazyrouter simulator: what the gateway talks to in development, tests and benchmarks.

It answers every route the gateway forwards (chat, completions, responses, embeddings,
moderations, images, audio, models) the way OpenAI does, with ``usage`` the tests can predict
(see ``tokens.py``), the video task routes the way new-api does, and new-api's public price
list (``GET /api/pricing``, see ``pricing.py``).

It behaves like a new-api deployment where that matters to the gateway: keys are checked, jobs
belong to the key that created them (another key gets new-api's ``task_not_exist`` as HTTP 400),
video status comes in one of three shapes, downloads honour ``Range``, and every answer carries
headers the gateway must not pass on (``Set-Cookie``, ``Server``, ``X-Powered-By``). Faults are
injected through ``/_sim/faults`` (see ``faults.py``), and every upstream request is recorded.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.sim import (
    audio,
    catalog,
    chat,
    completions,
    images,
    moderations,
    pricing,
    responses,
    videos,
)
from gateway.sim.call import Call, read_call
from gateway.sim.config import SimConfig
from gateway.sim.content import content_bytes
from gateway.sim.control import control_routes
from gateway.sim.drop import truncate
from gateway.sim.errors import (
    fault_error,
    invalid_key,
    model_not_allowed,
    openai_error,
    refused_key,
)
from gateway.sim.faults import STATUS_KINDS, take
from gateway.sim.headers import UpstreamHeaders
from gateway.sim.state import SimState

__all__ = ["SimState", "content_bytes", "create_sim_app"]

Handler = Callable[[SimState, Call], Awaitable[Response]]

_SEGMENT = "[^/]+"
# (method, path pattern, handler, needs a key)
_ROUTES: list[tuple[str, re.Pattern[str], Handler, bool]] = [
    ("POST", re.compile("/v1/chat/completions"), chat.chat_completions, True),
    ("POST", re.compile("/v1/completions"), completions.completions, True),
    ("POST", re.compile("/v1/responses"), responses.create_response, True),
    ("POST", re.compile("/v1/embeddings"), catalog.embeddings, True),
    ("POST", re.compile("/v1/moderations"), moderations.moderations, True),
    ("POST", re.compile("/v1/images/generations"), images.generations, True),
    ("POST", re.compile("/v1/images/edits"), images.edits, True),
    ("POST", re.compile("/v1/images/variations"), images.variations, True),
    ("POST", re.compile("/v1/audio/speech"), audio.speech, True),
    ("POST", re.compile("/v1/audio/transcriptions"), audio.transcriptions, True),
    ("POST", re.compile("/v1/audio/translations"), audio.translations, True),
    ("GET", re.compile("/v1/models"), catalog.list_models, True),
    ("GET", re.compile(f"/v1/models/(?P<model>{_SEGMENT})"), catalog.get_model, True),
    ("POST", re.compile("/v1/videos"), videos.create_video, True),
    ("GET", re.compile(f"/v1/videos/(?P<id>{_SEGMENT})"), videos.get_video, True),
    ("GET", re.compile(f"/v1/videos/(?P<id>{_SEGMENT})/content"), videos.video_content, True),
    ("POST", re.compile(f"/v1/videos/(?P<id>{_SEGMENT})/remix"), videos.remix_video, True),
    # Public in new-api: anyone may read the price list.
    ("GET", re.compile("/api/pricing"), pricing.pricing, False),
    ("GET", re.compile("/api/usage/token"), pricing.usage_token, True),
    ("GET", re.compile(r"/files/(?P<id>[^/]+)\.mp4"), videos.result_file, False),
    ("GET", re.compile(r"/files/images/(?P<seed>[0-9a-f]{24})\.png"), images.image_file, False),
]
_SLOW = frozenset({"slow"})
_DROP = frozenset({"drop"})


def _route(method: str, path: str) -> tuple[Handler | None, dict[str, str], bool]:
    for route_method, pattern, handler, needs_key in _ROUTES:
        match = pattern.fullmatch(path)
        if match and route_method == method:
            return handler, match.groupdict(), needs_key
    return None, {}, not path.startswith("/files/")


def create_sim_app(config: SimConfig, *, clock: Callable[[], float] = time.monotonic) -> Starlette:
    state = SimState(config, clock)
    state.prices = pricing.default_prices()
    state.group_ratio = dict(pricing.GROUP_RATIO)

    async def upstream(request: Request) -> Response:
        call = await read_call(request)
        state.requests.append(call.record())
        path = call.path
        slow = take(state.faults, _SLOW, path, call.key)
        if slow is not None:
            await asyncio.sleep(slow.delay)
        fault = take(state.faults, STATUS_KINDS, path, call.key)
        if fault is not None:
            return fault_error(fault)
        handler, call.params, needs_key = _route(request.method, path)
        if needs_key and call.key not in config.keys:
            return invalid_key()
        if needs_key and call.key in state.key_states:
            return refused_key(state.key_states[call.key])
        allowed = state.key_models.get(call.key or "")
        model = (call.fields() or {}).get("model")
        if allowed is not None and isinstance(model, str) and model not in allowed:
            return model_not_allowed(model)
        if handler is None:
            return openai_error(404, "not_found", f"Invalid URL ({request.method} {path})")
        response = await handler(state, call)
        # Only a successful answer is dropped: a drop meant for a download must survive the
        # redirect or the 400 "not ready yet" polls that come before it.
        if 200 <= response.status_code < 300 and take(state.faults, _DROP, path, call.key):
            response = truncate(response)
        return response

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    app = Starlette(
        routes=[*control_routes(state), Route("/{path:path}", upstream, methods=methods)],
        middleware=[Middleware(UpstreamHeaders)],
    )
    app.state.sim = state
    return app
