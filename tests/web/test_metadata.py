"""RFC 8414 metadata: the issuer, its endpoints and only the Mission members that are true."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from missionbound.config import load_settings
from missionbound.store.engine import create_engine_for
from missionbound.web.app import create_app
from missionbound.web.metadata import authorization_server_metadata
from tests.web.conftest import ISSUER

pytestmark = pytest.mark.anyio

WELL_KNOWN = "/.well-known/oauth-authorization-server"


async def test_metadata_names_the_configured_issuer_and_mission_members(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(WELL_KNOWN)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    metadata = response.json()
    assert metadata["issuer"] == ISSUER
    assert metadata["jwks_uri"] == f"{ISSUER}/jwks"
    assert metadata["authorization_details_types_supported"] == ["mission_resource_access"]
    assert metadata["mission_intent_max_size"] == 16384
    assert metadata["mission_ladder_levels_supported"] == [1]
    assert metadata["mission_bound_authorization_supported"] is True
    # Mission requests come only through PAR (PROFILE.md section 3), PKCE is S256 only
    # (section 5), authorization responses carry iss (RFC 9207).
    assert metadata["require_pushed_authorization_requests"] is True
    assert metadata["pushed_authorization_request_endpoint"] == f"{ISSUER}/par"
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["authorization_response_iss_parameter_supported"] is True
    assert "ES256" in metadata["dpop_signing_alg_values_supported"]
    assert "none" not in metadata["dpop_signing_alg_values_supported"]
    assert metadata["response_types_supported"] == ["code"]
    assert set(metadata["grant_types_supported"]) == {
        "authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:token-exchange"}


async def test_metadata_names_the_token_management_endpoints(client: httpx.AsyncClient) -> None:
    metadata = (await client.get(WELL_KNOWN)).json()
    # RFC 7662, RFC 7009 and RFC 7591 endpoints (RFC 8414 section 2).
    assert metadata["introspection_endpoint"] == f"{ISSUER}/introspect"
    assert metadata["revocation_endpoint"] == f"{ISSUER}/revoke"
    assert metadata["registration_endpoint"] == f"{ISSUER}/register"
    # Introspection callers are confidential (PROFILE.md section 10); public clients may
    # revoke their own tokens.
    assert set(metadata["introspection_endpoint_auth_methods_supported"]) == {
        "client_secret_basic", "client_secret_post", "private_key_jwt"}
    assert set(metadata["revocation_endpoint_auth_methods_supported"]) == {
        "client_secret_basic", "client_secret_post", "private_key_jwt", "none"}
    # RFC 8414 section 2: present because private_key_jwt is among the methods.
    for endpoint in ("introspection", "revocation"):
        algs = metadata[f"{endpoint}_endpoint_auth_signing_alg_values_supported"]
        assert "ES256" in algs and "none" not in algs


async def test_metadata_advertises_no_endpoint_that_does_not_exist(
    client: httpx.AsyncClient,
) -> None:
    metadata = (await client.get(WELL_KNOWN)).json()
    for member, url in metadata.items():
        if member.endswith("_endpoint") or member == "jwks_uri":
            path = url.removeprefix(ISSUER)
            probe = await client.get(path)  # 405 for a POST-only endpoint is fine
            assert probe.status_code != 404, f"{member} points at {path}, which is not served"


async def test_each_app_serves_its_own_settings(tmp_path: Path) -> None:
    # No module-level state: two apps in one process answer with their own configuration.
    answers = []
    for name, issuer, size in (("a", "https://a.example", 4096), ("b", "https://b.example", 8192)):
        settings = load_settings(
            data_dir=tmp_path / name, issuer=issuer, mission_intent_max_size=size
        )
        engine = create_engine_for(settings.database_url)
        transport = httpx.ASGITransport(app=create_app(settings, engine=engine))
        async with httpx.AsyncClient(transport=transport, base_url=issuer) as client:
            answers.append((await client.get(WELL_KNOWN)).json())
        engine.dispose()
    assert [(a["issuer"], a["mission_intent_max_size"]) for a in answers] == [
        ("https://a.example", 4096),
        ("https://b.example", 8192),
    ]


async def test_openapi_is_published(client: httpx.AsyncClient) -> None:
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "text/html" in docs.headers["content-type"]
    schema = (await client.get("/openapi.json")).json()
    assert {"/healthz", WELL_KNOWN, "/introspect", "/revoke", "/register"} <= set(
        schema["paths"])


def test_level_2_is_advertised_once_there_is_a_resource_as_to_hand_off_to() -> None:
    settings = load_settings(issuer=ISSUER, config_file=None, tenant_file=None,
                             resource_authorities=[{"issuer": "https://ras.partner.example",
                                                    "resources": [f"{ISSUER}/demo/erp"]}])
    metadata = authorization_server_metadata(settings)
    assert metadata["mission_ladder_levels_supported"] == [1, 2]
    assert "urn:ietf:params:oauth:grant-type:token-exchange" in metadata["grant_types_supported"]
