"""Test support for the Signals receiver: an ASGI app under a real uvicorn server in a thread
on 127.0.0.1, and a receiver wired to a :class:`~tests.protocol.secevents.Transmitter`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import uvicorn

from missionbound.enforce.signals import MissionStateBook, SignalReceiver
from missionbound.protocol.jwks import KeySource, StaticKeys
from tests.e2e_support import free_port
from tests.protocol.secevents import AUDIENCE, ISSUER, NOW, Transmitter

START_TIMEOUT = 10.0


@contextmanager
def serving(app: Any, *, lifespan: Literal["on", "off"] = "on") -> Iterator[str]:
    """``app`` under uvicorn on a free 127.0.0.1 port, in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan=lifespan))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped while starting"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def receiver_for(
    transmitter: Transmitter,
    *,
    keys: KeySource | None = None,
    book: MissionStateBook | None = None,
    **options: Any,
) -> SignalReceiver:
    """A receiver of :data:`ISSUER`'s SETs to :data:`AUDIENCE`, its clock at :data:`NOW`."""
    return SignalReceiver(issuer=ISSUER, audience=AUDIENCE,
                          keys=keys or StaticKeys(transmitter.jwks), book=book,
                          clock=lambda: NOW, **options)
