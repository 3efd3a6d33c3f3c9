"""Validating an ID-JAG at the Resource AS (issuance digest 9.2; PROFILE.md section 11).

:func:`validate_id_jag` is every check of the grant itself that needs no database: the
origin trusted by local configuration first (an ``iss`` this AS was not configured to trust is
refused before anything else is read into it), ``iss`` equal to ``mission.origin``, the
signature by a key of that origin's JWKS, explicit ``typ`` ``oauth-id-jag+jwt``, asymmetric
algorithms only, ``aud`` this AS, ``iat``/``exp`` with :data:`LEEWAY` and a lifetime of at
most :data:`MAX_LIFETIME`, a ``jti``, ``cnf.jkt`` (a grant that is not sender-constrained is
never accepted), a well-formed ``mission`` and ``authorization_details`` that this AS can serve
(:func:`served_entries`). Possession of ``cnf.jkt``, the one-time ``jti`` and the Mission's
state are the grant's job (issuer/jwt_bearer.py).

Errors (issuance digest 9.2, the [H] table): ``invalid_grant`` for anything wrong with the
grant; ``invalid_target`` for authority this AS does not serve (a resource not in its catalog,
an action or constraint key it does not know: fail closed); 503 ``temporarily_unavailable``
when the origin's keys cannot be fetched just now.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from missionbound.config import TrustedOrigin
from missionbound.issuer.id_jag import ID_JAG_TYPE
from missionbound.issuer.trusted_origins import (
    TrustedOrigins,
    UntrustedToken,
    read_unverified,
    verify_origin_jwt,
)
from missionbound.mission.authority import ENTRY_MEMBERS, ENTRY_TYPE, Entry, parse_entry
from missionbound.mission.catalog import Catalog
from missionbound.mission.errors import InvalidAuthorizationDetails, InvalidTarget
from missionbound.mission.record import MISSION_ID
from missionbound.store.errors import InvalidGrant

# RFC 7523 section 3 items 4-6: "a reasonable small leeway" for clock skew.
LEEWAY = timedelta(seconds=30)
# PROFILE.md section 11: an ID-JAG lives at most 300 s.
MAX_LIFETIME = timedelta(seconds=300)
MAX_JTI_LENGTH = 255
MAX_ENTRIES = 100
MISSION_MEMBERS = frozenset({"id", "origin", "authority_hash"})
AUTHORITY_HASH = re.compile(r"sha-256:[A-Za-z0-9_-]{43}")
JKT = re.compile(r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True)
class IdJag:
    """A validated ID-JAG: what the Resource AS redeems."""

    origin: TrustedOrigin
    subject: str
    client_id: str
    jti: str
    jkt: str
    issued_at: int
    expires_at: int
    # {id, origin, authority_hash}, exactly as the origin signed it (kept verbatim).
    mission: dict[str, str]
    # The conveyed entries, parsed and normalized with this AS's catalog.
    entries: list[Entry]
    act: dict[str, Any] | None

    @property
    def mission_id(self) -> str:
        return self.mission["id"]


def validate_id_jag(
    assertion: str, *, origins: TrustedOrigins, audience: str, catalog: Catalog,
    now: datetime,
) -> IdJag:
    """The ID-JAG in ``assertion``, validated for redemption at the AS ``audience``."""
    try:
        header, claims = read_unverified(assertion, "ID-JAG")
    except UntrustedToken as exc:
        raise InvalidGrant(str(exc)) from None
    # 9.2 item 1: trust by local configuration first, never because the grant says so.
    origin = origins.find(claims.get("iss"))
    if origin is None:
        raise InvalidGrant("the ID-JAG's issuer is not an origin this AS trusts")
    mission = _mission(claims.get("mission"))
    if mission["origin"] != origin.issuer:
        raise InvalidGrant("the ID-JAG's iss is not its mission.origin")
    try:
        verify_origin_jwt(assertion, header, keys=origins.keys(origin), typ=ID_JAG_TYPE,
                          what="ID-JAG")
    except UntrustedToken as exc:
        raise InvalidGrant(str(exc)) from None
    aud = claims.get("aud")
    if aud != audience and aud != [audience]:
        raise InvalidGrant("the ID-JAG's aud is not this Authorization Server")
    issued_at, expires_at = _lifetime(claims, now)
    return IdJag(
        origin=origin,
        subject=_string(claims, "sub"),
        client_id=_string(claims, "client_id"),
        jti=_string(claims, "jti", MAX_JTI_LENGTH),
        jkt=_confirmation(claims.get("cnf")),
        issued_at=issued_at,
        expires_at=expires_at,
        mission=mission,
        entries=served_entries(claims.get("authorization_details"), catalog),
        act=_actor(claims),
    )


def _mission(value: Any) -> dict[str, str]:
    """``{id, origin, authority_hash}`` and nothing else (PROFILE.md section 8)."""
    if (
        not isinstance(value, dict)
        or set(value) != MISSION_MEMBERS
        or not all(isinstance(value[name], str) for name in MISSION_MEMBERS)
        or not MISSION_ID.fullmatch(value["id"])
        or not AUTHORITY_HASH.fullmatch(value["authority_hash"])
    ):
        raise InvalidGrant(
            "the ID-JAG's mission claim must be {id, origin, authority_hash}, well formed")
    return {name: value[name] for name in ("id", "origin", "authority_hash")}


def _lifetime(claims: dict[str, Any], now: datetime) -> tuple[int, int]:
    if not _is_int(claims.get("iat")) or not _is_int(claims.get("exp")):
        raise InvalidGrant("the ID-JAG must carry iat and exp as integer NumericDates")
    iat: int = claims["iat"]
    exp: int = claims["exp"]
    instant, leeway = now.timestamp(), LEEWAY.total_seconds()
    if iat > instant + leeway:
        raise InvalidGrant("the ID-JAG was issued in the future (iat)")
    if exp <= instant:
        # No leeway here: the local token may not outlive the grant, so an expired grant
        # could only mint an expired token.
        raise InvalidGrant("the ID-JAG has expired")
    if exp - iat > MAX_LIFETIME.total_seconds() or exp <= iat:
        raise InvalidGrant(f"the ID-JAG's lifetime must be at most "
                           f"{int(MAX_LIFETIME.total_seconds())} s")
    nbf = claims.get("nbf")
    if nbf is not None and (not _is_int(nbf) or nbf > instant + leeway):
        raise InvalidGrant("the ID-JAG is not valid yet (nbf)")
    return iat, exp


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _string(claims: dict[str, Any], name: str, max_length: int = 255) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        raise InvalidGrant(f"the ID-JAG must carry {name}, a string of 1 to {max_length} "
                           "characters")
    return value


def _confirmation(cnf: Any) -> str:
    # Issuance digest 6.6 and 9.2 item 3: a grant that is not sender-constrained is never
    # accepted; this AS proves possession with DPoP, so cnf.jkt it must be.
    if not isinstance(cnf, dict) or not isinstance(cnf.get("jkt"), str) \
            or not JKT.fullmatch(cnf["jkt"]):
        raise InvalidGrant("the ID-JAG is not bound to a DPoP key (cnf.jkt); bearer grants "
                           "are never accepted")
    return str(cnf["jkt"])


def _actor(claims: dict[str, Any]) -> dict[str, Any] | None:
    if "act" not in claims:
        return None
    act = claims["act"]
    if not isinstance(act, dict) or not isinstance(act.get("sub"), str):
        raise InvalidGrant("the ID-JAG's act claim must be an object with sub (RFC 8693 4.1)")
    return act


def served_entries(raw: Any, catalog: Catalog) -> list[Entry]:
    """The conveyed ``authorization_details``, every entry one this AS serves.

    Issuance digest 9.2 item 5 [H]: fail closed on conveyed actions and constraint keys
    this AS does not recognize. A type, resource, action, member or constraint key it does
    not know is ``invalid_target`` (the grant asks for what this AS cannot serve); an entry
    that is not well formed is ``invalid_grant``."""
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_ENTRIES:
        raise InvalidGrant(f"the ID-JAG's authorization_details must be an array of 1 to "
                           f"{MAX_ENTRIES} entries")
    entries = []
    for i, item in enumerate(raw):
        where = f"authorization_details[{i}]"
        _require_served(item, catalog, where)
        try:
            entries.append(parse_entry(item, catalog.constraints, where))
        except InvalidAuthorizationDetails as exc:
            raise InvalidGrant(f"the ID-JAG's {exc.description}") from None
    return entries


def _require_served(item: Any, catalog: Catalog, where: str) -> None:
    if not isinstance(item, dict):
        raise InvalidGrant(f"the ID-JAG's {where} is not a JSON object")
    if item.get("type") != ENTRY_TYPE:
        raise InvalidTarget(f"{where}: type {str(item.get('type'))[:80]!r} is not one this "
                            "AS serves")
    unknown = sorted(set(item) - ENTRY_MEMBERS)
    if unknown:
        raise InvalidTarget(f"{where}: member(s) {unknown} unknown to this AS (fail closed)")
    uri = item.get("resource")
    resource = catalog.resource(uri) if isinstance(uri, str) else None
    if resource is None:
        raise InvalidTarget(f"{where}: resource {str(uri)[:200]!r} is not one this AS serves")
    actions = item.get("actions")
    if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
        raise InvalidGrant(f"the ID-JAG's {where}.actions is not an array of names")
    unknown_actions = sorted(set(actions) - set(resource.actions))
    if unknown_actions:
        raise InvalidTarget(f"{where}: action(s) {unknown_actions} unknown at "
                            f"{resource.uri} (fail closed)")
    constraints = item.get("constraints", {})
    if not isinstance(constraints, dict):
        raise InvalidGrant(f"the ID-JAG's {where}.constraints is not an object")
    for key in constraints:
        refusing = [name for name in actions if not resource.actions[name].accepts(key)]
        if refusing or not catalog.constraints.knows(key):
            raise InvalidTarget(f"{where}: constraint {str(key)[:80]!r} is not one this AS "
                                f"enforces for {refusing or actions} (fail closed)")
