"""Reveal policies and key pools at the ledger: "who could reveal this secret at time T" against a
brute-force answer from the raw events (keys, scopes, the secret and its policy as they were then),
checked against what the reveal command actually decides; and pool member selection is fair, never
answering a disabled member."""

from __future__ import annotations

import asyncio
from collections import Counter
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.commands import CreatedKey
from ledger.errors import ConflictError, LedgerError, NotFoundError, RevealDeniedError
from ledger.events import (
    VALUE_EVENTS,
    ApiKeyCreated,
    ApiKeyRevoked,
    SecretDeleted,
    SecretPolicyChanged,
)
from ledger.generator import GeneratorSpec, WebhookSpec
from ledger.keys import destroy_version
from ledger.pools import RemoveMember
from ledger.rotation import FinishRotation, ReadRotation, StartRotation
from projections.access import who_could_reveal
from tests.audit_history import SCOPES, Clock, new_ledger, raw_events, temp_db
from tests.conftest import ADMIN, ctx_for

SECOND = 1_000_000_000
LABELS = ("deploy-a", "deploy-b", "ci", "ops", "Deploy-c")
GLOBS = ("deploy-*", "ci", "*", "d?ploy-a", "[cd]*", "nothing")
NAMES = ("S1", "S2")

op = st.one_of(
    st.tuples(st.just("key"), st.sampled_from(LABELS), st.sampled_from(("admin", "member")), st.sampled_from(SCOPES)),
    st.tuples(st.just("revoke"), st.integers(0, 9)),
    st.tuples(st.just("upsert"), st.sampled_from(NAMES), st.sampled_from(SCOPES)),
    st.tuples(st.just("delete"), st.sampled_from(NAMES)),
    st.tuples(st.just("policy"), st.sampled_from(NAMES), st.lists(st.integers(0, 9), max_size=3),
              st.lists(st.sampled_from(GLOBS), max_size=2), st.lists(st.sampled_from(("admin", "member")), max_size=2)),
    st.tuples(st.just("wait"), st.sampled_from((1, SECOND, 3600 * SECOND))),
)


def brute_force(events: list[Any], name: str, at: int) -> list[str]:
    """Key ids that could reveal `name` at `at`, from the raw events alone."""
    keys: dict[str, dict[str, Any]] = {}
    secret: dict[str, Any] | None = None
    policy: tuple[list[str], list[str], list[str]] = ([], [], [])
    for record, event in events:
        if record.at > at:
            break
        if isinstance(event, ApiKeyCreated):
            keys[event.key_id] = {"label": event.label, "role": event.role, "scope": event.scope, "revoked": False}
        elif isinstance(event, ApiKeyRevoked):
            keys[event.key_id]["revoked"] = True
        elif getattr(event, "name", None) != name:
            continue
        elif isinstance(event, VALUE_EVENTS):
            secret = {"scope": event.scope, "exists": True}
        elif isinstance(event, SecretDeleted) and secret is not None:
            secret["exists"] = False
        elif isinstance(event, SecretPolicyChanged):
            policy = (event.key_ids, event.labels, list(event.roles))
    if secret is None or not secret["exists"]:
        return []
    ids, globs, roles = policy
    restricted = bool(ids or globs or roles)
    return sorted(
        key_id for key_id, key in keys.items()
        if not key["revoked"]
        and (key["scope"] == "all" or secret["scope"] in ("all", key["scope"]))
        and (not restricted or key_id in ids or key["role"] in roles
             or any(fnmatchcase(key["label"], g) for g in globs))
    )


def run_ops(path: Path, ops: list[Any]) -> tuple[list[CreatedKey], set[str], dict[str, list[str]]]:
    """Run the ops; at the end, reveal each secret with each key and note who was granted."""
    clock = Clock(step=1_000)
    ledger = new_ledger(path, clock)
    keys: list[CreatedKey] = []
    revoked: set[str] = set()
    granted: dict[str, list[str]] = {}

    async def main() -> None:
        await ledger.start()
        try:
            admin = await ledger.create_org(ADMIN, "acme")
            keys.append(admin)
            for operation in ops:
                kind = operation[0]
                try:
                    if kind == "key":
                        keys.append(await ledger.create_api_key(ctx_for(admin), "acme", operation[1], operation[2],
                                                                operation[3]))
                    elif kind == "revoke":
                        key = keys[operation[1] % len(keys)]
                        if key.key_id != admin.key_id and key.key_id not in revoked:
                            await ledger.revoke_api_key(ctx_for(admin), "acme", key.key_id)
                            revoked.add(key.key_id)
                    elif kind == "upsert":
                        await ledger.upsert_secret(ctx_for(admin), "acme", operation[1], b"v", scope=operation[2])
                    elif kind == "delete":
                        await ledger.delete_secret(ctx_for(admin), "acme", operation[1])
                    elif kind == "policy":
                        ids = [keys[i % len(keys)].key_id for i in operation[2]]
                        await ledger.submit(ledger.set_policy_command(
                            ctx_for(admin), "acme", operation[1], key_ids=ids, labels=operation[3], roles=operation[4]))
                    else:
                        clock.advance(operation[1])
                except LedgerError:
                    pass  # a delete of a missing secret, a policy on a deleted one: nothing recorded
            for name in NAMES:
                granted[name] = []
                for key in keys:
                    if key.key_id in revoked:
                        continue
                    try:
                        await ledger.reveal_secret(ctx_for(key), "acme", name)
                        granted[name].append(key.key_id)
                    except (RevealDeniedError, LedgerError):
                        pass
        finally:
            await ledger.stop()

    asyncio.run(main())
    return keys, revoked, granted


@given(ops=st.lists(op, min_size=3, max_size=30))
def test_who_could_reveal_at_any_time_matches_brute_force_and_the_reveal_command(ops: list[Any]) -> None:
    with temp_db("keyledger-access-") as path:
        _, _, granted = run_ops(path, ops)
        events = raw_events(path)
        times = sorted({record.at for record, _ in events})
        moments = sorted({t + d for t in times for d in (-1, 0, 1)})

        async def check() -> None:
            recorder = new_ledger(path, Clock()).recorder
            await recorder.open()
            try:
                for name in NAMES:
                    for at in moments:
                        answer = await who_could_reveal(recorder, "acme", name, at)
                        assert [k.key_id for k in answer.keys] == brute_force(events, name, at), (name, at)
                    # At the end (before the final reveals), the answer is what the reveal command decided.
                    before_reveals = max(r.at for r, e in events if type(e).__name__ != "SecretRevealed"
                                         and type(e).__name__ != "SecretRevealDenied")
                    final = await who_could_reveal(recorder, "acme", name, before_reveals)
                    assert sorted(k.key_id for k in final.keys) == sorted(granted[name]), name
            finally:
                await recorder.close()

        asyncio.run(check())


# -- pools ---------------------------------------------------------------------------------------------------


pool_ops = st.lists(st.one_of(
    st.tuples(st.just("reveal"), st.integers(1, 6)),
    st.tuples(st.just("disable"), st.integers(0, 4)),
    st.tuples(st.just("enable"), st.integers(0, 4)),
    st.tuples(st.just("remove"), st.integers(0, 4)),
    st.tuples(st.just("add"), st.integers(0, 7)),
), min_size=1, max_size=15)


@given(size=st.integers(1, 5), selection=st.sampled_from(("round_robin", "least_recent")), ops=pool_ops)
def test_member_selection_is_fair_and_never_answers_a_disabled_member(size: int, selection: str,
                                                                     ops: list[Any]) -> None:
    with temp_db("keyledger-pool-") as path:
        clock = Clock(step=1_000)
        ledger = new_ledger(path, clock)

        async def main() -> None:
            await ledger.start()
            try:
                admin = await ledger.create_org(ADMIN, "acme")
                ctx = ctx_for(admin)
                await ledger.upsert_secret(ctx, "acme", "POOL", b"base value")
                await ledger.submit(ledger.pool_command(ctx, "acme", "POOL", selection))
                members = {f"m{i}": "active" for i in range(size)}
                for member in members:
                    await ledger.submit(ledger.put_member_command(ctx, "acme", "POOL", member,
                                                                  f"value of {member}".encode()))
                for kind, n in ops:
                    names = sorted(members)
                    if kind == "reveal":
                        active = sorted(m for m, s in members.items() if s == "active")
                        got: Counter[str] = Counter()
                        for _ in range(n * max(1, len(active))):
                            try:
                                revealed = await ledger.reveal_secret(ctx, "acme", "POOL")
                            except ConflictError:
                                assert members and not active  # refused only when no member is active
                                break
                            if not members:  # no pool any more: the secret's own value
                                assert revealed.member is None and revealed.value == b"base value"
                                break
                            assert revealed.member in active
                            assert revealed.value == f"value of {revealed.member}".encode()
                            got[revealed.member] += 1
                        if active:  # every active member equally often, over whole rounds
                            assert set(got) == set(active) and len(set(got.values())) == 1, got
                    elif kind == "add":
                        member = f"m{n}"
                        await ledger.submit(ledger.put_member_command(ctx, "acme", "POOL", member,
                                                                      f"value of {member}".encode()))
                        members.setdefault(member, "active")
                    elif names:
                        member = names[n % len(names)]
                        if kind == "remove":
                            await ledger.submit(RemoveMember(org="acme", ctx=ctx, name="POOL", member=member))
                            del members[member]
                        else:
                            state = "disabled" if kind == "disable" else "active"
                            await ledger.submit(ledger.member_state_command(ctx, "acme", "POOL", member, state))
                            members[member] = state
            finally:
                await ledger.stop()

        asyncio.run(main())


# -- regressions found in review ----------------------------------------------------------------------------


def run_ledger(test: Any) -> None:
    with temp_db("keyledger-review-") as path:
        ledger = new_ledger(path, Clock(step=1_000))

        async def main() -> None:
            await ledger.start()
            try:
                admin = await ledger.create_org(ADMIN, "acme")
                await test(ledger, ctx_for(admin))
            finally:
                await ledger.stop()

        asyncio.run(main())


def test_a_purge_in_the_same_batch_as_a_new_value_destroys_that_value_too() -> None:
    async def test(ledger: Any, ctx: Any) -> None:
        await ledger.upsert_secret(ctx, "acme", "S", b"v1")
        await asyncio.gather(ledger.upsert_secret(ctx, "acme", "S", b"v2-same-batch"),
                             ledger.delete_secret(ctx, "acme", "S", purge=True))
        await ledger.upsert_secret(ctx, "acme", "S", b"v3")
        for version in (1, 2):
            with pytest.raises(NotFoundError):
                await ledger.reveal_secret(ctx, "acme", "S", version=version)

    run_ledger(test)


def test_a_webhook_attempt_is_cancelled_by_a_new_value_or_policy_and_only_its_own_outcome_counts() -> None:
    async def test(ledger: Any, ctx: Any) -> None:
        hook = WebhookSpec(url="http://127.0.0.1:9/rotate")
        await ledger.upsert_secret(ctx, "acme", "W", b"v1")
        await ledger.submit(ledger.configure_rotation_command(ctx, "acme", "W", interval_seconds=3600, rotator=hook))
        first = await ledger.submit(StartRotation(org="acme", ctx=ctx, name="W", force=True))
        await ledger.upsert_secret(ctx, "acme", "W", b"set by hand")  # cancels the attempt
        with pytest.raises(ConflictError):
            await ledger.submit(FinishRotation(org="acme", ctx=ctx, name="W", attempt=first.attempt,
                                               call_id=first.call_id, value=b"late"))
        policy = await ledger.submit(ReadRotation(org="acme", ctx=ctx, name="W"))
        assert policy is not None and not policy.in_flight and policy.failures == 0
        assert (await ledger.reveal_secret(ctx, "acme", "W")).value == b"set by hand"
        # A new policy cancels too; an answer to the old attempt never lands on the new one.
        old = await ledger.submit(StartRotation(org="acme", ctx=ctx, name="W", force=True))
        await ledger.submit(ledger.configure_rotation_command(ctx, "acme", "W", interval_seconds=600, rotator=hook))
        new = await ledger.submit(StartRotation(org="acme", ctx=ctx, name="W", force=True))
        assert new.attempt == old.attempt and new.call_id != old.call_id
        with pytest.raises(ConflictError):
            await ledger.submit(FinishRotation(org="acme", ctx=ctx, name="W", attempt=old.attempt,
                                               call_id=old.call_id, value=b"from the old webhook"))
        await ledger.submit(FinishRotation(org="acme", ctx=ctx, name="W", attempt=new.attempt,
                                           call_id=new.call_id, value=b"from the new webhook"))
        assert (await ledger.reveal_secret(ctx, "acme", "W")).value == b"from the new webhook"

    run_ledger(test)


def test_references_pools_and_rotation_do_not_mix() -> None:
    async def test(ledger: Any, ctx: Any) -> None:
        generator = GeneratorSpec(length=20, alphabet="hex")
        await ledger.submit(ledger.upsert_secret_command(ctx, "acme", "R", b"vault-kv://secret/app#k",
                                                         reference=True))
        await ledger.upsert_secret(ctx, "acme", "R", b"plain")
        await ledger.submit(ledger.configure_rotation_command(ctx, "acme", "R", interval_seconds=3600,
                                                              rotator=generator))
        with pytest.raises(ConflictError):  # a rollback to the reference version
            await ledger.submit(ledger.rollback_secret_command(ctx, "acme", "R", 1))
        with pytest.raises(ConflictError):
            await ledger.submit(ledger.upsert_secret_command(ctx, "acme", "R", b"aws-sm://us-east-1/x",
                                                             reference=True))
        await ledger.upsert_secret(ctx, "acme", "P", b"own value")
        await ledger.submit(ledger.put_member_command(ctx, "acme", "P", "m1", b"member value"))
        with pytest.raises(ConflictError):
            await ledger.submit(ledger.upsert_secret_command(ctx, "acme", "P", b"aws-sm://us-east-1/x",
                                                             reference=True))
        with pytest.raises(ConflictError):  # a pool's members have no versions: never the own value
            await ledger.reveal_secret(ctx, "acme", "P", version=1)

    run_ledger(test)


def test_a_purge_after_every_version_was_destroyed_still_ends_the_policy() -> None:
    async def test(ledger: Any, ctx: Any) -> None:
        await ledger.upsert_secret(ctx, "acme", "S", b"v1")
        await ledger.submit(ledger.set_policy_command(ctx, "acme", "S", key_ids=[], labels=["nobody"], roles=[]))
        await destroy_version(ledger, ctx, "acme", "S", 1)
        await ledger.delete_secret(ctx, "acme", "S", purge=True)
        await ledger.upsert_secret(ctx, "acme", "S", b"v2")
        assert (await ledger.reveal_secret(ctx, "acme", "S")).value == b"v2"

    run_ledger(test)
