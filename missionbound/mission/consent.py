"""The consent disclosure object (PROFILE.md section 5): the structured record of what the
Approver is shown. The consent page is rendered from it and ``consent_rendering_hash``
commits to it, so what was shown can be proven later. Plain words come from the catalog.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from missionbound.mission.catalog import ActionClass, Catalog
from missionbound.mission.constraints import ConstraintRegistry, duration_seconds
from missionbound.mission.intent import MissionIntent
from missionbound.mission.record import Principal, format_instant

TEMPLATE_ID = "missionbound.consent"
TEMPLATE_VERSION = "1"

CLASS_WORDS: dict[ActionClass, str] = {
    ActionClass.NON_CONSEQUENTIAL: "no lasting effect",
    ActionClass.CONSEQUENTIAL_READ: "reads your data",
    ActionClass.CONSEQUENTIAL_WRITE: "changes your data",
    ActionClass.IRREVERSIBLE: "cannot be undone",
    ActionClass.EXTERNAL_COMMITMENT: "commits you to someone outside",
    ActionClass.PRIVILEGED_ADMIN: "changes who holds authority",
}


@dataclass(frozen=True)
class Party:
    """A principal as the page names it."""

    principal: Principal
    display_name: str

    def as_dict(self) -> dict[str, str]:
        return {**self.principal.as_dict(), "display_name": self.display_name}


def _duration_words(value: str) -> str:
    seconds = duration_seconds(value)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


def describe_constraint(key: str, value: Any, registry: ConstraintRegistry) -> str:
    """One constraint in plain words, as the consent page and the console show it."""
    if key == "max_value":
        return f"at most {value['amount']} {value['currency']} per action"
    if key == "max_total_value":
        return f"at most {value['amount']} {value['currency']} in total"
    if key == "max_calls":
        return f"at most {value} call{'s' if value != 1 else ''}"
    if key == "max_derivations":
        return f"at most {value} token issuance{'s' if value != 1 else ''}"
    if key == "max_duration":
        return f"at most {_duration_words(value)} of activity"
    if key == "data_classification":
        return "only data labelled " + ", ".join(value)
    if key == "geo":
        return "only from " + ", ".join(value)
    if key == "aal":
        return registry.render(key, value)
    if registry.knows(key):  # a catalog allow-list such as vendors or recipients
        return f"{key.replace('_', ' ')} limited to " + ", ".join(value)
    return f"{key}: unrecognised (refused)"


def _constraints(constraints: Mapping[str, Any], registry: ConstraintRegistry
                 ) -> list[dict[str, Any]]:
    return [
        {"key": key, "value": value, "text": describe_constraint(key, value, registry)}
        for key, value in sorted(constraints.items())
    ]


def _authority_summary(authority_set: Sequence[Mapping[str, Any]], catalog: Catalog,
                       registry: ConstraintRegistry, purpose: str | None
                       ) -> list[dict[str, Any]]:
    summary = []
    for entry in authority_set:
        resource = catalog.resources[entry["resource"]]
        actions = []
        for name in entry["actions"]:
            action_class = catalog.action_class(resource.uri, name, purpose)
            actions.append({
                "name": name,
                "description": resource.actions[name].description,
                "class": action_class.value,
                "class_text": CLASS_WORDS[action_class],
            })
        item: dict[str, Any] = {
            "resource": resource.uri,
            "resource_title": resource.title,
            "actions": actions,
            "constraints": _constraints(entry.get("constraints", {}), registry),
        }
        delegation = entry.get("delegation")
        if delegation:
            delegates = [m["client_id"] for m in delegation.get("allowed_delegates", [])]
            item["delegation"] = {
                **delegation,
                "text": f"may be handed on to {', '.join(delegates) or 'no one'}, "
                        f"at most {delegation['max_depth']} step(s) deep",
            }
        summary.append(item)
    return summary


def build_consent_disclosure(
    *,
    disclosure_id: str,
    intent: MissionIntent,
    authority_set: Sequence[Mapping[str, Any]],
    narrowing_decisions: Sequence[Mapping[str, Any]],
    mission_expiry: datetime,
    subject: Party,
    approver: Party,
    client_id: str,
    client_name: str,
    catalog: Catalog,
    proposal_hash: str,
    authority_hash: str,
    rendered_at: datetime,
    locale: str = "en",
) -> dict[str, Any]:
    """The disclosure object for one rendering of the consent page. Any change in what it is
    built from gives a different object, hence a different ``consent_rendering_hash``."""
    registry = catalog.constraints
    value = intent.value
    bounds: list[dict[str, Any]] = []
    if intent.max_derivations is not None:
        bounds.append({"key": "max_derivations", "value": intent.max_derivations,
                       "text": describe_constraint("max_derivations", intent.max_derivations,
                                                   registry)})
    if intent.acr is not None:
        bounds.append({"key": "acr", "value": intent.acr,
                       "text": f"the approver must sign in at level {intent.acr}"})
    bounds.extend(_constraints(intent.mission_constraints(), registry))
    purpose = catalog.purposes.get(intent.purpose) if intent.purpose else None
    return {
        "disclosure_id": disclosure_id,
        "template": {"id": TEMPLATE_ID, "version": TEMPLATE_VERSION},
        "locale": locale,
        "goal": intent.goal,
        "stated_constraints": list(value.get("constraints", [])),
        "success_criteria": list(value.get("success_criteria", [])),
        "purpose": {"uri": purpose.uri, "title": purpose.title} if purpose else None,
        "subject": subject.as_dict(),
        "approver": approver.as_dict(),
        "on_behalf_of_another": subject.principal != approver.principal,
        "requesting_client": {"client_id": client_id, "client_name": client_name},
        "authority": _authority_summary(authority_set, catalog, registry, intent.purpose),
        "narrowing_decisions": [dict(d) for d in narrowing_decisions],
        "mission_expiry": {
            "requested": value["mission_expiry"],
            "granted": format_instant(mission_expiry),
            "shortened": format_instant(mission_expiry) != format_instant(intent.mission_expiry),
        },
        "bounds": bounds,
        "source_hashes": {"proposal_hash": proposal_hash, "authority_hash": authority_hash},
        "rendered_at": format_instant(rendered_at),
    }
