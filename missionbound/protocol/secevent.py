"""Security Event Tokens (RFC 8417): verifying one SET as its recipient.

:func:`verify_set` checks a SET the way a Shared Signals receiver must before acting on it:
a JWS in compact serialization whose header says ``typ: secevent+jwt`` (RFC 8417 section
2.3), signed with an asymmetric algorithm by a key of the issuer's JWK Set, issued by the
expected issuer to this recipient, with ``iat``, ``jti`` and a non-empty ``events`` object
(RFC 8417 section 2.2). What the events *mean* is the caller's business
(:mod:`missionbound.enforce.signals` applies Mission lifecycle changes).

Every refusal raises :class:`SetRejected` carrying the error code of RFC 8935 section 2.4
that a push receiver answers with (and a poll receiver reports in ``setErrs``, RFC 8936
section 2.4.3):

- ``invalid_request``: not a SET as this profile defines it (malformed, wrong ``typ``, a
  claim missing or ill-typed, ``iat`` in the future, too old, ``exp`` passed).
- ``invalid_key``: the signing key is unacceptable: its ``kid`` is not in the issuer's JWK
  Set, its algorithm is not an accepted asymmetric one (``none`` and ``HS*`` never are), or
  the key cannot make that algorithm's signatures.
- ``authentication_failed``: the signature does not verify with the named key.
- ``invalid_issuer`` / ``invalid_audience``: ``iss`` / ``aud`` are not the expected ones.

``access_denied`` (RFC 8935: the transmitter may not send this SET to this recipient) is
not raised here; it is defined for callers that refuse a verified SET for policy reasons.

When the key source cannot tell just now whether the issuer has the key (its JWKS endpoint
is down, or a refetch is rate-limited), :class:`~missionbound.protocol.jwks.JwksUnavailable`
propagates unchanged: that is no verdict on the SET, and a receiver should ask the
transmitter to try again later rather than reject the SET for good.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from missionbound.mission.errors import MissionError, wire_text
from missionbound.protocol.jose_segments import (
    AllowListRegistry,
    JwsRefused,
    read_compact,
    verify_signed_jws,
)
from missionbound.protocol.jwks import SIGNATURE_ALGS, KeySource

SET_TYPE = "secevent+jwt"  # RFC 8417 section 2.3
SET_MEDIA_TYPE = "application/secevent+jwt"  # RFC 8417 section 7.2

# The event types of PROFILE.md section 10, shared by the transmitter and every receiver.
LIFECYCLE_CHANGE = "https://schemas.missionbound.dev/secevent/mission/lifecycle-change"
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"

# RFC 8935 section 2.4 (registered in section 7.1).
INVALID_REQUEST = "invalid_request"
INVALID_KEY = "invalid_key"
INVALID_ISSUER = "invalid_issuer"
INVALID_AUDIENCE = "invalid_audience"
AUTHENTICATION_FAILED = "authentication_failed"
ACCESS_DENIED = "access_denied"
ERROR_CODES = frozenset(
    {INVALID_REQUEST, INVALID_KEY, INVALID_ISSUER, INVALID_AUDIENCE, AUTHENTICATION_FAILED,
     ACCESS_DENIED}
)

# Asymmetric signatures only (RFC 8417 section 5.1 asks for "appropriate" protection; RFC
# 8725 section 3.1: never "none", and an HMAC key is a shared secret, not the issuer's
# public key). "Ed25519" is RFC 9864's fully specified name for EdDSA with Ed25519.
SUPPORTED_ALGS: tuple[str, ...] = SIGNATURE_ALGS

# A SET about one Mission is under 1 KiB; 64 KiB leaves room for many events and RSA.
MAX_SET_LENGTH = 65536
# RFC 8936 poll acknowledgements carry jti values; transmitters (ours: 255) bound them.
MAX_JTI_LENGTH = 255
DEFAULT_CLOCK_SKEW_SECONDS = 60

_COMPACT_JWE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+"
                          r"\.[A-Za-z0-9_-]*")


class SetRejected(MissionError):
    """RFC 8935 section 2.3: the SET is refused; ``err`` is the section 2.4 error code.

    A push receiver answers HTTP 400 with :meth:`as_json`; a poll receiver sends the same
    object in ``setErrs`` (RFC 8936 section 2.4.3)."""

    status = 400

    def __init__(self, err: str, description: str) -> None:
        if err not in ERROR_CODES:
            raise ValueError(f"{err!r} is not an RFC 8935 error code")
        super().__init__(description)
        self.err = err
        self.error = err

    def as_json(self) -> dict[str, str]:
        """The RFC 8935 section 2.3 error object: ``{"err", "description"}``."""
        return {"err": self.err, "description": wire_text(self.description)}

    def __repr__(self) -> str:
        return f"SetRejected({self.err!r}, {self.description!r})"


_REGISTRY = AllowListRegistry(SUPPORTED_ALGS, max_length=MAX_SET_LENGTH)
# The error code of each refusal of the JWS checks shared with Txn-Tokens and origins' JWTs:
# a key that is not the issuer's, or not one for this algorithm, is invalid_key.
_JWS_ERRORS = {
    JwsRefused.MALFORMED: INVALID_REQUEST,
    JwsRefused.UNSUPPORTED_ALGORITHM: INVALID_KEY,
    JwsRefused.UNKNOWN_KEY: INVALID_KEY,
    JwsRefused.UNSUITABLE_KEY: INVALID_KEY,
    JwsRefused.BAD_SIGNATURE: AUTHENTICATION_FAILED,
}


def is_set_type(value: Any) -> bool:
    """Whether a JOSE ``typ`` value names a SET.

    RFC 7515 section 4.1.9: ``typ`` is a media type, which compares case-insensitively
    (RFC 2045 section 5.1), and a value without "/" stands for "application/" + value. So
    ``secevent+jwt``, ``SecEvent+JWT`` and ``application/secevent+jwt`` all name a SET.
    """
    if not isinstance(value, str):
        return False
    lowered = value.lower()
    return lowered in (SET_TYPE, SET_MEDIA_TYPE)


def verify_set(
    token: str,
    *,
    keys: KeySource,
    issuer: str,
    audience: str,
    now: datetime | None = None,
    max_age_seconds: int | None = None,
    max_clock_skew_seconds: int = DEFAULT_CLOCK_SKEW_SECONDS,
) -> dict[str, Any]:
    """The claims of ``token`` after every check of a SET recipient; raises
    :class:`SetRejected` otherwise.

    ``keys`` holds the issuer's public keys (:class:`~missionbound.protocol.jwks.JwksCache`
    on its ``jwks_uri``). ``issuer`` must equal ``iss`` exactly; ``audience`` must be ``aud``
    or one of its members. ``iat`` may be at most ``max_clock_skew_seconds`` in the future
    and, when ``max_age_seconds`` is given, at most that old (RFC 8417 sets no lifetime:
    SETs delivered late, after an outage, are still true). An ``exp`` or ``nbf``, when
    present, is honoured with the same skew. ``now`` defaults to the current time.

    May also raise :class:`~missionbound.protocol.jwks.JwksUnavailable` (see the module
    documentation).
    """
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if max_clock_skew_seconds < 0 or (max_age_seconds is not None and max_age_seconds <= 0):
        raise ValueError("max_age_seconds must be positive, max_clock_skew_seconds not negative")

    header, claims = _decode(token)
    _check_type(header)
    try:
        verify_signed_jws(token, header, keys=keys, registry=_REGISTRY, what="SET")
    except JwsRefused as exc:
        raise SetRejected(_JWS_ERRORS[exc.reason], exc.description) from exc
    _check_issuer_and_audience(claims, issuer, audience)
    _check_times(claims, now.timestamp(), max_age_seconds, max_clock_skew_seconds)
    _check_jti(claims)
    _check_events(claims)
    return claims


# -- checks -----------------------------------------------------------------------------


def _reject(description: str) -> SetRejected:
    return SetRejected(INVALID_REQUEST, description)


def _decode(token: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    # A JWE gets its own description; a token that is not text or too long is refused by
    # read_compact, which checks that first.
    if isinstance(token, str) and len(token) <= MAX_SET_LENGTH \
            and _COMPACT_JWE.fullmatch(token):
        raise _reject("encrypted SETs (JWE) are not accepted; send a signed JWS")
    return read_compact(token, "SET", _reject, max_length=MAX_SET_LENGTH)


def _check_type(header: dict[str, Any]) -> None:
    # RFC 8417 section 2.3 and RFC 8725 section 3.11: the explicit type keeps an ID token or
    # an access token from ever passing as a SET, and a SET from passing as either.
    if not is_set_type(header.get("typ")):
        raise _reject(f'the SET header "typ" must be "{SET_TYPE}" (RFC 8417 section 2.3)')


def _check_issuer_and_audience(claims: dict[str, Any], issuer: str, audience: str) -> None:
    iss = claims.get("iss")
    if not isinstance(iss, str) or not iss:
        raise _reject('the SET lacks "iss" (RFC 8417 section 2.2)')
    if iss != issuer:
        raise SetRejected(
            INVALID_ISSUER, f"the SET issuer {iss[:200]!r} is not the expected {issuer!r}"
        )
    aud = claims.get("aud")
    if isinstance(aud, str):
        audiences = [aud]
    elif isinstance(aud, list) and aud and all(isinstance(value, str) for value in aud):
        audiences = aud
    else:
        raise _reject('the SET lacks "aud", a string or an array of strings')
    if audience not in audiences:
        raise SetRejected(INVALID_AUDIENCE, f"the SET is not addressed to {audience!r}")


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None and name not in claims:
        return None
    # RFC 7519 section 2: any JSON number (a bool is not one).
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _reject(f'the SET "{name}" must be a NumericDate (seconds since the epoch)')
    return float(value)


def _check_times(claims: dict[str, Any], now: float, max_age: int | None, skew: int) -> None:
    iat = _numeric_date(claims, "iat")
    if iat is None:
        raise _reject('the SET lacks "iat" (RFC 8417 section 2.2)')
    if iat > now + skew:
        raise _reject(
            f"the SET was issued {iat - now:.0f} s in the future; this recipient accepts "
            f"clocks up to {skew} s ahead"
        )
    if max_age is not None and now - iat > max_age:
        raise _reject(f"the SET was issued {now - iat:.0f} s ago; it is accepted for {max_age} s")
    exp = _numeric_date(claims, "exp")
    if exp is not None and now > exp + skew:
        raise _reject("the SET has expired (exp)")
    nbf = _numeric_date(claims, "nbf")
    if nbf is not None and nbf > now + skew:
        raise _reject("the SET is not valid yet (nbf)")


def _check_jti(claims: dict[str, Any]) -> None:
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH:
        raise _reject(
            f'the SET "jti" must be a string of 1 to {MAX_JTI_LENGTH} characters '
            "(RFC 8417 section 2.2)"
        )


def _check_events(claims: dict[str, Any]) -> None:
    # RFC 8417 section 2.2: "events" is an object of event type URI -> JSON object.
    events = claims.get("events")
    if not isinstance(events, dict) or not events:
        raise _reject('the SET "events" must be an object with at least one event')
    for event_type, body in events.items():
        if not event_type:
            raise _reject("an event type of the SET is empty")
        if not isinstance(body, dict):
            raise _reject(f"the event {event_type[:200]!r} of the SET is not a JSON object")

