"""The streams-per-client limit holds under concurrency (decision E2): creates by one client
are serialized (a per-client advisory lock on PostgreSQL, the write lock on SQLite), so 20
at once leave exactly the limit and refuse the rest, with nothing half-written."""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from missionbound.issuer import signals
from missionbound.issuer.signals import MAX_STREAMS_PER_CLIENT, TooManyStreams
from missionbound.store.models import SignalStream
from tests.issuer.flow import ISSUER, Flow
from tests.signals.support import POLL_METHOD, RS

ATTEMPTS = 20


def test_concurrent_creates_never_pass_the_limit(flow: Flow) -> None:
    client_id = RS[0]
    barrier = threading.Barrier(ATTEMPTS)
    outcomes: list[str] = []
    lock = threading.Lock()

    def create() -> None:
        barrier.wait(timeout=30)
        try:
            with flow.store.begin() as session:
                signals.create_stream(
                    session, client_id=client_id, body={"delivery": {"method": POLL_METHOD}},
                    issuer=ISSUER, now=flow.clock(), may_push=True,
                )
            outcome = "created"
        except TooManyStreams:
            outcome = "refused"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=create) for _ in range(ATTEMPTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == sorted(
        ["created"] * MAX_STREAMS_PER_CLIENT + ["refused"] * (ATTEMPTS - MAX_STREAMS_PER_CLIENT))
    with flow.store.read() as session, session.begin():
        stored = session.scalar(select(func.count()).select_from(SignalStream).where(
            SignalStream.client_id == client_id))
    assert stored == MAX_STREAMS_PER_CLIENT
