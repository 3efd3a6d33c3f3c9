"""Transaction Tokens (draft-ietf-oauth-transaction-tokens-10): verifying one inside the
trust domain, as a workload that received it in the ``Txn-Token`` HTTP header.

:func:`verify_txn_token` makes the checks of the draft's section "Txn-Token Validation" (the
JWS signature, ``aud`` names this trust domain, not expired) and those this profile adds
(docs/transaction-tokens.md):

- a JWS in compact serialization whose header says ``typ: txntoken+jwt`` (section "JWT
  Header"; RFC 8725 section 3.11: an access token, an ID-JAG or a SET never passes as one);
- an asymmetric algorithm only, and only with a key of the trust domain's JWK Set named by
  ``kid`` whose type fits the algorithm: never ``none``, never an HMAC keyed with the
  published public key (RFC 8725 sections 2.1 and 3.1), never a key the token brings along
  (``jwk``, ``jku``, ``x5u``, ``x5c`` are not read);
- the claims the draft requires (``iat``, ``aud``, ``exp``, ``txn``, ``sub``, ``scope``,
  ``req_wl``), each well-typed, ``iat`` not in the future, ``exp`` not past and not further
  from ``iat`` than a Txn-Token lives (the draft's section "Txn-Token Lifetime": short);
- ``tctx`` an object holding ``mission``, the Mission object of the access token the
  Txn-Token was issued for (``{id, origin, authority_hash}``, PROFILE.md section 8), and
  ``rctx`` an object when present.

The Mission in ``tctx`` is **evidence, never authority** (issuance digest 9.3): it says
which Mission the transaction runs under, for logs, audit joins and correlation. Nothing a
Txn-Token says widens what a workload may do; a workload decides from its own policy and the
token's ``scope``, and asks the Mission's issuer (introspection, Mission Status) when the
Mission's state matters.

Every refusal raises :class:`TxnTokenRejected` (wire ``invalid_token``, 401, as RFC 6750
section 3.1 names a bad credential) with a ``reason`` code. When the key source cannot tell
just now whether the trust domain has the key (its JWKS endpoint is down, or a refetch is
rate-limited), :class:`~missionbound.protocol.jwks.JwksUnavailable` propagates unchanged:
that is no verdict on the token, and the caller should answer "try again later" (503).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

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

# The draft's section "JWT Header" and its media type registration.
TXN_TOKEN_TYPE = "txntoken+jwt"
TXN_TOKEN_MEDIA_TYPE = f"application/{TXN_TOKEN_TYPE}"
# The HTTP header a workload sends the Txn-Token in (the draft's section "Txn-Token HTTP
# Header"; never ``Authorization``, which may carry the workload's own credential).
TXN_TOKEN_HEADER = "Txn-Token"
# The token type identifier of the Txn-Token request (RFC 8693 ``requested_token_type``).
TXN_TOKEN_TYPE_URN = "urn:ietf:params:oauth:token-type:txn_token"

# Asymmetric signatures only (protocol/jwks.py says which key each needs).
SUPPORTED_ALGS: tuple[str, ...] = SIGNATURE_ALGS

# A Txn-Token of this AS is a few KiB (request_details and request_context are bounded at
# the token service); 64 KiB leaves room for RSA and other token services' claims.
MAX_TXN_TOKEN_LENGTH = 65536
DEFAULT_LEEWAY_SECONDS = 30
# The AS issues Txn-Tokens for at most 300 s (txn_token_lifetime_seconds); a longer one is
# not a Txn-Token this trust domain's service would issue.
DEFAULT_MAX_LIFETIME_SECONDS = 300
MAX_TXN_LENGTH = 255
MAX_NAME_LENGTH = 1024

# Reason codes of :class:`TxnTokenRejected`.
MALFORMED = "malformed"
WRONG_TYPE = "wrong_type"
UNSUPPORTED_ALGORITHM = "unsupported_algorithm"
UNKNOWN_KEY = "unknown_key"
BAD_SIGNATURE = "bad_signature"
WRONG_AUDIENCE = "wrong_audience"
WRONG_ISSUER = "wrong_issuer"
INVALID_MISSION = "invalid_mission"
REASONS = frozenset({
    MALFORMED, WRONG_TYPE, UNSUPPORTED_ALGORITHM, UNKNOWN_KEY, BAD_SIGNATURE, WRONG_AUDIENCE,
    WRONG_ISSUER, EXPIRED, NOT_YET_VALID, TOO_LONG_LIVED, MISSING_CLAIM, INVALID_CLAIM,
    INVALID_MISSION,
})

# The reason of each refusal of the JWS checks shared with SETs and origins' JWTs.
# How this verifier names its token in messages.
_WHAT = "Txn-Token"

_JWS_REASONS = {
    JwsRefused.MALFORMED: MALFORMED,
    JwsRefused.UNSUPPORTED_ALGORITHM: UNSUPPORTED_ALGORITHM,
    JwsRefused.UNKNOWN_KEY: UNKNOWN_KEY,
    JwsRefused.UNSUITABLE_KEY: UNSUPPORTED_ALGORITHM,
    JwsRefused.BAD_SIGNATURE: BAD_SIGNATURE,
}


class TxnTokenRejected(MissionError):
    """The Txn-Token is refused; ``reason`` says which check failed (one of
    :data:`REASONS`), ``description`` says it for a person. A workload answers 401
    ``invalid_token`` (RFC 6750 section 3.1)."""

    error = "invalid_token"
    status = 401

    def __init__(self, reason: str, description: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"{reason!r} is not a Txn-Token refusal reason")
        super().__init__(description)
        self.reason = reason

    def __repr__(self) -> str:
        return f"TxnTokenRejected({self.reason!r}, {self.description!r})"


@dataclass(frozen=True)
class TxnToken:
    """A verified Txn-Token. ``claims`` is the whole claim set (the draft: recipients ignore
    claims they do not understand); the other members are its checked claims."""

    txn: str
    sub: str
    scope: tuple[str, ...]
    aud: str
    req_wl: str
    iat: float
    exp: float
    mission: MissionEvidence
    tctx: Mapping[str, Any]
    rctx: Mapping[str, Any]
    iss: str | None
    claims: Mapping[str, Any] = field(repr=False)

    def has_scope(self, value: str) -> bool:
        """Whether ``scope`` names ``value`` (scope values are case-sensitive, RFC 6749
        section 3.3)."""
        return value in self.scope


_REGISTRY = AllowListRegistry(SUPPORTED_ALGS, max_length=MAX_TXN_TOKEN_LENGTH)


def is_txn_token_type(value: Any) -> bool:
    """Whether a JOSE ``typ`` names a Txn-Token: ``txntoken+jwt`` or its full media type
    ``application/txntoken+jwt`` (RFC 7515 section 4.1.9: the ``application/`` prefix may be
    left out, and media types compare case-insensitively). Nothing else: not ``JWT``, not
    ``at+jwt``, not a missing ``typ``."""
    return isinstance(value, str) and value.lower() in (TXN_TOKEN_TYPE, TXN_TOKEN_MEDIA_TYPE)


def verify_txn_token(
    value: str,
    *,
    keys: KeySource,
    trust_domain: str,
    now: datetime | None = None,
    leeway: float = DEFAULT_LEEWAY_SECONDS,
    issuer: str | None = None,
    max_lifetime_seconds: float = DEFAULT_MAX_LIFETIME_SECONDS,
) -> TxnToken:
    """The checked Txn-Token ``value``; raises :class:`TxnTokenRejected` otherwise.

    ``keys`` holds the trust domain's token service keys
    (:class:`~missionbound.protocol.jwks.JwksCache` on the AS's ``/jwks``, or
    :class:`~missionbound.protocol.jwks.StaticKeys`). ``trust_domain`` must be ``aud``
    exactly. ``leeway`` (seconds) absorbs clock differences for ``exp``, ``iat`` and
    ``nbf``. ``issuer``, when given, must be ``iss`` (the draft makes ``iss`` optional; this
    AS sets it). ``now`` defaults to the current time.

    May also raise :class:`~missionbound.protocol.jwks.JwksUnavailable` (see the module
    documentation).
    """
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if leeway < 0 or max_lifetime_seconds <= 0:
        raise ValueError("leeway must not be negative, max_lifetime_seconds must be positive")
    if not trust_domain:
        raise ValueError("trust_domain is required: a Txn-Token is valid in one trust domain")

    header, claims = read_compact(value, "Txn-Token", _malformed,
                                  max_length=MAX_TXN_TOKEN_LENGTH)
    _check_type(header)
    try:
        verify_signed_jws(value, header, keys=keys, registry=_REGISTRY, what="Txn-Token")
    except JwsRefused as exc:
        raise TxnTokenRejected(_JWS_REASONS[exc.reason], exc.description) from exc
    aud = _check_audience(claims, trust_domain)
    iss = _check_issuer(claims, issuer)
    iat, exp = _check_times(claims, now.timestamp(), leeway, max_lifetime_seconds)
    txn = _string_claim(claims, "txn", MAX_TXN_LENGTH)
    sub = _string_claim(claims, "sub", MAX_NAME_LENGTH)
    req_wl = _string_claim(claims, "req_wl", MAX_NAME_LENGTH)
    scope = _check_scope(claims)
    tctx = _object_claim(claims, "tctx", required=True)
    rctx = _object_claim(claims, "rctx", required=False)
    mission = _check_mission(tctx)
    return TxnToken(txn=txn, sub=sub, scope=scope, aud=aud, req_wl=req_wl, iat=iat, exp=exp,
                    mission=mission, tctx=tctx, rctx=rctx, iss=iss, claims=claims)


# -- checks ----------------------------------------------------------------------------------


def _malformed(description: str) -> TxnTokenRejected:
    return TxnTokenRejected(MALFORMED, description)


def _check_type(header: dict[str, Any]) -> None:
    if not is_txn_token_type(header.get("typ")):
        raise TxnTokenRejected(
            WRONG_TYPE, f'the header "typ" must be "{TXN_TOKEN_TYPE}" (a Txn-Token, '
            "draft-ietf-oauth-transaction-tokens section 'JWT Header')")


def _check_audience(claims: dict[str, Any], trust_domain: str) -> str:
    # The draft: "aud" identifies the one trust domain the token is valid in, and a
    # Txn-Token MUST NOT be accepted outside it. A one-member array says the same (RFC 7519
    # section 4.1.3); more members would make it valid elsewhere too.
    if "aud" not in claims:
        raise TxnTokenRejected(MISSING_CLAIM, 'the Txn-Token lacks "aud" (its trust domain)')
    aud = claims["aud"]
    if isinstance(aud, list) and len(aud) == 1:
        aud = aud[0]
    if not isinstance(aud, str):
        raise TxnTokenRejected(
            WRONG_AUDIENCE, 'the Txn-Token "aud" must name exactly one trust domain')
    if aud != trust_domain:
        raise TxnTokenRejected(
            WRONG_AUDIENCE,
            f"the Txn-Token is for the trust domain {aud[:200]!r}, not {trust_domain!r}")
    return aud


def _check_issuer(claims: dict[str, Any], issuer: str | None) -> str | None:
    iss = claims.get("iss")
    if iss is not None and not isinstance(iss, str):
        raise TxnTokenRejected(INVALID_CLAIM, 'the Txn-Token "iss" must be a string')
    if issuer is not None and iss != issuer:
        raise TxnTokenRejected(
            WRONG_ISSUER,
            f"the Txn-Token was issued by {str(iss)[:200]!r}, not the expected {issuer!r}")
    return iss


def _check_times(claims: dict[str, Any], now: float, leeway: float,
                 max_lifetime: float | None) -> tuple[float, float]:
    try:
        return check_times(claims, _WHAT, now=now, leeway=leeway, max_lifetime=max_lifetime)
    except ClaimRefused as exc:
        raise TxnTokenRejected(exc.reason, exc.description) from None


def _string_claim(claims: dict[str, Any], name: str, max_length: int) -> str:
    try:
        return string_claim(claims, name, _WHAT, max_length)
    except ClaimRefused as exc:
        raise TxnTokenRejected(exc.reason, exc.description) from None


def _check_scope(claims: dict[str, Any]) -> tuple[str, ...]:
    # RFC 8693 section 4.2: a space-separated list of scope values (RFC 6749 section 3.3).
    raw = _string_claim(claims, "scope", 4096)
    values = tuple(raw.split(" "))
    if any(not value for value in values):
        raise TxnTokenRejected(
            INVALID_CLAIM, 'the Txn-Token "scope" must be scope values separated by single '
            "spaces")
    return values


def _object_claim(claims: dict[str, Any], name: str, *, required: bool) -> dict[str, Any]:
    if name not in claims:
        if required:
            raise TxnTokenRejected(MISSING_CLAIM, f'the Txn-Token lacks "{name}"')
        return {}
    value = claims[name]
    if not isinstance(value, dict):
        raise TxnTokenRejected(INVALID_CLAIM, f'the Txn-Token "{name}" must be a JSON object')
    return value


def _check_mission(tctx: dict[str, Any]) -> MissionEvidence:
    """``tctx.mission``: the access token's ``mission`` object (protocol/mission_claim.py)."""
    if "mission" not in tctx:
        raise TxnTokenRejected(MISSING_CLAIM, 'the Txn-Token "tctx" lacks "mission"')
    try:
        return parse_mission_claim(tctx["mission"], "tctx.mission")
    except InvalidMissionClaim as exc:
        raise TxnTokenRejected(INVALID_MISSION, str(exc)) from None


__all__ = [
    "SUPPORTED_ALGS",
    "TXN_TOKEN_HEADER",
    "TXN_TOKEN_MEDIA_TYPE",
    "TXN_TOKEN_TYPE",
    "TXN_TOKEN_TYPE_URN",
    "MissionEvidence",
    "TxnToken",
    "TxnTokenRejected",
    "is_txn_token_type",
    "verify_txn_token",
]
