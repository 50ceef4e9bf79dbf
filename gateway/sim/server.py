"""Run the simulator on a socket (``gateway sim``)."""

from __future__ import annotations

import uvicorn

from gateway.sim.app import create_sim_app
from gateway.sim.config import SimConfig


def serve(host: str, port: int, config: SimConfig) -> None:
    """Serve until interrupted. The app sets its own ``Server`` header, as Crazyrouter would."""
    uvicorn.run(
        create_sim_app(config),
        host=host,
        port=port,
        loop="asyncio",
        log_level="warning",
        server_header=False,
    )
