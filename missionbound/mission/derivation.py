"""Authority derivation (PROFILE.md section 3): intent + requested ``authorization_details``
+ ``scope``/``resource`` + client ceiling + catalog -> Authority Set + ``narrowing_decisions``.

The catalog is the ceiling; the client's proposal, its registration, its ``scope``/``resource``
parameters, the intent's purpose and Mission-wide constraints can only take away or tighten.
Every narrowing is recorded so the consent page can show it. Same inputs, same output, in the
same order: the result is hashed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from missionbound.mission.authority import (
    ENTRY_TYPE,
    Entry,
    is_subset,
    parse_authorization_details,
    sort_authority_set,
)
from missionbound.mission.catalog import Catalog, Resource, default_action_groups
from missionbound.mission.constraints import ConstraintRegistry
from missionbound.mission.errors import InvalidAuthorizationDetails, InvalidTarget
from missionbound.mission.intent import MissionIntent
from missionbound.mission.record import format_instant

ALL_ACTIONS = None


@dataclass(frozen=True)
class ClientCeiling:
    """What a client may ever hold: resource -> allowed action names (``None`` = every action
    the catalog offers there). A resource absent from the map is not available to the client."""

    client_id: str
    resources: Mapping[str, frozenset[str] | None] = field(default_factory=dict)

    def allowed_actions(self, resource: str) -> frozenset[str] | None:
        return self.resources.get(resource, frozenset())

    def may_use(self, resource: str) -> bool:
        return resource in self.resources


@dataclass(frozen=True)
class Derivation:
    authority_set: list[Entry]
    narrowing_decisions: list[dict[str, Any]]
    mission_expiry: datetime
    authorization_details_requested: list[Any]
    policy_version: str


class _Recorder:
    def __init__(self) -> None:
        self.decisions: list[dict[str, Any]] = []

    def note(self, field_name: str, requested: Any, granted: Any, rule: str) -> None:
        self.decisions.append(
            {"field": field_name, "requested": requested, "granted": granted, "rule": rule}
        )


def _scope_actions(scope: str | None, intent: MissionIntent, catalog: Catalog) -> set[str] | None:
    """The action names a ``scope`` selects. Scope values that name no action of the
    intent's resources (``openid``, say) are not Mission authority and select nothing; a scope
    with no action name at all leaves the actions as they are."""
    if not scope:
        return None
    known = {
        name
        for uri in intent.resources
        if (res := catalog.resource(uri)) is not None
        for name in res.actions
    }
    selected = set(scope.split()) & known
    return selected or None


def _check_requested(
    entries: Sequence[Entry], intent: MissionIntent, catalog: Catalog
) -> None:
    for i, entry in enumerate(entries):
        where = f"authorization_details[{i}]"
        resource = catalog.resource(entry["resource"])
        if entry["resource"] not in intent.resources:
            raise InvalidAuthorizationDetails(
                f"{where}: resource {entry['resource']!r} is not in mission_intent.resources"
            )
        if resource is None:  # cannot happen: every intent resource was checked first
            raise InvalidAuthorizationDetails(f"{where}: resource is not in the catalog")
        for action in entry["actions"]:
            if action not in resource.actions:
                raise InvalidAuthorizationDetails(
                    f"{where}: unknown action {action!r} for resource {entry['resource']!r}"
                )
        for key in entry.get("constraints", {}):
            refusing = [a for a in entry["actions"] if not resource.actions[a].accepts(key)]
            if refusing:
                raise InvalidAuthorizationDetails(
                    f"{where}: constraint {key!r} is not accepted by action(s) {refusing}; "
                    "put those actions in an entry of their own"
                )


def _narrowest(registry: ConstraintRegistry, key: str, a: Any, b: Any, what: str) -> Any:
    value = registry.narrower(key, a, b)
    if value is None:
        # Two bounds that cannot be compared (500 EUR against 10000 USD) cannot be merged into
        # one without dropping one of them: refuse rather than guess.
        raise InvalidAuthorizationDetails(
            f"{what}: constraint {key!r} values {a!r} and {b!r} cannot be compared")
    if value == []:
        # Two allow-lists with nothing in common: the entry could never be used.
        raise InvalidAuthorizationDetails(
            f"{what}: constraint {key!r} values {a!r} and {b!r} have nothing in common")
    return value


def _ceilings(resource: Resource, actions: Sequence[str], registry: ConstraintRegistry
              ) -> dict[str, Any]:
    """Per constraint key, the narrowest catalog ceiling among the entry's actions."""
    out: dict[str, Any] = {}
    for name in actions:
        for key, value in resource.actions[name].ceiling.items():
            out[key] = (_narrowest(registry, key, value, out[key], f"catalog {resource.uri}")
                        if key in out else value)
    return out


def _split_by_action_group(entry: Entry, resource: Resource, where: str,
                              recorder: _Recorder) -> list[tuple[str, Entry]]:
    """A requested entry whose actions accept different constraint keys (or differ in
    delegability) becomes one entry per group, so that a ceiling or a Mission-wide bound of
    one action is never put on an action that cannot enforce it, nor skipped for the entry."""
    groups = default_action_groups(resource, entry["actions"])
    if len(groups) == 1:
        return [(where, entry)]
    recorder.note(where + ".actions", entry["actions"], groups, "split_by_action_group")
    return [(f"{where}.group[{k}]", {**entry, "actions": group})
            for k, group in enumerate(groups)]


def _default_entries(resource: Resource) -> list[Entry]:
    entries: list[Entry] = []
    for group in default_action_groups(resource, resource.default_actions):
        entry: Entry = {"type": ENTRY_TYPE, "resource": resource.uri, "actions": group}
        if resource.delegation and all(resource.actions[a].delegable for a in group):
            entry["delegation"] = _ceiling_delegation(resource)
        entries.append(entry)
    return entries


def _ceiling_delegation(resource: Resource) -> dict[str, Any]:
    assert resource.delegation is not None
    return {
        "max_depth": resource.delegation.max_depth,
        "allowed_delegates": [
            {"client_id": cid} for cid in sorted(resource.delegation.allowed_client_ids)
        ],
    }


class _Deriver:
    def __init__(self, intent: MissionIntent, catalog: Catalog, client: ClientCeiling,
                 scope_actions: set[str] | None, recorder: _Recorder) -> None:
        self.intent = intent
        self.catalog = catalog
        self.client = client
        self.scope_actions = scope_actions
        self.recorder = recorder
        self.registry = catalog.constraints
        purpose = catalog.purposes.get(intent.purpose) if intent.purpose else None
        self.purpose = purpose

    def _drop_actions(self, actions: list[str], keep: set[str] | frozenset[str] | None,
                      where: str, rule: str) -> list[str]:
        if keep is None:
            return actions
        kept = [a for a in actions if a in keep]
        if kept != actions:
            self.recorder.note(f"{where}.actions", actions, kept, rule)
        return kept

    def narrow(self, proposal: Entry, resource: Resource, where: str) -> Entry | None:
        entry = copy.deepcopy(proposal)
        actions: list[str] = list(entry["actions"])
        actions = self._drop_actions(actions, self.scope_actions, where, "scope")
        actions = self._drop_actions(actions, self.client.allowed_actions(resource.uri), where,
                                     "client_registration")
        if self.purpose is not None:
            actions = self._drop_actions(
                actions, self.purpose.ceiling.get(resource.uri, frozenset()), where, "purpose")
        if not actions:
            return None  # the drop that emptied it is already recorded
        entry["actions"] = sorted(actions)
        self._apply_bounds(entry, resource, where)
        self._apply_delegation_policy(entry, resource, where)
        return entry

    def _bounds(self, entry: Entry, resource: Resource) -> dict[str, tuple[Any, str]]:
        """Per constraint key, the narrowest bound that applies to ``entry`` and its source:
        the catalog ceiling of its actions, or a Mission-wide bound from ``context``."""
        bounds = {key: (value, "catalog_ceiling")
                  for key, value in _ceilings(resource, entry["actions"], self.registry).items()}
        # Mission-wide bounds that every action of the entry can enforce are copied into the
        # entry, so a stateless Resource Server sees them in the token. Metered keys stay
        # Mission-wide only: copied per entry they would become several budgets instead of one.
        for key, bound in self.intent.mission_constraints().items():
            if key in self.registry.metered:
                continue
            if not all(resource.actions[a].accepts(key) for a in entry["actions"]):
                continue
            if key not in bounds:
                bounds[key] = (bound, "mission_context")
                continue
            ceiling = bounds[key][0]
            narrowest = _narrowest(self.registry, key, bound, ceiling, f"context.{key}")
            if narrowest != ceiling:
                bounds[key] = (narrowest, "mission_context")
        return bounds

    def _apply_bounds(self, entry: Entry, resource: Resource, where: str) -> None:
        for key, (bound, rule) in sorted(self._bounds(entry, resource).items()):
            constraints = entry.setdefault("constraints", {})
            current = constraints.get(key)
            if current is not None and self.registry.no_broader(key, current, bound):
                continue
            granted = bound if current is None else _narrowest(
                self.registry, key, current, bound, f"{where}.constraints")
            constraints[key] = self.registry.normalize(key, granted)
            self.recorder.note(f"{where}.constraints.{key}", current, constraints[key], rule)

    def _apply_delegation_policy(self, entry: Entry, resource: Resource, where: str) -> None:
        requested = entry.get("delegation")
        if requested is None:
            return
        ceiling = resource.delegation
        delegable = all(resource.actions[a].delegable for a in entry["actions"])
        if ceiling is None or not delegable:
            del entry["delegation"]
            self.recorder.note(f"{where}.delegation", requested, None, "delegation_policy")
            return
        depth = min(requested["max_depth"], ceiling.max_depth)
        asked = {m["client_id"] for m in requested.get("allowed_delegates", [])}
        allowed = (asked & ceiling.allowed_client_ids) if "allowed_delegates" in requested \
            else set(ceiling.allowed_client_ids)
        granted = {"max_depth": depth,
                   "allowed_delegates": [{"client_id": c} for c in sorted(allowed)]}
        if not allowed:
            del entry["delegation"]
            self.recorder.note(f"{where}.delegation", requested, None, "delegation_policy")
            return
        entry["delegation"] = granted
        if granted != requested:
            self.recorder.note(f"{where}.delegation", requested, granted, "delegation_policy")

    def ceiling_entry(self, entry: Entry) -> Entry:
        """The widest entry the catalog allows for ``entry``'s actions (invariant check)."""
        resource = self.catalog.resources[entry["resource"]]
        ceiling: Entry = {"type": ENTRY_TYPE, "resource": resource.uri,
                          "actions": sorted(resource.actions)}
        bounds = _ceilings(resource, entry["actions"], self.registry)
        if bounds:
            ceiling["constraints"] = bounds
        if resource.delegation:
            ceiling["delegation"] = _ceiling_delegation(resource)
        return ceiling


def _without_subsumed(entries: list[Entry], registry: ConstraintRegistry,
                      recorder: _Recorder) -> list[Entry]:
    """Drop an entry that another entry already covers (say journal-entries.write up to 50 USD
    beside the same action up to 1000 USD): it grants nothing more, and showing its tighter
    limit on the consent page would suggest a bound that does not hold."""
    kept = []
    for i, entry in enumerate(entries):
        # Of two entries covering each other ("500" and "500.00" USD), the first one stays.
        if any(j != i and is_subset(entry, other, registry)
               and (j < i or not is_subset(other, entry, registry))
               for j, other in enumerate(entries)):
            recorder.note("authority_set", entry, None, "subsumed")
        else:
            kept.append(entry)
    return kept


def derive_authority(
    intent: MissionIntent,
    *,
    catalog: Catalog,
    client: ClientCeiling,
    now: datetime,
    max_lifetime: timedelta,
    requested_authorization_details: Any = None,
    scope: str | None = None,
    resource_indicators: Sequence[str] = (),
) -> Derivation:
    """Derive the Authority Set a Mission would be approved with (PROFILE.md section 3).

    ``requested_authorization_details`` is the parsed JSON of the PAR parameter (or None).
    Raises :class:`InvalidAuthorizationDetails` when nothing can be derived or the request
    names what the catalog does not have, :class:`InvalidTarget` for a ``resource`` parameter
    outside the intent.
    """
    registry = catalog.constraints
    recorder = _Recorder()

    for uri in intent.resources:
        if catalog.resource(uri) is None:
            raise InvalidAuthorizationDetails(f"resource {uri!r} is not in the deployment catalog")
        if not client.may_use(uri):
            raise InvalidAuthorizationDetails(
                f"client {client.client_id!r} is not registered for resource {uri!r}")
    for uri in resource_indicators:
        if uri not in intent.resources:
            raise InvalidTarget(f"resource {uri!r} is not one of mission_intent.resources")

    requested: list[Entry] | None = None
    if requested_authorization_details is not None:
        requested = parse_authorization_details(requested_authorization_details, registry)
        _check_requested(requested, intent, catalog)

    deriver = _Deriver(intent, catalog, client, _scope_actions(scope, intent, catalog), recorder)
    derived: list[Entry] = []
    for uri in intent.resources:
        resource = catalog.resources[uri]
        if resource_indicators and uri not in resource_indicators:
            recorder.note("resources", uri, None, "resource_indicator")
            continue
        if requested is not None:
            proposals = [
                split
                for i, e in enumerate(requested) if e["resource"] == uri
                for split in _split_by_action_group(e, resource, f"authorization_details[{i}]",
                                                       recorder)
            ]
            if not proposals:
                recorder.note("resources", uri, None, "not_requested")
        else:
            proposals = [(f"catalog_default[{uri}][{j}]", e)
                         for j, e in enumerate(_default_entries(resource))]
        for where, proposal in proposals:
            entry = deriver.narrow(proposal, resource, where)
            if entry is not None and entry not in derived:
                derived.append(entry)

    if not derived:
        raise InvalidAuthorizationDetails(
            "no authority can be derived: every requested action was outside the catalog, "
            "the client registration, the purpose or the requested scope/resource")
    for entry in derived:
        # Never widen: if this ever fails it is a bug in the code above, not bad input.
        if not is_subset(entry, deriver.ceiling_entry(entry), registry):
            raise AssertionError(f"derived entry exceeds the catalog ceiling: {entry}")

    expiry = intent.mission_expiry
    cap = now + max_lifetime
    if expiry > cap:
        recorder.note("mission_expiry", format_instant(expiry), format_instant(cap),
                      "max_mission_lifetime")
        expiry = cap

    return Derivation(
        authority_set=_without_subsumed(sort_authority_set(derived), registry, recorder),
        narrowing_decisions=recorder.decisions,
        mission_expiry=expiry,
        authorization_details_requested=list(requested_authorization_details or []),
        policy_version=catalog.version,
    )
