"""How the upstream's parser (new-api, Go's encoding/json) matches a JSON key to a field (pure).

Anything that decides on a field the upstream will read must find it under every spelling the
upstream accepts, or a caller can say one thing to the gateway and another to the upstream.
"""

from __future__ import annotations

from functools import lru_cache

# Field names are short; a longer key is no name the upstream reads, and caching it would keep
# whatever a caller chose (24 keys of 8 MiB each stayed resident as ~400 MiB).
_CACHED_KEY_CHARS = 64
# Longer than any field name of the upstream's request types (the longest are ~30 letters).
_LONGEST_NAME = 256


def fold(key: str) -> str:
    """A key as the upstream's parser matches it. Go's encoding/json matches a field
    case-insensitively by Unicode simple folding, so ``"\\u017ftore"`` (a long s) and
    ``"qual\\u0131ty"`` (a dotless i) are ``store`` and ``quality`` to it.
    Folding each letter to lower, then upper, then lower case puts every such spelling on
    the one ASCII name. Go maps a letter by its *simple* case mapping, Python by the full
    one. To lower case they differ on one letter only: a dotted capital I (U+0130) is "i" to
    Go, "i" and a combining dot to Python (so ``"f\\u0130le_id"`` is ``file_id`` here too).
    To upper case Python's mapping can give more letters (``ß`` to ``SS``): such a key folds
    to more names than Go matches, which can refuse a body Go would read, never pass one."""
    if len(key) <= _CACHED_KEY_CHARS:
        return _fold_short(key)
    if len(key) > _LONGEST_NAME:
        # Go folds letter for letter, never changing how many there are: a key this long
        # matches no field, and only an exact copy of itself (a map's key). Left as it is,
        # a 30 MB key costs nothing four times over (each fold of it took 0.2 s).
        return key
    return _fold(key)


@lru_cache(maxsize=8192)  # called for every key of every checked body: the same few keys
def _fold_short(key: str) -> str:
    return _fold(key)


def _fold(key: str) -> str:
    if key.isascii():
        return key.lower()
    # Whole-string passes in C, never a Python step per letter: a 30 MB key folded letter by
    # letter held the event loop for 5-11 s. The same as folding each letter on its own: only
    # U+0130 lowers to more than one letter, and the one context rule (a sigma ending a word
    # lowers to the final form, U+03C2) is undone by the upper-case pass, which maps both forms
    # to U+03A3 (tests/unit/test_metering_parts.py walks every code point).
    return key.replace("\u0130", "i").lower().upper().lower()


def may_spell(body: bytes, words: tuple[bytes, ...]) -> bool:
    """Whether a raw JSON body could spell one of ``words`` (lower-case ASCII) as a key or a
    string: always when it has escapes or non-ASCII bytes, which can hide a letter; else when
    a word occurs in it, case aside. A cheap test that lets the common body skip a walk."""
    if b"\\u" in body or not body.isascii():
        return True
    low = body.lower()
    return any(w in low for w in words)
