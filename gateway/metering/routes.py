"""``GET /v1/gateway/usage`` (the caller's team) and ``GET /admin/v1/usage`` (any team): the
ledger as JSON rows or CSV."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.admin.inputs import well_formed_team
from gateway.metering.report import UsageQuery, UsageReport, parse_query

_NO_STORE = {"cache-control": "no-store"}


class UsageEndpoint:
    def __init__(self, report: UsageReport) -> None:
        self.report = report

    async def own(self, request: Request) -> Response:
        team = request.scope["principal"].team
        q = parse_query(
            request.query_params,
            today=self.report.today(),
            default_group=("user", "model"),
            allow_team=False,
        )
        return await self._answer([team], q)

    async def any_team(self, request: Request) -> Response:
        """The admin's report; the admin role is checked by the admin routes."""
        q = parse_query(
            request.query_params,
            today=self.report.today(),
            default_group=("team", "user", "model"),
            allow_team=True,
            team_ok=well_formed_team,
        )
        teams = [q.team] if q.team is not None else await self.report.teams()
        return await self._answer(teams, q)

    async def _answer(self, teams: list[str], q: UsageQuery) -> Response:
        if q.format == "csv":
            name = f"usage-{q.first.isoformat()}-{q.last.isoformat()}.csv"
            return Response(
                await self.report.csv(teams, q),
                media_type="text/csv; charset=utf-8",
                headers={**_NO_STORE, "content-disposition": f'attachment; filename="{name}"'},
            )
        return JSONResponse(await self.report.document(teams, q), headers=_NO_STORE)
