"""The browser session: who is signed in and the form CSRF token, in one signed cookie.

The cookie holds the whole session (no server-side row), so any replica can read it with the
shared secret (``server_secret(session, "browser-session", ...)``). It is authenticated, not
encrypted: nothing in it is secret from the browser that holds it.

Wire format: ``v1.<payload>.<mac>``, both parts base64url without padding. ``payload`` is
compact JSON ``{"u": user|null, "at": auth_time|null, "c": csrf_token, "ia": issued_at}``;
``mac`` is HMAC-SHA256 over ``"mb_session." + "v1." + payload`` (the prefix keeps a MAC made
with the same secret for anything else from ever passing as a session).

Reading never fails: a cookie that is missing, malformed, forged, from the future or older than
:data:`SESSION_MAX_AGE` reads as a fresh anonymous session, and the caller simply asks the
user to sign in again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from starlette.responses import Response

from missionbound.mission.errors import MissionError

SESSION_COOKIE = "mb_session"
# Absolute lifetime counted from issued_at (never sliding): a stolen cookie stops working
# within a working day even if it is replayed continuously.
SESSION_MAX_AGE = timedelta(hours=8)
# Replicas' clocks may disagree a little; beyond this an issued_at "from the future" is refused.
CLOCK_SKEW = timedelta(seconds=300)

_VERSION = "v1"
_MAC_CONTEXT = b"mb_session."
# Far above the ~200 characters a real session takes, and below the 4096 octets browsers keep.
_MAX_COOKIE_LENGTH = 2048
_USER_MAX = 256
_CSRF_BYTES = 32
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_CSRF_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, base64url without padding


@dataclass(frozen=True)
class BrowserSession:
    """One browser's session. ``user`` and ``auth_time`` are both None when anonymous."""

    user: str | None
    auth_time: int | None
    csrf_token: str
    issued_at: int

    @property
    def signed_in(self) -> bool:
        return self.user is not None


class CsrfFailed(MissionError):
    """The form's ``csrf_token`` is missing or is not this browser session's."""

    error = "invalid_request"
    status = 400


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not _B64URL.fullmatch(text):  # b64decode would silently skip stray characters
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _epoch(now: datetime) -> int:
    if now.tzinfo is None or now.utcoffset() is None:
        # A naive datetime is a programming error: it would shift every expiry by the offset.
        raise ValueError("now must be a timezone-aware datetime")
    return int(now.timestamp())


def _new_csrf_token() -> str:
    return _b64encode(secrets.token_bytes(_CSRF_BYTES))


def _mac(secret: bytes, signed_part: str) -> bytes:
    return hmac.new(secret, _MAC_CONTEXT + signed_part.encode("ascii"), hashlib.sha256).digest()


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes) or len(secret) < 32:
        raise ValueError("the session secret must be at least 32 bytes")


def new_browser_session(*, now: datetime) -> BrowserSession:
    """A fresh anonymous session with its own CSRF token."""
    return BrowserSession(user=None, auth_time=None, csrf_token=_new_csrf_token(),
                          issued_at=_epoch(now))


def encode_browser_session(session: BrowserSession, *, secret: bytes) -> str:
    """The cookie value for ``session``."""
    _check_secret(secret)
    payload = json.dumps(
        {"u": session.user, "at": session.auth_time, "c": session.csrf_token,
         "ia": session.issued_at},
        separators=(",", ":"), ensure_ascii=True,
    )
    signed_part = f"{_VERSION}.{_b64encode(payload.encode('ascii'))}"
    return f"{signed_part}.{_b64encode(_mac(secret, signed_part))}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _decode(cookie_value: str, secret: bytes, now: int) -> BrowserSession | None:
    if len(cookie_value) > _MAX_COOKIE_LENGTH:
        return None
    parts = cookie_value.split(".")
    if len(parts) != 3 or parts[0] != _VERSION:
        return None
    signed_part = f"{parts[0]}.{parts[1]}"
    try:
        mac = _b64decode(parts[2])
    except (ValueError, binascii.Error):
        return None
    # The MAC is checked before the payload is parsed: nothing a forger wrote reaches the
    # JSON parser. compare_digest keeps the check from leaking how many bytes matched.
    if not hmac.compare_digest(mac, _mac(secret, signed_part)):
        return None
    try:
        data = json.loads(_b64decode(parts[1]))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(data, dict) or set(data) != {"u", "at", "c", "ia"}:
        return None
    user, auth_time, csrf_token, issued_at = data["u"], data["at"], data["c"], data["ia"]
    if not _is_int(issued_at) or not isinstance(csrf_token, str) \
            or not _CSRF_TOKEN.fullmatch(csrf_token):
        return None
    if user is None:
        if auth_time is not None:
            return None
    elif not (isinstance(user, str) and 0 < len(user) <= _USER_MAX and _is_int(auth_time)):
        return None
    skew = int(CLOCK_SKEW.total_seconds())
    if issued_at > now + skew or now - issued_at >= int(SESSION_MAX_AGE.total_seconds()):
        return None
    if auth_time is not None and auth_time > now + skew:
        return None
    return BrowserSession(user=user, auth_time=auth_time, csrf_token=csrf_token,
                          issued_at=issued_at)


def read_browser_session(cookie_value: str | None, *, secret: bytes, now: datetime
                         ) -> BrowserSession:
    """The session in the ``mb_session`` cookie, or a fresh anonymous one when the cookie is
    absent or not acceptable (forged, malformed, expired). Never raises for cookie content.

    A fresh session has a new CSRF token: the caller must set the cookie on the response that
    renders a form, or the form's POST will fail :func:`check_csrf`."""
    _check_secret(secret)
    epoch = _epoch(now)
    if isinstance(cookie_value, str) and cookie_value:
        session = _decode(cookie_value, secret, epoch)
        if session is not None:
            return session
    return new_browser_session(now=now)


def sign_in(session: BrowserSession, user: str, *, now: datetime) -> BrowserSession:
    """``session`` after ``user`` authenticated. The CSRF token and issued_at are renewed:
    whoever planted or saw the anonymous cookie (session fixation) learns nothing usable about
    the signed-in one, and the signed-in session gets its full lifetime."""
    if not isinstance(user, str) or not 0 < len(user) <= _USER_MAX:
        raise ValueError(f"user must be 1 to {_USER_MAX} characters")
    epoch = _epoch(now)
    return replace(session, user=user, auth_time=epoch, csrf_token=_new_csrf_token(),
                   issued_at=epoch)


def set_session_cookie(response: Response, value: str, *, secure: bool) -> None:
    """Set ``mb_session`` on ``response``.

    HttpOnly: page scripts never need it. SameSite=Lax: a cross-site POST (a forged consent
    form) arrives without it, while the top-level GET back from the client to /authorize keeps
    it. No Max-Age: the cookie ends with the browser session, and SESSION_MAX_AGE is enforced
    by the server from issued_at in any case. ``secure`` should be true whenever the issuer
    URL is https."""
    response.set_cookie(SESSION_COOKIE, value, path="/", secure=secure, httponly=True,
                        samesite="lax")


def check_csrf(session: BrowserSession, submitted: str | None) -> None:
    """Raise :class:`CsrfFailed` unless ``submitted`` is this session's CSRF token."""
    # Compared as bytes: compare_digest refuses non-ASCII str with a TypeError, and submitted
    # form values are attacker-chosen.
    if not isinstance(submitted, str) or not submitted or not hmac.compare_digest(
            submitted.encode("utf-8"), session.csrf_token.encode("utf-8")):
        raise CsrfFailed("the form has expired or was not sent from this site: "
                         "reload the page and try again")
