"""The Resource Server enforcement kit (PROFILE.md section 2, tiers RS-B, RS-C and RS-D).

Protect a Starlette or FastAPI API with a :class:`MissionGuard` for the resource, then either
:class:`MissionMiddleware` with a table of :class:`Protect` routes, or the
:func:`require_mission` dependency on each route. docs/resource-servers.md walks through both::

    guard = MissionGuard(
        resource="https://erp.example/api",
        issuers=[TrustedIssuer("https://as.example", jwks_uri="https://as.example/jwks")],
    )

    @app.post("/journal-entries")
    async def post_entry(mission: Annotated[MissionContext, Depends(require_mission(
            guard, "journal-entries.write",
            bind={"max_value": money(json_field("amount"), json_field("currency"))}))]):
        ...
"""

from missionbound.enforce.rs.context import MissionContext
from missionbound.enforce.rs.credentials import TrustedIssuer
from missionbound.enforce.rs.errors import (
    InsufficientScopeRefusal,
    InvalidDPoPProofRefusal,
    InvalidRequestRefusal,
    InvalidTokenRefusal,
    NoCredentials,
    RSRefusal,
    UnavailableRefusal,
    UseDPoPNonceRefusal,
)
from missionbound.enforce.rs.fastapi import (
    MissionRefused,
    add_metadata_route,
    install,
    require_mission,
)
from missionbound.enforce.rs.guard import (
    MissionGuard,
    Tier,
    protected_resource_metadata_url,
)
from missionbound.enforce.rs.pdp_client import (
    PdpClient,
    PdpDecision,
    PdpDenied,
    PdpUnavailable,
    PermitSuppressed,
    ReportFailed,
    route_parameters,
)
from missionbound.enforce.rs.replay import MemoryReplayCache, ReplayCache
from missionbound.enforce.rs.request import (
    MISSING,
    Extractor,
    RequestFacts,
    header,
    json_field,
    money,
    path_param,
    query_param,
)
from missionbound.enforce.rs.starlette import (
    ExecutionReporting,
    MissionMiddleware,
    Protect,
    mission_context,
)
from missionbound.enforce.rs.state import (
    DEFAULT_STALENESS_SECONDS,
    IntrospectionSource,
    MissionStateView,
    MissionStatusSource,
    ObservedState,
    StateUnavailable,
)

__all__ = [
    "DEFAULT_STALENESS_SECONDS",
    "MISSING",
    "ExecutionReporting",
    "Extractor",
    "InsufficientScopeRefusal",
    "IntrospectionSource",
    "InvalidDPoPProofRefusal",
    "InvalidRequestRefusal",
    "InvalidTokenRefusal",
    "MemoryReplayCache",
    "MissionContext",
    "MissionGuard",
    "MissionMiddleware",
    "MissionRefused",
    "MissionStateView",
    "MissionStatusSource",
    "NoCredentials",
    "ObservedState",
    "PdpClient",
    "PdpDecision",
    "PdpDenied",
    "PdpUnavailable",
    "PermitSuppressed",
    "Protect",
    "RSRefusal",
    "ReplayCache",
    "ReportFailed",
    "RequestFacts",
    "StateUnavailable",
    "Tier",
    "TrustedIssuer",
    "UnavailableRefusal",
    "UseDPoPNonceRefusal",
    "add_metadata_route",
    "header",
    "install",
    "json_field",
    "mission_context",
    "money",
    "path_param",
    "protected_resource_metadata_url",
    "query_param",
    "require_mission",
    "route_parameters",
]
