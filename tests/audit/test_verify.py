"""``audit.verify`` finds tampering and names the first break (PROFILE.md section 15;
``missionbound audit verify`` prints it and exits 1)."""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine, select, text

from missionbound import audit
from missionbound.audit.mission_checks import Break, MissionChain, check_record_digest
from missionbound.mission.anchors import authority_hash
from missionbound.mission.canonical import digest_json
from missionbound.mission.lifecycle import Event, Role, State
from missionbound.mission.record import MissionRecord, new_mission_id
from missionbound.store import lifecycle as lifecycle_module
from missionbound.store import missions
from missionbound.store.errors import MissionRecordTampered
from missionbound.store.gate import gate_derivation
from missionbound.store.lifecycle import AUDIT_TRANSITION, transition
from missionbound.store.models import AuditRecord, Mission, MissionHistory
from missionbound.store.transactions import Store
from tests.store.factories import ISSUER, T0, Traces, count_traces

CreateMission = Callable[..., MissionRecord]
# The module itself: ``missionbound.audit.verify`` as an attribute is the function.
verify_module = importlib.import_module("missionbound.audit.verify")


@pytest.fixture
def history(store: Store, active_mission: CreateMission) -> tuple[MissionRecord, MissionRecord]:
    """Two Missions and seven records: 1-2 first (created, approved), 3-4 second, 5 a record
    without a Mission, 6 first suspended, 7 first resumed."""
    first, second = active_mission(), active_mission()
    with store.begin() as session:
        audit.append(
            session,
            event="keys.rotated",
            mission_id=None,
            actor={"sub": "bob"},
            anchors=None,
            policy_version=None,
            data={"kid": "k2"},
            at=T0,
        )
    for event in (Event.SUSPEND, Event.RESUME):
        with store.begin() as session:
            transition(
                session,
                first.mission_id,
                event,
                roles={Role.ADMIN},
                actor={"role": "admin"},
                reason="ops",
                now=T0 + timedelta(hours=1),
            )
    assert audit.verify(store.engine).ok
    return first, second


def _raw_json(engine: Engine, table: str, column: str, where: str, key: Any) -> str:
    with engine.connect() as connection:
        return str(
            connection.execute(
                text(f"SELECT CAST({column} AS TEXT) FROM {table} WHERE {where} = :k"), {"k": key}
            ).scalar_one()
        )


def _write_json(engine: Engine, table: str, column: str, where: str, key: Any, raw: str) -> None:
    value = "CAST(:v AS JSON)" if engine.dialect.name == "postgresql" else ":v"
    with engine.begin() as connection:
        connection.execute(
            text(f"UPDATE {table} SET {column} = {value} WHERE {where} = :k"), {"v": raw, "k": key}
        )


def _flip_one_byte(raw: str, needle: str) -> str:
    """Change the last character of ``needle`` inside ``raw``: one stored byte."""
    at = raw.index(needle) + len(needle) - 1
    return raw[:at] + ("X" if raw[at] != "X" else "Y") + raw[at + 1 :]


def _report(store: Store) -> audit.VerifyReport:
    report = audit.verify(store.engine)
    assert not report.ok
    assert report.first_break is not None
    return report


def test_one_changed_byte_in_a_records_data_is_named(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    first, _ = history
    raw = _raw_json(store.engine, "audit_records", "data", "seq", 6)
    _write_json(store.engine, "audit_records", "data", "seq", 6, _flip_one_byte(raw, "suspended"))
    report = _report(store)
    assert report.first_break == (
        f"audit record 6 (mission {first.mission_id}): record_hash does not match its content"
    )
    assert report.records_checked == 5


def test_a_changed_actor_on_a_record_without_mission_is_named(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    raw = _raw_json(store.engine, "audit_records", "actor", "seq", 5)
    _write_json(store.engine, "audit_records", "actor", "seq", 5, raw.replace("bob", "eve"))
    assert _report(store).first_break == ("audit record 5: record_hash does not match its content")


def test_a_changed_column_is_named(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    first, _ = history
    with store.engine.begin() as connection:
        connection.execute(
            text("UPDATE audit_records SET policy_version = 'pv:forged' WHERE seq = 2")
        )
    assert _report(store).first_break == (
        f"audit record 2 (mission {first.mission_id}): record_hash does not match its content"
    )


def test_a_record_deleted_from_the_middle_is_caught(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    with store.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_records WHERE seq = 4"))
    report = _report(store)
    assert report.first_break == ("audit record 4 missing: the log jumps from record 3 to record 5")
    assert report.records_checked == 3


def test_a_deletion_hidden_by_renumbering_is_caught(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    with store.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_records WHERE seq = 4"))
        for seq in (5, 6, 7):
            connection.execute(
                text("UPDATE audit_records SET seq = :new WHERE seq = :old"),
                {"new": seq - 1, "old": seq},
            )
    assert re.fullmatch(
        r"audit record 4: record_hash does not match its content", _report(store).first_break or ""
    )


def test_records_removed_from_the_end_are_caught(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    with store.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_records WHERE seq = 7"))
    assert _report(store).first_break == (
        "audit chain head names record 7 but the log ends at record 6 "
        "(records were removed from its end)"
    )


def test_a_rewritten_chain_still_breaks_the_missions_own_chain(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    # A forger who deletes record 6 (first Mission suspended) and recomputes every later
    # hash and the head keeps the global chain consistent; the per-Mission chain is not.
    first, _ = history
    with store.begin() as session:
        session.execute(text("DELETE FROM audit_records WHERE seq = 6"))
        session.execute(text("UPDATE audit_records SET seq = 6 WHERE seq = 7"))
        session.expire_all()
        previous = session.scalars(select(AuditRecord).where(AuditRecord.seq == 5)).one()
        moved = session.scalars(select(AuditRecord).where(AuditRecord.seq == 6)).one()
        moved.prev_hash = previous.record_hash
        moved.record_hash = audit.compute_record_hash(moved.__dict__)
        session.execute(
            text("UPDATE audit_chain_head SET last_seq = 6, last_hash = :h"),
            {"h": moved.record_hash},
        )
    assert _report(store).first_break == (
        f"audit record 6 (mission {first.mission_id}): mission_seq is 4, expected 3 "
        "(a record of this Mission is missing)"
    )


def test_a_tampered_authority_set_is_named(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    _, second = history
    record = json.loads(
        _raw_json(store.engine, "missions", "record", "mission_id", second.mission_id)
    )
    record["authority_set"][0]["constraints"]["max_value"]["amount"] = "5000.00"
    _write_json(
        store.engine, "missions", "record", "mission_id", second.mission_id, json.dumps(record)
    )
    report = _report(store)
    assert report.first_break == (
        f"mission {second.mission_id}: authority_hash does not match the stored authority_set"
    )
    assert report.records_checked == 7


def test_a_tampered_consent_disclosure_is_named(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    first, _ = history
    raw = _raw_json(store.engine, "missions", "record", "mission_id", first.mission_id)
    forged = raw.replace('"consent:1"', '"consent:2"')
    assert forged != raw
    _write_json(store.engine, "missions", "record", "mission_id", first.mission_id, forged)
    assert _report(store).first_break == (
        f"mission {first.mission_id}: consent_rendering_hash does not match the stored "
        "consent_disclosure"
    )


def test_an_authority_set_rewritten_with_a_matching_anchor_is_still_caught(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    # The forger recomputes authority_hash too; the audit log committed the original.
    _, second = history
    record = json.loads(
        _raw_json(store.engine, "missions", "record", "mission_id", second.mission_id)
    )
    wider = [
        {
            **record["authority_set"][0],
            "actions": ["invoices.read", "journal-entries.write", "payments.execute"],
        }
    ]
    record.update(authority_set=wider, authority_hash=authority_hash(ISSUER, wider))
    _write_json(
        store.engine, "missions", "record", "mission_id", second.mission_id, json.dumps(record)
    )
    assert _report(store).first_break == (
        f"mission {second.mission_id}: stored authority_hash differs from the one committed "
        "by audit record 4"
    )


def test_a_deleted_lifecycle_history_entry_is_caught(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    first, _ = history
    with store.engine.begin() as connection:
        connection.execute(
            text("DELETE FROM mission_history WHERE mission_id = :m AND version = 3"),
            {"m": first.mission_id},
        )
    assert _report(store).first_break == (
        f"mission {first.mission_id}: lifecycle history has 3 entries up to version 4 but "
        "the Mission is at version 4"
    )


def test_verify_reads_through_a_callers_session(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    with store.read() as session:
        report = audit.verify(session)
    assert (report.ok, report.records_checked, report.missions_checked) == (True, 7, 2)


def test_an_empty_log_verifies(store: Store) -> None:
    assert audit.verify(store.engine) == audit.VerifyReport(True, 0, 0, None)


# -- the columns gating reads (state, version, mission_expiry, ...) -------------------------


def _revoked(store: Store, active_mission: CreateMission) -> MissionRecord:
    """Created (audit record 1), approved (2), revoked (3): the Mission is at version 3."""
    mission = active_mission()
    with store.begin() as session:
        transition(
            session,
            mission.mission_id,
            Event.REVOKE,
            roles={Role.SUBJECT},
            actor={"role": "subject"},
            reason="done",
            now=T0 + timedelta(hours=1),
        )
    assert audit.verify(store.engine).ok
    return mission


def _sql(store: Store, statement: str, **params: Any) -> None:
    with store.engine.begin() as connection:
        connection.execute(text(statement), params)


def test_a_revoked_mission_set_back_to_active_is_caught(
    store: Store, active_mission: CreateMission
) -> None:
    mission = _revoked(store, active_mission)
    _sql(store, "UPDATE missions SET state = 'active' WHERE mission_id = :m", m=mission.mission_id)
    # What the tampering buys: the gate issues on a Mission that was revoked.
    with store.begin() as session:
        assert gate_derivation(session, mission.mission_id, now=T0 + timedelta(hours=2)) == 1
    assert _report(store).first_break == (
        f"mission {mission.mission_id}: stored state is 'active' but its last lifecycle "
        "audit record (audit record 3) says 'revoked'"
    )


def test_a_state_rewound_with_a_forged_history_entry_is_still_caught(
    store: Store, active_mission: CreateMission
) -> None:
    # The forger keeps history and version consistent; the log is what they cannot rewrite.
    mission = _revoked(store, active_mission)
    _sql(
        store,
        "UPDATE missions SET state = 'active', version = 4 WHERE mission_id = :m",
        m=mission.mission_id,
    )
    with store.begin() as session:
        session.add(
            MissionHistory(
                mission_id=mission.mission_id,
                version=4,
                from_state="revoked",
                to_state="active",
                event="resume",
                actor={"role": "admin"},
                reason=None,
                committed_at=T0 + timedelta(hours=2),
            )
        )
    assert _report(store).first_break == (
        f"mission {mission.mission_id}: stored state is 'active' but its last lifecycle "
        "audit record (audit record 3) says 'revoked'"
    )


def test_a_changed_version_is_caught(store: Store, active_mission: CreateMission) -> None:
    mission = _revoked(store, active_mission)
    _sql(store, "UPDATE missions SET version = 7 WHERE mission_id = :m", m=mission.mission_id)
    assert _report(store).first_break == (
        f"mission {mission.mission_id}: stored version is 7 but its last lifecycle audit "
        "record (audit record 3) says 3"
    )


def test_a_changed_last_history_state_is_caught(
    store: Store, active_mission: CreateMission
) -> None:
    mission = _revoked(store, active_mission)
    _sql(
        store,
        "UPDATE mission_history SET to_state = 'active' WHERE mission_id = :m AND version = 3",
        m=mission.mission_id,
    )
    assert _report(store).first_break == (
        f"mission {mission.mission_id}: stored state is 'revoked' but its last lifecycle "
        "history entry (version 3) says 'active'"
    )


def _push_expiry_column_to_2099(store: Store, mission_id: str) -> None:
    when = datetime(2099, 1, 1, tzinfo=UTC)
    if store.engine.dialect.name == "sqlite":  # raw SQL: the column stores naive UTC there
        when = when.replace(tzinfo=None)
    _sql(store, "UPDATE missions SET mission_expiry = :t WHERE mission_id = :m", t=when,
         m=mission_id)


def test_a_mission_expiry_pushed_out_is_caught(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    first, _ = history
    _push_expiry_column_to_2099(store, first.mission_id)
    with store.read() as session:  # the column is what the gate and the clock read
        stored = missions.get(session, first.mission_id)
        assert stored is not None and stored.mission_expiry.year == 2099
    assert _report(store).first_break == (
        f"mission {first.mission_id}: the mission_expiry column ('2099-01-01T00:00:00Z') "
        "differs from the record's mission_expiry ('2026-10-18T14:32:11Z')"
    )


def test_a_mission_expiry_pushed_out_in_the_record_too_is_caught(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    # Column and record moved together: the anchored intent still says when it ends.
    first, _ = history
    _push_expiry_column_to_2099(store, first.mission_id)
    record = json.loads(
        _raw_json(store.engine, "missions", "record", "mission_id", first.mission_id)
    )
    record["mission_expiry"] = "2099-01-01T00:00:00Z"
    _write_json(
        store.engine, "missions", "record", "mission_id", first.mission_id, json.dumps(record)
    )
    assert _report(store).first_break == (
        f"mission {first.mission_id}: mission_expiry 2099-01-01T00:00:00Z is later than "
        "the 2026-10-18T14:32:11Z its mission_intent asked for"
    )


@pytest.mark.parametrize(
    ("column", "forged", "shown", "member"),
    [
        ("subject_sub", "'mallory'", "'mallory'", "'alice'"),
        ("client_id", "'other-agent'", "'other-agent'", "'demo-agent'"),
        ("approval_event_id", "'ape_forged'", "'ape_forged'", None),
        ("activated_at", "NULL", "None", "'2026-10-15T14:33:11Z'"),
    ],
)
def test_a_filter_column_moved_away_from_the_record_is_caught(
    store: Store,
    history: tuple[MissionRecord, MissionRecord],
    column: str,
    forged: str,
    shown: str,
    member: str | None,
) -> None:
    _, second = history
    if member is None:
        member = repr(second.approval_event_id)
    _sql(store, f"UPDATE missions SET {column} = {forged} WHERE mission_id = :m",
         m=second.mission_id)  # fmt: skip
    assert _report(store).first_break == (
        f"mission {second.mission_id}: the {column} column ({shown}) differs from the "
        f"record's {column} ({member})"
    )


def test_a_changed_policy_version_is_caught(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    first, _ = history
    record = json.loads(
        _raw_json(store.engine, "missions", "record", "mission_id", first.mission_id)
    )
    record["policy_version"] = "deploy-policy:lenient"
    _write_json(
        store.engine, "missions", "record", "mission_id", first.mission_id, json.dumps(record)
    )
    assert _report(store).first_break == (
        f"mission {first.mission_id}: stored policy_version 'deploy-policy:lenient' differs "
        "from the one committed by audit record 7"
    )


def test_a_changed_created_at_is_caught(store: Store, create_mission: CreateMission) -> None:
    mission = create_mission()
    earlier = T0 - timedelta(days=1)
    _sql(
        store,
        "UPDATE missions SET created_at = :t WHERE mission_id = :m",
        t=earlier.replace(tzinfo=None) if store.engine.dialect.name == "sqlite" else earlier,
        m=mission.mission_id,
    )
    assert _report(store).first_break == (
        f"mission {mission.mission_id}: the created_at column ('2026-10-14T14:32:11Z') "
        "differs from the record's created_at ('2026-10-15T14:32:11Z')"
    )


def test_a_record_swapped_with_another_missions_is_caught(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    first, second = history
    raw = _raw_json(store.engine, "missions", "record", "mission_id", first.mission_id)
    _write_json(store.engine, "missions", "record", "mission_id", second.mission_id, raw)
    # Reported at the first Mission in id order that is broken: the one holding the copy.
    assert _report(store).first_break == (
        f"mission {second.mission_id}: the stored record is that of mission '{first.mission_id}'"
    )


def test_a_mission_without_its_created_record_is_caught(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    # A Mission inserted straight into the tables, history and all: the log never saw it.
    first, _ = history
    forged_id = new_mission_id()
    record = json.loads(_raw_json(store.engine, "missions", "record", "mission_id",
                                  first.mission_id))  # fmt: skip
    record.update(mission_id=forged_id, approval_event_id=None, activated_at=None)
    for name in ("approver", "proposal_hash", "consent_rendering_hash", "authority_hash",
                 "consent_disclosure"):  # fmt: skip
        record[name] = None
    with store.begin() as session:
        session.add(
            Mission(
                mission_id=forged_id,
                state="pending_approval",
                version=1,
                record=record,
                subject_sub="alice",
                client_id="demo-agent",
                created_at=T0,
                mission_expiry=T0 + timedelta(days=3),
                activated_at=None,
                approval_event_id=None,
            )
        )
        session.flush()
        session.add(
            MissionHistory(
                mission_id=forged_id,
                version=1,
                from_state=None,
                to_state="pending_approval",
                event="submit",
                actor=None,
                reason=None,
                committed_at=T0,
            )
        )
    assert _report(store).first_break == f"mission {forged_id} has no mission.created audit record"


def test_a_deleted_mission_row_is_caught(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    _, second = history
    for table in ("mission_history", "derivation_counters", "missions"):
        _sql(store, f"DELETE FROM {table} WHERE mission_id = :m", m=second.mission_id)
    report = _report(store)
    assert report.first_break == (
        f"audit record 3 (mission {second.mission_id}) records the creation of a Mission "
        "that is not stored (its row was deleted)"
    )
    assert report.missions_checked == 1


def test_the_lifecycle_event_names_are_the_ones_the_store_writes() -> None:
    assert verify_module.CREATED_EVENT == missions.AUDIT_CREATED
    assert {missions.AUDIT_CREATED, AUDIT_TRANSITION} == verify_module.LIFECYCLE_EVENTS


def test_missions_in_every_state_with_sub_second_times_verify(
    store: Store, create_mission: CreateMission, active_mission: CreateMission
) -> None:
    # Columns keep microseconds, the record whole seconds: no false break.
    now = datetime.now(UTC)
    create_mission(created_at=now)
    active_mission(created_at=now - timedelta(seconds=30, microseconds=123))
    lapsed = active_mission(created_at=now - timedelta(hours=2), lifetime=timedelta(hours=1))
    rejected = create_mission(created_at=now)
    with store.begin() as session:
        transition(session, rejected.mission_id, Event.REJECT, roles={Role.APPROVER},
                   actor={"role": "approver"}, reason=None, now=now)  # fmt: skip
        missions.expire_due(session, now)
    with store.read() as session:
        expired = missions.get(session, lapsed.mission_id)
        assert expired is not None and expired.state is State.EXPIRED
    assert audit.verify(store.engine) == audit.VerifyReport(True, 8, 4, None)


# -- content that cannot be read is a named break, never a traceback -----------------------


def test_an_anchor_that_is_not_a_string_is_named(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    first, _ = history
    record = json.loads(
        _raw_json(store.engine, "missions", "record", "mission_id", first.mission_id)
    )
    record["authority_hash"] = 5
    _write_json(
        store.engine, "missions", "record", "mission_id", first.mission_id, json.dumps(record)
    )
    assert _report(store).first_break == (
        f"record of {first.mission_id} cannot be read: authority_hash is 5, not a string"
    )


def test_any_exception_while_checking_a_mission_is_named(
    store: Store, history: tuple[MissionRecord, MissionRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = history
    failing = min(first.mission_id, second.mission_id)

    def find_anchor_mismatch(record: dict[str, Any]) -> str | None:
        if record["mission_id"] == failing:
            raise AttributeError("'int' object has no attribute 'startswith'")
        return None

    monkeypatch.setattr(verify_module, "find_anchor_mismatch", find_anchor_mismatch)
    report = _report(store)
    assert report.first_break == (
        f"record of {failing} cannot be read: AttributeError: 'int' object has no "
        "attribute 'startswith'"
    )
    assert report.missions_checked == 0


def test_a_member_of_the_wrong_type_is_named(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    _, second = history
    record = json.loads(
        _raw_json(store.engine, "missions", "record", "mission_id", second.mission_id)
    )
    record["subject"] = "alice"
    _write_json(
        store.engine, "missions", "record", "mission_id", second.mission_id, json.dumps(record)
    )
    assert re.fullmatch(
        rf"record of {second.mission_id} cannot be read: (TypeError|AttributeError): .+",
        _report(store).first_break or "",
    )


@pytest.mark.parametrize("raw", ["[1, 2]", '"text"', "42"])
def test_a_record_that_is_not_a_json_object_is_named(
    store: Store, history: tuple[MissionRecord, MissionRecord], raw: str
) -> None:
    first, _ = history
    _write_json(store.engine, "missions", "record", "mission_id", first.mission_id, raw)
    assert _report(store).first_break == (
        f"record of {first.mission_id} cannot be read: not a JSON object"
    )


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # PostgreSQL refuses these
def test_undecodable_stored_values_are_named(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    first, _ = history
    _sql(store, "UPDATE missions SET record = '{\"origin\":' WHERE mission_id = :m",
         m=first.mission_id)  # fmt: skip
    assert re.fullmatch(
        rf"record of {first.mission_id} cannot be read: not JSON \(.+\)",
        _report(store).first_break or "",
    )
    _sql(store, "UPDATE missions SET mission_expiry = 'never' WHERE mission_id = :m",
         m=first.mission_id)  # fmt: skip
    assert _report(store).first_break == (
        f"record of {first.mission_id} cannot be read: ValueError: Invalid isoformat "
        "string: 'never'"
    )
    _sql(store, "UPDATE audit_records SET data = '{' WHERE seq = 3")
    assert re.fullmatch(
        r"audit record 3 cannot be read: JSONDecodeError: .+",
        _report(store).first_break or "",
    )


def test_a_member_rewritten_with_its_column_is_caught_by_the_record_digest(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    # subject moved to mallory in the record and in the filter column together: nothing but
    # the record digest committed by the last lifecycle audit record can tell.
    first, _ = history
    record = json.loads(
        _raw_json(store.engine, "missions", "record", "mission_id", first.mission_id)
    )
    record["subject"] = {**record["subject"], "sub": "mallory"}
    _write_json(
        store.engine, "missions", "record", "mission_id", first.mission_id, json.dumps(record)
    )
    _sql(store, "UPDATE missions SET subject_sub = 'mallory' WHERE mission_id = :m",
         m=first.mission_id)
    report = _report(store)
    assert report.first_break is not None
    assert report.first_break.startswith(f"mission {first.mission_id}: stored record does not "
                                         "match the record_digest committed by audit record")


# -- tampering is not laundered by the next lifecycle event ------------------------------------


def _widen_authority(store: Store, mission_id: str) -> None:
    """Add an action to the stored Authority Set and recompute authority_hash to match."""
    record = json.loads(_raw_json(store.engine, "missions", "record", "mission_id", mission_id))
    wider = [
        {
            **record["authority_set"][0],
            "actions": ["invoices.read", "journal-entries.write", "payments.execute"],
        }
    ]
    record.update(authority_set=wider, authority_hash=authority_hash(ISSUER, wider))
    _write_json(store.engine, "missions", "record", "mission_id", mission_id, json.dumps(record))


def _move_subject_to_mallory(store: Store, mission_id: str) -> None:
    """Rewrite subject.sub in the record and the subject_sub column together."""
    record = json.loads(_raw_json(store.engine, "missions", "record", "mission_id", mission_id))
    record["subject"] = {**record["subject"], "sub": "mallory"}
    _write_json(store.engine, "missions", "record", "mission_id", mission_id, json.dumps(record))
    _sql(store, "UPDATE missions SET subject_sub = 'mallory' WHERE mission_id = :m", m=mission_id)


def _laundering_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer as it was: it commits whatever record it finds, without comparing it with
    the log. Verification must not depend on the writer refusing."""
    monkeypatch.setattr(
        lifecycle_module,
        "check_record_committed",
        lambda session, mission_id, record, event: digest_json(record),
    )


def _apply(store: Store, mission_id: str, event: Event) -> None:
    with store.begin() as session:
        transition(session, mission_id, event, roles={Role.ADMIN}, actor={"role": "admin"},
                   reason="ops", now=T0 + timedelta(hours=2))  # fmt: skip


def test_a_widened_authority_set_then_a_suspend_is_refused_and_still_named(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    _, second = history  # audit records 3 (created) and 4 (approved)
    _widen_authority(store, second.mission_id)
    broken = (
        f"mission {second.mission_id}: stored authority_hash differs from the one committed "
        "by audit record 4"
    )
    assert _report(store).first_break == broken
    with pytest.raises(MissionRecordTampered, match=r"\(audit record 4\)"):
        _apply(store, second.mission_id, Event.SUSPEND)
    with store.read() as session:
        assert count_traces(session, second.mission_id) == Traces(2, 2, 2)
    report = _report(store)
    assert (report.first_break, report.records_checked) == (broken, 7)


def test_a_widened_authority_set_laundered_by_a_suspend_is_still_named(
    store: Store, history: tuple[MissionRecord, MissionRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, second = history
    _widen_authority(store, second.mission_id)
    _laundering_writer(monkeypatch)
    _apply(store, second.mission_id, Event.SUSPEND)  # audit record 8 commits the forgery
    assert _report(store).first_break == (
        f"audit record 8 (mission {second.mission_id}): authority_hash differs from the one "
        "audit record 4 committed, at event 'suspend' (anchors are set once, at approval, "
        "and never change)"
    )


def test_a_rewritten_subject_then_a_revoke_is_refused_and_still_named(
    store: Store, history: tuple[MissionRecord, MissionRecord]
) -> None:
    first, _ = history  # audit record 7 is its last lifecycle record
    _move_subject_to_mallory(store, first.mission_id)
    broken = (
        f"mission {first.mission_id}: stored record does not match the record_digest "
        "committed by audit record 7"
    )
    assert _report(store).first_break == broken
    with pytest.raises(MissionRecordTampered, match=r"\(audit record 7\)"):
        _apply(store, first.mission_id, Event.REVOKE)
    with store.read() as session:
        assert count_traces(session, first.mission_id) == Traces(4, 4, 4)
    assert _report(store).first_break == broken


def test_a_rewritten_subject_laundered_by_a_revoke_is_still_named(
    store: Store, history: tuple[MissionRecord, MissionRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = history
    _move_subject_to_mallory(store, first.mission_id)
    _laundering_writer(monkeypatch)
    _apply(store, first.mission_id, Event.REVOKE)
    assert _report(store).first_break == (
        f"audit record 8 (mission {first.mission_id}): record_digest differs from the one "
        "audit record 7 committed, at event 'revoke' (a Mission's record changes only at "
        "approval)"
    )


def test_a_rewrite_laundered_by_expire_due_is_still_named(
    store: Store, active_mission: CreateMission, monkeypatch: pytest.MonkeyPatch
) -> None:
    mission = active_mission(lifetime=timedelta(hours=1))  # audit records 1, 2
    _move_subject_to_mallory(store, mission.mission_id)
    with pytest.raises(MissionRecordTampered), store.session() as session, session.begin():
        missions.expire_due(session, T0 + timedelta(hours=1))
    _laundering_writer(monkeypatch)
    with store.begin() as session:
        assert missions.expire_due(session, T0 + timedelta(hours=1)) == 1
    assert _report(store).first_break == (
        f"audit record 3 (mission {mission.mission_id}): record_digest differs from the one "
        "audit record 2 committed, at event 'expire' (a Mission's record changes only at "
        "approval)"
    )


def _appending_without_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that leaves record_digest out of the lifecycle records it appends."""

    def append(session: Any, **fields: Any) -> AuditRecord:
        data = {k: v for k, v in fields.pop("data").items() if k != "record_digest"}
        return audit.append(session, data=data, **fields)

    monkeypatch.setattr(lifecycle_module, "audit", SimpleNamespace(append=append))


def test_a_lifecycle_record_without_record_digest_is_named_as_such(
    store: Store, create_mission: CreateMission, monkeypatch: pytest.MonkeyPatch
) -> None:
    _appending_without_digest(monkeypatch)
    mission = create_mission()
    assert _report(store).first_break == (
        f"audit record 1 (mission {mission.mission_id}): lifecycle audit record has no "
        "record_digest"
    )


def test_check_record_digest_names_a_missing_digest() -> None:
    chain = MissionChain(1, "h", created_seq=1, lifecycle_seq=1, lifecycle_data={"state": "x"})
    with pytest.raises(Break) as raised:
        check_record_digest("msn_x", {}, chain)
    assert raised.value.description == (
        "mission msn_x: its last lifecycle audit record (audit record 1) has no record_digest"
    )


def test_anchors_in_a_mission_created_record_are_named(
    store: Store, create_mission: CreateMission, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Anchors commit to what the Approver saw; a submission has nothing to anchor yet.
    def anchors_of(record: dict[str, Any]) -> dict[str, str | None]:
        return {"proposal_hash": "sha-256:early", "consent_rendering_hash": None,
                "authority_hash": None}  # fmt: skip

    monkeypatch.setattr(lifecycle_module, "anchors_of", anchors_of)
    mission = create_mission()
    assert _report(store).first_break == (
        f"audit record 1 (mission {mission.mission_id}): proposal_hash is set at event "
        "'submit', before any approval (anchors are set once, at approval)"
    )
