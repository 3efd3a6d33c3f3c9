"""The audit spine (PROFILE.md section 15): appends form one global chain and one chain per
Mission, written in the caller's transaction, serialized under concurrency."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from missionbound import audit
from missionbound.mission.errors import InvalidRequest
from missionbound.mission.lifecycle import Event, Role
from missionbound.mission.record import MissionRecord
from missionbound.store.lifecycle import transition
from missionbound.store.models import AuditChainHead, AuditRecord
from missionbound.store.transactions import Store
from tests.store.concurrency import run_concurrently
from tests.store.factories import T0

CreateMission = Callable[..., MissionRecord]


def _append(store: Store, mission_id: str | None, n: int, **overrides: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "event": "pdp.decision",
        "mission_id": mission_id,
        "actor": {"sub": "demo-agent"},
        "anchors": None,
        "policy_version": "pv:1",
        "data": {"n": n},
        "at": T0 + timedelta(seconds=n, microseconds=n),
    }
    fields.update(overrides)
    with store.begin() as session:
        return audit.append(session, **fields)


def test_records_link_globally_and_per_mission(store: Store, active_mission: CreateMission) -> None:
    first, second = active_mission(), active_mission()  # 2 records each
    _append(store, None, 1)
    _append(store, first.mission_id, 2)
    with store.begin() as session:
        transition(
            session,
            second.mission_id,
            Event.REVOKE,
            roles={Role.ADMIN},
            actor={"role": "admin"},
            reason="done",
            now=T0 + timedelta(hours=1),
        )
    with store.read() as session:
        records = session.scalars(select(AuditRecord).order_by(AuditRecord.seq)).all()
        head = session.get(AuditChainHead, 1)
    assert [r.seq for r in records] == [1, 2, 3, 4, 5, 6, 7]
    assert [r.mission_seq for r in records] == [1, 2, 1, 2, None, 3, 3]
    previous: str | None = None
    last_of: dict[str, str] = {}
    for record in records:
        assert record.record_hash == audit.compute_record_hash(record.__dict__)
        assert record.prev_hash == previous
        if record.mission_id is not None:
            assert record.mission_prev_hash == last_of.get(record.mission_id)
            last_of[record.mission_id] = record.record_hash
        else:
            assert record.mission_prev_hash is None
        previous = record.record_hash
    assert head is not None and (head.last_seq, head.last_hash) == (7, previous)
    report = audit.verify(store.engine)
    assert report == audit.VerifyReport(
        ok=True, records_checked=7, missions_checked=2, first_break=None
    )


def test_the_record_keeps_the_anchors_policy_version_and_microseconds(
    store: Store, active_mission: CreateMission
) -> None:
    mission = active_mission()
    at = T0 + timedelta(microseconds=123456)
    record = _append(
        store,
        mission.mission_id,
        1,
        at=at,
        anchors={"authority_hash": mission.authority_hash, "proposal_hash": mission.proposal_hash},
    )
    with store.read() as session:
        stored = session.get(AuditRecord, record.seq)
    assert stored is not None
    assert stored.at == at
    assert (stored.authority_hash, stored.proposal_hash, stored.consent_rendering_hash) == (
        mission.authority_hash,
        mission.proposal_hash,
        None,
    )
    assert audit.record_body(stored.__dict__)["at"] == "2026-10-15T14:32:11.123456Z"


@pytest.mark.parametrize(
    "bad",
    [
        {"anchors": {"intent_hash": "sha-256:x"}},
        {"at": datetime(2026, 1, 1)},
        {"data": {"amount": math.nan}},
        {"data": {"big": 2**60}},
        {"data": ["not", "an", "object"]},
        {"actor": "demo-agent"},
        {"event": ""},
    ],
    ids=[
        "unknown-anchor",
        "naive-time",
        "nan",
        "huge-int",
        "data-not-object",
        "actor-string",
        "no-event",
    ],
)
def test_bad_input_is_refused_and_nothing_is_appended(store: Store, bad: dict[str, Any]) -> None:
    _append(store, None, 1)
    with pytest.raises(InvalidRequest):
        _append(store, None, 2, **bad)
    with store.read() as session:
        assert session.scalars(select(AuditRecord.seq)).all() == [1]
        head = session.get(AuditChainHead, 1)
        assert head is not None and head.last_seq == 1
    assert audit.verify(store.engine).ok


def test_a_caller_mutating_its_data_after_append_does_not_break_the_chain(
    store: Store,
) -> None:
    data = {"n": 1}
    with store.begin() as session:
        audit.append(
            session,
            event="e",
            mission_id=None,
            actor=None,
            anchors=None,
            policy_version=None,
            data=data,
            at=T0,
        )
        data["n"] = 2  # before the flush at commit
    assert audit.verify(store.engine).ok


def test_a_rolled_back_transaction_leaves_no_record(store: Store) -> None:
    with pytest.raises(RuntimeError), store.begin() as session:
        audit.append(
            session,
            event="e",
            mission_id=None,
            actor=None,
            anchors=None,
            policy_version=None,
            data={},
            at=T0,
        )
        raise RuntimeError
    _append(store, None, 1)
    with store.read() as session:
        assert session.scalars(select(AuditRecord.seq)).all() == [1]


def test_concurrent_appends_never_fork_the_chain(
    store: Store, create_mission: CreateMission
) -> None:
    mission_ids = [create_mission().mission_id for _ in range(4)]  # records 1-4
    results = run_concurrently(
        80, lambda i: _append(store, mission_ids[i % 4] if i % 5 else None, i)
    )
    assert [r for r in results if not isinstance(r, AuditRecord)] == []
    with store.read() as session:
        seqs = session.scalars(select(AuditRecord.seq).order_by(AuditRecord.seq)).all()
    assert seqs == list(range(1, 85))
    report = audit.verify(store.engine)
    assert (report.ok, report.records_checked, report.missions_checked) == (True, 84, 4)
