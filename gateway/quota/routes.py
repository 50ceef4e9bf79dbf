"""``GET /v1/gateway/quota``: a team's own limits, usage, room and reset times."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.quota.service import QuotaService


class QuotaEndpoint:
    def __init__(self, quota: QuotaService) -> None:
        self.quota = quota

    async def handle(self, request: Request) -> JSONResponse:
        team = request.scope["principal"].team
        return JSONResponse(await self.quota.usage(team), headers={"cache-control": "no-store"})
