"""Permit JWTs (PROFILE.md section 12, "Permits"; runtime-digest sections 4.1-4.5): what a tool
runtime checks before it releases a consequential effect. Pure: no I/O, no store.

A permit is the PDP's signed ``decision: true`` for one call: header ``typ``
``mission-permit+jwt``, claims ``iss`` (the PDP), ``aud`` (the executing resource), ``jti``
(the ``evaluation_id``), ``iat``, ``exp`` (at most 60 s after ``iat``), ``mission {id,
origin, authority_hash}``, ``policy_version``, ``tool_id``, ``action``, ``parameter_digest``,
``sub``, ``client_id``, ``act`` (when delegated), ``cnf {jkt}`` (when the caller's
credential is key-bound) and ``use_limit`` (when single use).

:func:`verify_permit_jwt` runs every check that needs nothing but the token, the keys and the
call about to be made, cheapest first, and raises :class:`PermitRefused` with the error the
execution evidence records (section 12): ``permit_invalid`` (not a permit of this PDP: shape,
``typ``, algorithm, key, signature, ``iss``, required claims), ``permit_expired``,
``binding_mismatch`` (another resource, another tool, another presenter key) and
``parameter_mismatch`` (the arguments are not the ones permitted). Single use comes last and
from outside (:func:`consume_permit` with an injected ``consume``), so a refused permit is
never consumed (runtime-digest 4.5).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from joserfc.jwk import Key, KeySet

from missionbound.mission.canonical import digest_json
from missionbound.mission.errors import InvalidRequest, MissionError
from missionbound.protocol.jose_segments import (
    AllowListRegistry,
    JwsRefused,
    read_compact,
    verify_signed_jws,
)
from missionbound.protocol.jwks import SIGNATURE_ALGS, KeyNotFound, KeySource
from missionbound.protocol.jwt_claims import ClaimRefused, numeric_date
from missionbound.protocol.mission_claim import (
    InvalidMissionClaim,
    MissionEvidence,
    parse_mission_claim,
)

PERMIT_TYPE = "mission-permit+jwt"
PERMIT_MEDIA_TYPE = f"application/{PERMIT_TYPE}"
# PROFILE.md section 12: exp <= 60 s.
MAX_PERMIT_LIFETIME = timedelta(seconds=60)
# Clock difference a tool runtime forgives on exp/iat. Small on purpose: a permit lives a
# minute, and the leeway lengthens every permit (decision M24).
DEFAULT_LEEWAY_SECONDS = 5
# How long a consumed permit's jti is remembered after its exp: far beyond the leeway, so
# the PDP can tell "consumed" from "never used" when an idempotent retry comes after the
# permit expired (runtime/idempotency.py; decision M27).
PERMIT_TOMBSTONE_HORIZON = timedelta(hours=24)
MAX_PERMIT_LENGTH = 65536
MAX_NAME_LENGTH = 1024
MAX_KID_LENGTH = 255

# The errors of PROFILE.md section 12 (execution evidence ``error``), plus permit_invalid.
PARAMETER_MISMATCH = "parameter_mismatch"
PERMIT_CONSUMED = "permit_consumed"
PERMIT_EXPIRED = "permit_expired"
BINDING_MISMATCH = "binding_mismatch"
PERMIT_INVALID = "permit_invalid"
# A deployment value (runtime-digest 3.8 allows them): the Mission is no longer active when
# a tool runtime that can read its state (runtime/permits.py) is about to spend the permit.
MISSION_INACTIVE = "mission_inactive"
ERRORS = frozenset({
    PARAMETER_MISMATCH, PERMIT_CONSUMED, PERMIT_EXPIRED, BINDING_MISMATCH, PERMIT_INVALID,
    MISSION_INACTIVE,
})

_WHAT = "permit"
_REGISTRY = AllowListRegistry(SIGNATURE_ALGS, max_length=MAX_PERMIT_LENGTH)

KeyLookup = Callable[[str], Key | None]
Consume = Callable[[str, datetime], bool]


class PermitRefused(MissionError):
    """The tool runtime must not run the call; ``error`` is the execution evidence's
    ``error`` (one of :data:`ERRORS`), ``description`` says why for a person."""

    status = 403

    def __init__(self, error: str, description: str) -> None:
        if error not in ERRORS:
            raise ValueError(f"{error!r} is not a permit refusal")
        super().__init__(description)
        self.error = error

    def __repr__(self) -> str:
        return f"PermitRefused({self.error!r}, {self.description!r})"


@dataclass(frozen=True)
class PermitClaims:
    """A permit that passed every check of :func:`verify_permit_jwt`. ``evaluation_id`` is
    its ``jti``; ``act`` the nested RFC 8693 actor object or None; ``jkt`` the key it is
    bound to or None; ``use_limit`` None when the PDP set no use limit."""

    issuer: str
    audience: str
    evaluation_id: str
    issued_at: datetime
    expires_at: datetime
    mission: MissionEvidence
    policy_version: str
    tool_id: str
    action: str
    parameter_digest: str
    subject: str
    client_id: str
    act: Mapping[str, Any] | None
    jkt: str | None
    use_limit: int | None
    claims: Mapping[str, Any] = field(repr=False)

    @property
    def remember_until(self) -> datetime:
        """How long the single-use store keeps the consumed ``jti``."""
        return self.expires_at + PERMIT_TOMBSTONE_HORIZON


def is_permit_type(value: Any) -> bool:
    """``typ`` ``mission-permit+jwt`` or its media type, case-insensitive (RFC 7515 4.1.9)."""
    return isinstance(value, str) and value.lower() in (PERMIT_TYPE, PERMIT_MEDIA_TYPE)


def arguments_digest(arguments: Any) -> str:
    """``parameter_digest`` of ``arguments`` (PROFILE.md section 12; runtime-digest 4.3):
    ``sha-256:`` + base64url(SHA-256(JCS(arguments))), the arguments object exactly as it
    will run. The same bytes as :func:`missionbound.runtime.digests.parameter_digest`
    (which the PDP uses); kept here because an enforcement point imports only
    ``protocol/``. Raises :class:`PermitRefused` ``parameter_mismatch`` for anything that is
    not a float-free JSON object: no permit was ever issued over such arguments."""
    if not isinstance(arguments, Mapping):
        raise PermitRefused(PARAMETER_MISMATCH, "the tool arguments are not a JSON object")
    if _holds_float(arguments):
        raise PermitRefused(PARAMETER_MISMATCH, "the tool arguments hold a non-integer "
                            "number; decimals travel as strings")
    try:
        return digest_json(dict(arguments))
    except InvalidRequest as exc:
        raise PermitRefused(PARAMETER_MISMATCH,
                            f"the tool arguments cannot be digested: {exc.description}") from None


def _holds_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, Mapping):
        return any(_holds_float(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_float(item) for item in value)
    return False


class _LookupKeys:
    """A :class:`KeySource` over a plain ``kid -> key`` function."""

    def __init__(self, lookup: KeyLookup) -> None:
        self._lookup = lookup

    def key_for(self, kid: str) -> Key:
        key = self._lookup(kid)
        if key is None:
            raise KeyNotFound(kid)
        return key

    def key_set(self) -> KeySet:  # pragma: no cover - a verifier asks by kid only
        raise NotImplementedError("a key lookup function cannot list its keys")


def verify_permit_jwt(
    token: str,
    *,
    key_for: KeySource | KeyLookup,
    issuer: str,
    audience: str,
    tool_id: str,
    arguments: Mapping[str, Any],
    presenter_jkt: str | None,
    now: datetime,
    leeway: float = DEFAULT_LEEWAY_SECONDS,
    require_single_use: bool = False,
) -> PermitClaims:
    """Check ``token`` as a permit for running ``tool_id`` with exactly ``arguments`` at
    ``audience``, presented by the holder of the key whose RFC 7638 thumbprint is
    ``presenter_jkt`` (None when the presenter proved no key). Raises
    :class:`PermitRefused`; consumes nothing.

    ``key_for`` is the PDP's keys: a :class:`~missionbound.protocol.jwks.KeySource`
    (``StaticKeys`` of its JWK Set, ``JwksCache`` on its ``jwks_uri``) or a function from
    ``kid`` to key (None: unknown). ``issuer`` is the PDP's identifier (``iss``),
    ``audience`` this resource's. ``require_single_use``: the tool runtime classes the
    action high-consequence itself, so a permit without ``use_limit: 1`` is refused
    (runtime-digest 4.5 step 4). A :class:`~missionbound.protocol.jwks.JwksUnavailable` of
    the key source propagates: no verdict, try again later.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if leeway < 0:
        raise ValueError("leeway must not be negative")
    keys = key_for if isinstance(key_for, KeySource) else _LookupKeys(key_for)
    # 1. Is it a permit of this PDP at all (permit_invalid)?
    header, claims = read_compact(token, _WHAT, _invalid, max_length=MAX_PERMIT_LENGTH)
    if not is_permit_type(header.get("typ")):
        raise _invalid(f'the header "typ" must be "{PERMIT_TYPE}"')
    try:
        verify_signed_jws(token, header, keys=keys, registry=_REGISTRY, what=_WHAT,
                          max_kid_length=MAX_KID_LENGTH)
    except JwsRefused as exc:
        raise _invalid(exc.description) from exc
    if claims.get("iss") != issuer:
        raise _invalid(f"the permit was not issued by {issuer!r}")
    permit = _read_claims(claims)
    # 2. Still valid? Expiry before binding: an expired permit is refused as expired
    #    whatever else is wrong with the call (runtime-digest 4.5 step 3).
    now_s = now.timestamp()
    if now_s >= permit.expires_at.timestamp() + leeway:
        raise PermitRefused(PERMIT_EXPIRED, f"the permit expired "
                            f"{now_s - permit.expires_at.timestamp():.0f} s ago")
    if permit.issued_at.timestamp() > now_s + leeway:
        raise _invalid("the permit was issued in the future")
    if require_single_use and permit.use_limit != 1:
        raise _invalid('this action needs a single-use permit ("use_limit": 1)')
    # 3. Bound to this resource, this tool, this presenter (binding_mismatch).
    if permit.audience != audience:
        raise PermitRefused(BINDING_MISMATCH, f"the permit is for {permit.audience[:200]!r}, "
                            f"not this resource {audience!r}")
    if permit.tool_id != tool_id:
        raise PermitRefused(BINDING_MISMATCH, f"the permit is for the tool "
                            f"{permit.tool_id[:200]!r}, not {tool_id[:200]!r}")
    if permit.jkt is not None and presenter_jkt != permit.jkt:
        raise PermitRefused(BINDING_MISMATCH, "the permit is bound to another key than the "
                            "presenter's (cnf.jkt)")
    # 4. The exact arguments (parameter_mismatch): last, the only check that hashes.
    if arguments_digest(arguments) != permit.parameter_digest:
        raise PermitRefused(PARAMETER_MISMATCH, "the arguments differ from the ones the "
                            "permit was issued for (parameter_digest)")
    return permit


def consume_permit(permit: PermitClaims, consume: Consume) -> None:
    """Spend a verified permit that carries ``use_limit``: ``consume(jti, remember_until)``
    must record the ``jti`` atomically for every replica and return False when it was
    recorded before (``permit_consumed``). A permit without ``use_limit`` has no
    PDP-enforced limit (runtime-digest 3.5) and is not recorded."""
    if permit.use_limit is None:
        return
    if not consume(permit.evaluation_id, permit.remember_until):
        raise PermitRefused(PERMIT_CONSUMED, "the permit was used already")


def _invalid(description: str) -> PermitRefused:
    return PermitRefused(PERMIT_INVALID, description)


def _string(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_LENGTH:
        raise _invalid(f'the permit "{name}" must be a string of 1 to {MAX_NAME_LENGTH} '
                       "characters")
    return value


def _read_claims(claims: dict[str, Any]) -> PermitClaims:
    try:
        iat = numeric_date(claims, "iat", _WHAT, required=True)
        exp = numeric_date(claims, "exp", _WHAT, required=True)
    except ClaimRefused as exc:
        raise _invalid(exc.description) from None
    assert iat is not None and exp is not None
    if not iat < exp <= iat + MAX_PERMIT_LIFETIME.total_seconds():
        raise _invalid("a permit lives more than 0 and at most 60 s (exp - iat)")
    try:
        mission = parse_mission_claim(claims.get("mission"), "mission")
    except InvalidMissionClaim as exc:
        raise _invalid(str(exc)) from None
    act = claims.get("act")
    if act is not None and not isinstance(act, dict):
        raise _invalid('the permit "act" must be an object')
    jkt: str | None = None
    if "cnf" in claims:
        cnf = claims["cnf"]
        jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
        if not isinstance(jkt, str) or not jkt:
            raise _invalid('the permit "cnf" must hold "jkt"')
    use_limit = claims.get("use_limit")
    # Only single use is enforceable by a single-use store; anything else fails closed.
    if use_limit is not None and (type(use_limit) is not int or use_limit != 1):
        raise _invalid('the permit "use_limit" must be 1 when present')
    return PermitClaims(
        issuer=_string(claims, "iss"),
        audience=_string(claims, "aud"),
        evaluation_id=_string(claims, "jti"),
        issued_at=datetime.fromtimestamp(iat, UTC),
        expires_at=datetime.fromtimestamp(exp, UTC),
        mission=mission,
        policy_version=_string(claims, "policy_version"),
        tool_id=_string(claims, "tool_id"),
        action=_string(claims, "action"),
        parameter_digest=_string(claims, "parameter_digest"),
        subject=_string(claims, "sub"),
        client_id=_string(claims, "client_id"),
        act=act,
        jkt=jkt,
        use_limit=use_limit,
        claims=claims,
    )


__all__ = [
    "BINDING_MISMATCH",
    "DEFAULT_LEEWAY_SECONDS",
    "ERRORS",
    "MAX_PERMIT_LIFETIME",
    "PARAMETER_MISMATCH",
    "PERMIT_CONSUMED",
    "PERMIT_EXPIRED",
    "PERMIT_INVALID",
    "PERMIT_TOMBSTONE_HORIZON",
    "PERMIT_TYPE",
    "Consume",
    "KeyLookup",
    "PermitClaims",
    "PermitRefused",
    "arguments_digest",
    "consume_permit",
    "is_permit_type",
    "verify_permit_jwt",
]
