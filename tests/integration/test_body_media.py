"""A body leaves declared as what the gateway read it as: new-api picks its parser from the
Content-Type, so a JSON body declared as a form would name one model to the gateway and another
to the upstream (``"input": "x&model=big&z="``). Real sockets, the simulator and a real Redis."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.conftest import Stack, make_stack
from tests.rawhttp import raw_request

SMALL, LARGE = "text-embedding-3-small", "text-embedding-3-large"
PRICES = {
    "models": {
        SMALL: {"input_per_million": 0.02},
        LARGE: {"input_per_million": 0.13},
        "dall-e-2": {"per_image": {"*": 0.02}},
    }
}
SMUGGLED = {"model": SMALL, "input": f"x&model={LARGE}&input=hi&z="}


@pytest.fixture
def team() -> str:
    return "media-" + secrets.token_hex(4)


@pytest.fixture(params=["metered", "unmetered"])
def stack(request: pytest.FixtureRequest, redis_url: str, team: str) -> Iterator[Stack]:
    pricing = PRICES if request.param == "metered" else {"enabled": False}
    teams = {"default": {}, team: {"models": [SMALL, "dall-e-2"], "spend_per_day": 100}}
    with make_stack(redis_url, teams=teams, pricing=pricing) as s:
        yield s


def _post(stack: Stack, team: str, path: str, content: bytes, ctype: str | None) -> Any:
    headers = {"Authorization": f"Bearer {stack.token(team=team)}"}
    if ctype is not None:
        headers["Content-Type"] = ctype
    return httpx2.post(stack.v1 + path, content=content, headers=headers)


@pytest.mark.parametrize(
    "ctype",
    [
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; x=json",
        "text/plain",
        "multipart/form-data; boundary=b",
        "application/jsonx",
        "",
    ],
)
def test_a_json_route_refuses_a_body_declared_as_anything_but_json(
    stack: Stack, team: str, ctype: str
) -> None:
    r = _post(stack, team, "/embeddings", json.dumps(SMUGGLED).encode(), ctype)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "unsupported_media_type"), r.text
    assert stack.sim_requests() == []


@pytest.mark.parametrize("ctype", [None, "application/json", "Application/JSON; charset=utf-8"])
def test_a_json_body_leaves_declared_as_json(stack: Stack, team: str, ctype: str | None) -> None:
    r = _post(stack, team, "/embeddings", json.dumps(SMUGGLED).encode(), ctype)
    assert r.status_code == 200, r.text
    [sent] = stack.sim_requests("/v1/embeddings")
    assert sent["headers"]["content-type"] == "application/json"
    assert sent["json"]["model"] == SMALL
    assert sent["form"] is None


def test_two_content_types_are_refused(stack: Stack, team: str) -> None:
    """The gateway reads a header's first value; the upstream would be sent its last."""
    body = json.dumps(SMUGGLED).encode()
    head = (
        "POST /v1/embeddings HTTP/1.1\nHost: gw\n"
        f"Authorization: Bearer {stack.token(team=team)}\n"
        "Content-Type: application/json\n"
        "Content-Type: application/x-www-form-urlencoded\n"
        f"Content-Length: {len(body)}\nConnection: close"
    )
    r = raw_request(stack.url, head, body)
    assert (r.status, r.json()["error"]["code"]) == (400, "invalid_request")
    assert stack.sim_requests() == []


def _form(boundary: str, **fields: str) -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    image = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + b"\x89PNG\r\n"
    return b"".join(parts) + image + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize(
    "ctype",
    [
        # Go's strings.Contains, which picks new-api's parser, is case-sensitive.
        "Multipart/Form-Data; boundary=bb",
        "application/x-www-form-urlencoded; x=multipart/form-data; boundary=bb",
        "text/plain",
        None,
    ],
)
def test_an_upload_route_takes_multipart_spelled_as_the_upstream_reads_it(
    stack: Stack, team: str, ctype: str | None
) -> None:
    body = _form("bb", model="dall-e-2", prompt="a cat")
    r = _post(stack, team, "/images/edits", body, ctype)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "unsupported_media_type"), r.text
    assert stack.sim_requests() == []
    r = _post(stack, team, "/images/edits", body, "multipart/form-data; boundary=bb")
    assert r.status_code == 200, r.text
    [sent] = stack.sim_requests("/v1/images/edits")
    assert sent["headers"]["content-type"] == "multipart/form-data; boundary=bb"
    assert sent["form"]["model"] == "dall-e-2"


def test_an_upload_route_sent_as_json_leaves_as_json(stack: Stack, team: str) -> None:
    doc = {"model": "dall-e-2", "prompt": "a cat", "image": "https://example.com/a.png"}
    r = _post(stack, team, "/images/edits", json.dumps(doc).encode(), "application/json; x=1")
    seen = stack.sim_requests("/v1/images/edits")  # the simulator refuses it: not our point
    assert len(seen) == 1, r.text
    sent = seen[0]
    assert sent["headers"]["content-type"] == "application/json"
    assert sent["json"]["model"] == "dall-e-2"


@pytest.mark.parametrize(
    "ctype",
    [
        # Go's mime.ParseMediaType lets an RFC 2231 boundary* replace the plain one; a second
        # form after the first one's close would be what the upstream runs.
        "multipart/form-data; boundary=bb; boundary*=utf-8''cc",
        "multipart/form-data; boundary=bb; boundary=cc",
        "multipart/form-data; boundary=bb; x",
    ],
)
def test_a_form_whose_boundary_the_upstream_could_read_otherwise_is_refused(
    redis_url: str, team: str, ctype: str
) -> None:
    """Metered: the gateway prices the form it reads (unmetered it reads none)."""
    teams = {"default": {}, team: {"models": ["dall-e-2"], "spend_per_day": 100}}
    body = _form("bb", model="dall-e-2", prompt="a cat") + _form("cc", model="gpt-image-1", n="10")
    with make_stack(redis_url, teams=teams, pricing=PRICES) as stack:
        r = _post(stack, team, "/images/edits", body, ctype)
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_form"), r.text
        assert stack.sim_requests() == []


def test_an_upload_over_a_mebibyte_reaches_the_upstream_whole(stack: Stack, team: str) -> None:
    """A body read whole (to meter it) and larger than aiohttp writes in one piece leaves in
    chunks: whole, and without the warning (an error in tests) a bytes body that size raises."""
    image = b"\x89PNG\r\n" + bytes(3 * 1024 * 1024)
    body = (
        b'--bb\r\nContent-Disposition: form-data; name="model"\r\n\r\ndall-e-2\r\n'
        b'--bb\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na cat\r\n'
        b'--bb\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--bb--\r\n"
    )
    r = _post(stack, team, "/images/edits", body, "multipart/form-data; boundary=bb")
    assert r.status_code == 200, r.text
    [sent] = stack.sim_requests("/v1/images/edits")
    assert sent["files"]["image"]["size"] == len(image)
