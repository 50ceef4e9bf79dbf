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

from gateway.admin.api_keys import KeyAdmin
from gateway.admin.audit_query import AuditFilter
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
    api_keys: KeyAdmin | None = None,
) -> list[BaseRoute]:
    def check(request: Request) -> Principal:
        who = request.scope.get("principal")
        if not isinstance(who, Principal) or not who.has_role(admin_role):
            raise PermissionDenied("This endpoint needs the gateway admin role.")
        return who

    def guarded(handler: Handler, status: int = 200) -> Callable[[Request], Awaitable[Response]]:
        return _endpoint(check, handler, status)

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
        q = r.query_params
        return await admin.audit_log(
            limit=q.get("limit"), before=q.get("before"), keep=AuditFilter.of(q)
        )

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
    if api_keys is not None:
        issuer = api_keys

        async def create_key(r: Request, who: Principal) -> dict[str, Any]:
            doc = json_object(await r.body())
            return await issuer.create(who, team(r), doc, may_grant_roles=True)

        async def list_keys(r: Request, who: Principal) -> dict[str, Any]:
            return await issuer.list(team(r))

        async def revoke_key(r: Request, who: Principal) -> dict[str, Any]:
            return await issuer.revoke(who, str(r.path_params["id"]), team=None)

        async def rotate_key(r: Request, who: Principal) -> dict[str, Any]:
            doc = json_object(await r.body() or b"{}")
            return await issuer.rotate(who, str(r.path_params["id"]), doc, team=None)

        routes += [
            Route(PREFIX + "/teams/{team}/api-keys", guarded(create_key, 201), methods=["POST"]),
            Route(PREFIX + "/teams/{team}/api-keys", guarded(list_keys), methods=["GET"]),
            Route(PREFIX + "/api-keys/{id}", guarded(revoke_key), methods=["DELETE"]),
            Route(PREFIX + "/api-keys/{id}/rotate", guarded(rotate_key), methods=["POST"]),
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


def team_key_routes(keys: KeyAdmin, *, team_admin_role: str, admin_role: str) -> list[BaseRoute]:
    """A team admin's own team's keys, under ``/v1/gateway/api-keys``: the caller's team is
    the only team these routes ever touch."""

    def check(request: Request) -> Principal:
        who = request.scope.get("principal")
        if not isinstance(who, Principal) or not (
            who.has_role(team_admin_role) or who.has_role(admin_role)
        ):
            raise PermissionDenied(
                f"Managing your team's API keys needs the '{team_admin_role}' role."
            )
        return who

    async def create_key(r: Request, who: Principal) -> dict[str, Any]:
        doc = json_object(await r.body())
        return await keys.create(who, who.team, doc, may_grant_roles=False)

    async def list_keys(r: Request, who: Principal) -> dict[str, Any]:
        return await keys.list(who.team)

    async def revoke_key(r: Request, who: Principal) -> dict[str, Any]:
        return await keys.revoke(who, str(r.path_params["id"]), team=who.team)

    async def rotate_key(r: Request, who: Principal) -> dict[str, Any]:
        doc = json_object(await r.body() or b"{}")
        return await keys.rotate(who, str(r.path_params["id"]), doc, team=who.team)

    base = "/v1/gateway/api-keys"
    return [
        Route(base, _endpoint(check, create_key, 201), methods=["POST"]),
        Route(base, _endpoint(check, list_keys), methods=["GET"]),
        Route(base + "/{id}", _endpoint(check, revoke_key), methods=["DELETE"]),
        Route(base + "/{id}/rotate", _endpoint(check, rotate_key), methods=["POST"]),
    ]


def _endpoint(
    check: Callable[[Request], Principal], handler: Handler, status: int = 200
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        who = check(request)
        # no-store: limits, usage and keys change under the caller; a cached view misleads
        # (and an answer carrying a new key's secret must not be kept anywhere).
        return JSONResponse(
            await handler(request, who), status_code=status, headers={"cache-control": "no-store"}
        )

    return endpoint
