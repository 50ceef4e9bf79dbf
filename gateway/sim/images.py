"""``/v1/images/generations|edits|variations`` and the image URLs they hand out.

Every image is a valid 1x1 PNG whose colour comes from its seed. DALL·E models answer with a
``url`` (or ``b64_json`` on request); GPT Image models always with ``b64_json`` plus a token
``usage``, the output tokens taken from OpenAI's table by quality and size. Edits and
variations are multipart with an ``image`` file (``image[]`` for several). GPT Image models
stream on ``stream: true``: ``partial_images`` partial events, then one ``*.completed`` event
per image carrying that image's usage.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import struct
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import JSONResponse, Response

from gateway.sim import fields, sse, tokens
from gateway.sim.call import Call
from gateway.sim.errors import openai_error
from gateway.sim.state import SimState

MAX_IMAGES = 10
# OpenAI's output tokens per GPT Image by quality and size ("auto" is billed as medium here)
OUTPUT_TOKENS = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}
_QUALITIES = ("low", "medium", "high", "auto", "standard", "hd")


def png(seed: str) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    colour = hashlib.sha256(seed.encode()).digest()[:3]
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" + colour))
        + chunk(b"IEND", b"")
    )


def is_gpt_image(model: str) -> bool:
    return model.startswith(("gpt-image", "chatgpt-image"))


def output_tokens(quality: str, size: str) -> int:
    table = OUTPUT_TOKENS.get(quality, OUTPUT_TOKENS["medium"])
    return table.get(size, table["1024x1024"])


def _images(
    call: Call, *, prompt: str, input_images: int, state: SimState | None = None, event: str = ""
) -> Response:
    doc = call.fields() or {}
    model = str(doc.get("model") or "dall-e-2")  # OpenAI's default, still
    try:
        n = fields.integer(doc, "n", 1, low=1, high=MAX_IMAGES) or 1
        if model == "dall-e-3" and n != 1:
            raise fields.BadField("n", "You must provide n=1 for this model.")
        size = str(doc.get("size") or ("auto" if is_gpt_image(model) else "1024x1024"))
        quality = fields.choice(doc, "quality", _QUALITIES, "auto")
        as_url = not is_gpt_image(model) and (
            fields.choice(doc, "response_format", ("url", "b64_json"), "url") == "url"
        )
        streamed = fields.flag(doc, "stream")
        partials = fields.integer(doc, "partial_images", 0, low=0, high=3) or 0
        if streamed and not is_gpt_image(model):
            raise fields.BadField("stream", "Streaming is supported by GPT Image models only.")
    except fields.BadField as exc:
        return exc.response()
    if streamed and state is not None:
        rated = quality if quality in OUTPUT_TOKENS else "medium"
        return _stream(state, event, prompt, n, partials, input_images, (rated, size))
    data: list[dict[str, Any]] = []
    for i in range(n):
        seed = _seed_id(f"{prompt}#{i}#{secrets.token_hex(8)}")
        image: dict[str, Any] = (
            {"url": f"{call.base_url}/files/images/{seed}.png"}
            if as_url
            else {"b64_json": base64.b64encode(png(seed)).decode()}
        )
        if model == "dall-e-3":
            image["revised_prompt"] = prompt
        data.append(image)
    body: dict[str, Any] = {"created": int(time.time()), "data": data}
    if is_gpt_image(model):
        text_tokens = tokens.count(prompt)
        image_tokens = tokens.IMAGE_TOKENS * input_images
        rated = quality if quality in OUTPUT_TOKENS else "medium"
        out = n * output_tokens(rated, size)
        body.update(
            background="opaque",
            output_format="png",
            quality=rated,
            size="1024x1024" if size == "auto" else size,
            usage={
                "input_tokens": text_tokens + image_tokens,
                "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
                "output_tokens": out,
                "total_tokens": text_tokens + image_tokens + out,
            },
        )
    return JSONResponse(body)


def _stream(
    state: SimState,
    event: str,
    prompt: str,
    n: int,
    partials: int,
    inputs: int,
    looks: tuple[str, str],
) -> Response:
    quality, size = looks
    out = output_tokens(quality, size)
    size = "1024x1024" if size == "auto" else size
    common = {
        "background": "opaque",
        "created_at": int(time.time()),
        "output_format": "png",
        "quality": quality,
        "size": size,
    }
    text_tokens = tokens.count(prompt)
    image_tokens = tokens.IMAGE_TOKENS * inputs

    async def events() -> AsyncIterator[bytes]:
        step = 0
        for i in range(n):
            seed = _seed_id(f"{prompt}#{i}#{secrets.token_hex(8)}")
            picture = base64.b64encode(png(seed)).decode()
            for k in range(partials):
                await sse.pace(state, step)
                step += 1
                yield sse.named(
                    {
                        "type": f"{event}.partial_image",
                        "partial_image_index": k,
                        "b64_json": picture,
                    }
                )
            await sse.pace(state, step)
            step += 1
            usage = {
                "input_tokens": text_tokens + image_tokens,
                "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
                "output_tokens": out,
                "total_tokens": text_tokens + image_tokens + out,
            }
            yield sse.named(
                {"type": f"{event}.completed", "b64_json": picture, "usage": usage, **common}
            )

    return sse.stream(state, events())


def _seed_id(seed: str) -> str:
    return hashlib.blake2b(seed.encode(), digest_size=12).hexdigest()


def _uploaded(call: Call) -> int:
    """How many input images the multipart body carried (several ``image[]`` count as one:
    the simulator records one file per field name)."""
    files = call.files or {}
    return sum(1 for name in ("image", "image[]") if files.get(name, {}).get("size"))


async def generations(state: SimState, call: Call) -> Response:
    doc = call.json
    if not isinstance(doc, dict):
        return openai_error(400, "invalid_request_error", "the body must be a JSON object")
    try:
        prompt = fields.text(doc, "prompt")
    except fields.BadField as exc:
        return exc.response()
    return _images(call, prompt=prompt, input_images=0, state=state, event="image_generation")


async def edits(state: SimState, call: Call) -> Response:
    doc = call.fields()
    try:
        if call.form is None or doc is None:
            raise fields.BadField("image", "The body must be multipart/form-data.")
        images = _uploaded(call)
        if not images:
            raise fields.missing("image")
        prompt = fields.text(doc, "prompt")
    except fields.BadField as exc:
        return exc.response()
    return _images(call, prompt=prompt, input_images=images, state=state, event="image_edit")


async def variations(state: SimState, call: Call) -> Response:
    images = _uploaded(call) if call.form is not None else 0
    if not images:
        return fields.missing("image").response()
    return _images(call, prompt="", input_images=images)


async def image_file(state: SimState, call: Call) -> Response:
    """A result URL: public, like the temporary links OpenAI hands out."""
    return Response(png(call.params["seed"]), media_type="image/png")
