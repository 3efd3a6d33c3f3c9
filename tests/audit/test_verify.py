"""``audit.verify`` finds tampering and names the first break (PROFILE.md section 15;
``missionbound audit verify`` prints it and exits 1)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, text

from missionbound import audit
from missionbound.mission.anchors import authority_hash
from missionbound.mission.lifecycle import Event, Role
from missionbound.mission.record import MissionRecord
from missionbound.store.lifecycle import transition
from missionbound.store.models import AuditRecord
from missionbound.store.transactions import Store
from tests.store.factories import ISSUER, T0

CreateMission = Callable[..., MissionRecord]


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
