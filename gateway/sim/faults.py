"""Failure injection for the simulator: each fault fires ``count`` times (-1: forever)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

STATUS_KINDS = frozenset(
    {"status_401", "status_403", "status_404", "status_429", "status_500", "status_503"}
)
KINDS = STATUS_KINDS | {"slow", "drop", "content_redirect"}


@dataclass
class Fault:
    kind: str
    count: int = 1
    path_prefix: str = ""
    key: str | None = None
    retry_after: str | None = None  # only status_429 sends it, and only when given
    delay: float = 0.0

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Fault:
        kind = doc.get("kind")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}")
        unknown = set(doc) - {"kind", "count", "path_prefix", "key", "retry_after", "delay"}
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        retry_after = doc.get("retry_after")
        key = doc.get("key")
        return cls(
            kind=str(kind),
            count=int(doc.get("count", 1)),
            path_prefix=str(doc.get("path_prefix") or ""),
            key=None if key is None else str(key),
            retry_after=None if retry_after is None else str(retry_after),
            delay=float(doc.get("delay", 0.0)),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def matches(self, kinds: frozenset[str], path: str, key: str | None) -> bool:
        return (
            self.count != 0
            and self.kind in kinds
            and path.startswith(self.path_prefix)
            and (self.key is None or self.key == key)
        )


def take(faults: list[Fault], kinds: frozenset[str], path: str, key: str | None) -> Fault | None:
    """The first matching fault of one of ``kinds``, consuming one of its firings."""
    for fault in faults:
        if fault.matches(kinds, path, key):
            if fault.count > 0:
                fault.count -= 1
            return fault
    return None
