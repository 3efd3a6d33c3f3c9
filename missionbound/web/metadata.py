"""RFC 8414 Authorization Server Metadata, with the Mission members of PROFILE.md.

Only what this build really does is advertised: no endpoint that does not exist, and no
Conformance Ladder level before the surfaces that meet it are in place (PROFILE.md section 2).
The issuer surfaces add their members here as they land.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from missionbound.config import Settings
from missionbound.web.deps import get_settings

router = APIRouter(tags=["discovery"])

WELL_KNOWN_PATH = "/.well-known/oauth-authorization-server"


def authorization_server_metadata(settings: Settings) -> dict[str, Any]:
    return {
        "issuer": settings.issuer,
        # RFC 8414 section 2; served by missionbound.web.jwks.
        "jwks_uri": f"{settings.issuer.rstrip('/')}/jwks",
        # RFC 9396 section 10: the one authorization details type we understand.
        "authorization_details_types_supported": ["mission_resource_access"],
        "mission_intent_max_size": settings.mission_intent_max_size,
        # No level is met until Mission-bound issuance (Level 1) lands.
        "mission_ladder_levels_supported": [],
        "mission_bound_authorization_supported": False,
    }


@router.get(WELL_KNOWN_PATH, summary="Authorization Server Metadata (RFC 8414)")
def oauth_authorization_server(
    settings: Annotated[Settings, Depends(get_settings)],
) -> dict[str, Any]:
    return authorization_server_metadata(settings)
