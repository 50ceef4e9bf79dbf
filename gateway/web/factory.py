"""The app factory uvicorn workers import: settings come from GATEWAY_CONFIG and the env.

A served gateway also tunes the garbage collector once it has started (apps built by tests
leave the process's GC alone)."""

from __future__ import annotations

import gc
import os

from gateway.app import Gateway, create_app
from gateway.settings import listening_on, load_settings

GC_THRESHOLDS = (20_000, 20, 100)
# Set by `gateway serve` for its workers: the listener its command line chose.
LISTEN_HOST_ENV, LISTEN_PORT_ENV = "GATEWAY_LISTEN_HOST", "GATEWAY_LISTEN_PORT"


def tune_gc() -> None:
    # Move everything built at start-up out of the collector's sight: measured under load,
    # full collections rescanned ~93k long-lived objects, pausing the loop ~27 ms each (most
    # of the p99 at 32 connections); frozen, they take ~1 ms.
    gc.collect()
    gc.freeze()
    # Fewer, larger young collections and rare full ones: with 400 open streams the default
    # thresholds paused the loop often enough to add ~30 ms to the p99 gap between events;
    # these keep it under 10 ms (bench/RESULTS.md). Cycles are still collected.
    gc.set_threshold(*GC_THRESHOLDS)


def app_from_env() -> Gateway:
    env = os.environ
    settings = load_settings(env.get("GATEWAY_CONFIG") or None)
    port = env.get(LISTEN_PORT_ENV)
    settings = listening_on(settings, env.get(LISTEN_HOST_ENV), int(port) if port else None)
    return create_app(settings, on_started=tune_gc)
