import base64
from collections.abc import Sequence
from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.settings import settings_from_mapping
from gateway.videos.create_request import Upload, parse_create
from gateway.videos.url_policy import check_image_url

VIDEOS = settings_from_mapping(
    {
        "auth": {"hs256_secrets": ["s" * 40]},
        "videos": {
            "default_model": "sora-2",
            "aliases": {"sora": "sora-2", "sora-pro": "sora-2-pro"},
            "models": {
                "sora-2": {"sizes": ["1280x720", "720x1280"], "seconds": [4, 8, 12]},
                "sora-2-pro": {"sizes": ["1920x1080"], "max_seconds": 20, "max_prompt_chars": 50},
            },
            "reference_max_bytes": 1000,
        },
    },
    env={},
).videos


def parse(fields: dict[str, Any], upload: Upload | None = None, force: bool = True) -> Any:
    return parse_create(fields, VIDEOS, force_private=force, upload=upload)


def test_defaults_and_crazyrouter_dialect() -> None:
    req = parse({"prompt": "a cat"})
    assert (req.model, req.size, req.seconds) == ("sora-2", "1280x720", 4)
    assert req.body == {
        "model": "sora-2",
        "size": "1280x720",
        "duration": 4,
        "prompt": "a cat",
        "private": True,
    }


def test_sdk_fields_and_aliases() -> None:
    req = parse({"prompt": "p", "model": "sora", "seconds": "8", "size": "720x1280"})
    assert (req.model, req.seconds, req.body["duration"]) == ("sora-2", 8, 8)
    assert parse({"prompt": "p", "model": "sora-pro", "duration": 20}).body["duration"] == 20


def test_private_forced_or_left_to_team() -> None:
    assert parse({"prompt": "p", "private": "false"}).body["private"] is True
    assert parse({"prompt": "p", "private": "false"}, force=False).body["private"] is False
    assert "private" not in parse({"prompt": "p"}, force=False).body


def test_storyboard_sets_seconds() -> None:
    board = [{"prompt": "a", "duration": 4}, {"prompt": "b", "duration": 4}]
    req = parse({"storyboard": board})
    assert (req.seconds, req.body["storyboard"]) == (8, board)
    assert parse({"storyboard": '[{"prompt": "a", "duration": 4}]', "seconds": "4"}).seconds == 4


def test_upload_becomes_data_url() -> None:
    req = parse({"prompt": "p"}, Upload("a.png", "image/png", b"\x89PNG..."))
    assert (
        req.body["image_url"] == "data:image/png;base64," + base64.b64encode(b"\x89PNG...").decode()
    )
    assert req.image_url is None  # nothing for the URL policy to check


def test_reference_url_forms() -> None:
    assert (
        parse({"prompt": "p", "input_reference[image_url]": "https://x.example/a.png"}).image_url
        == "https://x.example/a.png"
    )
    assert (
        parse(
            {"prompt": "p", "input_reference": {"image_url": "https://x.example/b.png"}}
        ).image_url
        == "https://x.example/b.png"
    )
    assert (
        parse({"prompt": "p", "image_url": "https://x.example/c.png"}).body["image_url"]
        == "https://x.example/c.png"
    )


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({}, "prompt", "missing_required_parameter"),
        ({"prompt": "p", "model": "veo-9"}, "model", "model_not_found"),
        ({"prompt": "p", "seconds": "5"}, "seconds", "invalid_value"),
        ({"prompt": "p", "seconds": "four"}, "seconds", "invalid_value"),
        ({"prompt": "p", "seconds": True}, "seconds", "invalid_value"),
        ({"prompt": "p", "seconds": "4", "duration": 8}, "duration", "invalid_value"),
        ({"prompt": "p", "model": "sora-2-pro", "seconds": 21}, "seconds", "invalid_value"),
        ({"prompt": "p", "size": "1920x1080"}, "size", "invalid_value"),
        ({"prompt": "p", "size": "huge"}, "size", "invalid_value"),
        ({"prompt": "x" * 51, "model": "sora-2-pro"}, "prompt", "invalid_value"),
        ({"prompt": 5}, "prompt", "invalid_value"),
        ({"prompt": "p", "colour": "red"}, "colour", "unknown_parameter"),
        ({"prompt": "p", "private": "maybe"}, "private", "invalid_value"),
        ({"storyboard": []}, "storyboard", "invalid_value"),
        ({"storyboard": "not json"}, "storyboard", "invalid_value"),
        ({"storyboard": "[" + "{}," * 200_000 + "{}]"}, "storyboard", "request_too_complex"),
        ({"storyboard": [{"prompt": "", "duration": 4}]}, "storyboard[0].prompt", "invalid_value"),
        (
            {"storyboard": [{"prompt": "a", "duration": 0}]},
            "storyboard[0].duration",
            "invalid_value",
        ),
        (
            {"storyboard": [{"prompt": "a", "duration": 4}], "seconds": 8},
            "storyboard",
            "invalid_value",
        ),
        ({"storyboard": [{"prompt": "a", "duration": 5}]}, "seconds", "invalid_value"),
        (
            {"prompt": "p", "image_url": "https://a", "input_reference[image_url]": "https://b"},
            "input_reference",
            "invalid_value",
        ),
        ({"prompt": "p", "input_reference": "just a string"}, "input_reference", "invalid_value"),
        (
            {"prompt": "p", "image_url": "data:image/png;base64," + "A" * 2000},
            "image_url",
            "file_too_large",
        ),
        ({"prompt": "p", "image_url": "data:text/html;base64,AAAA"}, "image_url", "invalid_value"),
    ],
)
def test_bad_fields_name_the_param(fields: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse(fields)
    assert (info.value.status, info.value.param, info.value.code) == (400, param, code)


@pytest.mark.parametrize(
    ("upload", "code"),
    [
        (Upload("a.gif", "image/gif", b"GIF89a"), "invalid_value"),
        (Upload("a.png", "image/png", b"x" * 1001), "file_too_large"),
        (Upload("a.png", "image/png", b""), "invalid_value"),
    ],
)
def test_bad_uploads(upload: Upload, code: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse({"prompt": "p"}, upload)
    assert (info.value.param, info.value.code) == ("input_reference", code)


def resolver(mapping: dict[str, Sequence[str]]) -> Any:
    async def resolve(host: str, port: int) -> Sequence[str]:
        if host not in mapping:
            raise OSError("no such host")
        return mapping[host]

    return resolve


@pytest.mark.parametrize(
    "url",
    [
        "http://images.example/a.png",
        "ftp://images.example/a.png",
        "https://127.0.0.1/a.png",
        "https://169.254.169.254/latest/meta-data",
        "https://10.1.2.3/a.png",
        "https://[::1]/a.png",
        "https://[::ffff:10.0.0.1]/a.png",
        "https://user:pw@images.example/a.png",
        "https://internal.example/a.png",
        "https://rebind.example/a.png",
        "https://nowhere.example/a.png",
        "https://images.example:99999/a.png",
        "https://images.example/" + "a" * 3000,
    ],
)
async def test_url_policy_refuses(url: str) -> None:
    resolve = resolver(
        {
            "images.example": ["93.184.216.34"],
            "internal.example": ["192.168.1.5"],
            "rebind.example": ["93.184.216.34", "127.0.0.1"],
        }
    )
    with pytest.raises(InvalidRequest) as info:
        await check_image_url(url, allowed_hosts=(), resolve=resolve)
    assert (info.value.status, info.value.code, info.value.param) == (
        400,
        "invalid_url",
        "image_url",
    )


async def test_url_policy_accepts_public_and_allowlist() -> None:
    resolve = resolver(
        {"images.example": ["93.184.216.34"], "cdn.other.example": ["93.184.216.35"]}
    )
    await check_image_url("https://images.example/a.png", allowed_hosts=(), resolve=resolve)
    await check_image_url(
        "https://cdn.other.example/a.png", allowed_hosts=("other.example",), resolve=resolve
    )
    with pytest.raises(InvalidRequest):
        await check_image_url(
            "https://images.example/a.png", allowed_hosts=("other.example",), resolve=resolve
        )
