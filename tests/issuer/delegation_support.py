"""What the delegation tests share: an issuer app whose catalog lets the ERP API's reads go two
delegates deep (``demo-subagent``, then ``tool-runner``), a client the catalog never names
(``outsider``), the token exchange request a delegate sends (docs/delegation.md), and the
check a Resource Server makes of a DPoP-bound token."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import Key

from missionbound.config import ENV_PREFIX, Settings
from missionbound.mission.catalog import DelegationCeiling
from missionbound.protocol.dpop import DPoPProofError, verify_dpop_proof
from missionbound.tenant import Client, SecretHash, Tenant
from tests.issuer import flow as flow_module
from tests.issuer.flow import ERP, MCP, SUBAGENT, Flow, build_flow

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
REFRESH_TOKEN = "urn:ietf:params:oauth:token-type:refresh_token"

TOOL_RUNNER = ("tool-runner", "tool-runner-secret-0123456789")
OUTSIDER = ("outsider", "outsider-secret-0123456789")

_DEMO_TENANT = flow_module.tenant_with_narrow_agent


def _client(credentials: tuple[str, str], resources: dict[str, frozenset[str]]) -> Client:
    client_id, secret = credentials
    return Client(
        client_id=client_id, client_name=client_id,
        token_endpoint_auth_methods=("client_secret_basic",), redirect_uris=(),
        mission_resources=resources, mission_purposes_registered=None,
        secret_hash=SecretHash.of(secret, "sha256"),
    )


def _two_deep_tenant(settings: Settings) -> Tenant:
    """The flow's tenant; the ERP API's reads delegable two deep to demo-subagent and
    tool-runner (the demo catalog stops at one), the MCP tools as in the demo."""
    tenant = _DEMO_TENANT(settings)
    catalog = tenant.catalog
    erp = dataclasses.replace(catalog.resources[ERP], delegation=DelegationCeiling(
        max_depth=2, allowed_client_ids=frozenset({SUBAGENT[0], TOOL_RUNNER[0]})))
    catalog = dataclasses.replace(catalog, resources={**catalog.resources, ERP: erp})
    reads = frozenset({"invoices.read"})
    added = [_client(TOOL_RUNNER, {ERP: reads}), _client(OUTSIDER, {ERP: reads})]
    return dataclasses.replace(tenant, catalog=catalog, clients={
        **tenant.clients, **{client.client_id: client for client in added}})


def delegation_flow(database_url: str, data_dir: Path) -> Iterator[Flow]:
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.upper().startswith(ENV_PREFIX):
                patch.delenv(name)
        patch.setattr(flow_module, "tenant_with_narrow_agent", _two_deep_tenant)
        built = build_flow(database_url, data_dir)
    try:
        yield built
    finally:
        built.client.close()
        built.engine.dispose()


def exchange(flow: Flow, subject: str, *, key: Key | None,
             auth: tuple[str, str] | None = SUBAGENT,
             subject_token_type: str = ACCESS_TOKEN,
             pairs: tuple[tuple[str, str], ...] = (), **params: str | None) -> httpx.Response:
    """POST /token: the delegate's token exchange, with a fresh DPoP proof of ``key`` (none
    when None). ``params`` add or replace parameters (None removes one); ``pairs`` repeat."""
    base: dict[str, str | None] = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject,
        "subject_token_type": subject_token_type,
    }
    base.update(params)
    form = [(name, value) for name, value in base.items() if value is not None]
    headers = {"DPoP": flow.dpop(key)} if key is not None else {}
    return flow.client.post("/token", content=str(httpx.QueryParams([*form, *pairs])),
                            headers={**headers,
                                     "Content-Type": "application/x-www-form-urlencoded"},
                            auth=auth)


def entries_by_resource(claims: dict[str, Any]) -> dict[str, list[str]]:
    return {entry["resource"]: entry["actions"] for entry in claims["authorization_details"]}


@dataclass(frozen=True)
class ResourceServer:
    """The resource check of an RS-B/RS-C API at ``resource`` (there is no RS kit yet), made
    of the real parts: the AS's introspection over HTTP with the API's own credentials
    (``demo-rs``), :func:`missionbound.protocol.dpop.verify_dpop_proof` and the token's
    ``cnf.jkt`` (RFC 9449 section 7.1): the token is active, names this API as an audience,
    and the request's proof is signed by the key the token is bound to and carries its
    ``ath``."""

    flow: Flow
    resource: str = ERP
    credentials: tuple[str, str] = ("demo-rs", "demo-rs-secret")

    def introspect(self, token: str) -> dict[str, Any]:
        response = self.flow.client.post("/introspect", data={"token": token},
                                         auth=self.credentials)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def accepts(self, token: str, proof: str, *, method: str = "GET",
                path: str = "/invoices") -> bool:
        answer = self.introspect(token)
        if answer.get("active") is not True:
            return False
        audience = answer.get("aud")
        if self.resource not in ([audience] if isinstance(audience, str) else audience or []):
            return False
        jkt = (answer.get("cnf") or {}).get("jkt")
        if not isinstance(jkt, str):
            return False  # a bearer token: this API takes DPoP-bound tokens only
        try:
            checked = verify_dpop_proof(proof, method=method, url=self.resource + path,
                                        now=self.flow.now(), access_token=token)
        except DPoPProofError:
            return False
        return checked.jkt == jkt


__all__ = ["ERP", "MCP"]
