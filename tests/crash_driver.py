"""The crash driver: the real server under concurrent load, SIGKILLed at random moments, then checked.

Used by `tests/test_crash.py` (CI size) and `scripts/soak/crash.py` (a long run). One `CrashRun` owns a
database file and a server process; each `crash_once()`:

1. starts several client threads that upsert (unique values) and reveal (names that exist) as fast
   as the server answers, every request with a unique `X-Request-ID`, a third of them with an
   `Idempotency-Key`;
2. after a random 0.1-1.0 s, SIGKILLs the server's process group while requests are in flight;
3. with the server dead, checks the database file (`check_ledger`): every request answered 2xx is in
   exactly one event with the answered version, nothing is duplicated or comes from nowhere, version
   streams have no gaps, the chains verify, the projections equal a rebuild, and the successful reveal
   answers equal the `secret.revealed` events for them; every check is cumulative over all rounds;
4. restarts the server on the same file, reveals a few names (the value must be the one the ledger's
   current version was written with), and retries the idempotent requests the kill left unanswered
   (exactly one event per logical request, whether or not the first attempt committed).

Findings are collected, not asserted, so that the soak can count them; the test asserts there are none.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec

from ledger.checkpoint import Checkpoint
from ledger.codec import decode_event
from ledger.crypto import MasterKey
from ledger.events import event_type, secret_name, secret_version
from ledger.sqlite_store import SqliteRecorder, iter_records, iter_rows
from ledger.verify import verify_rows
from projections.sqlite_tables import PROJECTION_TABLES, PROJECTOR_NAMES, all_projectors
from tests.test_projections import dump, head_and_positions

ORG = "crash"
NAMES = tuple(f"crash-{i:02d}" for i in range(24))  # few enough that most upserts are updates
VALUE_TYPES = frozenset({"secret.created", "secret.updated"})
EXPECTED_TYPES = {"upsert": VALUE_TYPES, "reveal": frozenset({"secret.revealed"}), "org": frozenset({"org.created"})}
SURVIVOR_REVEALS = 4  # names revealed after each restart (all of them are covered over a run)


class ServerError(Exception):
    """The server did not start (or stopped on its own); the message ends with its log's tail."""


def keyledger_command() -> str:
    """The `keyledger` entry point of the running interpreter's environment (the project's .venv)."""
    beside = Path(sys.executable).with_name("keyledger")
    if beside.exists():
        return str(beside)
    found = shutil.which("keyledger")
    if found is None:
        raise ServerError("cannot find the keyledger command (install the project in the venv)")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the server ------------------------------------------------------------------------------------


class Server:
    """`keyledger serve` exactly as production runs it, in its own process group (SIGKILLed whole)."""

    def __init__(self, db: Path, log_path: Path) -> None:
        self.db = db
        self.log_path = log_path
        key, self.master_key = MasterKey.generate()  # the same key across restarts: it must open the data keys
        self.public_key = key.signing_key().public_key  # of the checkpoints it signs
        self.admin_token = "adm_crash_" + os.urandom(8).hex()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log_read = 0  # how far the log has been searched for errors

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait for GET /readyz = 200; returns the seconds it took."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYLEDGER_")}
        env |= {"KEYLEDGER_MASTER_KEY": self.master_key, "KEYLEDGER_ADMIN_TOKEN": self.admin_token}
        port = free_port()  # a fresh port per start: nothing can linger from the killed process
        self.url = f"http://127.0.0.1:{port}"
        command = [keyledger_command(), "serve", "--host", "127.0.0.1", "--port", str(port), "--db", str(self.db)]
        began = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.log_read = log.tell()
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, cwd=self.db.parent, start_new_session=True)
        self._wait_ready(began + timeout)
        return time.monotonic() - began

    def _wait_ready(self, deadline: float) -> None:
        assert self.proc is not None
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise ServerError(f"the server exited with {self.proc.returncode} at start:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(self.url + "/readyz").status_code == 200:
                        return
                time.sleep(0.03)
        self.kill()
        raise ServerError(f"the server was not ready in time:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the whole process group and reap it: after this the file lock is free."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: the server leads its own group
        proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_errors(self) -> list[str]:
        """New lines of the server's output that report an error (it normally writes nothing)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self.log_read)
                text = log.read().decode(errors="replace")
                self.log_read = log.tell()
        except OSError:
            return []
        return [line for line in text.splitlines() if "Traceback" in line or "ERROR" in line or "CRITICAL" in line]


# -- requests and answers --------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One logical request; `value` is the value sent (upserts). Retries reuse it with a new request id."""

    kind: str  # "org" | "upsert" | "reveal"
    request_id: str
    name: str
    body: bytes
    value: str = ""
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Answer:
    """A 2xx answer. `request_ids`: the first attempt's id, then the retry's (if it was retried)."""

    request: Request
    request_ids: tuple[str, ...]
    status: int
    version: int
    value: str = ""  # the revealed value
    replayed: bool = False


def path_of(request: Request) -> str:
    if request.kind == "org":
        return "/v1/admin/orgs"
    if request.kind == "upsert":
        return "/v1/secrets"
    return f"/v1/secrets/{request.name}/reveal"


def send(http: httpx.Client, request: Request, request_id: str, token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "X-Request-ID": request_id, "Content-Type": "application/json"}
    if request.idempotency_key is not None:
        headers["Idempotency-Key"] = request.idempotency_key
    return http.post(path_of(request), content=request.body, headers=headers)


def answer_of(request: Request, request_ids: tuple[str, ...], response: httpx.Response) -> Answer | str:
    """The answer, or why it is not a good one (a string)."""
    if response.status_code not in (200, 201):
        return f"{request.kind} {request_ids[-1]}: HTTP {response.status_code} {response.text[:300]}"
    try:
        body: dict[str, Any] = response.json()
        if request.kind == "org":
            return Answer(request, request_ids, response.status_code, 0, value=str(body["api_key"]))
        replayed = response.headers.get("idempotent-replayed") == "true"
        value = str(body["value"]) if request.kind == "reveal" else ""
        return Answer(request, request_ids, response.status_code, int(body["version"]), value, replayed)
    except (ValueError, KeyError, TypeError) as exc:
        return f"{request.kind} {request_ids[-1]}: a 2xx answer without the expected body ({exc!r})"


class Shared:
    """What the clients share: every request sent, the names known to exist, the answers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: dict[str, Request] = {}  # every request id sent (retries too) -> its logical request
        self.names: list[str] = []  # names whose upsert was answered: they exist for good (no deletes)
        self.answers: list[Answer] = []
        self.unexpected: list[str] = []

    def note_sent(self, request_id: str, request: Request) -> None:
        with self.lock:
            self.sent[request_id] = request

    def note_answer(self, answer: Answer | str) -> None:
        with self.lock:
            if isinstance(answer, str):
                self.unexpected.append(answer)
                return
            self.answers.append(answer)
            if answer.request.kind == "upsert" and answer.request.name not in self.names:
                self.names.append(answer.request.name)

    def pick_name(self, rng: random.Random) -> str | None:
        with self.lock:
            return rng.choice(self.names) if self.names else None


def upsert_request(request_id: str, name: str, rng: random.Random, idempotent: bool) -> Request:
    # Unique per request (the id is in it) and of varying length, so that no two versions look alike.
    value = f"{request_id}:{rng.getrandbits(64):016x}:" + "v" * rng.randrange(0, 300)
    body = msgspec.json.encode({"name": name, "value": value})
    return Request("upsert", request_id, name, body, value, f"idem-{request_id}" if idempotent else None)


def reveal_request(request_id: str, name: str, idempotent: bool) -> Request:
    body = msgspec.json.encode({"reason": f"crash test {request_id}"})
    return Request("reveal", request_id, name, body, idempotency_key=f"idem-{request_id}" if idempotent else None)


class Client(threading.Thread):
    """One client: its own connection, a loop of upserts and reveals until the server dies."""

    def __init__(self, label: str, url: str, token: str, shared: Shared, rng: random.Random) -> None:
        super().__init__(name=f"crash-client-{label}", daemon=True)
        self.label = label
        self.url = url
        self.token = token
        self.shared = shared
        self.rng = rng
        self.unanswered: list[Request] = []  # sent, no answer: the kill came first
        self.failed_at: float | None = None  # when the connection failed (monotonic)
        self.crash: str | None = None  # a bug of this driver, reported rather than lost in a thread

    def next_request(self, n: int) -> Request:
        request_id = f"{self.label}-{n}"
        idempotent = self.rng.random() < 1 / 3
        name = self.shared.pick_name(self.rng) if self.rng.random() < 0.5 else None
        if name is not None:
            return reveal_request(request_id, name, idempotent)
        return upsert_request(request_id, self.rng.choice(NAMES), self.rng, idempotent)

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=30.0) as http:
                self._loop(http)
        except Exception as exc:  # reported by the run: a thread's exception would otherwise vanish
            self.crash = repr(exc)

    def _loop(self, http: httpx.Client) -> None:
        for n in range(1, 10**9):
            request = self.next_request(n)
            self.shared.note_sent(request.request_id, request)
            try:
                response = send(http, request, request.request_id, self.token)
            except httpx.TransportError:
                self.failed_at = time.monotonic()
                self.unanswered.append(request)
                return  # the server is gone (or going): this client's round is over
            self.shared.note_answer(answer_of(request, (request.request_id,), response))


# -- what the database holds -----------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    seq: int
    type: str
    request_id: str
    name: str | None
    version: int | None
    org: str


def read_events(db: Path) -> list[Stored]:
    stored = []
    for record in iter_records(db):
        event = decode_event(record.body)
        stored.append(Stored(record.seq, event_type(event), event.request_id, secret_name(event),
                             secret_version(event), event.org))
    return stored


@dataclass
class Index:
    events: list[Stored]
    by_request: dict[str, list[Stored]] = field(default_factory=lambda: defaultdict(list))
    by_version: dict[tuple[str, int], Stored] = field(default_factory=dict)  # (name, version) -> value event

    def __post_init__(self) -> None:
        for stored in self.events:
            self.by_request[stored.request_id].append(stored)
            if stored.type in VALUE_TYPES and stored.name is not None and stored.version is not None:
                self.by_version[(stored.name, stored.version)] = stored

    def current(self) -> dict[str, int]:
        """Each secret's current version (no deletes in this load: the highest one)."""
        versions: dict[str, int] = {}
        for name, version in self.by_version:
            versions[name] = max(version, versions.get(name, 0))
        return versions


@dataclass
class Findings:
    """What a check found wrong, by kind; each entry is one line that says what and where."""

    lost: list[str] = field(default_factory=list)  # an answered request with no event
    duplicated: list[str] = field(default_factory=list)  # one request, two events
    foreign: list[str] = field(default_factory=list)  # an event no request of ours asked for
    torn: list[str] = field(default_factory=list)  # a version stream with a gap, or an event of another org
    wrong_answers: list[str] = field(default_factory=list)  # an answer that disagrees with the ledger
    verify_failures: list[str] = field(default_factory=list)
    projection_mismatches: list[str] = field(default_factory=list)
    reveal_count_mismatches: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # non-2xx answers, early disconnects, server errors

    def kinds(self) -> dict[str, list[str]]:
        return {name: value for name, value in vars(self).items() if isinstance(value, list)}

    @property
    def ok(self) -> bool:
        return not any(self.kinds().values())

    def merge(self, other: Findings) -> None:
        for name, entries in other.kinds().items():
            getattr(self, name).extend(entries)

    def describe(self, limit: int = 10) -> str:
        lines = []
        for name, entries in self.kinds().items():
            if entries:
                lines.append(f"{name}: {len(entries)}")
                lines.extend(f"  {entry}" for entry in entries[:limit])
        return "\n".join(lines) or "ok"


def read_checkpoints(db: Path) -> list[Checkpoint]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT org, org_seq, head, at, public_key, signature FROM checkpoints").fetchall()
    finally:
        conn.close()
    return [Checkpoint(org=r[0], org_seq=r[1], head=bytes(r[2]), at=r[3], public_key=r[4], signature=r[5])
            for r in rows]


def check_ledger(db: Path, shared: Shared, public_key: str, *, cli: bool = False) -> tuple[Findings, Index | None]:
    """Every check of the database file, with the server dead. The index is None if the chain is bad.

    The checkpoints the server signed (every 1,000 events) are checked too: signed by its key, and each
    one naming an event the ledger holds with exactly that hash.
    """
    findings = Findings()
    report = verify_rows(iter_rows(db), checkpoints=read_checkpoints(db), trusted_keys={public_key})
    if not report.ok:
        findings.verify_failures.append(report.summary())
        return findings, None
    if cli:
        cli_verify(db, findings)
    index = Index(read_events(db))
    check_requests(index, shared, findings)
    check_streams(index, findings)
    check_answers(index, shared.answers, shared.sent, findings)
    check_reveal_count(index, shared.answers, findings)
    check_projections(db, findings)
    return findings, index


def cli_verify(db: Path, findings: Findings) -> None:
    """`keyledger verify --db FILE`, as an operator runs it after a crash."""
    done = subprocess.run([keyledger_command(), "verify", "--db", str(db)], capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode != 0 or not done.stdout.startswith("ok: "):
        findings.verify_failures.append(f"keyledger verify: exit {done.returncode}: {done.stdout}{done.stderr}")


def check_requests(index: Index, shared: Shared, findings: Findings) -> None:
    """Every event answers one request of ours, and no request made two events of a kind."""
    for request_id, events in index.by_request.items():
        request = shared.sent.get(request_id)
        if request is None:
            findings.foreign.append(f"events {[e.seq for e in events]} carry request id {request_id!r}, never sent")
            continue
        types = Counter(e.type for e in events)
        # An upsert or a reveal makes one event; creating the org makes one event of each of two kinds.
        if any(n > 1 for n in types.values()) or (request.kind != "org" and len(events) > 1):
            findings.duplicated.append(f"request {request_id} has events {[(e.seq, e.type) for e in events]}")


def check_streams(index: Index, findings: Findings) -> None:
    """Each secret's versions run 1..n with no gap, created at 1; every reveal names a stored version."""
    versions: dict[str, list[int]] = defaultdict(list)
    for stored in index.events:
        if stored.org != ORG:
            findings.torn.append(f"seq {stored.seq}: an event of org {stored.org!r}")
        if stored.type in VALUE_TYPES and stored.name is not None and stored.version is not None:
            versions[stored.name].append(stored.version)
            if (stored.type == "secret.created") != (stored.version == 1):
                findings.torn.append(f"seq {stored.seq}: {stored.type} of {stored.name} at version {stored.version}")
        if stored.type == "secret.revealed" and (stored.name, stored.version) not in index.by_version:
            findings.torn.append(f"seq {stored.seq}: reveals {stored.name} v{stored.version}, which was never stored")
    for name, seen in versions.items():
        if sorted(seen) != list(range(1, len(seen) + 1)):
            findings.torn.append(f"{name}: versions {sorted(seen)}")


def check_answers(index: Index, answers: list[Answer], sent: dict[str, Request], findings: Findings) -> None:
    """Every 2xx answer (of every round so far) is in exactly one event, the one it answered."""
    for answer in answers:
        events = [e for rid in answer.request_ids for e in index.by_request.get(rid, [])]
        matching = [e for e in events if e.type in EXPECTED_TYPES[answer.request.kind]]
        what = f"{answer.request.kind} {'/'.join(answer.request_ids)}"
        if not matching:
            findings.lost.append(f"{what} was answered {answer.status} (v{answer.version}) but has no event")
        elif len(events) > 1 and len(answer.request_ids) > 1:  # one id's duplicates are check_requests' finding
            findings.duplicated.append(f"{what}: a retried request has events {[(e.seq, e.type) for e in events]}")
        elif answer.request.kind != "org":
            check_answer(index, answer, matching[0], sent, what, findings)


def check_answer(index: Index, answer: Answer, event: Stored, sent: dict[str, Request], what: str,
                 findings: Findings) -> None:
    if (event.name, event.version) != (answer.request.name, answer.version):
        findings.wrong_answers.append(f"{what}: answered {answer.request.name} v{answer.version}, "
                                      f"recorded {event.name} v{event.version} (seq {event.seq})")
        return
    if len(answer.request_ids) > 1 and event.request_id != answer.request_ids[0 if answer.replayed else 1]:
        findings.wrong_answers.append(f"{what}: replayed={answer.replayed} but the event carries {event.request_id}")
    if answer.request.kind == "upsert" and (answer.status == 201) != (answer.version == 1):
        findings.wrong_answers.append(f"{what}: HTTP {answer.status} for version {answer.version}")
    if answer.request.kind == "reveal":
        written = index.by_version.get((answer.request.name, answer.version))
        request = sent.get(written.request_id) if written is not None else None
        if request is None or request.value != answer.value:
            findings.wrong_answers.append(f"{what}: revealed a value of {event.name} v{answer.version} "
                                          "that is not the value that version was written with")


def check_reveal_count(index: Index, answers: list[Answer], findings: Findings) -> None:
    """The count of successful reveal answers equals the count of `secret.revealed` events for them."""
    answered = [a for a in answers if a.request.kind == "reveal"]
    ids = {rid for a in answered for rid in a.request_ids}
    recorded = sum(1 for e in index.events if e.type == "secret.revealed" and e.request_id in ids)
    if recorded != len(answered):
        findings.reveal_count_mismatches.append(f"{len(answered)} reveals answered 200, {recorded} recorded")


def check_projections(db: Path, findings: Findings) -> None:
    """The projections are current and equal a rebuild from the first event (made on a copy)."""
    head, positions = head_and_positions(db)
    if positions != dict.fromkeys(PROJECTOR_NAMES, head):
        findings.projection_mismatches.append(f"positions {positions}, head {head}")
    with tempfile.TemporaryDirectory(prefix="keyledger-crash-rebuild-") as tmp:
        copy = Path(tmp) / db.name
        shutil.copyfile(db, copy)
        wal = Path(f"{db}-wal")
        if wal.exists():  # committed transactions may still be only in the WAL: copy it too
            shutil.copyfile(wal, Path(f"{copy}-wal"))
        asyncio.run(rebuild(copy))
        incremental, rebuilt = dump(db), dump(copy)
    for table in PROJECTION_TABLES:
        if incremental[table] != rebuilt[table]:
            differ = sum(1 for a, b in zip(incremental[table], rebuilt[table], strict=False) if a != b)
            findings.projection_mismatches.append(
                f"{table}: {len(incremental[table])} rows, {len(rebuilt[table])} rebuilt, {differ} differ"
            )


async def rebuild(path: Path) -> None:
    recorder = SqliteRecorder(path, all_projectors(), synchronous="OFF")  # a throwaway copy: no fsync needed
    await recorder.open()
    try:
        await recorder.rebuild_projections()
    finally:
        await recorder.close()


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Stats:
    kills: int = 0
    upserts: int = 0  # answered 2xx
    reveals: int = 0  # answered 2xx
    in_flight: int = 0  # requests the kills left unanswered
    committed_unanswered: int = 0  # of those, the ones the ledger holds (committed, answer lost)
    retried: int = 0  # idempotent requests retried after a restart
    replayed: int = 0  # of those, answered from the first attempt's stored answer
    events: int = 0
    restarts: list[float] = field(default_factory=list)  # seconds from exec to GET /readyz = 200
    checks: list[float] = field(default_factory=list)  # seconds each check of the file took


class CrashRun:
    """A database file and its server, crashed again and again. Use as a context manager."""

    def __init__(self, workdir: Path, *, seed: int, clients: int = 4, min_load: float = 0.1,
                 max_load: float = 1.0) -> None:
        self.workdir = workdir
        self.db = workdir / "crash.db"
        self.rng = random.Random(seed)
        self.clients = clients
        self.load_range = (min_load, max_load)
        self.server = Server(self.db, workdir / "server.log")
        self.shared = Shared()
        self.stats = Stats()
        self.api_key = ""

    def __enter__(self) -> CrashRun:
        self.server.start()
        try:
            self.api_key = self._create_org()
        except BaseException:
            self.server.kill()  # __exit__ is not called when __enter__ fails
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.kill()

    def _create_org(self) -> str:
        request = Request("org", "org-crash", ORG, msgspec.json.encode({"org": ORG}))
        self.shared.note_sent(request.request_id, request)
        with httpx.Client(base_url=self.server.url, timeout=30.0) as http:
            answer = answer_of(request, (request.request_id,), send(http, request, request.request_id,
                                                                     self.server.admin_token))
        if isinstance(answer, str):
            raise ServerError(f"could not create the org: {answer}")
        self.shared.note_answer(answer)
        return answer.value

    def crash_once(self) -> Findings:
        """Load, SIGKILL, check the file, restart, check the restarted server. Stop at the first finding."""
        round_no = self.stats.kills + 1
        unanswered, findings = self._load_and_kill(round_no)
        began = time.monotonic()
        checked, index = check_ledger(self.db, self.shared, self.server.public_key)
        self.stats.checks.append(time.monotonic() - began)
        findings.merge(checked)
        self._count(index, unanswered)
        if not findings.ok or index is None:
            return findings
        self.stats.restarts.append(self.server.start())
        with httpx.Client(base_url=self.server.url, timeout=30.0) as http:
            # Reveals first: the retries below may write new versions.
            self._reveal_survivors(http, index, round_no, findings)
            self._retry(http, unanswered, findings)
        findings.unexpected.extend(self.server.log_errors())
        return findings

    def finish(self) -> Findings:
        """Stop the idle server (SIGKILL: no clean shutdown is ever needed) and run every check, CLI too."""
        self.server.kill()
        findings, _ = check_ledger(self.db, self.shared, self.server.public_key, cli=True)
        return findings

    def _load_and_kill(self, round_no: int) -> tuple[list[Request], Findings]:
        findings = Findings()
        clients = [Client(f"r{round_no}-c{i}", self.server.url, self.api_key, self.shared,
                          random.Random(self.rng.getrandbits(64))) for i in range(self.clients)]
        for client in clients:
            client.start()
        time.sleep(self.rng.uniform(*self.load_range))
        findings.unexpected.extend(self.server.log_errors())
        killed_at = time.monotonic()
        self.server.kill()
        self.stats.kills += 1
        for client in clients:
            client.join(timeout=60)
            findings.unexpected.extend(client_problems(client, killed_at))
        with self.shared.lock:
            findings.unexpected.extend(self.shared.unexpected)
            self.shared.unexpected.clear()
        return [r for c in clients for r in c.unanswered], findings

    def _count(self, index: Index | None, unanswered: list[Request]) -> None:
        self.stats.upserts = sum(1 for a in self.shared.answers if a.request.kind == "upsert")
        self.stats.reveals = sum(1 for a in self.shared.answers if a.request.kind == "reveal")
        self.stats.in_flight += len(unanswered)
        if index is None:  # the chain did not verify: there is nothing to count in it
            return
        self.stats.events = len(index.events)
        self.stats.committed_unanswered += sum(1 for r in unanswered if r.request_id in index.by_request)

    def _reveal_survivors(self, http: httpx.Client, index: Index, round_no: int, findings: Findings) -> None:
        """A restarted server reveals what was written before the crash: the current version's own value."""
        current = index.current()
        for i, name in enumerate(self.rng.sample(sorted(current), min(SURVIVOR_REVEALS, len(current)))):
            request = reveal_request(f"r{round_no}-after-{i}", name, idempotent=False)
            answer = self._send_now(http, request, (request.request_id,), findings)
            if answer is None:
                continue
            written = self.shared.sent.get(index.by_version[(name, current[name])].request_id)
            if answer.version != current[name] or written is None or answer.value != written.value:
                findings.wrong_answers.append(f"after restart, {name} revealed v{answer.version}; the ledger's "
                                              f"current version is v{current[name]}, or its value differs")

    def _retry(self, http: httpx.Client, unanswered: list[Request], findings: Findings) -> None:
        """Retry what the kill left unanswered, as a client would: with the same Idempotency-Key and body."""
        for request in unanswered:
            if request.idempotency_key is None:
                continue
            retry_id = f"{request.request_id}.retry"
            answer = self._send_now(http, request, (request.request_id, retry_id), findings)
            self.stats.retried += 1
            if answer is not None and answer.replayed:
                self.stats.replayed += 1

    def _send_now(self, http: httpx.Client, request: Request, ids: tuple[str, ...],
                  findings: Findings) -> Answer | None:
        self.shared.note_sent(ids[-1], request)
        try:
            result = answer_of(request, ids, send(http, request, ids[-1], self.api_key))
        except httpx.TransportError as exc:
            findings.unexpected.append(f"{ids[-1]}: no answer from the restarted server ({exc!r})")
            return None
        if isinstance(result, str):
            findings.unexpected.append(result)
            return None
        self.shared.note_answer(result)
        return result


def client_problems(client: Client, killed_at: float) -> Iterator[str]:
    if client.is_alive():
        yield f"client {client.label} still running 60 s after the kill"
    if client.crash is not None:
        yield f"client {client.label} crashed: {client.crash}"
    if client.failed_at is not None and client.failed_at < killed_at:
        yield f"client {client.label} lost its connection {killed_at - client.failed_at:.3f} s before the kill"


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (0 < q <= 100); 0.0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]
