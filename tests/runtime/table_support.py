"""Helpers of the PDP decision table (tests/runtime/decision_table.py): the demo tenant's
catalog (and an extended one for the classes and keys the demo does not exercise), an active
demo Mission built directly as a MissionRecord, and the AuthZEN evaluation body for it."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, Final

from missionbound.config import Settings
from missionbound.mission.anchors import authority_hash
from missionbound.mission.catalog import Action, ActionClass, Catalog, Purpose, Resource
from missionbound.mission.lifecycle import State
from missionbound.mission.record import MissionRecord, Principal, format_instant
from missionbound.tenant import load_tenant

ISSUER: Final = "https://as.table.example"
ERP: Final = f"{ISSUER}/demo/erp"
MCP: Final = f"{ISSUER}/demo/mcp"
ADMIN: Final = f"{ISSUER}/demo/admin"  # the extended catalog's extra resource
AUDIENCES: Final = {"erp": ERP, "mcp": MCP, "admin": ADMIN}
NOW: Final = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
MISSION_ID: Final = "msn_decisionTableAAAAAAAAAAAAAAAAAAAA"
AGENT: Final = "demo-agent"
SUBAGENT: Final = "demo-subagent"
ACCOUNTS_PAYABLE: Final = "https://missionbound.dev/purposes/accounts-payable"
EXTRA_PURPOSE: Final = "https://missionbound.dev/purposes/sensitive-review"
DELETE: Final = object()  # an override value that removes the member

MRA = "mission_resource_access"
DELEGATION = {"max_depth": 1, "allowed_delegates": [{"client_id": SUBAGENT}]}
USD500 = {"amount": "500.00", "currency": "USD"}

# The demo Mission: "Reconcile the Q3 invoices and pay approved vendors, up to 500 USD per
# invoice" as the derivation gives it, plus a remittance e-mail entry and metered bounds.
DEMO_AUTHORITY: Final[tuple[dict[str, Any], ...]] = (
    {"type": MRA, "resource": ERP, "actions": ["invoices.read"], "delegation": DELEGATION},
    {"type": MRA, "resource": ERP, "actions": ["journal-entries.write"],
     "constraints": {"max_value": USD500}},
    {"type": MRA, "resource": MCP, "actions": ["execute_wire_transfer"],
     "constraints": {"max_value": USD500, "vendors": ["acme"], "max_calls": 3,
                     "max_total_value": {"amount": "1000.00", "currency": "USD"}}},
    {"type": MRA, "resource": MCP, "actions": ["get_invoice", "list_invoices"],
     "delegation": DELEGATION},
    {"type": MRA, "resource": MCP, "actions": ["schedule_payment"]},
    {"type": MRA, "resource": MCP, "actions": ["send_remittance_email"],
     "constraints": {"recipients": ["ap@acme.example", "billing@acme.example"]}},
)

EXTRA_RESOURCE: Final = Resource(
    uri=ADMIN, title="Extended test resource",
    actions={
        "notes.draft": Action("notes.draft", "draft a note", ActionClass.NON_CONSEQUENTIAL),
        "users.grant": Action("users.grant", "grant a user access", ActionClass.PRIVILEGED_ADMIN),
        "reports.export": Action("reports.export", "export a report",
                                 ActionClass.CONSEQUENTIAL_READ,
                                 constraint_bindings={"geo": "country", "aal": ""}),
    },
    default_actions=("notes.draft",), labels=())


@cache
def demo_catalog() -> Catalog:
    """The demo tenant's catalog, loaded as ``missionbound serve`` loads it."""
    return load_tenant(Settings(issuer=ISSUER)).catalog


@cache
def extended_catalog() -> Catalog:
    demo = demo_catalog()
    purpose = Purpose(EXTRA_PURPOSE, "Sensitive review",
                      ceiling={ERP: frozenset({"invoices.read"})},
                      class_raises={"invoices.read": ActionClass.CONSEQUENTIAL_WRITE})
    return replace(demo, resources={**demo.resources, ADMIN: EXTRA_RESOURCE},
                   purposes={**demo.purposes, EXTRA_PURPOSE: purpose})


def make_mission(authority: tuple[dict[str, Any], ...] | list[dict[str, Any]] = DEMO_AUTHORITY,
                 **tweaks: Any) -> MissionRecord:
    """An active, approved demo Mission. Tweaks: ``purpose``, ``context`` (intent context),
    ``client_id``, ``expiry`` (datetime), ``mission_id``."""
    entries = copy.deepcopy(list(authority))
    expiry = tweaks.get("expiry", NOW + timedelta(days=2))
    intent: dict[str, Any] = {
        "goal": "Reconcile the Q3 invoices and pay approved vendors, up to 500 USD per "
                "invoice, by Friday.",
        "resources": [ERP, MCP],
        "purpose": tweaks.get("purpose", ACCOUNTS_PAYABLE),
        "mission_expiry": format_instant(expiry),
    }
    if "context" in tweaks:
        intent["context"] = tweaks["context"]
    return MissionRecord(
        mission_id=tweaks.get("mission_id", MISSION_ID), origin=ISSUER, state=State.ACTIVE,
        version=2, mission_intent=intent, authorization_details_requested=[],
        authority_set=entries, narrowing_decisions=[],
        subject=Principal(ISSUER, "alice"), client_id=tweaks.get("client_id", AGENT),
        policy_version="demo-catalog:1", created_at=NOW - timedelta(hours=1),
        mission_expiry=expiry, approver=Principal(ISSUER, "bob"),
        authority_hash=authority_hash(ISSUER, entries), approval_event_id="ape_table",
        activated_at=NOW - timedelta(minutes=59))


def authzen_body(mission: MissionRecord, *, action: str, audience: str,
                 parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """A well-formed evaluation request for ``mission`` by its own agent, not delegated."""
    properties: dict[str, Any] = {}
    if parameters is not None:
        properties["parameters"] = parameters
    return {
        "subject": {"type": "user", "id": "alice", "properties": {"iss": ISSUER}},
        "resource": {"type": "invoice", "id": "inv-acme-1",
                     "properties": {"audience": audience}},
        "action": {"name": action, "properties": properties},
        "context": {
            "mission": {"id": mission.mission_id, "issuer": mission.origin,
                        "authority_hash": mission.authority_hash},
            "actor": {"client_id": mission.client_id},
            "credential": {"issuer": ISSUER,
                           "expires_at": format_instant(NOW + timedelta(hours=1))},
        },
    }


def apply_overrides(body: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set (or, with :data:`DELETE`, remove) dotted paths such as ``context.actor.act``."""
    out = copy.deepcopy(body)
    for path, value in overrides.items():
        *parents, last = path.split(".")
        node = out
        for name in parents:
            node = node.setdefault(name, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = copy.deepcopy(value)
    return out
