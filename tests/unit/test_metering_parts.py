"""Metering's pure parts: prices and costs, the estimate, usage read from answers and from
streams, the ledger's rows and CSV, and multipart fields."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import InvalidRequest
from gateway.metering import answers, kinds, ledger, streams
from gateway.metering.estimate import _MEDIA, _MEDIA_WORDS, estimate
from gateway.metering.forms import form_fields
from gateway.metering.prices import ModelPrice, PriceTable, Usage, allowed, exact
from gateway.metering.reconcile import KeyBill, SpendByKey, billed_quota
from gateway.metering.streams import UsageTap
from gateway.proxy import body_policy
from gateway.upstream import json_keys
from gateway.upstream.json_keys import fold, may_spell

prices = st.decimals(min_value=0, max_value=1000, places=4).map(lambda d: Fraction(str(d)))
counts = st.integers(min_value=0, max_value=10**9)


@given(inp=counts, out=counts, pin=prices, pout=prices)
def test_token_cost_is_the_exact_amount_rounded_up_once(
    inp: int, out: int, pin: Fraction, pout: Fraction
) -> None:
    price = ModelPrice(input_per_million=pin, output_per_million=pout)
    money = Fraction(inp) * pin / 10**6 + Fraction(out) * pout / 10**6
    got = price.cost_units(Usage(input_tokens=inp, output_tokens=out))
    assert got == math.ceil(money * 10**6)
    assert Fraction(got, 10**6) - money < Fraction(1, 10**6)


@given(
    inp=counts,
    cached=counts,
    out=counts,
    real_out=counts,
    pin=prices,
    pcached=prices,
    pout=prices,
)
def test_the_estimate_price_bounds_any_usage_within_it(
    inp: int,
    cached: int,
    out: int,
    real_out: int,
    pin: Fraction,
    pcached: Fraction,
    pout: Fraction,
) -> None:
    price = ModelPrice(
        input_per_million=pin, cached_input_per_million=pcached, output_per_million=pout
    )
    bound = price.estimate_units(Usage(input_tokens=inp, output_tokens=out))
    real = Usage(input_tokens=inp, cached_tokens=min(cached, inp), output_tokens=min(real_out, out))
    assert price.cost_units(real) <= bound


@given(
    counts=st.tuples(counts, counts, counts, counts, st.integers(0, 50), st.integers(0, 3)),
    seconds=st.fractions(min_value=0, max_value=10**6, max_denominator=1000),
    p=st.tuples(prices, prices, prices, prices, prices, prices, prices),
)
def test_every_part_of_a_cost_is_exact_and_rounded_up_once(
    counts: tuple[int, int, int, int, int, int], seconds: Fraction, p: tuple[Fraction, ...]
) -> None:
    inp, cached, out, chars, images, requests = counts
    cached = min(cached, inp)
    price = ModelPrice(
        input_per_million=p[0],
        cached_input_per_million=p[1],
        output_per_million=p[2],
        per_request=p[3] / 1000,
        per_image={"*": p[4]},
        per_audio_second=p[5] / 1000,
        per_character=p[6] / 10**6,
    )
    money = (
        (inp - cached) * p[0] / 10**6
        + cached * p[1] / 10**6
        + out * p[2] / 10**6
        + requests * p[3] / 1000
        + images * p[4]
        + seconds * p[5] / 1000
        + chars * p[6] / 10**6
    )
    usage = Usage(
        input_tokens=inp,
        cached_tokens=cached,
        output_tokens=out,
        images=images,
        audio_seconds=seconds,
        characters=chars,
        requests=requests,
    )
    assert price.cost_units(usage) == math.ceil(money * 10**6)


def test_decimal_prices_are_what_was_written() -> None:
    assert exact(0.1) == Fraction(1, 10)
    p = ModelPrice(input_per_million=exact(0.15))
    assert p.cost_units(Usage(input_tokens=1000)) == 150


def test_image_prices_most_specific_first() -> None:
    p = ModelPrice(per_image={"1024x1024/hd": Fraction(8, 100), "1024x1024": Fraction(4, 100)})
    assert p.image_price("1024x1024", "hd") == Fraction(8, 100)
    assert p.image_price("1024x1024", "standard") == Fraction(4, 100)
    # a size the table does not name is charged the dearest entry, never nothing
    assert p.image_price("512x512", None) == Fraction(8, 100)
    assert p.cost_units(Usage(images=3), size="1024x1024", quality="hd") == 240_000


def test_price_table_exact_then_globs_in_order_then_loaded() -> None:
    a, b, c, d = (ModelPrice(per_request=Fraction(i)) for i in range(1, 5))
    table = PriceTable({"gpt-4o": a, "gpt-4o*": b, "gpt-*": c}, loaded={"claude": d})
    assert table.lookup("gpt-4o") is a
    assert table.lookup("gpt-4o-mini") is b
    assert table.lookup("gpt-5") is c
    assert table.lookup("claude") is d
    assert table.lookup("mistral") is None
    assert table.with_loaded({"mistral": d}).lookup("mistral") is d
    # The names a metric may carry as its model label: exact ones only, never a glob's match.
    assert [table.names(m) for m in ("gpt-4o", "claude", "gpt-4o-mini", "gpt-4o*", "x")] == [
        True,
        True,
        False,
        False,
        False,
    ]


def test_team_model_globs() -> None:
    assert allowed("anything", None)
    assert allowed("gpt-4o-mini", ("gpt-4o*",))
    assert not allowed("o4-mini", ("gpt-4o*",))
    assert not allowed("x", ())


def _est(kind: str, doc: dict[str, Any], price: ModelPrice | None = None) -> Any:
    body = json.dumps(doc).encode()
    return estimate(
        kind, doc, body, price, default_cap=4096, media_tokens=2000, max_audio_seconds=1500
    ), body


def test_chat_estimate_is_bytes_plus_media_plus_cap_times_n() -> None:
    doc = {
        "model": "m",
        "n": 3,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
    }
    est, body = _est(kinds.CHAT, doc)
    assert est.bound.input_tokens == len(body) + 2000
    assert est.bound.output_tokens == 300
    assert est.inject == {}
    # No cap: the model's own (or the default) is sent, so that the bound holds.
    est, _ = _est(kinds.CHAT, {"model": "m", "messages": []}, ModelPrice(max_output_tokens=77))
    assert (est.bound.output_tokens, est.inject) == (77, {"max_completion_tokens": 77})


@pytest.mark.parametrize("kind", [kinds.CHAT, kinds.RESPONSES])
def test_a_thinking_models_output_is_bounded_by_the_cap_the_upstream_raises_it_to(
    kind: str,
) -> None:
    """new-api's thinking adapter sends a "*-thinking" model max_tokens 1280 at least."""
    cap = "max_completion_tokens" if kind == kinds.CHAT else "max_output_tokens"
    est, _ = _est(kind, {"model": "claude-sonnet-4-thinking", cap: 1})
    assert est.bound.output_tokens == 1280
    est, _ = _est(kind, {"model": "claude-sonnet-4-thinking", cap: 5000})
    assert est.bound.output_tokens == 5000
    est, _ = _est(kind, {"model": "claude-sonnet-4", cap: 1})
    assert est.bound.output_tokens == 1


def test_completions_estimate_counts_prompts_and_best_of() -> None:
    est, _ = _est(kinds.COMPLETIONS, {"model": "m", "prompt": ["a", "b"], "best_of": 3})
    assert est.bound.output_tokens == 16 * 3 * 2  # the API's own default cap, sent explicitly
    assert est.inject == {"max_tokens": 16}
    est, _ = _est(kinds.COMPLETIONS, {"model": "m", "prompt": [1, 2, 3], "max_tokens": 5})
    assert (est.bound.output_tokens, est.inject) == (5, {})


def test_chat_with_both_caps_is_bounded_by_the_larger() -> None:
    doc = {"model": "m", "messages": [], "max_tokens": 900, "max_completion_tokens": 20}
    est, _ = _est(kinds.CHAT, doc)
    assert (est.bound.output_tokens, est.inject) == (900, {})


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "u"}},
        {"type": "input_image", "image_url": "u"},
        {"Image_URL": {"url": "u"}},  # no type, a spelling the upstream folds
        {"type": "INPUT_FILE", "file_url": "u"},
        {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
        {"type": "file", "file": {"file_data": ""}},
        {"type": "video_url", "video_url": {"url": "u"}},
        {"type": "input_video", "video_url": "u"},
        {"type": "audio_url", "audio_url": {"url": "u"}},
    ],
)
def test_each_media_part_adds_its_tokens_however_it_is_written(part: dict[str, Any]) -> None:
    # Read on a Responses input (a chat's audio input is refused: priced at audio rates).
    doc = {"model": "m", "input": [{"role": "user", "content": [part, part]}]}
    est, body = _est(kinds.RESPONSES, doc)
    assert est.bound.input_tokens == len(body) + 2 * 2000


def test_every_media_name_has_a_word_the_quick_scan_looks_for() -> None:
    assert all(any(w.decode() in name for w in _MEDIA_WORDS) for name in _MEDIA)


def test_an_escaped_media_key_is_still_counted() -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":[{"image\\u005furl":{}}]}]}'
    doc = json.loads(body)
    assert "image_url" in doc["messages"][0]["content"][0]
    est = estimate(
        kinds.CHAT, doc, body, None, default_cap=1, media_tokens=2000, max_audio_seconds=1
    )
    assert est.bound.input_tokens == len(body) + 2000


@pytest.mark.parametrize("kind", [kinds.CHAT, kinds.RESPONSES])
@pytest.mark.parametrize("tool", ["web_search", "file_search", "mcp", "image_generation"])
def test_hosted_tools_billed_outside_usage_are_refused(kind: str, tool: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        _est(kind, {"model": "m", "tools": [{"type": "function", "name": "f"}, {"type": tool}]})
    assert (err.value.code, err.value.param) == ("unsupported_parameter", "tools")
    est, _ = _est(kind, {"model": "m", "tools": [{"type": "function"}, {"type": "custom"}]})
    assert est.model == "m"


@pytest.mark.parametrize("kind", [kinds.CHAT, kinds.RESPONSES])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("web_search_options", {}),
        ("web_search_options", {"search_context_size": "high"}),
        ("service_tier", "priority"),
        ("service_tier", "flex"),
        ("service_tier", 1),
        ("service_tier", {}),
        ("service_tier", ["auto"]),
    ],
)
def test_fields_billed_apart_from_the_usage_are_refused(kind: str, field: str, value: Any) -> None:
    with pytest.raises(InvalidRequest) as err:
        _est(kind, {"model": "m", field: value})
    assert (err.value.code, err.value.param) == ("unsupported_parameter", field)


@pytest.mark.parametrize("tier", [None, "auto", "default"])
def test_the_list_prices_service_tiers_pass(tier: str | None) -> None:
    est, _ = _est(kinds.CHAT, {"model": "m", "service_tier": tier, "web_search_options": None})
    assert est.model == "m"


def test_other_estimates() -> None:
    est, _ = _est(kinds.IMAGES, {"prompt": "p", "n": 4, "size": "512x512"})
    assert (est.model, est.bound.images, est.size) == ("dall-e-2", 4, "512x512")
    # DALL-E's own defaults when a call names no size or quality: priced as made
    est, _ = _est(kinds.IMAGES, {"model": "dall-e-3", "prompt": "p"})
    assert (est.size, est.quality) == ("1024x1024", "standard")
    est, _ = _est(kinds.IMAGES, {"model": "gpt-image-1", "prompt": "p"})
    assert (est.size, est.quality) == (None, None)
    est, _ = _est(kinds.SPEECH, {"model": "tts-1", "input": "héllo"})
    assert est.bound.characters == 5
    est, _ = _est(kinds.MODERATIONS, {"input": "x"})
    assert est.model == "omni-moderation-latest"
    est, _ = _est(kinds.REQUEST, {})
    assert (est.model, est.bound) == ("-", Usage())


@pytest.mark.parametrize(
    ("kind", "doc", "param", "code"),
    [
        (kinds.CHAT, {"messages": []}, "model", "missing_required_parameter"),
        (kinds.CHAT, {"model": ""}, "model", "invalid_type"),
        (kinds.CHAT, {"model": "m", "n": True}, "n", "invalid_type"),
        (kinds.CHAT, {"model": "m", "n": 129}, "n", "invalid_value"),
        (
            kinds.CHAT,
            {"model": "m", "max_completion_tokens": 0},
            "max_completion_tokens",
            "invalid_value",
        ),
        (
            kinds.RESPONSES,
            {"model": "m", "max_output_tokens": 1.5},
            "max_output_tokens",
            "invalid_type",
        ),
        # the upstream's Go parser drops a 0 (omitempty): the model would write 16 or more
        (kinds.COMPLETIONS, {"model": "m", "max_tokens": 0}, "max_tokens", "invalid_value"),
        (kinds.IMAGES, {"n": 11}, "n", "invalid_value"),
        (kinds.SPEECH, {"model": "tts-1"}, "input", "invalid_type"),
    ],
)
def test_bad_estimate_fields(kind: str, doc: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        _est(kind, doc)
    assert (err.value.param, err.value.code) == (param, code)


def test_usage_from_json_answers() -> None:
    chat = {
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 4},
        }
    }
    got = answers.from_json(kinds.CHAT, json.dumps(chat).encode())
    assert got == Usage(input_tokens=10, cached_tokens=4, output_tokens=5)
    resp = {"usage": {"input_tokens": 7, "output_tokens": 2}}
    assert answers.from_json(kinds.RESPONSES, json.dumps(resp).encode()) == Usage(
        input_tokens=7, output_tokens=2
    )
    emb = {"usage": {"prompt_tokens": 3, "total_tokens": 3}}
    assert answers.from_json(kinds.EMBEDDINGS, json.dumps(emb).encode()) == Usage(input_tokens=3)
    imgs = {"data": [{"url": "u"}, {"url": "v"}]}
    assert answers.from_json(kinds.IMAGES, json.dumps(imgs).encode()) == Usage(images=2)
    whisper = {"text": "t", "usage": {"type": "duration", "seconds": 2.5}}
    assert answers.from_json(kinds.TRANSCRIPTION, json.dumps(whisper).encode()) == Usage(
        audio_seconds=Fraction(5, 2)
    )
    # A transcription that says nothing of its length (text format) reports nothing.
    assert answers.from_json(kinds.TRANSCRIPTION, b"hello") is None
    assert answers.from_json(kinds.TRANSCRIPTION, b'{"text": "t"}') is None
    assert answers.from_json(kinds.TRANSCRIPTION, b'{"text": "t", "duration": 3}') == Usage(
        audio_seconds=Fraction(3)
    )
    assert answers.from_json(kinds.CHAT, b"{}") is None
    assert answers.from_json(kinds.CHAT, b"not json") is None
    # A count that is no whole number of tokens says nothing reliable: the estimate, never 0.
    for bad in (-5, True, 9.0, "9", [9]):
        odd = {"usage": {"prompt_tokens": bad, "completion_tokens": 12}}
        assert answers.from_json(kinds.CHAT, json.dumps(odd).encode()) is None
    nulls = {"usage": {"prompt_tokens": 9, "completion_tokens": 12, "input_tokens": None}}
    assert answers.from_json(kinds.CHAT, json.dumps(nulls).encode()) == Usage(
        input_tokens=9, output_tokens=12
    )


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.integers(min_value=-(2**64), max_value=2**65)
    | st.floats()
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def _read(read: Any, data: bytes) -> tuple[str, Any]:
    try:
        return "ok", read(data)
    except RecursionError:
        return "deep", None
    except ValueError:
        return "refused", None


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same types all the way down (1 == 1.0 == True would hide a float
    read where the standard parser keeps an integer), NaN equal to itself."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@given(
    _JSON,
    st.sampled_from([{}, {"ensure_ascii": False}, {"separators": (",", ":")}, {"indent": 1}]),
)
def test_answers_are_read_as_the_standard_parser_reads_them(doc: Any, style: Any) -> None:
    """``answers.loads`` is orjson where orjson agrees with ``json.loads``, which reads the
    rest: every document means what it means to the standard library (integers past 64 bits
    included, which orjson alone would make floats), and what it refuses raises the same."""
    data = json.dumps(doc, **style).encode()
    got, want = _read(answers.loads, data), _read(json.loads, data)
    assert got[0] == want[0] == "ok"
    assert _same(got[1], want[1])


@pytest.mark.parametrize(
    "data",
    [
        b'{"usage": {"prompt_tokens": 123456789012345678901234567890}}',
        b'{"a": -9999999999999999999, "b": [-9223372036854775809]}',
        b'{"a":18446744073709551616}',
        b'{"a": 1.0000000000000000000000001, "b": 1e-0000000000000000000001}',
        b'{"a": NaN, "b": -Infinity}',
        b'{"a": "\\ud800"}',
        b'\xef\xbb\xbf{"a": 1}',
        '{"a": "\u00e9"}'.encode("utf-16"),
        b'{"a": 1, "a": 2}',
        b"[" * 5000 + b"]" * 5000,
        b'{"a": 1',
        b"\xff",
        b"",
    ],
)
def test_what_orjson_reads_otherwise_is_read_by_the_standard_parser(data: bytes) -> None:
    got, want = _read(answers.loads, data), _read(json.loads, data)
    assert got[0] == want[0]
    assert _same(got[1], want[1])


def test_digits_inside_a_string_are_read_by_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long run of digits in a string (an answer's id) is no number orjson could misread:
    the standard parser, five times slower, is not called for it."""

    def slow(data: Any) -> Any:
        raise AssertionError("read by the standard parser")

    monkeypatch.setattr(json, "loads", slow)
    body = b'{"id":"chatcmpl-bench0000000000000000000000","usage":{"prompt_tokens":9}}'
    assert answers.loads(body) == {
        "id": "chatcmpl-bench0000000000000000000000",
        "usage": {"prompt_tokens": 9},
    }


def test_a_huge_usage_count_is_read_as_the_integer_it_is() -> None:
    big = 10**25
    body = json.dumps({"usage": {"prompt_tokens": big, "completion_tokens": 1}}).encode()
    assert answers.loads(body) == {"usage": {"prompt_tokens": big, "completion_tokens": 1}}


@pytest.mark.parametrize("count", [answers.MAX_COUNT + 1, 2**63, 10**25])
def test_a_count_no_call_reaches_is_charged_the_estimate(count: int) -> None:
    body = json.dumps({"usage": {"prompt_tokens": count, "completion_tokens": 1}}).encode()
    assert answers.from_json(kinds.CHAT, body) is None
    at_most = json.dumps({"usage": {"prompt_tokens": answers.MAX_COUNT}}).encode()
    assert answers.from_json(kinds.CHAT, at_most) == Usage(input_tokens=answers.MAX_COUNT)


@pytest.mark.parametrize("kind", [kinds.CHAT, kinds.COMPLETIONS, kinds.RESPONSES, kinds.EMBEDDINGS])
@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        {"input_tokens": 0, "output_tokens": 0},
        {"prompt_tokens": 0},
    ],
)
def test_usage_of_nothing_at_all_is_charged_the_estimate(kind: str, usage: dict[str, int]) -> None:
    """new-api bills a count of its own when its channel reports zeros: never nothing."""
    assert answers.from_usage(kind, usage) is None
    assert answers.from_usage(kind, {**usage, "prompt_tokens": 1}) == Usage(input_tokens=1)


@pytest.mark.parametrize("seconds", ["600", -600, True, float("nan"), float("inf"), 10**7])
def test_a_duration_that_is_no_duration_is_charged_the_estimate(seconds: Any) -> None:
    as_usage = {"text": "hi", "usage": {"type": "duration", "seconds": seconds}}
    as_field = {"text": "hi", "duration": seconds}
    for doc in (as_usage, as_field):
        assert answers.from_json(kinds.TRANSCRIPTION, json.dumps(doc).encode()) is None
    ok = {"text": "hi", "duration": 12.5}
    got = answers.from_json(kinds.TRANSCRIPTION, json.dumps(ok).encode())
    assert got == Usage(audio_seconds=Fraction(25, 2))


@pytest.mark.parametrize("kind", [kinds.CHAT, kinds.COMPLETIONS, kinds.RESPONSES])
def test_usage_in_both_namings_counts_the_larger_of_each(kind: str) -> None:
    """new-api writes all four names, 0 where its channel filled only one: a chat answer
    converted from Claude says input_tokens but output_tokens 0 (it was charged input only)."""
    claude = {
        "prompt_tokens": 1200,
        "completion_tokens": 3000,
        "total_tokens": 4200,
        "prompt_tokens_details": {"cached_tokens": 200},
        "input_tokens": 1200,
        "output_tokens": 0,
    }
    want = Usage(input_tokens=1200, cached_tokens=200, output_tokens=3000)
    assert answers.from_usage(kind, claude) == want
    flipped: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": 0, "input_tokens": 1200}
    flipped |= {"output_tokens": 3000, "input_tokens_details": {"cached_tokens": 200}}
    assert answers.from_usage(kind, flipped) == want
    assert answers.from_usage(kinds.EMBEDDINGS, claude) == Usage(
        input_tokens=1200, cached_tokens=200
    )


@given(
    counts=st.fixed_dictionaries(
        {},
        optional={
            name: st.integers(min_value=0, max_value=10**9)
            for name in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens")
        },
    ).filter(bool)
)
def test_no_naming_reports_less_than_either_says(counts: dict[str, int]) -> None:
    got = answers.from_usage(kinds.CHAT, counts)
    if not any(counts.values()):  # zeros say nothing: the estimate (see the test above)
        assert got is None
        return
    assert got is not None
    assert got.input_tokens == max(counts.get("prompt_tokens", 0), counts.get("input_tokens", 0))
    assert got.output_tokens == max(
        counts.get("completion_tokens", 0), counts.get("output_tokens", 0)
    )


def _chat_stream(with_usage_nulls: bool) -> bytes:
    extra = {"usage": None} if with_usage_nulls else {}
    events = [
        {"choices": [{"index": 0, "delta": {"content": "a 'usage':null \\n\\n"}}], **extra},
        {"choices": [{"index": 0, "delta": {"content": "b"}}], **extra},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    ]
    out = b"".join(
        b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events
    )
    return out + b"data: [DONE]\n\n"


def _feed(tap: UsageTap, data: bytes, cuts: list[int]) -> bytes:
    out = []
    last = 0
    for cut in sorted(set(cuts)):
        out.append(tap.feed(data[last:cut]))
        last = cut
    out.append(tap.feed(data[last:]))
    out.append(tap.flush())
    return b"".join(out)


@given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_tap_hides_usage_whatever_the_chunking(cuts: list[int]) -> None:
    data = _chat_stream(with_usage_nulls=True)
    tap = UsageTap(kinds.CHAT, hide_usage=True)
    out = _feed(tap, data, [c for c in cuts if c < len(data)])
    assert tap.usage == Usage(input_tokens=3, output_tokens=2)
    # What the caller would have received had it not been asked for: no usage at all.
    lines = [ln for ln in out.split(b"\n\n") if ln]
    docs = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert [d["choices"][0]["delta"]["content"] for d in docs] == ["a 'usage':null \\n\\n", "b"]
    assert all("usage" not in d for d in docs)
    assert lines[-1] == b"data: [DONE]"


@given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_tap_passes_usage_through_unchanged_when_asked(cuts: list[int]) -> None:
    data = _chat_stream(with_usage_nulls=True)
    tap = UsageTap(kinds.CHAT, hide_usage=False)
    assert _feed(tap, data, [c for c in cuts if c < len(data)]) == data
    assert tap.usage == Usage(input_tokens=3, output_tokens=2)


def test_tap_reads_responses_completed() -> None:
    done = {
        "type": "response.completed",
        "response": {"usage": {"input_tokens": 4, "output_tokens": 1}},
    }
    data = b"event: response.created\ndata: {}\n\n" + (
        b"event: response.completed\ndata: " + json.dumps(done).encode() + b"\n\n"
    )
    tap = UsageTap(kinds.RESPONSES, hide_usage=True)
    assert _feed(tap, data, [30, 31, 90]) == data
    assert tap.usage == Usage(input_tokens=4, output_tokens=1)


def test_tap_reads_a_responses_usage_only_from_an_event_that_ends_the_stream() -> None:
    """An in-progress event whose response repeats the caller's metadata (here a key naming
    an end) is not the response's end, whatever usage it carries."""
    during = {
        "type": "response.in_progress",
        "response": {
            "metadata": {"response.completed": "x"},
            "usage": {"input_tokens": 1, "output_tokens": 1},
        },
    }
    data = b"data: " + json.dumps(during).encode() + b"\n\n"
    tap = UsageTap(kinds.RESPONSES, hide_usage=False)
    assert _feed(tap, data, []) == data
    assert tap.usage is None


def test_tap_reads_events_whatever_line_endings_they_mix() -> None:
    usage = b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}'
    data = (
        b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\r\n\r\n'
        b'data: {"choices":[{"delta":{"content":"b"}}],"usage":null}\n\n'
        b"data: " + usage + b"\r\n\n"
        b"data: [DONE]\n\r\n"
    )
    for cuts in ([], [5, 60, 61, 62, 130], list(range(len(data)))):
        tap = UsageTap(kinds.CHAT, hide_usage=True)
        out = _feed(tap, data, cuts)
        assert tap.usage == Usage(input_tokens=3, output_tokens=2)
        assert b"usage" not in out
        assert out.count(b"data: ") == 3


def test_tap_reads_and_hides_usage_on_a_chunk_that_has_choices() -> None:
    last = {
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 1},
    }
    data = b"data: " + json.dumps(last, separators=(", ", " : ")).encode() + b"\n\ndata: [DONE]\n\n"
    tap = UsageTap(kinds.CHAT, hide_usage=True)
    out = _feed(tap, data, [])
    assert tap.usage == Usage(input_tokens=4, output_tokens=1)
    first = json.loads(out.split(b"\n\n")[0][6:])
    assert first == {"choices": last["choices"]}
    shown = UsageTap(kinds.CHAT, hide_usage=False)
    assert _feed(shown, data, [7]) == data
    assert shown.usage == Usage(input_tokens=4, output_tokens=1)


def _during_and_end(tap: UsageTap, data: bytes, cuts: list[int]) -> tuple[bytes, bytes]:
    """What the tap passed on while the stream ran, and what it gave back once it ended."""
    out = []
    last = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        out.append(tap.feed(data[last:cut]))
        last = cut
    return b"".join(out), tap.flush()


@given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12), hide=st.booleans())
def test_tap_holds_a_chat_streams_done_until_the_stream_has_ended(
    cuts: list[int], hide: bool
) -> None:
    data = _chat_stream(with_usage_nulls=True)
    tap = UsageTap(kinds.CHAT, hide_usage=hide)
    during, end = _during_and_end(tap, data, [c for c in cuts if c < len(data)])
    assert end == b"data: [DONE]\n\n"
    # Everything before it went on as it came: both chunks, and the usage chunk when asked.
    assert b"[DONE]" not in during
    assert during.count(b"data: ") == (2 if hide else 3)
    assert tap.usage == Usage(input_tokens=3, output_tokens=2)


def test_tap_holds_nothing_for_done_written_inside_content() -> None:
    chunk = {"choices": [{"index": 0, "delta": {"content": "data: [DONE]\n\ndata:[DONE]"}}]}
    event = b"data: " + json.dumps(chunk).encode() + b"\n\n"
    tap = UsageTap(kinds.CHAT, hide_usage=True)
    assert tap.feed(event) == event
    assert tap.feed(b"data:[DONE]\r\n\r\n") == b""  # without the space, CRLF: still the end
    assert tap.flush() == b"data:[DONE]\r\n\r\n"


@pytest.mark.parametrize(
    ("kind", "last"),
    [
        (kinds.RESPONSES, "response.completed"),
        (kinds.RESPONSES, "response.incomplete"),
        (kinds.RESPONSES, "response.failed"),
        (kinds.TRANSCRIPTION, "transcript.text.done"),
    ],
)
def test_tap_holds_the_last_event_of_other_streams(kind: str, last: str) -> None:
    def event(name: str) -> bytes:
        return f"event: {name}\ndata: ".encode() + json.dumps({"type": name}).encode() + b"\n\n"

    first = event("response.created") + event("transcript.text.delta")
    data = first + event(last) + b"data: [DONE]\n\n"
    during, end = _during_and_end(UsageTap(kind, hide_usage=True), data, [9, len(first) + 3])
    assert (during, end) == (first, event(last) + b"data: [DONE]\n\n")


@pytest.mark.parametrize("with_event_lines", [True, False])
def test_tap_judges_an_event_by_its_type_not_by_what_it_mentions(with_event_lines: bool) -> None:
    def event(kind: str, **doc: Any) -> bytes:
        head = f"event: {kind}\n" if with_event_lines else ""
        return (head + "data: " + json.dumps({"type": kind, **doc}) + "\n\n").encode()

    # The first events repeat the caller's metadata, which may spell any type at all.
    echo = {"id": "r", "metadata": {"stage": "response.completed", "next": "response.failed"}}
    created = event("response.created", response=echo)
    delta = event("response.output_text.delta", delta="response.completed")
    done = event("response.completed", response={**echo, "usage": {"input_tokens": 2}})
    tap = UsageTap(kinds.RESPONSES, hide_usage=True)
    assert tap.feed(created) == created
    assert tap.feed(delta) == delta
    assert tap.feed(done) == b""
    assert tap.flush() == done
    assert tap.usage == Usage(input_tokens=2)


def test_tap_lets_go_of_an_end_the_upstream_keeps_writing_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(streams, "MAX_EVENT", 64)
    tap = UsageTap(kinds.CHAT, hide_usage=False)
    done, after = b"data: [DONE]\n\n", b'data: {"choices":[]}\n\n'
    assert tap.feed(b'data: {"a":1}\n\n' + done) == b'data: {"a":1}\n\n'
    assert tap.feed(after) == b""
    assert tap.feed(after * 2) == done + after * 3  # past the bound: all of it, at once
    assert tap.feed(after) == after  # and from then on, as it comes
    assert tap.flush() == b""


def _ended(tap: UsageTap) -> Usage | None:
    tap.flush()
    return tap.usage


def test_tap_counts_streamed_images_once_the_stream_has_ended() -> None:
    def event(kind: str) -> bytes:
        return f"event: {kind}\ndata: ".encode() + json.dumps({"type": kind}).encode() + b"\n\n"

    data = (
        event("image_generation.partial_image")
        + event("image_generation.completed")
        + event("image_generation.completed")
    )
    tap = UsageTap(kinds.IMAGES, hide_usage=False)
    assert b"".join(tap.feed(data[i : i + 7]) for i in range(0, len(data), 7)) == data
    assert tap.usage is None  # a stream cut here may have cost more: not final yet
    assert _ended(tap) == Usage(images=2)
    edits = UsageTap(kinds.IMAGE_UPLOAD, hide_usage=False)
    edits.feed(event("image_edit.completed"))
    assert _ended(edits) == Usage(images=1)
    nothing = UsageTap(kinds.IMAGES, hide_usage=False)
    nothing.feed(event("error"))
    assert _ended(nothing) is None  # no image seen: the estimate is charged


def _chunk(usage: Any, choices: Any = ()) -> bytes:
    doc = {"id": "c", "object": "chat.completion.chunk", "choices": list(choices), "usage": usage}
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def test_a_usage_without_token_names_is_still_hidden_from_a_caller_who_did_not_ask() -> None:
    tap = UsageTap(kinds.CHAT, hide_usage=True)
    sent = tap.feed(_chunk({"total_tokens": 12}) + b"data: [DONE]\n\n") + tap.flush()
    assert b'"usage"' not in sent
    assert sent.endswith(b"data: [DONE]\n\n")
    assert tap.usage is None  # nothing readable: the estimate


def test_a_last_event_without_its_blank_line_is_read_and_ended() -> None:
    """The upstream closed right after its usage chunk, no blank line: the usage was neither
    charged (the estimate was) nor hidden."""
    usage = {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
    hidden = UsageTap(kinds.CHAT, hide_usage=True)
    sent = hidden.feed(_chunk(None, [{"index": 0, "delta": {"content": "hi"}}]))
    sent += hidden.feed(_chunk(usage).rstrip(b"\n")) + hidden.flush()
    assert b'"usage"' not in sent
    assert hidden.usage == Usage(input_tokens=9, output_tokens=12)
    shown = UsageTap(kinds.CHAT, hide_usage=False)
    out = shown.feed(_chunk(usage).rstrip(b"\n")) + shown.flush()
    assert out == _chunk(usage)
    assert shown.usage == Usage(input_tokens=9, output_tokens=12)


def test_a_later_usage_never_lowers_what_an_earlier_one_reported() -> None:
    real = {"prompt_tokens": 900, "completion_tokens": 120, "total_tokens": 1020}
    zeros = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    tap = UsageTap(kinds.CHAT, hide_usage=False)
    tap.feed(_chunk(real) + _chunk(zeros) + b"data: [DONE]\n\n")
    tap.flush()
    assert tap.usage == Usage(input_tokens=900, output_tokens=120)


@given(
    st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6)),
        min_size=1,
        max_size=4,
    )
)
def test_reports_combined_charge_no_less_than_any_of_them(reports: list[Any]) -> None:
    price = ModelPrice(
        input_per_million=Fraction(3),
        cached_input_per_million=Fraction(1),
        output_per_million=Fraction(5),
    )
    combined = None
    usages = [
        Usage(input_tokens=i, cached_tokens=min(c, i), output_tokens=o) for i, c, o in reports
    ]
    for u in usages:
        combined = answers.most(combined, u)
    assert combined is not None
    assert all(price.cost_units(combined) >= price.cost_units(u) for u in usages)


def test_a_streamed_image_too_long_to_read_leaves_the_count_to_the_estimate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A large picture's completed event (base64, several MiB) passes on unread: it may have
    been one more image than the tap counted, so the call is charged its estimate (n images),
    never the smaller count of the images it could read."""
    monkeypatch.setattr(streams, "MAX_EVENT", 256)
    small = b'event: image_generation.completed\ndata: {"type":"image_generation.completed"}\n\n'
    large = (
        b"event: image_generation.completed\n"
        + b'data: {"type":"image_generation.completed","b64_json":"'
        + b"A" * 1000
        + b'"}\n\n'
    )
    tap = UsageTap(kinds.IMAGES, hide_usage=False)
    sent = b"".join(tap.feed(part) for part in (small, large[:400], large[400:]))
    assert sent + tap.flush() == small + large  # all of it reaches the caller
    assert tap.usage is None
    alone = UsageTap(kinds.IMAGES, hide_usage=False)
    alone.feed(small + small)
    assert _ended(alone) == Usage(images=2)  # every event read: the count is exact


def test_ledger_rows_group_and_scale() -> None:
    day = ledger.days(
        __import__("datetime").date(2026, 12, 1), __import__("datetime").date(2026, 12, 2)
    )
    a = ledger.entries("alice", "gpt-4o", "", Usage(input_tokens=10, output_tokens=2), 150)
    b = ledger.entries("bob x", "gpt-4o", "proj", Usage(audio_seconds=Fraction(3, 2)), 5)
    rows = ledger.rows([("t", day[0], a), ("t", day[1], b), ("t", day[1], a)], ["model"])
    assert rows == [
        {
            "model": "gpt-4o",
            "requests": 3,
            "input_tokens": 20,
            "cached_tokens": 0,
            "output_tokens": 4,
            "images": 0,
            "audio_seconds": 1.5,
            "video_seconds": 0,
            "spend": 0.000305,
        }
    ]
    by_user = ledger.rows([("t", day[1], b)], ["user", "tag", "day"])
    assert [(r["user"], r["tag"], r["day"]) for r in by_user] == [("bob x", "proj", "2026-12-02")]
    csv = ledger.to_csv(
        ledger.rows([("t", day[0], ledger.entries("=cmd()", "m", "", Usage(), 0))], ["user"]),
        ["user"],
    )
    assert csv.splitlines()[1].startswith("'=cmd()")


FORM = "multipart/form-data; boundary=bb"
END = b"--bb--\r\n"


def _form(*parts: tuple[str, str | None, bytes]) -> bytes:
    out = b""
    for name, filename, value in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--bb\r\nContent-Disposition: {disp}\r\n\r\n".encode() + value + b"\r\n"
    return out + b"--bb--\r\n"


def test_form_fields_reads_what_the_estimate_needs_and_skips_files() -> None:
    body = _form(
        ("model", None, b"whisper-1"), ("file", "a.wav", b"\x00" * 5000), ("n", None, b"2")
    )
    assert form_fields(body, "multipart/form-data; boundary=bb") == {"model": "whisper-1", "n": "2"}


def _part(headers: str, value: bytes) -> bytes:
    return f"--bb\r\n{headers}\r\n\r\n".encode() + value + b"\r\n"


def test_quoted_values_are_unquoted_as_go_unquotes_them() -> None:
    """Go ends a quoted value at the quote after an escaped backslash (python-multipart's
    reader read on to the next quote, hiding the parameters after it), and keeps a path's
    backslashes in a filename (python-multipart dropped them, making the file a value)."""
    hidden = _part('Content-Disposition: form-data; x="a\\\\"; name="model"', b"gpt-image-1")
    with pytest.raises(InvalidRequest) as err:
        form_fields(
            hidden + _part('Content-Disposition: form-data; name="model"', b"x") + END, FORM
        )
    assert "twice" in err.value.message
    path = _part('Content-Disposition: form-data; name="model"; filename="C:\\\\"', b"w")
    assert form_fields(path + END, FORM) == {}  # a file to Go, so no model here either
    kept = _part('Content-Disposition: form-data; name="\\model"', b"m")  # Go keeps the backslash
    with pytest.raises(InvalidRequest):
        form_fields(kept + END, FORM)


def test_form_fields_read_parts_as_the_upstream_does() -> None:
    body = (
        _part('Content-Disposition: form-data; name="n"; filename=""', b"7")  # a value to Go
        + _part("Content-Disposition: form-data ;name = size ; ", b"256x256")  # blanks, ";"
        + _part('Content-Disposition: form-data; name="f"; filename="a \\"b\\"; c.png"', b"x")
        + _part('Content-Disposition: attachment; name="model"', b"x")  # no form field to Go
        + _part('content-disposition: form-data; name="model"', b"m")
        + b"--bb--\r\n"
    )
    assert form_fields(body, FORM) == {"n": "7", "size": "256x256", "model": "m"}


@pytest.mark.parametrize(
    "part",
    [
        _part(
            'Content-Disposition: form-data; name="x"\r\nContent-Disposition: form-data; name="n"',
            b"9",
        ),
        _part("Content-Disposition: form-data; name*=utf-8''n", b"9"),
        # Go joins RFC 2231 continuations into "quality"; python-multipart drops the name.
        _part('Content-Disposition: form-data; name*0="qual"; name*1="ity"', b"high"),
        # Go cannot parse this disposition and drops the part; python-multipart reads it.
        _part('Content-Disposition: form-data; name="quality"; x', b"low"),
        _part('Content-Disposition: form-data; name="quality" x', b"low"),
        _part('Content-Disposition: form-data; name="quality"; ;', b"low"),
        _part("Content-Disposition: form-data; name=quality=low", b"low"),
        _part('Content-Disposition: form-data; name="qu\\ality"', b"low"),
        _part('Content-Disposition: form-data; name="n"\r\n\tx="y"', b"9"),
        _part('Content-Disposition: form-data; name="n"; NAME="model"', b"9"),
        _part(
            'Content-Disposition: form-data; name="n"\r\nContent-Transfer-Encoding: '
            "quoted-printable",
            b"=39",
        ),
    ],
)
def test_forms_the_two_parsers_could_read_differently_are_refused(part: bytes) -> None:
    with pytest.raises(InvalidRequest) as err:
        form_fields(part + b"--bb--\r\n", FORM)
    assert err.value.code == "invalid_form"


@pytest.mark.parametrize(
    ("body", "ctype", "code"),
    [
        (_form(("model", None, b"a"), ("model", None, b"b")), FORM, "invalid_form"),
        (_form(("model", None, b"a"))[:-8], FORM, "invalid_form"),
        (b"x", "multipart/form-data", "invalid_form"),
        (b"x", "text/plain", "unsupported_media_type"),
        (
            b"x",
            "application/x-www-form-urlencoded; x=multipart/form-data",
            "unsupported_media_type",
        ),
        (_form(("model", None, b"a")), FORM + "; boundary*=utf-8''cc", "invalid_form"),
        (_form(("model", None, b"a")), FORM + "; Boundary=cc", "invalid_form"),
        (_form(("model", None, b"a")), FORM + "; x", "invalid_form"),
        (_form(("model", None, b"a")), "multipart/form-data; boundary=b b", "invalid_form"),
        (_form(("model", None, b"m" * 2000)), FORM, "invalid_form"),
    ],
)
def test_bad_forms(body: bytes, ctype: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        form_fields(body, ctype)
    assert err.value.code == code


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"messages":[{"content":"hi"}]}', False),
        (b'{"x":{"Image_URL":1}}', True),  # case aside
        (b'{"x":{"im\\u0061ge_url":1}}', True),  # an escape can hide a letter
        (b'{"x":{"\xc5\xbfile":1}}', True),  # so can a letter the upstream folds
    ],
)
def test_a_body_skips_the_walk_only_when_it_cannot_spell_the_words(
    body: bytes, expected: bool
) -> None:
    assert may_spell(body, (b"image", b"file")) is expected


def test_folded_keys_are_the_ascii_names_the_upstream_reads() -> None:
    keys = ("Store", "\u017ftore", "qual\u0131ty", "\u212aey", "f\u0130le_id", "名前")
    assert [fold(k) for k in keys] == ["store", "store", "quality", "key", "file_id", "名前"]


def test_long_keys_are_folded_but_not_kept() -> None:
    """The fold cache keeps the keys it has seen: field names, not what a caller chose."""
    misses = json_keys._fold_short.cache_info().misses
    long_key = "K" * 64 + "\u017f"
    assert fold(long_key) == "k" * 64 + "s"
    assert fold("Store") == "store"
    assert json_keys._fold_short.cache_info().misses - misses <= 1  # "Store" at most


def fold_by_letter(key: str) -> str:
    """``fold`` as it was first written: each letter lowered (U+0130 to "i"), then upper
    cased on its own, in Python, one letter at a time."""
    return "".join(("i" if c == "\u0130" else c.lower()).upper() for c in key).lower()


EVERY_CODE_POINT = "".join(map(chr, range(0x110000)))


def test_only_the_dotted_capital_i_lowers_to_more_than_one_letter() -> None:
    """Why ``fold`` needs one exception to match Go's simple case mapping: Python's full
    lower-case mapping is one letter for every other code point. And why it may lower a
    whole key at once: every code point folds alone as it does letter by letter, and so
    does the string of them all (lowering a whole string applies context rules)."""
    assert [c for c in EVERY_CODE_POINT if len(c.lower()) != 1] == ["\u0130"]
    assert [c for c in EVERY_CODE_POINT if fold(c) != fold_by_letter(c)] == []
    assert json_keys._fold(EVERY_CODE_POINT) == fold_by_letter(EVERY_CODE_POINT)


# Letters whose case mappings are not one-to-one (sigma and final sigma, dotted and dotless i,
# sharp s, the title-case digraph, long s, Kelvin), and neighbours that decide whether a sigma
# is final: letters, a case-ignorable apostrophe and combining dot, a space, a digit.
AWKWARD_KEYS = st.text(alphabet="\u03a3\u03c3\u03c2\u0130\u0131\u00df\u01c5\u017f\u212aaZ' \u03070")


@given(AWKWARD_KEYS)
def test_a_whole_key_folds_as_its_letters_do(key: str) -> None:
    assert json_keys._fold(key) == fold_by_letter(key)


def test_a_long_non_ascii_key_is_folded_in_a_few_calls() -> None:
    """A million-letter key costs a few whole-string passes in C, not a Python step per letter
    (a 30 MB key held the event loop for seconds): the calls are counted, not timed."""
    key = "\u00c9\u03a3" * 500_000
    calls: list[str] = []
    previous = sys.getprofile()
    sys.setprofile(lambda frame, event, arg: calls.append(event))
    try:
        folded = json_keys._fold(key)
    finally:
        sys.setprofile(previous)
    assert folded == "\u00e9\u03c3" * 499_999 + "\u00e9\u03c2"
    assert len(calls) < 30, f"{len(calls)} calls to fold one key"


def test_a_key_longer_than_any_field_name_is_left_as_it_is() -> None:
    """Go folds letter for letter: a key of 257 letters matches no field name, so it is not
    folded at all (a 30 MB key was folded four times a request); two copies of it are still
    one key given twice."""
    assert fold("\u017f" * 256) == "s" * 256
    long_key = "\u017fTORE" + "x" * 252
    assert fold(long_key) is long_key
    twice = b'{"' + b"a" * 300 + b'": 1, "' + b"a" * 300 + b'": 2}'
    with pytest.raises(InvalidRequest) as refused:
        body_policy.parse_json_object(twice)
    assert refused.value.code == "invalid_json"


def test_the_upstream_bill_is_read_from_new_apis_token_usage_only() -> None:
    assert billed_quota(b'{"code":true,"data":{"object":"token_usage","total_used":1234}}') == 1234
    for bad in (
        b"nope",
        b"[]",
        b'{"data":{}}',
        b'{"data":{"total_used":-1}}',
        b'{"data":{"total_used":true}}',
        b'{"data":{"total_used":"9"}}',
    ):
        with pytest.raises(ValueError, match=r"JSON|total_used"):
            billed_quota(bad)
    row = KeyBill("k", upstream_units=2_000_000, gateway_units=1_500_000)
    assert row.as_json() == {
        "key": "k",
        "upstream_spend": 2.0,
        "gateway_spend": 1.5,
        "drift": 0.5,
        "error": None,
    }
    unread = KeyBill("k", upstream_units=None, gateway_units=7, error="down")
    assert (unread.drift_units, unread.as_json()["drift"]) == (None, None)


class _FailingPipeline:
    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []

    async def __aenter__(self) -> _FailingPipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def incrby(self, key: str, n: int) -> None:
        self.sent.append((key, n))

    async def execute(self, raise_on_error: bool = True) -> None:
        raise ConnectionError("Redis is down")


class _DownRedis:
    def pipeline(self, transaction: bool = True) -> _FailingPipeline:
        return _FailingPipeline()


def test_spend_per_key_that_cannot_be_flushed_is_kept_for_the_next_flush() -> None:
    spend = SpendByKey(_DownRedis())  # type: ignore[arg-type]
    spend.add("a", 5)
    spend.add("a", 7)
    spend.add(None, 9)  # a call no key served (cut before its answer): no key to charge
    spend.add("b", 0)
    with pytest.raises(ConnectionError):
        asyncio.run(spend.flush())
    assert spend._pending == {"a": 12}


@pytest.mark.parametrize(
    "ctype", [FORM, 'multipart/form-data; boundary="bb"', "multipart/form-data ;boundary=bb ;"]
)
def test_a_forms_boundary_is_read_as_go_reads_it(ctype: str) -> None:
    assert form_fields(_form(("model", None, b"dall-e-2")), ctype) == {"model": "dall-e-2"}


_AUDIO_PART = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"messages": [{"role": "user", "content": [_AUDIO_PART]}]}, "messages"),
        ({"messages": [{"role": "user", "Content": [{"Type": "INPUT_AUDIO"}]}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"Input_Audio": {}}]}]}, "messages"),
    ],
)
def test_chat_audio_billed_at_audio_rates_is_refused(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        _est(kinds.CHAT, {"model": "m", "messages": [], **fields})
    assert (err.value.code, err.value.param) == ("unsupported_parameter", param)


def test_chat_text_that_mentions_audio_passes() -> None:
    doc = {
        "model": "m",
        "modalities": ["text"],
        "audio": None,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "input_audio"}]}],
    }
    est, _ = _est(kinds.CHAT, doc)
    assert est.model == "m"


@pytest.mark.parametrize(
    ("fields", "characters"),
    [
        ({}, 10),
        ({"instructions": "calm"}, 14),
        ({"speed": 4}, 10),
        ({"speed": 0.25}, 40),
        ({"speed": 0.3, "instructions": ""}, 34),  # ceil(10 / 0.3), never rounded down
        ({"stream_format": "audio", "speed": None}, 10),
    ],
)
def test_speech_is_charged_its_characters_and_instructions_stretched_by_speed(
    fields: dict[str, Any], characters: int
) -> None:
    est, _ = _est(kinds.SPEECH, {"model": "tts-1", "input": "0123456789", **fields})
    assert est.bound.characters == characters


@pytest.mark.parametrize(
    ("fields", "code", "param"),
    [
        ({"speed": "1"}, "invalid_type", "speed"),
        ({"speed": True}, "invalid_type", "speed"),
        ({"speed": 0.2}, "invalid_value", "speed"),
        ({"speed": 4.5}, "invalid_value", "speed"),
        ({"instructions": ["x"]}, "invalid_type", "instructions"),
        ({"stream_format": "sse"}, "unsupported_parameter", "stream_format"),
    ],
)
def test_bad_speech_fields_are_refused(fields: dict[str, Any], code: str, param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        _est(kinds.SPEECH, {"model": "tts-1", "input": "hi", **fields})
    assert (err.value.code, err.value.param) == (code, param)


_TOKENS = {"input_per_million": Fraction(1)}
_ROUTES = (kinds.CHAT, kinds.EMBEDDINGS, kinds.IMAGES, kinds.SPEECH, kinds.TRANSCRIPTION)


@pytest.mark.parametrize(
    ("fields", "source", "measured"),
    [
        (_TOKENS, "config", {kinds.CHAT, kinds.EMBEDDINGS, kinds.TRANSCRIPTION}),
        ({"per_image": {"*": Fraction(1)}}, "crazyrouter", {kinds.IMAGES}),
        ({"per_audio_second": Fraction(1)}, "config", {kinds.TRANSCRIPTION}),
        ({"per_character": Fraction(1)}, "config", {kinds.SPEECH}),
        ({"per_request": Fraction(1)}, "crazyrouter", set(_ROUTES)),
        ({}, "config", set(_ROUTES)),  # free on purpose
        ({}, "crazyrouter", set()),  # a ratio of 0 in a fetched list
    ],
)
def test_a_price_measures_the_routes_its_units_charge(
    fields: dict[str, Any], source: str, measured: set[str]
) -> None:
    price = ModelPrice(**fields, source=source)
    assert {k for k in _ROUTES if price.measures(k)} == measured
    assert price.measures(kinds.MODERATIONS)
    assert price.measures(kinds.REQUEST)
