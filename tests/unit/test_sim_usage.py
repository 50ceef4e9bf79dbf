"""The simulator's pure rules: token counting, the prompt cache, field checks, media bytes."""

from __future__ import annotations

import struct
import zlib

import pytest

from gateway.sim import audio, fields, images, tokens, usage


def test_a_token_is_four_characters_rounded_up() -> None:
    assert [tokens.count("x" * n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    assert tokens.answer(3) == ["word0 ", "word1 ", "word2 "]


def test_message_and_input_shapes_are_counted() -> None:
    messages = [
        {"role": "system", "content": "abcd"},
        {"role": "user", "content": [{"type": "text", "text": "abcdefgh"}, {"type": "image_url"}]},
        {"type": "function_call_output", "output": "abc"},
        "not a message",
    ]
    assert tokens.messages_tokens(messages) == 1 + 2 + tokens.IMAGE_TOKENS + 1 + 4
    assert tokens.messages_tokens("abcde") == 2
    assert tokens.messages_tokens(None) == 0


def test_legacy_prompts_and_token_ids() -> None:
    assert tokens.prompt_pieces("a") == ["a"]
    assert tokens.prompt_pieces([1, 2, 3]) == [[1, 2, 3]]
    assert tokens.prompt_pieces(["a", "b"]) == ["a", "b"]
    assert tokens.prompt_pieces([[1], [2, 3]]) == [[1], [2, 3]]
    assert tokens.prompt_pieces(None) == []
    assert [tokens.piece_tokens(p) for p in ("abcde", [1, 2, 3])] == [2, 3]


@pytest.mark.parametrize(
    ("model", "reasoning"),
    [
        ("o1", True),
        ("o4-mini", True),
        ("gpt-5", True),
        ("gpt-5.1-mini", True),
        ("gpt-4o-mini", False),
        ("omni-moderation-latest", False),
        ("gpt-50", False),
    ],
)
def test_reasoning_models(model: str, reasoning: bool) -> None:
    assert tokens.is_reasoning(model) is reasoning
    assert tokens.reasoning_tokens(model, 5) == (10 if reasoning else 0)


def test_prompt_cache_hits_long_repeats_per_model_and_forgets_the_oldest() -> None:
    cache = usage.PromptCache(entries=2)
    assert cache.cached_tokens("m", "p", 1023) == 0
    assert cache.cached_tokens("m", "p", 1023) == 0  # too short to be cached at all
    assert cache.cached_tokens("m", "p", 1300) == 0
    assert cache.cached_tokens("m", "p", 1300) == 1280
    assert cache.cached_tokens("other", "p", 1300) == 0
    assert cache.cached_tokens("m", "q", 1300) == 0  # evicts ("m", "p")
    assert cache.cached_tokens("m", "p", 1300) == 0


def test_usage_totals_include_reasoning() -> None:
    chat = usage.chat(10, 4, cached=0, reasoning=8)
    assert (chat["completion_tokens"], chat["total_tokens"]) == (12, 22)
    assert chat["completion_tokens_details"]["reasoning_tokens"] == 8
    resp = usage.responses(10, 4, cached=2, reasoning=8)
    assert (resp["output_tokens"], resp["total_tokens"]) == (12, 22)
    assert resp["input_tokens_details"]["cached_tokens"] == 2


def test_integer_fields_accept_multipart_strings_and_refuse_the_rest() -> None:
    assert fields.integer({"n": "3"}, "n", 1, low=1) == 3
    assert fields.integer({}, "n", 1, low=1) == 1
    for bad, code in [
        (True, "invalid_type"),
        (1.5, "invalid_type"),
        ("x", "invalid_type"),
        (0, "invalid_value"),
        (11, "invalid_value"),
    ]:
        with pytest.raises(fields.BadField) as info:
            fields.integer({"n": bad}, "n", 1, low=1, high=10)
        assert (info.value.param, info.value.code) == ("n", code)
    with pytest.raises(fields.BadField) as missing:
        fields.text({"model": ""}, "model")
    assert missing.value.code == "missing_required_parameter"
    with pytest.raises(fields.BadField):
        fields.choice({"f": "mp4"}, "f", ("mp3",), "mp3")


def test_png_is_valid_and_coloured_by_its_seed() -> None:
    data = images.png("seed")
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    (length,) = struct.unpack(">I", data[8:12])
    ihdr = data[12 : 16 + length]
    assert struct.unpack(">I", data[16 + length : 20 + length])[0] == zlib.crc32(ihdr)
    assert images.png("seed") == data != images.png("other")
    assert images.output_tokens("high", "1024x1536") == 6240
    assert images.output_tokens("odd", "9x9") == 1056


def test_audio_lengths() -> None:
    assert audio.speech_bytes("hello") == 5 * audio.BYTES_PER_CHAR
    assert audio.duration_of(audio.BYTES_PER_SECOND * 3) == 3.0
    assert audio.transcript(0.0) == "word0"  # never empty
    assert len(audio.transcript(4.0).split()) == 10
