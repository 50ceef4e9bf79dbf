"""Settings of the Crazyrouter simulator."""

from __future__ import annotations

from dataclasses import dataclass, field

SHAPES = ("page", "envelope", "openai")


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    keys: tuple[str, ...] = field(default=("sk-sim-local",), repr=False)
    shape: str = "page"  # which of Crazyrouter's three video response shapes to speak
    job_seconds: float = 3.0  # queued -> processing -> completed over this long
    content_bytes: int = 1_000_000  # size of every generated video body
    stream_events: int = 8  # chat SSE: delta events per answer
    stream_interval: float = 0.0  # chat SSE: seconds between events

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}")
        if self.job_seconds < 0 or self.content_bytes < 0 or self.stream_events < 0:
            raise ValueError("job_seconds, content_bytes and stream_events must be >= 0")
