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

from missionbound.config import load_settings
from missionbound.mission.lifecycle import LifecyclePolicy, State
from missionbound.mission.record import MissionRecord
from missionbound.store import missions
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
    member the expiry's traces need (its outbox event names the Mission's origin)."""
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
    with pytest.raises(KeyError), store.session() as session, session.begin():
        missions.expire_if_due(session, poisoned.mission_id, now=now)  # the old sweep's trap
    for expected in (4, 0):  # and again at the next tick: still isolated, still logged
        recorder.events.clear()
        assert sweep_once(store, now, LifecyclePolicy()) == expected
        assert recorder.events == [
            (
                "mission_expiry_failed",
                {"mission_id": poisoned.mission_id, "error": "KeyError", "detail": "'origin'"},
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
