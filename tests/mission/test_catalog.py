"""The deployment catalog: loading checks, classes and the purpose floor rule."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from missionbound.mission.catalog import (
    ActionClass,
    Catalog,
    CatalogError,
    load_catalog,
    raise_class,
)

from .conftest import CATALOG, ERP


def broken(mutate: Any) -> dict[str, Any]:
    raw = copy.deepcopy(CATALOG)
    mutate(raw)
    return raw


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda c: c.pop("version"), "catalog.version"),
        (lambda c: c["resources"][0]["actions"][0].update({"class": "harmless"}), "class must"),
        (lambda c: c["resources"][0]["actions"][0].update({"name": "a b"}), "must match"),
        (lambda c: c["resources"][0]["actions"].append(c["resources"][0]["actions"][0]),
         "twice"),
        (lambda c: c["resources"][0].update({"default_actions": ["nope"]}), "not declared"),
        (lambda c: c["resources"][0]["actions"][0].update({"constraints": {"mystery": "x"}}),
         "unknown constraint key 'mystery'"),
        (lambda c: c["resources"][0]["actions"][0].update(
            {"ceiling": {"max_value": {"amount": "1", "currency": "USD"}}}),
         "does not accept"),
        (lambda c: c["resources"][0]["actions"][1].update(
            {"ceiling": {"max_value": {"amount": 1, "currency": "USD"}}}), "decimal string"),
        (lambda c: c["resources"][0].update({"delegation": {"max_depth": 0}}), "max_depth"),
        (lambda c: c["purposes"][0].update({"class_raises": {"x": "big"}}), "unknown class"),
        (lambda c: c["resources"][0].update({"class_floors": {"invoices.*": "huge"}}),
         "class_floors['invoices.*'] is not one of"),
        (lambda c: c["resources"][0].update({"class_floors": ["irreversible"]}),
         "class_floors must map actions to classes"),
    ],
)
def test_load_refuses_bad_catalogs(mutate: Any, fragment: str) -> None:
    with pytest.raises(CatalogError) as caught:
        load_catalog(broken(mutate))
    assert fragment in str(caught.value)


def test_classes_raise_never_lower(catalog: Catalog) -> None:
    assert catalog.action_class(ERP, "invoices.read") is ActionClass.CONSEQUENTIAL_READ
    ap, read = "https://purposes.example.com/ap", "https://purposes.example.com/read"
    assert catalog.action_class(ERP, "invoices.read", ap) is ActionClass.CONSEQUENTIAL_WRITE
    # a purpose that tries to lower a class leaves it where it was
    assert catalog.action_class(ERP, "invoices.read", read) is ActionClass.CONSEQUENTIAL_READ
    assert catalog.action_class(ERP, "unknown") is ActionClass.PRIVILEGED_ADMIN  # fail closed
    assert raise_class(ActionClass.IRREVERSIBLE, ActionClass.NON_CONSEQUENTIAL) is \
        ActionClass.IRREVERSIBLE
    assert [c for c in ActionClass if c.high_consequence] == [
        ActionClass.IRREVERSIBLE, ActionClass.EXTERNAL_COMMITMENT, ActionClass.PRIVILEGED_ADMIN]


def test_demo_catalog_loads(demo_catalog: Catalog) -> None:
    erp = demo_catalog.resources["https://as.test/demo/erp"]
    assert erp.actions["journal-entries.write"].constraint_bindings == {"max_value": "amount"}
    mcp = demo_catalog.resources["https://as.test/demo/mcp"]
    assert mcp.actions["execute_wire_transfer"].action_class is ActionClass.IRREVERSIBLE
    assert mcp.actions["execute_wire_transfer"].constraint_bindings["vendors"] == "vendor"
    assert mcp.actions["send_remittance_email"].action_class is ActionClass.EXTERNAL_COMMITMENT


def test_class_floors_are_loaded_per_resource() -> None:
    raw = broken(lambda c: c["resources"][0].update(
        {"class_floors": {"invoices.*": "irreversible"}}))
    catalog = load_catalog(raw)
    assert catalog.resources[ERP].class_floors == {"invoices.*": "irreversible"}
