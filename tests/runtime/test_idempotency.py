"""Idempotency keys at the PDP (runtime-digest 4.6 and 1.8), on SQLite and PostgreSQL: a
retransmission gets the prior decision and is never metered twice, another operation under
the key is ``idempotency_conflict``, a spent permit's key is ``duplicate_suppressed``, and of
concurrent claimers exactly one wins."""

from __future__ import annotations

from datetime import datetime, timedelta

from missionbound.runtime import idempotency, metering
from missionbound.runtime.decision import Charge
from missionbound.runtime.idempotency import Claim, ClaimStatus
from missionbound.runtime.permits import PERMIT_NAMESPACE
from missionbound.store import runtime as rows
from missionbound.store.single_use import consume_once
from missionbound.store.transactions import Store
from tests.store.concurrency import run_concurrently
from tests.store.factories import T0

MISSION = "msn_" + "i" * 32
ENTRY = "sha-256:" + "E" * 43
RESOURCE = {"type": "invoice", "id": "inv-acme-2"}
SCOPE = idempotency.scope_digest(
    mission_id=MISSION, subject={"type": "user", "id": "alice"},
    actor={"client_id": "demo-agent", "act": []}, audience="https://as.example.test/demo/mcp",
    action="execute_wire_transfer", resource=RESOURCE)
PAY_499 = idempotency.operation_digest(action="execute_wire_transfer", resource=RESOURCE,
                                       parameter_digest="sha-256:" + "a" * 43)
PAY_500 = idempotency.operation_digest(action="execute_wire_transfer", resource=RESOURCE,
                                       parameter_digest="sha-256:" + "b" * 43)
KEEP = T0 + timedelta(days=3)


def ask(store: Store, evaluation_id: str, *, operation: str = PAY_499, now: datetime = T0,
        key: str = "pay-inv-acme-2", scope: str = SCOPE, meter: bool = False) -> Claim:
    """One PDP request's idempotency step (and, for a new claim, its metering)."""
    with store.begin() as session:
        claim = idempotency.claim(
            session, mission_id=MISSION, scope_digest=scope, key=key,
            operation_digest=operation, evaluation_id=evaluation_id,
            permit=f"permit-of-{evaluation_id}", valid_until=now + timedelta(seconds=60),
            keep_until=KEEP, now=now)
        if meter and claim.status is ClaimStatus.NEW:
            reserved = metering.reserve(
                session, mission_id=MISSION, evaluation_id=evaluation_id,
                charges=[Charge("max_calls", ENTRY, 10, 1)], now=now,
                lease_until=now + timedelta(seconds=60))
            if not reserved.ok:
                idempotency.abandon(session, claim)
        return claim


def spend(store: Store, evaluation_id: str) -> bool:
    with store.begin() as session:
        return consume_once(session, PERMIT_NAMESPACE, evaluation_id, KEEP)


def calls_used(store: Store) -> str:
    with store.read() as session, session.begin():
        return metering.remaining(session, MISSION)[(ENTRY, "max_calls")]["used"]


def test_a_retransmission_gets_the_prior_decision_and_is_metered_once(store: Store) -> None:
    first = ask(store, "dec_1", meter=True)
    assert first.status is ClaimStatus.NEW and first.replaced is None
    again = ask(store, "dec_2", now=T0 + timedelta(seconds=30), meter=True)
    assert again.status is ClaimStatus.REPLAY
    assert (again.evaluation_id, again.permit, again.valid_until) == (
        "dec_1", "permit-of-dec_1", first.valid_until)
    assert calls_used(store) == "1"


def test_the_same_key_for_another_operation_is_a_conflict(store: Store) -> None:
    ask(store, "dec_1")
    assert ask(store, "dec_2", operation=PAY_500).status is ClaimStatus.CONFLICT
    spend(store, "dec_1")
    assert ask(store, "dec_3", operation=PAY_500).status is ClaimStatus.CONFLICT
    # Another scope (another action, resource, subject ...) is another key space.
    other_scope = "sha-256:" + "s" * 43
    assert ask(store, "dec_4", operation=PAY_500, scope=other_scope).status is ClaimStatus.NEW


def test_the_key_of_a_spent_permit_is_duplicate_suppressed(store: Store) -> None:
    ask(store, "dec_1", meter=True)
    assert spend(store, "dec_1")
    for later in (timedelta(seconds=10), timedelta(hours=2)):
        duplicate = ask(store, "dec_2", now=T0 + later, meter=True)
        assert duplicate.status is ClaimStatus.DUPLICATE
    assert calls_used(store) == "1"


def test_an_expired_unspent_permit_is_retired_and_renewed(store: Store) -> None:
    ask(store, "dec_1", meter=True)
    renewed = ask(store, "dec_2", now=T0 + timedelta(minutes=5), meter=True)
    assert renewed.status is ClaimStatus.NEW and renewed.replaced == "dec_1"
    # The old permit can no longer run anywhere, and its reservation was given back.
    assert not spend(store, "dec_1")
    assert calls_used(store) == "1"
    # The renewed claim now answers retransmissions with the new permit.
    again = ask(store, "dec_3", now=T0 + timedelta(minutes=5, seconds=10))
    assert (again.status, again.evaluation_id) == (ClaimStatus.REPLAY, "dec_2")


def test_past_the_tombstone_horizon_the_key_is_refused_not_guessed(store: Store) -> None:
    ask(store, "dec_1")
    late = ask(store, "dec_2", now=T0 + timedelta(days=2))
    assert late.status is ClaimStatus.DUPLICATE


def test_an_abandoned_claim_frees_the_key(store: Store) -> None:
    with store.begin() as session:
        for index in range(10):  # use up the max_calls of 10
            assert metering.reserve(session, mission_id=MISSION, evaluation_id=f"dec_x{index}",
                                    charges=[Charge("max_calls", ENTRY, 10, 1)], now=T0,
                                    lease_until=T0 + timedelta(seconds=60)).ok
    assert ask(store, "dec_1", meter=True).status is ClaimStatus.NEW  # then abandoned
    with store.read() as session, session.begin():
        assert rows.lock_claim(session, MISSION, SCOPE, "pay-inv-acme-2") is None
    with store.begin() as session:
        metering.release(session, evaluation_id="dec_x0", now=T0)
    assert ask(store, "dec_2", meter=True).status is ClaimStatus.NEW
    assert ask(store, "dec_3").evaluation_id == "dec_2"


def test_20_concurrent_claims_of_one_key_have_one_winner(store: Store) -> None:
    results = run_concurrently(20, lambda i: ask(store, f"dec_{i}", meter=True))
    claims = [r for r in results if isinstance(r, Claim)]
    assert len(claims) == 20, results
    winners = [c for c in claims if c.status is ClaimStatus.NEW]
    assert len(winners) == 1
    assert {(c.status, c.evaluation_id) for c in claims if c is not winners[0]} == {
        (ClaimStatus.REPLAY, winners[0].evaluation_id)}
    assert calls_used(store) == "1"


def test_concurrent_claims_for_two_operations_one_wins_the_other_conflicts(
        store: Store) -> None:
    results = run_concurrently(
        12, lambda i: ask(store, f"dec_{i}", operation=PAY_499 if i % 2 else PAY_500))
    claims = [r for r in results if isinstance(r, Claim)]
    assert len(claims) == 12, results
    statuses = [c.status for c in claims]
    assert statuses.count(ClaimStatus.NEW) == 1
    winner = next(c for c in claims if c.status is ClaimStatus.NEW)
    assert statuses.count(ClaimStatus.REPLAY) == 5
    assert statuses.count(ClaimStatus.CONFLICT) == 6
    assert all(c.evaluation_id == winner.evaluation_id for c in claims)


def test_claims_are_purged_after_their_horizon(store: Store) -> None:
    ask(store, "dec_1")
    with store.begin() as session:
        assert idempotency.purge_expired(session, KEEP - timedelta(seconds=1)) == 0
        assert idempotency.purge_expired(session, KEEP) == 1
