"""Authority derivation (PROFILE.md section 3): ceilings, narrowing, refusals, ordering."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest

from missionbound.mission.authority import is_subset_of_set
from missionbound.mission.catalog import Catalog
from missionbound.mission.constraints import ConstraintRegistry
from missionbound.mission.derivation import ClientCeiling, Derivation, derive_authority
from missionbound.mission.errors import InvalidAuthorizationDetails, InvalidTarget

from .conftest import ERP, LIFETIME, MCP, NOW, make_intent

USD = "USD"


def derive(catalog: Catalog, client: ClientCeiling, *, intent: dict[str, Any] | None = None,
           **kwargs: Any) -> Derivation:
    return derive_authority(make_intent(catalog, **(intent or {})), catalog=catalog,
                            client=client, now=NOW, max_lifetime=kwargs.pop("lifetime", LIFETIME),
                            **kwargs)


def rae(actions: list[str], resource: str = ERP, **extra: Any) -> dict[str, Any]:
    return {"type": "mission_resource_access", "resource": resource, "actions": actions, **extra}


def money(amount: str) -> dict[str, str]:
    return {"amount": amount, "currency": USD}


def test_default_derivation_groups_actions_and_applies_ceilings(
        catalog: Catalog, client: ClientCeiling) -> None:
    result = derive(catalog, client)
    assert result.authority_set == [
        rae(["invoices.read"], delegation={
            "max_depth": 2, "allowed_delegates": [{"client_id": "helper"},
                                                  {"client_id": "sub-agent"}]}),
        rae(["journal-entries.write"], constraints={"max_value": money("1000.00")}),
    ]
    assert result.narrowing_decisions == [{
        "field": f"catalog_default[{ERP}][1].constraints.max_value", "requested": None,
        "granted": money("1000.00"), "rule": "catalog_ceiling"}]
    assert result.policy_version == "test-catalog:1"
    assert result.authorization_details_requested == []


def test_requested_entries_are_clamped_and_recorded(catalog: Catalog, client: ClientCeiling
                                                    ) -> None:
    requested = [rae(["journal-entries.write"], constraints={"max_value": money("5000")})]
    result = derive(catalog, client, requested_authorization_details=requested)
    assert result.authority_set == [
        rae(["journal-entries.write"], constraints={"max_value": money("1000.00")})]
    assert {"field": "authorization_details[0].constraints.max_value",
            "requested": money("5000"), "granted": money("1000.00"),
            "rule": "catalog_ceiling"} in result.narrowing_decisions
    assert result.authorization_details_requested == requested


def test_client_can_narrow_below_the_ceiling(catalog: Catalog, client: ClientCeiling) -> None:
    requested = [rae(["journal-entries.write"], constraints={"max_value": money("200")})]
    result = derive(catalog, client, requested_authorization_details=requested)
    assert result.authority_set[0]["constraints"] == {"max_value": money("200")}
    assert result.narrowing_decisions == []


def test_mission_context_constraints_project_onto_entries_that_accept_them(
        catalog: Catalog, client: ClientCeiling) -> None:
    result = derive(catalog, client, intent={"resources": [ERP, MCP], "context": {
        "max_value": money("500.00"), "vendors": ["acme"], "max_calls": 3}})
    by_action = {e["actions"][0]: e for e in result.authority_set}
    assert by_action["journal-entries.write"]["constraints"] == {"max_value": money("500.00")}
    # metered max_calls stays Mission-wide; vendors applies where the action accepts it
    assert by_action["execute_wire_transfer"]["constraints"] == {
        "max_value": money("500.00"), "vendors": ["acme"]}
    assert "constraints" not in by_action["invoices.read"]


def test_a_mixed_entry_is_split_so_every_bound_lands_where_it_can_be_enforced(
        catalog: Catalog, client: ClientCeiling) -> None:
    result = derive(catalog, client, intent={"context": {"max_value": money("100")}},
                    requested_authorization_details=[
                        rae(["invoices.read", "journal-entries.write"])])
    assert result.authority_set == [
        rae(["invoices.read"]),
        rae(["journal-entries.write"], constraints={"max_value": money("100")}),
    ]
    assert result.narrowing_decisions[0] == {
        "field": "authorization_details[0].actions",
        "requested": ["invoices.read", "journal-entries.write"],
        "granted": [["invoices.read"], ["journal-entries.write"]],
        "rule": "split_by_action_group"}
    assert {"field": "authorization_details[0].group[1].constraints.max_value",
            "requested": None, "granted": money("100"), "rule": "mission_context"
            } in result.narrowing_decisions


def test_allow_lists_with_nothing_in_common_are_refused(catalog: Catalog,
                                                        client: ClientCeiling) -> None:
    with pytest.raises(InvalidAuthorizationDetails, match="have nothing in common"):
        derive(catalog, client, intent={"resources": [MCP], "context": {"vendors": ["globex"]}},
               requested_authorization_details=[
                   rae(["execute_wire_transfer"], resource=MCP,
                       constraints={"vendors": ["acme"]})])


def test_incomparable_bounds_are_refused(catalog: Catalog, client: ClientCeiling) -> None:
    with pytest.raises(InvalidAuthorizationDetails, match="cannot be compared"):
        derive(catalog, client,
               intent={"context": {"max_value": {"amount": "5", "currency": "EUR"}}})
    with pytest.raises(InvalidAuthorizationDetails, match="cannot be compared"):
        derive(catalog, client, requested_authorization_details=[
            rae(["journal-entries.write"],
                constraints={"max_value": {"amount": "5", "currency": "EUR"}})])


def test_scope_narrows_and_never_widens(catalog: Catalog, client: ClientCeiling) -> None:
    result = derive(catalog, client, scope="openid invoices.read vendors.admin")
    # vendors.admin is a catalog action but not in the default set: scope cannot add it
    assert result.authority_set == [rae(["invoices.read"], delegation={
        "max_depth": 2, "allowed_delegates": [{"client_id": "helper"},
                                              {"client_id": "sub-agent"}]})]
    assert {"field": f"catalog_default[{ERP}][1].actions",
            "requested": ["journal-entries.write"], "granted": [], "rule": "scope"
            } in result.narrowing_decisions
    # a scope naming no Mission action at all does not narrow
    assert len(derive(catalog, client, scope="openid profile").authority_set) == 2
    with_unknown = derive(catalog, client, scope="payments.execute invoices.read")
    assert [e["actions"] for e in with_unknown.authority_set] == [["invoices.read"]]


def test_resource_indicators(catalog: Catalog, client: ClientCeiling) -> None:
    result = derive(catalog, client, intent={"resources": [ERP, MCP]},
                    resource_indicators=[MCP])
    assert {e["resource"] for e in result.authority_set} == {MCP}
    assert {"field": "resources", "requested": ERP, "granted": None,
            "rule": "resource_indicator"} in result.narrowing_decisions
    with pytest.raises(InvalidTarget, match=r"not one of mission_intent\.resources"):
        derive(catalog, client, resource_indicators=["https://other.example.org"])


@pytest.mark.parametrize(
    "requested, fragment",
    [
        ([rae(["invoices.read"], resource=MCP)], "not in mission_intent.resources"),
        ([rae(["payments.execute"])], "unknown action 'payments.execute'"),
        ([rae(["invoices.read"], constraints={"max_value": money("1")})],
         "not accepted by action(s) ['invoices.read']"),
        ([rae(["invoices.read"], constraints={"mystery": 1})], "unknown constraint key"),
        ([{"type": "payment_initiation", "resource": ERP, "actions": ["x"]}], "type must be"),
        ([], "must not be empty"),
        ("[]", "JSON array"),
    ],
)
def test_requested_details_refusals(catalog: Catalog, client: ClientCeiling, requested: Any,
                                    fragment: str) -> None:
    with pytest.raises(InvalidAuthorizationDetails) as caught:
        derive(catalog, client, requested_authorization_details=requested)
    assert fragment in caught.value.description


def test_catalog_and_client_membership(catalog: Catalog, client: ClientCeiling) -> None:
    with pytest.raises(InvalidAuthorizationDetails, match="not in the deployment catalog"):
        derive(catalog, client, intent={"resources": ["https://unknown.example.net"]})
    erp_only = ClientCeiling("agent", {ERP: None})
    with pytest.raises(InvalidAuthorizationDetails, match="not registered for resource"):
        derive(catalog, erp_only, intent={"resources": [MCP]})


def test_client_ceiling_and_purpose_drop_actions(catalog: Catalog) -> None:
    reader = ClientCeiling("reader", {ERP: frozenset({"invoices.read"})})
    result = derive(catalog, reader)
    assert [e["actions"] for e in result.authority_set] == [["invoices.read"]]
    assert result.narrowing_decisions[-1]["rule"] == "client_registration"
    everything = ClientCeiling("agent", {ERP: None})
    result = derive(catalog, everything, intent={"purpose": "https://purposes.example.com/read"})
    assert [e["actions"] for e in result.authority_set] == [["invoices.read"]]
    assert result.narrowing_decisions[-1]["rule"] == "purpose"
    with pytest.raises(InvalidAuthorizationDetails, match="no authority can be derived"):
        derive(catalog, reader, scope="journal-entries.write")


def test_delegation_is_clamped_to_the_catalog(catalog: Catalog, client: ClientCeiling) -> None:
    requested = [
        rae(["invoices.read"], delegation={"max_depth": 5, "allowed_delegates": [
            {"client_id": "sub-agent"}, {"client_id": "stranger"}]}),
        rae(["journal-entries.write"], constraints={"max_value": money("10")},
            delegation={"max_depth": 1}),
    ]
    result = derive(catalog, client, requested_authorization_details=requested)
    read, write = result.authority_set
    assert read["delegation"] == {"max_depth": 2, "allowed_delegates": [
        {"client_id": "sub-agent"}]}
    assert "delegation" not in write  # journal-entries.write is not delegable
    rules = [d["rule"] for d in result.narrowing_decisions]
    assert rules == ["delegation_policy", "delegation_policy"]
    only_strangers = [rae(["invoices.read"], delegation={
        "max_depth": 1, "allowed_delegates": [{"client_id": "stranger"}]})]
    result = derive(catalog, client, requested_authorization_details=only_strangers)
    assert "delegation" not in result.authority_set[0]


def test_mission_expiry_is_capped_and_says_so(catalog: Catalog, client: ClientCeiling) -> None:
    result = derive(catalog, client, lifetime=timedelta(days=1))
    assert result.mission_expiry == NOW + timedelta(days=1)
    assert result.narrowing_decisions[-1] == {
        "field": "mission_expiry", "requested": "2026-12-31T23:59:59Z",
        "granted": "2026-11-27T12:00:00Z", "rule": "max_mission_lifetime"}


def test_result_is_deterministic_whatever_the_input_order(catalog: Catalog,
                                                          client: ClientCeiling) -> None:
    entries = [rae(["invoices.read"]), rae(["get_invoice"], resource=MCP),
               rae(["journal-entries.write"], constraints={"max_value": money("7")})]
    results = {
        repr(derive(catalog, client, intent={"resources": list(resources)},
                    requested_authorization_details=list(order)).authority_set)
        for resources in itertools.permutations([ERP, MCP])
        for order in itertools.permutations(entries)
    }
    assert len(results) == 1


def test_overlapping_entries_give_one_set_whatever_their_order(
        catalog: Catalog, client: ClientCeiling) -> None:
    wide = rae(["invoices.read", "journal-entries.write"])  # split, write gets the ceiling
    narrow = rae(["journal-entries.write"], constraints={"max_value": money("50")})
    same_as_wide = rae(["journal-entries.write"], constraints={"max_value": money("1000")})
    results = [derive(catalog, client, requested_authorization_details=list(order))
               for order in itertools.permutations([wide, narrow, same_as_wide])]
    assert all(r.authority_set == results[0].authority_set for r in results)
    # the 50 USD entry grants nothing the 1000 USD one does not: dropped, and said so; of
    # "1000" and the ceiling's "1000.00", which cover each other, the first in order stays
    assert results[0].authority_set == [
        rae(["invoices.read"]),
        rae(["journal-entries.write"], constraints={"max_value": money("1000")}),
    ]
    assert {"field": "authority_set", "requested": narrow, "granted": None,
            "rule": "subsumed"} in results[0].narrowing_decisions


def test_every_derived_entry_fits_the_catalog_ceiling(demo_catalog: Catalog) -> None:
    erp, mcp = "https://as.test/demo/erp", "https://as.test/demo/mcp"
    client = ClientCeiling("demo-agent", {erp: None, mcp: None})
    intent = make_intent(demo_catalog, resources=[erp, mcp])
    result = derive_authority(intent, catalog=demo_catalog, client=client, now=NOW,
                              max_lifetime=LIFETIME)
    registry = ConstraintRegistry.for_catalog(demo_catalog)
    ceiling = [
        rae(sorted(demo_catalog.resources[erp].actions), resource=erp,
            constraints={"max_value": money("10000.00")}),
        rae(["get_invoice", "list_invoices", "schedule_payment"], resource=mcp,
            delegation={"max_depth": 1, "allowed_delegates": [{"client_id": "demo-subagent"}]}),
        rae(["execute_wire_transfer"], resource=mcp, constraints={"max_value": money("5000.00")}),
        rae(["invoices.read"], resource=erp,
            delegation={"max_depth": 1, "allowed_delegates": [{"client_id": "demo-subagent"}]}),
    ]
    assert all(is_subset_of_set(e, ceiling, registry) for e in result.authority_set)
