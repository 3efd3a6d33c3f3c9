"""Token revocation (RFC 7009), as an Authlib endpoint.

* Any client may call it with the authentication it uses at the token endpoint, public
  clients with ``none`` (RFC 7009 section 2.1: a public client presents its ``client_id``).
* A refresh token is revoked with its whole grant: its family and every access token the
  grant minted (section 2.1: the AS "SHOULD also invalidate all access tokens based on the
  same authorization grant"). An access token is revoked alone (its ``issued_tokens`` row);
  section 2.1 makes revoking the refresh token as well a MAY, and the client that holds
  both can revoke the refresh token itself.
* Only the client a token was issued to may revoke it. Section 2.1: the AS "verifies
  whether the token was issued to the client making the revocation request. If this
  validation fails, the request is refused": 400 ``invalid_grant`` (RFC 6749 section 5.2:
  "issued to another client"), and nothing changes.
* Unknown, forged or already expired tokens are answered 200 and change nothing (section
  2.2: "invalid tokens do not cause an error response").
* A Mission is never revoked here (PROFILE.md section 10): its tokens are. Revoking a
  Mission is the lifecycle endpoint's job.

Every revocation of a known token is audited (``token.revoked``) in the same transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import InvalidGrantError
from authlib.oauth2.rfc7009 import RevocationEndpoint

from missionbound import audit
from missionbound.issuer.authorization_code import revoke_grant
from missionbound.issuer.client_auth import CLIENT_AUTH_METHODS
from missionbound.issuer.introspection import (
    AccessTokenKeys,
    FoundToken,
    find_token,
    token_parameter,
)
from missionbound.store.models import IssuedToken
from missionbound.store.tokens import revoke_issued_token

if TYPE_CHECKING:
    from missionbound.issuer.clients import OAuthClient
    from missionbound.issuer.server import OAuthRequest

REVOCATION = "revocation"
AUDIT_REVOKED = "token.revoked"
AUDIT_REFUSED = "revocation.refused"


class MissionRevocationEndpoint(RevocationEndpoint):  # type: ignore[misc]
    """Authlib's RFC 7009 endpoint (client authentication, the 200 response, the hook
    order); finding the token and revoking it are the store's."""

    CLIENT_AUTH_METHODS = list(CLIENT_AUTH_METHODS)  # noqa: RUF012 (Authlib's attribute)

    def __init__(self, keys: AccessTokenKeys, server: Any = None) -> None:
        super().__init__(server)
        self.keys = keys

    def authenticate_token(self, request: OAuthRequest, client: OAuthClient
                           ) -> FoundToken | None:
        # Authlib's version refuses a token_type_hint it does not know with
        # unsupported_token_type; RFC 7009 section 2.1 lets the server ignore the hint, and
        # the token's shape says its type (introspection.find_token), so any hint is fine.
        # Decision O9: a refusal of an authenticated client is evidence.
        request.refusal = {"event": AUDIT_REFUSED, "client_id": client.client_id}
        value = token_parameter(request)
        token = find_token(
            request.session(),
            value,
            keys=self.keys,
            issuer=self.server.issuer,
            now=request.now,
        )
        if token is None:
            return None
        request.refusal["mission_id"] = token.mission_id
        if token.client_id != client.client_id:
            raise InvalidGrantError("The token was not issued to this client.")
        return token

    def revoke_token(self, token: FoundToken, request: OAuthRequest) -> None:
        session = request.session()
        now = request.now
        data: dict[str, Any] = {"token_type": token.kind, "grant_id": token.grant_id}
        if token.kind == "access_token":
            assert token.jti is not None
            row = session.get(IssuedToken, token.jti)
            data["jti"] = token.jti
            data["already_revoked"] = row is not None and row.revoked_at is not None
            revoke_issued_token(session, token.jti, now=now)
        else:
            assert token.grant_id is not None
            # The family and the access tokens of its grant (RFC 7009 section 2.1).
            revoke_grant(session, token.grant_id, now=now)
        audit.append(
            session,
            event=AUDIT_REVOKED,
            mission_id=token.mission_id,
            actor={"client_id": token.client_id},
            anchors=None,
            policy_version=None,
            data=data,
            at=now,
        )
