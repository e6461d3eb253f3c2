"""Liveness and readiness."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec

from api.schemas import Health
from ledger.service import Ledger
from projections.reader import Projections


@get("/healthz", operation_id="Health", tags=["health"], summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@get(
    "/readyz",
    operation_id="Ready",
    tags=["health"],
    summary="The store is open and projections are current",
    responses={503: ResponseSpec(data_container=Health, description="Not ready")},
)
async def readyz(ledger: NamedDependency[Ledger], projections: NamedDependency[Projections]) -> Response[Health]:
    if not ledger.writer.running:
        return Response(Health(status="store closed"), status_code=503)
    head = await projections.ledger_head()
    positions = await projections.positions()
    if any(position != head for position in positions.values()):
        return Response(Health(status="projections behind", position=head), status_code=503)
    return Response(Health(status="ready", position=head))
