"""The dispatcher a serving process runs: started by the app's lifespan when
``signals_delivery_seconds`` > 0 (and not otherwise), woken by :meth:`wake` between rounds,
a failed round logged without SQL and the next one run, stopped cleanly with the app."""

from __future__ import annotations

from typing import Any

import pytest
import structlog
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from missionbound.issuer.signal_dispatcher import SignalDispatcher
from missionbound.web.app import create_app
from tests.issuer.flow import ISSUER, Flow
from tests.signals.conftest import Streams
from tests.signals.support import RS, running_receiver


def test_the_lifespan_runs_the_dispatcher_and_wake_delivers_at_once(
    flow: Flow, streams: Streams
) -> None:
    dispatcher: SignalDispatcher = flow.app.state.signal_dispatcher
    interval = dispatcher.interval
    # Far longer than the bounded wait below: only a wake can explain the delivery.
    dispatcher.interval = 600.0
    try:
        with running_receiver() as receiver, TestClient(flow.app, base_url=ISSUER):
            assert dispatcher.running
            streams.push(RS, receiver.url)
            rounds = dispatcher.rounds
            assert dispatcher.wait_for_rounds(max(rounds, 1), timeout=10)  # the first round
            flow.grant()
            dispatcher.wake()
            assert receiver.wait_for(2, timeout=30), receiver.received
        assert not dispatcher.running
    finally:
        dispatcher.interval = interval


def test_a_failed_round_is_logged_without_sql_and_the_next_one_runs(
    flow: Flow, streams: Streams, monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatcher: SignalDispatcher = flow.app.state.signal_dispatcher
    transmitter = dispatcher.transmitter
    real = transmitter.run_once
    calls: list[int] = []

    def flaky(**kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("SELECT secret FROM ssf_deliveries WHERE jti = %(jti)s",
                                   {"jti": "leaked"}, Exception("server closed the connection"))
        return real(**kwargs)

    monkeypatch.setattr(transmitter, "run_once", flaky)
    monkeypatch.setattr(dispatcher, "interval", 0.05)
    with (structlog.testing.capture_logs() as logs, running_receiver() as receiver,
          TestClient(flow.app, base_url=ISSUER)):
        streams.push(RS, receiver.url)
        flow.grant()
        dispatcher.wake()
        assert receiver.wait_for(2, timeout=10)
    failures = [entry for entry in logs if entry["event"] == "signal_delivery_failed"]
    assert failures and failures[0]["error"] == "OperationalError"
    assert failures[0]["detail"] == "server closed the connection"
    assert "SELECT" not in str(failures) and "leaked" not in str(failures)
    assert len(calls) >= 2


def test_no_dispatcher_runs_when_delivery_is_off(flow: Flow) -> None:
    settings = flow.issuer.settings.model_copy(update={"signals_delivery_seconds": 0})
    app = create_app(settings, tenant=flow.issuer.tenant, engine=flow.engine)
    with TestClient(app, base_url=ISSUER):
        assert not app.state.signal_dispatcher.running
        app.state.signal_dispatcher.wake()  # harmless
