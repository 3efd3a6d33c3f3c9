"""The resource_as role's app: what it serves and publishes (only what a Resource AS is),
revocation of its local tokens, and the configuration it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from missionbound.config import ConfigError, load_settings
from missionbound.issuer.clients import RESOURCE_AS_GRANT_TYPES
from tests.cross_domain.support import (
    AGENT,
    OTHER_AGENT,
    RAS,
    Origin,
    ResourceAS,
)
from tests.protocol.proofs import generate_key

WELL_KNOWN = "/.well-known/oauth-authorization-server"
NOT_SERVED = [
    ("POST", "/par"), ("GET", "/authorize"), ("GET", "/login"), ("POST", "/consent"),
    ("GET", "/console/"), ("POST", "/mission/status"), ("POST", "/mission/lifecycle"),
    ("GET", "/.well-known/ssf-configuration"), ("POST", "/register"),
    ("POST", "/access/v1/evaluation"),
]


@pytest.mark.parametrize(("method", "path"), NOT_SERVED)
def test_issuer_surfaces_are_not_served(ras: ResourceAS, method: str, path: str) -> None:
    assert ras.client.request(method, path).status_code == 404


def test_the_resource_as_surfaces_are_served(ras: ResourceAS) -> None:
    assert ras.client.get("/healthz").status_code == 200
    assert ras.client.get("/jwks").json()["keys"]
    for path in ("/token", "/introspect", "/revoke"):
        # Served: an empty request is a 4xx of the endpoint, never a 404.
        status = ras.client.post(path, data={}).status_code
        assert status in (400, 401), (path, status)


def test_metadata_says_what_a_resource_as_is(ras: ResourceAS) -> None:
    metadata = ras.client.get(WELL_KNOWN).json()
    assert metadata["issuer"] == RAS
    assert metadata["token_endpoint"] == f"{RAS}/token"
    assert metadata["grant_types_supported"] == list(RESOURCE_AS_GRANT_TYPES)
    assert metadata["mission_ladder_levels_supported"] == [2]
    assert "none" not in metadata["token_endpoint_auth_methods_supported"]
    for member in ("authorization_endpoint", "pushed_authorization_request_endpoint",
                   "mission_status_endpoint", "mission_lifecycle_endpoint",
                   "mission_event_stream_endpoint", "registration_endpoint",
                   "require_pushed_authorization_requests", "mission_intent_max_size"):
        assert member not in metadata
    for member, url in metadata.items():
        if member.endswith("_endpoint") or member == "jwks_uri":
            probe = ras.client.post(url.removeprefix(RAS), data={})
            assert probe.status_code != 404, member


def test_a_local_token_is_revoked_by_its_client_only(origin: Origin, ras: ResourceAS) -> None:
    key = generate_key()
    token = ras.redeem(origin.id_jag(origin.mission(), jkt=key.thumbprint()),
                       key=key).json()["access_token"]
    other = ras.client.post("/revoke", data={"token": token}, auth=OTHER_AGENT)
    assert other.status_code == 400 and other.json()["error"] == "invalid_grant"
    assert ras.introspect(token)["active"] is True
    assert ras.client.post("/revoke", data={"token": token}, auth=AGENT).status_code == 200
    assert ras.introspect(token) == {"active": False}


def test_a_resource_as_without_trusted_origins_does_not_start(tmp_path: Path) -> None:
    # The settings refuse it, so `serve` says so in one line before anything starts.
    with pytest.raises(ConfigError, match="trusted_origins"):
        load_settings(data_dir=tmp_path, issuer=RAS, role="resource_as",
                      config_file=None, tenant_file=None)
