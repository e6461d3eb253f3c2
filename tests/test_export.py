"""Exports: JSON Lines of one org verifies offline with no other org's data; CSV and OCSF render one row or
object per event of the same source data; no export carries a value or a ciphertext; and any tampering
with a JSON Lines export fails its verification, naming the line.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings

from ledger.checkpoint import Checkpoint, parse_checkpoint, sign_checkpoint
from ledger.codec import decode_event
from ledger.commands import Context, CreatedKey
from ledger.crypto import Keyring, MasterKey, SigningKey
from ledger.errors import RevealDeniedError
from ledger.events import Actor, Event, SecretRevealDenied, SecretRevealed, Source
from ledger.export import CSV_COLUMNS, ExportLine, csv_rows, render, verify_export
from ledger.records import GENESIS_HASH, StoredRecord
from ledger.service import Ledger
from ledger.sqlite_store import SqliteRecorder, iter_org_records
from projections.sqlite_tables import all_projectors
from tests.audit_history import ORGS, histories, run_history, temp_db
from tests.conftest import ADMIN

Pairs = list[tuple[StoredRecord, Event]]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Planted where exports carry text: reveal reasons, request ids, key labels, user agents, addresses.
PLANTED = ("=HYPERLINK(\"http://evil.example\",\"x\")", "+1+1", "-2+3", "@SUM(A1:A9)", "\tTAB start",
           "\rCR start", "=cmd|' /C calc'!A0")
MARKER = "PLANTED-REASON-5d1f"  # a positive control: text that is exported, found by the same search


@dataclass(frozen=True)
class World:
    path: Path
    canaries: tuple[bytes, ...]
    checkpoint_text: str  # acme's head, signed, as kept outside the database
    public_key: str
    foreign: dict[str, tuple[str, ...]]  # org -> strings of that org that no other org's export may carry

    def pairs(self, org: str) -> Pairs:
        return [(record, decode_event(record.body)) for record in iter_org_records(self.path, org)]

    def export(self, fmt: str, org: str) -> bytes:
        return b"".join(render(fmt, self.pairs(org)))


def ctx(key: CreatedKey, *, request_id: str = "", address: str = "", user_agent: str = "") -> Context:
    return Context(actor=Actor(key_id=key.key_id, label=key.label), request_id=request_id,
                   source=Source(address=address, user_agent=user_agent))


async def _build(path: Path, canaries: tuple[bytes, ...]) -> tuple[str, str, dict[str, tuple[str, ...]]]:
    led = Ledger(SqliteRecorder(path, all_projectors()), Keyring(MasterKey.generate()[0]))
    await led.start()
    try:
        acme = await led.create_org(ADMIN, "acme", label="-admin label")
        globex = await led.create_org(ADMIN, "globex", label="globex root")
        agent = await led.create_api_key(ctx(acme, request_id="=1+2"), "acme", PLANTED[6], scope="agents")
        tools = await led.create_api_key(ctx(acme, request_id="\ttab request"), "acme", "tools bot", scope="tools")
        deployer = await led.create_api_key(ctx(globex), "globex", "globex deployer")
        await led.upsert_secret(ctx(acme, user_agent="@agent/1.0"), "acme", "acme-db", canaries[0])
        await led.upsert_secret(ctx(globex), "globex", "GLOBEX_ONLY_TOKEN", b"globex-value")
        await led.upsert_secret(ctx(acme, address="-10.0.0.1"), "acme", "acme-tools", canaries[1], scope="tools")
        await led.reveal_secret(ctx(agent, request_id="+req"), "acme", "acme-db", reason=PLANTED[0])
        await led.reveal_secret(ctx(deployer, user_agent="globex-cli"), "globex", "GLOBEX_ONLY_TOKEN",
                                reason="globex reason")
        with pytest.raises(RevealDeniedError):
            await led.reveal_secret(ctx(agent, user_agent="\rcr agent"), "acme", "acme-tools", reason="asked nicely")
        await led.upsert_secret(ctx(acme), "acme", "acme-db", canaries[2], description="rotated")
        await led.reveal_secret(ctx(tools, request_id="@at request"), "acme", "acme-db", reason=PLANTED[3])
        await led.reveal_secret(ctx(tools), "acme", "acme-tools", reason=PLANTED[4])
        await led.reveal_secret(ctx(acme), "acme", "acme-db", reason=PLANTED[5])
        await led.reveal_secret(ctx(acme), "acme", "acme-db", reason=MARKER)
        await led.reveal_secret(ctx(acme), "acme", "acme-db", reason=PLANTED[2])
        await led.revoke_api_key(ctx(acme), "acme", tools.key_id)
        await led.revoke_api_key(ctx(globex), "globex", deployer.key_id)
        await led.delete_secret(ctx(acme), "acme", "acme-tools")
        await led.upsert_secret(ctx(acme), "acme", "acme-tools", b"again", scope="tools")
        await led.reveal_secret(ctx(acme, request_id=PLANTED[1]), "acme", "acme-tools")
        await led.delete_secret(ctx(globex), "globex", "GLOBEX_ONLY_TOKEN")
        checkpoint = await led.checkpoint("acme")
        assert checkpoint is not None
        foreign = {
            "acme": ("acme", "acme-db", "acme-tools", "-admin label", "tools bot", acme.key_id, agent.key_id,
                     tools.key_id),
            "globex": ("globex", "GLOBEX_ONLY_TOKEN", "globex root", "globex deployer", "globex reason",
                       "globex-cli", globex.key_id, deployer.key_id),
        }
        return checkpoint.text(), led.signing_key.public_key, foreign
    finally:
        await led.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    path = tmp_path_factory.mktemp("export") / "keyledger.db"
    canaries = tuple(f"CANARY-{os.urandom(16).hex()}".encode() for _ in range(3))
    text, public_key, foreign = asyncio.run(_build(path, canaries))
    return World(path=path, canaries=canaries, checkpoint_text=text, public_key=public_key, foreign=foreign)


def lines_of(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def rfc3339(ns: int) -> str:
    """Independently of the code under test: UTC, microseconds, Z."""
    return datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S") + \
        f".{ns % 1_000_000_000 // 1000:06d}Z"


def outcome(event: Event) -> tuple[str, str]:
    if isinstance(event, SecretRevealed):
        return "granted", event.reason
    if isinstance(event, SecretRevealDenied):
        return "denied", event.reason
    return "ok", ""


# -- JSON Lines: verifies alone ------------------------------------------------------------------------------


@pytest.mark.parametrize("org", ORGS)
def test_the_json_lines_export_of_each_org_verifies_alone(world: World, org: str) -> None:
    pairs = world.pairs(org)
    data = world.export("jsonl", org)
    lines = lines_of(data)
    assert len(lines) == len(pairs) > 5
    report = verify_export(lines)
    assert report.ok, report.summary()
    assert report.checked == len(pairs)
    last = pairs[-1][0]
    assert report.orgs == {org: (last.org_seq, last.hash.hex())}
    # as text lines too, and as a file read in binary mode yields them
    assert verify_export([line.decode() for line in lines]).ok
    assert verify_export(io.BytesIO(data)).ok
    for line, (record, event) in zip(lines, pairs, strict=True):
        fields = msgspec.json.decode(line)
        assert {"seq", "org_seq", "type", "time", "actor", "source", "request_id", "secret", "version", "outcome",
                "prev_hash", "hash"} <= set(fields)
        assert (fields["seq"], fields["org"], fields["org_seq"], fields["type"]) == (
            record.seq, org, record.org_seq, record.type)
        assert (fields["prev_hash"], fields["hash"]) == (record.prev_hash.hex(), record.hash.hex())
        assert (fields["time"], fields["request_id"]) == (rfc3339(record.at), event.request_id)
        assert fields["actor"] == msgspec.to_builtins(event.actor)
        assert fields["source"] == msgspec.to_builtins(event.source)
        assert (fields["secret"], fields["version"]) == (getattr(event, "name", None), getattr(event, "version", None))
        assert (fields["outcome"], fields["detail"]) == outcome(event)


@pytest.mark.parametrize("org", ORGS)
def test_an_orgs_export_carries_no_other_orgs_data(world: World, org: str) -> None:
    other = next(o for o in ORGS if o != org)
    for fmt in ("jsonl", "csv", "ocsf"):
        data = world.export(fmt, org)
        for text in world.foreign[other]:
            assert text.encode() not in data, (fmt, org, text)
        assert world.foreign[org][1].encode() in data  # positive control: its own secret is named


def test_the_whole_ledger_has_both_orgs_interleaved(world: World) -> None:
    seqs = {org: [r.seq for r, _ in world.pairs(org)] for org in ORGS}
    assert min(seqs["globex"]) < max(seqs["acme"]) and min(seqs["acme"]) < max(seqs["globex"])
    assert sorted(seqs["acme"] + seqs["globex"]) == list(range(1, len(seqs["acme"]) + len(seqs["globex"]) + 1))


# -- CSV and OCSF: one row per event of the same data -------------------------------------------------------------


def escaped(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def csv_table(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


@pytest.mark.parametrize("org", ORGS)
def test_csv_has_the_header_and_one_row_per_event(world: World, org: str) -> None:
    pairs = world.pairs(org)
    header, *rows = csv_table(world.export("csv", org))
    assert tuple(header) == CSV_COLUMNS
    assert len(rows) == len(pairs)
    for row, (record, event) in zip(rows, pairs, strict=True):
        cells = dict(zip(CSV_COLUMNS, row, strict=True))
        want = {
            "seq": record.seq, "org": record.org, "org_seq": record.org_seq, "time": rfc3339(record.at),
            "type": record.type, "actor_key_id": event.actor.key_id, "actor_label": event.actor.label,
            "actor_kind": event.actor.kind, "client_address": event.source.address,
            "user_agent": event.source.user_agent, "request_id": event.request_id,
            "secret": getattr(event, "name", None), "version": getattr(event, "version", None),
            "outcome": outcome(event)[0], "detail": outcome(event)[1],
            "prev_hash": record.prev_hash.hex(), "hash": record.hash.hex(),
            "actor_subject": getattr(event.actor, "subject", None) or None,
        }
        assert cells == {column: escaped(value) for column, value in want.items()}, record.seq


def test_csv_cells_that_a_spreadsheet_would_run_are_escaped(world: World) -> None:
    table = csv_table(world.export("csv", "acme"))
    cells = [cell for row in table for cell in row]
    assert not [cell for cell in cells if cell.startswith(FORMULA_START)]
    # every planted value is there, defused, in the column it was planted in
    for planted in (*PLANTED, "=1+2", "\ttab request", "+req", "@at request", "@agent/1.0", "-10.0.0.1",
                    "\rcr agent", "-admin label"):
        assert "'" + planted in cells, repr(planted)
    # and a denied reveal's own reason, which starts with a letter, is left alone
    assert any(cell.startswith("key scope 'agents' does not cover") for cell in cells)


def test_csv_escapes_each_formula_start_in_every_text_column() -> None:
    """Each of = + - @ TAB CR at the start of each text column, one event each."""
    texts = [start + "x" for start in FORMULA_START]
    pairs: Pairs = []
    for i, text in enumerate(texts, start=1):
        event = SecretRevealed(org="acme", stream=f"secret:acme/{text}", stream_version=None, at=i,
                               actor=Actor(key_id=text, label=text), source=Source(address=text, user_agent=text),
                               request_id=text, name=text, version=1, reason=text)
        record = StoredRecord(seq=i, org="acme", org_seq=i, stream=event.stream, stream_version=None,
                              type="secret.revealed", at=i, body=b"{}", sealed=None, prev_hash=GENESIS_HASH,
                              hash=GENESIS_HASH)
        pairs.append((record, event))
    _, *rows = csv_table(b"".join(csv_rows(pairs)))
    for row, text in zip(rows, texts, strict=True):
        cells = dict(zip(CSV_COLUMNS, row, strict=True))
        for column in ("actor_key_id", "actor_label", "client_address", "user_agent", "request_id", "secret",
                       "detail"):
            assert cells[column] == "'" + text, (column, text)


API_ACTIVITY = {"secret.created": 1, "secret.updated": 3, "secret.deleted": 4, "secret.revealed": 2,
                "secret.reveal_denied": 2}


@pytest.mark.parametrize("org", ORGS)
def test_ocsf_has_one_object_per_event_with_the_right_class_and_type(world: World, org: str) -> None:
    pairs = world.pairs(org)
    objects = [msgspec.json.decode(line) for line in lines_of(world.export("ocsf", org))]
    assert len(objects) == len(pairs)
    classes = set()
    for obj, (record, event) in zip(objects, pairs, strict=True):
        assert obj["unmapped"]["seq"] == record.seq and obj["unmapped"]["hash"] == record.hash.hex()
        assert obj["unmapped"]["keyledger_type"] == record.type
        assert obj["metadata"]["uid"] == f"{org}:{record.org_seq}" and obj["metadata"]["tenant_uid"] == org
        assert obj["time"] == record.at // 1_000_000  # epoch milliseconds
        assert obj["actor"]["user"]["uid"] == event.actor.key_id
        assert obj["type_uid"] == obj["class_uid"] * 100 + obj["activity_id"], record.type
        assert obj["category_uid"] == obj["class_uid"] // 1000
        classes.add(obj["class_uid"])
        if record.type == "api_key.created":
            assert (obj["class_uid"], obj["activity_id"]) == (3004, 1)  # Entity Management: Create
            assert obj["entity"]["uid"] == event.key_id  # type: ignore[attr-defined]
        elif record.type == "api_key.revoked":
            assert obj["class_uid"] == 3004 and obj["activity_id"] in (4, 9, 11)  # Delete, Disable, Deactivate
            assert obj["entity"]["uid"] == event.key_id  # type: ignore[attr-defined]
        elif record.type in API_ACTIVITY:
            assert (obj["class_uid"], obj["activity_id"]) == (6003, API_ACTIVITY[record.type])  # API Activity
            assert obj["api"]["request"]["uid"] == event.request_id
            assert obj["resources"][0]["name"] == event.name  # type: ignore[attr-defined]
            assert obj["status_id"] == (2 if record.type == "secret.reveal_denied" else 1)  # Failure / Success
    assert {3004, 6003} <= classes


@settings(max_examples=20)
@given(history=histories(batches=True, lifecycle=True))
def test_every_format_renders_the_same_events_of_generated_histories(history: list[Any]) -> None:
    with temp_db("keyledger-export-") as path:
        run_history(path, history)
        for org in ORGS:
            pairs = [(r, decode_event(r.body)) for r in iter_org_records(path, org)]
            jsonl = lines_of(b"".join(render("jsonl", pairs)))
            report = verify_export(jsonl)
            assert report.ok and report.checked == len(pairs), report.summary()
            keys = [(r.seq, r.hash.hex()) for r, _ in pairs]
            assert [(line["seq"], line["hash"]) for line in map(msgspec.json.decode, jsonl)] == keys
            _, *rows = csv_table(b"".join(render("csv", pairs)))
            hash_column = CSV_COLUMNS.index("hash")
            assert [(int(row[0]), row[hash_column]) for row in rows] == keys
            ocsf = [msgspec.json.decode(line) for line in lines_of(b"".join(render("ocsf", pairs)))]
            assert [(obj["unmapped"]["seq"], obj["unmapped"]["hash"]) for obj in ocsf] == keys


# -- no value, no ciphertext -------------------------------------------------------------------------------------


def encodings(raw: bytes) -> list[bytes]:
    """The forms a value could take in an export: itself, hex, base64 (standard and URL-safe) at each
    alignment, without the characters that mix in neighbouring bytes."""
    forms = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * pad + raw)
            start = (pad * 4 + 2) // 3
            forms.append(encoded[start: start + (len(raw) * 4) // 3 - 4])
    return forms


def test_no_export_carries_a_value_or_a_ciphertext(world: World) -> None:
    conn = sqlite3.connect(f"file:{world.path}?mode=ro", uri=True)
    try:
        sealed = [row[0] for row in conn.execute("SELECT sealed FROM events WHERE sealed IS NOT NULL")]
        wrapped = [row[0] for row in conn.execute("SELECT wrapped FROM data_keys")]
    finally:
        conn.close()
    assert len(sealed) == 5 and wrapped
    exports = {(fmt, org): world.export(fmt, org) for fmt in ("jsonl", "csv", "ocsf") for org in ORGS}
    for (fmt, org), data in exports.items():
        for canary in world.canaries:
            for form in encodings(canary):
                assert form not in data, (fmt, org)
        for text in [*sealed, *wrapped]:
            for part in text.split(":"):  # iv, ciphertext and tag, each in base64
                assert part.encode() not in data, (fmt, org)
        if org == "acme" and fmt != "ocsf":  # positive control: the same search finds what is exported
            assert MARKER.encode() in data


# -- tampering with a JSON Lines export ------------------------------------------------------------------------------


_raw_fields = msgspec.json.Decoder(dict[str, msgspec.Raw])


def parse(line: bytes) -> dict[str, Any]:
    """The line's fields, decoded, except the event body, kept as its exact bytes."""
    fields = _raw_fields.decode(line)
    return {name: raw if name == "body" else msgspec.json.decode(raw) for name, raw in fields.items()}


def encode(fields: dict[str, Any]) -> bytes:
    return msgspec.json.encode(fields) + b"\n"


def respace_body(fields: dict[str, Any]) -> dict[str, Any]:
    """The same event in other bytes: a space after the body's "stream" key (escaped, if the body is text)."""
    raw = bytes(fields["body"])
    for key in (b'"stream":', b'\\"stream\\":'):
        if key in raw:
            return {**fields, "body": msgspec.Raw(raw.replace(key, key + b" ", 1))}
    raise AssertionError("no stream in the body")


def flip_hex(text: str) -> str:
    return ("1" if text[0] == "0" else "0") + text[1:]


CHANGES: dict[str, Any] = {
    "org": lambda f: {**f, "org": "umbrella"},
    "org_seq": lambda f: {**f, "org_seq": f["org_seq"] + 1},
    "type": lambda f: {**f, "type": "secret.updated" if f["type"] != "secret.updated" else "secret.created"},
    "time": lambda f: {**f, "time": rfc3339(f["at"] + 1000)},
    "at": lambda f: {**f, "at": f["at"] + 1},
    "actor.key_id": lambda f: {**f, "actor": {**f["actor"], "key_id": "key_0000000000000000"}},
    "actor.label": lambda f: {**f, "actor": {**f["actor"], "label": f["actor"]["label"] + "!"}},
    "actor.kind": lambda f: {**f, "actor": {**f["actor"], "kind": "system"}},
    "source.address": lambda f: {**f, "source": {**f["source"], "address": "203.0.113.9"}},
    "source.user_agent": lambda f: {**f, "source": {**f["source"], "user_agent": "curl/8"}},
    "request_id": lambda f: {**f, "request_id": f["request_id"] + "x"},
    "secret": lambda f: {**f, "secret": "other" if f["secret"] else "acme-db"},
    "version": lambda f: {**f, "version": (f["version"] or 0) + 1},
    "outcome": lambda f: {**f, "outcome": "granted" if f["outcome"] != "granted" else "denied"},
    "detail": lambda f: {**f, "detail": f["detail"] + "x"},
    "prev_hash": lambda f: {**f, "prev_hash": flip_hex(f["prev_hash"])},
    "hash": lambda f: {**f, "hash": flip_hex(f["hash"])},
    "body": respace_body,
}


def assert_names_line(report: Any, line_no: int, *fragments: str) -> None:
    assert not report.ok, f"tampering at line {line_no} was not detected"
    assert report.reason.startswith(f"line {line_no}: "), (line_no, report.reason)
    assert any(fragment in report.reason for fragment in fragments), (line_no, report.reason)


def test_every_field_the_lines_carry_is_covered() -> None:
    """Every field of an export line is changed below, except `seq`: the global seq is not hashed (it
    depends on other orgs' traffic), so the verifier can only check that it grows."""
    fields = {name.split(".")[0] for name in CHANGES}
    assert fields == set(ExportLine.__struct_fields__) - {"seq"}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_changed_field_on_any_line_fails_and_names_the_line(world: World, change: str) -> None:
    lines = lines_of(world.export("jsonl", "acme"))
    parsed = [parse(line) for line in lines]
    assert verify_export([encode(f) for f in parsed]).ok  # re-encoding alone changes nothing
    for i, fields in enumerate(parsed):
        tampered = CHANGES[change](fields)
        assert tampered != fields
        report = verify_export([*lines[:i], encode(tampered), *lines[i + 1:]])
        assert_names_line(report, i + 1, "another org", "org_seq", "prev_hash", "hash does not match",
                          "do not match its event body")
        assert report.first_bad_seq == fields["seq"]
        assert report.checked == i


def test_a_removed_line_fails_and_names_the_line_after_it(world: World) -> None:
    lines = lines_of(world.export("jsonl", "acme"))
    for i in range(len(lines) - 1):
        assert_names_line(verify_export([*lines[:i], *lines[i + 1:]]), i + 1, "org_seq is")


def test_a_removed_last_line_needs_the_checkpoint(world: World) -> None:
    lines = lines_of(world.export("jsonl", "acme"))
    checkpoint = parse_checkpoint(world.checkpoint_text)
    assert checkpoint.org_seq == len(lines)
    assert verify_export(lines, checkpoint=checkpoint, trusted_keys={world.public_key}).ok
    assert verify_export(lines[:-1]).ok  # a shorter export is still a valid chain
    report = verify_export(lines[:-1], checkpoint=checkpoint, trusted_keys={world.public_key})
    assert not report.ok and "events are missing" in report.reason


def test_swapped_lines_fail_and_name_the_first_of_them(world: World) -> None:
    lines = lines_of(world.export("jsonl", "acme"))
    n = len(lines)
    pairs = [(i, i + 1) for i in range(n - 1)] + [(0, n - 1), (2, n // 2), (n // 3, n - 2)]
    for i, j in pairs:
        swapped = list(lines)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        assert_names_line(verify_export(swapped), i + 1, "org_seq is", "seq does not increase")


def test_a_line_of_another_org_inserted_fails_and_names_it(world: World) -> None:
    lines = lines_of(world.export("jsonl", "acme"))
    theirs = lines_of(world.export("jsonl", "globex"))
    for k in range(1, len(lines) + 1):
        line = theirs[k % len(theirs)]
        assert_names_line(verify_export([*lines[:k], line, *lines[k:]]), k + 1, "another org")
        if k >= 2:  # and one of theirs in place of one of ours
            assert_names_line(verify_export([*lines[:k - 1], line, *lines[k:]]), k, "another org")
    # put first, the foreign line is taken as the export's org: the next line is then the foreign one
    report = verify_export([theirs[0], *lines])
    assert not report.ok and report.reason.startswith("line 2: ")


def test_a_duplicated_line_fails(world: World) -> None:
    lines = lines_of(world.export("jsonl", "acme"))
    for i in range(len(lines)):
        assert_names_line(verify_export([*lines[:i + 1], lines[i], *lines[i + 1:]]), i + 2, "seq does not increase")


def test_a_checkpoint_of_another_org_or_key_fails_a_valid_export(world: World) -> None:
    lines = lines_of(world.export("jsonl", "globex"))
    checkpoint = parse_checkpoint(world.checkpoint_text)  # acme's
    assert not verify_export(lines, checkpoint=checkpoint).ok
    acme = lines_of(world.export("jsonl", "acme"))
    forged: Checkpoint = sign_checkpoint(SigningKey(os.urandom(32)), "acme", checkpoint.org_seq, checkpoint.head,
                                         checkpoint.at)
    assert verify_export(acme, checkpoint=forged).ok  # valid, but by whom: only trusted keys say
    report = verify_export(acme, checkpoint=forged, trusted_keys={world.public_key})
    assert not report.ok and "not trusted" in report.reason
