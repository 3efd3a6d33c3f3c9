"""Transaction Tokens issued by the AS for its trust domain (draft-ietf-oauth-transaction-
tokens-10, issuance digest 9.3; docs/transaction-tokens.md), on SQLite and PostgreSQL: the
token verified as an internal service verifies it (against /jwks), its lifetime, the Mission
carried verbatim in ``tctx``, and every refusal (nothing issued, nothing changed, one
``token.refused`` audit record). The Resource AS role's Txn-Tokens are in
tests/cross_domain/test_txn_tokens_at_resource_as.py."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey
from sqlalchemy import select

from missionbound.mission.lifecycle import Event
from missionbound.protocol.txn_tokens import TXN_TOKEN_TYPE
from missionbound.store.models import AuditRecord
from tests.issuer.flow import (
    AGENT,
    ERP,
    ISSUER,
    MCP,
    Flow,
    Grant,
    audit_verifies,
    last_audit_seq,
    refusals,
    refused,
    snapshot,
)
from tests.issuer.txn_token_support import (
    ACCESS_TOKEN,
    ERP_GATEWAY,
    NO_EXCHANGE,
    PUBLIC,
    REFRESH_TOKEN,
    RS,
    TXN_TOKEN,
    change,
    request_txn_token,
    txn_token_flow,
    verify_issued,
)
from tests.protocol.proofs import generate_key
from tests.store.concurrency import run_concurrently

TOKEN_REFUSED = "token.refused"
ISSUED_EVENT = "txn_token.issued"


@pytest.fixture(scope="module")
def flow(flow_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    built = txn_token_flow(flow_database_url, tmp_path_factory.mktemp("txn-token-data"))
    try:
        yield built
    finally:
        built.client.close()
        built.engine.dispose()


def issue(flow: Flow, subject: str, **kwargs: Any) -> tuple[dict[str, Any], Any]:
    return verify_issued(flow.client, request_txn_token(flow.client, subject, **kwargs),
                         trust_domain=ISSUER, issuer=ISSUER, now=flow.now())


def claims_of(value: str) -> dict[str, Any]:
    """A JWS's claims, unverified (for tokens this test already trusts)."""
    payload = value.split(".")[1]
    padded = payload + "=" * (-len(payload) % 4)
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return decoded


def refused_txn(flow: Flow, send: Callable[[], httpx.Response], error: str, *,
                mission_id: str | None, status: int = 400) -> dict[str, Any]:
    """Refused with ``error``: nothing changed, one ``token.refused`` record naming the
    Mission when the request got as far as a subject token of one."""
    seq = last_audit_seq(flow.engine)
    response = refused(flow, send, status=status, error=error, audited=TOKEN_REFUSED)
    [record] = refusals(flow.engine, seq)
    assert record["mission_id"] == mission_id, record
    assert record["actor"]["client_id"], record
    body: dict[str, Any] = response.json()
    assert "access_token" not in body
    return body


# -- issuance ----------------------------------------------------------------------------------


def test_a_txn_token_carries_the_transaction_and_the_mission_as_evidence(flow: Flow) -> None:
    key = generate_key()
    grant = flow.grant(dpop_key=key)
    before = flow.derivations(grant.mission_id)
    seq = last_audit_seq(flow.engine)
    body, token = issue(
        flow, grant.access_token, scope="invoices.read get_invoice invoices.read",
        request_details=json.dumps({"invoice_id": "inv-acme-1", "action": "reconcile"}),
        request_context=json.dumps({"req_ip": "192.0.2.7", "authn": "dpop"}))
    # RFC 8693 section 2.2.1 with the draft's "Txn-Token Response".
    assert body["issued_token_type"] == TXN_TOKEN
    assert body["token_type"] == "N_A"
    assert "refresh_token" not in body and "authorization_details" not in body
    assert body["scope"] == "invoices.read get_invoice"
    assert 0 < body["expires_in"] <= 60
    subject = claims_of(grant.access_token)
    header = jwt.decode(body["access_token"], flow.jwks(), algorithms=["ES256"]).header
    assert header["typ"] == TXN_TOKEN_TYPE and header["kid"]
    assert token.sub == subject["sub"] == "alice"
    assert token.aud == ISSUER and token.iss == ISSUER
    assert token.req_wl == RS[0]
    assert token.scope == ("invoices.read", "get_invoice")
    # The Mission object exactly as the access token carries it, nothing else of it.
    assert token.tctx == {"invoice_id": "inv-acme-1", "action": "reconcile",
                          "mission": subject["mission"]}
    assert token.mission.id == grant.mission_id
    assert token.rctx == {"req_ip": "192.0.2.7", "authn": "dpop", "req_wl": RS[0],
                          "client_id": AGENT[0]}
    # Neither the access token nor its authority rides along (the draft's "Access Tokens").
    assert grant.access_token not in body["access_token"]
    assert set(token.claims) == {"iss", "iat", "exp", "aud", "txn", "sub", "scope", "req_wl",
                                 "tctx", "rctx"}
    # Read-only for the Mission: no derivation counted, no token recorded.
    assert flow.derivations(grant.mission_id) == before
    with flow.store.read() as session, session.begin():
        [record] = session.scalars(select(AuditRecord).where(AuditRecord.seq > seq))
    assert record.event == ISSUED_EVENT
    assert record.mission_id == grant.mission_id
    assert record.actor == {"client_id": RS[0]}
    assert record.authority_hash == subject["mission"]["authority_hash"]
    assert record.data["txn"] == token.txn
    assert record.data["subject_jti"] == subject["jti"]
    assert record.data["subject_client_id"] == AGENT[0]
    assert record.data["txn_token_hash"].startswith("sha-256:")
    assert body["access_token"] not in json.dumps(record.data)
    audit_verifies(flow.engine)


def test_each_txn_token_names_its_own_transaction(flow: Flow) -> None:
    grant = flow.grant()
    first = issue(flow, grant.access_token)[1]
    second = issue(flow, grant.access_token)[1]
    assert first.txn != second.txn
    assert first.mission == second.mission


def test_the_lifetime_is_the_setting_and_never_past_the_subject_token(flow: Flow) -> None:
    grant = flow.grant()
    subject_exp = claims_of(grant.access_token)["exp"]
    body, token = issue(flow, grant.access_token)
    assert token.exp - token.iat == 60 and body["expires_in"] == 60
    # 20 s before the access token expires, the Txn-Token expires with it.
    flow.clock.advance(subject_exp - flow.now().timestamp() - 20)
    body, token = issue(flow, grant.access_token)
    assert token.exp == subject_exp
    assert 0 < body["expires_in"] <= 21


def test_a_gateway_gets_txn_tokens_for_its_own_resource_only(flow: Flow) -> None:
    grant = flow.grant()
    _, token = issue(flow, grant.access_token, auth=ERP_GATEWAY, scope="invoices.read")
    assert token.req_wl == ERP_GATEWAY[0] and token.rctx["req_wl"] == ERP_GATEWAY[0]
    # journal-entries.write is granted with max_value: a scope value cannot carry the bound
    # (decision Z11).
    assert "constraints" in next(entry for entry in claims_of(grant.access_token)[
        "authorization_details"] if "journal-entries.write" in entry["actions"])
    refused_txn(flow, lambda: request_txn_token(flow.client, grant.access_token,
                                                auth=ERP_GATEWAY,
                                                scope="journal-entries.write"),
                "invalid_scope", mission_id=grant.mission_id)
    # An action of the MCP gateway's resource is more than it may ask for.
    refused_txn(flow, lambda: request_txn_token(flow.client, grant.access_token,
                                                auth=ERP_GATEWAY, scope="get_invoice"),
                "invalid_scope", mission_id=grant.mission_id)


def test_a_dpop_bound_access_token_needs_no_proof_from_the_workload(flow: Flow) -> None:
    # The workload is the token's audience, not its holder (decision Z7).
    grant = flow.grant(dpop_key=generate_key())
    assert claims_of(grant.access_token)["cnf"]
    _, token = issue(flow, grant.access_token)
    assert "cnf" not in token.claims


# -- refusals: the request ---------------------------------------------------------------------


@pytest.mark.parametrize("token_type", [
    REFRESH_TOKEN, "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token", TXN_TOKEN,
    "urn:ietf:params:oauth:token-type:self_signed", "urn:x:unknown"])
def test_only_access_tokens_are_subjects(flow: Flow, token_type: str) -> None:
    grant = flow.grant()
    subject = grant.refresh_token if token_type == REFRESH_TOKEN else grant.access_token
    refused_txn(flow, lambda: request_txn_token(flow.client, subject,
                                                subject_token_type=token_type),
                "invalid_request", mission_id=None)


@pytest.mark.parametrize(("change_", "error"), [
    ({"scope": None}, "invalid_request"),
    ({"scope": "   "}, "invalid_request"),
    ({"audiences": ()}, "invalid_request"),
    ({"audiences": ("https://other-domain.test",)}, "invalid_target"),
    ({"audiences": (ISSUER, ISSUER)}, "invalid_target"),
    ({"pairs": [("resource", ERP)]}, "invalid_request"),
    ({"authorization_details": "[]"}, "invalid_request"),
    ({"actor_token": "x", "actor_token_type": ACCESS_TOKEN}, "invalid_request"),
    ({"pairs": [("scope", "get_invoice")]}, "invalid_request"),
    ({"pairs": [("request_details", "{}"), ("request_details", "{}")]}, "invalid_request"),
])
def test_malformed_requests_are_invalid(flow: Flow, change_: dict[str, Any],
                                        error: str) -> None:
    grant = flow.grant()
    refused_txn(flow, lambda: request_txn_token(flow.client, grant.access_token, **change_),
                error, mission_id=None)


@pytest.mark.parametrize(("name", "value"), [
    ("request_details", "not json"),
    ("request_details", "[1, 2]"),
    ("request_details", '"inv-acme-1"'),
    ("request_details", '{"amount": 12.5}'),
    ("request_details", '{"a": 1, "a": 2}'),
    ("request_details", '{"mission": {"id": "msn_forged"}}'),
    ("request_details", json.dumps({"blob": "x" * 8200})),
    ("request_details", '{"k": ' * 10 + "{}" + "}" * 10),
    ("request_context", '{"req_wl": "payments-service"}'),
    ("request_context", '{"client_id": "someone-else"}'),
    ("request_context", '{"act": {"sub": "x"}}'),
    ("request_context", json.dumps({"blob": "x" * 4100})),
    ("request_context", "null"),
])
def test_malformed_or_oversize_context_is_invalid(flow: Flow, name: str, value: str) -> None:
    grant = flow.grant()
    body = refused_txn(flow, lambda: request_txn_token(flow.client, grant.access_token,
                                                       **{name: value}),
                       "invalid_request", mission_id=None)
    assert name in body["error_description"]


# -- refusals: the requester -------------------------------------------------------------------


def test_a_public_client_is_not_authenticated(flow: Flow) -> None:
    grant = flow.grant()
    # No authenticated client, no audit record (server.py: no log flooding).
    refused(flow, lambda: flow.client.post("/token", data={
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "client_id": PUBLIC, "requested_token_type": TXN_TOKEN, "audience": ISSUER,
        "scope": "invoices.read", "subject_token": grant.access_token,
        "subject_token_type": ACCESS_TOKEN}), status=401, error="invalid_client", audited=None)


def test_a_client_serving_no_resource_is_no_workload(flow: Flow) -> None:
    # The agent itself holds the access token, but is outside the trust domain (Z1).
    grant = flow.grant()
    refused_txn(flow, lambda: request_txn_token(flow.client, grant.access_token, auth=AGENT),
                "unauthorized_client", mission_id=None)


def test_a_workload_without_token_exchange_is_unauthorized(flow: Flow) -> None:
    grant = flow.grant()
    refused_txn(flow, lambda: request_txn_token(flow.client, grant.access_token,
                                                auth=NO_EXCHANGE),
                "unauthorized_client", mission_id=None)


def test_a_workload_the_token_is_not_for_gets_nothing(flow: Flow) -> None:
    grant = flow.grant(resource=MCP)  # aud: the MCP gateway only
    refused_txn(flow, lambda: request_txn_token(flow.client, grant.access_token,
                                                auth=ERP_GATEWAY, scope="get_invoice"),
                "invalid_grant", mission_id=grant.mission_id)


@pytest.mark.parametrize("scope", ["execute_wire_transfer", "openid", "invoices.read admin",
                                   "Invoices.read"])
def test_scope_beyond_the_subject_token_is_invalid_scope(flow: Flow, scope: str) -> None:
    grant = flow.grant(scope="invoices.read get_invoice")
    refused_txn(flow, lambda: request_txn_token(flow.client, grant.access_token, scope=scope),
                "invalid_scope", mission_id=grant.mission_id)


# -- refusals: the subject token ---------------------------------------------------------------


def test_a_refresh_token_sent_as_an_access_token_is_invalid_grant(flow: Flow) -> None:
    grant = flow.grant()
    refused_txn(flow, lambda: request_txn_token(flow.client, grant.refresh_token),
                "invalid_grant", mission_id=None)


def test_an_expired_access_token_is_invalid_grant(flow: Flow) -> None:
    grant = flow.grant()
    flow.clock.advance(claims_of(grant.access_token)["exp"] - flow.now().timestamp() + 1)
    refused_txn(flow, lambda: request_txn_token(flow.client, grant.access_token),
                "invalid_grant", mission_id=None)


def test_a_revoked_access_token_is_invalid_grant(flow: Flow) -> None:
    grant = flow.grant()
    revoked = flow.client.post("/revoke", data={"token": grant.access_token}, auth=AGENT)
    assert revoked.status_code == 200, revoked.text
    refused_txn(flow, lambda: request_txn_token(flow.client, grant.access_token),
                "invalid_grant", mission_id=None)


def forged(grant: Grant, how: str) -> str:
    """The grant's access token with its claims changed, signed by another key under the
    AS's kid, or unsigned."""
    header, payload, signature = grant.access_token.split(".")
    if how == "claims":
        claims = claims_of(grant.access_token) | {"sub": "mallory"}
        payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        return f"{header}.{payload}.{signature}"
    if how == "key":
        kid = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]
        impostor = ECKey.generate_key("P-256", private=True)
        return jwt.encode({"typ": "at+jwt", "alg": "ES256", "kid": kid},
                          claims_of(grant.access_token), impostor)
    unsigned = {"typ": "at+jwt", "alg": "none"}
    head = base64.urlsafe_b64encode(json.dumps(unsigned).encode()).rstrip(b"=").decode()
    return f"{head}.{payload}."


@pytest.mark.parametrize("how", ["claims", "key", "none"])
def test_a_forged_access_token_is_invalid_grant(flow: Flow, how: str) -> None:
    grant = flow.grant()
    refused_txn(flow, lambda: request_txn_token(flow.client, forged(grant, how)),
                "invalid_grant", mission_id=None)


def test_a_txn_token_is_no_subject_token(flow: Flow) -> None:
    # No replacement Txn-Tokens (decision Z8): one is not an access token of this AS.
    grant = flow.grant()
    body, _ = issue(flow, grant.access_token)
    refused_txn(flow, lambda: request_txn_token(flow.client, body["access_token"]),
                "invalid_grant", mission_id=None)


# -- refusals: the Mission ---------------------------------------------------------------------


@pytest.mark.parametrize(("event", "state"), [(Event.REVOKE, "revoked"),
                                              (Event.SUSPEND, "suspended"),
                                              (Event.COMPLETE, "completed")])
def test_no_txn_token_for_a_mission_that_is_not_active(flow: Flow, event: Event,
                                                       state: str) -> None:
    grant = flow.grant()
    change(flow, grant.mission_id, event)
    body = refused_txn(flow, lambda: request_txn_token(flow.client, grant.access_token),
                       "invalid_grant", mission_id=grant.mission_id)
    assert body["mission_state"] == state
    assert body["mission_error"] == f"mission_{state}"


def test_a_resumed_mission_gets_txn_tokens_again(flow: Flow) -> None:
    grant = flow.grant()
    change(flow, grant.mission_id, Event.SUSPEND)
    refused_txn(flow, lambda: request_txn_token(flow.client, grant.access_token),
                "invalid_grant", mission_id=grant.mission_id)
    change(flow, grant.mission_id, Event.RESUME)
    assert issue(flow, grant.access_token)[1].mission.id == grant.mission_id


def test_an_exhausted_mission_still_gets_txn_tokens(flow: Flow) -> None:
    # Not a derivation (decision Z3): the cap limits tokens with Mission authority only.
    from tests.issuer.flow import mission_intent

    intent = mission_intent(flow.now())
    intent["context"] = {**intent["context"], "max_derivations": 1}
    grant = flow.grant(intent=intent)
    assert flow.refresh(grant.refresh_token).json()["error"] == "invalid_grant"
    assert issue(flow, grant.access_token)[1].mission.id == grant.mission_id


def test_a_revoke_is_never_followed_by_a_txn_token(flow: Flow) -> None:
    """Atomic truth: workloads keep asking while an administrator revokes; every Txn-Token
    issued was committed (audited) before the revoke, every request after it refused."""
    grant = flow.grant()
    first_issued = threading.Event()

    def work(index: int) -> list[httpx.Response]:
        if index == 0:
            first_issued.wait(10)  # revoke mid-stream: both outcomes are raced
            change(flow, grant.mission_id, Event.REVOKE)
            return []
        answers = []
        for _ in range(4):
            answer = request_txn_token(flow.client, grant.access_token)
            if answer.status_code == 200:
                first_issued.set()
            answers.append(answer)
        return answers

    results = run_concurrently(8, work)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:1]
    answered = [answer for found in results if isinstance(found, list) for answer in found]
    assert {r.status_code for r in answered} <= {200, 400}
    assert all(r.json()["mission_state"] == "revoked" for r in answered if r.status_code == 400)
    with flow.store.read() as session, session.begin():
        rows = session.execute(select(AuditRecord.seq, AuditRecord.event, AuditRecord.data)
                               .where(AuditRecord.mission_id == grant.mission_id)).all()
    [revoked_at] = [seq for seq, event, data in rows
                    if event == "mission.transition" and data.get("state") == "revoked"]
    issued = [seq for seq, event, _ in rows if event == ISSUED_EVENT]
    assert issued and len(issued) == sum(r.status_code == 200 for r in answered)
    assert all(seq < revoked_at for seq in issued)
    refused_after = request_txn_token(flow.client, grant.access_token)
    assert refused_after.json()["mission_state"] == "revoked"
    audit_verifies(flow.engine)


def test_refusals_left_the_store_as_it_was(flow: Flow) -> None:
    grant = flow.grant()
    before = snapshot(flow.engine)
    for _ in range(3):
        assert request_txn_token(flow.client, grant.access_token, scope="openid").status_code \
            == 400
    assert snapshot(flow.engine) == before
