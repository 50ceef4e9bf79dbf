"""Prices per model and the exact cost of a usage (pure: no I/O).

Prices are kept as exact fractions of the configured currency, and a call's cost is rounded
*up* to a whole stored unit (a millionth of the currency) once, on the total: 0.15 per
million tokens times 1000 tokens is exactly 150 units, never 149.99999.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from fractions import Fraction
from functools import cached_property
from typing import NamedTuple

from gateway.metering import kinds
from gateway.quota.model import SPEND_UNITS

MILLION = 1_000_000
# Routes whose calls any price covers: moderations are free at OpenAI, and a route added in
# config is charged whatever its entry says.
_ANY_UNIT = frozenset({kinds.MODERATIONS, kinds.REQUEST})
_EVERY_KIND = frozenset(
    {*kinds.TOKEN_KINDS, *_ANY_UNIT, *kinds.FORM_KINDS, kinds.IMAGES, kinds.SPEECH}
)
# The price each of these routes' calls are charged by, besides per_request; the token routes
# (and transcriptions, gpt-4o-transcribe) by token prices.
UNIT_OF = {
    kinds.IMAGES: "per_image",
    kinds.IMAGE_UPLOAD: "per_image",
    kinds.TRANSCRIPTION: "per_audio_second",
    kinds.SPEECH: "per_character",
}
_NO_SECONDS = Fraction(0)  # every Usage's default: a call that names no audio shares it


def exact(value: float | int | str | Fraction) -> Fraction:
    """A configured price as the decimal a person wrote (0.1 is 1/10, not a binary float)."""
    if isinstance(value, Fraction):
        return value
    return Fraction(str(value)) if isinstance(value, float) else Fraction(value)


class Usage(NamedTuple):
    """What one call consumed; every field a count the upstream reports (or we estimate).
    Immutable; a named tuple rather than a frozen dataclass, which took three times as long
    to make, and a metered call makes several."""

    input_tokens: int = 0  # all input tokens, the cached ones included
    cached_tokens: int = 0  # of input_tokens, how many were read from the prompt cache
    output_tokens: int = 0  # reasoning tokens included, as they are billed
    images: int = 0
    audio_seconds: Fraction = _NO_SECONDS
    characters: int = 0
    requests: int = 1

    @property
    def tokens(self) -> int:
        """What a tokens-per-minute or -per-day limit counts: input plus output."""
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, kw_only=True)
class ModelPrice:
    """One model's price list, in the configured currency. Absent parts cost nothing."""

    input_per_million: Fraction = Fraction(0)
    output_per_million: Fraction = Fraction(0)
    cached_input_per_million: Fraction | None = None  # None: the input price
    per_request: Fraction = Fraction(0)
    # By "size/quality", "size" or "*" (any), most specific first; empty: per_image_default.
    per_image: Mapping[str, Fraction] = field(default_factory=dict)
    per_audio_second: Fraction = Fraction(0)
    per_character: Fraction = Fraction(0)
    # The output cap the estimate assumes (and the gateway sends) when a call names none.
    max_output_tokens: int | None = None
    source: str = "config"  # config | crazyrouter

    @property
    def cached_price(self) -> Fraction:
        if self.cached_input_per_million is None:
            return self.input_per_million
        return self.cached_input_per_million

    def image_price(self, size: str | None, quality: str | None) -> Fraction:
        """The most specific entry; a size the table does not name is charged the dearest
        entry, never nothing."""
        table = self.per_image
        for name in (f"{size}/{quality}", f"{size}", "*"):
            if name in table:
                return table[name]
        return max(table.values(), default=Fraction(0))

    @property
    def prices_images(self) -> bool:
        return bool(self.per_image)

    def measures(self, kind: str) -> bool:
        """Whether this price charges a call of ``kind`` by what such a call consumes (or
        by the call). A price of another unit would charge it nothing: a token-priced image
        model from Crazyrouter's list, whisper priced by a token ratio. Such a call is
        refused as unpriced, never forwarded for free (a transcription priced by tokens
        whose answer gives seconds is charged its estimate: see ``Meter.settle``)."""
        return kind in self._measured

    @cached_property
    def _measured(self) -> frozenset[str]:
        # Worked out once per price: it is asked on every call.
        by_tokens = bool(self.input_per_million or self.cached_price or self.output_per_million)
        units = (self.per_audio_second, self.per_character, *self.per_image.values())
        if self.per_request:
            return _EVERY_KIND
        if not by_tokens and not any(units):
            # Free: an entry of the config says so on purpose; a ratio of 0 in a fetched
            # list is far likelier a broken list than a gift.
            return _EVERY_KIND if self.source == "config" else _ANY_UNIT
        measured = {kind for kind, unit in UNIT_OF.items() if getattr(self, unit)}
        if by_tokens:
            measured |= kinds.TOKEN_KINDS | {kinds.TRANSCRIPTION}
        return _ANY_UNIT | measured

    @property
    def prices_usage(self) -> bool:
        """Whether an answer's ``usage`` can add to what a call costs: a token price, or one
        per second of audio (whisper's ``{"type": "duration"}``)."""
        return bool(
            self.input_per_million
            or self.cached_price
            or self.output_per_million
            or self.per_audio_second
        )

    @cached_property
    def _weights(self) -> tuple[int, int, int, int, int, int]:
        """The integer prices behind ``cost_units``: stored units per token, request and
        character over one common denominator, so that a call's cost is integer arithmetic
        (Fractions cost microseconds per operation, on every call)."""
        per = (
            self.input_per_million * SPEND_UNITS / MILLION,
            self.cached_price * SPEND_UNITS / MILLION,
            self.output_per_million * SPEND_UNITS / MILLION,
            self.per_request * SPEND_UNITS,
            self.per_character * SPEND_UNITS,
        )
        den = math.lcm(*(Fraction(w).denominator for w in per))
        w_in, w_cached, w_out, w_req, w_char = (int(w * den) for w in per)
        return den, w_in, w_cached, w_out, w_req, w_char

    def cost_units(
        self, usage: Usage, *, size: str | None = None, quality: str | None = None
    ) -> int:
        """The cost of ``usage`` in stored units (millionths of the currency), rounded up."""
        den, w_in, w_cached, w_out, w_req, w_char = self._weights
        cached = min(usage.cached_tokens, usage.input_tokens)
        total = (
            (usage.input_tokens - cached) * w_in
            + cached * w_cached
            + usage.output_tokens * w_out
            + usage.requests * w_req
            + usage.characters * w_char
        )
        seconds = usage.audio_seconds
        if usage.images or (seconds is not _NO_SECONDS and seconds):
            # Fractions only here: a token call skips them (microseconds per operation).
            extra = usage.images * self.image_price(size, quality)
            extra += seconds * self.per_audio_second
            money = Fraction(total, den * SPEND_UNITS) + extra
            return max(0, math.ceil(money * SPEND_UNITS))
        return max(0, -(-total // den))

    @cached_property
    def _dearest_input(self) -> ModelPrice:
        # The estimate cannot know how much of the input will be cached.
        dear = max(self.input_per_million, self.cached_price)
        return ModelPrice(
            input_per_million=dear,
            output_per_million=self.output_per_million,
            per_request=self.per_request,
            per_image=self.per_image,
            per_audio_second=self.per_audio_second,
            per_character=self.per_character,
        )

    def estimate_units(
        self, usage: Usage, *, size: str | None = None, quality: str | None = None
    ) -> int:
        """An upper bound of ``cost_units`` for any real usage within ``usage``: the estimate
        cannot know how much of the input will be cached, so it prices all of it at the
        dearer of the two input prices."""
        if usage.cached_tokens:  # an estimate has none: its input is priced as uncached
            usage = usage._replace(cached_tokens=0)
        return self._dearest_input.cost_units(usage, size=size, quality=quality)


class PriceTable:
    """Prices by model name: an exact entry first, then the first glob (in config order) that
    matches, then the prices a source (Crazyrouter's list) loaded, then none."""

    def __init__(
        self,
        configured: Mapping[str, ModelPrice],
        loaded: Mapping[str, ModelPrice] | None = None,
    ) -> None:
        self._exact = {k: v for k, v in configured.items() if not _is_glob(k)}
        self._globs = [(k, v) for k, v in configured.items() if _is_glob(k)]
        self._loaded: Mapping[str, ModelPrice] = dict(loaded or {})
        self._cache: dict[str, ModelPrice | None] = {}

    def with_loaded(self, loaded: Mapping[str, ModelPrice]) -> PriceTable:
        """The same configured prices over a newly loaded list."""
        return PriceTable({**self._exact, **dict(self._globs)}, loaded)

    @property
    def loaded_count(self) -> int:
        return len(self._loaded)

    def models(self) -> Iterable[str]:
        return [*self._exact, *(k for k, _ in self._globs), *self._loaded]

    def names(self, model: str) -> bool:
        """Whether the table lists ``model`` by its exact name (configured or loaded), not
        only through a glob: such names are bounded by the config and the loaded list."""
        return model in self._exact or model in self._loaded

    def lookup(self, model: str) -> ModelPrice | None:
        try:
            return self._cache[model]
        except KeyError:
            pass
        found = self._exact.get(model)
        if found is None:
            found = next((p for pat, p in self._globs if fnmatchcase(model, pat)), None)
        if found is None:
            found = self._loaded.get(model)
        if len(self._cache) < 10_000:  # model names come from callers: bounded
            self._cache[model] = found
        return found


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def allowed(model: str, patterns: tuple[str, ...] | None) -> bool:
    """Whether a team whose ``models:`` are ``patterns`` may call ``model`` (None: any)."""
    return patterns is None or any(fnmatchcase(model, p) for p in patterns)
