"""Audit exports, rendered from the ledger's records: JSON Lines (canonical), CSV and OCSF.

A JSON Lines export carries, per event, the stored body (which holds no value and no ciphertext:
value events commit to their ciphertext by digest), `prev_hash` and `hash`, so that an export of a
whole org verifies offline with `verify_export`, with no other org's data.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator

import msgspec
from msgspec import UnsetType

from ledger.checkpoint import Checkpoint, CheckpointError, check_signature
from ledger.codec import decode_event
from ledger.errors import IntegrityError
from ledger.events import (
    Actor,
    ApiKeyCreated,
    ApiKeyRevoked,
    Event,
    Source,
    event_type,
    outcome_of,
    secret_name,
    secret_version,
)
from ledger.records import GENESIS_HASH, StoredRecord, chain_hash
from ledger.timefmt import rfc3339
from ledger.verify import VerifyReport

FORMATS = ("jsonl", "csv", "ocsf")
MAX_LINE = 1_000_000


class ExportLine(msgspec.Struct, kw_only=True):
    seq: int
    org: str
    org_seq: int
    type: str
    time: str
    at: int
    actor: Actor
    source: Source
    request_id: str
    secret: str | None
    version: int | None
    outcome: str
    detail: str
    prev_hash: str
    hash: str
    body: msgspec.Raw  # the stored bytes of the event, exactly, as a JSON object


_line_encoder = msgspec.json.Encoder()
_line_decoder = msgspec.json.Decoder(ExportLine)


def export_line(record: StoredRecord, event: Event) -> ExportLine:
    outcome, detail = outcome_of(event)
    return ExportLine(
        seq=record.seq, org=record.org, org_seq=record.org_seq, type=record.type, time=rfc3339(record.at),
        at=record.at, actor=event.actor, source=event.source, request_id=event.request_id,
        secret=secret_name(event), version=secret_version(event), outcome=outcome, detail=detail,
        prev_hash=record.prev_hash.hex(), hash=record.hash.hex(), body=msgspec.Raw(record.body),
    )


def jsonl(records: Iterable[tuple[StoredRecord, Event]]) -> Iterator[bytes]:
    for record, event in records:
        yield _line_encoder.encode(export_line(record, event)) + b"\n"


CSV_COLUMNS = (
    "seq", "org", "org_seq", "time", "type", "actor_key_id", "actor_label", "actor_kind", "client_address",
    "user_agent", "request_id", "secret", "version", "outcome", "detail", "prev_hash", "hash",
    "actor_subject",  # a person's subject at the identity provider (added last: earlier columns keep their place)
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> str:
    """A cell as text; text a spreadsheet would run as a formula is prefixed with an apostrophe."""
    text = "" if value is None else str(value)
    if text.startswith(_FORMULA_START):
        return "'" + text
    return text


def csv_rows(records: Iterable[tuple[StoredRecord, Event]]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue().encode()
    for record, event in records:
        buffer.seek(0)
        buffer.truncate()
        line = export_line(record, event)
        writer.writerow([csv_cell(v) for v in (
            line.seq, line.org, line.org_seq, line.time, line.type, line.actor.key_id, line.actor.label,
            line.actor.kind, line.source.address, line.source.user_agent, line.request_id, line.secret,
            line.version, line.outcome, line.detail, line.prev_hash, line.hash,
            "" if isinstance(line.actor.subject, UnsetType) else line.actor.subject,
        )])
        yield buffer.getvalue().encode()


# OCSF 1.x: API Activity (6003) for secret actions, Entity Management (3004) for key changes.
_API_ACTIVITY = {"secret.created": (1, "CreateSecret"), "secret.updated": (3, "UpdateSecret"),
                 "secret.deleted": (4, "DeleteSecret"), "secret.revealed": (2, "RevealSecret"),
                 "secret.reveal_denied": (2, "RevealSecret"), "secret.version_destroyed": (4, "DestroySecretVersion"),
                 "secret.rolled_back": (3, "RollbackSecret"), "secret.restored": (3, "RestoreSecret"),
                 "secret.destroyed": (4, "DestroySecret"), "org.settings_changed": (3, "ChangeOrgSettings"),
                 "master_key.rotated": (3, "RotateMasterKey"), "secret.rotated": (3, "RotateSecret"),
                 "secret.reveal_failed": (2, "RevealSecret"), "secret.policy_changed": (3, "SetRevealPolicy"),
                 "secret.rotation_configured": (3, "ConfigureRotation"),
                 "secret.rotation_started": (3, "RotateSecret"), "secret.rotation_failed": (3, "RotateSecret"),
                 "secret.member_added": (1, "AddPoolMember"), "secret.member_updated": (3, "UpdatePoolMember"),
                 "secret.member_state_changed": (3, "ChangePoolMemberState"),
                 "secret.member_removed": (4, "RemovePoolMember"), "secret.pool_configured": (3, "ConfigurePool"),
                 "ssh_key.added": (1, "AddSshKey"), "ssh_key.removed": (4, "RemoveSshKey"),
                 "session.started": (1, "StartSession"), "session.ended": (4, "EndSession"),
                 "member.joined": (1, "JoinOrg"), "member.role_changed": (3, "ChangeMemberRole"),
                 "member.removed": (4, "RemoveMember"), "sso.configured": (3, "ConfigureSso"),
                 "sso.removed": (4, "RemoveSso"), "app.connected": (1, "ConnectApp"),
                 "app.token_refreshed": (3, "RefreshAppToken"), "app.refresh_failed": (3, "RefreshAppToken"),
                 "app.disconnected": (4, "DisconnectApp"), "app.token_revealed": (2, "RevealAppToken"),
                 "app.token_denied": (2, "RevealAppToken")}


def ocsf_event(record: StoredRecord, event: Event, product_version: str = "0.1.0") -> dict[str, object]:
    base: dict[str, object] = {
        "time": record.at // 1_000_000, "severity_id": 1,
        "metadata": {"version": "1.3.0", "uid": f"{record.org}:{record.org_seq}", "tenant_uid": record.org,
                     "product": {"name": "keyledger", "vendor_name": "keyledger", "version": product_version},
                     "correlation_uid": event.request_id},
        "actor": {"user": actor_user(event)},
        "src_endpoint": {"ip": event.source.address or None},
        "unmapped": {"keyledger_type": record.type, "seq": record.seq, "hash": record.hash.hex()},
    }
    if isinstance(event, ApiKeyCreated | ApiKeyRevoked):
        activity = 1 if isinstance(event, ApiKeyCreated) else 4
        base.update({
            "category_uid": 3, "class_uid": 3004, "activity_id": activity, "type_uid": 300400 + activity,
            "status_id": 1, "entity": {"uid": event.key_id, "type": "api_key", "name": getattr(event, "label", None)},
        })
        return base
    activity, operation = _API_ACTIVITY.get(record.type, (99, record.type))
    denied = outcome_of(event)[0] in ("denied", "failed")
    base.update({
        "category_uid": 6, "class_uid": 6003, "activity_id": activity, "type_uid": 600300 + activity,
        "status_id": 2 if denied else 1, "status_detail": outcome_of(event)[1] if denied else None,
        "api": {"operation": operation, "request": {"uid": event.request_id}},
        "http_request": {"user_agent": event.source.user_agent or None},
    })
    name = secret_name(event)
    if name is not None and record.type.startswith("app."):
        base["resources"] = [{"type": "connected_app", "name": name, "uid": f"{record.org}/{name}"}]
    elif name is not None:
        base["resources"] = [{"type": "secret", "name": name, "uid": f"{record.org}/{name}@{secret_version(event)}"}]
    return base


def actor_user(event: Event) -> dict[str, object]:
    """OCSF's User: a person carries their email and their subject at the identity provider."""
    user: dict[str, object] = {"uid": event.actor.key_id, "name": event.actor.label, "type": event.actor.kind}
    if event.actor.kind == "person":
        user["email_addr"] = event.actor.label
        user["uid_alt"] = None if isinstance(event.actor.subject, UnsetType) else event.actor.subject
    return user


def ocsf(records: Iterable[tuple[StoredRecord, Event]]) -> Iterator[bytes]:
    for record, event in records:
        yield _line_encoder.encode(ocsf_event(record, event)) + b"\n"


def render(fmt: str, records: Iterable[tuple[StoredRecord, Event]]) -> Iterator[bytes]:
    if fmt == "jsonl":
        return jsonl(records)
    if fmt == "csv":
        return csv_rows(records)
    if fmt == "ocsf":
        return ocsf(records)
    raise ValueError(f"unknown export format {fmt!r}")


def verify_export(
    lines: Iterable[bytes | str], *, checkpoint: Checkpoint | None = None, trusted_keys: set[str] | None = None
) -> VerifyReport:
    """Verify a JSON Lines export of one org alone: it must start at the org's first event."""
    if checkpoint is not None:
        try:
            check_signature(checkpoint, trusted_keys)
        except CheckpointError as exc:
            return VerifyReport(ok=False, checked=0, orgs={}, reason=str(exc))
    org: str | None = None
    org_seq, prev = 0, GENESIS_HASH
    checked = 0
    last_seq = 0
    line_no = 0

    def fail(reason: str, seq: int | None = None) -> VerifyReport:
        where = f"line {line_no}: "
        return VerifyReport(ok=False, checked=checked, first_bad_seq=seq, reason=where + reason,
                            orgs={org: (org_seq, prev.hex())} if org else {})

    for raw in lines:
        line_no += 1
        try:
            data = raw.encode() if isinstance(raw, str) else raw
        except UnicodeEncodeError:  # text with a lone surrogate (read with errors="surrogateescape")
            return fail("not UTF-8 text")
        if not data.strip():
            continue
        if len(data) > MAX_LINE:
            return fail("line too long")
        try:
            line = _line_decoder.decode(data)
        except (msgspec.DecodeError, ValueError):
            return fail("not an export line of this format")
        if org is None:
            org = line.org
        if line.org != org:
            return fail(f"an event of another org ({line.org!r}) in a one-org export", line.seq)
        if line.seq <= last_seq:
            return fail("seq does not increase", line.seq)
        if line.org_seq != org_seq + 1:
            return fail(f"org_seq is {line.org_seq}, expected {org_seq + 1} (missing or reordered events)", line.seq)
        try:
            prev_hash, digest = bytes.fromhex(line.prev_hash), bytes.fromhex(line.hash)
        except ValueError:
            return fail("prev_hash or hash is not hex", line.seq)
        if prev_hash != prev:
            return fail("prev_hash does not link to the previous event", line.seq)
        body = bytes(line.body)
        if chain_hash(org, line.org_seq, prev_hash, body) != digest:
            return fail("hash does not match the event body", line.seq)
        try:
            event = decode_event(body)
        except IntegrityError as exc:
            return fail(str(exc), line.seq)
        try:
            event_time = rfc3339(event.at)
        except (OverflowError, ValueError, OSError):
            return fail("the event's time is out of range", line.seq)
        outcome, detail = outcome_of(event)
        if (event.org != org or event_type(event) != line.type or event.at != line.at or line.time != event_time
                or event.actor != line.actor or event.source != line.source or event.request_id != line.request_id
                or secret_name(event) != line.secret or secret_version(event) != line.version
                or (outcome, detail) != (line.outcome, line.detail)):
            return fail("the line's fields do not match its event body", line.seq)
        if checkpoint is not None and checkpoint.org == org and checkpoint.org_seq == line.org_seq \
                and checkpoint.head != digest:
            return fail(f"differs from the signed checkpoint at org_seq {line.org_seq}", line.seq)
        org_seq, prev, last_seq = line.org_seq, digest, line.seq
        checked += 1
    report = VerifyReport(ok=True, checked=checked, orgs={org: (org_seq, prev.hex())} if org else {})
    if checkpoint is not None and (checkpoint.org != org or checkpoint.org_seq > org_seq):
        report.ok = False
        report.reason = (f"the export of org {org!r} ends at org_seq {org_seq} but a signed checkpoint of org "
                         f"{checkpoint.org!r} covers org_seq {checkpoint.org_seq}: events are missing")
    return report
