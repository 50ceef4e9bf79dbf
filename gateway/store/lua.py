"""Lua scripts, one ``.lua`` file per atomic operation, shipped as package data and read once.

Each file opens with a comment listing its KEYS and ARGV. A file whose first code line is
``--!prelude`` gets its package's ``prelude.lua`` (shared helpers) prepended: Redis scripts
cannot include one another. Scripts are registered with redis-py (or the batcher) by their
source and run by hash, reloaded when Redis has forgotten them.
"""

from __future__ import annotations

import functools
from importlib.resources import files

_PRELUDE_MARK = "--!prelude\n"


@functools.cache
def script(package: str, name: str) -> str:
    """The source of ``<package>/lua/<name>.lua`` (``package`` like ``gateway.quota``)."""
    folder = files(package) / "lua"
    text = (folder / f"{name}.lua").read_text()
    if _PRELUDE_MARK in text:
        head, _, body = text.partition(_PRELUDE_MARK)
        text = head + (folder / "prelude.lua").read_text() + body
    return text
