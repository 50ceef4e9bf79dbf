"""Only routes the gateway understands are forwarded (hardening, items 2 and 3).

Everything outside the route table is ``404 unsupported_endpoint`` with nothing sent upstream;
bodies that name objects stored on the shared upstream account are refused; nothing is stored
upstream; and every string of an upstream error is redacted, in every shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.conftest import Stack, make_stack
from tests.servers import run_server

REFUSED = [
    ("POST", "/v1/video/generations"),
    ("GET", "/v1/video/generations/task_123"),
    ("POST", "/mj/submit/imagine"),
    ("GET", "/mj/task/123/fetch"),
    ("POST", "/suno/submit/music"),
    ("POST", "/kling/v1/videos/text2video"),
    ("GET", "/v1/files"),
    ("POST", "/v1/files"),
    ("GET", "/v1/files/file-abc"),
    ("GET", "/v1/files/file-abc/content"),
    ("DELETE", "/v1/files/file-abc"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches/batch_1"),
    ("GET", "/v1/responses/resp_1"),
    ("DELETE", "/v1/responses/resp_1"),
    ("GET", "/v1/responses/resp_1/input_items"),
    ("GET", "/v1/chat/completions"),
    ("GET", "/v1/chat/completions/chatcmpl-1"),
    ("POST", "/v1/fine_tuning/jobs"),
    ("POST", "/v1/assistants"),
    ("POST", "/v1/threads/thread_1/runs"),
    ("POST", "/v1/vector_stores"),
    ("GET", "/v1/dashboard/billing/usage"),
    ("POST", "/v1/realtime/sessions"),
    ("PUT", "/v1/chat/completions"),
    ("GET", "/v1"),
    ("GET", "/"),
]


def call(
    stack: Stack, method: str, path: str, body: Any = None, token: str | None = None
) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {token or stack.token()}"}
    content = None
    if body is not None:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    return httpx2.request(method, stack.url + path, headers=headers, content=content)


def everything_upstream(stack: Stack) -> list[dict[str, Any]]:
    return list(stack.sim_app.state.sim.requests)


@pytest.mark.parametrize(("method", "path"), REFUSED)
def test_unknown_routes_are_refused_before_the_upstream(
    stack: Stack, method: str, path: str
) -> None:
    r = call(stack, method, path, body={"model": "m"} if method in ("POST", "PUT") else None)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "unsupported_endpoint"
    assert everything_upstream(stack) == []


def test_known_routes_are_forwarded(stack: Stack) -> None:
    with openai.OpenAI(base_url=stack.v1, api_key=stack.token(), max_retries=0) as client:
        assert client.models.list().data
        assert client.models.retrieve("gpt-4o-mini").id
        assert client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
    assert [r["path"] for r in everything_upstream(stack)] == [
        "/v1/models",
        "/v1/models/gpt-4o-mini",
        "/v1/chat/completions",
    ]


def test_extra_routes_from_config_are_forwarded(redis_url: str) -> None:
    with make_stack(redis_url, server={"extra_routes": ["POST /v1/rerank"]}) as s:
        r = call(s, "POST", "/v1/rerank", {"model": "m", "query": "q", "documents": ["a"]})
        assert r.json()["error"]["code"] != "unsupported_endpoint"  # the simulator's own 404
        assert [q["path"] for q in everything_upstream(s)] == ["/v1/rerank"]
        assert call(s, "GET", "/v1/rerank").json()["error"]["code"] == "unsupported_endpoint"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"model": "m", "input": "hi", "previous_response_id": "resp_other_team"},
            "previous_response_id",
        ),
        ({"model": "m", "input": "hi", "conversation": "conv_1"}, "conversation"),
        ({"model": "m", "input": "hi", "background": True}, "background"),
        (
            {
                "model": "m",
                "input": [
                    {
                        "role": "user",
                        "content": [{"type": "input_file", "file_id": "file-other-team"}],
                    }
                ],
            },
            "file_id",
        ),
        (
            {
                "model": "m",
                "input": "hi",
                "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}],
            },
            "vector_store_ids",
        ),
        (
            {
                "model": "m",
                "input": "hi",
                "tools": [{"type": "code_interpreter", "container": "cntr_1"}],
            },
            "container",
        ),
    ],
)
def test_responses_naming_stored_objects_are_refused(
    stack: Stack, body: dict[str, Any], param: str
) -> None:
    r = call(stack, "POST", "/v1/responses", body)
    assert r.status_code == 400
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == (
        "unsupported_parameter",
        param,
    )
    assert everything_upstream(stack) == []


@pytest.fixture(params=["metered", "unmetered"])
def either_stack(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Stack]:
    """The gateway with metering on (bodies read for their estimate) and off."""
    pricing = {"unpriced": "allow"} if request.param == "metered" else {"enabled": False}
    with make_stack(redis_url, pricing=pricing) as s:
        yield s


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        # The Responses API makes an item reference's "type" optional: an id alone is one.
        ("/v1/responses", {"model": "m", "input": [{"id": "msg_other_team"}]}, "input.id"),
        ("/v1/responses", {"model": "m", "input": [{"id": "rs_1", "type": None}]}, "input.id"),
        ("/v1/responses", {"model": "m", "input": [{"ID": "rs_1", "Type": ""}]}, "input.id"),
        (
            "/v1/images/generations",
            {"model": "gpt-image-1", "prompt": "x", "image": {"file_id": "file-other-team"}},
            "file_id",
        ),
        (
            "/v1/images/edits",
            {"model": "gpt-image-1", "prompt": "x", "images": [{"File_Id": "file-other-team"}]},
            "File_Id",
        ),
        ("/v1/embeddings", {"model": "m", "input": "x", "file_ids": ["file-1"]}, "file_ids"),
    ],
)
def test_stored_objects_named_on_any_route_are_refused(
    either_stack: Stack, path: str, body: dict[str, Any], param: str
) -> None:
    r = call(either_stack, "POST", path, body)
    assert (r.status_code, r.json()["error"]["code"], r.json()["error"]["param"]) == (
        400,
        "unsupported_parameter",
        param,
    ), r.text
    assert everything_upstream(either_stack) == []


def test_an_input_item_with_a_type_of_its_own_is_forwarded(either_stack: Stack) -> None:
    said = {"type": "message", "id": "msg_1", "role": "assistant", "content": "earlier answer"}
    r = call(either_stack, "POST", "/v1/responses", {"model": "m", "input": [said]})
    assert r.status_code == 200, r.text
    (sent,) = everything_upstream(either_stack)
    assert sent["json"]["input"] == [said]


def test_responses_are_never_stored_upstream(stack: Stack) -> None:
    call(stack, "POST", "/v1/responses", {"model": "m", "input": "hi", "store": True})
    call(stack, "POST", "/v1/responses", {"model": "m", "input": "hi"})
    sent = [r["json"] for r in everything_upstream(stack)]
    assert [doc["store"] for doc in sent] == [False, False]
    assert [doc["input"] for doc in sent] == ["hi", "hi"]


def test_chat_is_never_stored_and_file_ids_are_refused(stack: Stack) -> None:
    msg = [{"role": "user", "content": "x"}]
    assert (
        call(
            stack, "POST", "/v1/chat/completions", {"model": "m", "messages": msg, "store": True}
        ).status_code
        == 200
    )
    assert everything_upstream(stack)[0]["json"]["store"] is False
    stack.clear_sim()
    parts = [{"type": "file", "file": {"file_id": "file-other-team"}}]
    r = call(
        stack,
        "POST",
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": parts}]},
    )
    assert (r.status_code, r.json()["error"]["code"]) == (400, "unsupported_parameter")
    assert everything_upstream(stack) == []


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        # Go matches JSON keys by Unicode folding: a long s is an s, a Kelvin sign a k.
        (
            b'{"model":"m","input":"hi","previou\\u017f_response_id":"resp_other"}',
            "unsupported_parameter",
            "previou\u017f_response_id",
        ),
        (
            b'{"model":"m","input":[{"type":"item_reference","id":"msg_1"}]}',
            "unsupported_parameter",
            "item_reference",
        ),
        # A dotted capital I is an i to Go (its simple lower-case mapping), nested or not.
        (
            b'{"model":"m","input":[{"role":"user","content":[{"type":"input_file",'
            b'"f\\u0130le_id":"file-other"}]}]}',
            "unsupported_parameter",
            "f\u0130le_id",
        ),
        (
            b'{"model":"m","input":[{"TYP\\u0045":"item_reference","id":"i"}]}',
            "unsupported_parameter",
            "item_reference",
        ),
        (b'{"model":"m","input":"hi","\\u017ftore":true,"store":false}', "invalid_json", "store"),
        (b'{"model":"m","input":"\\ud800"}', "invalid_json", None),
    ],
)
def test_spellings_the_upstream_folds_or_cannot_read_are_refused(
    stack: Stack, body: bytes, code: str, param: str | None
) -> None:
    r = call(stack, "POST", "/v1/responses", body)
    assert r.status_code == 400, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == (code, param)
    assert everything_upstream(stack) == []


def test_a_folded_store_key_is_forced_off(stack: Stack) -> None:
    r = call(
        stack, "POST", "/v1/chat/completions", b'{"model":"m","messages":[],"\\u017ftore":true}'
    )
    assert r.status_code == 200, r.text
    (sent,) = everything_upstream(stack)
    assert sent["json"]["store"] is False
    assert "\u017ftore" not in sent["json"]


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/chat/completions"])
def test_deeply_nested_json_is_400_not_500(stack: Stack, path: str) -> None:
    deep = b'{"model":"m","store":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = call(stack, "POST", path, deep)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_json")
    assert everything_upstream(stack) == []


# -- item 3: every string of an upstream error is redacted, in every shape ------------------


@pytest.fixture
def echoing_upstream() -> Iterator[tuple[str, dict[str, str]]]:
    """An upstream that puts the key it was sent into every field of its error, in the shape
    the path asks for."""

    async def handler(request: Request) -> Response:
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        shape = request.url.path.rsplit("/", 1)[-1]
        if shape == "models":  # the probe and other GETs: the key is fine
            return JSONResponse({"object": "list", "data": []})
        body: Any = {
            "error": {"message": f"bad {key}", "type": f"t {key}", "param": f"p {key}", "code": key}
        }
        if request.url.path == "/v1/embeddings":
            body = {"code": f"c-{key}", "message": f"m {key}", "data": None}
        elif request.url.path == "/v1/moderations":
            body = {"error": f"plain {key}"}
        return JSONResponse(body, status_code=400)

    app = Starlette(routes=[Route("/{p:path}", handler, methods=["GET", "POST"])])
    with run_server(app) as url:
        yield url, {"only": "sk-echo-" + "Z9" * 20}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/v1/moderations"])
def test_upstream_errors_are_redacted_in_every_field(
    redis_url: str, echoing_upstream: tuple[str, dict[str, str]], path: str
) -> None:
    url, keys = echoing_upstream
    secret = keys["only"]
    with make_stack(redis_url, sim_url=url, keys=keys) as s:
        r = call(s, "POST", path, {"model": "m", "input": "x"})
        assert r.status_code == 400
        assert secret not in r.text
        assert secret[3:20] not in r.text
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert "***" in error["message"]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        # a JSON escape hides the key from a byte search, not from the upstream's parser
        (
            b'{"model":"m","messages":[{"role":"user","content":[{"type":"file",'
            b'"file":{"\\u0066ile_id":"file-other-team"}}]}]}',
            "unsupported_parameter",
        ),
        (b'{"model":"m","messages":[{"role":"user","content":"x"}],"st\\u006fre":true}', None),
    ],
)
def test_escaped_keys_get_the_same_policy(stack: Stack, raw: bytes, code: str | None) -> None:
    r = call(stack, "POST", "/v1/chat/completions", raw)
    if code is not None:
        assert (r.status_code, r.json()["error"]["code"]) == (400, code)
        assert everything_upstream(stack) == []
    else:
        assert r.status_code == 200
        assert everything_upstream(stack)[0]["json"]["store"] is False


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        (
            "/v1/responses",
            {"model": "m", "input": "x", "Previous_Response_Id": "r"},
            400,
            "unsupported_parameter",
        ),
        (
            "/v1/responses",
            {"model": "m", "input": "x", "Background": True},
            400,
            "unsupported_parameter",
        ),
        (
            "/v1/chat/completions",
            {"model": "m", "messages": [], "File_Id": "f"},
            400,
            "unsupported_parameter",
        ),
        (
            "/v1/responses",
            {
                "model": "m",
                "input": "x",
                "tools": [
                    {"type": "code_interpreter", "container": {"type": "auto", "file_ids": ["f"]}}
                ],
            },
            400,
            "unsupported_parameter",
        ),
        (
            "/v1/responses",
            {"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]},
            400,
            "unsupported_parameter",
        ),
        (
            "/v1/responses",
            {"model": "m", "input": "x", "prompt": {"id": "pmpt_1"}},
            400,
            "unsupported_parameter",
        ),
        (
            "/v1/chat/completions",
            {"model": "m", "messages": [{"role": "assistant", "audio": {"id": "audio_1"}}]},
            400,
            "unsupported_parameter",
        ),
    ],
)
def test_stored_object_references_in_any_spelling_are_refused(
    stack: Stack, path: str, body: dict[str, Any], status: int, code: str
) -> None:
    r = call(stack, "POST", path, body)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code)
    assert everything_upstream(stack) == []


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"model":"m","messages":[],"store":true,"store":false}', "invalid_json"),
        (b'{"model":"m","messages":[],"store":false,"Store":true}', "invalid_json"),
        (b"model=m&store=true", "invalid_json"),
        (b'{"model":"m","messages":[' + b"{}," * 250_000 + b"{}]}", "request_too_complex"),
    ],
)
def test_ambiguous_or_non_json_chat_bodies_are_refused(stack: Stack, raw: bytes, code: str) -> None:
    r = call(stack, "POST", "/v1/chat/completions", raw)
    assert (r.status_code, r.json()["error"]["code"]) == (400, code)
    assert everything_upstream(stack) == []
