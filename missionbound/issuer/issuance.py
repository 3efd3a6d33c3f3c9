"""One derivation: the step every grant ends with (PROFILE.md section 8).

In the request's transaction, after the grant found its Mission (from the code or the
refresh token, never from a client-supplied id): the derivation gate (Mission effectively
``active``, counter below ``max_derivations``, counted atomically), the access token, the
refresh token, the issued-token row and the ``token.issued`` audit record with the anchors.
A refusal raises before anything is written and the transaction rolls back, so a refused
derivation is never counted and nothing is issued.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from missionbound import audit
from missionbound.issuer.access_tokens import MintedToken, mint_access_token
from missionbound.issuer.keys import SignerKey
from missionbound.issuer.opaque import new_opaque_value, opaque_hash
from missionbound.issuer.token_narrowing import TokenNarrowing
from missionbound.mission.constraints import ConstraintRegistry
from missionbound.mission.lifecycle import LifecyclePolicy
from missionbound.mission.record import MissionRecord
from missionbound.store.gate import admit_derivation
from missionbound.store.refresh import save_refresh_token, start_refresh_family
from missionbound.store.tokens import record_issued_token

# A refresh token unused this long dies even if its Mission lives on (an idle agent must
# come back through a person); rotation on every use keeps a working agent going.
REFRESH_TOKEN_IDLE_LIFETIME = timedelta(hours=24)


@dataclass(frozen=True)
class Derived:
    mission: MissionRecord
    access: MintedToken
    refresh_token: str | None
    derivation_count: int


def derive_tokens(
    session: Session,
    *,
    issuer: str,
    signer: SignerKey,
    mission_id: str,
    client_id: str,
    grant_type: str,
    grant_id: str,
    new_grant: bool,
    narrowing: TokenNarrowing,
    registry: ConstraintRegistry,
    jkt: str | None,
    bind_refresh_to: str | None,
    now: datetime,
    policy: LifecyclePolicy,
    issue_refresh_token: bool = True,
) -> Derived:
    """Gate, mint and record one access token and its refresh token.

    ``grant_id`` is the refresh token family: new for a code redemption (``new_grant``),
    the presented token's family for a refresh. ``bind_refresh_to`` is the DPoP key the
    family is bound to when it is created. A client not registered for the refresh grant
    gets no refresh token (``issue_refresh_token``); its grant still gets a family, so that
    a code replay revokes the access token all the same.
    """
    # The gate hands back the record it read under the Mission lock (held to commit):
    # minting from it is minting from what was admitted, with no second read.
    admitted = admit_derivation(session, mission_id, now=now, policy=policy)
    count, mission = admitted.count, admitted.mission
    entries, audience = narrowing.apply(mission.authority_set, registry)
    access = mint_access_token(
        signer=signer,
        issuer=issuer,
        mission=mission,
        client_id=client_id,
        entries=entries,
        audience=audience,
        jkt=jkt,
        now=now,
    )
    record_issued_token(
        session,
        jti=access.jti,
        mission_id=mission_id,
        client_id=client_id,
        kind="access_token",
        aud=access.audience,
        issued_at=now,
        expires_at=access.expires_at,
        grant_id=grant_id,
    )
    if new_grant:
        start_refresh_family(
            session,
            family_id=grant_id,
            mission_id=mission_id,
            client_id=client_id,
            dpop_jkt=bind_refresh_to,
            now=now,
        )
    refresh_token = None
    if issue_refresh_token:
        refresh_token = new_opaque_value()
        save_refresh_token(
            session,
            token_hash=opaque_hash(refresh_token),
            family_id=grant_id,
            issued_at=now,
            expires_at=min(now + REFRESH_TOKEN_IDLE_LIFETIME, mission.mission_expiry),
        )
    audit.append(
        session,
        event="token.issued",
        mission_id=mission_id,
        actor={"client_id": client_id},
        anchors=anchors_of(mission),
        policy_version=mission.policy_version,
        data={
            "grant_type": grant_type,
            "jti": access.jti,
            "aud": access.audience,
            "exp": access.claims["exp"],
            "cnf_jkt": jkt,
            "derivation": count,
        },
        at=now,
    )
    return Derived(mission, access, refresh_token, count)


def anchors_of(mission: MissionRecord) -> dict[str, str | None]:
    return {
        "proposal_hash": mission.proposal_hash,
        "consent_rendering_hash": mission.consent_rendering_hash,
        "authority_hash": mission.authority_hash,
    }


def token_response(derived: Derived, now: datetime) -> dict[str, Any]:
    """RFC 6749 section 5.1 plus RFC 9396 section 7 ``authorization_details`` and the
    ``mission_id`` reference (issuance digest 4.3: a reference, never a credential)."""
    access = derived.access
    response: dict[str, Any] = {
        "access_token": access.value,
        "token_type": "DPoP" if "cnf" in access.claims else "Bearer",
        "expires_in": max(0, int((access.expires_at - now).total_seconds())),
        "authorization_details": access.authorization_details,
        "mission_id": derived.mission.mission_id,
    }
    if derived.refresh_token is not None:
        response["refresh_token"] = derived.refresh_token
    return response
