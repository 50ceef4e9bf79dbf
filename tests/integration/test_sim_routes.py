"""Every route the gateway forwards, answered by the simulator as OpenAI would: official SDK ->
gateway (socket) -> simulator (socket), with the usage numbers predicted from the input."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import struct
import subprocess
import sys
import urllib.request
import warnings
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway.dev.process import stop_process
from gateway.sim import audio, images, tokens
from gateway.sim.config import SimConfig
from gateway.upstream.routes import DEFAULT_ROUTES
from tests.conftest import Stack, make_stack
from tests.servers import free_port, wait_for

ANSWER = "".join(tokens.answer(8))  # the default SimConfig streams 8 one-token pieces


Sdk = Callable[..., openai.OpenAI]


@pytest.fixture
def sdk() -> Iterator[Sdk]:
    """Official clients for a stack, closed when the test ends."""
    clients: list[openai.OpenAI] = []

    def make(stack: Stack, *, strict: bool = True) -> openai.OpenAI:
        clients.append(
            openai.OpenAI(
                base_url=stack.v1,
                api_key=stack.token(),
                max_retries=0,
                _strict_response_validation=strict,
            )
        )
        return clients[-1]

    yield make
    for c in clients:
        c.close()


def sent(stack: Stack, path: str) -> list[dict[str, Any]]:
    """What reached the simulator on exactly ``path``."""
    return [r for r in stack.sim_app.state.sim.requests if r["path"] == path]


def check_png(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG whose every chunk has a correct CRC, or an AssertionError."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, kinds, idat = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        kinds.append(kind)
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    assert kinds[0] == b"IHDR"
    assert kinds[-1] == b"IEND"
    width, height = struct.unpack(">II", data[16:24])
    assert len(zlib.decompress(idat)) == height * (1 + 3 * width)  # filter byte + RGB rows
    return width, height


@contextlib.contextmanager
def sdk_deprecation() -> Iterator[None]:
    """The SDK marks some methods deprecated; the routes are still forwarded and billed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


@pytest.fixture
def long_stack(redis_url: str) -> Iterator[Stack]:
    """Answers of 20 pieces, so that a limit of 16 tokens cuts them."""
    with make_stack(redis_url, sim=SimConfig(stream_events=20)) as s:
        yield s


# -- chat ------------------------------------------------------------------------------------


def test_chat_usage_in_plain_answers(stack: Stack, sdk: Sdk) -> None:
    done = sdk(stack).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}], n=2
    )
    assert [c.message.content for c in done.choices] == [ANSWER.strip()] * 2
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (3, 16)
    assert done.usage.total_tokens == 19
    assert done.usage.prompt_tokens_details is not None
    assert done.usage.prompt_tokens_details.cached_tokens == 0


def test_chat_stream_with_include_usage_ends_with_a_usage_chunk(stack: Stack, sdk: Sdk) -> None:
    stream = sdk(stack).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello there"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 8)
    assert last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == 0
    assert all(c.usage is None and c.choices for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == ANSWER


def test_chat_stream_without_include_usage_has_no_usage_anywhere(stack: Stack, sdk: Sdk) -> None:
    stream = sdk(stack).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)
    assert len(chunks) == 8
    assert all(c.usage is None and len(c.choices) == 1 for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_max_tokens_cuts_the_answer_and_reasoning_models_bill_reasoning(
    stack: Stack,
    sdk: Sdk,
) -> None:
    client = sdk(stack)
    message: list[ChatCompletionMessageParam] = [{"role": "user", "content": "x" * 10}]
    cut = client.chat.completions.create(model="gpt-4o-mini", messages=message, max_tokens=3)
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None
    assert cut.usage.completion_tokens == 3
    thought = client.chat.completions.create(model="o4-mini", messages=message)
    assert thought.usage is not None
    details = thought.usage.completion_tokens_details
    assert details is not None
    assert details.reasoning_tokens == 16
    assert (thought.usage.completion_tokens, thought.usage.total_tokens) == (24, 27)


def test_a_repeated_long_prompt_is_served_from_the_cache(stack: Stack, sdk: Sdk) -> None:
    client = sdk(stack)
    long = "y" * 4500  # 1125 tokens
    message: list[ChatCompletionMessageParam] = [{"role": "user", "content": long}]
    first = client.chat.completions.create(model="gpt-4o-mini", messages=message)
    again = client.chat.completions.create(model="gpt-4o-mini", messages=message)
    short: list[ChatCompletionMessageParam] = [{"role": "user", "content": "y" * 40}]
    client.chat.completions.create(model="gpt-4o-mini", messages=short)
    small = client.chat.completions.create(model="gpt-4o-mini", messages=short)
    cached = [
        u.prompt_tokens_details.cached_tokens
        for u in (first.usage, again.usage, small.usage)
        if u is not None and u.prompt_tokens_details is not None
    ]
    assert cached == [0, 1024, 0]


# -- completions -----------------------------------------------------------------------------


def test_completions_plain(stack: Stack, sdk: Sdk) -> None:
    done = sdk(stack).completions.create(
        model="gpt-3.5-turbo-instruct", prompt=["Say this is a test", "abc"], n=2
    )
    assert done.object == "text_completion"
    assert [c.index for c in done.choices] == [0, 1, 2, 3]
    assert {c.text for c in done.choices} == {ANSWER}
    assert {c.finish_reason for c in done.choices} == {"stop"}
    assert done.usage is not None
    # 18 characters -> 5 tokens, 3 -> 1; four choices of 8 tokens each
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (6, 32)
    assert done.usage.total_tokens == 38
    assert len(sent(stack, "/v1/completions")) == 1


def test_completions_echo_and_the_default_limit_of_16_tokens(long_stack: Stack, sdk: Sdk) -> None:
    done = sdk(long_stack).completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Once", echo=True
    )
    assert done.choices[0].text == "Once" + "".join(tokens.answer(16))
    assert done.choices[0].finish_reason == "length"
    assert done.usage is not None
    assert done.usage.completion_tokens == 16


def test_completions_stream_with_and_without_usage(stack: Stack, sdk: Sdk) -> None:
    # Lenient: the SDK types a chunk's finish_reason as never null, yet OpenAI sends null in
    # every chunk but the last, and so does the simulator.
    client = sdk(stack, strict=False)
    chunks = list(
        client.completions.create(
            model="gpt-3.5-turbo-instruct",
            prompt="Say this is a test",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert {c.object for c in chunks} == {"text_completion"}
    assert "".join(c.choices[0].text for c in chunks[:-1]) == ANSWER
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (5, 8)
    assert all(c.usage is None for c in chunks[:-1])
    plain = list(client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x", stream=True))
    assert len(plain) == 8
    assert all(c.usage is None and c.choices for c in plain)


# -- responses -------------------------------------------------------------------------------


def test_responses_plain(stack: Stack, sdk: Sdk) -> None:
    done = sdk(stack).responses.create(
        model="gpt-4o-mini", input="hello there", instructions="be brief"
    )
    assert done.object == "response"
    assert done.status == "completed"
    assert done.output_text == ANSWER
    assert [item.type for item in done.output] == ["message"]
    # The gateway forced it; the answer says what was done. The SDK's Response model leaves out
    # `store`, which the API returns (it arrives as an extra field).
    assert done.store is False  # type: ignore[attr-defined]
    assert done.usage is not None
    # "be brief" (8 characters) -> 2 tokens, "hello there" (11) -> 3
    assert (done.usage.input_tokens, done.usage.output_tokens) == (5, 8)
    assert done.usage.total_tokens == 13
    assert done.usage.input_tokens_details.cached_tokens == 0
    assert done.usage.output_tokens_details.reasoning_tokens == 0


def test_responses_of_a_reasoning_model_and_message_items(stack: Stack, sdk: Sdk) -> None:
    done = sdk(stack).responses.create(
        model="o4-mini",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "abcd" * 3}]},
            {"role": "user", "content": "abcd"},
        ],
    )
    assert [item.type for item in done.output] == ["reasoning", "message"]
    assert done.usage is not None
    assert done.usage.input_tokens == 4
    assert done.usage.output_tokens_details.reasoning_tokens == 16
    assert (done.usage.output_tokens, done.usage.total_tokens) == (24, 28)


def test_responses_stream_events(stack: Stack, sdk: Sdk) -> None:
    with sdk(stack).responses.create(model="gpt-4o-mini", input="hello there", stream=True) as s:
        events = list(s)
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 8,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == ANSWER
    created, completed = events[0], events[-1]
    assert created.type == "response.created"
    assert created.response.usage is None
    assert completed.type == "response.completed"
    assert completed.response.output_text == ANSWER
    usage = completed.response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (3, 8, 11)


def test_responses_stream_is_named_events_on_the_wire(stack: Stack) -> None:
    with httpx2.stream(
        "POST",
        stack.v1 + "/responses",
        json={"model": "gpt-4o-mini", "input": "hi", "stream": True},
        headers={"authorization": f"Bearer {stack.token()}"},
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    blocks = raw.split("\n\n")
    assert blocks[-1] == ""
    for block in blocks[:-1]:
        name, data = block.split("\n")
        assert name.startswith("event: ")
        assert data.startswith("data: ")
        assert json.loads(data.removeprefix("data: "))["type"] == name.removeprefix("event: ")
    assert blocks[-2].startswith("event: response.completed\n")


def test_responses_max_output_tokens_makes_an_incomplete_response(
    long_stack: Stack, sdk: Sdk
) -> None:
    client = sdk(long_stack)
    done = client.responses.create(model="gpt-4o-mini", input="x", max_output_tokens=16)
    assert done.status == "incomplete"
    assert done.incomplete_details is not None
    assert done.incomplete_details.reason == "max_output_tokens"
    assert done.usage is not None
    assert done.usage.output_tokens == 16
    with client.responses.create(
        model="gpt-4o-mini", input="x", max_output_tokens=16, stream=True
    ) as s:
        last = list(s)[-1]
    assert last.type == "response.incomplete"
    assert last.response.usage is not None
    assert last.response.usage.output_tokens == 16


# -- embeddings and moderations --------------------------------------------------------------


def test_embeddings_usage_base64_and_dimensions(stack: Stack, sdk: Sdk) -> None:
    # Lenient: the SDK validates before it decodes, and a base64 vector is a string.
    client = sdk(stack, strict=False)
    done = client.embeddings.create(model="text-embedding-3-small", input=["ab", "abcde"])
    # the SDK asks for base64 unless told otherwise, and decodes it
    assert sent(stack, "/v1/embeddings")[0]["json"]["encoding_format"] == "base64"
    assert [len(d.embedding) for d in done.data] == [8, 8]
    assert (done.usage.prompt_tokens, done.usage.total_tokens) == (3, 3)
    floats = client.embeddings.create(
        model="text-embedding-3-small", input="ab", encoding_format="float", dimensions=16
    )
    assert len(floats.data[0].embedding) == 16
    assert floats.data[0].embedding[:8] == pytest.approx(done.data[0].embedding, abs=1e-6)
    ids = client.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3, 4, 5]])
    assert ids.usage.prompt_tokens == 5


def test_moderations(stack: Stack, sdk: Sdk) -> None:
    done = sdk(stack).moderations.create(input=["a kind word", "SIMFLAG a threat"])
    assert done.model == "omni-moderation-latest"
    assert [r.flagged for r in done.results] == [False, True]
    assert done.results[1].categories.violence is True
    assert done.results[1].categories.hate is False
    assert done.results[0].category_applied_input_types.violence == ["text"]
    named = sdk(stack).moderations.create(model="omni-moderation-2024-09-26", input="x")
    assert (named.model, len(named.results)) == ("omni-moderation-2024-09-26", 1)


# -- images ----------------------------------------------------------------------------------


def test_images_generate_urls(stack: Stack, sdk: Sdk) -> None:
    done = sdk(stack).images.generate(model="dall-e-2", prompt="a cat", n=2)
    assert done.data is not None
    assert len(done.data) == 2
    urls = [d.url for d in done.data]
    assert all(u and u.startswith(stack.sim_url + "/files/images/") for u in urls)
    assert urls[0] != urls[1]
    assert done.usage is None  # DALL·E is priced per image, not by tokens
    with urllib.request.urlopen(str(urls[0])) as r:
        assert r.headers["content-type"] == "image/png"
        assert check_png(r.read()) == (1, 1)


def test_images_generate_gpt_image_has_b64_and_usage(stack: Stack, sdk: Sdk) -> None:
    done = sdk(stack).images.generate(model="gpt-image-1", prompt="a cat", n=2, quality="low")
    assert done.data is not None
    assert len(done.data) == 2
    for image in done.data:
        assert image.url is None
        assert check_png(base64.b64decode(image.b64_json or "")) == (1, 1)
    assert done.usage is not None
    assert (done.usage.input_tokens, done.usage.output_tokens) == (2, 2 * 272)
    assert done.usage.input_tokens_details.image_tokens == 0
    b64 = sdk(stack).images.generate(model="dall-e-2", prompt="p", response_format="b64_json")
    assert b64.data is not None
    assert b64.data[0].b64_json
    assert b64.data[0].url is None


def test_images_edit_and_variation_take_an_image_file(stack: Stack, sdk: Sdk) -> None:
    picture = images.png("input")
    client = sdk(stack)
    done = client.images.edit(
        model="gpt-image-1", image=("in.png", picture, "image/png"), prompt="add a hat"
    )
    assert done.data is not None
    assert len(done.data) == 1
    check_png(base64.b64decode(done.data[0].b64_json or ""))
    assert done.usage is not None
    assert done.usage.input_tokens_details.image_tokens == tokens.IMAGE_TOKENS
    assert done.usage.input_tokens_details.text_tokens == 3
    upload = sent(stack, "/v1/images/edits")[0]
    assert upload["files"]["image"]["size"] == len(picture)
    assert upload["form"]["prompt"] == "add a hat"
    with sdk_deprecation():
        varied = client.images.create_variation(image=("in.png", picture, "image/png"), n=2)
    assert varied.data is not None
    assert len(varied.data) == 2
    assert all(d.url for d in varied.data)


# -- audio -----------------------------------------------------------------------------------


def test_audio_speech_is_audio_in_proportion_to_the_input(stack: Stack, sdk: Sdk) -> None:
    client = sdk(stack)
    speech = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello world!")
    assert speech.response.headers["content-type"] == "audio/mpeg"
    assert speech.content[:2] == b"\xff\xfb"
    assert len(speech.content) == 12 * audio.BYTES_PER_CHAR
    wav = client.audio.speech.create(
        model="gpt-4o-mini-tts", voice="nova", input="Hi", response_format="wav"
    )
    assert wav.response.headers["content-type"] == "audio/wav"
    assert wav.content[:4] == b"RIFF"
    assert len(wav.content) == 2 * audio.BYTES_PER_CHAR


def test_audio_transcriptions(stack: Stack, sdk: Sdk) -> None:
    client = sdk(stack)
    clip = ("clip.mp3", b"\x00" * 40_000, "audio/mpeg")  # 2.5 s at 16 kB/s
    verbose = client.audio.transcriptions.create(
        model="whisper-1", file=clip, response_format="verbose_json"
    )
    assert verbose.duration == 2.5
    assert verbose.text == "".join(tokens.answer(7)).strip()  # 2.5 words a second
    assert verbose.usage is not None
    assert (verbose.usage.type, verbose.usage.seconds) == ("duration", 3)
    assert verbose.segments is not None
    assert verbose.segments[-1].end == 2.5
    assert sent(stack, "/v1/audio/transcriptions")[0]["files"]["file"]["size"] == 40_000
    plain = client.audio.transcriptions.create(model="whisper-1", file=clip)
    assert plain.text == verbose.text
    assert plain.usage is not None
    assert plain.usage.type == "duration"
    text = client.audio.transcriptions.create(model="whisper-1", file=clip, response_format="text")
    assert text == verbose.text + "\n"
    tokened = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=clip)
    assert tokened.usage is not None
    assert tokened.usage.type == "tokens"
    audio_tokens = math.ceil(2.5 * audio.AUDIO_TOKENS_PER_SECOND)
    out = tokens.count(verbose.text)
    assert (tokened.usage.input_tokens, tokened.usage.output_tokens) == (audio_tokens, out)


def test_audio_translations(stack: Stack, sdk: Sdk) -> None:
    clip = ("clip.mp3", b"\x00" * 8_000, "audio/mpeg")  # half a second
    with sdk_deprecation():
        done = sdk(stack).audio.translations.create(
            model="whisper-1", file=clip, response_format="verbose_json"
        )
        plain = sdk(stack).audio.translations.create(model="whisper-1", file=clip)
    assert (done.duration, done.language) == (0.5, "english")
    assert done.text == "".join(tokens.answer(2)).strip()
    assert plain.text == done.text


# -- what OpenAI refuses, the simulator refuses the same way ---------------------------------


@pytest.mark.parametrize(
    ("call", "path", "param", "code"),
    [
        (
            lambda c: c.images.generate(model="dall-e-3", prompt="p", n=2),
            "/v1/images/generations",
            "n",
            "invalid_value",
        ),
        (
            lambda c: c.audio.speech.create(model="tts-1", voice="alloy", input="x" * 4097),
            "/v1/audio/speech",
            "input",
            "invalid_value",
        ),
        (
            lambda c: c.audio.transcriptions.create(
                model="gpt-4o-transcribe",
                file=("a.mp3", b"\x00" * 10, "audio/mpeg"),
                response_format="verbose_json",
            ),
            "/v1/audio/transcriptions",
            "response_format",
            "unsupported_value",
        ),
        (
            lambda c: c.audio.transcriptions.create(
                model="whisper-1", file=("a.mp3", b"", "audio/mpeg")
            ),
            "/v1/audio/transcriptions",
            "file",
            "invalid_value",
        ),
        (
            lambda c: c.responses.create(model="gpt-4o-mini", input="x", max_output_tokens=15),
            "/v1/responses",
            "max_output_tokens",
            "invalid_value",
        ),
        (
            lambda c: c.embeddings.create(model="text-embedding-3-small", input=""),
            "/v1/embeddings",
            "input",
            "invalid_value",
        ),
    ],
)
def test_invalid_fields_answer_openai_validation_errors(
    stack: Stack, call: Any, path: str, param: str, code: str, sdk: Sdk
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        call(sdk(stack))
    assert (info.value.status_code, info.value.code, info.value.param) == (400, code, param)
    assert len(sent(stack, path)) == 1  # refused upstream, sent once


def test_a_field_the_estimate_reads_is_checked_by_the_gateway_in_the_same_shape(
    stack: Stack, sdk: Sdk
) -> None:
    # The simulator refuses n=11 too (OpenAI's limit is 10); metering reads n first.
    with pytest.raises(openai.BadRequestError) as info:
        sdk(stack).images.generate(model="dall-e-2", prompt="p", n=11)
    assert (info.value.status_code, info.value.code, info.value.param) == (
        400,
        "invalid_value",
        "n",
    )
    assert sent(stack, "/v1/images/generations") == []
    # max_tokens 0 too (OpenAI's minimum is 1; through new-api a 0 would mean no cap)
    with pytest.raises(openai.BadRequestError) as info:
        sdk(stack).completions.create(model="m", prompt="x", max_tokens=0)
    assert (info.value.code, info.value.param) == ("invalid_value", "max_tokens")
    assert sent(stack, "/v1/completions") == []


def test_missing_files_and_fields_in_raw_requests(stack: Stack) -> None:
    auth = {"authorization": f"Bearer {stack.token()}"}
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/images/edits", {"data": {"prompt": "p"}, "files": {"mask": b"x"}}, "image"),
        ("/images/variations", {"data": {"n": "1"}, "files": {"other": b"x"}}, "image"),
        ("/audio/transcriptions", {"data": {"model": "whisper-1"}, "files": {"f": b"x"}}, "file"),
        ("/audio/speech", {"json": {"model": "tts-1", "input": "hi"}}, "voice"),
        ("/responses", {"json": {"model": "gpt-4o-mini"}}, "input"),
        ("/moderations", {"json": {"input": 5}}, "input"),
    ]
    for path, body, param in cases:
        r = httpx2.post(stack.v1 + path, headers=auth, **body)
        error = r.json()["error"]
        assert (r.status_code, error["code"], error["param"]) == (
            400,
            "missing_required_parameter",
            param,
        ), path
        assert len(sent(stack, "/v1" + path)) == 1, path


# -- the simulator's conventions hold on every forwarded route -------------------------------


def test_every_forwarded_route_is_answered_checks_keys_and_is_recorded(stack: Stack) -> None:
    sim = stack.sim_app.state.sim
    good = {"authorization": f"Bearer {stack.sim_keys[0]}"}
    bad = {"authorization": "Bearer sk-not-a-key"}
    for rule in DEFAULT_ROUTES:
        path = rule.template.replace("{model}", "gpt-4o-mini")
        before = len(sim.requests)
        r = httpx2.request(rule.method, stack.sim_url + path, headers=bad)
        assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_api_key"), path
        assert r.headers["x-powered-by"] == "new-api"
        r = httpx2.request(rule.method, stack.sim_url + path, headers=good)
        # a valid key with no body: OpenAI's 400, never new-api's "Invalid URL" 404
        assert r.status_code in (200, 400), path
        assert "Invalid URL" not in r.text, path
        assert [q["path"] for q in sim.requests[before:]] == [path, path]


def test_faults_apply_to_the_new_routes(stack: Stack, sdk: Sdk) -> None:
    stack.sim_app.state.sim.add_fault(kind="status_503", path_prefix="/v1/images")
    with pytest.raises(openai.APIStatusError) as info:
        sdk(stack).images.generate(model="dall-e-2", prompt="p")
    assert info.value.status_code == 503
    assert len(sent(stack, "/v1/images/generations")) == 1
    assert sdk(stack).images.generate(model="dall-e-2", prompt="p").data


def test_gateway_sim_command_serves_the_new_routes() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sim", "--port", str(port), "--keys", "sk-cli-one"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx2.get(url + "/_sim/health").status_code == 200
        except httpx2.TransportError:
            return False

    try:
        wait_for(healthy, timeout=30)
        with openai.OpenAI(base_url=url + "/v1", api_key="sk-cli-one", max_retries=0) as client:
            done = client.responses.create(model="gpt-4o-mini", input="hi")
            completion = client.completions.create(model="m", prompt="hi")
            speech = client.audio.speech.create(model="tts-1", voice="alloy", input="abc")
        assert done.usage is not None
        assert done.usage.input_tokens == 1
        assert completion.choices[0].text == ANSWER
        assert len(speech.content) == 3 * audio.BYTES_PER_CHAR
    finally:
        stop_process(proc)
