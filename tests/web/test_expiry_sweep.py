"""The serving process persists lapsed Missions' expiry in the background."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from missionbound.config import load_settings
from missionbound.mission.lifecycle import LifecyclePolicy, State
from missionbound.mission.record import MissionRecord
from missionbound.store import missions
from missionbound.store.transactions import Store
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
    database_url: str, engine: Engine, store: Store, active_mission: CreateMission,
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC)
    lapsed = active_mission(created_at=now - timedelta(hours=2), lifetime=timedelta(hours=1))
    settings = load_settings(data_dir=tmp_path, issuer="https://as.test.example",
                             database_url=database_url, expiry_sweep_seconds=0.2)
    app = create_app(settings, engine=engine)
    async with app.router.lifespan_context(app):  # what uvicorn runs at start and stop
        deadline = time.monotonic() + 10
        while stored_state(store, lapsed.mission_id) is not State.EXPIRED:
            assert time.monotonic() < deadline, "the sweep did not run within 10 s"
            await asyncio.sleep(0.1)
