"""Test-only control endpoints under ``/_sim``: faults, recorded requests, health."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.sim.faults import Fault
from gateway.sim.state import SimState


def control_routes(state: SimState) -> list[Route]:
    async def faults(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse([f.to_json() for f in state.faults])
        if request.method == "DELETE":
            state.faults.clear()
            return JSONResponse({"ok": True})
        try:
            doc = await request.json()
            docs = doc if isinstance(doc, list) else [doc]
            added = [Fault.from_json(d) for d in docs]
        except (ValueError, TypeError, AttributeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        state.faults.extend(added)  # all or none, so a bad list leaves no half-applied faults
        return JSONResponse({"ok": True, "faults": [f.to_json() for f in added]})

    async def requests(request: Request) -> Response:
        if request.method == "DELETE":
            state.requests.clear()
            return JSONResponse({"ok": True})
        return JSONResponse(state.requests)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return [
        Route("/_sim/health", health, methods=["GET"]),
        Route("/_sim/faults", faults, methods=["GET", "POST", "DELETE"]),
        Route("/_sim/requests", requests, methods=["GET", "DELETE"]),
    ]
