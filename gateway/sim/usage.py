"""The ``usage`` objects OpenAI answers with, and its automatic prompt cache, simplified.

Chat completions report ``prompt_tokens`` / ``completion_tokens`` with details; the Responses
API reports ``input_tokens`` / ``output_tokens`` with details. In both, the output count
includes the reasoning tokens a reasoning model spent, as OpenAI bills them.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any

CACHE_MIN_TOKENS = 1024  # OpenAI caches only prompts at least this long...
CACHE_STEP = 128  # ...and reports cache hits in steps of this many tokens
CACHE_ENTRIES = 4096


class PromptCache:
    """A prompt of at least ``CACHE_MIN_TOKENS`` sent to the same model before is a cache hit;
    anything else is a miss. Bounded, oldest forgotten first.

    Not per key: Crazyrouter's keys are tokens of one account, and the cache lives at the
    provider behind it, so a prompt sent with one key is cached for all of them."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self._entries = entries
        self._seen: OrderedDict[str, None] = OrderedDict()

    def cached_tokens(self, model: str, prompt: Any, tokens: int) -> int:
        if tokens < CACHE_MIN_TOKENS:
            return 0
        text = json.dumps([model, prompt], sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest in self._seen:
            self._seen.move_to_end(digest)
            return tokens // CACHE_STEP * CACHE_STEP
        self._seen[digest] = None
        if len(self._seen) > self._entries:
            self._seen.popitem(last=False)
        return 0


def chat(
    prompt: int, completion: int, *, cached: int = 0, reasoning: int = 0, converted: bool = False
) -> dict[str, Any]:
    """``converted``: the answer new-api builds from another provider's (Claude's), whose
    usage writes the Responses names too, output_tokens left 0."""
    out = completion + reasoning
    found: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": out,
        "total_tokens": prompt + out,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    if converted:
        found |= {"input_tokens": prompt, "output_tokens": 0}
    return found


def completion(prompt: int, completion: int) -> dict[str, Any]:
    """The legacy completions API reports the three totals only."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def responses(inp: int, output: int, *, cached: int = 0, reasoning: int = 0) -> dict[str, Any]:
    out = output + reasoning
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": inp + out,
    }
