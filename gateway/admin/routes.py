"""The admin HTTP API under ``/admin/v1``: thin Starlette handlers over ``AdminService``.

Authentication already happened (``AuthMiddleware``); here every handler first requires the
admin role, so a caller without it learns nothing else (not even whether a team or job
exists). Errors are raised as ``GatewayError`` and rendered once, by the app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.admin.inputs import json_object
from gateway.admin.service import AdminService
from gateway.auth.principal import Principal
from gateway.errors import PermissionDenied
from gateway.metering.reconcile import KeyBill

PREFIX = "/admin/v1"
Handler = Callable[[Request, Principal], Awaitable[dict[str, Any]]]


def admin_routes(
    admin: AdminService,
    *,
    admin_role: str,
    usage: Callable[[Request], Awaitable[Response]] | None = None,
    reconcile: Callable[[], Awaitable[list[KeyBill]]] | None = None,
) -> list[BaseRoute]:
    def check(request: Request) -> Principal:
        who = request.scope.get("principal")
        if not isinstance(who, Principal) or not who.has_role(admin_role):
            raise PermissionDenied("This endpoint needs the gateway admin role.")
        return who

    def guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            who = check(request)
            # no-store: limits and usage change under the caller; a cached view misleads.
            return JSONResponse(await handler(request, who), headers={"cache-control": "no-store"})

        return endpoint

    def team(r: Request) -> str:
        return str(r.path_params["team"])

    async def teams(r: Request, who: Principal) -> dict[str, Any]:
        return await admin.teams()

    async def show(r: Request, who: Principal) -> dict[str, Any]:
        return await admin.team(team(r))

    async def put_limits(r: Request, who: Principal) -> dict[str, Any]:
        return await admin.set_limits(who, team(r), json_object(await r.body()), replace=True)

    async def patch_limits(r: Request, who: Principal) -> dict[str, Any]:
        return await admin.set_limits(who, team(r), json_object(await r.body()), replace=False)

    async def clear_limits(r: Request, who: Principal) -> dict[str, Any]:
        return await admin.clear_limits(who, team(r))

    async def reset(r: Request, who: Principal) -> dict[str, Any]:
        return await admin.reset_usage(who, team(r), json_object(await r.body()))

    async def jobs(r: Request, who: Principal) -> dict[str, Any]:
        q = r.query_params
        return await admin.team_jobs(team(r), limit=q.get("limit"), after=q.get("after"))

    async def job(r: Request, who: Principal) -> dict[str, Any]:
        return await admin.job(str(r.path_params["id"]))

    async def keys(r: Request, who: Principal) -> dict[str, Any]:
        return await admin.upstream_keys()

    async def enable(r: Request, who: Principal) -> dict[str, Any]:
        return await admin.set_key_enabled(who, str(r.path_params["id"]), enabled=True)

    async def disable(r: Request, who: Principal) -> dict[str, Any]:
        return await admin.set_key_enabled(who, str(r.path_params["id"]), enabled=False)

    async def audit(r: Request, who: Principal) -> dict[str, Any]:
        return await admin.audit_log(limit=r.query_params.get("limit"))

    table: list[tuple[str, Handler, str]] = [
        ("/teams", teams, "GET"),
        ("/teams/{team}", show, "GET"),
        ("/teams/{team}/limits", put_limits, "PUT"),
        ("/teams/{team}/limits", patch_limits, "PATCH"),
        ("/teams/{team}/limits", clear_limits, "DELETE"),
        ("/teams/{team}/usage/reset", reset, "POST"),
        ("/teams/{team}/jobs", jobs, "GET"),
        ("/jobs/{id}", job, "GET"),
        ("/upstream-keys", keys, "GET"),
        ("/upstream-keys/{id}/enable", enable, "POST"),
        ("/upstream-keys/{id}/disable", disable, "POST"),
        ("/audit", audit, "GET"),
    ]
    routes: list[BaseRoute] = [
        Route(PREFIX + path, guarded(handler), methods=[method]) for path, handler, method in table
    ]
    if usage is not None:
        report = usage

        async def usage_report(request: Request) -> Response:
            check(request)
            return await report(request)

        routes.append(Route(PREFIX + "/usage", usage_report, methods=["GET"]))
    if reconcile is not None:
        run_now = reconcile

        async def bill(r: Request, who: Principal) -> dict[str, Any]:
            return {"object": "list", "data": [b.as_json() for b in await run_now()]}

        routes.append(Route(PREFIX + "/reconcile", guarded(bill), methods=["POST"]))
    return routes
