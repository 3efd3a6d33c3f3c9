"""Token introspection (RFC 7662) at a Resource AS: its local tokens, whose Mission is held
by the origin (issuance digest 9.2 items 7 and 8; docs/resource-as.md).

Who may ask and what they may see is the issuer role's rule (issuer/introspection.py: a
confidential caller, an audience of the token, ``aud`` and ``authorization_details`` cut to
the caller's audiences). What differs:

* ``active`` is the token's own validity (signature by this AS, ``iss``, ``exp``, its
  ``issued_tokens`` row not revoked) **and** the last state the origin's signed Mission Status
  reported to this AS (``remote_missions``) being ``active`` with ``mission_expiry`` not past.
  That state is learned at every redemption and Transaction Token request, never here:
  introspection is every Resource Server's hot path and does no network I/O (decision F5).
  A Mission the origin ended is therefore inactive here from the moment this AS learns it;
  until then the local token's lifetime (at most 300 s) bounds the staleness.
* ``mission`` is ``{id, origin, authority_hash}``, never ``state`` or ``version``: a
  Resource AS never reports a Mission's state (PROFILE.md section 11). An inactive token gets
  a bare ``{"active": false}``, whatever the reason.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from authlib.consts import default_json_headers
from sqlalchemy.orm import Session

from missionbound.issuer.introspection import (
    AUDIT_REFUSED,
    INACTIVE,
    AccessTokenKeys,
    FoundToken,
    MissionIntrospectionEndpoint,
    find_token,
    may_see,
    token_parameter,
)
from missionbound.issuer.remote_missions import effective_remote_state
from missionbound.mission.lifecycle import State
from missionbound.store.remote_missions import remote_state

if TYPE_CHECKING:
    from missionbound.issuer.clients import OAuthClient
    from missionbound.issuer.server import OAuthRequest

_COPIED_CLAIMS = ("iss", "sub", "exp", "iat", "jti", "cnf", "act")


def introspect_local(
    session: Session,
    value: str,
    *,
    caller: OAuthClient,
    keys: AccessTokenKeys,
    issuer: str,
    now: datetime,
) -> dict[str, Any]:
    """The RFC 7662 response for a local token of this Resource AS, as ``caller`` may see
    it."""
    token = find_token(session, value, keys=keys, issuer=issuer, now=now)
    if (token is None or token.kind != "access_token" or not token.live
            or not may_see(token, caller)):
        return dict(INACTIVE)
    mission = token.claims["mission"]
    origin = mission.get("origin")
    if not isinstance(origin, str):
        return dict(INACTIVE)
    state = remote_state(session, origin, token.mission_id)
    if state is None or effective_remote_state(state, now) != State.ACTIVE:
        return dict(INACTIVE)
    return _project(token, caller)


def _project(token: FoundToken, caller: OAuthClient) -> dict[str, Any]:
    claims = token.claims
    shown = sorted(caller.audiences & token.audiences)
    body: dict[str, Any] = {
        "active": True,
        "client_id": token.client_id,
        # RFC 9068 section 2.2: a string when there is one audience.
        "aud": shown[0] if len(shown) == 1 else shown,
        "token_type": "DPoP" if "cnf" in claims else "Bearer",
    }
    for name in _COPIED_CLAIMS:
        if name in claims:
            body[name] = claims[name]
    body["authorization_details"] = [
        entry for entry in claims.get("authorization_details", [])
        if isinstance(entry, dict) and entry.get("resource") in caller.audiences
    ]
    mission = claims["mission"]
    # Never state or version (issuance digest 9.2 item 7).
    body["mission"] = {name: mission.get(name) for name in ("id", "origin", "authority_hash")}
    return body


class ResourceASIntrospectionEndpoint(MissionIntrospectionEndpoint):
    """The issuer role's endpoint (client authentication, refusals) answering with
    :func:`introspect_local`."""

    def create_endpoint_response(
        self, request: OAuthRequest
    ) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        caller = self.authenticate_endpoint_client(request)
        request.refusal = {"event": AUDIT_REFUSED, "client_id": caller.client_id}
        value = token_parameter(request)
        body = introspect_local(request.session(), value, caller=caller, keys=self.keys,
                                issuer=self.server.issuer, now=request.now)
        return 200, body, list(default_json_headers)
