"""Test support for the Shared Signals transmitter: a real HTTP receiver on 127.0.0.1 (the
standard library's threading HTTP server in a thread), SET verification against the AS's
``/jwks``, and stream management as the receivers' clients do it.

:class:`Receiver` answers each push from a script (default 202) and records what came,
in arrival order; ``hold`` keeps it from answering until released (a push "in flight")."""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from joserfc import jwt
from joserfc.jwk import KeySet

from missionbound.issuer.security_events import (
    LIFECYCLE_CHANGE,
    SESSION_REVOKED,
    VERIFICATION,
)
from missionbound.store.signals import POLL_METHOD, PUSH_METHOD

RS = ("demo-rs", "demo-rs-secret")
AGENT = ("demo-agent", "demo-agent-secret")
SUBAGENT = ("demo-subagent", "demo-subagent-secret")
NARROW = ("narrow-agent", "demo-agent-secret")

__all__ = [
    "AGENT", "LIFECYCLE_CHANGE", "NARROW", "POLL_METHOD", "PUSH_METHOD", "RS", "SESSION_REVOKED",
    "SUBAGENT", "VERIFICATION", "Pushed", "Receiver", "decode_set", "running_receiver",
]


@dataclass(frozen=True)
class Pushed:
    """One push the receiver got."""

    token: str
    path: str
    content_type: str | None
    authorization: str | None
    status: int  # what the receiver answered


@dataclass
class Receiver:
    url: str
    script: deque[tuple[int, Any]] = field(default_factory=deque)
    received: list[Pushed] = field(default_factory=list)
    hold: threading.Event | None = None  # set: answer; clear: wait (a push in flight)
    arrived: threading.Condition = field(default_factory=threading.Condition)
    started: int = 0  # pushes whose request was read (answered or still held)

    def answer_next(self, *answers: tuple[int, Any]) -> None:
        """Queue answers (status, JSON body or None) for the next pushes; then 202."""
        self.script.extend(answers)

    def tokens(self, status: int | None = 202) -> list[str]:
        return [p.token for p in self.received if status is None or p.status == status]

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: len(self.received) >= count, timeout)

    def wait_started(self, count: int, timeout: float = 10.0) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: self.started >= count, timeout)


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    """A push receiver (RFC 8935) on a free 127.0.0.1 port, stopped on exit."""
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            token = self.rfile.read(length).decode("ascii", "replace")
            with receiver.arrived:
                receiver.started += 1
                receiver.arrived.notify_all()
            hold = receiver.hold
            if hold is not None:
                hold.wait(30)
            status, body = receiver.script.popleft() if receiver.script else (202, None)
            with receiver.arrived:
                receiver.received.append(Pushed(token, self.path, self.headers.get("Content-Type"),
                                                self.headers.get("Authorization"), status))
                receiver.arrived.notify_all()
            payload = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            if payload:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/events")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        if receiver.hold is not None:
            receiver.hold.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def decode_set(jwks: dict[str, Any], token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a SET whose signature checks against ``jwks`` (the AS's)."""
    decoded = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES256", "EdDSA"])
    return dict(decoded.header), dict(decoded.claims)


def event_of(claims: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The one event of a SET: (type, body)."""
    ((event_type, body),) = claims["events"].items()
    return event_type, body
