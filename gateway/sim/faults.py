"""Failure injection for the simulator: each fault fires ``count`` times (-1: forever)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KINDS = frozenset(
    {
        "status_401",
        "status_403",
        "status_429",
        "status_500",
        "status_503",
        "slow",
        "drop",
        "content_redirect",
    }
)


@dataclass
class Fault:
    kind: str
    count: int = 1
    path_prefix: str = ""
    key: str | None = None
    retry_after: int | None = None
    delay: float = 0.0

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Fault:
        if doc.get("kind") not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}")
        return cls(
            kind=str(doc["kind"]),
            count=int(doc.get("count", 1)),
            path_prefix=str(doc.get("path_prefix", "")),
            key=doc.get("key"),
            retry_after=doc.get("retry_after"),
            delay=float(doc.get("delay", 0.0)),
        )

    def matches(self, path: str, key: str | None, kinds: frozenset[str] | None = None) -> bool:
        return (
            self.count != 0
            and path.startswith(self.path_prefix)
            and (self.key is None or self.key == key)
            and (kinds is None or self.kind in kinds)
        )


def take(faults: list[Fault], path: str, key: str | None, kinds: frozenset[str]) -> Fault | None:
    """The first matching fault of one of ``kinds``, consuming one of its firings."""
    for f in faults:
        if f.matches(path, key, kinds):
            if f.count > 0:
                f.count -= 1
            return f
    return None
