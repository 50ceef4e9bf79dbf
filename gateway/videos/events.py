"""What the video service reports as jobs start and end (the app turns these into metrics)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def _ignore(*args: object) -> None:
    return None


@dataclass(frozen=True)
class VideoEvents:
    # team, model, seconds requested, spend (quota.currency; 0 without a price table)
    created: Callable[[str, str, int, float], None] = _ignore
    # team, model, final status, seconds from create to end; called once per job
    finished: Callable[[str, str, str, float], None] = _ignore
