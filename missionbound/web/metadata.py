"""RFC 8414 Authorization Server Metadata, with the Mission members of PROFILE.md.

Only what this build really does is advertised: no endpoint that does not exist, and no
Conformance Ladder level before the surfaces that meet it are in place (PROFILE.md section 2).
A Resource AS (``role = "resource_as"``) publishes what it is: its token endpoint for
ID-JAG redemption and Transaction Tokens, its keys, introspection and revocation; no
Mission endpoints, since it holds no Mission (PROFILE.md section 11, docs/resource-as.md).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from missionbound.config import Settings
from missionbound.issuer.access_tokens import ACCESS_TOKEN_LIFETIME
from missionbound.issuer.client_auth import (
    ASSERTION_ALGS,
    CLIENT_AUTH_METHODS,
    CONFIDENTIAL_AUTH_METHODS,
)
from missionbound.issuer.clients import RESOURCE_AS_GRANT_TYPES, SUPPORTED_GRANT_TYPES
from missionbound.issuer.governance_callers import BROWSER_SESSION
from missionbound.issuer.keys import SigningAlgorithm
from missionbound.issuer.lifecycle import LIFECYCLE_METHODS, OPERATION_NAMES
from missionbound.issuer.mission_status import STATUS_METHODS
from missionbound.protocol.dpop import SUPPORTED_ALGS
from missionbound.web.deps import get_settings

router = APIRouter(tags=["discovery"])

WELL_KNOWN_PATH = "/.well-known/oauth-authorization-server"


def authorization_server_metadata(settings: Settings) -> dict[str, Any]:
    if settings.role == "resource_as":
        return resource_as_metadata(settings)
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
        **token_management_members(base),
        # RFC 9207 section 3.
        "authorization_response_iss_parameter_supported": True,
        # RFC 9396 section 10: the one authorization details type we understand.
        "authorization_details_types_supported": ["mission_resource_access"],
        "mission_intent_max_size": settings.mission_intent_max_size,
        # PROFILE.md section 10 (docs/mission-governance.md): the signed Mission Status and
        # the lifecycle operations, each with the ways a caller may authenticate there
        # ("dpop_bound_access_token": an access token of this AS for that very Mission,
        # with its DPoP proof); client secrets never reach the lifecycle endpoint.
        "mission_status_endpoint": f"{base}/mission/status",
        "mission_status_endpoint_auth_methods_supported": _ordered(STATUS_METHODS),
        "mission_status_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        "mission_status_signing_alg_values_supported": [alg.value for alg in SigningAlgorithm],
        "mission_lifecycle_endpoint": f"{base}/mission/lifecycle",
        "mission_lifecycle_endpoint_auth_methods_supported": _ordered(
            LIFECYCLE_METHODS - {BROWSER_SESSION}),
        "mission_lifecycle_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        "mission_lifecycle_operations_supported": list(OPERATION_NAMES),
        # Issuance digest 8.5: the URL of the Shared Signals transmitter configuration.
        "mission_event_stream_endpoint": f"{base}/.well-known/ssf-configuration",
        # Issuance digest 8.4: the longest a consumer may act on a state the AS has left.
        # A consumer that checks nothing but the token relies on it until it expires, so
        # the bound is the access token lifetime; status and events propagate far faster.
        "mission_max_stale_seconds": int(ACCESS_TOKEN_LIFETIME.total_seconds()),
        # PROFILE.md section 2: Level 1, Mission-bound issuance at the AS; Level 2, the
        # cross-AS handoff, once there is a Resource AS to hand off to (ID-JAGs for the
        # configured resource_authorities).
        "mission_ladder_levels_supported": [1, 2] if settings.resource_authorities else [1],
        "mission_bound_authorization_supported": True,
    }
    if settings.registration_enabled:
        # RFC 7591 (missionbound.issuer.registration): open registration.
        metadata["registration_endpoint"] = f"{base}/register"
    return metadata


def resource_as_metadata(settings: Settings) -> dict[str, Any]:
    """RFC 8414 metadata of a Resource AS: no authorization endpoint (its grants come from
    the origins), no Mission endpoints (it never reports a Mission's state)."""
    base = settings.issuer.rstrip("/")
    return {
        "issuer": settings.issuer,
        "token_endpoint": f"{base}/token",
        "jwks_uri": f"{base}/jwks",
        # RFC 8414 section 2 requires the member; this AS has no authorization endpoint.
        "response_types_supported": [],
        # RFC 7523 (ID-JAG redemption) and RFC 8693 (Transaction Tokens).
        "grant_types_supported": list(RESOURCE_AS_GRANT_TYPES),
        # Every grant here names its client by the client's own credentials.
        "token_endpoint_auth_methods_supported": list(CONFIDENTIAL_AUTH_METHODS),
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        # Local tokens are always DPoP-bound (issuance digest 6.6).
        **token_management_members(base),
        "authorization_details_types_supported": ["mission_resource_access"],
        # A consumer that checks nothing but a local token relies on it until it expires.
        "mission_max_stale_seconds": int(ACCESS_TOKEN_LIFETIME.total_seconds()),
        # PROFILE.md section 2: Level 2, a Mission-aware Resource AS.
        "mission_ladder_levels_supported": [2],
        "mission_bound_authorization_supported": True,
    }


def token_management_members(base: str) -> dict[str, Any]:
    """Introspection, revocation and DPoP: the same in both roles."""
    return {
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
    }


def _ordered(methods: frozenset[str]) -> list[str]:
    order = ("client_secret_basic", "private_key_jwt", "dpop_bound_access_token")
    return [method for method in order if method in methods]


@router.get(WELL_KNOWN_PATH, summary="Authorization Server Metadata (RFC 8414)")
def oauth_authorization_server(
    settings: Annotated[Settings, Depends(get_settings)],
) -> dict[str, Any]:
    return authorization_server_metadata(settings)
