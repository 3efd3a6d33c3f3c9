"""What the ID-JAG tests share: the issuer app with ``resource_authorities`` configured (the
``flow`` of tests/issuer/conftest.py plus three Resource ASes), and the token exchange request
that asks for an ID-JAG (docs/cross-domain.md)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import Key

from missionbound.config import ENV_PREFIX
from missionbound.mission.lifecycle import Event, Role
from missionbound.store.lifecycle import transition
from tests.issuer.flow import AGENT, ERP, MCP, Flow, build_flow

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_JAG = "urn:ietf:params:oauth:token-type:id-jag"
REFRESH_TOKEN = "urn:ietf:params:oauth:token-type:refresh_token"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"

# The Resource AS of the ERP API's trust domain, and one for the MCP server's.
RAS = "https://ras.partner.test"
MCP_RAS = "https://mcp-ras.partner.test"
# A Resource AS for an API no test Mission is granted.
ELSEWHERE_RAS = "https://ras.elsewhere.test"
ELSEWHERE_API = "https://api.elsewhere.test/v1"

RESOURCE_AUTHORITIES = (
    {"issuer": RAS, "resources": [ERP]},
    {"issuer": MCP_RAS, "resources": [MCP]},
    {"issuer": ELSEWHERE_RAS, "resources": [ELSEWHERE_API]},
)


def cross_domain_flow(database_url: str,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    """The issuer app of ``build_flow`` with :data:`RESOURCE_AUTHORITIES` (module scope)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.upper().startswith(ENV_PREFIX):
                patch.delenv(name)
        built = build_flow(database_url, tmp_path_factory.mktemp("id-jag-data"),
                           resource_authorities=RESOURCE_AUTHORITIES)
        try:
            yield built
        finally:
            built.client.close()
            built.engine.dispose()


def request_id_jag(
    flow: Flow,
    subject_token: str,
    *,
    key: Key | None,
    audiences: Iterable[str] = (RAS,),
    auth: tuple[str, str] | None = AGENT,
    subject_token_type: str = REFRESH_TOKEN,
    pairs: Iterable[tuple[str, str]] = (),
    proof: str | None = None,
    **params: str,
) -> httpx.Response:
    """POST /token: the token exchange for an ID-JAG, with ``proof`` or else a fresh DPoP
    proof of ``key`` (none when None). ``params`` add or replace parameters; ``pairs`` are
    appended."""
    base = {
        "grant_type": TOKEN_EXCHANGE,
        "requested_token_type": ID_JAG,
        "subject_token": subject_token,
        "subject_token_type": subject_token_type,
        **params,
    }
    form = [*base.items(), *(("audience", aud) for aud in audiences), *pairs]
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if proof is None and key is not None:
        proof = flow.dpop(key)
    if proof is not None:
        headers["DPoP"] = proof
    return flow.client.post("/token", content=str(httpx.QueryParams(form)).encode(),
                            headers=headers, auth=auth)


def decode_id_jag(flow: Flow, value: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ID-JAG's header and claims, its signature checked with the AS's /jwks."""
    token = jwt.decode(value, flow.jwks(), algorithms=["ES256"])
    return dict(token.header), dict(token.claims)


def change(flow: Flow, mission_id: str, event: Event) -> None:
    """An administrator's lifecycle event, straight in the store."""
    with flow.store.begin() as session:
        transition(session, mission_id, event, roles={Role.ADMIN},
                   actor={"role": "admin", "sub": "bob"}, reason="test", now=flow.now(),
                   policy=flow.issuer.lifecycle_policy)

