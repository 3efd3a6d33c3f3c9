"""Action classification (PROFILE.md section 12, runtime-digest 2.4): the catalog's class,
raised (never lowered) by purpose and resource floors; unknown actions and floor values fail
closed to high consequence."""

from __future__ import annotations

import pytest

from missionbound.mission.catalog import ActionClass
from missionbound.runtime.classification import (
    PARAMETER_BOUND,
    Classified,
    classify,
    floor_class,
    is_gated,
)
from tests.runtime.table_support import ADMIN, ERP, EXTRA_PURPOSE, MCP, extended_catalog

C = ActionClass


@pytest.mark.parametrize(("resource", "action", "expected"), [
    (ADMIN, "notes.draft", C.NON_CONSEQUENTIAL),
    (ERP, "invoices.read", C.CONSEQUENTIAL_READ),
    (ERP, "journal-entries.write", C.CONSEQUENTIAL_WRITE),
    (MCP, "execute_wire_transfer", C.IRREVERSIBLE),
    (MCP, "send_remittance_email", C.EXTERNAL_COMMITMENT),
    (ADMIN, "users.grant", C.PRIVILEGED_ADMIN),
])
def test_the_catalog_class_is_the_deployment_class(resource: str, action: str,
                                                   expected: ActionClass) -> None:
    assert classify(extended_catalog(), resource, action) == Classified(expected, "deployment")


def test_unknown_actions_and_resources_are_the_highest_class() -> None:
    assert classify(extended_catalog(), ERP, "drop_tables") == Classified(
        C.PRIVILEGED_ADMIN, "default")
    assert classify(extended_catalog(), "https://nowhere.example", "invoices.read") == \
        Classified(C.PRIVILEGED_ADMIN, "default")


def test_purpose_raises() -> None:
    assert classify(extended_catalog(), ERP, "invoices.read", purpose=EXTRA_PURPOSE) == \
        Classified(C.CONSEQUENTIAL_WRITE, "purpose")
    assert classify(extended_catalog(), ERP, "invoices.read", purpose="urn:unknown") == \
        Classified(C.CONSEQUENTIAL_READ, "deployment")


@pytest.mark.parametrize(("floors", "expected"), [
    ({"invoices.read": "irreversible"}, Classified(C.IRREVERSIBLE, "resource_floor")),
    ({"invoices.*": "external_commitment"}, Classified(C.EXTERNAL_COMMITMENT, "resource_floor")),
    ({"invoices.read": "irreversible_action"}, Classified(C.IRREVERSIBLE, "resource_floor")),
    ({"invoices.read": "no-such-class"}, Classified(C.PRIVILEGED_ADMIN, "resource_floor")),
    ({"invoices.read": "non_consequential"}, Classified(C.CONSEQUENTIAL_READ, "deployment")),
    ({"invoices.read": "consequential_read"}, Classified(C.CONSEQUENTIAL_READ, "deployment")),
    ({"invoicesX.*": "privileged_admin", "invoice.*": "privileged_admin"},
     Classified(C.CONSEQUENTIAL_READ, "deployment")),
])
def test_floors_only_raise(floors: dict[str, str], expected: Classified) -> None:
    assert classify(extended_catalog(), ERP, "invoices.read", floors=floors) == expected


@pytest.mark.parametrize("high", [C.IRREVERSIBLE, C.EXTERNAL_COMMITMENT, C.PRIVILEGED_ADMIN])
def test_high_consequence_classes_are_never_lowered(high: ActionClass) -> None:
    catalog = extended_catalog()
    action = {C.IRREVERSIBLE: (MCP, "execute_wire_transfer"),
              C.EXTERNAL_COMMITMENT: (MCP, "send_remittance_email"),
              C.PRIVILEGED_ADMIN: (ADMIN, "users.grant")}[high]
    lowered = classify(catalog, *action, floors={action[1]: "non_consequential"},
                       purpose=EXTRA_PURPOSE)
    assert lowered.action_class is high and is_gated(lowered.action_class)


def test_parameter_bound_and_gated_sets() -> None:
    assert {c.value for c in PARAMETER_BOUND} == {
        "consequential_write", "irreversible", "external_commitment", "privileged_admin"}
    assert [c for c in C if not is_gated(c)] == [C.NON_CONSEQUENTIAL]
    assert floor_class("privileged_administration") is C.PRIVILEGED_ADMIN


def test_a_resources_configured_floors_apply_by_default() -> None:
    """The catalog's ``class_floors`` raise a class at decision time too, not only in the
    compiled artifact: an action denied before any entry grants it is still classified
    (and evidenced) at its floor."""
    from dataclasses import replace

    catalog = extended_catalog()
    resources = dict(catalog.resources)
    resources[ERP] = replace(resources[ERP], class_floors={"invoices.*": "irreversible"})
    floored = replace(catalog, resources=resources)
    assert classify(floored, ERP, "invoices.read") == Classified(C.IRREVERSIBLE,
                                                                 "resource_floor")
    assert classify(floored, ERP, "invoices.read", floors={}).action_class is \
        C.CONSEQUENTIAL_READ
