"""Transaction Tokens at a Resource AS (docs/transaction-tokens.md, "At a Resource AS"), on
SQLite and PostgreSQL: Txn-Tokens for its local tokens of an origin's Mission, the origin
asked before the request's transaction opens, refusals that name the origin's Mission."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from missionbound.issuer import remote_missions
from missionbound.mission.lifecycle import Event
from missionbound.store.models import AuditRecord
from tests.cross_domain.support import AGENT as RAS_AGENT
from tests.cross_domain.support import ERP as RAS_ERP
from tests.cross_domain.support import (
    ERP_RS,
    LEDGER_RS,
    ORIGIN,
    RAS,
    Origin,
    ResourceAS,
    build_origin,
    build_resource_as,
    last_seq,
    through,
)
from tests.cross_domain.support import refused as ras_refused
from tests.issuer.conftest import flow_database_url  # noqa: F401 (the shared fixture)
from tests.issuer.test_txn_tokens import claims_of
from tests.issuer.txn_token_support import (
    clean_environment,
    request_txn_token,
    sibling_database,
    verify_issued,
)
from tests.protocol.proofs import generate_key

# -- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    folder = tmp_path_factory.mktemp("txn-origin")
    with clean_environment():
        built = build_origin(f"sqlite:///{folder / 'origin.db'}", folder)
    try:
        yield built
    finally:
        built.client.close()
        built.engine.dispose()


@pytest.fixture(scope="module")
def ras(flow_database_url: str, origin: Origin,  # noqa: F811
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ResourceAS]:
    folder = tmp_path_factory.mktemp("txn-ras")
    with sibling_database(flow_database_url, folder) as url, clean_environment():
        built = build_resource_as(url, folder, origin.client)
        try:
            yield built
        finally:
            built.client.close()
            built.engine.dispose()


def local_token(origin: Origin, ras: ResourceAS) -> tuple[str, dict[str, Any]]:
    """A Mission at the origin and the Resource AS's local token for it (ID-JAG redeemed)."""
    mission = origin.mission()
    key = generate_key()
    response = ras.redeem(origin.id_jag(mission, jkt=key.thumbprint()), key=key)
    assert response.status_code == 200, response.text
    value = response.json()["access_token"]
    return value, claims_of(value)


def test_a_resource_as_issues_txn_tokens_for_its_local_tokens(origin: Origin,
                                                              ras: ResourceAS) -> None:
    value, local = local_token(origin, ras)
    response = request_txn_token(ras.client, value, auth=ERP_RS, audiences=(RAS,),
                                 scope="invoices.read",
                                 request_details=json.dumps({"invoice_id": "inv-1"}))
    body, token = verify_issued(ras.client, response, trust_domain=RAS, issuer=RAS)
    assert body["token_type"] == "N_A"
    assert token.tctx == {"invoice_id": "inv-1", "mission": local["mission"]}
    assert token.mission.origin != RAS  # the origin's Mission, carried verbatim
    assert token.sub == local["sub"] and token.req_wl == ERP_RS[0]
    assert token.rctx["client_id"] == RAS_AGENT[0]
    assert token.exp <= local["exp"]


def test_a_resource_as_refuses_when_the_origin_says_the_mission_ended(
        origin: Origin, ras: ResourceAS) -> None:
    value, local = local_token(origin, ras)
    origin.transition(local["mission"]["id"], Event.REVOKE)
    body = ras_refused(ras, lambda: request_txn_token(ras.client, value, auth=ERP_RS,
                                                      audiences=(RAS,)),
                       status=400, error="invalid_grant")
    assert body["mission_state"] == "revoked"


def test_a_resource_as_fails_closed_when_the_origin_cannot_be_asked(
        origin: Origin, ras: ResourceAS) -> None:
    value, _ = local_token(origin, ras)

    def status_down(request: httpx.Request) -> httpx.Response | None:
        return httpx.Response(502) if request.url.path.endswith("/mission/status") else None

    with ras.reaching_origin(through(origin, status_down)):
        ras_refused(ras, lambda: request_txn_token(ras.client, value, auth=ERP_RS,
                                                   audiences=(RAS,)),
                    status=503, error="temporarily_unavailable")


def test_a_resource_as_workload_gets_txn_tokens_for_its_resources_only(
        origin: Origin, ras: ResourceAS) -> None:
    value, local = local_token(origin, ras)
    assert RAS_ERP in local["aud"]
    # The ledger's workload may name the ledger's actions, never the ERP API's.
    _, token = verify_issued(ras.client, request_txn_token(
        ras.client, value, auth=LEDGER_RS, audiences=(RAS,), scope="entries.read"),
        trust_domain=RAS)
    assert token.req_wl == LEDGER_RS[0]
    response = request_txn_token(ras.client, value, auth=LEDGER_RS, audiences=(RAS,),
                                 scope="invoices.read")
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_scope"


def test_the_origin_is_asked_before_the_transaction_opens(
        origin: Origin, ras: ResourceAS, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow origin must never hold this AS's database: when the status request leaves,
    no transaction of the Resource AS is open (on SQLite that would be its one writer)."""
    value, _ = local_token(origin, ras)
    open_transactions: list[int] = []
    asked = remote_missions.ask_any_audience

    def spy(*args: Any, **kwargs: Any) -> Any:
        open_transactions.append(ras.engine.pool.checkedout())
        return asked(*args, **kwargs)

    monkeypatch.setattr(remote_missions, "ask_any_audience", spy)
    response = request_txn_token(ras.client, value, auth=ERP_RS, audiences=(RAS,))
    assert response.status_code == 200, response.text
    assert open_transactions == [0]


def test_a_refusal_names_the_origins_mission(origin: Origin, ras: ResourceAS) -> None:
    value, local = local_token(origin, ras)
    origin.transition(local["mission"]["id"], Event.SUSPEND)
    seq = last_seq(ras.engine)
    ras_refused(ras, lambda: request_txn_token(ras.client, value, auth=ERP_RS,
                                               audiences=(RAS,)),
                status=400, error="invalid_grant")
    with ras.store.read() as session, session.begin():
        record = session.scalars(select(AuditRecord).where(AuditRecord.seq > seq)).one()
    assert record.mission_id == local["mission"]["id"] and record.data["origin"] == ORIGIN
