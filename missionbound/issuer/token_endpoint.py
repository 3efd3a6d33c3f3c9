"""What both grants share at the token endpoint: the DPoP proof of the request (RFC 9449
section 5) and the narrowing the request asks for (issuance digest 6.4)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import UnauthorizedClientError

from missionbound.issuer.dpop import verify_request_proof
from missionbound.issuer.issuance import derive_tokens, token_response
from missionbound.issuer.token_narrowing import TokenNarrowing
from missionbound.protocol.dpop import DPoPProof, DPoPProofError

if TYPE_CHECKING:
    from missionbound.issuer.clients import OAuthClient
    from missionbound.issuer.server import MissionIssuer, OAuthRequest


def token_request_proof(
    issuer: MissionIssuer, request: OAuthRequest, client: OAuthClient
) -> DPoPProof | None:
    """The request's verified DPoP proof, or None when it sent none and may send none."""
    proof = verify_request_proof(
        request.session(),
        request.dpop_headers,
        method="POST",
        url=issuer.endpoint_url("/token"),
        now=request.now,
        nonce_secret=issuer.dpop_nonce_secret(),
    )
    if proof is None and client.dpop_bound_access_tokens:
        # RFC 9449 section 5.2: this client registered dpop_bound_access_tokens.
        raise DPoPProofError("this client must send a DPoP proof (dpop_bound_access_tokens)")
    return proof


def authenticate_grant_client(grant: Any) -> OAuthClient:
    """The token endpoint client of ``grant``, authenticated, and allowed its grant type
    (what Authlib's ``_validate_request_client`` does; only its code and refresh grants have
    it). The request's refusals are that client's from here on, audited."""
    client: OAuthClient = grant.authenticate_token_endpoint_client()
    if not client.check_grant_type(grant.GRANT_TYPE):
        raise UnauthorizedClientError(
            f"The client is not authorized to use 'grant_type={grant.GRANT_TYPE}'")
    grant.request.client = client
    grant.request.refusal = {"event": "token.refused", "client_id": client.client_id}
    return client


def derive_for_grant(
    grant: Any,
    *,
    mission_id: str,
    grant_id: str,
    new_grant: bool,
    jkt: str | None,
    bind_refresh_to: str | None,
    issue_refresh_token: bool = True,
) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
    """The token response of an Authlib grant (code or refresh): one derivation through the
    gate (``issuance.derive_tokens``) with what every grant passes the same way."""
    request, issuer = grant.request, grant.server
    derived = derive_tokens(
        request.session(),
        issuer=issuer.issuer,
        # Pinned before the transaction opened (MissionIssuer.run).
        signer=request.pinned_signing_key(),
        mission_id=mission_id,
        client_id=grant.request.client.client_id,
        grant_type=grant.GRANT_TYPE,
        grant_id=grant_id,
        new_grant=new_grant,
        narrowing=token_narrowing(request),
        registry=issuer.tenant.catalog.constraints,
        jkt=jkt,
        bind_refresh_to=bind_refresh_to,
        now=request.now,
        policy=issuer.lifecycle_policy,
        issue_refresh_token=issue_refresh_token,
    )
    return 200, token_response(derived, request.now), grant.TOKEN_RESPONSE_HEADER


def token_narrowing(request: OAuthRequest) -> TokenNarrowing:
    """``resource`` (repeatable), ``scope`` and ``authorization_details`` of the request."""
    return TokenNarrowing.from_parameters(
        request.values("resource"),
        request.form.get("scope"),
        request.form.get("authorization_details"),
    )


def require_same_key(proof: DPoPProof | None, bound_jkt: str | None, what: str) -> None:
    """A grant bound to a DPoP key is usable only with a proof of that key (RFC 9449
    sections 5 and 10)."""
    if bound_jkt is None:
        return
    if proof is None:
        raise DPoPProofError(f"the {what} is bound to a DPoP key: send a DPoP proof")
    if proof.jkt != bound_jkt:
        raise DPoPProofError(f"the DPoP proof's key is not the key the {what} is bound to")
