"""Pushed Authorization Requests (RFC 9126) carrying a Mission Intent (PROFILE.md section 3).

The one place a Mission is proposed: the client authenticates, the intent and any
structured proposal (RFC 9396 ``authorization_details``, ``scope``, RFC 8707 ``resource``)
are validated and derived against the catalog and the client's registration, and the
Mission is stored ``pending_approval`` with its ``request_uri`` in one transaction. Every
refusal happens here, before a person is ever asked.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from missionbound.issuer.client_auth import CLIENT_AUTH_METHODS
from missionbound.issuer.dpop import verify_request_proof
from missionbound.issuer.opaque import new_opaque_value
from missionbound.mission.canonical import parse_strict
from missionbound.mission.derivation import derive_authority
from missionbound.mission.errors import InvalidRequest
from missionbound.mission.intent import validate_intent
from missionbound.mission.lifecycle import State
from missionbound.mission.record import MissionRecord, Principal, new_mission_id
from missionbound.protocol.dpop import DPoPProofError
from missionbound.store.missions import create_pending
from missionbound.store.par import save_pushed_request

if TYPE_CHECKING:
    from missionbound.issuer.server import MissionIssuer, OAuthRequest, OAuthResponse

REQUEST_URI_PREFIX = "urn:ietf:params:oauth:request_uri:"
# RFC 9126 section 2.2 suggests a short life; a person must still sign in and read the
# consent page before the request_uri is used, so it lives as long as the consent window
# allows, up to 10 minutes.
MAX_REQUEST_URI_LIFETIME = timedelta(minutes=10)
# RFC 7636 section 4.2: 43 to 128 characters of the unreserved set.
CODE_CHALLENGE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
# RFC 8707 lets "resource" repeat; every other parameter must appear once (RFC 6749 3.1).
REPEATABLE = frozenset({"resource"})
# The pushed parameters kept for the authorization endpoint (the rest are derived).
KEPT = ("redirect_uri", "state", "code_challenge", "code_challenge_method", "scope",
        "login_hint")


def push_authorization_request(issuer: MissionIssuer, request: OAuthRequest) -> OAuthResponse:
    from missionbound.issuer.server import OAuthResponse

    client = issuer.authenticate_client(request, list(CLIENT_AUTH_METHODS), endpoint="par")
    request.refusal = {"event": "par.refused", "client_id": client.client_id}
    data: dict[str, str] = request.form
    for name, values in request.payload.datalist.items():
        if len(values) > 1 and name not in REPEATABLE:
            raise InvalidRequest(f"parameter {name!r} appears more than once")
    if "request_uri" in data:
        raise InvalidRequest("request_uri must not be pushed (RFC 9126 section 2.1)")
    if "request" in data:
        raise InvalidRequest("request objects (RFC 9101) are not supported; push parameters")
    if data.get("response_type") != "code":
        raise InvalidRequest("response_type must be code")
    redirect_uri = data.get("redirect_uri")
    if not redirect_uri:
        raise InvalidRequest("redirect_uri is required")
    if not client.check_redirect_uri(redirect_uri):
        raise InvalidRequest("redirect_uri is not registered for this client (exact match)")
    challenge = data.get("code_challenge")
    if not challenge or not CODE_CHALLENGE.fullmatch(challenge):
        raise InvalidRequest("code_challenge is required: 43 to 128 unreserved characters")
    if data.get("code_challenge_method") != "S256":
        raise InvalidRequest("code_challenge_method must be S256 (plain is refused)")
    raw_intent = data.get("mission_intent")
    if raw_intent is None:
        raise InvalidRequest("mission_intent is required: this AS issues Mission-bound tokens")

    now = request.now
    session = request.session()
    jkt = _dpop_key(issuer, request)
    subject = _pushed_subject(issuer, data.get("login_hint"))
    catalog = issuer.tenant.catalog
    intent = validate_intent(
        raw_intent,
        catalog=catalog,
        now=now,
        max_size=issuer.settings.mission_intent_max_size,
        client_purposes=client.purposes,
    )
    requested: Any = None
    if "authorization_details" in data:
        requested = parse_strict(
            data["authorization_details"],
            max_size=issuer.settings.mission_intent_max_size,
            what="authorization_details",
        )
    derivation = derive_authority(
        intent,
        catalog=catalog,
        client=client.ceiling,
        now=now,
        max_lifetime=issuer.settings.max_mission_lifetime,
        requested_authorization_details=requested,
        scope=data.get("scope"),
        resource_indicators=request.values("resource"),
    )
    record = MissionRecord(
        mission_id=new_mission_id(),
        origin=issuer.issuer,
        state=State.PENDING_APPROVAL,
        version=1,
        mission_intent=intent.value,
        authorization_details_requested=derivation.authorization_details_requested,
        authority_set=derivation.authority_set,
        narrowing_decisions=derivation.narrowing_decisions,
        subject=subject,
        client_id=client.client_id,
        policy_version=derivation.policy_version,
        created_at=now,
        mission_expiry=derivation.mission_expiry,
    )
    create_pending(session, record, {"role": "client", "client_id": client.client_id}, now)
    lifetime = min(
        MAX_REQUEST_URI_LIFETIME, timedelta(seconds=issuer.settings.consent_window_seconds)
    )
    request_uri = REQUEST_URI_PREFIX + new_opaque_value()
    kept = {name: data[name] for name in KEPT if name in data}
    save_pushed_request(
        session,
        request_uri=request_uri,
        client_id=client.client_id,
        params={**kept, "dpop_jkt": jkt, "resource": request.values("resource")},
        expires_at=now + lifetime,
        mission_id=record.mission_id,
    )
    body = {"request_uri": request_uri, "expires_in": int(lifetime.total_seconds())}
    # RFC 9126 section 2.2: 201 Created.
    return OAuthResponse(201, body, [("Cache-Control", "no-store")])


def _dpop_key(issuer: MissionIssuer, request: OAuthRequest) -> str | None:
    """The key the code will be bound to: ``dpop_jkt`` and/or a DPoP proof at PAR
    (RFC 9449 section 10.1); when both are sent they must name the same key."""
    proof = verify_request_proof(
        request.session(),
        request.dpop_headers,
        method="POST",
        url=issuer.endpoint_url("/par"),
        now=request.now,
        nonce_secret=issuer.dpop_nonce_secret(),
    )
    pushed = request.form.get("dpop_jkt")
    if pushed is not None and not re.fullmatch(r"[A-Za-z0-9_-]{43}", pushed):
        raise InvalidRequest("dpop_jkt must be a base64url SHA-256 JWK thumbprint")
    if proof is not None and pushed is not None and proof.jkt != pushed:
        raise DPoPProofError("dpop_jkt does not match the key of the DPoP proof")
    return pushed if pushed is not None else (proof.jkt if proof is not None else None)


def _pushed_subject(issuer: MissionIssuer, login_hint: str | None) -> Principal | None:
    """The Subject the client says the Mission is for (decision O2). It grants nothing: the
    Approver must be that user or be allowed to approve for them. Whether the user exists
    is checked at approval, where only the signed-in Approver learns it: answering it here
    would let any (registered) client list the deployment's users."""
    if login_hint is None:
        return None
    if not 0 < len(login_hint) <= 255 or not login_hint.isprintable():
        raise InvalidRequest("login_hint must be 1 to 255 printable characters")
    return Principal(issuer.issuer, login_hint)
