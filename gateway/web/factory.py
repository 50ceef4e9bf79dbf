"""The app factory uvicorn workers import: settings come from GATEWAY_CONFIG and the env."""

from __future__ import annotations

import os

from starlette.applications import Starlette

from gateway.app import create_app
from gateway.settings import load_settings


def app_from_env() -> Starlette:
    return create_app(load_settings(os.environ.get("GATEWAY_CONFIG") or None))
