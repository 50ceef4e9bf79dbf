"""How the upstream's parser (new-api, Go's encoding/json) matches a JSON key to a field (pure).

Anything that decides on a field the upstream will read must find it under every spelling the
upstream accepts, or a caller can say one thing to the gateway and another to the upstream.
"""

from __future__ import annotations


def fold(key: str) -> str:
    """A key as the upstream's parser matches it. Go's encoding/json matches a field
    case-insensitively by Unicode simple folding, so ``"\\u017ftore"`` (a long s) and
    ``"qualit\\u0131"`` (a dotless i) are ``store`` and ``quality`` to it.
    Folding each letter to lower, then upper, then lower case puts every such spelling on
    the one ASCII name."""
    if key.isascii():
        return key.lower()
    return "".join(c.lower().upper() for c in key).lower()
