"""Delegation inside a Mission by token exchange (RFC 8693; PROFILE.md section 9, issuance
digest 6.8; docs/delegation.md).

A delegate (an authenticated confidential client) presents a Mission-bound access token as
``subject_token`` and gets a token of its own for part of that authority. In this order,
every refusal rolling back and audited:

1. ``subject_token_type`` is ``...:access_token``, and an ``actor_token``, when sent, is an
   access token of this AS issued to the delegate itself (decision X2): ``invalid_request``
   for another type, ``invalid_grant`` for one that names someone else or is not live; a
   malformed ``resource``/``scope``/``authorization_details``: ``invalid_request``.
2. The subject token is a live access token of this AS (signature, ``exp``, not revoked):
   ``invalid_grant`` otherwise. Its own client may not delegate it to itself (decision X4).
3. A DPoP proof: the delegated token is bound to the delegate's own key (``invalid_dpop_proof``
   without one).
4. The derivation gate: the Mission effectively ``active``, ``max_derivations`` not used up,
   counted once (``invalid_grant`` with ``mission_state``).
5. The entries: those of the subject token the delegate may receive at the new depth
   (``mission/delegation.py``), narrowed by ``resource`` (``audience`` reads the same),
   ``scope`` and ``authorization_details`` under the subset rule. Nothing left:
   ``invalid_target``; left out only by depth: ``invalid_grant`` (beyond ``max_depth``).

The token: ``sub`` and ``mission`` of the subject token, ``client_id`` the delegate (issuance
digest 6.8 [H]), ``act`` with the delegate outermost, ``cnf.jkt`` the delegate's key, ``exp``
never past the subject token's (nor ``mission_expiry``). No refresh token: a delegate comes
back to the agent for more (decision X5). It joins the subject token's grant, so what
revokes that grant (a replayed code or refresh token) revokes the delegate's token too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from missionbound import audit
from missionbound.issuer.access_tokens import ACCESS_TOKEN_LIFETIME, mint_access_token
from missionbound.issuer.clients import TOKEN_EXCHANGE
from missionbound.issuer.governance_callers import token_keys
from missionbound.issuer.introspection import FoundToken, find_token
from missionbound.issuer.issuance import anchors_of
from missionbound.issuer.token_endpoint import token_request_proof
from missionbound.issuer.token_exchange import (
    ACCESS_TOKEN_TYPE,
    ExchangeRequest,
    ExchangeResponse,
)
from missionbound.issuer.token_narrowing import TokenNarrowing
from missionbound.mission.delegation import (
    Actor,
    InvalidActorChain,
    actor_chain,
    delegable_entries,
    with_actor,
)
from missionbound.mission.errors import InvalidRequest, InvalidTarget
from missionbound.protocol.dpop import DPoPProofError
from missionbound.store.errors import InvalidGrant
from missionbound.store.gate import admit_derivation
from missionbound.store.models import IssuedToken, RefreshTokenFamily
from missionbound.store.refresh import lock_refresh_family
from missionbound.store.tokens import record_issued_token

if TYPE_CHECKING:
    from missionbound.issuer.server import MissionIssuer, OAuthRequest
    from missionbound.issuer.token_exchange import MissionTokenExchangeGrant


def exchange_for_delegate(grant: MissionTokenExchangeGrant,
                          exchange: ExchangeRequest) -> ExchangeResponse:
    """The token exchange for ``requested_token_type`` access_token (module docstring)."""
    request, issuer = grant.request, grant.server
    session, now = request.session(), request.now
    delegate_id: str = request.client.client_id
    if exchange.subject_token_type != ACCESS_TOKEN_TYPE:
        raise InvalidRequest(f"a delegated token is exchanged for a Mission-bound access "
                             f"token: subject_token_type must be {ACCESS_TOKEN_TYPE}")
    # Parsed first: a malformed narrowing is refused whatever else the request holds.
    # RFC 8693 audience: a resource of this AS is its own audience (aud = the resource URI).
    narrowing = TokenNarrowing.from_parameters(
        list(dict.fromkeys((*exchange.resources, *exchange.audiences))), exchange.scope,
        exchange.authorization_details)
    subject = _live_access_token(issuer, request, exchange.subject_token)
    if request.refusal is not None:
        request.refusal["mission_id"] = subject.mission_id
    if exchange.actor_token is not None:
        _require_actor_is_delegate(issuer, request, exchange, delegate_id)
    if subject.client_id == delegate_id:
        raise InvalidRequest("the subject_token is already this client's: a client does not "
                             "delegate to itself (narrow at refresh with resource, scope or "
                             "authorization_details instead)")
    try:
        chain = actor_chain(subject.claims.get("act"))
    except InvalidActorChain as error:
        raise InvalidGrant(f"the subject_token's act claim is malformed: {error}") from None
    proof = token_request_proof(issuer, request, request.client)
    if proof is None:
        raise DPoPProofError("a delegated token is bound to the delegate's own DPoP key: "
                             "send a DPoP proof")
    _lock_live_grant(session, subject)
    # The gate locks the Mission to commit: a revoke committed first always wins.
    admitted = admit_derivation(session, subject.mission_id, now=now,
                                policy=issuer.lifecycle_policy)
    depth = len(chain) + 1
    subject_entries = subject.claims.get("authorization_details") or []
    delegable = delegable_entries(subject_entries, delegate_client_id=delegate_id,
                                  depth=depth)
    if delegable.only_depth_stopped:
        raise InvalidGrant(f"the delegation chain would be {depth} deep, beyond max_depth of "
                           "every entry this client may receive")
    if not delegable.kept:
        raise InvalidTarget("nothing in the subject_token may be delegated to this client")
    entries, audience = narrowing.apply(delegable.kept, issuer.tenant.catalog.constraints,
                                        scope_reference=subject_entries)
    act = with_actor(subject.claims.get("act"), Actor(delegate_id, issuer.issuer))
    access = mint_access_token(
        signer=request.pinned_signing_key(), issuer=issuer.issuer, mission=admitted.mission,
        client_id=delegate_id, entries=entries, audience=audience, jkt=proof.jkt, now=now,
        lifetime=_lifetime(subject, now), act=act,
    )
    record_issued_token(
        session, jti=access.jti, mission_id=subject.mission_id, client_id=delegate_id,
        kind="access_token", aud=access.audience, issued_at=now,
        expires_at=access.expires_at, grant_id=subject.grant_id,
    )
    audit.append(
        session,
        event="token.issued",
        mission_id=subject.mission_id,
        actor={"client_id": delegate_id},
        anchors=anchors_of(admitted.mission),
        policy_version=admitted.mission.policy_version,
        data={
            "grant_type": TOKEN_EXCHANGE,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "jti": access.jti,
            "subject_jti": subject.jti,
            "aud": access.audience,
            "exp": access.claims["exp"],
            "cnf_jkt": proof.jkt,
            # The token's act claim, and whom the delegate acts for: the earlier delegates,
            # then the approved agent (the Mission's client, whose own token has no act).
            # The console's timeline shows the chain.
            "act": act,
            "on_behalf_of": [*(actor.sub for actor in chain), admitted.mission.client_id],
            "derivation": admitted.count,
        },
        at=now,
    )
    body: dict[str, Any] = {
        "access_token": access.value,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "DPoP",
        "expires_in": max(0, int((access.expires_at - now).total_seconds())),
        "authorization_details": access.authorization_details,
        "mission_id": subject.mission_id,
    }
    return 200, body, grant.TOKEN_RESPONSE_HEADER


def _live_access_token(issuer: MissionIssuer, request: OAuthRequest, value: str) -> FoundToken:
    found = find_token(request.session(), value, keys=token_keys(issuer), issuer=issuer.issuer,
                       now=request.now) if "." in value else None
    if found is None or found.kind != "access_token" or not found.live:
        raise InvalidGrant("the subject_token is not an active access token of this AS")
    return found


def _lock_live_grant(session: Session, subject: FoundToken) -> None:
    """The delegated token joins the subject token's grant (decision X8), so the exchange
    takes the grant's lock, the one a revocation of the grant takes (a replayed code or
    refresh token, store/refresh.py), and reads the grant and the subject token again under
    it: either the revocation sees the delegated token's row, or the exchange sees the
    revocation. Never both missed."""
    if subject.grant_id is None:
        return
    lock_refresh_family(session, subject.grant_id)
    family = session.get(RefreshTokenFamily, subject.grant_id, populate_existing=True)
    row = session.get(IssuedToken, subject.jti, populate_existing=True)
    if (family is None or family.revoked_at is not None
            or row is None or row.revoked_at is not None):
        raise InvalidGrant("the subject_token's grant was revoked")


def _require_actor_is_delegate(issuer: MissionIssuer, request: OAuthRequest,
                               exchange: ExchangeRequest, delegate_id: str) -> None:
    """RFC 8693 section 2.1: the actor token names the acting party; here it must name the
    client that authenticated, which is the delegate (decision X2)."""
    if exchange.actor_token_type != ACCESS_TOKEN_TYPE:
        raise InvalidRequest(f"actor_token_type must be {ACCESS_TOKEN_TYPE}: an access "
                             "token of this AS issued to the delegate")
    assert exchange.actor_token is not None
    actor = _live_access_token_or_none(issuer, request, exchange.actor_token)
    if actor is None or actor.client_id != delegate_id:
        raise InvalidGrant("the actor_token is not an active access token of the client "
                           "making this request")


def _live_access_token_or_none(issuer: MissionIssuer, request: OAuthRequest,
                               value: str) -> FoundToken | None:
    try:
        return _live_access_token(issuer, request, value)
    except InvalidGrant:
        return None


def _lifetime(subject: FoundToken, now: datetime) -> timedelta:
    """A delegated token never outlives the token it was exchanged for (decision X6)."""
    subject_exp = datetime.fromtimestamp(subject.claims["exp"], UTC)
    return max(timedelta(0), min(ACCESS_TOKEN_LIFETIME, subject_exp - now))
