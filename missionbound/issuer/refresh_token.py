"""The refresh token grant (RFC 6749 section 6) with rotation on every use and family
revocation on reuse (PROFILE.md section 8, RFC 9700 section 4.14.2), as an Authlib grant."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import InvalidRequestError
from authlib.oauth2.rfc6749.grants import RefreshTokenGrant
from sqlalchemy.orm import Session

from missionbound.issuer.authorization_code import revoke_grant
from missionbound.issuer.client_auth import CLIENT_AUTH_METHODS
from missionbound.issuer.opaque import opaque_hash
from missionbound.issuer.token_endpoint import (
    derive_for_grant,
    require_same_key,
    token_request_proof,
)
from missionbound.mission.lifecycle import LifecyclePolicy, is_effectively_active
from missionbound.store.errors import InvalidGrant, RefreshTokenReused
from missionbound.store.gate import gate_derivation
from missionbound.store.models import Mission, RefreshToken
from missionbound.store.refresh import rotate_refresh_token
from missionbound.store.transactions import run_after_rollback

if TYPE_CHECKING:
    from missionbound.issuer.server import OAuthRequest


class MissionRefreshTokenGrant(RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = list(CLIENT_AUTH_METHODS)  # noqa: RUF012

    def validate_token_request(self) -> None:
        request = self.request
        client = self._validate_request_client()
        request.client = client
        value = request.form.get("refresh_token")
        if not value:
            raise InvalidRequestError("Missing 'refresh_token' in request.")
        session = request.session()
        token_hash = opaque_hash(value)
        request.refusal = {"event": "token.refused", "client_id": client.client_id}
        try:
            # Rotation is the redemption: exactly one of two racing uses gets the row.
            request.refresh_token = rotate_refresh_token(
                session, token_hash, client_id=client.client_id, now=request.now
            )
        except RefreshTokenReused:
            request.refusal["mission_id"] = _mission_of(session, token_hash)
            family_id = _family_of(session, token_hash)
            if family_id is not None:
                now = request.now
                # The store revokes the family; the access tokens of the grant go too.
                run_after_rollback(
                    session, f"refresh-replay:{family_id}",
                    lambda fresh: revoke_grant(fresh, family_id, now=now),
                )
            raise
        except InvalidGrant:
            _refuse_if_mission_ended(request, token_hash, client.client_id,
                                     self.server.lifecycle_policy)
            raise

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        request = self.request
        issuer = self.server
        client = request.client
        token = request.refresh_token
        request.refusal["mission_id"] = token.mission_id
        proof = token_request_proof(issuer, request, client)
        require_same_key(proof, token.dpop_jkt, "refresh token")
        return derive_for_grant(
            self, mission_id=token.mission_id, grant_id=token.family_id, new_grant=False,
            jkt=proof.jkt if proof is not None else None, bind_refresh_to=None,
        )


def _refuse_if_mission_ended(request: OAuthRequest, token_hash: str, client_id: str,
                             policy: LifecyclePolicy) -> None:
    """A refresh token never outlives its Mission (its expiry is capped at
    ``mission_expiry``), so past that instant it reads as merely expired, before the gate
    could say why. When the client's own token failed and its Mission is no longer
    effectively active, refuse as the gate does: ``invalid_grant`` with ``mission_state``
    and ``mission_error`` (PROFILE.md section 8, issuance digest 16.32), the expiry persisted
    after the rollback. Anything else keeps the store's refusal."""
    session = request.session()
    row = session.get(RefreshToken, token_hash)
    if row is None or row.client_id != client_id or row.revoked_at is not None:
        return
    mission = session.get(Mission, row.mission_id)
    if mission is None or is_effectively_active(
            mission.state, now=request.now, mission_expiry=mission.mission_expiry):
        return
    if request.refusal is not None:
        request.refusal["mission_id"] = row.mission_id
    gate_derivation(session, row.mission_id, now=request.now, policy=policy)


def _mission_of(session: Session, token_hash: str) -> str | None:
    row = session.get(RefreshToken, token_hash)
    return row.mission_id if row is not None else None


def _family_of(session: Session, token_hash: str) -> str | None:
    row = session.get(RefreshToken, token_hash)
    return row.family_id if row is not None else None
