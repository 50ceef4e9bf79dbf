"""How the simulator counts tokens and what it "generates" (pure).

The rules are simple on purpose, so a test can predict every ``usage`` number: a text costs
one token per four characters (rounded up, as OpenAI's rule of thumb has it), an input image a
fixed ``IMAGE_TOKENS``, and an answer is a list of pieces that are one token each.
"""

from __future__ import annotations

import re
from typing import Any

CHARS_PER_TOKEN = 4
IMAGE_TOKENS = 85  # what OpenAI charges for a low-detail image
# Reasoning models think before they answer; this many hidden tokens per visible one.
REASONING_PER_TOKEN = 2
_REASONING = re.compile(r"(o\d|gpt-5)([-.].*)?")


def count(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def answer(n: int) -> list[str]:
    """The generated text as ``n`` one-token pieces: the same for every request."""
    return [f"word{i} " for i in range(n)]


def is_reasoning(model: str) -> bool:
    return _REASONING.fullmatch(model.lower()) is not None


def reasoning_tokens(model: str, output_tokens: int) -> int:
    return REASONING_PER_TOKEN * output_tokens if is_reasoning(model) else 0


def _content_tokens(content: Any) -> int:
    """A message's ``content``: a string, or parts (text, images) of the chat or Responses API."""
    if isinstance(content, str):
        return count(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for part in content:
        if isinstance(part, str):
            total += count(part)
        elif isinstance(part, dict):
            if isinstance(part.get("text"), str):
                total += count(part["text"])
            elif part.get("type") in ("image_url", "input_image"):
                total += IMAGE_TOKENS
    return total


def messages_tokens(messages: Any) -> int:
    """Chat ``messages``, or a Responses ``input`` given as a list of items."""
    if isinstance(messages, str):
        return count(messages)
    if not isinstance(messages, list):
        return 0
    total = 0
    for item in messages:
        if isinstance(item, dict):
            total += _content_tokens(item.get("content"))
            if isinstance(item.get("output"), str):  # a function call's result fed back
                total += count(item["output"])
        else:
            total += _content_tokens([item])
    return total


def prompt_pieces(prompt: Any) -> list[Any]:
    """The legacy ``prompt``: a string, a list of strings, token ids, or lists of token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return [prompt]
    if isinstance(prompt, list):
        return list(prompt)
    return []


def piece_tokens(piece: Any) -> int:
    """Tokens of one input: text by its length, a list of token ids by its count."""
    if isinstance(piece, list):
        return len(piece)
    return count(str(piece))
