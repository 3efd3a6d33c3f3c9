"""What both grants share at the token endpoint: the DPoP proof of the request (RFC 9449
section 5) and the narrowing the request asks for (issuance digest 6.4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from missionbound.issuer.dpop import verify_request_proof
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
