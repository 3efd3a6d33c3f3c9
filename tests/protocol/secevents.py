"""Real Security Event Tokens and a real JWKS server for tests: keys generated and SETs signed
by joserfc, served over HTTP by the standard library's threading server on 127.0.0.1.

:class:`Transmitter` is one signing key with its ``kid``; :meth:`Transmitter.sign` makes a
SET with PROFILE.md section 10's claims (overridable, DROP removes). :func:`serving_jwks`
publishes a changeable JWK Set and counts the requests it answers.
"""

from __future__ import annotations

import json
import secrets
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from joserfc import jws
from joserfc.errors import InvalidHeaderValueError, MissingCritHeaderError, SecurityWarning
from joserfc.jwk import Key
from joserfc.jws import JWSRegistry

from missionbound.protocol.secevent import LIFECYCLE_CHANGE
from tests.protocol.proofs import DROP, IAT, NOW, b64url, generate_key, public_jwk

__all__ = ["AUDIENCE", "DROP", "IAT", "ISSUER", "MISSION_ID", "NOW", "JwksServer", "ManualClock",
           "Transmitter", "lifecycle_event", "serving_jwks"]

ISSUER = "https://as.example"
AUDIENCE = "demo-rs"
MISSION_ID = "msn_" + "A" * 32


def lifecycle_event(
    state: str = "active",
    version: int = 2,
    *,
    mission_id: str = MISSION_ID,
    origin: str = ISSUER,
    prior_state: str | None = "pending_approval",
    reason: str | None = None,
) -> dict[str, Any]:
    """The ``events`` member of a lifecycle-change SET (PROFILE.md section 10)."""
    return {LIFECYCLE_CHANGE: {
        "mission": {"id": mission_id, "origin": origin},
        "state": state,
        "prior_state": prior_state,
        "version": version,
        "committed_at": "2026-03-02T09:00:00Z",
        "reason": reason,
    }}


@dataclass
class Transmitter:
    """One signing key of an issuer, named ``kid`` in its JWK Set."""

    alg: str = "ES256"
    kid: str = field(default_factory=lambda: "k-" + secrets.token_hex(4))
    key: Key = field(init=False)

    def __post_init__(self) -> None:
        self.key = generate_key(self.alg)

    @property
    def jwk(self) -> dict[str, Any]:
        return {**public_jwk(self.key), "kid": self.kid, "use": "sig"}

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk]}

    def sign(
        self,
        events: dict[str, Any] | None = None,
        *,
        header: dict[str, Any] | None = None,
        alg: str | None = None,
        **claims: Any,
    ) -> str:
        """A SET signed with this key: ``iss`` :data:`ISSUER`, ``aud`` :data:`AUDIENCE`,
        ``iat`` :data:`IAT`, a fresh ``jti``, ``events`` (default: a lifecycle change to
        active, version 2) and ``sub_id`` of its Mission. ``header`` and ``claims``
        override; DROP removes."""
        alg = alg or self.alg
        events = lifecycle_event() if events is None else events
        protected = _merge({"alg": alg, "typ": "secevent+jwt", "kid": self.kid}, header or {})
        body = _merge({
            "iss": ISSUER, "aud": AUDIENCE, "iat": IAT, "jti": secrets.token_urlsafe(12),
            "sub_id": _sub_id(events), "events": events,
        }, claims)
        registry = JWSRegistry(algorithms=[alg], strict_check_header=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)  # "EdDSA" is deprecated
            try:
                return jws.serialize_compact(protected, json.dumps(body), self.key,
                                             registry=registry)
            except (InvalidHeaderValueError, MissingCritHeaderError):
                # A header joserfc will not produce (a "typ" of the wrong type, "crit"):
                # joserfc's algorithm still makes the signature over it.
                signing_input = f"{b64url(json.dumps(protected).encode())}." \
                                f"{b64url(json.dumps(body).encode())}"
                signature = registry.get_alg(alg).sign(signing_input.encode(), self.key)
                return f"{signing_input}.{b64url(signature)}"


def _sub_id(events: Any) -> Any:
    body = events.get(LIFECYCLE_CHANGE) if isinstance(events, dict) else None
    if isinstance(body, dict) and isinstance(body.get("mission"), dict):
        return {"format": "opaque", "id": body["mission"].get("id")}
    return DROP


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = {**base, **overrides}
    return {name: value for name, value in merged.items() if value is not DROP}


@dataclass
class JwksServer:
    """What :func:`serving_jwks` serves: set ``document`` (a JSON value), or ``raw`` bytes
    with ``status`` and ``content_type``; ``requests`` counts the GETs answered."""

    url: str
    document: Any = None
    raw: bytes | None = None
    status: int = 200
    content_type: str | None = "application/json"
    send_length: bool = True
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, *transmitters: Transmitter) -> None:
        self.document = {"keys": [t.jwk for t in transmitters]}


@contextmanager
def serving_jwks(*transmitters: Transmitter) -> Iterator[JwksServer]:
    """A JWKS endpoint on a free 127.0.0.1 port publishing ``transmitters``' keys."""
    state: JwksServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with state.lock:
                state.requests += 1
                body = state.raw if state.raw is not None else json.dumps(
                    state.document).encode()
                status, content_type, send_length = (state.status, state.content_type,
                                                     state.send_length)
            self.send_response(status)
            if status in (301, 302, 307):
                self.send_header("Location", "/elsewhere")
            if content_type is not None:
                self.send_header("Content-Type", content_type)
            if send_length:
                self.send_header("Content-Length", str(len(body)))
            else:
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state = JwksServer(url=f"http://127.0.0.1:{server.server_address[1]}/jwks")
    state.publish(*transmitters)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class ManualClock:
    """A monotonic clock that moves only when told (for JwksCache's ``clock``)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

