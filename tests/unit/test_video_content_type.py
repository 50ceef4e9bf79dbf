"""A job's content type, read as a browser reads it: only one header naming one allowed type
is media; every way of naming a second type is opaque bytes."""

from __future__ import annotations

import pytest

from gateway.videos import content_type


@pytest.mark.parametrize(
    ("headers", "inline"),
    [
        ([(b"content-type", b"video/webm")], "video/webm"),
        ([(b"Content-Type", b"Video/MP4; codecs=avc1")], "video/mp4"),
        ([(b"content-type", b"image/png")], "image/png"),
        ([(b"content-type", b"video/webm, text/html")], None),
        ([(b"content-type", b"video/webm,text/html;charset=utf-8")], None),
        ([(b"content-type", b"video/webm"), (b"content-type", b"text/html")], None),
        ([(b"content-type", b"video/webm"), (b"content-type", b"video/webm")], None),
        ([(b"content-type", b"video/quicktime")], None),  # not on the list
        ([(b"content-type", b"image/svg+xml")], None),  # scripts run in SVG
        ([(b"content-type", b"text/html")], None),
        ([(b"content-type", "video/webm\u00e9".encode())], None),
        ([(b"content-type", b"")], None),
        ([], None),
    ],
)
def test_only_one_header_naming_one_allowed_type_is_media(
    headers: list[tuple[bytes, bytes]], inline: str | None
) -> None:
    assert content_type.inline_type(headers) == inline


def test_a_download_keeps_one_declared_type_with_its_parameters() -> None:
    assert content_type.declared([(b"content-type", b"video/mp4; a=b")]) == "video/mp4; a=b"
    assert content_type.declared([(b"content-type", b"a/b"), (b"content-type", b"c/d")]) is None
    assert content_type.declared([(b"content-type", b"a/b, c/d")]) is None
