"""Dependencies shared by the controllers: the ledger, the projections and the authenticated caller.

They form a chain (ledger -> projections -> principal, ledger -> settings) on purpose: Litestar
resolves dependencies of the same level concurrently in a task group, which costs more than the
dependencies themselves; a chain resolves one by one, with no task group.
"""

from __future__ import annotations

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from api.auth import Principal, authenticate
from api.settings import Settings
from ledger.service import Ledger
from projections.sqlite_reader import SqliteProjections


def provide_ledger(state: State) -> Ledger:
    ledger: Ledger = state.ledger
    return ledger


def provide_projections(state: State, ledger: NamedDependency[Ledger]) -> SqliteProjections:
    projections: SqliteProjections = state.projections
    return projections


def provide_settings(state: State, ledger: NamedDependency[Ledger]) -> Settings:
    settings: Settings = state.settings
    return settings


async def provide_principal(
    request: Request[object, object, State],
    ledger: NamedDependency[Ledger],
    projections: NamedDependency[SqliteProjections],
) -> Principal:
    return await authenticate(request, projections)


DEPENDENCIES = {
    "ledger": Provide(provide_ledger, sync_to_thread=False),
    "projections": Provide(provide_projections, sync_to_thread=False),
    "settings": Provide(provide_settings, sync_to_thread=False),
    "principal": Provide(provide_principal),
}
