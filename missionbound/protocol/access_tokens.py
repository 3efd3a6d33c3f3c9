"""RFC 9068 JWT access tokens carrying a Mission: verifying one at a Resource Server.

:func:`verify_access_token` makes the checks of RFC 9068 section 4 and those an RS-B
Resource Server adds (PROFILE.md sections 2 and 8):

- a JWS in compact serialization whose header says ``typ: at+jwt`` or
  ``application/at+jwt`` (RFC 9068 section 4 item 1; RFC 8725 section 3.11: an ID token, an
  ID-JAG, a Txn-Token or a SET never passes as an access token);
- an asymmetric algorithm only, and only with the issuer's key named by ``kid`` whose type
  fits the algorithm (:func:`~missionbound.protocol.jose_segments.verify_signed_jws`):
  never ``none``, never an HMAC keyed with the published public key, never a key the token
  brings along;
- ``iss`` the expected issuer, ``aud`` (a string or an array) naming this resource, ``exp``
  not past, ``iat`` not in the future, ``nbf`` (when present) reached, each within
  ``leeway``; ``sub``, ``client_id`` and ``jti`` strings (RFC 9068 section 2.2);
- the ``mission`` claim ``{id, origin, authority_hash}``: REQUIRED. A token without it is
  refused, never served as a plain RFC 9068 token: dropping the claim must not drop the
  Mission's bounds (downgrade by omission, PROFILE.md section 2, RS-B);
- ``authorization_details`` a non-empty array of objects each naming its ``type`` (RFC 9396
  section 2): the authority the RS enforces, fail-closed;
- ``cnf`` (when present) an object with a ``jkt`` (RFC 9449 section 6.1): the caller then
  checks the request's DPoP proof against it. A ``cnf`` without ``jkt`` names a binding this
  verifier cannot check, so the token is refused rather than accepted as a bearer token;
- ``act`` (when present) a chain of actors as :func:`missionbound.mission.delegation
  .actor_chain` reads it (PROFILE.md section 9).

What this module does not do: check a DPoP proof (:mod:`missionbound.protocol.dpop`), match
a request against ``authorization_details``, or ask about the Mission's state (RS-C).

Every refusal raises :class:`AccessTokenRejected` (``invalid_token``, 401, RFC 6750 section
3.1) with a ``reason`` code and a description fit for the ``error_description`` of a
``WWW-Authenticate`` header (:meth:`~missionbound.mission.errors.MissionError.to_wire`).
When the key source cannot tell just now whether the issuer has the key,
:class:`~missionbound.protocol.jwks.JwksUnavailable` propagates unchanged: no verdict on the
token; the RS should answer "try again later" (503).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from missionbound.mission.delegation import Actor, InvalidActorChain, actor_chain
from missionbound.mission.errors import MissionError
from missionbound.protocol.jose_segments import (
    AllowListRegistry,
    JwsRefused,
    read_compact,
    verify_signed_jws,
)
from missionbound.protocol.jwks import SIGNATURE_ALGS, KeySource
from missionbound.protocol.jwt_claims import (
    EXPIRED,
    INVALID_CLAIM,
    MISSING_CLAIM,
    NOT_YET_VALID,
    TOO_LONG_LIVED,
    ClaimRefused,
    check_times,
    string_claim,
)
from missionbound.protocol.mission_claim import (
    InvalidMissionClaim,
    MissionEvidence,
    parse_mission_claim,
)

# RFC 9068 section 4 item 1 and its media type registration (section 7.2).
ACCESS_TOKEN_TYPE = "at+jwt"
ACCESS_TOKEN_MEDIA_TYPE = f"application/{ACCESS_TOKEN_TYPE}"

# Asymmetric signatures only (protocol/jwks.py says which key each needs).
SUPPORTED_ALGS: tuple[str, ...] = SIGNATURE_ALGS

# An access token of this AS holds at most a Mission's Authority Set (bounded by
# mission_intent_max_size); 64 KiB leaves room for RSA and other issuers' claims and still
# bounds what an HTTP header hands the parser.
MAX_ACCESS_TOKEN_LENGTH = 65536
DEFAULT_LEEWAY_SECONDS = 30
MAX_NAME_LENGTH = 1024
MAX_KID_LENGTH = 255

# Reason codes of :class:`AccessTokenRejected`.
MALFORMED = "malformed"
WRONG_TYPE = "wrong_type"
UNSUPPORTED_ALGORITHM = "unsupported_algorithm"
UNKNOWN_KEY = "unknown_key"
BAD_SIGNATURE = "bad_signature"
WRONG_ISSUER = "wrong_issuer"
WRONG_AUDIENCE = "wrong_audience"
MISSING_MISSION = "missing_mission"
INVALID_MISSION = "invalid_mission"
INVALID_AUTHORIZATION_DETAILS = "invalid_authorization_details"
INVALID_CONFIRMATION = "invalid_confirmation"
INVALID_ACTOR = "invalid_actor"
REASONS = frozenset({
    MALFORMED, WRONG_TYPE, UNSUPPORTED_ALGORITHM, UNKNOWN_KEY, BAD_SIGNATURE, WRONG_ISSUER,
    WRONG_AUDIENCE, EXPIRED, NOT_YET_VALID, TOO_LONG_LIVED, MISSING_CLAIM, INVALID_CLAIM,
    MISSING_MISSION, INVALID_MISSION, INVALID_AUTHORIZATION_DETAILS, INVALID_CONFIRMATION,
    INVALID_ACTOR,
})

# The reason of each refusal of the JWS checks shared with SETs, Txn-Tokens and origins' JWTs.
_JWS_REASONS = {
    JwsRefused.MALFORMED: MALFORMED,
    JwsRefused.UNSUPPORTED_ALGORITHM: UNSUPPORTED_ALGORITHM,
    JwsRefused.UNKNOWN_KEY: UNKNOWN_KEY,
    JwsRefused.UNSUITABLE_KEY: UNSUPPORTED_ALGORITHM,
    JwsRefused.BAD_SIGNATURE: BAD_SIGNATURE,
}
# RFC 9449 section 6.1: the base64url SHA-256 JWK thumbprint (RFC 7638) of the DPoP key.
_JKT = re.compile(r"[A-Za-z0-9_-]{43}")
_WHAT = "access token"


class AccessTokenRejected(MissionError):
    """The access token is refused; ``reason`` says which check failed (one of
    :data:`REASONS`), ``description`` says it for a person and for the
    ``error_description`` of ``WWW-Authenticate`` (RFC 6750 section 3). A Resource Server
    answers 401 ``invalid_token`` (RFC 6750 section 3.1)."""

    error = "invalid_token"
    status = 401

    def __init__(self, reason: str, description: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"{reason!r} is not an access token refusal reason")
        super().__init__(description)
        self.reason = reason

    def __repr__(self) -> str:
        return f"AccessTokenRejected({self.reason!r}, {self.description!r})"


@dataclass(frozen=True)
class AccessToken:
    """A verified Mission-bound access token. ``claims`` is the whole claim set (RFC 9068
    section 2.2 lets an issuer add claims); the other members are its checked claims.
    ``actors`` is the ``act`` chain, the immediate actor first; () for an undelegated
    token."""

    issuer: str
    subject: str
    client_id: str
    jti: str
    audiences: tuple[str, ...]
    issued_at: datetime
    expires_at: datetime
    jkt: str | None
    mission: MissionEvidence
    authorization_details: tuple[Mapping[str, Any], ...]
    actors: tuple[Actor, ...]
    claims: Mapping[str, Any] = field(repr=False)

    @property
    def delegated(self) -> bool:
        """Whether the token was issued to a delegate (it carries ``act``)."""
        return bool(self.actors)


_REGISTRY = AllowListRegistry(SUPPORTED_ALGS, max_length=MAX_ACCESS_TOKEN_LENGTH)


def is_access_token_type(value: Any) -> bool:
    """Whether a JOSE ``typ`` names an RFC 9068 access token: ``at+jwt`` or its full media
    type ``application/at+jwt``, compared case-insensitively (RFC 7515 section 4.1.9). Not
    ``JWT``, not a missing ``typ``."""
    return isinstance(value, str) and value.lower() in (ACCESS_TOKEN_TYPE,
                                                        ACCESS_TOKEN_MEDIA_TYPE)


def verify_access_token(
    value: str,
    *,
    keys: KeySource,
    issuer: str,
    audience: str,
    now: datetime | None = None,
    leeway: float = DEFAULT_LEEWAY_SECONDS,
    max_lifetime_seconds: float | None = None,
) -> AccessToken:
    """The checked access token ``value``; raises :class:`AccessTokenRejected` otherwise.

    ``keys`` holds the issuer's keys (:class:`~missionbound.protocol.jwks.JwksCache` on its
    ``jwks_uri``, or :class:`~missionbound.protocol.jwks.StaticKeys`). ``issuer`` must be
    ``iss`` exactly; ``audience`` (this resource's identifier, RFC 8707) must be ``aud`` or
    one of its members. ``leeway`` (seconds) absorbs clock differences for ``exp``, ``iat``
    and ``nbf``. ``max_lifetime_seconds``, when given, bounds ``exp - iat``. ``now``
    defaults to the current time.

    May also raise :class:`~missionbound.protocol.jwks.JwksUnavailable` (see the module
    documentation).
    """
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if leeway < 0 or (max_lifetime_seconds is not None and max_lifetime_seconds <= 0):
        raise ValueError("leeway must not be negative, max_lifetime_seconds must be positive")
    if not issuer or not audience:
        raise ValueError("issuer and audience are required")

    header, claims = read_compact(value, _WHAT, _malformed, max_length=MAX_ACCESS_TOKEN_LENGTH)
    if not is_access_token_type(header.get("typ")):
        raise AccessTokenRejected(
            WRONG_TYPE, f'the header "typ" must be "{ACCESS_TOKEN_TYPE}" (an access token, '
            "RFC 9068 section 4)")
    try:
        verify_signed_jws(value, header, keys=keys, registry=_REGISTRY, what=_WHAT,
                          max_kid_length=MAX_KID_LENGTH)
    except JwsRefused as exc:
        raise AccessTokenRejected(_JWS_REASONS[exc.reason], exc.description) from exc
    iss = _check_issuer(claims, issuer)
    audiences = _check_audience(claims, audience)
    iat, exp = _check_times(claims, now.timestamp(), leeway, max_lifetime_seconds)
    subject = _string_claim(claims, "sub")
    client_id = _string_claim(claims, "client_id")
    jti = _string_claim(claims, "jti")
    mission = _check_mission(claims)
    details = _check_authorization_details(claims)
    jkt = _check_confirmation(claims)
    actors = _check_actors(claims)
    return AccessToken(
        issuer=iss, subject=subject, client_id=client_id, jti=jti, audiences=audiences,
        issued_at=datetime.fromtimestamp(iat, UTC), expires_at=datetime.fromtimestamp(exp, UTC),
        jkt=jkt, mission=mission, authorization_details=details, actors=actors, claims=claims)


# -- checks ----------------------------------------------------------------------------------


def _malformed(description: str) -> AccessTokenRejected:
    return AccessTokenRejected(MALFORMED, description)


def _check_issuer(claims: dict[str, Any], issuer: str) -> str:
    if "iss" not in claims:
        raise AccessTokenRejected(MISSING_CLAIM, 'the access token lacks "iss"')
    iss = claims["iss"]
    if not isinstance(iss, str):
        raise AccessTokenRejected(INVALID_CLAIM, 'the access token "iss" must be a string')
    if iss != issuer:
        # RFC 9068 section 4 item 3: "iss" MUST exactly match the expected issuer.
        raise AccessTokenRejected(
            WRONG_ISSUER,
            f"the access token was issued by {iss[:200]!r}, not the expected {issuer!r}")
    return iss


def _check_audience(claims: dict[str, Any], audience: str) -> tuple[str, ...]:
    # RFC 9068 section 4 item 4 and RFC 7519 section 4.1.3: a string or an array of strings
    # that must contain this resource's identifier.
    if "aud" not in claims:
        raise AccessTokenRejected(MISSING_CLAIM, 'the access token lacks "aud"')
    aud = claims["aud"]
    audiences = (aud,) if isinstance(aud, str) else aud
    if not isinstance(audiences, list | tuple) or not audiences \
            or not all(isinstance(member, str) and member for member in audiences):
        raise AccessTokenRejected(
            INVALID_CLAIM, 'the access token "aud" must be a string or an array of strings')
    if audience not in audiences:
        raise AccessTokenRejected(
            WRONG_AUDIENCE, f"the access token is not meant for {audience!r}")
    return tuple(audiences)


def _check_times(claims: dict[str, Any], now: float, leeway: float,
                 max_lifetime: float | None) -> tuple[float, float]:
    try:
        return check_times(claims, _WHAT, now=now, leeway=leeway, max_lifetime=max_lifetime)
    except ClaimRefused as exc:
        raise AccessTokenRejected(exc.reason, exc.description) from None


def _string_claim(claims: dict[str, Any], name: str) -> str:
    try:
        return string_claim(claims, name, _WHAT, MAX_NAME_LENGTH)
    except ClaimRefused as exc:
        raise AccessTokenRejected(exc.reason, exc.description) from None


def _check_mission(claims: dict[str, Any]) -> MissionEvidence:
    """``mission``: ``{id, origin, authority_hash}`` (protocol/mission_claim.py)."""
    if "mission" not in claims:
        # PROFILE.md section 2, RS-B: the claim is required; a token stripped of it is not
        # served as a plain RFC 9068 token (downgrade by omission).
        raise AccessTokenRejected(
            MISSING_MISSION, 'the access token lacks the "mission" claim; this resource '
            "accepts Mission-bound tokens only")
    try:
        return parse_mission_claim(claims["mission"], "mission")
    except InvalidMissionClaim as exc:
        raise AccessTokenRejected(INVALID_MISSION, str(exc)) from None


def _check_authorization_details(claims: dict[str, Any]) -> tuple[Mapping[str, Any], ...]:
    """RFC 9396 section 2: an array of objects, each with a string ``type``. A Mission token
    always carries at least one entry (the AS refuses an empty narrowing, invalid_target)."""
    if "authorization_details" not in claims:
        raise AccessTokenRejected(
            MISSING_CLAIM, 'the access token lacks "authorization_details", the authority of '
            "a Mission-bound token")
    details = claims["authorization_details"]
    if not isinstance(details, list) or not details or not all(
            isinstance(entry, dict) and isinstance(entry.get("type"), str) and entry["type"]
            for entry in details):
        raise AccessTokenRejected(
            INVALID_AUTHORIZATION_DETAILS, 'the access token "authorization_details" must be '
            'a non-empty array of objects each naming its "type" (RFC 9396 section 2)')
    return tuple(details)


def _check_confirmation(claims: dict[str, Any]) -> str | None:
    if "cnf" not in claims:
        return None
    cnf = claims["cnf"]
    if not isinstance(cnf, dict):
        raise AccessTokenRejected(INVALID_CONFIRMATION, 'the access token "cnf" is not an object')
    jkt = cnf.get("jkt")
    if not isinstance(jkt, str) or not _JKT.fullmatch(jkt):
        # A binding this verifier cannot check (or a broken one) must not leave a bearer token.
        raise AccessTokenRejected(
            INVALID_CONFIRMATION, 'the access token "cnf" must hold "jkt", the SHA-256 JWK '
            "thumbprint of a DPoP key (RFC 9449 section 6.1)")
    return jkt


def _check_actors(claims: dict[str, Any]) -> tuple[Actor, ...]:
    if "act" not in claims:
        return ()
    act = claims["act"]
    if act is None:
        raise AccessTokenRejected(INVALID_ACTOR, 'the access token "act" is not an object')
    try:
        return actor_chain(act)
    except InvalidActorChain as exc:
        raise AccessTokenRejected(INVALID_ACTOR, f'the access token "act": {exc}') from exc


__all__ = [
    "ACCESS_TOKEN_MEDIA_TYPE",
    "ACCESS_TOKEN_TYPE",
    "MAX_ACCESS_TOKEN_LENGTH",
    "REASONS",
    "SUPPORTED_ALGS",
    "AccessToken",
    "AccessTokenRejected",
    "MissionEvidence",
    "is_access_token_type",
    "verify_access_token",
]
