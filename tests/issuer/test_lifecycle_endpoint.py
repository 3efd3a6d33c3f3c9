"""``POST /mission/lifecycle`` (PROFILE.md sections 7 and 10; docs/mission-governance.md)
over HTTP, on SQLite and PostgreSQL.

Who may do what (section 7, every operation by every kind of caller), how each caller
authenticates (``private_key_jwt``, a DPoP-bound token for its own Mission, a browser session
with its CSRF token; never a client secret), the idempotent repeat and the nonce retry key,
and the exact error of every refusal with nothing changed in the store: Missions, history,
audit records other than the refusal's own, outbox events and remembered nonces.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from missionbound.mission.lifecycle import State
from missionbound.store.models import LifecycleRequest, MissionHistory, OutboxEvent
from tests.issuer.flow import (
    AGENT as AGENT_SECRET,
)
from tests.issuer.flow import (
    ISSUER,
    Flow,
    audit_verifies,
    last_audit_seq,
    refusals,
)
from tests.issuer.governance_support import (
    AGENT,
    KEY_RS,
    LIFECYCLE,
    NARROW,
    STATUS_TYPE,
    Governance,
    governance,
    nonce,
)
from tests.protocol.proofs import generate_key
from tests.store.concurrency import run_concurrently


@pytest.fixture(scope="module")
def gov(flow: Flow) -> Governance:
    return governance(flow)


# Each caller as the request helpers take it, and the role it holds on gov.mission()'s
# Missions (subject alice, approver carol, client demo-agent).
CALLERS: dict[str, dict[str, Any]] = {
    "subject": {"user": "alice"},
    "approver": {"user": "carol"},
    "admin": {"user": "dave"},
    "client": {"client": AGENT},
    "unrelated person": {"user": "erin"},
    "another client": {"client": NARROW},
    "a resource server": {"client": KEY_RS},
}
# PROFILE.md section 7, column "Who" (default policy: the subject may not suspend).
ALLOWED = {
    "suspend": {"admin"},
    "resume": {"admin"},
    "revoke": {"subject", "approver", "admin"},
    "complete": {"client", "admin"},
}
SOURCE = {"suspend": State.ACTIVE, "resume": State.SUSPENDED, "revoke": State.ACTIVE,
          "complete": State.SUSPENDED}
TARGET = {"suspend": "suspended", "resume": "active", "revoke": "revoked",
          "complete": "completed"}


def count(gov: Governance, model: Any, mission_id: str) -> int:
    with gov.flow.store.read() as session, session.begin():
        return int(session.scalar(select(func.count()).select_from(model)
                                  .where(model.mission_id == mission_id)) or 0)


def refused(gov: Governance, send: Callable[[], httpx.Response], *, status: int, error: str,
            audited: bool = True) -> httpx.Response:
    """``send()`` is refused with ``status``/``error``, the store is unchanged, and exactly
    one ``lifecycle.refused`` record is left when the caller authenticated."""
    before = gov.snapshot()
    seq = last_audit_seq(gov.flow.engine)
    response = send()
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error, body
    assert body["error_description"]
    assert response.headers["cache-control"] == "no-store"
    assert gov.snapshot() == before, "a refused lifecycle request changed the store"
    records = refusals(gov.flow.engine, seq)
    if audited:
        assert [(r["event"], r["data"]["error"]) for r in records] == [
            ("lifecycle.refused", error)], records
    else:
        assert records == []
    return response


# -- who may do what -----------------------------------------------------------------------


@pytest.mark.parametrize("operation", sorted(ALLOWED))
def test_every_operation_by_every_caller(gov: Governance, operation: str) -> None:
    for caller, auth in CALLERS.items():
        mission_id = gov.mission(state=SOURCE[operation])
        version = gov.record(mission_id).version
        if caller in ALLOWED[operation]:
            response = gov.lifecycle(mission_id, operation, **auth)
            _, claims = gov.verified(response)
            assert (claims["state"], claims["version"]) == (TARGET[operation], version + 1)
            record = gov.record(mission_id)
            assert (record.state.value, record.version) == (TARGET[operation], version + 1)
            last = record.lifecycle_history[-1]
            assert last["event"] == operation and last["reason"] == "test"
        else:
            response = refused(gov, partial(gov.lifecycle, mission_id, operation, **auth),
                               status=404, error="not_found")
            assert response.json()["error_description"] == "no such Mission", caller


def test_the_signed_answer(gov: Governance) -> None:
    mission_id = gov.mission()
    sent = nonce()
    response = gov.lifecycle(mission_id, "revoke", user="alice", reason="Done early",
                             nonce_value=sent)
    header, claims = gov.verified(response)
    kids = {key.kid for key in gov.flow.jwks()}
    assert header["typ"] == STATUS_TYPE and header["alg"] == "ES256"
    assert header["kid"] in kids
    record = gov.record(mission_id)
    assert claims == {
        "iss": ISSUER, "aud": "user:alice", "sub": "user:alice", "nonce": sent,
        "iat": claims["iat"], "exp": claims["iat"] + 60,
        "mission": {"id": mission_id, "origin": ISSUER},
        "state": "revoked", "version": record.version,
        "proposal_hash": record.proposal_hash, "authority_hash": record.authority_hash,
        "consent_rendering_hash": record.consent_rendering_hash,
        "policy_version": record.policy_version,
        "mission_expiry": record.mission_expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    assert abs(claims["iat"] - gov.flow.now().timestamp()) < 5
    # The history and the audit log name the acting party, the route and the reason.
    last = record.lifecycle_history[-1]
    assert last["actor"] == {"roles": ["subject"], "user": "alice", "auth": "browser_session",
                             "via": "lifecycle_endpoint"}
    assert last["reason"] == "Done early"
    # A client's answer is addressed to the client.
    other = gov.mission()
    _, claims = gov.verified(gov.lifecycle(other, "complete", client=AGENT))
    assert (claims["aud"], claims["sub"]) == (AGENT, AGENT)
    audit_verifies(gov.flow.engine)


# -- idempotency and the nonce -------------------------------------------------------------


def test_a_repeated_operation_is_an_idempotent_success(gov: Governance) -> None:
    mission_id = gov.mission()
    gov.verified(gov.lifecycle(mission_id, "revoke", user="alice"))
    events = count(gov, OutboxEvent, mission_id)
    version = gov.record(mission_id).version
    # Another nonce, another caller allowed to revoke: success, same version, no event.
    _, claims = gov.verified(gov.lifecycle(mission_id, "revoke", user="dave"))
    assert (claims["state"], claims["version"]) == ("revoked", version)
    assert count(gov, OutboxEvent, mission_id) == events
    assert count(gov, MissionHistory, mission_id) == version
    # Decision L2: resume on an active Mission is an idempotent success too.
    active = gov.mission()
    before = count(gov, OutboxEvent, active)
    _, claims = gov.verified(gov.lifecycle(active, "resume", user="dave"))
    assert claims["state"] == "active" and count(gov, OutboxEvent, active) == before


def test_a_retransmit_answers_the_current_state_and_applies_nothing(gov: Governance) -> None:
    mission_id = gov.mission()
    key = nonce()
    gov.verified(gov.lifecycle(mission_id, "suspend", user="dave", nonce_value=key,
                               reason="look"))
    gov.verified(gov.lifecycle(mission_id, "resume", user="dave"))
    version = gov.record(mission_id).version
    before = gov.snapshot()
    # The suspend's response was lost; the client retransmits it: it is not applied again.
    _, claims = gov.verified(gov.lifecycle(mission_id, "suspend", user="dave", nonce_value=key,
                                           reason="look"))
    assert (claims["state"], claims["version"], claims["nonce"]) == ("active", version, key)
    assert gov.snapshot() == before
    # The same nonce with another request is refused, whatever it asks.
    for changed in ({"reason": "other"}, {"expected_version": version}):
        refused(gov, partial(gov.lifecycle, mission_id, "suspend", user="dave",
                             nonce_value=key, **changed),
                status=400, error="invalid_request")
    refused(gov, lambda: gov.lifecycle(mission_id, "revoke", user="dave", nonce_value=key,
                                       reason="look"), status=400, error="invalid_request")
    # Nonces are per caller: another caller's request with the same nonce is its own.
    _, claims = gov.verified(gov.lifecycle(mission_id, "revoke", user="alice", nonce_value=key))
    assert claims["state"] == "revoked"


def test_nonces_are_forgotten_after_their_window(gov: Governance) -> None:
    mission_id = gov.mission()
    key = nonce()
    gov.verified(gov.lifecycle(mission_id, "suspend", user="dave", nonce_value=key))
    with gov.flow.store.read() as session, session.begin():
        row = session.scalars(select(LifecycleRequest)
                              .where(LifecycleRequest.mission_id == mission_id)).one()
        # At least the signed answer's lifetime, and the 10 minutes an assertion may live.
        assert row.expires_at - row.created_at == timedelta(minutes=10)
        assert row.caller == "user:dave"
    gov.flow.clock.advance(601)
    # Past the window the same nonce is a new request again ...
    _, claims = gov.verified(gov.lifecycle(mission_id, "resume", user="dave", nonce_value=key))
    assert claims["state"] == "active"
    # ... and a later request purges forgotten rows (at most once a minute per process).
    other = gov.mission()
    gov.verified(gov.lifecycle(other, "suspend", user="dave"))
    gov.flow.clock.advance(601)
    gov.verified(gov.lifecycle(gov.mission(), "suspend", user="dave"))
    with gov.flow.store.read() as session, session.begin():
        left = session.scalars(select(LifecycleRequest.mission_id)
                               .where(LifecycleRequest.mission_id.in_([mission_id, other])))
        assert list(left) == []


# -- the machine's refusals ----------------------------------------------------------------


def test_illegal_transitions_terminal_missions_and_stale_versions(gov: Governance) -> None:
    pending = gov.mission(state=State.PENDING_APPROVAL)
    for operation in ("revoke", "suspend", "complete"):
        body = refused(gov, partial(gov.lifecycle, pending, operation, user="dave"),
                       status=409, error="invalid_state").json()
        assert "pending_approval" in body["error_description"]
    for state in (State.REVOKED, State.COMPLETED, State.REJECTED):
        terminal = gov.mission(state=state)
        for operation in ("suspend", "resume", "complete", "revoke"):
            if operation == {"revoked": "revoke", "completed": "complete"}.get(state.value):
                continue  # the idempotent repeat
            refused(gov, partial(gov.lifecycle, terminal, operation, user="dave"),
                    status=409, error="mission_concurrent_modification")
    active = gov.mission()
    version = gov.record(active).version
    for stale in (version - 1, version + 1, 0):
        refused(gov, partial(gov.lifecycle, active, "suspend", user="dave",
                             expected_version=stale),
                status=409, error="mission_concurrent_modification")
    _, claims = gov.verified(gov.lifecycle(active, "suspend", user="dave",
                                           expected_version=version))
    assert claims["version"] == version + 1


def test_an_expired_mission_is_refused_and_its_expiry_persisted(gov: Governance) -> None:
    mission_id = gov.mission(lifetime=timedelta(seconds=2))
    gov.flow.clock.advance(3)
    events = count(gov, OutboxEvent, mission_id)
    response = gov.lifecycle(mission_id, "suspend", user="dave")
    assert response.status_code == 409
    assert response.json()["error"] == "mission_concurrent_modification"
    # Clock first: the refusal rolled back, the expiry the clock decided is persisted anyway.
    record = gov.record(mission_id)
    assert record.state is State.EXPIRED
    assert count(gov, OutboxEvent, mission_id) == events + 1
    assert record.lifecycle_history[-1]["event"] == "expire"


@pytest.mark.parametrize(("form", "why"), [
    ({"nonce": None}, "nonce"),
    ({"nonce": ""}, "nonce"),
    ({"nonce": "x" * 256}, "nonce"),
    ({"nonce": "two words"}, "nonce"),
    ({"operation": None}, "operation"),
    ({"operation": "approve"}, "operation"),
    ({"operation": "expire"}, "operation"),
    ({"operation": "Revoke"}, "operation"),
    ({"mission": None}, "mission"),
    ({"mission": "inv-acme-1"}, "mission"),
    ({"expected_version": "abc"}, "expected_version"),
    ({"expected_version": "-1"}, "expected_version"),
    ({"expected_version": "1.0"}, "expected_version"),
    ({"reason": "x" * 1025}, "reason"),
    ({"reason": "bell\x07"}, "reason"),
    ({"reason": "ok\x9bthere"}, "reason"),
    ({"reason": "del\x7f"}, "reason"),
    ({"expected_version": "1" * 19}, "expected_version"),
    ({"expected_version": ""}, "expected_version"),
    ({"expected_version": "\u0663"}, "expected_version"),
])
def test_malformed_requests_are_invalid_request(gov: Governance, form: dict[str, Any],
                                                why: str) -> None:
    mission_id = gov.mission()
    base = {"mission": mission_id, "operation": "revoke", "nonce": nonce(), "reason": "r"}
    body = refused(gov, lambda: gov.post(LIFECYCLE, {**base, **form}, user="dave"),
                   status=400, error="invalid_request").json()
    assert why in body["error_description"]
    # A valid nonce is echoed in every error.
    assert body.get("nonce") == (base["nonce"] if why != "nonce" else None)
    assert gov.record(mission_id).state is State.ACTIVE


def test_a_reason_keeps_tabs_and_line_breaks_with_crlf_as_lf(gov: Governance) -> None:
    """Decision G6, the rule the console and the CLI share: CRLF becomes LF; tab, LF and a
    lone CR are kept."""
    mission_id = gov.mission()
    gov.verified(gov.lifecycle(mission_id, "suspend", user="dave",
                               reason="line one\r\nline two\tend\rx"))
    assert gov.record(mission_id).lifecycle_history[-1]["reason"] == (
        "line one\nline two\tend\rx")


def test_a_repeated_parameter_is_invalid_request(gov: Governance) -> None:
    mission_id = gov.mission()
    csrf = gov.csrf(gov.browser("dave"))
    content = httpx.QueryParams([("mission", mission_id), ("operation", "revoke"),
                                 ("operation", "suspend"), ("nonce", nonce()),
                                 ("csrf_token", csrf)])
    refused(gov, lambda: gov.browser("dave").post(
        LIFECYCLE, content=str(content),
        headers={"Content-Type": "application/x-www-form-urlencoded"}),
        status=400, error="invalid_request")  # authenticated first: audited (G4, G8)


def test_authentication_comes_before_the_form(gov: Governance) -> None:
    """Decision G4: an unauthenticated request with a repeated parameter is 401, not 400;
    a repeated authentication parameter is no authentication."""
    mission_id = gov.mission()
    form = [("mission", mission_id), ("mission", mission_id), ("operation", "revoke"),
            ("nonce", nonce())]
    urlencoded = {"Content-Type": "application/x-www-form-urlencoded"}
    response = refused(gov, lambda: gov.flow.client.post(
        LIFECYCLE, content=str(httpx.QueryParams(form)), headers=urlencoded),
        status=401, error="invalid_client", audited=False)
    assert response.headers["www-authenticate"].startswith("DPoP ")
    fields = gov.assertion(AGENT)
    twice = [("mission", mission_id), ("operation", "complete"), ("nonce", nonce()),
             *fields.items(), ("client_assertion", fields["client_assertion"])]
    refused(gov, lambda: gov.flow.client.post(
        LIFECYCLE, content=str(httpx.QueryParams(twice)), headers=urlencoded),
        status=401, error="invalid_client", audited=False)


# -- unknown and unauthorized look the same ------------------------------------------------


def test_unknown_and_unauthorized_missions_are_indistinguishable(gov: Governance) -> None:
    unknown = "msn_" + "Q" * 32
    for auth, forbidden in (({"user": "erin"}, "revoke"), ({"client": AGENT}, "revoke"),
                            ({"client": NARROW}, "complete"), ({"user": "alice"}, "suspend")):
        mission_id = gov.mission()
        key = nonce()
        answers = [refused(gov, partial(gov.lifecycle, m, forbidden, nonce_value=key, **auth),
                           status=404, error="not_found") for m in (unknown, mission_id)]
        assert answers[0].content == answers[1].content
        assert headers_of(answers[0]) == headers_of(answers[1])
        assert answers[0].json() == {"error": "not_found", "error_description": "no such Mission",
                                     "nonce": key}


def headers_of(response: httpx.Response) -> list[tuple[str, str]]:
    return sorted((k, v) for k, v in response.headers.items() if k != "x-request-id")


def test_the_refusal_record_names_the_caller_and_the_real_cause(gov: Governance) -> None:
    mission_id = gov.mission()
    seq = last_audit_seq(gov.flow.engine)
    gov.lifecycle(mission_id, "revoke", client=AGENT)
    [record] = refusals(gov.flow.engine, seq)
    assert record["mission_id"] == mission_id
    assert record["actor"] == {"client_id": AGENT, "auth": "private_key_jwt",
                               "via": "lifecycle_endpoint"}
    assert record["data"]["error"] == "not_found"
    assert record["data"]["cause"] == "operation_not_allowed"
    assert record["data"]["operation"] == "revoke"
    seq = last_audit_seq(gov.flow.engine)
    gov.lifecycle(mission_id, "revoke", user="erin")
    gov.lifecycle("msn_" + "U" * 30, "revoke", user="erin")
    causes = [(r["mission_id"], r["data"]["cause"]) for r in refusals(gov.flow.engine, seq)]
    assert causes == [(mission_id, "no_role"), (None, "unknown_mission")]


# -- authentication ------------------------------------------------------------------------


def test_unauthenticated_and_secret_callers_are_invalid_client(gov: Governance) -> None:
    mission_id = gov.mission()
    form = {"mission": mission_id, "operation": "complete", "nonce": nonce()}
    attempts: list[Callable[[], httpx.Response]] = [
        lambda: gov.post(LIFECYCLE, form),
        # Client secrets are never accepted here (issuance digest 8.2/8.3).
        lambda: gov.post(LIFECYCLE, form, basic=AGENT_SECRET),
        lambda: gov.post(LIFECYCLE, {**form, "client_id": AGENT,
                                     "client_secret": AGENT_SECRET[1]}),
        # An assertion signed with another key, or for a client that does not exist.
        lambda: gov.post(LIFECYCLE, {**form, **assertion_with_other_key(gov, AGENT)}),
        lambda: gov.post(LIFECYCLE, {**form, **gov.assertion("nobody")}),
        # An assertion whose audience is an endpoint URL (decision O15).
        lambda: gov.post(LIFECYCLE, {**form, **gov.assertion(AGENT, aud=ISSUER + LIFECYCLE)}),
        lambda: gov.post(LIFECYCLE, form, headers={"Authorization": "Bearer abc"}),
        # A session cookie alone is no caller without its person signed in.
        lambda: gov.post(LIFECYCLE, {**form, "csrf_token": "A" * 43}),
    ]
    for attempt in attempts:
        response = refused(gov, attempt, status=401, error="invalid_client", audited=False)
        assert response.headers["www-authenticate"].startswith("DPoP ")
        assert response.json()["nonce"] == form["nonce"]


def assertion_with_other_key(gov: Governance, client_id: str) -> dict[str, str]:
    real = gov.key
    gov.key = generate_key("ES256")  # type: ignore[assignment]
    try:
        return gov.assertion(client_id)
    finally:
        gov.key = real


def test_an_assertion_is_spent_once(gov: Governance) -> None:
    mission_id = gov.mission()
    fields = gov.assertion(AGENT)
    form = {"mission": mission_id, "operation": "complete", "nonce": nonce(), **fields}
    gov.verified(gov.post(LIFECYCLE, form))
    refused(gov, lambda: gov.post(LIFECYCLE, {**form, "nonce": nonce()}),
            status=401, error="invalid_client", audited=False)


def test_exactly_one_way_to_authenticate(gov: Governance) -> None:
    mission_id = gov.mission()
    form = {"mission": mission_id, "operation": "complete", "nonce": nonce()}
    grant = gov.flow.grant(dpop_key=generate_key())
    token = gov.token_headers(grant.access_token, grant.dpop_key)  # type: ignore[arg-type]
    for attempt in (
        lambda: gov.post(LIFECYCLE, form, client=AGENT, headers=token),
        lambda: gov.post(LIFECYCLE, form, client=AGENT, user="dave"),
        lambda: gov.post(LIFECYCLE, form, user="dave", headers=token),
    ):
        body = refused(gov, attempt, status=400, error="invalid_request", audited=False).json()
        assert "exactly one way" in body["error_description"]


def test_the_browser_session_needs_its_csrf_token(gov: Governance) -> None:
    mission_id = gov.mission()
    refused(gov, lambda: gov.lifecycle(mission_id, "suspend", user="dave", csrf=False),
            status=400, error="invalid_request", audited=False)
    form = {"mission": mission_id, "operation": "suspend", "nonce": nonce(),
            "csrf_token": gov.csrf(gov.browser("alice"))}  # another session's token
    refused(gov, lambda: gov.browser("dave").post(LIFECYCLE, data=form),
            status=400, error="invalid_request", audited=False)
    _, claims = gov.verified(gov.lifecycle(mission_id, "suspend", user="dave"))
    assert (claims["aud"], claims["state"]) == ("user:dave", "suspended")


def test_a_dpop_bound_token_acts_for_its_own_mission(gov: Governance) -> None:
    key = generate_key()
    grant = gov.flow.grant(dpop_key=key)
    mission_id = grant.mission_id
    form = {"mission": mission_id, "operation": "complete", "nonce": nonce()}

    def send(headers: dict[str, str], data: dict[str, str] | None = None) -> httpx.Response:
        return gov.post(LIFECYCLE, data or {**form, "nonce": nonce()}, headers=headers)

    token = grant.access_token
    for headers, dpop_error in (
        (gov.token_headers(token, generate_key()), "invalid_dpop_proof"),  # wrong key
        (gov.token_headers(token, key, ath=None), "invalid_dpop_proof"),  # no ath
        (gov.token_headers(token, key, path="/mission/status"), "invalid_dpop_proof"),
        (gov.token_headers(token, key, htm="GET"), "invalid_dpop_proof"),
        ({"Authorization": f"DPoP {token}"}, "invalid_dpop_proof"),  # no proof at all
        (gov.token_headers(token[:-2] + "AA", key), "invalid_token"),  # forged signature
    ):
        response = refused(gov, partial(send, headers),
                           status=401, error="invalid_client", audited=False)
        assert f'error="{dpop_error}"' in response.headers["www-authenticate"]
    # The client may revoke nothing with it: 404, like a Mission it cannot see.
    refused(gov, lambda: gov.post(LIFECYCLE, {**form, "operation": "revoke", "nonce": nonce()},
                                  headers=gov.token_headers(token, key)),
            status=404, error="not_found")
    # A token speaks for its own Mission only, even one of the same client.
    other = gov.flow.grant(dpop_key=key)
    unknown = "msn_" + "Z" * 32
    key_nonce = nonce()
    answers = [refused(gov, partial(gov.post, LIFECYCLE,
                                    {**form, "mission": m, "nonce": key_nonce},
                                    headers=gov.token_headers(token, key)),
                       status=404, error="not_found") for m in (other.mission_id, unknown)]
    assert answers[0].content == answers[1].content
    # The right key, a fresh proof with ath: completed, and the proof is single use.
    headers = gov.token_headers(token, key)
    _, claims = gov.verified(send(headers))
    assert (claims["state"], claims["aud"], claims["sub"]) == ("completed", AGENT, AGENT)
    history = gov.record(mission_id).lifecycle_history[-1]
    assert history["actor"]["auth"] == "dpop_bound_access_token"
    refused(gov, lambda: send(headers), status=401, error="invalid_client", audited=False)
    # A revoked token (RFC 7009) authenticates nobody.
    revoked = gov.flow.client.post("/revoke", data={"token": other.access_token},
                                   auth=AGENT_SECRET)
    assert revoked.status_code == 200
    refused(gov, lambda: gov.post(
        LIFECYCLE, {**form, "mission": other.mission_id, "nonce": nonce()},
        headers=gov.token_headers(other.access_token, key)),
        status=401, error="invalid_client", audited=False)


def test_a_token_without_dpop_binding_is_not_accepted(gov: Governance) -> None:
    grant = gov.flow.grant()  # a Bearer token
    mission_id = grant.mission_id
    form = {"mission": mission_id, "operation": "complete", "nonce": nonce()}
    response = refused(gov, lambda: gov.post(
        LIFECYCLE, form, headers=gov.token_headers(grant.access_token, generate_key())),
        status=401, error="invalid_client", audited=False)
    assert "not DPoP-bound" in response.json()["error_description"]
    refused(gov, lambda: gov.post(
        LIFECYCLE, form, headers={"Authorization": f"Bearer {grant.access_token}"}),
        status=401, error="invalid_client", audited=False)


def test_a_server_nonce_when_the_deployment_requires_one(
    gov: Governance, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = generate_key()
    grant = gov.flow.grant(dpop_key=key)
    # dpop_nonce_required = true, for this test only (RFC 9449 section 9).
    secret = secrets.token_bytes(32)
    monkeypatch.setattr(gov.flow.issuer, "dpop_nonce_secret", lambda: secret)
    form = {"mission": grant.mission_id, "operation": "complete", "nonce": nonce()}
    response = refused(gov, lambda: gov.post(
        LIFECYCLE, form, headers=gov.token_headers(grant.access_token, key)),
        status=401, error="use_dpop_nonce", audited=False)
    assert 'error="use_dpop_nonce"' in response.headers["www-authenticate"]
    server_nonce = response.headers["dpop-nonce"]
    answer = gov.post(LIFECYCLE, {**form, "nonce": nonce()}, headers=gov.token_headers(
        grant.access_token, key, nonce=server_nonce))
    assert gov.verified(answer)[1]["state"] == "completed"
    assert answer.headers["dpop-nonce"]  # a fresh one with every answer (section 8.2)


# -- concurrency ---------------------------------------------------------------------------


def test_conflicting_requests_at_once_commit_exactly_one_event(gov: Governance) -> None:
    mission_id = gov.mission()
    gov.browser("dave")
    history = count(gov, MissionHistory, mission_id)
    events = count(gov, OutboxEvent, mission_id)
    racers = 12

    def race(index: int) -> httpx.Response:
        if index % 2:
            return gov.lifecycle(mission_id, "revoke", user="dave")
        return gov.lifecycle(mission_id, "complete", client=AGENT)

    results = run_concurrently(racers, race)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:1]
    answers = [r for r in results if not isinstance(r, BaseException)]
    assert count(gov, MissionHistory, mission_id) == history + 1
    assert count(gov, OutboxEvent, mission_id) == events + 1
    final = gov.record(mission_id).state.value
    winner = "revoke" if final == "revoked" else "complete"
    for index, response in enumerate(answers):
        operation = "revoke" if index % 2 else "complete"
        if operation == winner:
            assert response.status_code == 200, response.text
            assert gov.verified(response)[1]["state"] == final
        else:
            assert response.status_code == 409, response.text
            assert response.json()["error"] == "mission_concurrent_modification"
    audit_verifies(gov.flow.engine)
