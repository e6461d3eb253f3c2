"""Starting the service: settings from the environment, dev-mode bootstrap, and the ASGI server."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from pathlib import Path

import msgspec

from api.settings import Database, Settings
from ledger.commands import Context
from ledger.crypto import MasterKey
from ledger.errors import AlreadyExistsError, IntegrityError, LedgerError, ValidationError
from ledger.events import Actor

log = logging.getLogger("keyledger")

DEV_ORG = "dev"


def dev_folder(db: Path) -> Path:
    return db.resolve().parent / ".keyledger"


def _read_or_create(path: Path, make: str) -> str:
    """A small secret file, mode 0600, created once."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(make + "\n")
    return make


def dev_settings(db: Database) -> Settings:
    """Dev mode: a generated master key and admin token kept beside the database (files mode 0600;
    for PostgreSQL, in `.keyledger` under the working folder)."""
    folder = dev_folder(db.path)
    master_text = os.environ.get("KEYLEDGER_MASTER_KEY") or _read_or_create(
        folder / "master.key", MasterKey.generate()[1]
    )
    admin = os.environ.get("KEYLEDGER_ADMIN_TOKEN") or _read_or_create(
        folder / "admin.token", "adm_" + secrets.token_urlsafe(24)
    )
    return Settings.from_env(db=db, master_key=MasterKey.parse(master_text), admin_token=admin, dev=True)


async def ensure_dev_org(settings: Settings) -> str:
    """Create the dev org and keep its admin key in `.keyledger/dev-api-key` (once)."""
    from api.app import build_ledger  # noqa: PLC0415  (keeps `keyledger --help` light)

    key_file = dev_folder(settings.db.path) / "dev-api-key"
    if key_file.exists():
        return key_file.read_text().strip()
    ledger = build_ledger(settings)
    await ledger.start()
    try:
        admin = Context(actor=Actor(key_id="admin", label="dev bootstrap", kind="admin"))
        try:
            created = await ledger.create_org(admin, DEV_ORG)
        except AlreadyExistsError:
            created = await ledger.create_api_key(admin, DEV_ORG, "dev admin", role="admin", scope="all")
    finally:
        await ledger.stop()
    return _read_or_create(key_file, created.api_key)


async def preflight(settings: Settings) -> None:
    """Refuse to start, with one clear line, before the ASGI server is involved: the database is
    held by another server, the master key cannot open its data keys, or a chain fails verification
    since its org's last signed checkpoint (each raises LedgerError; nothing is written)."""
    from api.app import build_ledger, check_master_key  # noqa: PLC0415
    from ledger.verify import verify_since_checkpoints  # noqa: PLC0415

    ledger = build_ledger(settings)
    await ledger.start()
    try:
        await check_master_key(ledger)
        report = await verify_since_checkpoints(ledger.recorder, ledger.keyring.signing_public_keys)
        if not report.ok:
            raise IntegrityError(
                f"{settings.db} fails verification since its last checkpoint, {report.summary()}; "
                f"not starting (inspect it with: keyledger verify --db {settings.db})"
            )
    finally:
        await ledger.stop()


def serve(settings: Settings, host: str, port: int, server: str = "uvicorn", workers: int = 1) -> None:
    from api.app import create_app  # noqa: PLC0415

    if workers > 1 and not settings.db.is_postgres:
        raise ValidationError(
            "--workers", "more than one needs PostgreSQL (KEYLEDGER_DB=postgresql://...): one SQLite file "
            "serves one process"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.dev:
        try:
            api_key = asyncio.run(ensure_dev_org(settings))
        except LedgerError as exc:
            raise SystemExit(f"keyledger: {exc}") from None
        url = f"http://{host}:{port}"
        print(
            f"keyledger dev mode (not for production)\n"
            f"  dashboard:  {url}/\n"
            f"              (open it in a browser and sign in with the API key below)\n"
            f"  API:        {url}/v1\n"
            f"  API docs:   {url}/schema/swagger\n"
            f"  org:        {DEV_ORG}\n"
            f"  API key:    {api_key}\n"
            f"  admin token: {settings.admin_token}\n"
            f"  database:   {settings.db}  (keys in {dev_folder(settings.db.path)})\n"
            f"  try:        curl -s {url}/v1/secrets -H 'Authorization: Bearer {api_key}'",
            flush=True,
        )
    asyncio.run(preflight(settings))
    if server == "granian":
        run_granian(settings, host, port, workers)
        return
    import uvicorn  # noqa: PLC0415

    if workers > 1:
        # Worker processes import the app by name (api/asgi.py) and read the settings from here.
        os.environ["KEYLEDGER_SETTINGS_JSON"] = msgspec.json.encode(settings_env(settings)).decode()
        uvicorn.run("api.asgi:app", host=host, port=port, workers=workers, log_level="warning",
                    access_log=False, lifespan="on")
        return
    app = create_app(msgspec.structs.replace(settings, freeze_gc_after_start=True))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")


def run_granian(settings: Settings, host: str, port: int, workers: int = 1) -> None:
    """Granian loads the app in its own workers: hand them the settings through the environment."""
    from granian import Granian  # noqa: PLC0415
    from granian.constants import Interfaces  # noqa: PLC0415

    os.environ["KEYLEDGER_SETTINGS_JSON"] = msgspec.json.encode(settings_env(settings)).decode()
    Granian("api.asgi:app", address=host, port=port, interface=Interfaces.ASGI, workers=workers,
            log_access=False).serve()


def settings_env(settings: Settings) -> dict[str, str]:
    """What a worker process needs beyond the environment it inherits (the master key stays there)."""
    return {"db": settings.db.url(), "dev": "1" if settings.dev else "", "synchronous": settings.synchronous}
