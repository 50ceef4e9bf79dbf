"""Crazyrouter's public price list (new-api's ``GET /api/pricing``) as exact prices (pure).

new-api prices in quota units, 500,000 of them to the US dollar, and a token-priced model
(``quota_type`` 0) costs ``model_ratio`` units per input token, so ratio 1 is $2 per million
input tokens. Its settlement (service/text_quota.go in QuantumNous/new-api) charges::

    quota = (uncached input + cached x cache_ratio + output x completion_ratio)
            x model_ratio x group_ratio

and a per-call model (``quota_type`` 1) ``model_price`` USD x group ratio per call (per image
on the image routes, where new-api multiplies the price by ``n``). In money, per million tokens:

    input  = model_ratio x 2 x group_ratio        cached = input x cache_ratio
    output = input x completion_ratio

Every number is read as the decimal it was written as (``0.075`` is 3/40, not a binary float),
so a loaded price costs exactly what the same price written in the config would. An entry that
is not what the shape says is refused on its own, and the rest of the list is kept.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from gateway.metering.answers import loads
from gateway.metering.prices import MILLION, ModelPrice, exact

QUOTA_PER_USD = 500_000  # new-api's QuotaPerUnit
USD_PER_MILLION_AT_RATIO_1 = Fraction(MILLION, QUOTA_PER_USD)  # $2
SOURCE = "crazyrouter"
MAX_MODEL_NAME = 256
MAX_PRICE = 10**6  # per million tokens, per call: what pricing.models accepts too
# new-api's endpoint type of the image routes, where a per-call price is per image.
_IMAGE_ENDPOINT = "image-generation"


class CatalogError(ValueError):
    """The document as a whole is not a usable price list (nothing of it is loaded)."""


@dataclass(frozen=True)
class Catalog:
    """What one list gave: the prices by model, and why each refused entry was refused."""

    prices: Mapping[str, ModelPrice]
    refused: Mapping[str, str] = field(default_factory=dict)  # model name (or #index) -> why
    group_ratio: Fraction = Fraction(1)


def parse_catalog(body: bytes | str, *, group: str) -> Catalog:
    """Parse a ``GET /api/pricing`` answer; raises CatalogError when it is not one at all."""
    try:
        # NaN and Infinity (not JSON, but Python reads them) are refused per entry. orjson
        # where it reads the list as the standard parser would: it holds the interpreter a
        # fifth as long, and a thread parsing a large list holds it for every request.
        doc = loads(body.encode() if isinstance(body, str) else body)
    except (ValueError, RecursionError) as exc:
        raise CatalogError(f"not JSON: {exc}") from None
    return catalog_from(doc, group=group)


def catalog_from(doc: Any, *, group: str) -> Catalog:
    """The prices of a parsed ``GET /api/pricing`` document, seen from ``group``."""
    if not isinstance(doc, dict):
        raise CatalogError("not a JSON object")
    if doc.get("success") is False:
        raise CatalogError(f"the upstream answered success: false ({_short(doc.get('message'))})")
    entries = doc.get("data")
    if not isinstance(entries, list):
        raise CatalogError("no 'data' list of models")
    ratios = doc.get("group_ratio")
    if not isinstance(ratios, dict):
        raise CatalogError("no 'group_ratio' object")
    if group not in ratios:
        known = ", ".join(sorted(str(g) for g in ratios)[:20]) or "none"
        raise CatalogError(f"group {group!r} is not in its group_ratio (it has: {known})")
    try:
        group_ratio = _number(ratios[group], f"group_ratio[{group!r}]")
    except ValueError as exc:
        raise CatalogError(str(exc)) from None
    # A name listed twice is trusted in neither listing: which one new-api bills is unknown.
    names = Counter(e.get("model_name") for e in entries if isinstance(e, dict) and _named(e))
    prices: dict[str, ModelPrice] = {}
    refused: dict[str, str] = {}
    for i, entry in enumerate(entries):
        name = entry["model_name"] if isinstance(entry, dict) and _named(entry) else None
        try:
            if not isinstance(entry, dict):
                raise ValueError("not an object")
            if name is None:
                raise ValueError(f"model_name must be 1-{MAX_MODEL_NAME} printable characters")
            if names[name] > 1:
                raise ValueError("listed more than once")
            price = _entry_price(entry, group, group_ratio)
        except ValueError as exc:
            refused[name or f"#{i}"] = str(exc)
            continue
        if price is not None:
            prices[name] = price
    if not prices:
        # An empty list is a broken answer far more often than a price list: never loaded.
        if not entries:
            raise CatalogError("it lists no model")
        why = _first(refused) if refused else f"none is enabled for group {group!r}"
        raise CatalogError(f"none of its {len(entries)} entries is usable ({why})")
    return Catalog(prices, refused, group_ratio)


def _entry_price(entry: Mapping[str, Any], group: str, group_ratio: Fraction) -> ModelPrice | None:
    """One entry's price, None when the group cannot use it; ValueError: refused."""
    groups = entry.get("enable_groups")
    if groups is not None:
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise ValueError("enable_groups must be a list of group names")
        if group not in groups and "all" not in groups:
            return None  # not callable from this group: not priced, not an error
    mode = entry.get("billing_mode")
    if mode not in (None, "", "ratio", "price"):
        # tiered_expr and any later mode: what is charged is not the ratios listed.
        raise ValueError(f"billing_mode {_short(mode)} is not priced by its listed ratios")
    quota_type = entry.get("quota_type")
    if quota_type == 1 and not isinstance(quota_type, bool):
        per_call = _capped(_number(entry.get("model_price"), "model_price") * group_ratio)
        if _IMAGE_ENDPOINT in _endpoints(entry):
            return ModelPrice(per_image={"*": per_call}, source=SOURCE)
        return ModelPrice(per_request=per_call, source=SOURCE)
    if quota_type != 0 or isinstance(quota_type, bool):
        raise ValueError(f"quota_type must be 0 (tokens) or 1 (per call), not {_short(quota_type)}")
    ratio = _number(entry.get("model_ratio"), "model_ratio")
    completion = _number(entry.get("completion_ratio"), "completion_ratio")
    cache = entry.get("cache_ratio")
    inp = _capped(ratio * USD_PER_MILLION_AT_RATIO_1 * group_ratio)
    cached = None if cache is None else _capped(inp * _number(cache, "cache_ratio"))
    return ModelPrice(
        input_per_million=inp,
        output_per_million=_capped(inp * completion),
        cached_input_per_million=cached,
        # A speech call is measured in characters: priced as that many input tokens, which is
        # how new-api's ratios for speech models (tts-1: 7.5, $15 per million) are set.
        per_character=inp / MILLION,
        source=SOURCE,
    )


def _endpoints(entry: Mapping[str, Any]) -> list[str]:
    raw = entry.get("supported_endpoint_types")
    return [e for e in raw if isinstance(e, str)] if isinstance(raw, list) else []


def _number(value: Any, name: str) -> Fraction:
    if value is None:
        raise ValueError(f"{name} is missing")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, not {_short(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be finite")
    number = exact(value)
    if number < 0:
        raise ValueError(f"{name} must be >= 0, not {value}")
    return number


def _capped(price: Fraction) -> Fraction:
    # The bound pricing.models has: costs stay exact integers in Redis's Lua arithmetic.
    if price > MAX_PRICE:
        raise ValueError(f"a price of {float(price):g} USD is above {MAX_PRICE}")
    return price


def _named(entry: Mapping[str, Any]) -> bool:
    name = entry.get("model_name")
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_MODEL_NAME
        and name.isprintable()
        and name == name.strip()
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _first(refused: Mapping[str, str]) -> str:
    name, why = next(iter(refused.items()))
    return f"{name}: {why}"
