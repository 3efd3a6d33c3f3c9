"""Delegation inside a Mission by token exchange (RFC 8693, PROFILE.md section 9;
docs/delegation.md), on SQLite and PostgreSQL: what a delegate gets, the act chain, narrowing
at each hop, the depth and delegate rules, every refusal (status, error, nothing changed, the
refusal audit record), revocation reaching the delegates, and the delegate's key enforced by
a Resource Server."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html import unescape
from typing import Any

import pytest
from sqlalchemy import select

from missionbound.protocol.dpop import DPoPProofError, access_token_hash, verify_dpop_proof
from missionbound.store.models import AuditRecord, IssuedToken
from tests.issuer.delegation_support import (
    ACCESS_TOKEN,
    OUTSIDER,
    REFRESH_TOKEN,
    TOOL_RUNNER,
    delegation_flow,
    entries_by_resource,
    exchange,
)
from tests.issuer.flow import (
    AGENT,
    ERP,
    ISSUER,
    MCP,
    SUBAGENT,
    Flow,
    Grant,
    audit_verifies,
    mission_intent,
    refused,
)
from tests.issuer.governance_support import governance
from tests.protocol.proofs import generate_key, make_proof

RS = ("demo-rs", "demo-rs-secret")


@pytest.fixture(scope="module")
def flow(flow_database_url: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    yield from delegation_flow(flow_database_url, tmp_path_factory.mktemp("delegation"))


def agent_grant(flow: Flow, **push: Any) -> Grant:
    return flow.grant(dpop_key=generate_key(), **push)


def delegated(flow: Flow, subject_token: str, *, auth: tuple[str, str] = SUBAGENT,
              **params: str | None) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """A successful exchange: the response body, the token's claims and the delegate's key."""
    key = generate_key()
    response = exchange(flow, subject_token, key=key, auth=auth, **params)
    assert response.status_code == 200, response.text
    body = response.json()
    return body, flow.decode(body["access_token"])[1], key


def introspect(flow: Flow, token: str) -> dict[str, Any]:
    response = flow.client.post("/introspect", data={"token": token}, auth=RS)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


# -- what a delegate gets -------------------------------------------------------------------


def test_a_delegate_gets_the_delegable_part_bound_to_its_own_key(flow: Flow) -> None:
    grant = agent_grant(flow)
    agent_claims = flow.decode(grant.access_token)[1]
    before = flow.derivations(grant.mission_id)
    body, claims, key = delegated(flow, grant.access_token)

    assert body["issued_token_type"] == ACCESS_TOKEN and body["token_type"] == "DPoP"
    assert "refresh_token" not in body
    assert body["authorization_details"] == claims["authorization_details"]
    # Same subject and Mission; the delegate is the client and the actor.
    assert claims["sub"] == agent_claims["sub"] and claims["mission"] == agent_claims["mission"]
    assert claims["client_id"] == SUBAGENT[0]
    assert claims["act"] == {"sub": SUBAGENT[0], "iss": ISSUER}
    assert claims["cnf"] == {"jkt": key.thumbprint()}
    assert claims["exp"] <= agent_claims["exp"]
    # Only what carries delegation for demo-subagent: the ERP reads and the MCP reads; the
    # journal entries and the payment tools are not delegable.
    assert entries_by_resource(claims) == {ERP: ["invoices.read"],
                                           MCP: ["get_invoice", "list_invoices"]}
    assert all("delegation" in entry for entry in claims["authorization_details"])
    # One derivation, one recorded token in the subject token's grant, one audit record.
    assert flow.derivations(grant.mission_id) == before + 1
    with flow.store.read() as session, session.begin():
        row = session.get(IssuedToken, claims["jti"])
        subject_row = session.get(IssuedToken, agent_claims["jti"])
        record = session.scalars(select(AuditRecord).where(
            AuditRecord.event == "token.issued", AuditRecord.mission_id == grant.mission_id)
            .order_by(AuditRecord.seq.desc()).limit(1)).one()
    assert row is not None and subject_row is not None
    assert row.client_id == SUBAGENT[0] and row.grant_id == subject_row.grant_id
    assert record.data["act"] == claims["act"]
    assert record.data["on_behalf_of"] == [AGENT[0]]
    assert record.data["subject_jti"] == agent_claims["jti"]
    audit_verifies(flow.engine)


def test_a_two_level_chain_narrows_at_each_hop(flow: Flow) -> None:
    grant = agent_grant(flow)
    # Hop 1: demo-subagent asks for the ERP API only.
    _, first, _ = delegated(flow, grant.access_token, resource=ERP)
    assert entries_by_resource(first) == {ERP: ["invoices.read"]}
    first_token = exchange_token(flow, grant.access_token, resource=ERP)
    # Hop 2: tool-runner, from demo-subagent's token, with authorization_details.
    wanted = [{"type": "mission_resource_access", "resource": ERP,
               "actions": ["invoices.read"],
               "delegation": {"max_depth": 2,
                              "allowed_delegates": [{"client_id": TOOL_RUNNER[0]}]}}]
    _, second, key = delegated(flow, first_token, auth=TOOL_RUNNER,
                               authorization_details=json.dumps(wanted))
    assert second["act"] == {"sub": TOOL_RUNNER[0], "iss": ISSUER,
                             "act": {"sub": SUBAGENT[0], "iss": ISSUER}}
    assert second["client_id"] == TOOL_RUNNER[0]
    assert second["authorization_details"] == wanted
    assert second["cnf"] == {"jkt": key.thumbprint()}
    assert second["mission"] == first["mission"]


def exchange_token(flow: Flow, subject: str, *, auth: tuple[str, str] = SUBAGENT,
                   **params: str) -> str:
    body, _, _ = delegated(flow, subject, auth=auth, **params)
    return str(body["access_token"])


def test_a_non_delegable_entry_is_dropped_and_asking_for_it_is_refused(flow: Flow) -> None:
    grant = agent_grant(flow)
    _, claims, _ = delegated(flow, grant.access_token, resource=ERP)
    assert "journal-entries.write" not in entries_by_resource(claims)[ERP]
    refused(flow, lambda: exchange(flow, grant.access_token, key=generate_key(),
                                   scope="journal-entries.write"),
            status=400, error="invalid_scope", audited="token.refused")


def test_depth_beyond_max_depth_is_invalid_grant(flow: Flow) -> None:
    grant = agent_grant(flow)
    first = exchange_token(flow, grant.access_token, resource=ERP)
    second = exchange_token(flow, first, auth=TOOL_RUNNER)
    # A third hop: demo-subagent is allowed, but the ERP entry stops at depth 2.
    response = refused(flow, lambda: exchange(flow, second, key=generate_key()),
                       status=400, error="invalid_grant", audited="token.refused")
    assert "max_depth" in response.json()["error_description"]
    # The MCP entries stop at depth 1 (the demo catalog): not to tool-runner at depth 2.
    refused(flow, lambda: exchange(flow, first, key=generate_key(), auth=TOOL_RUNNER,
                                   resource=MCP),
            status=400, error="invalid_target", audited="token.refused")


def test_a_delegate_not_allowed_is_invalid_target(flow: Flow) -> None:
    grant = agent_grant(flow)
    refused(flow, lambda: exchange(flow, grant.access_token, key=generate_key(),
                                   auth=OUTSIDER),
            status=400, error="invalid_target", audited="token.refused")


def test_a_widened_request_is_refused(flow: Flow) -> None:
    grant = agent_grant(flow)
    wider = [{"type": "mission_resource_access", "resource": ERP,
              "actions": ["invoices.read", "journal-entries.write"]}]
    refused(flow, lambda: exchange(flow, grant.access_token, key=generate_key(),
                                   authorization_details=json.dumps(wider)),
            status=400, error="invalid_authorization_details", audited="token.refused")
    refused(flow, lambda: exchange(flow, grant.access_token, key=generate_key(),
                                   resource="https://elsewhere.example/api"),
            status=400, error="invalid_target", audited="token.refused")


def test_the_actor_token_must_name_the_delegate(flow: Flow) -> None:
    grant = agent_grant(flow)
    own = exchange_token(flow, grant.access_token, resource=ERP)
    # demo-subagent's own (delegated) token names it: accepted.
    response = exchange(flow, grant.access_token, key=generate_key(), actor_token=own,
                        actor_token_type=ACCESS_TOKEN)
    assert response.status_code == 200, response.text
    # The agent's token names someone else.
    refused(flow, lambda: exchange(flow, grant.access_token, key=generate_key(),
                                   actor_token=grant.access_token,
                                   actor_token_type=ACCESS_TOKEN),
            status=400, error="invalid_grant", audited="token.refused")
    refused(flow, lambda: exchange(flow, grant.access_token, key=generate_key(),
                                   actor_token=own,
                                   actor_token_type="urn:ietf:params:oauth:token-type:jwt"),
            status=400, error="invalid_request", audited="token.refused")


# -- malformed requests and dead subject tokens ---------------------------------------------


@pytest.mark.parametrize(("params", "pairs"), [
    ({"subject_token_type": REFRESH_TOKEN}, ()),
    ({"subject_token_type": None}, ()),
    ({"subject_token": None}, ()),
    ({"actor_token": "x"}, ()),
    ({"authorization_details": "not json"}, ()),
    ({}, (("scope", "invoices.read"), ("scope", "invoices.read"))),
    ({"requested_token_type": "urn:example:unknown"}, ()),
])
def test_malformed_requests_are_invalid_request(flow: Flow, params: dict[str, Any],
                                                pairs: tuple[tuple[str, str], ...]) -> None:
    grant = agent_grant(flow)
    refused(flow, lambda: exchange(flow, grant.access_token, key=generate_key(), pairs=pairs,
                                   **params),
            status=400, error="invalid_request", audited="token.refused")


def test_a_subject_token_that_is_not_a_live_access_token_is_invalid_grant(flow: Flow) -> None:
    grant = agent_grant(flow)
    for subject in ("not-a-token", grant.refresh_token, grant.access_token[:-4] + "AAAA"):
        refused(flow, lambda subject=subject: exchange(flow, subject, key=generate_key()),
                status=400, error="invalid_grant", audited="token.refused")
    revoked = flow.client.post("/revoke", data={"token": grant.access_token}, auth=AGENT)
    assert revoked.status_code == 200
    refused(flow, lambda: exchange(flow, grant.access_token, key=generate_key()),
            status=400, error="invalid_grant", audited="token.refused")


def test_a_client_does_not_delegate_to_itself(flow: Flow) -> None:
    grant = agent_grant(flow)
    refused(flow, lambda: exchange(flow, grant.access_token, key=generate_key(), auth=AGENT),
            status=400, error="invalid_request", audited="token.refused")


def test_a_delegated_token_needs_a_dpop_proof(flow: Flow) -> None:
    grant = agent_grant(flow)
    refused(flow, lambda: exchange(flow, grant.access_token, key=None),
            status=400, error="invalid_dpop_proof", audited="token.refused")


def test_an_unauthenticated_delegate_is_refused_without_record(flow: Flow) -> None:
    grant = agent_grant(flow)
    refused(flow, lambda: exchange(flow, grant.access_token, key=generate_key(),
                                   auth=(SUBAGENT[0], "wrong-secret")),
            status=401, error="invalid_client", audited=None)


# -- the Mission's state and its cap --------------------------------------------------------


def test_revoking_the_mission_stops_the_delegates(flow: Flow) -> None:
    grant = agent_grant(flow)
    delegate_token = exchange_token(flow, grant.access_token)
    assert introspect(flow, delegate_token)["active"] is True
    revoke = governance(flow).lifecycle(grant.mission_id, "revoke", user="bob")
    assert revoke.status_code == 200, revoke.text
    answer = introspect(flow, delegate_token)
    assert answer["active"] is False and answer["mission"]["state"] == "revoked"
    response = refused(flow, lambda: exchange(flow, grant.access_token, key=generate_key()),
                       status=400, error="invalid_grant", audited="token.refused")
    # The subject token itself is still unexpired: the gate says why.
    assert response.json().get("mission_state") in (None, "revoked")
    refused(flow, lambda: exchange(flow, delegate_token, key=generate_key(),
                                   auth=TOOL_RUNNER),
            status=400, error="invalid_grant", audited="token.refused")


def test_a_suspended_mission_refuses_delegation_with_its_state(flow: Flow) -> None:
    grant = agent_grant(flow)
    assert governance(flow).lifecycle(grant.mission_id, "suspend",
                                      user="bob").status_code == 200
    response = refused(flow, lambda: exchange(flow, grant.access_token, key=generate_key()),
                       status=400, error="invalid_grant", audited="token.refused")
    assert response.json()["mission_state"] == "suspended"
    assert governance(flow).lifecycle(grant.mission_id, "resume",
                                      user="bob").status_code == 200
    assert exchange(flow, grant.access_token, key=generate_key()).status_code == 200


def test_each_exchange_is_one_derivation_up_to_the_cap(flow: Flow) -> None:
    intent = mission_intent(flow.now())
    intent["context"] = {**intent["context"], "max_derivations": 2}
    grant = agent_grant(flow, intent=intent)  # derivation 1
    exchange_token(flow, grant.access_token)  # derivation 2
    response = refused(flow, lambda: exchange(flow, grant.access_token, key=generate_key()),
                       status=400, error="invalid_grant", audited="token.refused")
    assert response.json()["mission_error"] == "derivations_exhausted"


def test_a_replayed_code_revokes_the_delegated_tokens_of_its_grant(flow: Flow) -> None:
    key = generate_key()
    pushed, code = flow.approved_code()
    first = flow.redeem(code, pushed.pkce.verifier, dpop=flow.dpop(key))
    assert first.status_code == 200, first.text
    delegate_token = exchange_token(flow, first.json()["access_token"])
    replay = flow.redeem(code, pushed.pkce.verifier, dpop=flow.dpop(key))
    assert replay.status_code == 400
    assert introspect(flow, delegate_token) == {"active": False}


def test_a_delegated_token_never_outlives_its_subject_token(flow: Flow) -> None:
    grant = agent_grant(flow)
    subject_exp = flow.decode(grant.access_token)[1]["exp"]
    # The clock only moves forward (the module shares the app): later tests get fresh
    # tokens at the moved time.
    flow.clock.advance(200)
    _, claims, _ = delegated(flow, grant.access_token)
    assert claims["exp"] == subject_exp


# -- a Resource Server enforces the delegate's key --------------------------------------------


def resource_server_accepts(flow: Flow, token: str, proof: str) -> bool:
    """What an RS-B/RS-C check does with a DPoP-bound token (RFC 9449 section 7): the token
    is active (introspection at the AS), and the request's proof is of its cnf.jkt and
    carries its ath."""
    answer = introspect(flow, token)
    if not answer.get("active"):
        return False
    try:
        checked = verify_dpop_proof(proof, method="GET", url=f"{ERP}/invoices",
                                    now=flow.now(), access_token=token)
    except DPoPProofError:
        return False
    return checked.jkt == answer["cnf"]["jkt"]


def test_the_resource_server_takes_only_the_delegates_key(flow: Flow) -> None:
    agent_key = generate_key()
    grant = flow.grant(dpop_key=agent_key)
    body, claims, delegate_key = delegated(flow, grant.access_token)
    token = body["access_token"]

    def proof(key: Any) -> str:
        return make_proof(key, htm="GET", htu=f"{ERP}/invoices",
                          iat=int(flow.now().timestamp()), ath=access_token_hash(token))

    assert resource_server_accepts(flow, token, proof(delegate_key))
    # The agent's key (and any other) does not make the delegate's token usable.
    assert not resource_server_accepts(flow, token, proof(agent_key))
    assert not resource_server_accepts(flow, token, proof(generate_key()))
    assert claims["cnf"]["jkt"] != agent_key.thumbprint()


# -- the console shows who acted for whom ------------------------------------------------------


def test_the_console_timeline_shows_the_actor_chain(flow: Flow) -> None:
    grant = agent_grant(flow)
    first = exchange_token(flow, grant.access_token, resource=ERP)
    exchange_token(flow, first, auth=TOOL_RUNNER)
    page = flow.signed_in("bob").get(f"/console/missions/{grant.mission_id}")
    assert page.status_code == 200, page.text
    text = " ".join(unescape(re.sub(r"<[^>]+>", " ", page.text)).split())
    assert "by client demo-subagent , acting for client demo-agent" in text
    assert ("by client tool-runner , acting for client demo-subagent → client demo-agent"
            in text)
