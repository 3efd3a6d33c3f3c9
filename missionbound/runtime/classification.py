"""Action classification (PROFILE.md section 12, runtime-digest section 2.4).

The deployment catalog gives every action one of six classes (``mission.catalog.ActionClass``).
A registered ``purpose`` may raise it, and a resource's configured floors
(``mission_action_class_floors``: action name or ``family.*`` -> minimum class) may raise it
too; nothing lowers it. Floor rules: the three high-consequence classes are always gated and
never lowered; an action the catalog does not know is treated as the highest class; a floor
value this deployment does not recognise is treated as high-consequence (``privileged_admin``,
the widest) rather than ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from missionbound.mission.catalog import ActionClass, Catalog, raise_class

DEFAULT: Final = "default"
"""The catalog does not know the action: fail closed at the highest class."""
DEPLOYMENT: Final = "deployment"
"""The class the deployment catalog declares."""
PURPOSE: Final = "purpose"
"""Raised by the Mission's registered purpose."""
RESOURCE_FLOOR: Final = "resource_floor"
"""Raised by the resource's configured floor."""

PARAMETER_BOUND: Final = frozenset(
    cls for cls in ActionClass if cls.rank >= ActionClass.CONSEQUENTIAL_WRITE.rank)
"""Classes whose permits bind ``parameter_digest`` (runtime-digest section 2.4 table)."""

# The digest's spellings of the same classes (runtime-digest 2.4 uses them in floor metadata).
_ALIASES: Final = {
    "irreversible_action": ActionClass.IRREVERSIBLE,
    "privileged_administration": ActionClass.PRIVILEGED_ADMIN,
}


def is_gated(action_class: ActionClass) -> bool:
    """Everything but ``non_consequential`` needs a PDP decision (runtime-digest 2.4)."""
    return action_class is not ActionClass.NON_CONSEQUENTIAL


def is_parameter_bound(action_class: ActionClass) -> bool:
    return action_class in PARAMETER_BOUND


@dataclass(frozen=True)
class Classified:
    action_class: ActionClass
    class_source: str  # DEFAULT | DEPLOYMENT | PURPOSE | RESOURCE_FLOOR


def floor_class(value: str) -> ActionClass:
    """A floor value as a class; an unrecognised value is high-consequence (section 2.4)."""
    try:
        return ActionClass(value)
    except ValueError:
        return _ALIASES.get(value, ActionClass.PRIVILEGED_ADMIN)


def floor_for(action: str, floors: Mapping[str, str]) -> ActionClass | None:
    """The strongest floor naming ``action`` exactly or through a ``family.*`` key at a
    segment boundary (``invoices.*`` covers ``invoices.read``, not ``invoicesX``)."""
    found: ActionClass | None = None
    for key, value in floors.items():
        if key == action or (key.endswith(".*") and action.startswith(key[:-1])):
            cls = floor_class(value)
            found = cls if found is None else raise_class(found, cls)
    return found


def classify(
    catalog: Catalog,
    resource: str,
    action: str,
    *,
    purpose: str | None = None,
    floors: Mapping[str, str] | None = None,
) -> Classified:
    """The class of ``action`` at ``resource`` and what set it. Each step may only raise.
    ``floors`` defaults to the resource's configured ``class_floors`` in the catalog."""
    res = catalog.resource(resource)
    declared = res.actions.get(action) if res is not None else None
    if declared is None:
        return Classified(ActionClass.PRIVILEGED_ADMIN, DEFAULT)
    if floors is None and res is not None:
        floors = res.class_floors
    result = Classified(declared.action_class, DEPLOYMENT)
    if purpose is not None:
        registered = catalog.purposes.get(purpose)
        raised = registered.class_raises.get(action) if registered is not None else None
        if raised is not None and raised.rank > result.action_class.rank:
            result = Classified(raised, PURPOSE)
    if floors:
        floor = floor_for(action, floors)
        if floor is not None and floor.rank > result.action_class.rank:
            result = Classified(floor, RESOURCE_FLOOR)
    return result


def stronger(a: Classified, b: Classified) -> Classified:
    """The higher of two classifications (ties keep ``a``)."""
    return b if b.action_class.rank > a.action_class.rank else a
