"""A slow push receiver holds up nobody else (finding: one stream's receiver must not delay
the others on a replica): every push has an overall deadline (a receiver that trickles its
answer byte by byte is cut off, not just one that goes silent), a claim is released after a
time budget, and the dispatcher's round neither waits for a stream's pushes before the next
fan-out nor before claiming other streams. Assertions are on order and progress, never on
elapsed time (DESIGN.md); waits are bounded waits for an event."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import select

from missionbound.issuer import signal_delivery
from missionbound.issuer.signal_delivery import SignalTransmitter
from missionbound.mission.lifecycle import Event
from missionbound.store.models import SignalDelivery, SignalStream
from tests.issuer.flow import Flow
from tests.signals.conftest import Streams
from tests.signals.support import RS, running_receiver
from tests.signals.test_fan_out import change

BOUND = 20.0  # seconds a bounded wait gives an event before the test fails


@contextmanager
def trickling_receiver() -> Iterator[tuple[str, threading.Event, threading.Event]]:
    """A receiver that starts a 202 answer and then trickles header bytes, one every 0.2 s
    (well inside any per-read timeout), until ``stop`` is set. Yields (url, stop, got)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.1)
    stop, got = threading.Event(), threading.Event()

    def serve() -> None:
        connections = []
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            connections.append(connection)
            got.set()
            connection.recv(65536)
            try:
                connection.sendall(b"HTTP/1.1 202 Accepted\r\nX-Slow: ")
                while not stop.is_set():
                    connection.sendall(b"a")
                    stop.wait(0.2)
            except OSError:  # the transmitter hung up: accept the next push
                continue
        for connection in connections:
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/events", stop, got
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def stream_row(flow: Flow, stream_id: str) -> SignalStream:
    with flow.store.read() as session, session.begin():
        row = session.get(SignalStream, stream_id)
        assert row is not None
        return row


def undelivered(flow: Flow, stream_id: str) -> int:
    with flow.store.read() as session, session.begin():
        return len(session.scalars(select(SignalDelivery.id).where(
            SignalDelivery.stream_id == stream_id,
            SignalDelivery.delivered_at.is_(None))).all())


def test_a_trickling_receiver_is_cut_off_at_the_push_deadline(
    flow: Flow, streams: Streams
) -> None:
    transmitter = SignalTransmitter(flow.issuer, push_timeout_seconds=1,
                                    max_backoff_seconds=1)
    try:
        with trickling_receiver() as (url, stop, got):
            stream_id = streams.push(RS, url)["stream_id"]
            flow.grant()
            done = threading.Event()
            worker = threading.Thread(target=lambda: (transmitter.run_once(), done.set()),
                                      daemon=True)
            worker.start()
            assert got.wait(BOUND)
            # The round ends (the push failed at its deadline) while the receiver is still
            # trickling its answer: a per-read timeout alone would wait for as long as it
            # trickles.
            assert done.wait(BOUND), "the push was not cut off"
            assert not stop.is_set()
            row = stream_row(flow, stream_id)
            assert row.last_error is not None and row.last_error.startswith("no answer")
            # At least the one cut-off push: on a slow machine the round may still be claiming
            # when the stream's first backoff (1 s) ends, and push (and be cut off) again.
            assert row.attempts >= 1 and undelivered(flow, stream_id) == 2
    finally:
        transmitter.close()


def test_a_slow_stream_holds_up_neither_fan_out_nor_another_stream(
    flow: Flow, streams: Streams
) -> None:
    # A push timeout far longer than the test's waits: only not waiting for the slow
    # stream (not its deadline) lets the other one through.
    transmitter = SignalTransmitter(flow.issuer, push_timeout_seconds=120,
                                    max_backoff_seconds=1)
    with running_receiver() as slow, running_receiver() as fast:
        slow.hold = threading.Event()  # the slow receiver answers only when released
        try:
            slow_id = streams.push(RS, slow.url)["stream_id"]
            streams.push(RS, fast.url)
            grant = flow.grant()

            def rounds_until(done: threading.Event | None, count: int) -> bool:
                deadline = time.monotonic() + BOUND
                while time.monotonic() < deadline:
                    transmitter.run_once(wait=False)
                    if fast.wait_for(count, timeout=0.05) and (done is None or done.is_set()):
                        return True
                return False

            assert rounds_until(None, 2) and slow.wait_started(1, BOUND)
            # The slow receiver holds its first push. A new event is fanned out and pushed
            # to the other stream meanwhile.
            change(flow, grant.mission_id, Event.SUSPEND)
            assert rounds_until(None, 3), fast.received
            assert slow.received == [] and slow.started == 1
            assert undelivered(flow, slow_id) == 3
        finally:
            slow.hold.set()
            transmitter.close()
    assert slow.received and slow.received[0].status == 202  # the held push went on


def test_a_claim_is_released_when_its_time_budget_is_spent(
    flow: Flow, streams: Streams, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signal_delivery, "CLAIM_BUDGET_FACTOR", 0)
    monkeypatch.setattr(signal_delivery, "PUSH_ROUNDS", 1)
    with running_receiver() as receiver:
        stream_id = streams.push(RS, receiver.url)["stream_id"]
        flow.grant()
        assert streams.transmitter.run_once().accepted == 1  # one send, then released
        row = stream_row(flow, stream_id)
        assert row.next_attempt_at is None and row.attempts == 0
        assert streams.transmitter.run_once().accepted == 1
        assert undelivered(flow, stream_id) == 0
