"""The app factory: `create_app(settings)` wires the ledger, the projections and the controllers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import (
    Components,
    OpenAPI,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Schema,
    SecurityScheme,
)

from api.background import RotationJob, destroy_due, keep_destroying
from api.dashboard import DASHBOARD_HANDLERS, SessionSigner, template_config
from api.deps import DEPENDENCIES
from api.errors import EXCEPTION_HANDLERS
from api.middleware import before_send
from api.openapi_links import add_links
from api.ratelimit import RateLimiters
from api.rotation_runner import RotationSettings, keep_rotating
from api.routes.admin import AdminController
from api.routes.audit import AuditController
from api.routes.compliance import ComplianceController
from api.routes.connected_apps import ConnectedAppsController
from api.routes.health import healthz, readyz
from api.routes.keys import KeysController
from api.routes.ledger_routes import LedgerController
from api.routes.org import OrgController
from api.routes.people import PeopleController, SsoController
from api.routes.secret_access import SecretAccessController
from api.routes.secrets import SecretsController
from api.routes.ssh_keys import SshKeysController
from api.settings import Settings
from ledger.crypto import Keyring
from ledger.errors import CryptoError, MasterKeyError
from ledger.external import ExternalStores
from ledger.keys import stale_data_keys
from ledger.pg_store import PostgresRecorder
from ledger.recorder import Recorder
from ledger.service import Ledger
from ledger.sqlite_store import SqliteRecorder
from projections import pg_tables, sqlite_tables
from projections.pg_reader import PostgresProjections
from projections.reader import Projections
from projections.sqlite_reader import SqliteProjections

log = logging.getLogger("keyledger")

VERSION = "0.1.0"


def build_ledger(settings: Settings, clock: Callable[[], int] = time.time_ns,
                 external: ExternalStores | None = None) -> Ledger:
    recorder: Recorder
    if settings.db.dsn is not None:
        recorder = PostgresRecorder(settings.db.dsn, pg_tables.all_projectors(), pool_size=settings.pool_size)
    else:
        recorder = SqliteRecorder(settings.db.path, sqlite_tables.all_projectors(), synchronous=settings.synchronous)
    return Ledger(recorder, Keyring(settings.master_key, settings.previous_master_keys), clock, external=external)


def build_projections(settings: Settings, ledger: Ledger) -> Projections:
    """SQLite: one process writes, so the reader caches and follows that writer. PostgreSQL: other
    processes write too, so reads go to the tables, which every append updates in its transaction."""
    if settings.db.dsn is not None:
        return PostgresProjections(settings.db.dsn, pool_size=settings.pool_size)
    projections = SqliteProjections(settings.db.path)
    projections.follow(ledger.writer)
    return projections


async def check_master_key(ledger: Ledger) -> bool:
    """Refuse master keys that cannot open the data keys already stored; True when some data keys are
    still under a previous master key (a rotation to the current one to finish)."""
    stale = await stale_data_keys(ledger.recorder, ledger.keyring.current.kek_id)
    unknown = sorted(set(stale) - set(ledger.keyring.kek_ids))
    if unknown:
        raise MasterKeyError(
            f"KEYLEDGER_MASTER_KEY cannot open this database's data keys: they are wrapped by master key id(s) "
            f"{', '.join(unknown)}, which are not configured (during a rotation: the new key, with the old one "
            "in KEYLEDGER_PREVIOUS_MASTER_KEYS)"
        )
    rows = await ledger.recorder.data_keys_after("", limit=1)
    for row in rows:  # the id matches: check that the key really opens it
        try:
            ledger.keyring.check(row.id, row.kek_id, row.wrapped)
        except CryptoError:
            raise MasterKeyError(
                "KEYLEDGER_MASTER_KEY cannot open this database's data keys: it is not the key it was written with"
            ) from None
    return bool(stale)


def create_app(settings: Settings, clock: Callable[[], int] = time.time_ns,
               external: ExternalStores | None = None) -> Litestar:
    """The app; `clock` (UTC nanoseconds) stamps events and decides when recovery windows end and
    rotations are due; `external` holds the adapters for references (default: AWS and Vault)."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        ledger = build_ledger(settings, clock, external)
        await ledger.start()
        projections = build_projections(settings, ledger)
        destroyer: asyncio.Task[None] | None = None
        rotator: asyncio.Task[None] | None = None
        rotation = RotationJob(ledger)
        rotation_settings = RotationSettings(webhook_timeout=settings.webhook_timeout_seconds,
                                             max_answer_bytes=settings.webhook_max_answer_bytes)
        http = httpx.AsyncClient(follow_redirects=False)
        try:
            unfinished_rotation = await check_master_key(ledger)
            await projections.open()
            # Deletions whose window ended while the server was down are destroyed before serving.
            await destroy_due(ledger, projections, clock)
            destroyer = asyncio.create_task(
                keep_destroying(ledger, projections, clock, settings.destroy_sweep_seconds)
            )
            # Rotations due while the server was down run at once, then every sweep.
            rotator = asyncio.create_task(
                keep_rotating(ledger, projections, clock, rotation_settings, settings.rotation_sweep_seconds)
            )
            if settings.freeze_gc_after_start:
                gc.collect()
                gc.freeze()
            app.state.ledger = ledger
            app.state.projections = projections
            app.state.settings = settings
            app.state.clock = clock
            app.state.rotation = rotation
            app.state.rotation_settings = rotation_settings
            app.state.http = http
            app.state.session_signer = SessionSigner(settings.master_key.session_key(), settings.session_idle_minutes)
            if unfinished_rotation:
                log.info("data keys remain under a previous master key: rewrapping them in the background")
                rotation.start(None)
            app.state.rate_limiters = RateLimiters.of(settings.rate_limit_per_key, settings.rate_limit_per_address)
            yield
        finally:
            await rotation.stop()
            for task in (destroyer, rotator):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await http.aclose()
            await projections.close()
            await ledger.stop()

    app = Litestar(
        route_handlers=[
            SecretsController,
            SecretAccessController,
            KeysController,
            AdminController,
            AuditController,
            LedgerController,
            ComplianceController,
            OrgController,
            SshKeysController,
            PeopleController,
            SsoController,
            ConnectedAppsController,
            healthz,
            readyz,
            *DASHBOARD_HANDLERS,
        ],
        template_config=template_config(),
        dependencies=DEPENDENCIES,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan],
        before_send=[before_send],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="keyledger",
            version=VERSION,
            description="Secrets with a provable record of who did what to which secret, and when.",
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", description="rt_live_... key")}
            ),
            security=[{"bearer": []}],
        ),
        debug=False,
    )
    finish_openapi_when_built(app)
    return app


# The finished document per set of routes: every app of one code base has the same one.
_OPENAPI_BY_ROUTES: dict[tuple[str, ...], OpenAPI] = {}


def finish_openapi_when_built(app: Litestar) -> None:
    """Add what Litestar cannot say (two media types, links) to the OpenAPI document, built once per process.

    Building it cost 0.07-0.14 s per app, most of `create_app`: a server pays it once, but the test suite made
    about 1,500 apps. The document depends only on the routes, so apps with the same routes share the one
    built first (it is not changed after this). `_openapi` is the plugin's cache of it (private API: the
    schema tests read the finished document, so a Litestar change that breaks this fails them).
    """
    plugin = app.plugins.get(OpenAPIPlugin)
    key = tuple(sorted(plugin.included_routes))
    finished = _OPENAPI_BY_ROUTES.get(key)
    if finished is None:
        finished = plugin.provide_openapi()
        document_streams(finished)
        add_links(finished)
        _OPENAPI_BY_ROUTES[key] = finished
    plugin._openapi = finished


def document_streams(openapi: OpenAPI) -> None:
    """The export streams JSON Lines or CSV: say so in the OpenAPI document (one route, two media types)."""
    operation = openapi.paths["/v1/audit/export"].get  # type: ignore[index]
    assert operation is not None and operation.responses is not None
    answer = operation.responses["200"]
    assert isinstance(answer, OpenAPIResponse)
    text = Schema(type=OpenAPIType.STRING, description="one event per line (CSV: one per row, after a header)")
    answer.content = {media: OpenAPIMediaType(schema=text) for media in ("application/x-ndjson", "text/csv")}
