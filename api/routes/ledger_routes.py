"""Proof faces: signed checkpoints of the org's head, the public key, and a verification of the chain."""

from __future__ import annotations

import base64

import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency

from api.auth import Principal, require_api_key
from api.routes.docs import COMMON, problems
from api.schemas import rfc3339
from ledger.errors import NotFoundError
from ledger.records import StoredRecord
from ledger.service import Ledger
from ledger.verify import verify_org_records

VERIFY_CHUNK = 5000


class CheckpointOut(msgspec.Struct, kw_only=True):
    org: str
    org_seq: int
    head: str
    time: str
    public_key: str
    signature: str
    text: str


class PublicKeyOut(msgspec.Struct, kw_only=True):
    algorithm: str
    public_key: str


class VerifyOut(msgspec.Struct, kw_only=True):
    ok: bool
    checked: int
    org_seq: int
    head: str | None
    first_bad_seq: int | None
    reason: str
    checkpoint_org_seq: int | None


class LedgerController(Controller):
    path = "/v1/ledger"
    tags = ["ledger"]

    @get(
        "/checkpoint",
        operation_id="GetCheckpoint",
        before_request=require_api_key,
        responses=problems(*COMMON, 404),
        summary="A signed checkpoint of the org's head (made now if the latest is behind)",
    )
    async def checkpoint(self, principal: NamedDependency[Principal], ledger: NamedDependency[Ledger]) -> CheckpointOut:
        checkpoint = await ledger.checkpoint(principal.org)
        if checkpoint is None:
            raise NotFoundError("the org has no events yet")
        return CheckpointOut(
            org=checkpoint.org,
            org_seq=checkpoint.org_seq,
            head=base64.b64encode(checkpoint.head).decode(),
            time=rfc3339(checkpoint.at),
            public_key=checkpoint.public_key,
            signature=checkpoint.signature,
            text=checkpoint.text(),
        )

    @get("/public-key", operation_id="GetPublicKey", summary="The Ed25519 key that signs checkpoints")
    async def public_key(self, ledger: NamedDependency[Ledger]) -> PublicKeyOut:
        return PublicKeyOut(algorithm="ed25519", public_key=ledger.signing_key.public_key)

    @get(
        "/verify",
        operation_id="VerifyChain",
        before_request=require_api_key,
        responses=problems(*COMMON),
        summary="Verify the org's whole chain, and its latest signed checkpoint",
    )
    async def verify(self, principal: NamedDependency[Principal], ledger: NamedDependency[Ledger]) -> VerifyOut:
        return await verify_org(ledger, principal.org)


async def verify_org(ledger: Ledger, org: str) -> VerifyOut:
    """Verify the org's whole chain from the stored records, and its latest signed checkpoint."""
    checkpoint = await ledger.recorder.latest_checkpoint(org)
    records: list[StoredRecord] = []
    after = 0
    while chunk := await ledger.recorder.read_org(org, after, VERIFY_CHUNK):
        records.extend(chunk)
        after = chunk[-1].org_seq
    report = verify_org_records(records, org, checkpoint)
    org_seq, head = report.orgs.get(org, (0, ""))
    return VerifyOut(
        ok=report.ok,
        checked=report.checked,
        org_seq=org_seq,
        head=head or None,
        first_bad_seq=report.first_bad_seq,
        reason=report.reason,
        checkpoint_org_seq=checkpoint.org_seq if checkpoint else None,
    )
