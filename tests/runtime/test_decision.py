"""decide() beyond the table: digest vectors, purity, fail-closed edges, and a Mission
approved through the real store (SQLite and PostgreSQL) decided end to end."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import timedelta

import pytest

from missionbound.config import Settings
from missionbound.mission.record import MissionRecord
from missionbound.runtime.compiler import compile_policy, load_policy
from missionbound.runtime.decision import MissionView, StateView, decide
from missionbound.runtime.digests import (
    DigestError,
    entry_digest,
    evaluation_request_digest,
    parameter_digest,
)
from missionbound.runtime.reasons import PRECEDENCE, Reason
from missionbound.runtime.request import DecisionRequest, request_from_authzen
from missionbound.tenant import load_tenant
from tests.runtime.table_support import (
    ERP,
    MCP,
    NOW,
    authzen_body,
    demo_catalog,
    make_mission,
)
from tests.store.factories import ISSUER as STORE_ISSUER


def test_parameter_digest_vectors() -> None:
    # runtime-digest 4.3 verified vectors.
    assert parameter_digest({"amount_usd": "423.50", "source_invoice_id": "inv_2026Q3_842"}) \
        == "sha-256:WPVi6EnQ7H9Fh-qk9ADxmTg8zruOdVUX1esl-v3TfCI"
    assert parameter_digest({"amount_usd": "780.00", "source_invoice_id": "inv_2026Q3_931"}) \
        == "sha-256:mzFwtXAT6_hY0v8_NFHMDJG39HFuWY2fRcOCSFGDyyE"
    for bad in ({"a": 1.5}, {"a": [{"b": 0.1}]}, {"a": "\ud800"}, {"a": 2**60}, [1]):
        with pytest.raises(DigestError):
            parameter_digest(bad)  # type: ignore[arg-type]
    assert evaluation_request_digest({"a": "b"}) != evaluation_request_digest({"a": "c"})
    assert entry_digest("https://x", {"a": 1}) != entry_digest("https://y", {"a": 1})


def _decide(record: MissionRecord, body: dict, **kwargs):  # type: ignore[no-untyped-def]
    policy = load_policy(compile_policy(record, demo_catalog(),
                                        **kwargs.pop("compile", {})))
    state = StateView("active", record.version, NOW)
    return decide(policy, MissionView.of(record), state, request_from_authzen(body),
                  catalog=demo_catalog(), now=NOW, **kwargs)


def test_decide_changes_nothing_it_is_given() -> None:
    record = make_mission()
    params = {"invoice_id": "i", "vendor": "acme", "amount": "1.00", "currency": "USD"}
    body = authzen_body(record, action="execute_wire_transfer", audience=MCP,
                        parameters=params)
    body["action"]["properties"]["parameter_digest"] = parameter_digest(params)
    before = (copy.deepcopy(record.authority_set), copy.deepcopy(body))
    decision = _decide(record, body)
    assert decision.allowed and (record.authority_set, body) == before


def test_a_policy_of_another_mission_is_view_inconsistent() -> None:
    record, other = make_mission(), make_mission(mission_id="msn_other" + "Z" * 30)
    policy = load_policy(compile_policy(other, demo_catalog()))
    request = request_from_authzen(authzen_body(record, action="invoices.read", audience=ERP))
    decision = decide(policy, MissionView.of(record), StateView("active", 2, NOW), request,
                      catalog=demo_catalog(), now=NOW)
    assert decision.reason is Reason.VIEW_INCONSISTENT


class Exploding:
    def permits(self, request: DecisionRequest) -> bool:
        raise RuntimeError("tenant store unreachable")


class Truthy:
    def permits(self, request: DecisionRequest) -> bool:
        return "yes"  # type: ignore[return-value]


@pytest.mark.parametrize("tenant", [Exploding(), Truthy()])
def test_a_failing_resource_policy_is_a_deny(tenant: object) -> None:
    record = make_mission()
    decision = _decide(record, authzen_body(record, action="invoices.read", audience=ERP),
                       compile={"resource_policies": {ERP: "t"}},
                       resource_policies={"t": tenant})
    assert decision.reason is Reason.RESOURCE_POLICY


def test_the_window_is_the_shortest_bound() -> None:
    record = make_mission(expiry=NOW + timedelta(seconds=30))
    decision = _decide(record, authzen_body(record, action="invoices.read", audience=ERP),
                       permit_lifetime=timedelta(seconds=45))
    assert decision.valid_until == NOW + timedelta(seconds=30)


def test_precedence_is_the_documented_order() -> None:
    assert [r.value for r in PRECEDENCE] == [
        "view_inconsistent", "mission_inactive", "stale_state", "credential_invalid",
        "actor_invalid", "unsupported_authorization_type", "out_of_authority",
        "capability_drift", "parameter_violation", "constraint_unsupported", "resource_policy",
        "duplicate_suppressed", "idempotency_conflict", "quota_exceeded"]


def test_a_mission_approved_in_the_store_is_decided(
        active_mission: Callable[..., MissionRecord]) -> None:
    # tests/conftest.py: stored pending, approved through missions.approve (SQLite, PostgreSQL).
    record = active_mission()
    catalog = load_tenant(Settings(issuer=STORE_ISSUER)).catalog
    policy = load_policy(compile_policy(record, catalog))
    now = record.created_at + timedelta(minutes=2)
    erp = f"{STORE_ISSUER}/demo/erp"
    params = {"invoice_id": "inv-acme-1", "amount": "120.00", "currency": "USD"}
    body = authzen_body(record, action="journal-entries.write", audience=erp,
                        parameters=params)
    body["action"]["properties"]["parameter_digest"] = parameter_digest(params)
    body["context"]["credential"]["expires_at"] = "2030-01-01T00:00:00Z"
    state = StateView(record.state.value, record.version, now)
    permit = decide(policy, MissionView.of(record), state, request_from_authzen(body),
                    catalog=catalog, now=now)
    assert permit.allowed and permit.use_limit == 1 and permit.entry_index == 0
    body["action"]["properties"]["parameters"] = {**params, "amount": "500.01"}
    body["action"]["properties"]["parameter_digest"] = parameter_digest(
        body["action"]["properties"]["parameters"])
    deny = decide(policy, MissionView.of(record), state, request_from_authzen(body),
                  catalog=catalog, now=now)
    assert (deny.reason, deny.contributing_constraints) == (
        Reason.PARAMETER_VIOLATION, ("max_value",))
