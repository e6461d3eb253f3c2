"""SSH public keys of the caller's org (for SSH access to its sandboxes): list, add, remove.

Any active key lists and adds; an admin key, or the key that added it, removes. Public keys are not
secret; what was sent is never quoted in an error (it may be anything, a private key included).
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from api.auth import Principal, require_api_key
from api.idempotent import json_answer, run_command
from api.routes.docs import COMMON, problems
from api.schemas import AddSshKeyBody, SshKeyInfo, SshKeyList, rfc3339
from ledger.events import SshKeyAdded
from ledger.idempotency import StoredAnswer
from ledger.service import Ledger
from projections.reader import Projections


def added_info(event: SshKeyAdded) -> SshKeyInfo:
    return SshKeyInfo(
        ssh_key_id=event.ssh_key_id, label=event.label, algorithm=event.algorithm, bits=event.bits,
        fingerprint=event.fingerprint, comment=event.comment, public_key=event.public_key,
        added_at=rfc3339(event.at), added_by=event.actor.key_id,
    )


class SshKeysController(Controller):
    path = "/v1/ssh-keys"
    tags = ["ssh-keys"]
    before_request = staticmethod(require_api_key)  # Litestar calls it unbound

    @get("/", operation_id="ListSshKeys", responses=problems(*COMMON), summary="List the org's SSH public keys")
    async def list_ssh_keys(
        self, principal: NamedDependency[Principal], projections: NamedDependency[Projections]
    ) -> SshKeyList:
        rows = await projections.list_ssh_keys(principal.org)
        return SshKeyList(
            ssh_keys=[
                SshKeyInfo(
                    ssh_key_id=row.ssh_key_id, label=row.label, algorithm=row.algorithm, bits=row.bits,
                    fingerprint=row.fingerprint, comment=row.comment, public_key=row.public_key,
                    added_at=rfc3339(row.added_at), added_by=row.added_by,
                )
                for row in rows
            ]
        )

    @post(
        "/",
        operation_id="AddSshKey",
        status_code=HTTP_201_CREATED,
        responses=problems(*COMMON, 409),
        summary="Add an SSH public key (ed25519, ECDSA, or RSA of 2048 bits or more); 409 when the org has it",
    )
    async def add_ssh_key(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[AddSshKeyBody],
        principal: NamedDependency[Principal],
        ledger: NamedDependency[Ledger],
    ) -> Response[SshKeyInfo]:
        command = ledger.add_ssh_key_command(principal.ctx, principal.org, data.public_key, data.label)

        def render(added: SshKeyAdded) -> StoredAnswer:
            return json_answer(HTTP_201_CREATED, added_info(added))

        return await run_command(request, ledger, command, f"{principal.org}/{principal.key_id}", render)

    @delete(
        "/{ssh_key_id:str}",
        operation_id="RemoveSshKey",
        status_code=HTTP_204_NO_CONTENT,
        responses=problems(*COMMON, 403, 404),
        summary="Remove an SSH key (admin keys, or the key that added it)",
    )
    async def remove_ssh_key(
        self,
        ssh_key_id: FromPath[str],
        principal: NamedDependency[Principal],
        ledger: NamedDependency[Ledger],
    ) -> None:
        await ledger.remove_ssh_key(principal.ctx, principal.org, ssh_key_id)
