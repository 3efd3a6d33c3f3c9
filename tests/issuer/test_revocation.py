"""RFC 7009 revocation over HTTP against the real app and database (the ``flow`` fixture:
SQLite and PostgreSQL): a refresh token takes its grant with it, an access token goes alone,
only the client a token was issued to may revoke it, and a Mission is never revoked."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey
from sqlalchemy import select

from missionbound.issuer.revocation import AUDIT_REFUSED, AUDIT_REVOKED
from missionbound.mission.lifecycle import State
from missionbound.store.models import AuditRecord
from tests.issuer.flow import (
    AGENT,
    SUBAGENT,
    Flow,
    audit_verifies,
    last_audit_seq,
    refusals,
    snapshot,
)
from tests.issuer.test_introspection import RS, introspected
from tests.protocol.proofs import generate_key


def revoke(flow: Flow, token: str, *, auth: tuple[str, str] | None = AGENT,
           **extra: str) -> httpx.Response:
    return flow.client.post("/revoke", data={"token": token, **extra}, auth=auth)


def revocations(flow: Flow, after_seq: int) -> list[dict[str, Any]]:
    with flow.store.read() as session, session.begin():
        found = session.scalars(select(AuditRecord).where(
            AuditRecord.seq > after_seq, AuditRecord.event == AUDIT_REVOKED
        ).order_by(AuditRecord.seq))
        return [{"mission_id": r.mission_id, "actor": r.actor, "data": r.data} for r in found]


def test_revoking_a_refresh_token_revokes_its_grant_not_the_mission(flow: Flow) -> None:
    grant = flow.grant()
    refreshed = flow.refresh(grant.refresh_token)
    assert refreshed.status_code == 200, refreshed.text
    second_access = refreshed.json()["access_token"]
    live_refresh = refreshed.json()["refresh_token"]
    seq = last_audit_seq(flow.engine)

    response = revoke(flow, live_refresh, token_type_hint="refresh_token")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"

    # The refresh token is dead: the grant fails, and reports no replay (it was revoked).
    again = flow.refresh(live_refresh)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    # Every access token of the grant went with it (RFC 7009 section 2.1).
    assert introspected(flow, grant.access_token) == {"active": False}
    assert introspected(flow, second_access) == {"active": False}
    # The Mission lives on: a new grant works (PROFILE.md section 10).
    assert flow.mission(grant.mission_id).state is State.ACTIVE
    assert introspected(flow, flow.grant().access_token)["active"] is True

    [record] = revocations(flow, seq)
    assert record["mission_id"] == grant.mission_id
    assert record["actor"] == {"client_id": "demo-agent"}
    assert record["data"]["token_type"] == "refresh_token"
    assert record["data"]["grant_id"]
    audit_verifies(flow.engine)


def test_revoking_an_access_token_revokes_that_token_alone(flow: Flow) -> None:
    grant = flow.grant()
    _, claims = flow.decode(grant.access_token)
    seq = last_audit_seq(flow.engine)
    response = revoke(flow, grant.access_token, token_type_hint="access_token")
    assert response.status_code == 200, response.text
    assert introspected(flow, grant.access_token) == {"active": False}
    # The grant goes on: the refresh token still works and its new token is active.
    refreshed = flow.refresh(grant.refresh_token)
    assert refreshed.status_code == 200, refreshed.text
    assert introspected(flow, refreshed.json()["access_token"])["active"] is True
    assert flow.mission(grant.mission_id).state is State.ACTIVE
    [record] = revocations(flow, seq)
    assert record["data"] == {"token_type": "access_token", "jti": claims["jti"],
                              "grant_id": record["data"]["grant_id"],
                              "already_revoked": False}
    audit_verifies(flow.engine)


def test_revoking_twice_is_fine(flow: Flow) -> None:
    grant = flow.grant()
    assert revoke(flow, grant.refresh_token).status_code == 200
    assert revoke(flow, grant.refresh_token).status_code == 200
    assert revoke(flow, grant.access_token).status_code == 200
    assert introspected(flow, grant.access_token) == {"active": False}


def test_a_dpop_bound_refresh_token_is_revoked_without_a_proof(flow: Flow) -> None:
    # RFC 7009 asks for client authentication only; holding the token is enough.
    key = generate_key()
    grant = flow.grant(dpop_key=key)
    assert revoke(flow, grant.refresh_token).status_code == 200
    refused = flow.refresh(grant.refresh_token, dpop=flow.dpop(key))
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"


# -- refusals and no-ops -----------------------------------------------------------------


@pytest.mark.parametrize("which", ["refresh_token", "access_token"])
def test_another_clients_token_is_refused_and_nothing_changes(flow: Flow, which: str) -> None:
    grant = flow.grant()
    token = grant.refresh_token if which == "refresh_token" else grant.access_token
    before = snapshot(flow.engine)
    seq = last_audit_seq(flow.engine)
    # RFC 7009 section 2.1: the AS verifies the token was issued to the requesting client;
    # "if this validation fails, the request is refused".
    response = revoke(flow, token, auth=SUBAGENT)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert snapshot(flow.engine) == before
    assert [(r["event"], r["mission_id"], r["actor"]) for r in refusals(flow.engine, seq)] == [
        (AUDIT_REFUSED, grant.mission_id, {"client_id": "demo-subagent"})]
    # An introspection caller that is an audience may not revoke either.
    assert revoke(flow, grant.access_token, auth=RS).status_code == 400
    assert introspected(flow, grant.access_token)["active"] is True
    assert flow.refresh(grant.refresh_token).status_code == 200


def _forged(flow: Flow, token: str) -> str:
    header, claims = flow.decode(token)
    return jwt.encode(header, claims, ECKey.generate_key("P-256", private=True))


@pytest.mark.parametrize("value", ["unknown-refresh-token", "a.b.c", "forged"])
def test_an_unknown_token_is_answered_200_and_nothing_changes(flow: Flow, value: str) -> None:
    grant = flow.grant()
    if value == "forged":
        value = _forged(flow, grant.access_token)
    before = snapshot(flow.engine)
    # RFC 7009 section 2.2: invalid tokens do not cause an error response.
    response = revoke(flow, value)
    assert response.status_code == 200, response.text
    assert snapshot(flow.engine) == before
    assert introspected(flow, grant.access_token)["active"] is True


@pytest.mark.parametrize("hint", ["id_token", "anything"])
def test_an_unknown_hint_is_ignored(flow: Flow, hint: str) -> None:
    # RFC 7009 section 2.1: the server MAY ignore the hint; the token's shape says its type.
    grant = flow.grant()
    assert revoke(flow, grant.refresh_token, token_type_hint=hint).status_code == 200
    assert flow.refresh(grant.refresh_token).status_code == 400


@pytest.mark.parametrize("auth, data", [
    (None, {}),
    (("demo-agent", "wrong-secret"), {}),
    # demo-agent is confidential: "none" is not enough for it.
    (None, {"client_id": "demo-agent"}),
], ids=["no-auth", "wrong-secret", "none-for-confidential"])
def test_a_client_that_fails_authentication_revokes_nothing(
    flow: Flow, auth: tuple[str, str] | None, data: dict[str, str]
) -> None:
    grant = flow.grant()
    before = snapshot(flow.engine)
    seq = last_audit_seq(flow.engine)
    response = flow.client.post("/revoke", data={"token": grant.refresh_token, **data},
                                auth=auth)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert snapshot(flow.engine) == before
    assert refusals(flow.engine, seq) == []
    assert flow.refresh(grant.refresh_token).status_code == 200


def test_a_request_without_a_token_is_invalid_request(flow: Flow) -> None:
    before = snapshot(flow.engine)
    seq = last_audit_seq(flow.engine)
    response = flow.client.post("/revoke", data={"token_type_hint": "refresh_token"},
                                auth=AGENT)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert snapshot(flow.engine) == before
    assert [(r["event"], r["actor"]) for r in refusals(flow.engine, seq)] == [
        (AUDIT_REFUSED, {"client_id": "demo-agent"})]
