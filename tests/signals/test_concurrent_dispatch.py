"""Several dispatchers at once, each its own app with its own engine (as replicas are), on one
database while Missions keep changing: every SET reaches a receiver that always answers 202
exactly once, and each Mission's SETs arrive in version order. On PostgreSQL the fan-out
lock, ``SKIP LOCKED`` and the stream leases do it; on SQLite the write lock."""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from missionbound.issuer import signal_delivery
from missionbound.issuer.signal_delivery import SignalTransmitter
from missionbound.mission.lifecycle import Event
from missionbound.store import missions
from missionbound.store.engine import create_engine_for
from missionbound.store.models import OutboxEvent, SignalDelivery
from missionbound.web.app import create_app
from tests.issuer.flow import POOL, Flow
from tests.signals.conftest import Streams
from tests.signals.support import AGENT, event_of, running_receiver
from tests.signals.test_fan_out import change
from tests.store.factories import make_approval, make_record

DISPATCHERS = 4
MISSIONS = 8
STREAMS = 3
DEADLINE_SECONDS = 60.0


def owed(flow: Flow, stream_ids: list[str]) -> int:
    with flow.store.read() as session, session.begin():
        pending = session.scalar(select(func.count()).select_from(SignalDelivery).where(
            SignalDelivery.stream_id.in_(stream_ids), SignalDelivery.delivered_at.is_(None)))
        unfanned = session.scalar(select(func.count()).select_from(OutboxEvent).where(
            OutboxEvent.delivered_at.is_(None)))
    return int(pending or 0) + int(unfanned or 0)


def test_several_dispatchers_deliver_each_set_exactly_once_in_order(
    flow: Flow, streams: Streams, flow_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One stream per claim, so that the dispatchers share the streams between them.
    monkeypatch.setattr(signal_delivery, "PUSH_PARALLEL", 1)
    with running_receiver() as receiver:
        stream_ids = [streams.push(AGENT, f"{receiver.url}/{n}")["stream_id"]
                      for n in range(STREAMS)]
        apps = [
            create_app(flow.issuer.settings, tenant=flow.issuer.tenant,
                       engine=create_engine_for(flow_database_url, **POOL))
            for _ in range(DISPATCHERS)
        ]
        transmitters: list[SignalTransmitter] = [
            app.state.signal_dispatcher.transmitter for app in apps]
        for app in apps:
            app.state.issuer.clock = flow.clock
        stop = threading.Event()
        errors: list[BaseException] = []

        accepted: Counter[int] = Counter()

        def dispatch(index: int, transmitter: SignalTransmitter) -> None:
            try:
                while not stop.is_set():
                    accepted[index] += transmitter.run_once().accepted
                    time.sleep(0.005)
            except BaseException as exc:  # reported by the test
                errors.append(exc)

        threads = [threading.Thread(target=dispatch, args=(i, t), daemon=True)
                   for i, t in enumerate(transmitters)]
        for thread in threads:
            thread.start()
        mission_ids = []
        try:
            # Missions change while the dispatchers run.
            for _ in range(MISSIONS):
                record = make_record(created_at=flow.now() - timedelta(minutes=1))
                with flow.store.begin() as session:
                    missions.create_pending(session, record, {"role": "client"},
                                            record.created_at)
                with flow.store.begin() as session:
                    missions.approve(session, record.mission_id, now=flow.now(),
                                     **make_approval(record).kwargs())
                mission_ids.append(record.mission_id)
            for event in (Event.SUSPEND, Event.RESUME, Event.REVOKE):
                for mission_id in mission_ids:
                    change(flow, mission_id, event)
            deadline = time.monotonic() + DEADLINE_SECONDS
            while owed(flow, stream_ids) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
            for transmitter in transmitters:
                transmitter.close()
            for app in apps:
                app.state.engine.dispose()
        assert not errors, errors
        assert owed(flow, stream_ids) == 0

        assert sum(accepted.values()) == len(receiver.received) == STREAMS * MISSIONS * 6, (
            accepted)  # five changes and one session-revoked per Mission and stream
        with flow.store.read() as session, session.begin():
            queued = set(session.scalars(select(SignalDelivery.jti).where(
                SignalDelivery.stream_id.in_(stream_ids))))
        claims: list[dict[str, Any]] = streams.claims(receiver.tokens())
        counts = Counter(c["jti"] for c in claims)
        assert [jti for jti, n in counts.items() if n > 1] == []  # exactly once
        assert set(counts) == queued
        # In version order per stream and Mission.
        order: dict[tuple[str, str], list[int]] = defaultdict(list)
        for pushed, item in zip(receiver.received, claims, strict=True):
            _, body = event_of(item)
            if "version" in body:
                order[(pushed.path, body["mission"]["id"])].append(body["version"])
        assert len(order) == STREAMS * MISSIONS
        for key, seen in order.items():
            assert seen == [1, 2, 3, 4, 5], (key, seen)
