"""RFC 8414 Authorization Server Metadata, with the Mission members of PROFILE.md.

Only what this build really does is advertised: no endpoint that does not exist, and no
Conformance Ladder level before the surfaces that meet it are in place (PROFILE.md section 2).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from missionbound.config import Settings
from missionbound.issuer.client_auth import (
    ASSERTION_ALGS,
    CLIENT_AUTH_METHODS,
    CONFIDENTIAL_AUTH_METHODS,
)
from missionbound.issuer.clients import SUPPORTED_GRANT_TYPES
from missionbound.protocol.dpop import SUPPORTED_ALGS
from missionbound.web.deps import get_settings

router = APIRouter(tags=["discovery"])

WELL_KNOWN_PATH = "/.well-known/oauth-authorization-server"


def authorization_server_metadata(settings: Settings) -> dict[str, Any]:
    base = settings.issuer.rstrip("/")
    metadata: dict[str, Any] = {
        "issuer": settings.issuer,
        "authorization_endpoint": f"{base}/authorize",
        "token_endpoint": f"{base}/token",
        # RFC 9126 section 5: Mission requests are accepted only through PAR.
        "pushed_authorization_request_endpoint": f"{base}/par",
        "require_pushed_authorization_requests": True,
        # RFC 8414 section 2; served by missionbound.web.jwks.
        "jwks_uri": f"{base}/jwks",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": list(SUPPORTED_GRANT_TYPES),
        # PROFILE.md section 5: S256 only.
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        # RFC 7662 (missionbound.issuer.introspection): callers are Resource Servers and
        # PEPs, confidential clients only (PROFILE.md section 10).
        "introspection_endpoint": f"{base}/introspect",
        "introspection_endpoint_auth_methods_supported": list(CONFIDENTIAL_AUTH_METHODS),
        # RFC 8414 section 2: required when private_key_jwt is among the methods.
        "introspection_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        # RFC 7009 (missionbound.issuer.revocation): public clients revoke their own tokens.
        "revocation_endpoint": f"{base}/revoke",
        "revocation_endpoint_auth_methods_supported": list(CLIENT_AUTH_METHODS),
        "revocation_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        # RFC 9449 section 5.1.
        "dpop_signing_alg_values_supported": list(SUPPORTED_ALGS),
        # RFC 9207 section 3.
        "authorization_response_iss_parameter_supported": True,
        # RFC 9396 section 10: the one authorization details type we understand.
        "authorization_details_types_supported": ["mission_resource_access"],
        "mission_intent_max_size": settings.mission_intent_max_size,
        # PROFILE.md section 2: Level 1, Mission-bound issuance at the AS.
        "mission_ladder_levels_supported": [1],
        "mission_bound_authorization_supported": True,
    }
    if settings.registration_enabled:
        # RFC 7591 (missionbound.issuer.registration): open registration.
        metadata["registration_endpoint"] = f"{base}/register"
    return metadata


@router.get(WELL_KNOWN_PATH, summary="Authorization Server Metadata (RFC 8414)")
def oauth_authorization_server(
    settings: Annotated[Settings, Depends(get_settings)],
) -> dict[str, Any]:
    return authorization_server_metadata(settings)
