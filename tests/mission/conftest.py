"""Fixtures for the pure Mission core: a small catalog shaped like the profile's examples and
the real demo tenant catalog."""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from missionbound.mission.catalog import Catalog, load_catalog
from missionbound.mission.derivation import ClientCeiling
from missionbound.mission.intent import MissionIntent, validate_intent

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
ERP = "https://erp.example.com"
MCP = "https://tools.example.com/mcp"
ISS = "https://as.example.com"

CATALOG: dict[str, Any] = {
    "version": "test-catalog:1",
    "allow_list_keys": ["vendors"],
    "acr_order": ["urn:acr:pwd", "urn:acr:mfa"],
    "resources": [
        {
            "uri": ERP,
            "title": "ERP",
            "default_actions": ["invoices.read", "journal-entries.write"],
            "delegation": {"max_depth": 2, "allowed_delegates": [{"client_id": "sub-agent"},
                                                                 {"client_id": "helper"}]},
            "actions": [
                {"name": "invoices.read", "class": "consequential_read", "delegable": True,
                 "description": "read invoices"},
                {"name": "journal-entries.write", "class": "consequential_write",
                 "description": "post journal entries",
                 "constraints": {"max_value": "amount"},
                 "ceiling": {"max_value": {"amount": "1000.00", "currency": "USD"}}},
                {"name": "vendors.admin", "class": "privileged_admin",
                 "description": "manage vendors"},
            ],
        },
        {
            "uri": MCP,
            "title": "Payment tools",
            "default_actions": ["get_invoice", "execute_wire_transfer"],
            "actions": [
                {"name": "get_invoice", "class": "consequential_read", "delegable": True},
                {"name": "execute_wire_transfer", "class": "irreversible",
                 "constraints": {"max_value": "amount", "vendors": "vendor", "max_calls": "",
                                 "geo": "", "data_classification": "", "aal": "",
                                 "max_duration": "", "max_total_value": "amount"}},
            ],
        },
    ],
    "purposes": [
        {"uri": "https://purposes.example.com/ap", "title": "Accounts payable",
         "resources": {ERP: ["invoices.read", "journal-entries.write"],
                       MCP: ["get_invoice", "execute_wire_transfer"]},
         "class_raises": {"invoices.read": "consequential_write"}},
        {"uri": "https://purposes.example.com/read", "title": "Read only",
         "resources": {ERP: ["invoices.read"], MCP: ["get_invoice"]},
         "class_raises": {"invoices.read": "non_consequential"}},
    ],
}


@pytest.fixture
def catalog() -> Catalog:
    return load_catalog(CATALOG)


@pytest.fixture
def demo_catalog() -> Catalog:
    path = Path(__file__).parents[2] / "missionbound" / "demo" / "tenant.toml"
    raw = tomllib.loads(path.read_text())["catalog"]
    return load_catalog(json.loads(json.dumps(raw).replace("{issuer}", "https://as.test")))


@pytest.fixture
def client() -> ClientCeiling:
    return ClientCeiling("agent", {ERP: None, MCP: None})


def intent_json(**overrides: Any) -> str:
    value: dict[str, Any] = {
        "goal": "Reconcile Q3 invoices",
        "resources": [ERP],
        "mission_expiry": "2026-12-31T23:59:59Z",
    }
    value.update(overrides)
    return json.dumps({k: v for k, v in value.items() if v is not None}, ensure_ascii=False)


def make_intent(catalog: Catalog, **overrides: Any) -> MissionIntent:
    return validate_intent(intent_json(**overrides), catalog=catalog, now=NOW)


LIFETIME = timedelta(days=90)
