"""The client side of the signed Mission Status (PROFILE.md section 10; the AS side is
``issuer/mission_status.py``, the document docs/mission-governance.md, "The signed Mission
Status").

One implementation for every party that asks an AS for a Mission's state: the Resource AS
role (``issuer/remote_missions.py``, before it derives anything from another AS's Mission)
and a Resource Server at tier RS-C (``enforce/rs/state.py``).

:func:`request_mission_status` is the whole exchange:

* ``POST <status_endpoint>`` with ``mission``, ``audience`` (a resource the caller serves)
  and a fresh ``nonce``, authenticated with HTTP Basic (``client_secret_basic``) as the
  caller's client, redirects never followed, the answer read up to
  :data:`MAX_STATUS_BYTES`;
* the answer must be ``200`` ``application/mission-status-response+jwt``; a ``404`` means
  the AS does not vouch for the Mission to this caller (unknown and not visible look alike,
  PROFILE.md section 10): :class:`MissionStatusUnknown`;
* the body is a JWS (RFC 7515) with ``typ`` ``mission-status-response+jwt`` (RFC 8725
  section 3.11, explicit typing), an asymmetric ``alg``, signed by the key its ``kid`` names
  in the AS's JWK Set (:func:`~missionbound.protocol.jose_segments.verify_signed_jws`);
* :func:`check_status_claims`: ``iss`` the AS, ``aud`` the audience asked, ``sub`` our client
  id, our ``nonce``, ``mission`` the Mission asked about (id and origin), ``iat`` not in the
  future and ``exp`` not past (:data:`STATUS_CLOCK_SKEW`), ``state`` a short string,
  ``version`` a positive integer, ``mission_expiry`` (when sent) an RFC 3339 instant.

Anything that keeps the caller from learning the state (network, timeout, another HTTP
status, another media type, too large, a JWS that does not verify, claims that do not check,
the AS's keys not to be had) is :class:`MissionStatusUnavailable`, with a ``reason`` each
caller maps to its own answer (both fail closed). The state reported is not judged here:
:func:`state_to_act_on` says what to act on (clock first; a state this software does not
know reads as none).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from missionbound.mission.errors import InvalidRequest
from missionbound.mission.intent import parse_instant
from missionbound.mission.lifecycle import State
from missionbound.protocol.jose_segments import (
    AllowListRegistry,
    JwsRefused,
    read_compact,
    verify_signed_jws,
)
from missionbound.protocol.jwks import SIGNATURE_ALGS, JwksUnavailable, KeySource
from missionbound.protocol.jwt_claims import ClaimRefused, numeric_date

__all__ = [
    "MAX_STATUS_BYTES",
    "STATUS_CLOCK_SKEW",
    "STATUS_MEDIA_TYPE",
    "STATUS_TYPE",
    "MissionStatusError",
    "MissionStatusUnavailable",
    "MissionStatusUnknown",
    "SignedMissionStatus",
    "check_status_claims",
    "new_nonce",
    "request_mission_status",
    "state_to_act_on",
    "verify_mission_status",
]

STATUS_TYPE = "mission-status-response+jwt"
STATUS_MEDIA_TYPE = f"application/{STATUS_TYPE}"
# A Mission Status is a few KiB (the authority projection of one audience); 64 KiB bounds
# both what is read off the wire and the JWS handed to the parser.
MAX_STATUS_BYTES = 65536
# docs/mission-governance.md: "iat not in the future and exp not past (30 s skew)".
STATUS_CLOCK_SKEW = timedelta(seconds=30)
MAX_KID_LENGTH = 255
MAX_STATE_LENGTH = 32
_STATES = frozenset(state.value for state in State)
_REGISTRY = AllowListRegistry(SIGNATURE_ALGS, max_length=MAX_STATUS_BYTES)
_WHAT = "Mission Status"


class MissionStatusError(Exception):
    """Base class of this module's errors; ``description`` says what happened for a person."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class MissionStatusUnknown(MissionStatusError):
    """The AS answered 404: it does not vouch for this Mission to this caller (unknown, or
    not one whose resources the caller may see). A definite answer: not active."""


class MissionStatusUnavailable(MissionStatusError):
    """The state could not be learned just now; asking again later may succeed. Fail
    closed. ``reason`` is one of the constants below; ``status_code`` is the HTTP status
    (:data:`HTTP_STATUS`), ``error`` the transport error's class name (:data:`UNREACHABLE`)
    and ``detail`` the check that failed (:data:`UNTRUSTED`, :data:`KEYS_UNAVAILABLE`)."""

    UNREACHABLE = "unreachable"  # network error or timeout
    HTTP_STATUS = "http_status"  # an HTTP status other than 200 and 404
    MEDIA_TYPE = "media_type"  # not application/mission-status-response+jwt
    TOO_LARGE = "too_large"  # more than MAX_STATUS_BYTES
    NOT_A_JWS = "not_a_jws"  # the body is not ASCII text
    UNTRUSTED = "untrusted"  # the JWS or its claims do not verify
    KEYS_UNAVAILABLE = "keys_unavailable"  # the AS's JWK Set cannot be had just now

    def __init__(self, reason: str, description: str, *, status_code: int | None = None,
                 error: str | None = None, detail: str | None = None) -> None:
        super().__init__(description)
        self.reason = reason
        self.status_code = status_code
        self.error = error
        self.detail = detail


@dataclass(frozen=True)
class SignedMissionStatus:
    """A verified Mission Status: what ``issuer`` says of ``mission_id`` (``state`` as sent,
    not judged: see :func:`state_to_act_on`). ``issued_at`` and ``expires_at`` are the JWS's
    ``iat`` and ``exp``; a consumer caches the answer at most until ``expires_at``."""

    issuer: str
    mission_id: str
    state: str
    version: int
    mission_expiry: datetime | None
    issued_at: datetime
    expires_at: datetime
    claims: Mapping[str, Any] = field(compare=False, repr=False)


def new_nonce() -> str:
    """A fresh request nonce: 128 bits, base64url (PROFILE.md section 10)."""
    return "n-" + secrets.token_urlsafe(16)


def request_mission_status(
    client: httpx.Client,
    *,
    status_endpoint: str,
    issuer: str,
    keys: KeySource,
    mission_id: str,
    audience: str,
    client_id: str,
    client_secret: str,
    now: datetime,
    timeout_seconds: float | None = None,
) -> SignedMissionStatus:
    """Ask ``issuer``'s ``status_endpoint`` for Mission ``mission_id`` as seen by
    ``audience``, authenticated as ``client_id``, and verify the answer with ``keys`` (the
    AS's JWK Set) at ``now``. ``timeout_seconds`` bounds the request (None: the client's own
    timeouts). Raises :class:`MissionStatusUnknown` or :class:`MissionStatusUnavailable`."""
    nonce = new_nonce()
    signed = _post(client, status_endpoint, issuer=issuer, client_id=client_id,
                   client_secret=client_secret, timeout_seconds=timeout_seconds,
                   form={"mission": mission_id, "audience": audience, "nonce": nonce},
                   mission_id=mission_id)
    return verify_mission_status(signed, issuer=issuer, keys=keys, mission_id=mission_id,
                                 audience=audience, client_id=client_id, nonce=nonce, now=now)


def verify_mission_status(
    token: str,
    *,
    issuer: str,
    keys: KeySource,
    mission_id: str,
    audience: str,
    client_id: str,
    nonce: str,
    now: datetime,
) -> SignedMissionStatus:
    """Check ``token``, a Mission Status answering our request (``mission_id``,
    ``audience``, ``nonce``) as ``client_id``: its header, its signature by a key of
    ``keys`` and :func:`check_status_claims`. Raises :class:`MissionStatusUnavailable`
    (``UNTRUSTED``, or ``KEYS_UNAVAILABLE`` when the keys cannot be had: no verdict)."""
    try:
        header, claims = read_compact(token, _WHAT, _untrusted, max_length=MAX_STATUS_BYTES)
        if not _is_status_type(header.get("typ")):
            raise _untrusted(f'the {_WHAT} header "typ" must be "{STATUS_TYPE}" '
                             "(explicit typing)")
        verify_signed_jws(token, header, keys=keys, registry=_REGISTRY, what=_WHAT,
                          max_kid_length=MAX_KID_LENGTH)
        return check_status_claims(claims, issuer=issuer, mission_id=mission_id,
                                   audience=audience, client_id=client_id, nonce=nonce, now=now)
    except JwsRefused as exc:
        raise _unusable(issuer, exc.description) from None
    except _Untrusted as exc:
        raise _unusable(issuer, str(exc)) from None
    except JwksUnavailable as exc:
        # Includes a refetch the rate limit holds back: not known yet, not a no.
        raise MissionStatusUnavailable(
            MissionStatusUnavailable.KEYS_UNAVAILABLE,
            f"the keys of the {_WHAT}'s issuer cannot be had just now: {exc}",
            detail=str(exc)) from None


def check_status_claims(
    claims: Mapping[str, Any],
    *,
    issuer: str,
    mission_id: str,
    audience: str,
    client_id: str,
    nonce: str,
    now: datetime,
) -> SignedMissionStatus:
    """The checks a consumer makes (docs/mission-governance.md, "The signed Mission
    Status") on the claims of a Mission Status whose signature it verified; then what it
    says. Raises :class:`MissionStatusUnavailable` (``UNTRUSTED``)."""
    try:
        return _checked(claims, issuer, mission_id, audience, client_id, nonce, now)
    except _Untrusted as exc:
        raise _unusable(issuer, str(exc)) from None


def state_to_act_on(state: str, mission_expiry: datetime | None, now: datetime) -> str:
    """The state to act on: what the AS said, the clock first (PROFILE.md section 7: an
    ``active`` Mission past its ``mission_expiry`` is ``expired``), and a state this software
    does not know read as no state at all, ``""`` (fail closed)."""
    if state not in _STATES:
        return ""
    if state == State.ACTIVE and mission_expiry is not None and now >= mission_expiry:
        return State.EXPIRED.value
    return state


# -- internals -----------------------------------------------------------------------------


class _Untrusted(ValueError):
    """A definite no about the JWS or a claim (turned into ``UNTRUSTED``)."""


def _untrusted(description: str) -> _Untrusted:
    return _Untrusted(description)


def _unusable(issuer: str, detail: str) -> MissionStatusUnavailable:
    return MissionStatusUnavailable(
        MissionStatusUnavailable.UNTRUSTED,
        f"the {_WHAT} from {issuer} cannot be relied on ({detail}); refusing (fail closed)",
        detail=detail)


def _is_status_type(value: Any) -> bool:
    # RFC 7515 section 4.1.9: "typ" compares case-insensitively and may omit "application/".
    return isinstance(value, str) and value.lower() in (STATUS_TYPE, STATUS_MEDIA_TYPE)


def _post(client: httpx.Client, where: str, *, issuer: str, client_id: str, client_secret: str,
          timeout_seconds: float | None, form: dict[str, str], mission_id: str) -> str:
    extra: dict[str, Any] = {} if timeout_seconds is None else {"timeout": timeout_seconds}
    try:
        with client.stream(
            "POST", where,
            data=form,
            auth=(client_id, client_secret),
            headers={"Accept": STATUS_MEDIA_TYPE},
            follow_redirects=False,
            **extra,
        ) as response:
            if response.status_code == 404:
                raise MissionStatusUnknown(
                    f"the origin {issuer} does not vouch for Mission {mission_id} to "
                    "this caller")
            if response.status_code != 200:
                raise MissionStatusUnavailable(
                    MissionStatusUnavailable.HTTP_STATUS,
                    f"the {_WHAT} endpoint of {issuer} answered HTTP "
                    f"{response.status_code}; refusing (fail closed)",
                    status_code=response.status_code)
            media_type = response.headers.get("content-type", "").split(";")[0].strip()
            if media_type.lower() != STATUS_MEDIA_TYPE:
                raise MissionStatusUnavailable(
                    MissionStatusUnavailable.MEDIA_TYPE,
                    f"the {_WHAT} endpoint of {issuer} answered "
                    f"{media_type[:80] or 'no Content-Type'}, not {STATUS_MEDIA_TYPE}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_STATUS_BYTES:
                    raise MissionStatusUnavailable(
                        MissionStatusUnavailable.TOO_LARGE,
                        f"the {_WHAT} from {issuer} is too large")
    except httpx.HTTPError as exc:
        raise MissionStatusUnavailable(
            MissionStatusUnavailable.UNREACHABLE,
            f"the {_WHAT} endpoint of {issuer} cannot be reached "
            f"({type(exc).__name__}); refusing (fail closed)",
            error=type(exc).__name__) from None
    try:
        return bytes(body).decode("ascii").strip()
    except UnicodeDecodeError:
        raise MissionStatusUnavailable(
            MissionStatusUnavailable.NOT_A_JWS, f"the {_WHAT} from {issuer} is not a JWS"
        ) from None


def _checked(claims: Mapping[str, Any], issuer: str, mission_id: str, audience: str,
             client_id: str, nonce: str, now: datetime) -> SignedMissionStatus:
    def refuse(what: str) -> _Untrusted:
        return _Untrusted(f"its {what}")

    if claims.get("iss") != issuer:
        raise refuse("iss is not the origin")
    if claims.get("aud") != audience:
        raise refuse("aud is not the audience asked for")
    if claims.get("sub") != client_id:
        raise refuse("sub is not our status client")
    # The nonce is what makes this answer ours and fresh, not a replay of another's.
    if claims.get("nonce") != nonce:
        raise refuse("nonce is not the one sent")
    mission = claims.get("mission")
    if (not isinstance(mission, dict) or mission.get("id") != mission_id
            or mission.get("origin") != issuer):
        raise refuse("mission is not the Mission asked about")
    try:
        iat = numeric_date(dict(claims), "iat", _WHAT, required=True)
        exp = numeric_date(dict(claims), "exp", _WHAT, required=True)
    except ClaimRefused:
        raise refuse("iat or exp is not a NumericDate") from None
    assert iat is not None and exp is not None  # required
    skew = STATUS_CLOCK_SKEW.total_seconds()
    if iat > now.timestamp() + skew or exp < now.timestamp() - skew:
        raise refuse("iat is in the future or exp has passed")
    state, version = claims.get("state"), claims.get("version")
    if not isinstance(state, str) or not 0 < len(state) <= MAX_STATE_LENGTH:
        raise refuse("state is missing")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise refuse("version is not a positive integer")
    expiry = None
    if "mission_expiry" in claims:
        try:
            expiry = parse_instant(claims["mission_expiry"], "mission_expiry")
        except InvalidRequest:
            raise refuse("mission_expiry is not an RFC 3339 instant") from None
    return SignedMissionStatus(
        issuer=issuer, mission_id=mission_id, state=state, version=version,
        mission_expiry=expiry, issued_at=_instant(iat), expires_at=_instant(exp),
        claims=dict(claims))


def _instant(seconds: float) -> datetime:
    # numeric_date refused non-finite values; one beyond datetime's range (an exp far in
    # the future passes the checks) is clamped rather than raised.
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return datetime.max.replace(tzinfo=UTC) if seconds > 0 else datetime.min.replace(
            tzinfo=UTC)
