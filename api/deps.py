"""Dependencies shared by the controllers: the ledger, the projections and the authenticated caller.

They form a chain (ledger -> projections, ledger -> settings) on purpose: Litestar resolves
dependencies of the same level concurrently in a task group, which costs more than the dependencies
themselves; a chain resolves one by one, with no task group. The principal is authenticated by the
controllers' `before_request` hook, before the body is read, and only handed over here.
"""

from __future__ import annotations

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from api.auth import Principal, principal_of
from api.settings import Settings
from ledger.service import Ledger
from projections.reader import Projections


def provide_ledger(state: State) -> Ledger:
    ledger: Ledger = state.ledger
    return ledger


def provide_projections(state: State, ledger: NamedDependency[Ledger]) -> Projections:
    projections: Projections = state.projections
    return projections


def provide_settings(state: State, ledger: NamedDependency[Ledger]) -> Settings:
    settings: Settings = state.settings
    return settings


def provide_principal(request: Request[object, object, State]) -> Principal:
    """The caller that the controller's `before_request` hook (`require_api_key`) authenticated."""
    return principal_of(request)


DEPENDENCIES = {
    "ledger": Provide(provide_ledger, sync_to_thread=False),
    "projections": Provide(provide_projections, sync_to_thread=False),
    "settings": Provide(provide_settings, sync_to_thread=False),
    "principal": Provide(provide_principal, sync_to_thread=False),
}
