"""Delegation inside a Mission by token exchange (RFC 8693, PROFILE.md section 9;
docs/delegation.md), on SQLite and PostgreSQL: what a delegate gets, the act chain, narrowing
at each hop, the depth and delegate rules, every refusal (status, error, nothing changed, the
refusal audit record), revocation reaching the delegates, and the delegate's key enforced by
a Resource Server."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from html import unescape
from typing import Any

import pytest
from sqlalchemy import select

from missionbound.issuer.authorization_code import revoke_grant
from missionbound.issuer.opaque import opaque_hash
from missionbound.protocol.dpop import access_token_hash
from missionbound.store.models import AuditRecord, IssuedToken, RefreshToken
from tests.issuer.delegation_support import (
    ACCESS_TOKEN,
    OUTSIDER,
    REFRESH_TOKEN,
    TOOL_RUNNER,
    ResourceServer,
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
    last_audit_seq,
    mission_intent,
    refusals,
    refused,
)
from tests.issuer.governance_support import governance
from tests.protocol.proofs import DROP, generate_key, make_proof
from tests.store.concurrency import run_concurrently


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
    """The answer the ERP API (``demo-rs``) gets from /introspect."""
    return ResourceServer(flow, ERP).introspect(token)


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


def test_a_refusal_names_the_mission_once_the_subject_token_is_known(flow: Flow) -> None:
    grant = agent_grant(flow)
    first = exchange_token(flow, grant.access_token, resource=ERP)
    second = exchange_token(flow, first, auth=TOOL_RUNNER)
    cases: list[tuple[Any, str, str | None]] = [
        # The subject token is not known: the refusal names no Mission.
        (lambda: exchange(flow, "not-a-token", key=generate_key()), "invalid_grant", None),
        (lambda: exchange(flow, grant.access_token, key=generate_key(),
                          authorization_details="[1"), "invalid_request", None),
        # Known from here on: the refusal is the Mission's evidence.
        (lambda: exchange(flow, grant.access_token, key=generate_key(), auth=OUTSIDER),
         "invalid_target", grant.mission_id),
        (lambda: exchange(flow, second, key=generate_key()), "invalid_grant",
         grant.mission_id),
        (lambda: exchange(flow, grant.access_token, key=None), "invalid_dpop_proof",
         grant.mission_id),
        (lambda: exchange(flow, grant.access_token, key=generate_key(), auth=AGENT),
         "invalid_request", grant.mission_id),
        (lambda: exchange(flow, grant.access_token, key=generate_key(),
                          actor_token=grant.access_token, actor_token_type=ACCESS_TOKEN),
         "invalid_grant", grant.mission_id),
    ]
    for send, error, mission_id in cases:
        seq = last_audit_seq(flow.engine)
        refused(flow, send, status=400, error=error, audited="token.refused")
        [record] = refusals(flow.engine, seq)
        assert record["mission_id"] == mission_id, (error, record)
        assert record["actor"]["client_id"] in (SUBAGENT[0], AGENT[0], OUTSIDER[0])


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


def test_a_replayed_refresh_token_revokes_the_delegated_tokens_of_its_grant(
        flow: Flow) -> None:
    grant = agent_grant(flow)
    delegate_token = exchange_token(flow, grant.access_token)
    key = grant.dpop_key
    assert key is not None
    rotated = flow.refresh(grant.refresh_token, dpop=flow.dpop(key))
    assert rotated.status_code == 200, rotated.text
    # The same delegate's token from the rotated grant's new access token: same family.
    later = exchange_token(flow, rotated.json()["access_token"])
    replay = flow.refresh(grant.refresh_token, dpop=flow.dpop(key))
    assert replay.status_code == 400
    assert introspect(flow, delegate_token) == {"active": False}
    assert introspect(flow, later) == {"active": False}


def test_the_agent_revoking_its_grant_revokes_its_delegates(flow: Flow) -> None:
    grant = agent_grant(flow)
    delegate_token = exchange_token(flow, grant.access_token)
    # RFC 7009: revoking the refresh token revokes the grant, and the delegate's token with it.
    revoked = flow.client.post("/revoke", data={"token": grant.refresh_token}, auth=AGENT)
    assert revoked.status_code == 200
    assert introspect(flow, delegate_token) == {"active": False}
    with flow.store.read() as session, session.begin():
        row = session.get(RefreshToken, opaque_hash(grant.refresh_token))
    assert row is not None and row.revoked_at is not None


def test_a_delegate_revokes_only_its_own_token(flow: Flow) -> None:
    grant = agent_grant(flow)
    delegate_token = exchange_token(flow, grant.access_token)
    # The delegate cannot revoke the agent's token, only its own (RFC 7009 section 2.1).
    foreign = flow.client.post("/revoke", data={"token": grant.access_token}, auth=SUBAGENT)
    assert foreign.status_code == 400
    own = flow.client.post("/revoke", data={"token": delegate_token}, auth=SUBAGENT)
    assert own.status_code == 200
    assert introspect(flow, delegate_token) == {"active": False}
    assert introspect(flow, grant.access_token)["active"] is True


def test_a_delegated_token_never_outlives_its_subject_token(flow: Flow) -> None:
    grant = agent_grant(flow)
    subject_exp = flow.decode(grant.access_token)[1]["exp"]
    # The clock only moves forward (the module shares the app): later tests get fresh
    # tokens at the moved time.
    flow.clock.advance(200)
    _, claims, _ = delegated(flow, grant.access_token)
    assert claims["exp"] == subject_exp


def test_racing_exchanges_never_pass_the_cap(flow: Flow) -> None:
    """DESIGN.md "Atomic truth": twenty delegates' exchanges at once against a Mission with
    five derivations left; exactly five get a token, the others are refused with
    derivations_exhausted, and nothing is counted twice."""
    intent = mission_intent(flow.now())
    intent["context"] = {**intent["context"], "max_derivations": 6}
    grant = agent_grant(flow, intent=intent)  # derivation 1
    flow.issuer._signer = None  # the race must not depend on a warm signing-key cache
    results = run_concurrently(20, lambda _: exchange(flow, grant.access_token,
                                                      key=generate_key()))
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:1]
    answered = [r for r in results if not isinstance(r, BaseException)]
    won = [r for r in answered if r.status_code == 200]
    assert len(won) == 5
    assert {(r.status_code, r.json()["error"], r.json().get("mission_error"))
            for r in answered if r.status_code != 200} == {
        (400, "invalid_grant", "derivations_exhausted")}
    assert flow.derivations(grant.mission_id) == 6
    with flow.store.read() as session, session.begin():
        delegated_rows = session.scalars(select(IssuedToken.jti).where(
            IssuedToken.mission_id == grant.mission_id,
            IssuedToken.client_id == SUBAGENT[0])).all()
    assert len(delegated_rows) == 5
    audit_verifies(flow.engine)


def test_a_code_replay_racing_exchanges_leaves_no_delegate_token_alive(flow: Flow) -> None:
    """The exchange takes the grant's lock (issuer/delegation.py ``_lock_live_grant``): a
    replayed code revoking the grant while delegates exchange its token either sees their
    rows or makes them fail, so no delegated token of a revoked grant stays active."""
    key = generate_key()
    pushed, code = flow.approved_code()
    first = flow.redeem(code, pushed.pkce.verifier, dpop=flow.dpop(key))
    assert first.status_code == 200, first.text
    subject = first.json()["access_token"]

    def race(index: int) -> Any:
        if index == 0:
            return flow.redeem(code, pushed.pkce.verifier, dpop=flow.dpop(key))
        return exchange(flow, subject, key=generate_key())

    results = run_concurrently(12, race)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:1]
    assert results[0].status_code == 400
    exchanged = [r for r in results[1:] if r.status_code == 200]
    assert all(r.json()["error"] == "invalid_grant" for r in results[1:] if r.status_code != 200)
    for response in exchanged:
        assert introspect(flow, response.json()["access_token"]) == {"active": False}
    assert introspect(flow, subject) == {"active": False}


# -- a Resource Server enforces the delegate's key --------------------------------------------


def test_the_resource_server_takes_only_the_delegates_key(flow: Flow) -> None:
    agent_key = generate_key()
    grant = flow.grant(dpop_key=agent_key)
    body, claims, delegate_key = delegated(flow, grant.access_token)
    token = body["access_token"]
    erp = ResourceServer(flow, ERP)

    def proof(key: Any, presented: str, *, bound: bool = True) -> str:
        return make_proof(key, htm="GET", htu=f"{ERP}/invoices",
                          iat=int(flow.now().timestamp()),
                          ath=access_token_hash(presented) if bound else DROP)

    assert claims["cnf"]["jkt"] == delegate_key.thumbprint() != agent_key.thumbprint()
    assert erp.accepts(token, proof(delegate_key, token))
    # The agent's key (or any other) does not make the delegate's token usable...
    assert not erp.accepts(token, proof(agent_key, token))
    assert not erp.accepts(token, proof(generate_key(), token))
    # ...nor the delegate's key without the token's hash in the proof.
    assert not erp.accepts(token, proof(delegate_key, token, bound=False))
    # The agent's own token still goes with the agent's key only.
    assert erp.accepts(grant.access_token, proof(agent_key, grant.access_token))
    assert not erp.accepts(grant.access_token, proof(delegate_key, grant.access_token))


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
    assert text.count("Token issued to a delegate") == 2
    assert "delegation depth 2" in text


def test_an_exchange_racing_a_revocation_of_its_grant_is_refused(flow: Flow) -> None:
    """The grant of the subject token is being revoked (a replayed code, say) while a
    delegate exchanges the token: the exchange waits for the revocation and is refused,
    rather than committing a delegated token the revocation missed."""
    grant = agent_grant(flow)
    jti = flow.decode(grant.access_token)[1]["jti"]
    with flow.store.read() as session, session.begin():
        row = session.get(IssuedToken, jti)
        assert row is not None and row.grant_id is not None
        grant_id = row.grant_id
    answers: list[Any] = []
    racer = threading.Thread(
        target=lambda: answers.append(exchange(flow, grant.access_token, key=generate_key())))
    with flow.store.begin() as session:
        revoke_grant(session, grant_id, now=flow.now())
        racer.start()
        # Give the exchange time to reach the grant's lock (not an assertion on time: the
        # outcome must be the same however far it got).
        time.sleep(0.5)
    racer.join(timeout=60)
    assert answers, "the exchange did not finish"
    assert answers[0].status_code == 400 and answers[0].json()["error"] == "invalid_grant"
    assert introspect(flow, grant.access_token) == {"active": False}
