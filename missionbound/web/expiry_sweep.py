"""The periodic expiry sweep of a serving process (PROFILE.md section 7, "clock").

Expiry is clock-first everywhere (an expired Mission never permits anything, whatever is
stored), so the sweep is about the record and its traces: it persists ``expired`` with its
history row, audit record and outbox event for Missions nobody touched since they lapsed.
Several replicas may sweep at once: rows another transaction holds are skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import structlog
from sqlalchemy import Engine

from missionbound.mission.lifecycle import LifecyclePolicy
from missionbound.store.lifecycle import expire_due
from missionbound.store.transactions import Store

log = structlog.get_logger("missionbound.expiry_sweep")
BATCH = 500  # Missions per transaction, so one sweep never holds the write lock for long


def sweep_once(store: Store, now: datetime, policy: LifecyclePolicy) -> int:
    """Expire every due Mission, a batch per transaction; return how many moved."""
    total = 0
    while True:
        with store.begin() as session:
            moved = expire_due(session, now, policy=policy, limit=BATCH)
        total += moved
        if moved < BATCH:
            return total


async def sweep_periodically(
    engine: Engine,
    *,
    interval_seconds: float,
    policy: LifecyclePolicy,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Sweep now, then every ``interval_seconds``, until cancelled. A failed sweep is logged
    and retried at the next tick: it must never take the server down."""
    store = Store(engine)
    while True:
        try:
            moved = await asyncio.to_thread(sweep_once, store, clock(), policy)
            if moved:
                log.info("missions_expired", count=moved)
        except Exception as exc:  # the database may be briefly away; try again next tick
            log.warning("expiry_sweep_failed", error=type(exc).__name__, detail=str(exc))
        await asyncio.sleep(interval_seconds)
