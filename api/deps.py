"""Dependencies shared by the controllers: the ledger, the projections and the authenticated caller."""

from __future__ import annotations

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from api.auth import Principal, authenticate
from api.settings import Settings
from ledger.service import Ledger
from projections.sqlite_reader import SqliteProjections


def provide_ledger(state: State) -> Ledger:
    ledger: NamedDependency[Ledger] = state.ledger
    return ledger


def provide_projections(state: State) -> SqliteProjections:
    projections: NamedDependency[SqliteProjections] = state.projections
    return projections


def provide_settings(state: State) -> Settings:
    settings: NamedDependency[Settings] = state.settings
    return settings


async def provide_principal(
    request: Request[object, object, State], projections: NamedDependency[SqliteProjections]
) -> Principal:
    return await authenticate(request, projections)


DEPENDENCIES = {
    "ledger": Provide(provide_ledger, sync_to_thread=False),
    "projections": Provide(provide_projections, sync_to_thread=False),
    "settings": Provide(provide_settings, sync_to_thread=False),
    "principal": Provide(provide_principal),
}
