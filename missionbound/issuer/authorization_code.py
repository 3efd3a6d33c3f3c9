"""The authorization code grant (RFC 6749 section 4.1) with PKCE S256 only (RFC 7636,
PROFILE.md section 5), as an Authlib grant.

Authlib authenticates the client, checks the redirect URI and (``CodeChallenge``) the
verifier; this module finds the code exactly once, ends a replay by revoking what the
first redemption issued, checks the DPoP binding, and derives the tokens through the gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc7636 import CodeChallenge
from sqlalchemy.orm import Session

from missionbound.issuer.client_auth import CLIENT_AUTH_METHODS
from missionbound.issuer.opaque import opaque_hash
from missionbound.issuer.token_endpoint import (
    derive_for_grant,
    require_same_key,
    token_request_proof,
)
from missionbound.store.codes import AuthorizationCodeReused, redeem_authorization_code
from missionbound.store.refresh import revoke_refresh_family
from missionbound.store.tokens import revoke_grant_tokens
from missionbound.store.transactions import run_after_rollback


class S256Only(CodeChallenge):  # type: ignore[misc]
    """PKCE with ``S256`` alone: ``plain`` is refused (PROFILE.md section 5)."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]  # noqa: RUF012 (Authlib's class attribute)


@dataclass(frozen=True)
class RedeemedCode:
    """The stored code, as Authlib's grant and ``CodeChallenge`` read it."""

    grant_id: str
    mission_id: str
    client_id: str
    redirect_uri: str
    code_challenge: str
    dpop_jkt: str | None
    code_challenge_method: str = "S256"

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return ""


def revoke_grant(session: Session, grant_id: str, *, now: datetime) -> None:
    """Everything one grant issued: its refresh token family and its access tokens."""
    revoke_refresh_family(session, grant_id, now=now)
    revoke_grant_tokens(session, grant_id, now=now)


class MissionAuthorizationCodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = list(CLIENT_AUTH_METHODS)  # noqa: RUF012

    def query_authorization_code(self, code: Any, client: Any) -> RedeemedCode | None:
        request = self.request
        session = request.session()
        if not isinstance(code, str) or not 0 < len(code) <= 512:
            return None
        # The code's hash names its grant: the refresh token family of its tokens.
        grant_id = opaque_hash(code)
        request.refusal = {"event": "token.refused", "client_id": client.client_id}
        try:
            row = redeem_authorization_code(
                session, grant_id, client_id=client.client_id, now=request.now
            )
        except AuthorizationCodeReused as reused:
            request.refusal["mission_id"] = reused.mission_id
            # RFC 6749 section 4.1.2: a code used twice revokes what it issued. The
            # request's transaction rolls back with the error, so this runs after it.
            now = request.now
            run_after_rollback(
                session, f"code-replay:{grant_id}",
                lambda fresh: revoke_grant(fresh, grant_id, now=now),
            )
            raise
        request.refusal["mission_id"] = row.mission_id
        return RedeemedCode(
            grant_id=grant_id,
            mission_id=row.mission_id,
            client_id=row.client_id,
            redirect_uri=row.redirect_uri,
            code_challenge=row.code_challenge,
            dpop_jkt=row.dpop_jkt,
        )

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        request = self.request
        issuer = self.server
        client = request.client
        code: RedeemedCode = request.authorization_code
        proof = token_request_proof(issuer, request, client)
        # RFC 9449 section 10: a code pushed with dpop_jkt is redeemable only with that key.
        require_same_key(proof, code.dpop_jkt, "authorization code")
        jkt = proof.jkt if proof is not None else None
        return derive_for_grant(
            self, mission_id=code.mission_id, grant_id=code.grant_id, new_grant=True, jkt=jkt,
            # PROFILE.md section 8: refresh tokens are DPoP-bound when the client used DPoP.
            bind_refresh_to=jkt,
            issue_refresh_token=client.check_grant_type("refresh_token"),
        )
