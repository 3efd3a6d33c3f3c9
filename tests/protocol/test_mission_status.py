"""The Mission Status client (protocol/mission_status.py) against a real HTTP server on
127.0.0.1 that answers like an AS's status endpoint, with real ES256 signatures (joserfc):
the request it sends, every check of the answer, and every way of failing closed.

:func:`serving_status` is also used by tests/enforce/rs/test_state.py for answers a real AS
never gives (HTTP 500, a wrong media type)."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from joserfc import jws
from joserfc.errors import MissingCritHeaderError, UnsupportedHeaderError
from joserfc.jws import JWSRegistry

from missionbound.protocol.jwks import JwksCache, StaticKeys
from missionbound.protocol.mission_status import (
    MAX_STATUS_BYTES,
    STATUS_MEDIA_TYPE,
    MissionStatusUnavailable,
    MissionStatusUnknown,
    SignedMissionStatus,
    request_mission_status,
    state_to_act_on,
    verify_mission_status,
)
from tests.e2e_support import free_port
from tests.protocol.proofs import DROP, b64url, forge_raw
from tests.protocol.secevents import Transmitter

ISSUER = "https://as.example"
AUDIENCE = "https://rs.example/erp"
CLIENT = ("rs-client", "rs-secret")
MISSION = "msn_" + "A" * 32
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
EXPIRY = "2026-03-09T09:00:00Z"
AS_KEY = Transmitter(kid="as-1")


def sign(key: Transmitter, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """A JWS of ``claims`` signed with ``key`` (header: ``typ``, ``alg``, ``kid``; ``header``
    overrides, DROP removes)."""
    protected = {"typ": "mission-status-response+jwt", "alg": "ES256", "kid": key.kid,
                 **(header or {})}
    protected = {name: value for name, value in protected.items() if value is not DROP}
    registry = JWSRegistry(algorithms=["ES256"], strict_check_header=False)
    try:
        return jws.serialize_compact(protected, json.dumps(claims), key.key, registry=registry)
    except (MissingCritHeaderError, UnsupportedHeaderError):
        # A header joserfc will not produce ("crit"): its algorithm still signs it.
        signing_input = f"{b64url(json.dumps(protected).encode())}." \
                        f"{b64url(json.dumps(claims).encode())}"
        signature = registry.get_alg("ES256").sign(signing_input.encode(), key.key)
        return f"{signing_input}.{b64url(signature)}"


def status_claims(form: dict[str, str], **overrides: Any) -> dict[str, Any]:
    """What an AS answers to ``form`` at :data:`NOW`; ``overrides`` change claims (DROP
    removes one)."""
    iat = int(NOW.timestamp())
    claims: dict[str, Any] = {
        "iss": ISSUER, "aud": form.get("audience"), "sub": CLIENT[0],
        "nonce": form.get("nonce"), "iat": iat, "exp": iat + 60,
        "mission": {"id": form.get("mission"), "origin": ISSUER},
        "state": "active", "version": 2, "mission_expiry": EXPIRY,
        "authority_hash": "sha-256:x", **overrides,
    }
    return {name: value for name, value in claims.items() if value is not DROP}


Answer = Callable[[dict[str, str]], tuple[int, dict[str, str], bytes]]


@dataclass
class StatusServer:
    """What :func:`serving_status` answers: ``answer(form)`` gives status, headers, body.
    ``requests`` records each POST (form, headers)."""

    url: str
    answer: Answer
    delay: float = 0.0
    requests: list[tuple[dict[str, str], dict[str, str]]] = field(default_factory=list)

    def signed(self, key: Transmitter = AS_KEY, header: dict[str, Any] | None = None,
               **overrides: Any) -> None:
        """Answer 200 with a status signed by ``key``."""
        def answer(form: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
            token = sign(key, status_claims(form, **overrides), header)
            return 200, {"Content-Type": STATUS_MEDIA_TYPE}, token.encode()
        self.answer = answer

    def plain(self, status: int, body: bytes = b"", content_type: str = STATUS_MEDIA_TYPE,
              **headers: str) -> None:
        self.answer = lambda form: (status, {"Content-Type": content_type, **headers}, body)


@contextmanager
def serving_status() -> Iterator[StatusServer]:
    """A status endpoint on a free 127.0.0.1 port, answering a good signed status."""
    state: StatusServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            form = {name: values[0] for name, values in parse_qs(raw).items()}
            state.requests.append((form, {k.lower(): v for k, v in self.headers.items()}))
            if state.delay:
                time.sleep(state.delay)
            status, headers, body = state.answer(form)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # The client may have stopped reading (too large, timed out).
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state = StatusServer(url=f"http://127.0.0.1:{server.server_address[1]}/mission/status",
                         answer=lambda form: (500, {}, b""))
    state.signed()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[StatusServer]:
    with serving_status() as running:
        yield running


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as client:
        yield client


def ask(http: httpx.Client, server: StatusServer, *, keys: Any = None, now: datetime = NOW,
        timeout_seconds: float | None = None) -> SignedMissionStatus:
    return request_mission_status(
        http, status_endpoint=server.url, issuer=ISSUER,
        keys=keys if keys is not None else StaticKeys(AS_KEY.jwks), mission_id=MISSION,
        audience=AUDIENCE, client_id=CLIENT[0], client_secret=CLIENT[1], now=now,
        timeout_seconds=timeout_seconds)


def unavailable(http: httpx.Client, server: StatusServer, reason: str,
                **options: Any) -> MissionStatusUnavailable:
    with pytest.raises(MissionStatusUnavailable) as caught:
        ask(http, server, **options)
    assert caught.value.reason == reason, caught.value.description
    assert ISSUER in caught.value.description or reason == MissionStatusUnavailable.KEYS_UNAVAILABLE
    return caught.value


# -- the exchange --------------------------------------------------------------------------


def test_a_verified_status_says_what_the_as_signed(http: httpx.Client,
                                                   server: StatusServer) -> None:
    status = ask(http, server)
    assert (status.issuer, status.mission_id, status.state, status.version) == (
        ISSUER, MISSION, "active", 2)
    assert status.mission_expiry == datetime(2026, 3, 9, 9, 0, tzinfo=UTC)
    assert status.issued_at == NOW and status.expires_at == NOW + timedelta(seconds=60)
    assert status.claims["authority_hash"] == "sha-256:x"
    # The request: the form PROFILE.md section 10 names, HTTP Basic, asking for the JWS.
    [(form, headers)] = server.requests
    assert form["mission"] == MISSION and form["audience"] == AUDIENCE
    assert form["nonce"].startswith("n-") and len(form["nonce"]) >= 22
    basic = base64.b64encode(f"{CLIENT[0]}:{CLIENT[1]}".encode()).decode()
    assert headers["authorization"] == f"Basic {basic}"
    assert headers["accept"] == STATUS_MEDIA_TYPE


def test_every_request_carries_a_fresh_nonce(http: httpx.Client, server: StatusServer) -> None:
    for _ in range(3):
        ask(http, server)
    nonces = [form["nonce"] for form, _ in server.requests]
    assert len(set(nonces)) == 3


def test_a_404_is_a_mission_not_vouched_for(http: httpx.Client, server: StatusServer) -> None:
    server.plain(404, b'{"error": "not_found"}', content_type="application/json")
    with pytest.raises(MissionStatusUnknown) as caught:
        ask(http, server)
    assert MISSION in caught.value.description


@pytest.mark.parametrize("state", ["revoked", "suspended", "completed", "some-new-state"])
def test_the_state_is_reported_as_sent(http: httpx.Client, server: StatusServer,
                                       state: str) -> None:
    server.signed(state=state, version=7)
    status = ask(http, server)
    assert (status.state, status.version) == (state, 7)


def test_mission_expiry_is_optional(http: httpx.Client, server: StatusServer) -> None:
    server.signed(mission_expiry=DROP)
    assert ask(http, server).mission_expiry is None


# -- the claims ----------------------------------------------------------------------------


IAT = int(NOW.timestamp())


@pytest.mark.parametrize("change", [
    {"nonce": "n-not-the-one-sent"},
    {"nonce": DROP},
    {"aud": "https://rs.example/other"},
    {"aud": [AUDIENCE]},
    {"sub": "someone-else"},
    {"iss": "https://evil.example"},
    {"mission": {"id": "msn_" + "B" * 32, "origin": ISSUER}},
    {"mission": {"id": MISSION, "origin": "https://evil.example"}},
    {"mission": MISSION},
    {"iat": IAT + 31},
    {"exp": IAT - 31},
    {"iat": str(IAT)},
    {"exp": True},
    {"exp": DROP},
    {"state": DROP},
    {"state": ""},
    {"state": "x" * 33},
    {"state": 1},
    {"version": 0},
    {"version": True},
    {"version": "2"},
    {"version": 2.5},
    {"version": DROP},
    {"mission_expiry": "next friday"},
    {"mission_expiry": 1795718703},
], ids=lambda change: f"{next(iter(change))}={next(iter(change.values()))!r}"[:40])
def test_claims_that_do_not_check_fail_closed(http: httpx.Client, server: StatusServer,
                                              change: dict[str, Any]) -> None:
    server.signed(**change)
    refused = unavailable(http, server, MissionStatusUnavailable.UNTRUSTED)
    assert refused.detail and refused.detail.startswith("its "), refused.detail
    assert "cannot be relied on" in refused.description


def test_iat_and_exp_are_allowed_30_seconds_of_skew(http: httpx.Client,
                                                    server: StatusServer) -> None:
    server.signed(iat=IAT + 29, exp=IAT - 29)
    assert ask(http, server).state == "active"
    # The same answer, read a little later: exp is now past the skew.
    unavailable(http, server, MissionStatusUnavailable.UNTRUSTED,
                now=NOW + timedelta(seconds=2))


@pytest.mark.parametrize("header", [
    {"typ": "JWT"},
    {"typ": DROP},
    {"kid": "not-published"},
    {"kid": DROP},
    {"crit": ["x-ext"], "x-ext": 1},
], ids=lambda header: next(iter(header)) + "=" + str(next(iter(header.values())))[:20])
def test_a_header_that_does_not_check_fails_closed(http: httpx.Client, server: StatusServer,
                                                   header: dict[str, Any]) -> None:
    server.signed(header=header)
    unavailable(http, server, MissionStatusUnavailable.UNTRUSTED)


def test_the_media_type_may_be_spelled_in_full_in_typ(http: httpx.Client,
                                                      server: StatusServer) -> None:
    server.signed(header={"typ": "Application/Mission-Status-Response+JWT"})
    assert ask(http, server).state == "active"


def test_a_signature_by_another_key_under_the_as_kid_fails_closed(
    http: httpx.Client, server: StatusServer
) -> None:
    forger = Transmitter(kid=AS_KEY.kid)
    server.signed(key=forger)
    refused = unavailable(http, server, MissionStatusUnavailable.UNTRUSTED)
    assert "does not verify" in refused.description


def test_an_unsigned_status_fails_closed(http: httpx.Client, server: StatusServer) -> None:
    def answer(form: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        token = forge_raw(json.dumps({"typ": "mission-status-response+jwt", "alg": "none",
                                      "kid": AS_KEY.kid}),
                          json.dumps(status_claims(form)), b"")
        return 200, {"Content-Type": STATUS_MEDIA_TYPE}, token.encode()
    server.answer = answer
    unavailable(http, server, MissionStatusUnavailable.UNTRUSTED)


def test_verify_checks_the_nonce_it_is_given() -> None:
    token = sign(AS_KEY, status_claims({"audience": AUDIENCE, "nonce": "n-one",
                                        "mission": MISSION}))
    options: dict[str, Any] = {"issuer": ISSUER, "keys": StaticKeys(AS_KEY.jwks),
                               "mission_id": MISSION, "audience": AUDIENCE,
                               "client_id": CLIENT[0], "now": NOW}
    assert verify_mission_status(token, nonce="n-one", **options).version == 2
    with pytest.raises(MissionStatusUnavailable) as caught:
        verify_mission_status(token, nonce="n-two", **options)
    assert caught.value.detail == "its nonce is not the one sent"


# -- the transport -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 401, 403, 400, 503])
def test_another_http_status_fails_closed(http: httpx.Client, server: StatusServer,
                                          status: int) -> None:
    server.plain(status, b"{}", content_type="application/json")
    refused = unavailable(http, server, MissionStatusUnavailable.HTTP_STATUS)
    assert refused.status_code == status


def test_a_redirect_is_not_followed(http: httpx.Client, server: StatusServer) -> None:
    server.plain(307, b"", Location=server.url + "?again")
    refused = unavailable(http, server, MissionStatusUnavailable.HTTP_STATUS)
    assert refused.status_code == 307 and len(server.requests) == 1


@pytest.mark.parametrize("content_type", ["application/json", "application/jwt", "text/plain"])
def test_another_media_type_fails_closed(http: httpx.Client, server: StatusServer,
                                         content_type: str) -> None:
    good = sign(AS_KEY, status_claims({}))  # whatever it holds, it is not read
    server.plain(200, good.encode(), content_type=content_type)
    unavailable(http, server, MissionStatusUnavailable.MEDIA_TYPE)


def test_a_media_type_with_parameters_is_accepted(http: httpx.Client,
                                                  server: StatusServer) -> None:
    def answer(form: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        token = sign(AS_KEY, status_claims(form))
        return 200, {"Content-Type": f"{STATUS_MEDIA_TYPE}; charset=ascii"}, token.encode()
    server.answer = answer
    assert ask(http, server).state == "active"


def test_a_too_large_answer_fails_closed(http: httpx.Client, server: StatusServer) -> None:
    server.plain(200, b"a" * (MAX_STATUS_BYTES + 1))
    unavailable(http, server, MissionStatusUnavailable.TOO_LARGE)


def test_an_answer_that_is_not_ascii_fails_closed(http: httpx.Client,
                                                  server: StatusServer) -> None:
    server.plain(200, "é.é.é".encode())
    unavailable(http, server, MissionStatusUnavailable.NOT_A_JWS)


def test_an_answer_that_is_not_a_jws_fails_closed(http: httpx.Client,
                                                  server: StatusServer) -> None:
    server.plain(200, b"not-a-jws")
    unavailable(http, server, MissionStatusUnavailable.UNTRUSTED)


def test_an_unreachable_as_fails_closed(http: httpx.Client) -> None:
    closed = StatusServer(url=f"http://127.0.0.1:{free_port()}/mission/status",
                          answer=lambda form: (200, {}, b""))
    refused = unavailable(http, closed, MissionStatusUnavailable.UNREACHABLE)
    assert refused.error == "ConnectError"
    assert "cannot be reached" in refused.description


def test_a_slow_as_times_out(http: httpx.Client, server: StatusServer) -> None:
    server.delay = 1.0
    started = time.monotonic()
    refused = unavailable(http, server, MissionStatusUnavailable.UNREACHABLE,
                          timeout_seconds=0.2)
    assert refused.error == "ReadTimeout"
    assert time.monotonic() - started < 0.9


def test_keys_that_cannot_be_fetched_are_no_verdict(http: httpx.Client,
                                                    server: StatusServer) -> None:
    with JwksCache(f"http://127.0.0.1:{free_port()}/jwks", client=http) as keys:
        refused = unavailable(http, server, MissionStatusUnavailable.KEYS_UNAVAILABLE,
                              keys=keys)
    assert "cannot be had just now" in refused.description


# -- what to act on ------------------------------------------------------------------------


@pytest.mark.parametrize(("state", "expiry", "expected"), [
    ("active", None, "active"),
    ("active", NOW + timedelta(seconds=1), "active"),
    ("active", NOW, "expired"),
    ("active", NOW - timedelta(days=1), "expired"),
    ("revoked", NOW + timedelta(days=1), "revoked"),
    ("suspended", None, "suspended"),
    ("pending_approval", None, "pending_approval"),
    ("Active", None, ""),
    ("some-new-state", None, ""),
    ("", None, ""),
])
def test_the_state_to_act_on_puts_the_clock_first_and_fails_closed(
    state: str, expiry: datetime | None, expected: str
) -> None:
    assert state_to_act_on(state, expiry, NOW) == expected
