"""The signed browser-session cookie and the CSRF check.

A cookie that is forged, altered, expired or malformed must read as a fresh anonymous session,
never as an error and never as anyone's sign-in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.responses import Response

from missionbound.web.sessions import (
    SESSION_COOKIE,
    SESSION_MAX_AGE,
    BrowserSession,
    CsrfFailed,
    check_csrf,
    encode_browser_session,
    new_browser_session,
    read_browser_session,
    set_session_cookie,
    sign_in,
)

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(payload: Any, secret: bytes = SECRET) -> str:
    """A cookie correctly signed over an arbitrary payload: for the checks made after the MAC."""
    signed = "v1." + b64(json.dumps(payload).encode())
    mac = hmac.new(secret, b"mb_session." + signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{b64(mac)}"


def read(value: str | None, now: datetime = NOW) -> BrowserSession:
    return read_browser_session(value, secret=SECRET, now=now)


def signed_in_cookie(user: str = "alice", now: datetime = NOW) -> tuple[BrowserSession, str]:
    session = sign_in(new_browser_session(now=now), user, now=now)
    return session, encode_browser_session(session, secret=SECRET)


def assert_fresh_anonymous(session: BrowserSession, *, not_csrf: str | None = None) -> None:
    assert session.user is None and session.auth_time is None and not session.signed_in
    assert session.issued_at == int(NOW.timestamp())
    assert len(session.csrf_token) == 43
    if not_csrf is not None:
        assert session.csrf_token != not_csrf


def test_round_trip_signed_in() -> None:
    session, cookie = signed_in_cookie()
    assert read(cookie) == session
    assert session.user == "alice" and session.auth_time == int(NOW.timestamp())
    assert session.signed_in


def test_round_trip_anonymous_keeps_its_csrf_token() -> None:
    # The sign-in form's token must survive from GET /login to POST /login.
    anonymous = new_browser_session(now=NOW)
    cookie = encode_browser_session(anonymous, secret=SECRET)
    assert read(cookie, NOW + timedelta(minutes=5)) == anonymous


def test_no_cookie_is_a_fresh_anonymous_session() -> None:
    first, second = read(None), read("")
    assert_fresh_anonymous(first)
    assert_fresh_anonymous(second)
    assert first.csrf_token != second.csrf_token


def test_a_tampered_mac_reads_as_anonymous() -> None:
    session, cookie = signed_in_cookie()
    head, _, mac = cookie.rpartition(".")
    flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    assert_fresh_anonymous(read(f"{head}.{flipped}"), not_csrf=session.csrf_token)


def test_a_changed_payload_reads_as_anonymous() -> None:
    session, cookie = signed_in_cookie("alice")
    version, _, mac = cookie.split(".")
    as_bob = {"u": "bob", "at": session.auth_time, "c": session.csrf_token,
              "ia": session.issued_at}
    payload = b64(json.dumps(as_bob, separators=(",", ":")).encode())
    assert_fresh_anonymous(read(f"{version}.{payload}.{mac}"))


def test_a_cookie_signed_with_another_secret_reads_as_anonymous() -> None:
    session = sign_in(new_browser_session(now=NOW), "alice", now=NOW)
    cookie = encode_browser_session(session, secret=OTHER_SECRET)
    assert_fresh_anonymous(read(cookie))


def test_an_expired_session_reads_as_anonymous() -> None:
    session, cookie = signed_in_cookie()
    just_before = NOW + SESSION_MAX_AGE - timedelta(seconds=1)
    assert read(cookie, just_before) == session
    expired = read(cookie, NOW + SESSION_MAX_AGE)
    assert expired.user is None and expired.csrf_token != session.csrf_token


def test_a_session_issued_in_the_future_reads_as_anonymous() -> None:
    # A small skew between replicas is tolerated; a cookie minted far ahead is not.
    ahead = NOW + timedelta(minutes=2)
    _, cookie = signed_in_cookie(now=ahead)
    assert read(cookie).user == "alice"
    _, cookie = signed_in_cookie(now=NOW + timedelta(hours=1))
    assert_fresh_anonymous(read(cookie))


@pytest.mark.parametrize("cookie", [
    "garbage",
    "v1.a.b",
    "v1..",
    "v2.e30.AAAA",
    "v1.e30",
    "v1.e30.AAAA.extra",
    "v1.e30.not base64!",
    "x" * 5000,
    "v1." + "A" * 3000 + ".AAAA",
])
def test_malformed_cookies_read_as_anonymous(cookie: str) -> None:
    assert_fresh_anonymous(read(cookie))


@pytest.mark.parametrize("payload", [
    "not an object",
    [1, 2],
    {},
    {"u": None, "at": None, "c": "A" * 43},  # issued_at missing
    {"u": None, "at": None, "c": "A" * 43, "ia": 0, "extra": 1},
    {"u": None, "at": None, "c": "short", "ia": int(NOW.timestamp())},
    {"u": None, "at": None, "c": "A" * 43, "ia": "1"},
    {"u": None, "at": None, "c": "A" * 43, "ia": True},
    {"u": None, "at": 5, "c": "A" * 43, "ia": int(NOW.timestamp())},  # auth_time, nobody
    {"u": "alice", "at": None, "c": "A" * 43, "ia": int(NOW.timestamp())},  # user, no time
    {"u": "", "at": 5, "c": "A" * 43, "ia": int(NOW.timestamp())},
    {"u": 7, "at": 5, "c": "A" * 43, "ia": int(NOW.timestamp())},
    {"u": "alice", "at": int(NOW.timestamp()) + 3600, "c": "A" * 43,
     "ia": int(NOW.timestamp())},  # authenticated in the future
])
def test_correctly_signed_but_invalid_content_reads_as_anonymous(payload: Any) -> None:
    assert_fresh_anonymous(read(forge(payload)))


def test_a_correctly_signed_valid_payload_is_read() -> None:
    # The forge helper matches the real format: this is what makes the test above meaningful.
    payload = {"u": "alice", "at": int(NOW.timestamp()), "c": "A" * 43,
               "ia": int(NOW.timestamp())}
    assert read(forge(payload)) == BrowserSession("alice", int(NOW.timestamp()), "A" * 43,
                                                  int(NOW.timestamp()))


def test_sign_in_rotates_the_csrf_token_and_the_lifetime() -> None:
    anonymous = new_browser_session(now=NOW)
    later = NOW + timedelta(hours=7)
    session = sign_in(anonymous, "bob", now=later)
    assert session.user == "bob"
    assert session.auth_time == session.issued_at == int(later.timestamp())
    assert session.csrf_token != anonymous.csrf_token
    # The old token (known to whoever planted the anonymous cookie) no longer passes.
    with pytest.raises(CsrfFailed):
        check_csrf(session, anonymous.csrf_token)
    check_csrf(session, session.csrf_token)
    # The signed-in session lives its full lifetime from sign-in, not from the first visit.
    cookie = encode_browser_session(session, secret=SECRET)
    assert read(cookie, later + SESSION_MAX_AGE - timedelta(seconds=1)).user == "bob"


@pytest.mark.parametrize("submitted", [None, "", "wrong", "A" * 43, "é" * 43, " "])
def test_check_csrf_refuses_missing_or_wrong_tokens(submitted: str | None) -> None:
    session = new_browser_session(now=NOW)
    with pytest.raises(CsrfFailed) as refused:
        check_csrf(session, submitted)
    assert refused.value.error == "invalid_request" and refused.value.status == 400
    assert refused.value.to_wire()["error_description"]


def test_check_csrf_accepts_the_sessions_token() -> None:
    session = new_browser_session(now=NOW)
    check_csrf(session, session.csrf_token)


@pytest.mark.parametrize("secure", [True, False])
def test_session_cookie_attributes(secure: bool) -> None:
    response = Response()
    set_session_cookie(response, "v1.abc.def", secure=secure)
    (header,) = response.headers.getlist("set-cookie")
    attributes = [part.strip().lower() for part in header.split(";")]
    assert attributes[0] == f"{SESSION_COOKIE}=v1.abc.def"
    assert "httponly" in attributes and "samesite=lax" in attributes and "path=/" in attributes
    assert ("secure" in attributes) is secure


def test_cookie_value_needs_no_quoting() -> None:
    # Only base64url characters and dots: no browser or proxy rewrites it.
    _, cookie = signed_in_cookie("alice@example.com")
    assert set(cookie) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    response = Response()
    set_session_cookie(response, cookie, secure=True)
    assert f"{SESSION_COOKIE}={cookie};" in response.headers["set-cookie"]


def test_programming_errors_are_loud() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        read_browser_session(None, secret=SECRET, now=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="32 bytes"):
        read_browser_session(None, secret=b"short", now=NOW)
    with pytest.raises(ValueError, match="user"):
        sign_in(new_browser_session(now=NOW), "", now=NOW)
