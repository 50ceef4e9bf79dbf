"""Hash-pinned requirements files (``uv pip compile --generate-hashes`` output), read back."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_ENTRY = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)(?P<rest>.*)")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})\b")


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: tuple[str, ...]


def normalize(name: str) -> str:
    """PEP 503: ``PyJWT`` and ``pyjwt``, ``typing_extensions`` and ``typing-extensions``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def header(path: Path) -> list[str]:
    """The comment lines before the first requirement."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip())
    return lines


def read(path: Path) -> dict[str, Pin]:
    """Normalized name -> pin; a line that is neither a comment nor ``name==version`` fails."""
    pins: dict[str, Pin] = {}
    logical = re.sub(r"\\\n", " ", path.read_text())
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _ENTRY.fullmatch(line)
        assert m, f"{path.name}: not an exact pin: {line[:80]!r}"
        name = normalize(m.group("name"))
        assert name not in pins, f"{path.name}: {name} pinned twice"
        pins[name] = Pin(m.group("version"), tuple(_HASH.findall(m.group("rest"))))
    return pins
