"""Fixtures of the transmitter tests: the issuer ``flow`` of tests/issuer (one app per module
and database kind, movable clock), and ``streams``, which creates streams over HTTP as
their clients would and deletes them when the test ends (the module's app is shared, and a
client may hold only ten streams)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from missionbound.issuer.signal_delivery import SignalTransmitter
from tests.issuer.conftest import flow, flow_database_url  # noqa: F401 (fixtures)
from tests.issuer.flow import Flow
from tests.signals.support import POLL_METHOD, PUSH_METHOD, decode_set


class Streams:
    def __init__(self, app_flow: Flow) -> None:
        self.flow = app_flow
        self.created: list[tuple[str, tuple[str, str] | None]] = []

    @property
    def transmitter(self) -> SignalTransmitter:
        transmitter: SignalTransmitter = self.flow.app.state.signal_dispatcher.transmitter
        return transmitter

    def drain(self) -> None:
        """Fan out what earlier tests left in the outbox, so a new stream sees only what
        happens from now on."""
        while self.transmitter.fan_out():
            pass

    def create(self, auth: tuple[str, str], delivery: dict[str, Any], **members: Any
               ) -> dict[str, Any]:
        self.drain()
        response = self.flow.client.post("/ssf/streams", json={"delivery": delivery, **members},
                                         auth=auth)
        assert response.status_code == 201, response.text
        config: dict[str, Any] = response.json()
        self.created.append((config["stream_id"], auth))
        return config

    def push(self, auth: tuple[str, str], url: str, **members: Any) -> dict[str, Any]:
        return self.create(auth, {"method": PUSH_METHOD, "endpoint_url": url}, **members)

    def poll(self, auth: tuple[str, str], **members: Any) -> dict[str, Any]:
        return self.create(auth, {"method": POLL_METHOD}, **members)

    def polled(self, auth: tuple[str, str], stream_id: str, **body: Any) -> dict[str, Any]:
        body.setdefault("returnImmediately", True)
        response = self.flow.client.post("/ssf/poll", params={"stream_id": stream_id},
                                         json=body, auth=auth)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def claims(self, tokens: list[str]) -> list[dict[str, Any]]:
        jwks = self.flow.client.get("/jwks").json()
        out = []
        for token in tokens:
            header, claims = decode_set(jwks, token)
            assert header["typ"] == "secevent+jwt" and header["kid"], header
            out.append(claims)
        return out

    def cleanup(self) -> None:
        for stream_id, auth in self.created:
            self.flow.client.delete("/ssf/streams", params={"stream_id": stream_id}, auth=auth)


@pytest.fixture
def streams(flow: Flow) -> Iterator[Streams]:  # noqa: F811 (the imported fixture)
    helper = Streams(flow)
    try:
        yield helper
    finally:
        helper.cleanup()

