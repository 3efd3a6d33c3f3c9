"""What the Transaction Token tests share (docs/transaction-tokens.md): the issuer app of
tests/issuer/flow.py with a few more workloads in its tenant, the Txn-Token request, the
verifier run against the AS's own ``/jwks``, and a second database for the Resource AS role
tests (the two-domain setup of tests/cross_domain/support.py)."""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import make_url

from missionbound.config import ENV_PREFIX, Settings
from missionbound.issuer.clients import TOKEN_EXCHANGE
from missionbound.mission.lifecycle import Event, Role
from missionbound.protocol.jwks import StaticKeys
from missionbound.protocol.txn_tokens import TxnToken, verify_txn_token
from missionbound.store.engine import create_engine_for
from missionbound.store.lifecycle import transition
from missionbound.tenant import Client, SecretHash, Tenant
from tests.conftest import postgres_url
from tests.issuer import flow as flow_module
from tests.issuer.flow import ERP, ISSUER, Flow, build_flow

TXN_TOKEN = "urn:ietf:params:oauth:token-type:txn_token"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
REFRESH_TOKEN = "urn:ietf:params:oauth:token-type:refresh_token"

# The demo Resource Servers' credential (audiences: the ERP API and the MCP gateway).
RS = ("demo-rs", "demo-rs-secret")
# A gateway in front of the ERP API only.
ERP_GATEWAY = ("erp-gateway", "erp-gateway-secret-4Tx")
# A workload that may not use token exchange at all.
NO_EXCHANGE = ("no-exchange-rs", "no-exchange-secret-9Qa")
# A public client (token_endpoint_auth_method none).
PUBLIC = "public-app"


def _workload(client_id: str, secret: str | None, *, audiences: Iterable[str] = (),
              auth: tuple[str, ...] = ("client_secret_basic",),
              metadata: dict[str, Any] | None = None) -> Client:
    return Client(
        client_id=client_id, client_name=client_id, token_endpoint_auth_methods=auth,
        redirect_uris=(), mission_resources={}, mission_purposes_registered=None,
        secret_hash=SecretHash.of(secret, "sha256") if secret else None,
        audiences=frozenset(audiences), metadata=metadata or {})


def _tenant_with_workloads(settings: Settings) -> Tenant:
    tenant = _DEMO_TENANT(settings)
    added = [
        _workload(ERP_GATEWAY[0], ERP_GATEWAY[1], audiences=[ERP]),
        _workload(NO_EXCHANGE[0], NO_EXCHANGE[1], audiences=[ERP],
                  metadata={"grant_types": ["authorization_code", "refresh_token"]}),
        _workload(PUBLIC, None, auth=("none",)),
    ]
    return dataclasses.replace(
        tenant, clients={**tenant.clients, **{client.client_id: client for client in added}})


_DEMO_TENANT = flow_module.tenant_with_narrow_agent


@contextmanager
def clean_environment() -> Iterator[pytest.MonkeyPatch]:
    """A developer's MISSIONBOUND_* variables must not change what these tests see."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.upper().startswith(ENV_PREFIX):
                patch.delenv(name)
        yield patch


def txn_token_flow(database_url: str, data_dir: Path) -> Flow:
    """The issuer app of ``build_flow`` whose tenant also has :data:`ERP_GATEWAY`,
    :data:`NO_EXCHANGE` and :data:`PUBLIC`."""
    with clean_environment() as patch:
        patch.setattr(flow_module, "tenant_with_narrow_agent", _tenant_with_workloads)
        return build_flow(database_url, data_dir)


def request_txn_token(
    client: TestClient,
    subject_token: str,
    *,
    auth: tuple[str, str] | None = RS,
    audiences: Iterable[str] = (ISSUER,),
    scope: str | None = "invoices.read",
    subject_token_type: str = ACCESS_TOKEN,
    pairs: Iterable[tuple[str, str]] = (),
    **params: str | None,
) -> httpx.Response:
    """POST /token: the Txn-Token request of the draft's section "Txn-Token Request".
    ``params`` add or replace parameters (None drops one); ``pairs`` are appended."""
    base: dict[str, str | None] = {
        "grant_type": TOKEN_EXCHANGE,
        "requested_token_type": TXN_TOKEN,
        "subject_token": subject_token,
        "subject_token_type": subject_token_type,
        "scope": scope,
        **params,
    }
    form = [(name, value) for name, value in base.items() if value is not None]
    form += [("audience", audience) for audience in audiences]
    form += list(pairs)
    return client.post("/token", content=str(httpx.QueryParams(form)).encode(),
                       headers={"Content-Type": "application/x-www-form-urlencoded"},
                       auth=auth)


def verify_issued(client: TestClient, response: httpx.Response, *, trust_domain: str,
                  **options: Any) -> tuple[dict[str, Any], TxnToken]:
    """The response body and its Txn-Token, verified as an internal service would: with
    :func:`verify_txn_token` against the AS's published ``/jwks``."""
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    keys = StaticKeys(client.get("/jwks").json())
    token = verify_txn_token(body["access_token"], keys=keys, trust_domain=trust_domain,
                             **options)
    return body, token


def change(flow: Flow, mission_id: str, event: Event) -> None:
    """An administrator's lifecycle event, straight in the store."""
    with flow.store.begin() as session:
        transition(session, mission_id, event, roles={Role.ADMIN},
                   actor={"role": "admin", "sub": "bob"}, reason="test", now=flow.now(),
                   policy=flow.issuer.lifecycle_policy)


@contextmanager
def sibling_database(database_url: str, folder: Path) -> Iterator[str]:
    """Another empty database of the same kind as ``database_url``: a new SQLite file in
    ``folder``, or a new PostgreSQL schema (dropped afterwards)."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{folder / 'sibling.db'}"
        return
    schema = "mb_test_" + secrets.token_hex(6)
    admin = create_engine_for(postgres_url(), pool_size=1, max_overflow=0)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(postgres_url()).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
