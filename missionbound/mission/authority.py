"""``mission_resource_access`` entries (PROFILE.md section 4): parsing, ordering and the
subset rule used by every narrowing (token requests, exchange, delegation, cross-domain).

Entries stay plain JSON dicts: they are what gets hashed and put in tokens, so there is one
representation, checked on the way in by :func:`parse_entry`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from missionbound.mission.canonical import canonicalize
from missionbound.mission.catalog import ACTION_NAME
from missionbound.mission.constraints import ConstraintRegistry, constraints_no_broader
from missionbound.mission.errors import InvalidAuthorizationDetails

ENTRY_TYPE = "mission_resource_access"
ENTRY_MEMBERS = frozenset({"type", "resource", "actions", "constraints", "delegation"})
DELEGATION_MEMBERS = frozenset({"max_depth", "allowed_delegates"})

Entry = dict[str, Any]


def _bad(where: str, message: str) -> InvalidAuthorizationDetails:
    return InvalidAuthorizationDetails(f"{where}: {message}")


def parse_delegation(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) - DELEGATION_MEMBERS or "max_depth" not in value:
        raise _bad(where, 'delegation must be {"max_depth": n, "allowed_delegates": [...]}')
    depth = value["max_depth"]
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise _bad(where, "delegation.max_depth must be an integer >= 1")
    out: dict[str, Any] = {"max_depth": depth}
    if "allowed_delegates" in value:
        delegates = value["allowed_delegates"]
        if not isinstance(delegates, list):
            raise _bad(where, "delegation.allowed_delegates must be an array")
        ids: list[str] = []
        for matcher in delegates:
            # Only client_id matchers: anything else would be a matcher we cannot evaluate.
            if (
                not isinstance(matcher, dict)
                or set(matcher) != {"client_id"}
                or not isinstance(matcher["client_id"], str)
                or not matcher["client_id"]
            ):
                raise _bad(where, 'allowed_delegates entries must be {"client_id": "<id>"}')
            ids.append(matcher["client_id"])
        if len(set(ids)) != len(ids):
            raise _bad(where, "allowed_delegates repeats a client_id")
        out["allowed_delegates"] = [{"client_id": cid} for cid in sorted(ids)]
    return out


def parse_entry(raw: Any, registry: ConstraintRegistry, where: str = "entry") -> Entry:
    """Check one ``authorization_details`` entry's shape and return its normalized form
    (actions and allow-lists sorted). Catalog membership is checked by the caller."""
    if not isinstance(raw, dict):
        raise _bad(where, "must be a JSON object")
    if raw.get("type") != ENTRY_TYPE:
        raise _bad(where, f"type must be {ENTRY_TYPE!r}; other types are not supported")
    unknown = set(raw) - ENTRY_MEMBERS
    if unknown:
        raise _bad(where, f"unknown member(s) {sorted(unknown)}")
    resource = raw.get("resource")
    if not isinstance(resource, str) or not resource:
        raise _bad(where, "resource must be an absolute URI string")
    actions = raw.get("actions")
    if not isinstance(actions, list) or not actions:
        raise _bad(where, "actions must be a non-empty array of action names")
    for action in actions:
        if not isinstance(action, str) or not ACTION_NAME.fullmatch(action):
            raise _bad(where, f"action {action!r} is not a valid action name")
    if len(set(actions)) != len(actions):
        raise _bad(where, "actions repeats a name")
    entry: Entry = {"type": ENTRY_TYPE, "resource": resource, "actions": sorted(actions)}
    if "constraints" in raw:
        constraints = raw["constraints"]
        if not isinstance(constraints, dict):
            raise _bad(where, "constraints must be a JSON object")
        normalized: dict[str, Any] = {}
        for key, value in constraints.items():
            if key in registry.context_only:
                raise _bad(where, f"constraint {key!r} is only valid in mission_intent.context")
            registry.validate(key, value, where=where)
            normalized[key] = registry.normalize(key, value)
        if normalized:
            entry["constraints"] = normalized
    if "delegation" in raw:
        entry["delegation"] = parse_delegation(raw["delegation"], where)
    return entry


def sort_key(entry: Mapping[str, Any]) -> tuple[str, str, bytes]:
    """Entries are emitted sorted by resource, then first action (PROFILE.md section 4), then
    by their canonical form, so two entries sharing both never depend on input order."""
    return (entry["resource"], entry["actions"][0] if entry["actions"] else "",
            canonicalize(dict(entry)))


def sort_authority_set(entries: Iterable[Entry]) -> list[Entry]:
    return sorted(entries, key=sort_key)


def delegation_no_broader(candidate: Mapping[str, Any] | None,
                          reference: Mapping[str, Any] | None) -> bool:
    """A derived entry's delegation never widens: none where the reference has none, depth no
    deeper, delegates no wider (an absent list is read as "policy decides", which is wider
    than any explicit list)."""
    if candidate is None:
        return True
    if reference is None:
        return False
    if candidate["max_depth"] > reference["max_depth"]:
        return False
    if "allowed_delegates" not in reference:
        return True
    if "allowed_delegates" not in candidate:
        return False
    cand = {m["client_id"] for m in candidate["allowed_delegates"]}
    ref = {m["client_id"] for m in reference["allowed_delegates"]}
    return cand <= ref


def is_subset(candidate: Mapping[str, Any], reference: Mapping[str, Any],
              registry: ConstraintRegistry) -> bool:
    """PROFILE.md section 4 subset rule: same resource (byte-equal), actions within, every
    reference constraint present and no broader, delegation never broader."""
    if candidate.get("type") != ENTRY_TYPE or reference.get("type") != ENTRY_TYPE:
        return False
    if candidate["resource"] != reference["resource"]:
        return False
    if not set(candidate["actions"]) <= set(reference["actions"]):
        return False
    if not constraints_no_broader(
        registry, candidate.get("constraints", {}), reference.get("constraints", {})
    ):
        return False
    return delegation_no_broader(candidate.get("delegation"), reference.get("delegation"))


def is_subset_of_set(candidate: Mapping[str, Any], reference_set: Sequence[Mapping[str, Any]],
                     registry: ConstraintRegistry) -> bool:
    """A candidate entry must fit within one single entry of the reference set: constraints
    of different entries never combine into something neither granted."""
    return any(is_subset(candidate, ref, registry) for ref in reference_set)


def set_is_subset(candidates: Sequence[Mapping[str, Any]],
                  reference_set: Sequence[Mapping[str, Any]],
                  registry: ConstraintRegistry) -> bool:
    return all(is_subset_of_set(c, reference_set, registry) for c in candidates)


def parse_authorization_details(raw: Any, registry: ConstraintRegistry) -> list[Entry]:
    """An RFC 9396 ``authorization_details`` array of ``mission_resource_access`` entries."""
    if not isinstance(raw, list):
        raise InvalidAuthorizationDetails("authorization_details must be a JSON array")
    if not raw:
        raise InvalidAuthorizationDetails("authorization_details must not be empty")
    return [parse_entry(item, registry, f"authorization_details[{i}]")
            for i, item in enumerate(raw)]
