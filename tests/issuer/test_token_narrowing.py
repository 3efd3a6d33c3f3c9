"""Token-endpoint narrowing (issuance digest 6.4): resource, scope, authorization_details
can only take away from the Mission's Authority Set."""

from __future__ import annotations

import json
from typing import Any

import pytest

from missionbound.issuer.token_narrowing import InvalidScope, TokenNarrowing
from missionbound.mission.constraints import ConstraintRegistry
from missionbound.mission.errors import InvalidAuthorizationDetails, InvalidRequest, InvalidTarget

ERP = "https://as.example.test/demo/erp"
MCP = "https://as.example.test/demo/mcp"
REGISTRY = ConstraintRegistry(frozenset({"vendors", "recipients"}))
T = "mission_resource_access"

AUTHORITY: list[dict[str, Any]] = [
    {"type": T, "resource": ERP, "actions": ["invoices.read"]},
    {"type": T, "resource": ERP, "actions": ["journal-entries.write"],
     "constraints": {"max_value": {"amount": "500.00", "currency": "USD"}}},
    {"type": T, "resource": MCP, "actions": ["get_invoice", "list_invoices"]},
    {"type": T, "resource": MCP, "actions": ["execute_wire_transfer"],
     "constraints": {"max_value": {"amount": "500.00", "currency": "USD"},
                     "vendors": ["acme"]}},
]


def narrow(resources: tuple[str, ...] = (), scope: str | None = None,
           details: Any = None) -> tuple[list[dict[str, Any]], Any]:
    raw = json.dumps(details) if details is not None else None
    return TokenNarrowing.from_parameters(resources, scope, raw).apply(AUTHORITY, REGISTRY)


def test_nothing_asked_is_the_whole_set_for_every_resource() -> None:
    entries, aud = narrow()
    assert entries == AUTHORITY
    assert aud == [ERP, MCP]


def test_one_resource_gives_its_entries_and_a_single_audience() -> None:
    entries, aud = narrow((MCP,))
    assert entries == AUTHORITY[2:]
    assert aud == MCP


def test_a_resource_outside_the_mission_is_invalid_target() -> None:
    with pytest.raises(InvalidTarget):
        narrow(("https://elsewhere.example/api",))


def test_scope_keeps_only_the_named_actions() -> None:
    entries, aud = narrow((), "list_invoices invoices.read")
    assert [e["actions"] for e in entries] == [["invoices.read"], ["list_invoices"]]
    assert aud == [ERP, MCP]


def test_scope_without_mission_actions_changes_nothing() -> None:
    assert narrow((), "openid profile")[0] == AUTHORITY


def test_scope_naming_actions_of_another_resource_is_invalid_scope() -> None:
    with pytest.raises(InvalidScope):
        narrow((ERP,), "list_invoices")


def test_authorization_details_within_the_set_are_what_the_token_carries() -> None:
    asked = [{"type": T, "resource": MCP, "actions": ["execute_wire_transfer"],
              "constraints": {"max_value": {"amount": "100.00", "currency": "USD"},
                              "vendors": ["acme"]}}]
    entries, aud = narrow((), None, asked)
    assert entries == asked
    assert aud == MCP


@pytest.mark.parametrize("asked", [
    # a higher amount than granted
    [{"type": T, "resource": MCP, "actions": ["execute_wire_transfer"],
      "constraints": {"max_value": {"amount": "900.00", "currency": "USD"},
                      "vendors": ["acme"]}}],
    # a constraint dropped (the broadest value)
    [{"type": T, "resource": MCP, "actions": ["execute_wire_transfer"],
      "constraints": {"max_value": {"amount": "100.00", "currency": "USD"}}}],
    # an action of another entry combined into one
    [{"type": T, "resource": ERP, "actions": ["invoices.read", "journal-entries.write"],
      "constraints": {"max_value": {"amount": "100.00", "currency": "USD"}}}],
    # an action never granted
    [{"type": T, "resource": MCP, "actions": ["send_remittance_email"]}],
])
def test_broader_authorization_details_are_refused(asked: list[dict[str, Any]]) -> None:
    with pytest.raises(InvalidAuthorizationDetails):
        narrow((), None, asked)


def test_authorization_details_outside_the_requested_resource_are_refused() -> None:
    with pytest.raises(InvalidAuthorizationDetails):
        narrow((ERP,), None, [{"type": T, "resource": MCP, "actions": ["get_invoice"]}])


@pytest.mark.parametrize("raw", ['{"type": 1', "[]", '{"a": 1, "a": 2}'])
def test_malformed_authorization_details_are_refused(raw: str) -> None:
    with pytest.raises((InvalidRequest, InvalidAuthorizationDetails)):
        TokenNarrowing.from_parameters((), None, raw).apply(AUTHORITY, REGISTRY)
