"""Crazyrouter's price list (new-api's GET /api/pricing) read as exact prices, the refresher
that keeps the last good list, and the settings that turn it on."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from fractions import Fraction
from typing import Any

import pytest

from gateway.errors import UpstreamError
from gateway.metering.catalog import CatalogError, catalog_from, parse_catalog
from gateway.metering.prices import ModelPrice, PriceTable, Usage
from gateway.metering.refresher import PriceRefresher
from gateway.settings import SettingsError, settings_from_mapping
from gateway.sim import pricing as sim_pricing
from gateway.sim.catalog import MODELS


def tokens(name: str, ratio: Any, completion: Any = 1, **extra: Any) -> dict[str, Any]:
    return {
        "model_name": name,
        "quota_type": 0,
        "model_ratio": ratio,
        "model_price": 0,
        "completion_ratio": completion,
        "enable_groups": ["default", "vip"],
        **extra,
    }


def per_call(name: str, price: Any, **extra: Any) -> dict[str, Any]:
    return {
        "model_name": name,
        "quota_type": 1,
        "model_ratio": 0,
        "model_price": price,
        "completion_ratio": 0,
        "enable_groups": ["default"],
        **extra,
    }


def doc(*entries: Any, ratios: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "success": True,
        "data": list(entries),
        "group_ratio": {"default": 1, "vip": 0.8} if ratios is None else ratios,
        "usable_group": {"default": "", "vip": ""},
    }


# -- the conversion --------------------------------------------------------------------------


def test_ratio_one_is_two_dollars_per_million_and_output_is_input_times_completion() -> None:
    got = catalog_from(doc(tokens("m", 1, 3)), group="default").prices["m"]
    assert got.input_per_million == 2
    assert got.output_per_million == 6
    assert got.cached_input_per_million is None  # no cache_ratio: cached tokens cost input
    assert got.source == "crazyrouter"


def test_decimal_ratios_are_exact() -> None:
    # gpt-4o-mini in new-api: ratio 0.075, completion 4, cache 0.5 -> $0.15 / $0.60 / $0.075.
    entry = tokens("gpt-4o-mini", 0.075, 4, cache_ratio=0.5)
    got = parse_catalog(json.dumps(doc(entry)).encode(), group="default").prices["gpt-4o-mini"]
    assert got.input_per_million == Fraction(15, 100)
    assert got.output_per_million == Fraction(60, 100)
    assert got.cached_input_per_million == Fraction(75, 1000)
    # 1000 input tokens of which 200 cached, 500 output: exactly 0.00012 + 0.000015 + 0.0003.
    usage = Usage(input_tokens=1000, cached_tokens=200, output_tokens=500)
    assert got.cost_units(usage) == 120 + 15 + 300


def test_a_float_completion_ratio_is_the_decimal_it_was_written_as() -> None:
    got = catalog_from(doc(tokens("i", 0.75, 1.3333333333333333)), group="default").prices["i"]
    assert got.output_per_million == Fraction(3, 2) * Fraction("1.3333333333333333")


def test_the_group_ratio_multiplies_every_price() -> None:
    entries = (tokens("t", 1, 2, cache_ratio=0.1), per_call("p", 0.05, enable_groups=["all"]))
    got = catalog_from(doc(*entries), group="vip")
    assert got.group_ratio == Fraction(4, 5)
    t, p = got.prices["t"], got.prices["p"]
    assert (t.input_per_million, t.output_per_million) == (Fraction(8, 5), Fraction(16, 5))
    assert t.cached_input_per_million == Fraction(4, 25)
    assert p.per_request == Fraction(1, 25)


def test_a_per_call_price_is_per_call_and_per_image_on_the_image_routes() -> None:
    entries = (
        per_call("sora-2", 0.4, supported_endpoint_types=["openai-video"]),
        per_call("dall-e-3", 0.04, supported_endpoint_types=["image-generation"]),
    )
    got = catalog_from(doc(*entries), group="default").prices
    assert got["sora-2"] == ModelPrice(per_request=Fraction(2, 5), source="crazyrouter")
    assert got["sora-2"].cost_units(Usage()) == 400_000
    # new-api multiplies an image model's price by n: so does a per-image price.
    assert got["dall-e-3"].per_request == 0
    assert got["dall-e-3"].cost_units(Usage(images=3)) == 120_000


def test_speech_characters_cost_what_that_many_input_tokens_would() -> None:
    got = catalog_from(doc(tokens("tts-1", 7.5)), group="default").prices["tts-1"]
    assert got.cost_units(Usage(characters=1000)) == 15_000  # $15 per million characters


def test_a_free_model_is_priced_at_zero_not_unpriced() -> None:
    got = catalog_from(doc(tokens("free", 0), tokens("paid", 1)), group="default").prices
    assert got["free"].cost_units(Usage(input_tokens=10**6, output_tokens=10**6)) == 0


# -- what is refused, one entry at a time ------------------------------------------------------


BAD_ENTRIES: list[tuple[Any, str, str]] = [
    ("not an entry", "#0", "not an object"),
    ({"quota_type": 0, "model_ratio": 1, "completion_ratio": 1}, "#0", "model_name"),
    (tokens("", 1), "#0", "model_name"),
    (tokens("bad\nname", 1), "#0", "model_name"),
    (tokens("m", None), "m", "model_ratio is missing"),
    (tokens("m", "1.5"), "m", "model_ratio must be a number"),
    (tokens("m", True), "m", "model_ratio must be a number"),
    (tokens("m", -1), "m", "model_ratio must be >= 0"),
    (tokens("m", 1, None), "m", "completion_ratio is missing"),
    (tokens("m", 1, 1, cache_ratio=-0.5), "m", "cache_ratio must be >= 0"),
    ({**tokens("m", 1), "quota_type": 2}, "m", "quota_type must be 0"),
    ({**tokens("m", 1), "quota_type": True}, "m", "quota_type must be 0"),
    ({**tokens("m", 1), "quota_type": None}, "m", "quota_type must be 0"),
    (per_call("m", None), "m", "model_price is missing"),
    (per_call("m", -0.01), "m", "model_price must be >= 0"),
    (tokens("m", 1, billing_mode="tiered_expr"), "m", "billing_mode 'tiered_expr'"),
    (tokens("m", 400_000, 3), "m", "a price of 2.4e+06 USD is above 1000000"),
    (per_call("m", 2_000_000), "m", "above 1000000"),
    (tokens("m", 1, enable_groups="default"), "m", "enable_groups must be a list"),
]


@pytest.mark.parametrize(("entry", "label", "why"), BAD_ENTRIES)
def test_a_malformed_entry_is_refused_and_the_rest_kept(entry: Any, label: str, why: str) -> None:
    got = catalog_from(doc(entry, tokens("good", 1)), group="default")
    assert set(got.prices) == {"good"}
    assert why in got.refused[label]


def test_not_a_finite_number_is_refused() -> None:
    entries = (tokens("nan", float("nan")), tokens("inf", 1, float("inf")), tokens("good", 1))
    got = parse_catalog(json.dumps(doc(*entries)), group="default")
    assert set(got.prices) == {"good"}
    assert got.refused == {
        "nan": "model_ratio must be finite",
        "inf": "completion_ratio must be finite",
    }


def test_a_model_listed_twice_is_trusted_in_neither_listing() -> None:
    got = catalog_from(
        doc(tokens("twice", 1), tokens("twice", 5), tokens("once", 1)), group="default"
    )
    assert set(got.prices) == {"once"}
    assert got.refused == {"twice": "listed more than once"}


def test_a_model_the_group_may_not_use_is_left_out_without_complaint() -> None:
    got = catalog_from(doc(per_call("only-default", 1), tokens("both", 1)), group="vip")
    assert set(got.prices) == {"both"}
    assert got.refused == {}


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>502 Bad Gateway</html>", "not JSON"),
        (b"[]", "not a JSON object"),
        (json.dumps({"success": False, "message": "maintenance"}).encode(), "success: false"),
        (json.dumps({"success": True, "data": {}}).encode(), "no 'data' list"),
        (json.dumps({"success": True, "data": []}).encode(), "no 'group_ratio'"),
        (json.dumps(doc(tokens("m", 1), ratios={"vip": 1})).encode(), "group 'default' is not"),
        (json.dumps(doc(tokens("m", 1), ratios={"default": -1})).encode(), "must be >= 0"),
        (json.dumps(doc()).encode(), "lists no model"),
        (json.dumps(doc(tokens("m", -1), tokens("n", None))).encode(), "none of its 2 entries"),
    ],
)
def test_a_document_that_is_no_price_list_loads_nothing(body: bytes, why: str) -> None:
    with pytest.raises(CatalogError, match=why):
        parse_catalog(body, group="default")


def test_the_simulators_list_prices_every_catalog_model() -> None:
    state_doc = {
        "success": True,
        "data": [
            {"model_name": n, "enable_groups": ["default"], **e}
            for n, e in sim_pricing.PRICES.items()
        ],
        "group_ratio": sim_pricing.GROUP_RATIO,
    }
    got = catalog_from(state_doc, group="default")
    assert set(got.prices) == set(MODELS)
    assert got.refused == {}


# -- config over the loaded list --------------------------------------------------------------


def test_config_entries_and_globs_override_the_loaded_list() -> None:
    loaded = catalog_from(doc(tokens("a", 1), tokens("gpt-x", 1), tokens("b", 1)), group="default")
    mine = ModelPrice(input_per_million=Fraction(9))
    table = PriceTable({"a": mine, "gpt-*": mine}).with_loaded(loaded.prices)
    assert table.lookup("a") is mine
    assert table.lookup("gpt-x") is mine
    found = table.lookup("b")
    assert found is not None
    assert found.source == "crazyrouter"
    assert table.lookup("c") is None


# -- the refresher ----------------------------------------------------------------------------


class Upstream:
    """A fetch whose next answers a test sets: bytes, or an exception to raise."""

    def __init__(self, *answers: bytes | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self) -> Awaitable[bytes]:
        self.calls += 1
        answer = self.answers.pop(0)

        async def go() -> bytes:
            if isinstance(answer, Exception):
                raise answer
            return answer

        return go()


def listing(*entries: Any) -> bytes:
    return json.dumps(doc(*entries)).encode()


def refresher(
    fetch: Callable[[], Awaitable[bytes]], results: list[tuple[str, int]]
) -> PriceRefresher:
    configured = PriceTable({"pinned": ModelPrice(per_request=Fraction(1))})
    return PriceRefresher(
        configured,
        fetch,
        group="default",
        interval_seconds=3600,
        on_result=lambda r, n: results.append((r, n)),
    )


async def test_a_failed_refresh_keeps_the_last_good_list(caplog: pytest.LogCaptureFixture) -> None:
    results: list[tuple[str, int]] = []
    fetch = Upstream(
        listing(tokens("a", 1), tokens("b", 2)),
        UpstreamError("GET /api/pricing answered HTTP 502."),
        b"{not json",
        listing(),
        listing(tokens("a", 3)),
    )
    r = refresher(fetch, results)
    assert await r.refresh()
    first = r.current()
    assert {m: first.lookup(m) is not None for m in ("a", "b", "pinned")} == dict.fromkeys(
        ("a", "b", "pinned"), True
    )
    with caplog.at_level(logging.WARNING, logger="gateway.prices"):
        assert not await r.refresh()
        assert not await r.refresh()
        assert not await r.refresh()
    assert r.current() is first
    assert "keeping the last one (2 models)" in caplog.text
    assert "HTTP 502" in caplog.text
    assert "lists no model" in caplog.text
    assert await r.refresh()
    now = r.current()
    a = now.lookup("a")
    assert a is not None
    assert a.input_per_million == 6
    assert now.lookup("b") is None  # gone from the list: gone from the table
    assert now.lookup("pinned") is not None  # config entries stay whatever the list says
    assert results == [("ok", 2), ("error", 2), ("error", 2), ("error", 2), ("ok", 1)]


async def test_before_a_first_load_only_configured_models_are_priced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    results: list[tuple[str, int]] = []
    r = refresher(Upstream(TimeoutError()), results)
    with caplog.at_level(logging.WARNING, logger="gateway.prices"):
        assert not await r.refresh()
    assert r.current().lookup("a") is None
    assert r.current().lookup("pinned") is not None
    assert "unpriced until it loads" in caplog.text
    assert results == [("error", 0)]


async def test_refused_entries_are_logged_and_the_rest_loaded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    results: list[tuple[str, int]] = []
    body = listing(tokens("a", 1), tokens("b", -1), tokens("c", 1, billing_mode="tiered_expr"))
    r = refresher(Upstream(body), results)
    with caplog.at_level(logging.WARNING, logger="gateway.prices"):
        assert await r.refresh()
    assert "2 entries refused" in caplog.text
    assert "b: model_ratio must be >= 0" in caplog.text
    assert results == [("ok", 1)]


# -- settings ---------------------------------------------------------------------------------


def pricing_settings(pricing: dict[str, Any], **sections: Any) -> Any:
    return settings_from_mapping(
        {"auth": {"hs256_secrets": ["x" * 32]}, "pricing": pricing, **sections}, env={}
    )


def test_pricing_source_settings() -> None:
    default = pricing_settings({}).pricing
    assert (default.source, default.group, default.refresh_seconds) == ("none", "default", 3600)
    got = pricing_settings(
        {"source": "crazyrouter", "group": "vip", "refresh_seconds": 600}
    ).pricing
    assert (got.source, got.group, got.refresh_seconds) == ("crazyrouter", "vip", 600)


@pytest.mark.parametrize(
    ("pricing", "sections", "key", "problem"),
    [
        ({"source": "openrouter"}, {}, "pricing.source", "must be none"),
        ({"source": "crazyrouter", "refresh_seconds": 59}, {}, "pricing.refresh_seconds", ">= 60"),
        ({"group": "two words"}, {}, "pricing.group", "no spaces"),
        (
            {"source": "crazyrouter"},
            {"quota": {"currency": "EUR"}},
            "pricing.source",
            "prices are in USD",
        ),
    ],
)
def test_bad_pricing_source_settings(
    pricing: dict[str, Any], sections: dict[str, Any], key: str, problem: str
) -> None:
    with pytest.raises(SettingsError) as err:
        pricing_settings(pricing, **sections)
    assert any(e.key == key and problem in e.problem for e in err.value.errors), err.value
