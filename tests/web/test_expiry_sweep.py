"""The serving process persists lapsed Missions' expiry in the background."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from missionbound import audit
from missionbound.config import load_settings
from missionbound.mission.canonical import digest_json
from missionbound.mission.lifecycle import LifecyclePolicy, State
from missionbound.mission.record import MissionRecord
from missionbound.store import lifecycle, missions
from missionbound.store.errors import MissionRecordTampered
from missionbound.store.models import Mission, MissionHistory
from missionbound.store.transactions import Store
from missionbound.web import expiry_sweep
from missionbound.web.app import create_app
from missionbound.web.expiry_sweep import sweep_once

CreateMission = Callable[..., MissionRecord]


def stored_state(store: Store, mission_id: str) -> State:
    with store.read() as session:
        record = missions.get(session, mission_id)
        assert record is not None
        return record.state


def test_sweep_once_expires_only_what_is_due(store: Store, active_mission: CreateMission) -> None:
    now = datetime.now(UTC)
    lapsed = active_mission(created_at=now - timedelta(hours=2), lifetime=timedelta(hours=1))
    live = active_mission(created_at=now - timedelta(minutes=2), lifetime=timedelta(days=1))
    assert sweep_once(store, now, LifecyclePolicy()) == 1
    assert stored_state(store, lapsed.mission_id) is State.EXPIRED
    assert stored_state(store, live.mission_id) is State.ACTIVE
    assert sweep_once(store, now, LifecyclePolicy()) == 0  # nothing twice


@pytest.mark.anyio
async def test_a_serving_app_sweeps_in_the_background(
    database_url: str,
    engine: Engine,
    store: Store,
    active_mission: CreateMission,
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC)
    lapsed = active_mission(created_at=now - timedelta(hours=2), lifetime=timedelta(hours=1))
    settings = load_settings(
        data_dir=tmp_path,
        issuer="https://as.test.example",
        database_url=database_url,
        expiry_sweep_seconds=0.2,
    )
    app = create_app(settings, engine=engine)
    async with app.router.lifespan_context(app):  # what uvicorn runs at start and stop
        deadline = time.monotonic() + 10
        while stored_state(store, lapsed.mission_id) is not State.EXPIRED:
            assert time.monotonic() < deadline, "the sweep did not run within 10 s"
            await asyncio.sleep(0.1)


class _RecordingLog:
    """Stands in for the module's structlog logger (which may be cached by an earlier
    ``configure_logging`` in the same process)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    info = warning


def _poison(store: Store, mission_id: str) -> None:
    """Corrupt the stored record the way a bad migration or a hand edit would: drop a
    member the expiry's traces need (its outbox event names the Mission's origin). The
    record no longer matches the log, so the expiry is refused before anything is written."""
    with store.engine.connect() as connection:
        raw = connection.execute(
            text("SELECT CAST(record AS TEXT) FROM missions WHERE mission_id = :m"),
            {"m": mission_id},
        ).scalar_one()
    record = json.loads(raw)
    del record["origin"]
    value = "CAST(:v AS JSON)" if store.engine.dialect.name == "postgresql" else ":v"
    with store.engine.begin() as connection:
        connection.execute(
            text(f"UPDATE missions SET record = {value} WHERE mission_id = :m"),
            {"v": json.dumps(record), "m": mission_id},
        )


@pytest.mark.parametrize("batch", [500, 2])
def test_one_poisoned_mission_does_not_block_the_others(
    store: Store,
    active_mission: CreateMission,
    monkeypatch: pytest.MonkeyPatch,
    batch: int,
) -> None:
    monkeypatch.setattr(expiry_sweep, "BATCH", batch)
    recorder = _RecordingLog()
    monkeypatch.setattr(expiry_sweep, "log", recorder)
    now = datetime.now(UTC)
    lapsed = sorted(
        (
            active_mission(created_at=now - timedelta(hours=2), lifetime=timedelta(hours=1))
            for _ in range(5)
        ),
        key=lambda record: record.mission_id,
    )
    poisoned = lapsed[0]  # first in the sweep's order, and in the first batch
    _poison(store, poisoned.mission_id)
    with (
        pytest.raises(MissionRecordTampered) as raised,
        store.session() as session,
        session.begin(),
    ):
        missions.expire_if_due(session, poisoned.mission_id, now=now)  # the old sweep's trap
    for expected in (4, 0):  # and again at the next tick: still isolated, still logged
        recorder.events.clear()
        assert sweep_once(store, now, LifecyclePolicy()) == expected
        assert recorder.events == [
            (
                "mission_expiry_failed",
                {
                    "mission_id": poisoned.mission_id,
                    "error": "MissionRecordTampered",
                    "detail": str(raised.value),
                },
            )
        ]
    with store.engine.connect() as connection:  # the poisoned record no longer loads
        states = [
            connection.execute(
                text("SELECT state FROM missions WHERE mission_id = :m"), {"m": m.mission_id}
            ).scalar_one()
            for m in lapsed
        ]
    assert states == ["active", *["expired"] * 4]


def test_a_database_error_ends_the_sweep_instead_of_being_blamed_on_each_mission(
    store: Store, active_mission: CreateMission, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC)
    active_mission(created_at=now - timedelta(hours=2), lifetime=timedelta(hours=1))

    def database_away(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    monkeypatch.setattr(expiry_sweep, "expire_if_due", database_away)
    with pytest.raises(OperationalError):
        sweep_once(store, now, LifecyclePolicy())


def _move_subject_to_mallory(store: Store, mission_id: str) -> None:
    """Rewrite subject.sub in the record and the subject_sub column together."""
    with store.session() as session, session.begin():
        row = session.get(Mission, mission_id)
        assert row is not None
        row.record = {**row.record, "subject": {**row.record["subject"], "sub": "mallory"}}
        row.subject_sub = "mallory"


def test_the_sweep_does_not_launder_a_rewritten_record(
    store: Store, active_mission: CreateMission, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _RecordingLog()
    monkeypatch.setattr(expiry_sweep, "log", recorder)
    now = datetime.now(UTC)
    lapsed = active_mission(created_at=now - timedelta(hours=2), lifetime=timedelta(hours=1))
    _move_subject_to_mallory(store, lapsed.mission_id)
    broken = audit.verify(store.engine).first_break
    assert broken == (
        f"mission {lapsed.mission_id}: stored record does not match the record_digest "
        "committed by audit record 2"
    )
    assert sweep_once(store, now, LifecyclePolicy()) == 0
    assert [(event, fields["error"]) for event, fields in recorder.events] == [
        ("mission_expiry_failed", "MissionRecordTampered")
    ]
    assert stored_state_raw(store, lapsed.mission_id) == "active"
    assert audit.verify(store.engine).first_break == broken

    # A sweep that wrote the expiry anyway (the writer as it was) is caught all the same.
    monkeypatch.setattr(
        lifecycle,
        "check_record_committed",
        lambda session, mission_id, record, event: digest_json(record),
    )
    assert sweep_once(store, now, LifecyclePolicy()) == 1
    assert audit.verify(store.engine).first_break == (
        f"audit record 3 (mission {lapsed.mission_id}): record_digest differs from the one "
        "audit record 2 committed, at event 'expire' (a Mission's record changes only at "
        "approval)"
    )


def stored_state_raw(store: Store, mission_id: str) -> str:
    with store.engine.connect() as connection:
        return str(
            connection.execute(
                text("SELECT state FROM missions WHERE mission_id = :m"), {"m": mission_id}
            ).scalar_one()
        )


def test_a_database_refusal_is_logged_without_sql_or_parameters(
    store: Store, active_mission: CreateMission, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _RecordingLog()
    monkeypatch.setattr(expiry_sweep, "log", recorder)
    now = datetime.now(UTC)
    lapsed = active_mission(created_at=now - timedelta(hours=2), lifetime=timedelta(hours=1))
    # A history row already at the version the expiry would produce: its INSERT conflicts.
    with store.session() as session, session.begin():
        session.add(
            MissionHistory(
                mission_id=lapsed.mission_id,
                version=lapsed.version + 1,
                from_state="active",
                to_state="suspended",
                event="suspend",
                actor={"role": "admin", "secret": "do-not-log"},
                reason="do-not-log",
                committed_at=now,
            )
        )
    assert sweep_once(store, now, LifecyclePolicy()) == 0
    [(event, fields)] = recorder.events
    assert (event, fields["mission_id"], fields["error"]) == (
        "mission_expiry_failed",
        lapsed.mission_id,
        "IntegrityError",
    )
    detail = fields["detail"]
    assert "\n" not in detail and "SQL" not in detail and "parameters" not in detail
    assert "do-not-log" not in detail and lapsed.mission_id not in detail
    if store.engine.dialect.name == "sqlite":
        assert detail == (
            "UNIQUE constraint failed: mission_history.mission_id, mission_history.version"
        )
    else:
        assert detail.startswith("duplicate key value violates unique constraint")


@pytest.mark.anyio
async def test_a_failed_sweep_is_logged_without_sql_or_parameters(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _RecordingLog()
    monkeypatch.setattr(expiry_sweep, "log", recorder)

    def database_away(*args: Any) -> int:
        raise OperationalError(
            "SELECT mission_id FROM missions WHERE subject_sub = %(s)s",
            {"s": "alice"},
            Exception("server closed the connection unexpectedly\n\tThis probably means..."),
        )

    monkeypatch.setattr(expiry_sweep, "sweep_once", database_away)
    task = asyncio.create_task(
        expiry_sweep.sweep_periodically(engine, interval_seconds=60, policy=LifecyclePolicy())
    )
    while not recorder.events:
        await asyncio.sleep(0.01)
    task.cancel()
    assert recorder.events == [
        (
            "expiry_sweep_failed",
            {
                "error": "OperationalError",
                "detail": "server closed the connection unexpectedly",
            },
        )
    ]


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)  # SQLite has no row locks
def test_the_sweep_skips_a_mission_another_writer_holds_instead_of_waiting(
    engine: Engine, store: Store, active_mission: CreateMission
) -> None:
    import threading

    now = datetime.now(UTC)
    held = active_mission(created_at=now - timedelta(hours=2), lifetime=timedelta(hours=1))
    free = active_mission(created_at=now - timedelta(hours=2), lifetime=timedelta(hours=1))
    moved: list[int] = []
    with engine.connect() as other, other.begin():
        # Another replica (or a derivation in flight) holds this Mission's row.
        other.execute(text("SELECT 1 FROM missions WHERE mission_id = :m FOR UPDATE"),
                      {"m": held.mission_id})
        sweeper = threading.Thread(
            target=lambda: moved.append(sweep_once(store, now, LifecyclePolicy())), daemon=True)
        sweeper.start()
        sweeper.join(timeout=15)
        assert not sweeper.is_alive(), "the sweep waited for a row another writer holds"
    assert moved == [1]
    assert stored_state(store, free.mission_id) is State.EXPIRED
    assert stored_state(store, held.mission_id) is State.ACTIVE  # left for its holder or later
    assert sweep_once(store, now, LifecyclePolicy()) == 1  # released: the next tick takes it
    assert stored_state(store, held.mission_id) is State.EXPIRED


def test_the_sweep_forgets_single_use_values_past_their_window(store: Store) -> None:
    from missionbound.store import single_use

    now = datetime.now(UTC)
    with store.begin() as session:
        assert single_use.consume_once(session, "dpop", "spent", now - timedelta(seconds=1))
        assert single_use.consume_once(session, "dpop", "live", now + timedelta(minutes=5))
    assert expiry_sweep.purge_once(store, now) == 1
    with store.read() as session:
        left = session.scalars(text("SELECT value FROM single_use_ids")).all()
    assert left == ["live"]
    # The live value is still single use; the forgotten one is past its window anyway.
    with store.begin() as session:
        assert not single_use.consume_once(session, "dpop", "live", now + timedelta(minutes=5))
