"""Runs the decision table (tests/runtime/decision_table.py) in-process: the AuthZEN body
through ``request_from_authzen``, the Mission through ``compile_policy``/``load_policy``, then
``decide`` with real Cedar, at the table's fixed clock."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import cedarpy
import pytest

from missionbound.mission.catalog import Catalog
from missionbound.runtime.compiler import compile_policy, load_policy
from missionbound.runtime.decision import Decision, MissionView, StateView, decide
from missionbound.runtime.reasons import Reason
from missionbound.runtime.request import DecisionRequest, request_from_authzen
from tests.runtime.decision_table import CASES, TableCase
from tests.runtime.table_support import NOW, demo_catalog, extended_catalog


class CedarTenant:
    """A resource-policy tenant as runtime/tenants.py maps a request to Cedar: principal
    <subject.type>::"<subject.id>", action Action::"<name>", resource <type>::"<id>"."""

    def __init__(self, policies: str) -> None:
        self.policies = cedarpy.PolicySet.from_str(policies)
        self.entities = cedarpy.Entities.from_json_str("[]")

    def permits(self, request: DecisionRequest) -> bool:
        return bool(cedarpy.is_authorized(
            {"principal": {"type": request.subject_type, "id": request.subject_id},
             "action": {"type": "Action", "id": request.action_name},
             "resource": {"type": request.resource_type, "id": request.resource_id}},
            self.policies, self.entities).allowed)


def catalog_for(case: TableCase) -> Catalog:
    return extended_catalog() if "extended_catalog" in case.needs else demo_catalog()


def run_case(case: TableCase) -> Decision:
    catalog = catalog_for(case)
    record = case.mission_record()
    artifact = compile_policy(record, catalog, **case.compile)
    policy = load_policy(artifact)
    request = request_from_authzen(case.body(record, artifact.policy_version))
    state = StateView(state=case.state.get("state", "active"), version=record.version,
                      valid_through=NOW + timedelta(seconds=case.state.get("valid_through_s", 0)))
    tenants = {name: CedarTenant(text) for name, text in case.tenants.items()}
    return decide(policy, MissionView.of(record), state, request, catalog=catalog, now=NOW,
                  resource_policies=tenants)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decision_table(case: TableCase) -> None:
    decision = run_case(case)
    assert (decision.allowed, decision.reason) == (case.allowed, case.reason), decision.detail
    expect: dict[str, Any] = dict(case.expect)
    if "class" in expect:
        assert decision.action_class.value == expect["class"]
    if "class_source" in expect:
        assert decision.class_source == expect["class_source"]
    if "keys" in expect:
        assert decision.contributing_constraints == expect["keys"], decision.detail
    if "entry_index" in expect:
        assert decision.entry_index == expect["entry_index"]
    if "use_limit" in expect:
        assert decision.use_limit == expect["use_limit"]
    if "parameter_bound" in expect:
        assert decision.parameter_bound == expect["parameter_bound"]
    if "charges" in expect:
        got = [(c.key, c.amount, c.currency) for c in decision.charges]
        assert got == expect["charges"]
        assert all((c.entry_digest is None) == bool(expect.get("mission_charge"))
                   for c in decision.charges)
    if "valid_until_s" in expect:
        assert decision.valid_until == NOW + timedelta(seconds=expect["valid_until_s"])
    if case.allowed:
        assert decision.valid_until is not None and decision.entry_digest is not None
        assert decision.valid_until <= NOW + timedelta(seconds=60)
        assert decision.parameter_bound == (decision.use_limit == 1 and
                                            decision.action_class.rank >= 2)
    else:
        assert decision.charges == () and decision.valid_until is None


def test_the_table_covers_every_reason_decide_can_give() -> None:
    given = Counter(case.reason for case in CASES)
    stateful = {Reason.DUPLICATE_SUPPRESSED, Reason.IDEMPOTENCY_CONFLICT, Reason.QUOTA_EXCEEDED}
    for reason in set(Reason) - stateful:
        assert given[reason.value] >= 1, reason
    assert len(CASES) >= 60
    assert given[None] >= 20


def test_every_class_is_permitted_somewhere() -> None:
    classes = {run_case(case).action_class.value for case in CASES if case.allowed}
    assert classes == {"non_consequential", "consequential_read", "consequential_write",
                       "irreversible", "external_commitment", "privileged_admin"}


def test_decide_never_depends_on_the_order_of_runs() -> None:
    # The same case twice, on one loaded policy: decide keeps no state between calls.
    case = next(c for c in CASES if c.id == "irreversible-permit-charges")
    first, second = run_case(case), run_case(case)
    assert first == second
