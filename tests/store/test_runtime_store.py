"""The PDP's rows (store/runtime.py) on SQLite and PostgreSQL: policy artifacts kept per
(Mission, policy_version) and read back byte for byte, counters created once under
concurrency, reservations and claims in the caller's transaction."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from missionbound.config import Settings
from missionbound.mission.errors import InvalidRequest
from missionbound.mission.record import MissionRecord
from missionbound.runtime.compiler import PolicyArtifact, compile_policy
from missionbound.store import runtime as rows
from missionbound.store.models import MeterCounter
from missionbound.store.single_use import consume_once
from missionbound.store.transactions import Store
from missionbound.tenant import load_tenant
from tests.store.concurrency import run_concurrently
from tests.store.factories import T0

ENTRY = "sha-256:" + "E" * 43


def demo_artifact(mission: MissionRecord) -> PolicyArtifact:
    catalog = load_tenant(Settings(issuer="https://as.example.test")).catalog
    return compile_policy(mission, catalog)


def test_an_artifact_is_stored_once_and_read_back_exactly(
        store: Store, active_mission: Callable[..., MissionRecord]) -> None:
    mission = active_mission()
    artifact = demo_artifact(mission)
    with store.begin() as session:
        assert rows.save_policy_artifact(
            session, mission_id=mission.mission_id, policy_version=artifact.policy_version,
            artifact=artifact.to_json(), now=T0)
        # An approval replay stores nothing twice.
        assert not rows.save_policy_artifact(
            session, mission_id=mission.mission_id, policy_version=artifact.policy_version,
            artifact=artifact.to_json(), now=T0)
    with store.read() as session, session.begin():
        stored = rows.load_policy_artifact(session, mission.mission_id,
                                           artifact.policy_version)
        assert rows.load_policy_artifact(session, mission.mission_id, "sha-256:other") is None
    assert stored == artifact.to_json()
    assert PolicyArtifact.from_json(stored) == artifact


def test_an_artifact_belongs_to_a_stored_mission(store: Store) -> None:
    with pytest.raises(IntegrityError), store.begin() as session:
        rows.save_policy_artifact(session, mission_id="msn_" + "x" * 32,
                                  policy_version="sha-256:v", artifact={}, now=T0)
    with store.begin() as session, pytest.raises(InvalidRequest):
        rows.save_policy_artifact(session, mission_id="msn_" + "x" * 32, policy_version="",
                                  artifact={}, now=T0)


def test_a_counter_is_created_once_by_concurrent_first_reservations(store: Store) -> None:
    mission_id = "msn_" + "c" * 32

    def create(_: int) -> int:
        with store.begin() as session:
            rows.create_counter(session, mission_id=mission_id, key=(ENTRY, "max_calls"),
                                limit_value="5", currency=None, now=T0)
            locked = rows.lock_counters(session, mission_id, [(ENTRY, "max_calls")])
            counter = locked[(ENTRY, "max_calls")]
            counter.used = str(int(counter.used) + 1)
            return int(counter.used)

    results = run_concurrently(10, create)
    assert sorted(results) == list(range(1, 11))  # type: ignore[type-var]
    with store.read() as session, session.begin():
        assert session.scalar(select(func.count()).select_from(MeterCounter)) == 1


def test_locking_returns_only_existing_counters_and_nothing_for_no_keys(store: Store) -> None:
    mission_id = "msn_" + "d" * 32
    with store.begin() as session:
        rows.create_counter(session, mission_id=mission_id, key=(ENTRY, "max_calls"),
                            limit_value="5", currency=None, now=T0)
        assert rows.lock_counters(session, mission_id, []) == {}
        locked = rows.lock_counters(session, mission_id,
                                    [(ENTRY, "max_calls"), (ENTRY, "max_duration")])
        assert list(locked) == [(ENTRY, "max_calls")]
        assert [c.bound for c in rows.counters_of(session, mission_id)] == ["max_calls"]


def test_reservations_and_claims_live_in_the_callers_transaction(store: Store) -> None:
    mission_id = "msn_" + "r" * 32
    with pytest.raises(RuntimeError), store.begin() as session:
        rows.add_reservation(session, evaluation_id="dec_1", mission_id=mission_id,
                             key=(ENTRY, "max_calls"), amount="1", now=T0,
                             lease_until=T0 + timedelta(seconds=60))
        assert rows.insert_claim(session, {
            "mission_id": mission_id, "scope_digest": "sha-256:s", "idempotency_key": "k",
            "operation_digest": "sha-256:o", "evaluation_id": "dec_1", "permit": "p",
            "valid_until": T0, "created_at": T0, "expires_at": T0})
        raise RuntimeError("rolled back")
    with store.begin() as session:
        assert rows.lock_reservations(session, "dec_1") == []
        assert rows.lock_claim(session, mission_id, "sha-256:s", "k") is None


def test_a_permit_counts_as_consumed_once_its_jti_is_spent(store: Store) -> None:
    with store.begin() as session:
        assert not rows.permit_consumed(session, "dec_1")
        consume_once(session, "dpop-jti", "dec_1", T0 + timedelta(minutes=1))
        assert not rows.permit_consumed(session, "dec_1")  # another namespace
        consume_once(session, rows.PERMIT_NAMESPACE, "dec_1", T0 + timedelta(minutes=1))
        assert rows.permit_consumed(session, "dec_1")
