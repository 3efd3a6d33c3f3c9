"""The cross-domain grant at the origin AS: an Identity Assertion JWT Authorization Grant
(ID-JAG, draft-ietf-oauth-identity-assertion-authz-grant) issued by token exchange
(RFC 8693) for a Resource AS of another trust domain (PROFILE.md section 11, issuance digest
sections 6.7 and 9.1; docs/cross-domain.md).

The request (checked in this order; every refusal rolls back and is audited):

1. ``subject_token_type`` is ``urn:ietf:params:oauth:token-type:refresh_token`` and the
   ``subject_token`` is not a JWT (an access token, delegated or not, never selects a Mission
   here: issuance digest 9.1 [H]), and no ``actor_token`` (the grant enters the target domain
   at delegation depth 0): ``invalid_request``; so is a malformed ``authorization_details``.
2. The ``subject_token`` is the requesting client's own live Mission refresh token: it selects
   the Mission, exactly as a refresh does. Unknown, another client's, expired or revoked (or
   its family revoked): ``invalid_grant``. A rotated one is a replay and revokes its grant
   (family and access tokens), as at the refresh grant (RFC 9700 section 4.14.2; decision
   J3). The token is only read, never rotated (decision J2).
3. Exactly one ``audience``, the issuer of a configured ``resource_authorities`` entry:
   ``invalid_target`` otherwise.
4. A DPoP proof (RFC 9449): the grant's ``cnf.jkt``. None: ``invalid_dpop_proof``. When the
   refresh token is DPoP-bound, the proof must be of that key.
5. The derivation gate (``store/gate.admit_derivation``): the Mission effectively ``active``
   and its ``max_derivations`` not used up, counted once.
6. The conveyed entries: the Mission's entries whose ``resource`` that Resource AS is
   authoritative for, narrowed by ``resource``, ``scope`` and ``authorization_details`` within
   them; none left, or a narrowing outside them: ``invalid_target`` (``invalid_scope``,
   ``invalid_authorization_details``). Another audience's entries are never disclosed.

The ID-JAG (JWS ``typ: oauth-id-jag+jwt``, signed with the AS's current key): ``iss``,
``sub`` (the Mission's subject), ``aud`` (the Resource AS), ``client_id``, ``iat``, ``exp``
(at most ``id_jag_lifetime_seconds`` and never past ``mission_expiry``), ``jti``, ``cnf.jkt``,
``authorization_details`` and ``mission {id, origin, authority_hash}``; no ``act``. It is
recorded in ``issued_tokens`` (kind ``id_jag``) with a ``token.issued`` audit record, and
answered per RFC 8693 section 2.2.1 with ``token_type`` ``N_A``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from joserfc import jwt
from sqlalchemy import select
from sqlalchemy.orm import Session

from missionbound import audit
from missionbound.config import ResourceAuthority
from missionbound.issuer.access_tokens import new_jti
from missionbound.issuer.authorization_code import revoke_grant
from missionbound.issuer.clients import TOKEN_EXCHANGE
from missionbound.issuer.issuance import anchors_of
from missionbound.issuer.keys import SignerKey
from missionbound.issuer.opaque import opaque_hash
from missionbound.issuer.token_endpoint import require_same_key, token_request_proof
from missionbound.issuer.token_exchange import (
    ID_JAG_TOKEN_TYPE,
    REFRESH_TOKEN_TYPE,
    ExchangeRequest,
    ExchangeResponse,
)
from missionbound.issuer.token_narrowing import TokenNarrowing, keep_scope, within
from missionbound.mission.authority import ENTRY_TYPE
from missionbound.mission.constraints import ConstraintRegistry
from missionbound.mission.errors import InvalidRequest, InvalidTarget
from missionbound.mission.lifecycle import LifecyclePolicy, is_effectively_active
from missionbound.mission.record import MissionRecord
from missionbound.protocol.dpop import DPoPProofError
from missionbound.store.errors import InvalidGrant, RefreshTokenReused
from missionbound.store.gate import admit_derivation
from missionbound.store.models import Mission, RefreshToken, RefreshTokenFamily
from missionbound.store.tokens import record_issued_token
from missionbound.store.transactions import run_after_rollback

if TYPE_CHECKING:
    from missionbound.issuer.token_exchange import MissionTokenExchangeGrant

# draft-ietf-oauth-identity-assertion-authz-grant: the explicit JWT type of the grant.
ID_JAG_TYPE = "oauth-id-jag+jwt"
# RFC 8693 section 2.2.1: the issued token is not an access token.
NOT_APPLICABLE = "N_A"


@dataclass(frozen=True)
class MintedIdJag:
    value: str
    claims: dict[str, Any]
    expires_at: datetime


def issue_id_jag(grant: MissionTokenExchangeGrant, exchange: ExchangeRequest) -> ExchangeResponse:
    """The token exchange for ``requested_token_type`` id-jag (see the module docstring)."""
    request, issuer = grant.request, grant.server
    session, now, client_id = request.session(), request.now, request.client.client_id
    require_refresh_token_subject(exchange)
    # Parsed first: a malformed narrowing is refused whatever else the request holds.
    narrowing = TokenNarrowing.from_parameters(
        exchange.resources, exchange.scope, exchange.authorization_details)
    subject = live_refresh_token(session, exchange.subject_token, client_id=client_id,
                                 now=now, policy=issuer.lifecycle_policy,
                                 refusal=request.refusal)
    authority = audience_authority(issuer.settings.resource_authority, exchange.audiences)
    proof = token_request_proof(issuer, request, request.client)
    if proof is None:
        # Issuance digest 6.6: a cross-domain grant MUST be sender-constrained.
        raise DPoPProofError("an ID-JAG is bound to the client's DPoP key: send a DPoP proof")
    require_same_key(proof, subject.dpop_jkt, "refresh token")
    # The gate locks the Mission to commit: a revoke committed first always wins.
    admitted = admit_derivation(session, subject.mission_id, now=now,
                                policy=issuer.lifecycle_policy)
    mission = admitted.mission
    entries = conveyed_entries(mission.authority_set, authority, narrowing,
                               issuer.tenant.catalog.constraints)
    lifetime = timedelta(seconds=issuer.settings.id_jag_lifetime_seconds)
    minted = mint_id_jag(
        signer=request.pinned_signing_key(), issuer=issuer.issuer, mission=mission,
        client_id=client_id, audience=authority.issuer, entries=entries, jkt=proof.jkt,
        now=now, lifetime=lifetime,
    )
    record_issued_token(
        session, jti=minted.claims["jti"], mission_id=mission.mission_id, client_id=client_id,
        kind="id_jag", aud=authority.issuer, issued_at=now, expires_at=minted.expires_at,
        # The refresh token family: revoking the grant (a replayed code or refresh token)
        # marks the ID-JAG revoked too.
        grant_id=subject.family_id,
    )
    audit.append(
        session,
        event="token.issued",
        mission_id=mission.mission_id,
        actor={"client_id": client_id},
        anchors=anchors_of(mission),
        policy_version=mission.policy_version,
        data={
            "grant_type": TOKEN_EXCHANGE,
            "issued_token_type": ID_JAG_TOKEN_TYPE,
            "jti": minted.claims["jti"],
            "aud": authority.issuer,
            "exp": minted.claims["exp"],
            "cnf_jkt": proof.jkt,
            "resources": sorted({entry["resource"] for entry in entries}),
            "derivation": admitted.count,
        },
        at=now,
    )
    body = {
        "access_token": minted.value,
        "issued_token_type": ID_JAG_TOKEN_TYPE,
        "token_type": NOT_APPLICABLE,
        "expires_in": max(0, int((minted.expires_at - now).total_seconds())),
        # RFC 9396 section 7, as for an access token: what the grant conveys.
        "authorization_details": entries,
    }
    return 200, body, grant.TOKEN_RESPONSE_HEADER


# -- the request ---------------------------------------------------------------------------


def require_refresh_token_subject(exchange: ExchangeRequest) -> None:
    """Issuance digest 9.1: the Mission refresh token selects the Mission; an access token
    (or anything else) as ``subject_token`` is ``invalid_request`` [H]."""
    if exchange.subject_token_type != REFRESH_TOKEN_TYPE:
        raise InvalidRequest(
            "an ID-JAG is issued for the client's Mission refresh token: subject_token_type "
            f"must be {REFRESH_TOKEN_TYPE}")
    if "." in exchange.subject_token:
        # Refresh tokens of this AS are base64url without dots; a JWT (an access token,
        # delegated or not) labelled as a refresh token is the wrong subject, not a bad grant.
        raise InvalidRequest("the subject_token is a JWT, not a refresh token of this AS")
    if exchange.actor_token is not None:
        raise InvalidRequest("an ID-JAG has no actor (it enters the target domain at "
                             "delegation depth 0): do not send actor_token")


def audience_authority(
    find: Callable[[str], ResourceAuthority | None], audiences: tuple[str, ...]
) -> ResourceAuthority:
    """The one configured Resource AS the request names (RFC 8693 section 2.1 ``audience``).

    ``find`` is ``Settings.resource_authority``. An ID-JAG has exactly one audience: the
    Resource AS that redeems it (PROFILE.md section 11)."""
    if len(audiences) != 1:
        raise InvalidTarget("name exactly one audience: the issuer of the Resource AS the "
                            "ID-JAG is for")
    authority = find(audiences[0])
    if authority is None:
        raise InvalidTarget(f"audience {audiences[0][:200]!r} is not a Resource AS this AS "
                            "issues ID-JAGs for")
    return authority


def live_refresh_token(
    session: Session,
    value: str,
    *,
    client_id: str,
    now: datetime,
    policy: LifecyclePolicy,
    refusal: dict[str, Any] | None,
) -> RefreshToken:
    """The client's own live refresh token ``value``, read under its family's lock.

    The lock (the one rotation and family revocation take, store/refresh.py) orders this
    request with a concurrent refresh or revocation of the same grant. Nothing is written:
    using the token as a subject token does not rotate it (decision J2). Refusals:
    ``invalid_grant``; a rotated token is a replay and revokes its grant after the rollback,
    as at the refresh grant; an expired token of a Mission that is no longer active is
    refused by the gate, with ``mission_state`` (as refresh_token.py does)."""
    token_hash = opaque_hash(value)
    session.execute(
        select(RefreshTokenFamily.family_id)
        .join(RefreshToken, RefreshToken.family_id == RefreshTokenFamily.family_id)
        .where(RefreshToken.token_hash == token_hash)
        .with_for_update(of=RefreshTokenFamily)
    )
    token = session.get(RefreshToken, token_hash, populate_existing=True)
    if token is None or token.client_id != client_id:
        # Another client's token names nothing to this client (no Mission in the refusal).
        raise InvalidGrant("unknown refresh token")
    if refusal is not None:
        refusal["mission_id"] = token.mission_id
    family = session.get(RefreshTokenFamily, token.family_id, populate_existing=True)
    if token.rotated_at is not None:
        family_id = token.family_id
        run_after_rollback(session, f"refresh-replay:{family_id}",
                           lambda fresh: revoke_grant(fresh, family_id, now=now))
        raise RefreshTokenReused("refresh token was already used; its grant is revoked")
    if token.revoked_at is not None or family is None or family.revoked_at is not None:
        raise InvalidGrant("refresh token was revoked")
    if token.expires_at <= now:
        mission = session.get(Mission, token.mission_id)
        if mission is not None and not is_effectively_active(
                mission.state, now=now, mission_expiry=mission.mission_expiry):
            admit_derivation(session, token.mission_id, now=now, policy=policy)  # raises
        raise InvalidGrant("refresh token has expired")
    return token


# -- the grant -----------------------------------------------------------------------------


def audience_entries(
    authority_set: list[dict[str, Any]], authority: ResourceAuthority
) -> list[dict[str, Any]]:
    """Issuance digest 9.1: only the entries whose ``resource`` this Resource AS is
    authoritative for; other audiences' entries are never disclosed, and entries of types
    the AS cannot narrow are never projected."""
    served = set(authority.resources)
    return [copy.deepcopy(entry) for entry in authority_set
            if entry.get("type") == ENTRY_TYPE and entry.get("resource") in served]


def conveyed_entries(
    authority_set: list[dict[str, Any]],
    authority: ResourceAuthority,
    narrowing: TokenNarrowing,
    registry: ConstraintRegistry,
) -> list[dict[str, Any]]:
    """The grant's ``authorization_details``: the audience's entries, narrowed as the request
    asks (issuance digest 6.4 rules, within the audience's entries only)."""
    entries = audience_entries(authority_set, authority)
    if not entries:
        raise InvalidTarget(f"the Mission grants nothing at {authority.issuer}: no ID-JAG "
                            "for it")
    served = {entry["resource"] for entry in entries}
    for uri in narrowing.resources:
        if uri not in served:
            raise InvalidTarget(f"resource {uri[:200]!r} is not in the Mission's authority "
                                f"at {authority.issuer}")
    if narrowing.resources:
        entries = [entry for entry in entries if entry["resource"] in narrowing.resources]
    if narrowing.scope is not None:
        # Whether a scope value is a Mission action is judged on the whole Authority Set, so
        # a scope naming only another audience's actions is invalid_scope, not ignored.
        entries = keep_scope(entries, narrowing.scope, authority_set)
    if narrowing.authorization_details is not None:
        entries = within(entries, narrowing.authorization_details, registry)
    return entries


def mint_id_jag(
    *,
    signer: SignerKey,
    issuer: str,
    mission: MissionRecord,
    client_id: str,
    audience: str,
    entries: list[dict[str, Any]],
    jkt: str,
    now: datetime,
    lifetime: timedelta,
) -> MintedIdJag:
    """Sign the ID-JAG (issuance digest 9.1 table; the claim set of the draft's section 3
    plus ``authorization_details``, ``cnf`` and ``mission``)."""
    if mission.subject is None or mission.authority_hash is None:
        raise ValueError("only an approved Mission has grants")
    expires_at = min(now + lifetime, mission.mission_expiry)
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": mission.subject.sub,
        "aud": audience,
        "client_id": client_id,
        "iat": int(now.timestamp()),
        "exp": int(expires_at.timestamp()),
        "jti": new_jti(),
        "cnf": {"jkt": jkt},
        "authorization_details": entries,
        "mission": {
            "id": mission.mission_id,
            "origin": mission.origin,
            "authority_hash": mission.authority_hash,
        },
    }
    header = signer.protected_header(typ=ID_JAG_TYPE)
    value = jwt.encode(header, claims, signer.key, registry=signer.registry)
    return MintedIdJag(value, claims, expires_at)
