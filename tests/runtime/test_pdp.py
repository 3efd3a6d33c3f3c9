"""The Mission PDP service (runtime/pdp.py) against a real database (SQLite and PostgreSQL),
real signatures, real cedarpy: Missions stored and approved as the consent step approves
them (the policy artifact compiled, its digest the Mission's ``policy_version``, stored in
the approval's transaction), then evaluated through ``MissionPDP.evaluate``.

:func:`approve_with_artifact` is also the HTTP decision-table runner's way to approve.
"""

from __future__ import annotations

import base64
import copy
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from missionbound.config import Settings
from missionbound.issuer.keys import ensure_signing_key
from missionbound.issuer.server import MissionIssuer
from missionbound.mission.anchors import compute_anchors
from missionbound.mission.catalog import Catalog
from missionbound.mission.lifecycle import Event, Role, State
from missionbound.mission.record import MissionRecord, Principal, format_instant
from missionbound.runtime.approval import approve_with_policy
from missionbound.runtime.authzen import DENY_ON_FIRST_DENY, EXECUTE_ALL, PERMIT_ON_FIRST_PERMIT
from missionbound.runtime.decision import ResourcePolicy
from missionbound.runtime.digests import parameter_digest
from missionbound.runtime.errors import AuthZenError
from missionbound.runtime.evidence import EvidenceLog
from missionbound.runtime.pdp import MissionPDP, PepCaller
from missionbound.store import missions
from missionbound.store.lifecycle import transition
from missionbound.store.models import EvidenceRecord, MeterReservation
from missionbound.store.transactions import Store
from missionbound.tenant import Tenant, load_tenant
from tests.runtime.table_support import (
    DEMO_AUTHORITY,
    ERP,
    ISSUER,
    MCP,
    NOW,
    authzen_body,
    make_mission,
)
from tests.store.factories import consent_disclosure

BOB = Principal(ISSUER, "bob")
RS = PepCaller(client_id="demo-rs", audiences=frozenset({ERP, MCP}))
EVALUATION_ID = r"[A-Za-z0-9_-]{1,64}"


# -- approving as the consent step does ------------------------------------------------------


def pending_of(record: MissionRecord) -> MissionRecord:
    """``record`` as PAR stores it: pending, version 1, no approval members."""
    return replace(record, state=State.PENDING_APPROVAL, version=1, approver=None,
                   proposal_hash=None, consent_rendering_hash=None, authority_hash=None,
                   consent_disclosure=None, approval_event_id=None, activated_at=None,
                   lifecycle_history=[])


def approve_with_artifact(store: Store, record: MissionRecord, catalog: Catalog, *,
                          resource_policies: dict[str, str] | None = None,
                          now: datetime | None = None,
                          tool_definitions: Any = None) -> MissionRecord:
    """Store ``record`` pending and approve it the way ``issuer.authorization.decide`` does
    (runtime/approval.py: the artifact compiled, approved with its digest, stored)."""
    pending = pending_of(record)
    approved_at = now or pending.created_at + timedelta(minutes=1)
    with store.begin() as session:
        missions.create_pending(session, pending, {"role": "client",
                                                   "client_id": pending.client_id},
                                pending.created_at)
    disclosure = consent_disclosure(pending, BOB)
    anchors = compute_anchors(pending.origin, mission_intent=pending.mission_intent,
                              authorization_details_requested=[],
                              consent_disclosure=disclosure, authority_set=pending.authority_set)
    with store.begin() as session:
        result, _ = approve_with_policy(
            session, pending, catalog, approver=BOB,
            approval_event_id="ape_" + pending.mission_id[4:40], anchors=anchors,
            consent_disclosure=disclosure, now=approved_at,
            resource_policies=resource_policies or {}, tool_definitions=tool_definitions)
    return result.record


# -- fixtures --------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def tenant(tmp_path: Path) -> Tenant:
    return load_tenant(Settings(issuer=ISSUER, data_dir=tmp_path))


@pytest.fixture
def issuer(store: Store, tenant: Tenant, tmp_path: Path, clock: Clock) -> MissionIssuer:
    ensure_signing_key(store, NOW - timedelta(days=1))
    settings = Settings(issuer=ISSUER, data_dir=tmp_path)
    return MissionIssuer(settings=settings, tenant=tenant, store=store, clock=clock)


@pytest.fixture
def make_pdp(issuer: MissionIssuer) -> Callable[..., MissionPDP]:
    def make(tenants: dict[str, ResourcePolicy] | None = None) -> MissionPDP:
        evidence = EvidenceLog(issuer_url=ISSUER, signer=issuer.signer)
        return MissionPDP(issuer=issuer, mission_cache=None, evidence=evidence,
                          tenants=tenants or {})
    return make


@pytest.fixture
def pdp(make_pdp: Callable[..., MissionPDP]) -> MissionPDP:
    return make_pdp()


@pytest.fixture
def mission(store: Store, tenant: Tenant) -> MissionRecord:
    return approve_with_artifact(store, make_mission(), tenant.catalog)


def wire_transfer(mission: MissionRecord, amount: str = "120.00", vendor: str = "acme",
                  **properties: Any) -> dict[str, Any]:
    parameters = {"invoice_id": "inv-acme-1", "vendor": vendor, "amount": amount,
                  "currency": "USD"}
    body = authzen_body(mission, action="execute_wire_transfer", audience=MCP,
                        parameters=parameters)
    body["action"]["properties"]["parameter_digest"] = parameter_digest(parameters)
    body["action"]["properties"].update(properties)
    return body


def evidence_count(store: Store, mission_id: str | None = None) -> int:
    with store.begin_read() as session:
        query = select(func.count()).select_from(EvidenceRecord)
        if mission_id is not None:
            query = query.where(EvidenceRecord.mission_id == mission_id)
        return int(session.scalar(query) or 0)


def claims_of(permit: str) -> dict[str, Any]:
    payload = permit.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# -- permits ---------------------------------------------------------------------------------


def test_a_read_is_permitted_with_a_window_and_recorded(pdp: MissionPDP, mission: MissionRecord,
                                                         store: Store) -> None:
    answer = pdp.evaluate(authzen_body(mission, action="invoices.read", audience=ERP), RS)
    assert answer["decision"] is True
    context = answer["context"]
    assert set(context) == {"evaluation_id", "conditions"}
    assert context["conditions"] == {"valid_until": "2026-11-26T12:01:00Z"}
    assert len(context["evaluation_id"]) >= 26
    assert evidence_count(store, mission.mission_id) == 1


def test_a_parameter_bound_permit_carries_conditions_and_a_signed_permit(
        pdp: MissionPDP, mission: MissionRecord, store: Store) -> None:
    body = wire_transfer(mission)
    answer = pdp.evaluate(body, RS)
    assert answer["decision"] is True, answer
    context = answer["context"]
    digest = body["action"]["properties"]["parameter_digest"]
    assert context["conditions"] == {"parameter_digest": digest,
                                     "valid_until": "2026-11-26T12:01:00Z", "use_limit": 1}
    claims = claims_of(context["permit"])
    assert claims["jti"] == context["evaluation_id"]
    assert claims["aud"] == MCP and claims["iss"] == ISSUER
    assert claims["parameter_digest"] == digest and claims["use_limit"] == 1
    assert claims["mission"] == {"id": mission.mission_id, "origin": ISSUER,
                                 "authority_hash": mission.authority_hash}
    assert claims["policy_version"] == mission.policy_version
    assert claims["exp"] - claims["iat"] == 60
    with store.begin_read() as session:
        reserved = session.scalars(select(MeterReservation.bound).where(
            MeterReservation.evaluation_id == context["evaluation_id"])).all()
    assert sorted(reserved) == ["max_calls", "max_total_value"]


def test_a_permit_binds_the_callers_key_and_client(
        pdp: MissionPDP, mission: MissionRecord) -> None:
    body = wire_transfer(mission)
    body["context"]["credential"]["confirmation"] = {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2H"}
    answer = pdp.evaluate(body, RS)
    claims = claims_of(answer["context"]["permit"])
    assert claims["cnf"] == {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2H"}
    assert claims["client_id"] == "demo-agent" and "act" not in claims


# -- denies ----------------------------------------------------------------------------------


def test_a_deny_is_the_reason_only_and_is_recorded(pdp: MissionPDP, mission: MissionRecord,
                                                    store: Store) -> None:
    answer = pdp.evaluate(wire_transfer(mission, amount="900.00"), RS)
    assert answer == {"decision": False, "context": {
        "evaluation_id": answer["context"]["evaluation_id"], "reason": "parameter_violation"}}
    assert evidence_count(store, mission.mission_id) == 1


@pytest.mark.parametrize("change", ["unknown", "other_issuer", "malformed_id"])
def test_a_mission_this_pdp_does_not_hold_is_view_inconsistent_never_an_error(
        pdp: MissionPDP, mission: MissionRecord, store: Store, change: str) -> None:
    body = authzen_body(mission, action="invoices.read", audience=ERP)
    reference = body["context"]["mission"]
    if change == "unknown":
        reference["id"] = "msn_" + "Z" * 32
    elif change == "other_issuer":
        reference["issuer"] = "https://elsewhere.example"
    else:
        reference["id"] = "not a mission id"
    answer = pdp.evaluate(body, RS)
    assert answer["decision"] is False
    assert answer["context"]["reason"] == "view_inconsistent"
    # A refusal on the PDP's own chain, none on any Mission's.
    assert evidence_count(store, mission.mission_id) == 0
    assert evidence_count(store) == 1


def test_a_pending_mission_is_inactive(pdp: MissionPDP, store: Store, tenant: Tenant) -> None:
    record = pending_of(make_mission(mission_id="msn_pendingAAAAAAAAAAAAAAAAAAAAAAAAA"))
    with store.begin() as session:
        missions.create_pending(session, record, None, record.created_at)
    body = authzen_body(record, action="invoices.read", audience=ERP)
    # Never approved: no authority_hash to compare, nothing compiled; the Mission is not active.
    body["context"]["mission"]["authority_hash"] = "sha-256:" + "A" * 43
    assert pdp.evaluate(body, RS)["context"]["reason"] == "mission_inactive"
    body["context"]["mission"]["authority_hash"] = None
    with pytest.raises(AuthZenError):
        pdp.evaluate(body, RS)


@pytest.mark.parametrize("event", [Event.SUSPEND, Event.REVOKE])
def test_a_mission_no_longer_active_is_denied(pdp: MissionPDP, mission: MissionRecord,
                                               store: Store, event: Event) -> None:
    with store.begin() as session:
        transition(session, mission.mission_id, event, roles={Role.ADMIN},
                   actor={"role": "admin", "iss": ISSUER, "sub": "bob"}, reason=None,
                   now=NOW - timedelta(minutes=1))
    answer = pdp.evaluate(authzen_body(mission, action="invoices.read", audience=ERP), RS)
    assert answer["context"]["reason"] == "mission_inactive"


def test_the_clock_comes_first_past_mission_expiry(pdp: MissionPDP, mission: MissionRecord,
                                                   clock: Clock) -> None:
    clock.now = mission.mission_expiry + timedelta(seconds=1)
    body = authzen_body(mission, action="invoices.read", audience=ERP)
    body["context"]["credential"]["expires_at"] = "2030-01-01T00:00:00Z"
    assert pdp.evaluate(body, RS)["context"]["reason"] == "mission_inactive"


def test_a_version_mismatch_is_a_transient_stale_state(pdp: MissionPDP,
                                                       mission: MissionRecord) -> None:
    body = authzen_body(mission, action="invoices.read", audience=ERP)
    body["context"]["mission_state_observation"] = {
        "state": "active", "version": mission.version - 1, "mode": "cached",
        "freshness_at": "2026-11-26T11:59:00Z"}
    context = pdp.evaluate(body, RS)["context"]
    assert context["reason"] == "stale_state"
    assert context["next_action"] == "retry" and context["retry_after"] == 1


def test_another_peps_audience_is_403_and_a_malformed_request_400(
        pdp: MissionPDP, mission: MissionRecord, store: Store) -> None:
    body = authzen_body(mission, action="invoices.read", audience=ERP)
    with pytest.raises(AuthZenError) as refused:
        pdp.evaluate(body, PepCaller("other", frozenset({MCP})))
    assert refused.value.status == 403
    del body["subject"]
    with pytest.raises(AuthZenError) as malformed:
        pdp.evaluate(body, RS)
    assert malformed.value.status == 400
    assert evidence_count(store) == 0


def test_a_permit_window_ending_this_second_is_denied(pdp: MissionPDP,
                                                      mission: MissionRecord) -> None:
    body = wire_transfer(mission)
    body["context"]["credential"]["expires_at"] = "2026-11-26T12:00:00Z"
    assert pdp.evaluate(body, RS)["context"]["reason"] == "credential_invalid"


# -- idempotency and metering ----------------------------------------------------------------


def test_a_retransmission_returns_the_prior_decision_and_is_not_metered_twice(
        pdp: MissionPDP, mission: MissionRecord, store: Store) -> None:
    body = wire_transfer(mission, idempotency_key="idk-1")
    first = pdp.evaluate(body, RS)
    again = pdp.evaluate(body, RS)
    assert again == first and first["decision"] is True
    with store.begin_read() as session:
        assert session.scalar(select(func.count()).select_from(MeterReservation)) == 2
    assert evidence_count(store, mission.mission_id) == 1
    other = pdp.evaluate(wire_transfer(mission, amount="130.00", idempotency_key="idk-1"), RS)
    assert other["context"]["reason"] == "idempotency_conflict"


def test_max_calls_is_exhausted_then_quota_exceeded(pdp: MissionPDP, mission: MissionRecord,
                                                    store: Store) -> None:
    answers = [pdp.evaluate(wire_transfer(mission, amount="10.00"), RS) for _ in range(4)]
    assert [a["decision"] for a in answers] == [True, True, True, False]
    assert answers[3]["context"]["reason"] == "quota_exceeded"
    assert evidence_count(store, mission.mission_id) == 4


def test_concurrent_permits_never_exceed_max_calls(pdp: MissionPDP,
                                                   mission: MissionRecord) -> None:
    answers: list[dict[str, Any]] = []
    lock = threading.Lock()

    def ask() -> None:
        answer = pdp.evaluate(wire_transfer(mission, amount="10.00"), RS)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == 8
    assert sum(a["decision"] for a in answers) == 3
    assert {a["context"].get("reason") for a in answers if not a["decision"]} == {
        "quota_exceeded"}


# -- batches ---------------------------------------------------------------------------------


def _batch(mission: MissionRecord) -> list[dict[str, Any]]:
    return [authzen_body(mission, action="invoices.read", audience=ERP),
            authzen_body(mission, action="users.grant", audience=ERP),
            {"subject": {"type": "user"}},
            authzen_body(mission, action="get_invoice", audience=MCP)]


def test_a_batch_answers_in_order_with_per_item_errors(pdp: MissionPDP,
                                                       mission: MissionRecord) -> None:
    answers = pdp.evaluate_batch(_batch(mission), RS, EXECUTE_ALL)
    assert [a["decision"] for a in answers] == [True, False, False, True]
    assert answers[1]["context"]["reason"] == "out_of_authority"
    assert answers[2]["context"]["error"]["status"] == 400
    ids = {a["context"].get("evaluation_id") for a in answers} - {None}
    assert len(ids) == 3


@pytest.mark.parametrize(("semantic", "returned"), [(DENY_ON_FIRST_DENY, 2),
                                                    (PERMIT_ON_FIRST_PERMIT, 1)])
def test_a_short_circuit_stops_after_the_deciding_item(
        pdp: MissionPDP, mission: MissionRecord, store: Store, semantic: str,
        returned: int) -> None:
    answers = pdp.evaluate_batch(_batch(mission), RS, semantic)
    assert len(answers) == returned
    assert evidence_count(store, mission.mission_id) == returned  # later items never ran


# -- resource policy and search --------------------------------------------------------------


class _Refusing:
    def permits(self, request: Any) -> bool:
        return False


def test_a_referenced_resource_policy_that_refuses_denies(
        make_pdp: Callable[..., MissionPDP], store: Store, tenant: Tenant) -> None:
    record = approve_with_artifact(
        store, make_mission(mission_id="msn_guardedAAAAAAAAAAAAAAAAAAAAAAAAA"), tenant.catalog,
        resource_policies={ERP: "erp-acl"})
    body = authzen_body(record, action="invoices.read", audience=ERP)
    assert make_pdp({"erp-acl": _Refusing()}).evaluate(body, RS)["context"]["reason"] == (
        "resource_policy")
    # A referenced tenant that is not loaded refuses too (fail closed).
    assert make_pdp({}).evaluate(body, RS)["context"]["reason"] == "resource_policy"


def _search(mission: MissionRecord, **members: Any) -> dict[str, Any]:
    return {"subject": {"type": "user", "id": "alice"},
            "context": {"mission": {"id": mission.mission_id, "issuer": ISSUER,
                                    "authority_hash": mission.authority_hash}}, **members}


def test_search_exposes_the_missions_authority_only(pdp: MissionPDP, mission: MissionRecord,
                                                    store: Store) -> None:
    actions = pdp.search("action", _search(
        mission, resource={"type": "tool", "id": "x", "properties": {"audience": MCP}}), RS)
    assert {r["name"] for r in actions["results"]} == {
        "execute_wire_transfer", "get_invoice", "list_invoices", "schedule_payment",
        "send_remittance_email"}
    resources = pdp.search("resource", _search(
        mission, action={"name": "invoices.read"}, resource={"type": "api"}), RS)
    assert resources["results"] == [{"type": "api", "id": ERP}]
    subjects = pdp.search("subject", {**_search(
        mission, action={"name": "invoices.read"},
        resource={"type": "api", "id": "x", "properties": {"audience": ERP}}),
        "subject": {"type": "user"}}, RS)
    assert subjects["results"] == [{"type": "user", "id": "alice"}]
    bob = _search(mission, resource={"type": "t", "id": "x", "properties": {"audience": MCP}})
    bob["subject"]["id"] = "bob"
    assert pdp.search("action", bob, RS)["results"] == []
    with pytest.raises(AuthZenError):
        pdp.search("action", _search(mission, resource={
            "type": "t", "id": "x", "properties": {"audience": MCP}}),
            PepCaller("x", frozenset({ERP})))
    assert evidence_count(store) == 0  # a search is not a decision


def test_the_demo_authority_fixture_is_used_as_approved(mission: MissionRecord) -> None:
    assert mission.state is State.ACTIVE
    assert mission.policy_version.startswith("sha-256:")
    assert mission.authority_set == list(DEMO_AUTHORITY)


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = threading.active_count()
    yield
    assert threading.active_count() <= before + 1


def test_the_act_chain_is_nested_immediate_actor_outermost() -> None:
    from missionbound.runtime.pdp import _nested_act

    chain = ({"sub": "demo-agent", "iss": ISSUER}, {"sub": "demo-subagent"})
    assert _nested_act(chain) == {"sub": "demo-subagent",
                                  "act": {"sub": "demo-agent", "iss": ISSUER}}
    assert _nested_act(()) is None


def test_a_revoke_waits_for_an_evaluation_that_read_the_mission_active(
        pdp: MissionPDP, mission: MissionRecord, store: Store,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """DESIGN.md "Atomic truth": a revoke acknowledged is never followed by a permit. The
    evaluation holds the Mission row (a share lock on PostgreSQL, the write lock on SQLite)
    to its commit, so a revoke that starts while it decides is acknowledged only after the
    permit was answered, and the next evaluation reads the revoke."""
    from missionbound.runtime import pdp as pdp_module

    decided, resume = threading.Event(), threading.Event()
    real_decide = pdp_module.decide

    def paused_decide(*args: Any, **kwargs: Any) -> Any:
        decision = real_decide(*args, **kwargs)
        decided.set()
        assert resume.wait(10)
        return decision

    monkeypatch.setattr(pdp_module, "decide", paused_decide)
    finished: list[str] = []
    answers: dict[str, Any] = {}

    def evaluate() -> None:
        answers["first"] = pdp.evaluate(wire_transfer(mission), RS)
        finished.append("evaluation")

    def revoke() -> None:
        with store.begin() as session:
            transition(session, mission.mission_id, Event.REVOKE, roles={Role.ADMIN},
                       actor={"role": "admin", "iss": ISSUER, "sub": "bob"}, reason=None,
                       now=NOW - timedelta(seconds=1))
        finished.append("revoke")

    evaluation = threading.Thread(target=evaluate)
    evaluation.start()
    assert decided.wait(10)
    revoker = threading.Thread(target=revoke)
    revoker.start()
    revoker.join(0.5)
    assert revoker.is_alive(), "the revoke committed while an evaluation held the Mission"
    resume.set()
    evaluation.join(10)
    revoker.join(30)
    assert finished == ["evaluation", "revoke"]
    assert answers["first"]["decision"] is True
    monkeypatch.setattr(pdp_module, "decide", real_decide)
    after = pdp.evaluate(wire_transfer(mission), RS)
    assert after["decision"] is False and after["context"]["reason"] == "mission_inactive"


def test_an_evaluation_without_a_mission_is_400_and_a_refusal_record(
        pdp: MissionPDP, mission: MissionRecord, store: Store) -> None:
    """runtime-digest 1.6: no ``context.mission`` is never evaluated against anything else;
    the caller gets 400 and the PDP keeps a Refusal Record ``mission_context_missing``."""
    body = authzen_body(mission, action="invoices.read", audience=ERP)
    del body["context"]["mission"]
    with pytest.raises(AuthZenError) as refused:
        pdp.evaluate(body, RS)
    assert refused.value.status == 400 and "context.mission" in refused.value.message
    with store.begin_read() as session:
        records = session.scalars(select(EvidenceRecord)).all()
    assert [(r.kind, r.record["denial_reason"], r.record["audience"]) for r in records] == [
        ("refusal", "mission_context_missing", ERP)]
    # Another PEP's audience: nothing to attribute the refusal to, only the 400.
    body["resource"]["properties"]["audience"] = "https://elsewhere.example/api"
    with pytest.raises(AuthZenError):
        pdp.evaluate(body, RS)
    assert evidence_count(store) == 1


def test_a_retransmission_from_another_key_or_a_shorter_credential_is_a_conflict(
        pdp: MissionPDP, mission: MissionRecord) -> None:
    """The prior permit is bound to its key and capped by its credential: a retry that
    presents another key, or a credential ending before the permit, never receives it
    (nor a second permit for the same key, which could run the operation twice)."""
    body = wire_transfer(mission, idempotency_key="idk-key")
    body["context"]["credential"]["confirmation"] = {"jkt": "A" * 43}
    assert pdp.evaluate(body, RS)["decision"] is True
    other_key = copy.deepcopy(body)
    other_key["context"]["credential"]["confirmation"] = {"jkt": "B" * 43}
    assert pdp.evaluate(other_key, RS)["context"]["reason"] == "idempotency_conflict"
    shorter = copy.deepcopy(body)
    shorter["context"]["credential"]["expires_at"] = format_instant(NOW + timedelta(seconds=5))
    assert pdp.evaluate(shorter, RS)["context"]["reason"] == "idempotency_conflict"
    assert pdp.evaluate(body, RS)["decision"] is True  # the same caller: the prior answer
