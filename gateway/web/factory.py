"""The app factory uvicorn workers import: settings come from GATEWAY_CONFIG and the env.

A served gateway also tunes the garbage collector once it has started (apps built by tests
leave the process's GC alone)."""

from __future__ import annotations

import gc
import os

from gateway.app import Gateway, create_app
from gateway.settings import load_settings

GC_THRESHOLDS = (20_000, 20, 100)


def tune_gc() -> None:
    # Move everything built at start-up out of the collector's sight: measured under load,
    # full collections rescanned ~93k long-lived objects, pausing the loop ~27 ms each (most
    # of the p99 at 32 connections); frozen, they take ~1 ms.
    gc.collect()
    gc.freeze()
    # Fewer, larger young collections and rare full ones: with 400 open streams the default
    # thresholds paused the loop often enough to add ~30 ms to the p99 gap between events;
    # these keep it under 10 ms (docs/benchmarks.md). Cycles are still collected.
    gc.set_threshold(*GC_THRESHOLDS)


def app_from_env() -> Gateway:
    return create_app(load_settings(os.environ.get("GATEWAY_CONFIG") or None), on_started=tune_gc)
