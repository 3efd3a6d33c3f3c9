"""The Transaction Token Service of this trust domain (draft-ietf-oauth-transaction-tokens-10,
issuance digest 9.3; docs/transaction-tokens.md): token exchange (RFC 8693) with
``requested_token_type=urn:ietf:params:oauth:token-type:txn_token``.

A workload of the trust domain (a Resource Server or an API gateway that received a Mission
access token) exchanges that access token for a short-lived Txn-Token to send along its
internal calls. The request (checked in this order; every refusal rolls back, is audited as
``token.refused`` and issues nothing):

1. Its shape: ``subject_token_type`` access_token (a refresh token never: the draft's
   section "Refresh Tokens"; anything else is not a token this service can read), no
   ``actor_token``, ``resource`` or ``authorization_details``; exactly one ``audience``, the
   trust domain (``txn_token_trust_domain``); a ``scope``; ``request_context`` and
   ``request_details``, when sent, JSON objects of bounded size without the members this
   service asserts itself: ``invalid_request`` (``invalid_target`` for another audience).
2. The requester is a workload of the trust domain: a confidential client (the grant
   authenticates it) that serves resources (its configured ``audiences``); any other client
   is ``unauthorized_client`` (decision Z1).
3. The ``subject_token`` is a live RFC 9068 access token of this AS (signature, ``iss``,
   unexpired, its ``issued_tokens`` row not revoked) and one of its audiences is a resource
   the requester serves: ``invalid_grant`` otherwise.
4. Each ``scope`` value is an action the subject token grants at a resource the requester
   serves (the draft's section "Scope Processing": never more than the subject token):
   ``invalid_scope`` otherwise.
5. The Mission is effectively ``active`` (decision Z3): at the Mission Issuer, read under a
   share lock, not counted as a derivation (a Txn-Token carries no Mission authority); at a
   Resource AS, by the origin's signed Mission Status, asked before the transaction opens
   (:func:`learn_remote_state`) and recorded forward-only in it. Otherwise ``invalid_grant``
   with ``mission_state``.

The Txn-Token (JWS ``typ: txntoken+jwt``, signed with the AS's current key): ``iss`` (this
AS), ``iat``, ``exp`` (at most ``txn_token_lifetime_seconds``, never past the subject
token's ``exp``), ``aud`` (the trust domain), ``txn`` (new), ``sub`` (the subject token's),
``scope`` (as requested, each value once), ``req_wl`` (the requester's ``client_id``),
``tctx`` (``request_details`` plus ``mission``: the subject token's Mission object verbatim,
evidence and never authority), ``rctx`` (``request_context`` plus ``req_wl``, the subject
token's ``client_id`` and its ``act`` when delegated). It is audited as
``txn_token.issued``, not recorded in ``issued_tokens`` (decision Z5), and answered per RFC
8693 section 2.2.1 with ``token_type`` ``N_A`` and no refresh token.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from joserfc import jwt
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from missionbound import audit
from missionbound.issuer.governance_callers import token_keys
from missionbound.issuer.introspection import FoundToken, find_token
from missionbound.issuer.issuance import anchors_of
from missionbound.issuer.keys import SignerKey
from missionbound.issuer.token_exchange import (
    ACCESS_TOKEN_TYPE,
    REFRESH_TOKEN_TYPE,
    TXN_TOKEN_TYPE,
    ExchangeRequest,
    ExchangeResponse,
)
from missionbound.issuer.token_narrowing import InvalidScope
from missionbound.mission.canonical import parse_strict
from missionbound.mission.errors import InvalidRequest, InvalidState, InvalidTarget, MissionError
from missionbound.mission.lifecycle import (
    LifecyclePolicy,
    effective_state,
    is_effectively_active,
    parse_state,
)
from missionbound.mission.record import MISSION_ID, MissionRecord
from missionbound.protocol.txn_tokens import TXN_TOKEN_TYPE as TXN_TOKEN_JWT_TYPE
from missionbound.store.errors import DerivationRefused, InvalidGrant
from missionbound.store.mission_rows import MISSION_RECORD_COLUMNS, to_record
from missionbound.store.models import Mission

if TYPE_CHECKING:
    from missionbound.issuer.clients import OAuthClient
    from missionbound.issuer.server import MissionIssuer, OAuthRequest
    from missionbound.issuer.token_exchange import MissionTokenExchangeGrant

AUDIT_ISSUED = "txn_token.issued"
# RFC 8693 section 2.2.1: the issued token is not an access token.
NOT_APPLICABLE = "N_A"
# What a requester may add to the token: a few KiB each, shallow (the Txn-Token rides on
# every internal call of the transaction).
MAX_REQUEST_DETAILS = 8192
MAX_REQUEST_CONTEXT = 4096
MAX_CONTEXT_DEPTH = 8
MAX_SCOPE_LENGTH = 4096
# Members this service asserts; a requester may not supply them (decision Z6).
TCTX_RESERVED = frozenset({"mission"})
RCTX_RESERVED = frozenset({"req_wl", "client_id", "act"})


class UnauthorizedWorkload(MissionError):
    """RFC 6749 section 5.2 ``unauthorized_client``: the authenticated client is not a
    workload this trust domain issues Txn-Tokens to (decision Z1)."""

    error = "unauthorized_client"


@dataclass(frozen=True)
class TxnTokenRequest:
    """A Txn-Token request's own parameters, checked for shape (step 1)."""

    scope: tuple[str, ...]
    request_details: dict[str, Any]
    request_context: dict[str, Any]


@dataclass(frozen=True)
class MintedTxnToken:
    value: str
    claims: dict[str, Any]


def issue_txn_token(
    grant: MissionTokenExchangeGrant, exchange: ExchangeRequest
) -> ExchangeResponse:
    """The token exchange for ``requested_token_type`` txn_token (see the module docstring)."""
    request, issuer = grant.request, grant.server
    session, now, client = request.session(), request.now, request.client
    settings = issuer.settings
    asked = parse_txn_token_request(exchange, trust_domain=settings.txn_token_trust_domain)
    require_workload(client)
    subject = live_subject_token(session, exchange.subject_token, issuer=issuer, now=now)
    _name_mission_in_refusals(request, subject, settings.role)
    served = served_audiences(client, subject)
    scope = granted_scope(asked.scope, subject.claims, served)
    mission_claim: dict[str, Any] = subject.claims["mission"]
    if settings.role == "resource_as":
        anchors = _remote_anchors(mission_claim)
        policy_version = None
        # Imported here: the Resource AS role's module is not needed by the Mission Issuer.
        from missionbound.issuer.remote_missions import record_and_require_active

        state = getattr(request, "remote_state", None)
        if state is None or state.mission_id != subject.mission_id:
            # The origin is asked before the transaction (learn_remote_state); never here.
            raise RuntimeError("a Resource AS's Txn-Token request was not prepared")
        record_and_require_active(session, state, now)
    else:
        mission = require_active_mission(session, subject.mission_id, now=now,
                                         policy=issuer.lifecycle_policy)
        anchors, policy_version = anchors_of(mission), mission.policy_version
    lifetime = settings.txn_token_lifetime_seconds
    minted = mint_txn_token(
        signer=request.pinned_signing_key(), issuer=issuer.issuer,
        trust_domain=settings.txn_token_trust_domain, subject=subject.claims, scope=scope,
        requester=client.client_id, request_details=asked.request_details,
        request_context=asked.request_context, now=now, lifetime_seconds=lifetime,
    )
    claims = minted.claims
    audit.append(
        session,
        event=AUDIT_ISSUED,
        mission_id=subject.mission_id,
        actor={"client_id": client.client_id},
        anchors=anchors,
        policy_version=policy_version,
        data={
            "txn": claims["txn"],
            "aud": claims["aud"],
            "scope": claims["scope"],
            "exp": claims["exp"],
            "subject_jti": subject.jti,
            "subject_client_id": subject.client_id,
            # The draft's section "Logging": never the token itself; its hash correlates.
            "txn_token_hash": token_hash(minted.value),
        },
        at=now,
    )
    body = {
        "access_token": minted.value,
        "issued_token_type": TXN_TOKEN_TYPE,
        "token_type": NOT_APPLICABLE,
        "expires_in": max(0, claims["exp"] - claims["iat"]),
        "scope": claims["scope"],
    }
    return 200, body, grant.TOKEN_RESPONSE_HEADER


def learn_remote_state(grant: MissionTokenExchangeGrant, exchange: ExchangeRequest) -> Any:
    """At a Resource AS, before the request's transaction opens: steps 1 to 4 on a read-only
    view, then the origin's signed word on the subject token's Mission
    (:func:`missionbound.issuer.remote_missions.ask_remote_state`), which
    :func:`issue_txn_token` records and requires inside the transaction. A slow origin then
    never holds this AS's database (on SQLite, its one writer)."""
    from missionbound.issuer.remote_missions import ask_remote_state

    request, issuer = grant.request, grant.server
    asked = parse_txn_token_request(exchange,
                                    trust_domain=issuer.settings.txn_token_trust_domain)
    require_workload(request.client)
    with issuer.store.read() as session, session.begin():
        subject = live_subject_token(session, exchange.subject_token, issuer=issuer,
                                     now=request.now)
    _name_mission_in_refusals(request, subject, issuer.settings.role)
    served = served_audiences(request.client, subject)
    granted_scope(asked.scope, subject.claims, served)
    return ask_remote_state(issuer, subject.claims["mission"], request.now,
                            audience=served[0])


def _name_mission_in_refusals(request: OAuthRequest, subject: FoundToken, role: str) -> None:
    """From here on a refusal is evidence about the subject token's Mission: the local one,
    or at a Resource AS the origin's (MissionIssuer._audit_refusal)."""
    if request.refusal is None:
        return
    if role == "resource_as":
        request.refusal.update(remote_mission_id=subject.mission_id,
                               origin=subject.claims["mission"].get("origin"))
    else:
        request.refusal["mission_id"] = subject.mission_id


def served_audiences(client: OAuthClient, subject: FoundToken) -> list[str]:
    """The subject token's audiences the requesting workload serves: only a workload the
    token was issued to may exchange it."""
    served = sorted(client.audiences & subject.audiences)
    if not served:
        raise InvalidGrant("the subject token is not for a resource this client serves: only "
                           "a workload it was issued to may exchange it")
    return served


# -- the request -----------------------------------------------------------------------------


def parse_txn_token_request(exchange: ExchangeRequest, *, trust_domain: str) -> TxnTokenRequest:
    """Step 1: the parameters of a Txn-Token request (the draft's section "Txn-Token
    Request"), before anything is looked up."""
    if exchange.subject_token_type == REFRESH_TOKEN_TYPE:
        # The draft's section "Refresh Tokens": never a subject of a Txn-Token request.
        raise InvalidRequest("a refresh token never obtains a Txn-Token: send the access "
                             f"token the workload received, as {ACCESS_TOKEN_TYPE}")
    if exchange.subject_token_type != ACCESS_TOKEN_TYPE:
        raise InvalidRequest(f"subject_token_type must be {ACCESS_TOKEN_TYPE}: this service "
                             "issues Txn-Tokens for access tokens of this AS only")
    if exchange.actor_token is not None:
        raise InvalidRequest("a Txn-Token request has no actor_token: the requesting "
                             "workload is the authenticated client")
    if exchange.resources or exchange.authorization_details:
        raise InvalidRequest("resource and authorization_details do not apply to a Txn-Token; "
                             "name the transaction's purpose in scope")
    if not exchange.audiences:
        raise InvalidRequest("audience is required: the trust domain the Txn-Token is for")
    if len(exchange.audiences) != 1 or exchange.audiences[0] != trust_domain:
        raise InvalidTarget(f"this service issues Txn-Tokens for the trust domain "
                            f"{trust_domain!r} only: send it as the one audience")
    return TxnTokenRequest(
        scope=scope_values(exchange.scope),
        request_details=context_object(exchange.request_details, "request_details",
                                       MAX_REQUEST_DETAILS, TCTX_RESERVED),
        request_context=context_object(exchange.request_context, "request_context",
                                       MAX_REQUEST_CONTEXT, RCTX_RESERVED),
    )


def scope_values(scope: str | None) -> tuple[str, ...]:
    """The requested scope values, each once, in the order sent (RFC 6749 section 3.3)."""
    if not scope:
        raise InvalidRequest("scope is required: the purpose of the transaction, as actions "
                             "the subject token grants")
    if len(scope) > MAX_SCOPE_LENGTH:
        raise InvalidRequest(f"scope is longer than {MAX_SCOPE_LENGTH} characters")
    values = tuple(dict.fromkeys(scope.split()))
    if not values:
        raise InvalidRequest("scope names no value")
    return values


def context_object(raw: str | None, what: str, max_size: int,
                   reserved: frozenset[str]) -> dict[str, Any]:
    """``request_details`` or ``request_context``: a strict I-JSON object of at most
    ``max_size`` octets, without the ``reserved`` members. Absent or empty: ``{}`` (RFC 6749
    section 3.2: a parameter without a value is omitted)."""
    if not raw:
        return {}
    try:
        value = parse_strict(raw, max_size=max_size, what=what, max_depth=MAX_CONTEXT_DEPTH)
    except InvalidRequest as exc:
        if what in exc.description:
            raise
        raise InvalidRequest(f"{what}: {exc.description}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    taken = sorted(reserved & set(value))
    if taken:
        raise InvalidRequest(f"{what} must not hold {', '.join(taken)}: this service "
                             "asserts those members itself")
    return value


def require_workload(client: OAuthClient) -> None:
    """Step 2 (decision Z1): a workload of the trust domain serves resources. An agent, a
    delegate or any other client without configured ``audiences`` is not one."""
    if not client.audiences:
        raise UnauthorizedWorkload(
            "this client is not a workload of the trust domain (it serves no resource): it "
            "may not request Txn-Tokens")


def live_subject_token(session: Session, value: str, *, issuer: MissionIssuer,
                       now: datetime) -> FoundToken:
    """Step 3: the live RFC 9068 access token ``value`` of this AS (the draft: the service
    MUST validate the subject token and MUST NOT issue for an expired one)."""
    if "." not in value:
        # Refresh tokens of this AS are opaque; find_token would look one up.
        raise InvalidGrant("the subject_token is not an access token of this AS")
    found = find_token(session, value, keys=token_keys(issuer), issuer=issuer.issuer, now=now)
    if found is None or found.kind != "access_token":
        raise InvalidGrant("the subject_token is not an access token of this AS")
    if not found.live:
        raise InvalidGrant("the subject_token has expired or was revoked")
    if not isinstance(found.claims.get("sub"), str):
        # Every access token of this AS names its subject; one without is not one of ours.
        raise InvalidGrant("the subject_token names no subject")
    return found


def granted_scope(asked: tuple[str, ...], claims: Mapping[str, Any],
                  served: Iterable[str]) -> tuple[str, ...]:
    """Step 4 (the draft's sections "Scope Processing" and "Unknown subject_token scope";
    decision Z4): every requested value must be an action the subject token's
    ``authorization_details`` grant at a resource the requester serves."""
    resources = frozenset(served)
    entries = [entry for entry in claims.get("authorization_details", [])
               if isinstance(entry, dict) and entry.get("resource") in resources]
    actions = {action for entry in entries for action in entry.get("actions", [])
               if isinstance(action, str)}
    outside = [value for value in asked if value not in actions]
    if outside:
        raise InvalidScope(
            f"scope {' '.join(outside)[:200]!r} is more than the subject token grants at the "
            "resources this client serves")
    # A scope value carries no constraint: an internal service authorizing on it would see
    # an action without its bounds. Only actions some entry grants unconstrained qualify
    # (decision Z11); the bounded ones stay with the access token.
    free = {action for entry in entries if not entry.get("constraints")
            for action in entry.get("actions", []) if isinstance(action, str)}
    bounded = [value for value in asked if value not in free]
    if bounded:
        raise InvalidScope(
            f"scope {' '.join(bounded)[:200]!r} names actions bounded by constraints a "
            "Txn-Token scope cannot carry")
    return asked


# -- the Mission -----------------------------------------------------------------------------

# FOR SHARE on PostgreSQL (SQLite's write transaction excludes writers already): a revoke,
# which locks the Mission FOR UPDATE, waits for this request's commit or this request waits
# for the revoke's, so a revoke acknowledged is never followed by a Txn-Token. Concurrent
# Txn-Token requests for one Mission do not wait for each other.
_MISSION_SHARED = (
    select(*MISSION_RECORD_COLUMNS)
    .where(Mission.mission_id == bindparam("mission_id"))
    .with_for_update(read=True)
)


def require_active_mission(session: Session, mission_id: str, *, now: datetime,
                           policy: LifecyclePolicy) -> MissionRecord:
    """Step 5 at the Mission Issuer (decision Z3): the Mission effectively ``active``, read
    under a share lock held to commit; not a derivation (nothing is counted). Refusals are
    the gate's: ``invalid_grant`` with ``mission_state`` and ``mission_error``."""
    row = None
    if MISSION_ID.fullmatch(mission_id):
        row = session.connection().execute(_MISSION_SHARED, {"mission_id": mission_id}).first()
    if row is None:
        raise DerivationRefused("the subject token names no Mission of this AS",
                                mission_state=None)
    if not is_effectively_active(row.state, now=now, mission_expiry=row.mission_expiry):
        try:
            stored = parse_state(row.state)
        except InvalidState:
            raise DerivationRefused(
                "the Mission is in an unknown state; refusing (fail closed)",
                mission_state=None, mission_error="mission_state_unknown") from None
        effective = effective_state(stored, now=now, mission_expiry=row.mission_expiry,
                                    created_at=row.created_at, policy=policy)
        raise DerivationRefused(
            f"the Mission is {effective.value}: no Txn-Token for its tokens",
            mission_state=effective.value, mission_error=f"mission_{effective.value}")
    try:
        return to_record(row)
    except InvalidState:
        raise DerivationRefused(
            "the Mission record cannot be read; refusing (fail closed)",
            mission_state=None, mission_error="mission_state_unknown") from None


def _remote_anchors(mission_claim: Mapping[str, Any]) -> dict[str, str | None]:
    """The one anchor a Resource AS holds: the origin's, as the local token carries it."""
    value = mission_claim.get("authority_hash")
    return {"authority_hash": value if isinstance(value, str) else None}


# -- the token -------------------------------------------------------------------------------


def mint_txn_token(
    *,
    signer: SignerKey,
    issuer: str,
    trust_domain: str,
    subject: Mapping[str, Any],
    scope: tuple[str, ...],
    requester: str,
    request_details: Mapping[str, Any],
    request_context: Mapping[str, Any],
    now: datetime,
    lifetime_seconds: int,
) -> MintedTxnToken:
    """Sign the Txn-Token for the verified ``subject`` access token's claims (the draft's
    section "Txn-Token Format"; the module docstring lists the claims)."""
    issued_at = int(now.timestamp())
    # Never past the subject token (decision Z2): the draft allows longer, this service
    # does not let a Txn-Token outlive the authorization it was issued for.
    expires = min(issued_at + lifetime_seconds, int(subject["exp"]))
    # The Mission object exactly as the access token carries it (issuance digest 9.3 [R]).
    tctx: dict[str, Any] = {**request_details, "mission": subject["mission"]}
    rctx: dict[str, Any] = {**request_context, "req_wl": requester,
                            "client_id": subject["client_id"]}
    if "act" in subject:
        rctx["act"] = subject["act"]
    claims: dict[str, Any] = {
        "iss": issuer,
        "iat": issued_at,
        "exp": expires,
        "aud": trust_domain,
        "txn": str(uuid.uuid4()),
        "sub": subject["sub"],
        "scope": " ".join(scope),
        "req_wl": requester,
        "tctx": tctx,
        "rctx": rctx,
    }
    header = signer.protected_header(typ=TXN_TOKEN_JWT_TYPE)
    value = jwt.encode(header, claims, signer.key, registry=signer.registry)
    return MintedTxnToken(value, claims)


def token_hash(value: str) -> str:
    """``sha-256:`` + base64url of the token: what the audit log keeps of it."""
    digest = hashlib.sha256(value.encode("ascii")).digest()
    return "sha-256:" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
