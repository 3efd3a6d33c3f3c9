"""The deployment resource catalog: what exists, what each action means, which constraint
keys each action accepts and which request parameter each key binds to (PROFILE.md sections
3, 6 and 12).

The catalog is the ceiling of every derivation: a client, a scope or a purpose can only take
things away from it. It is plain data, loaded from configuration by the caller.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from missionbound.mission.constraints import ConstraintRegistry

ACTION_NAME = re.compile(r"[A-Za-z0-9_.:-]+")


class CatalogError(ValueError):
    """The deployment catalog is inconsistent: a configuration error, found at load time."""


class ActionClass(enum.StrEnum):
    """PROFILE.md section 12, in increasing order of consequence."""

    NON_CONSEQUENTIAL = "non_consequential"
    CONSEQUENTIAL_READ = "consequential_read"
    CONSEQUENTIAL_WRITE = "consequential_write"
    IRREVERSIBLE = "irreversible"
    EXTERNAL_COMMITMENT = "external_commitment"
    PRIVILEGED_ADMIN = "privileged_admin"

    @property
    def rank(self) -> int:
        return _CLASS_ORDER.index(self)

    @property
    def high_consequence(self) -> bool:
        return self.rank >= ActionClass.IRREVERSIBLE.rank


_CLASS_ORDER = list(ActionClass)
_CLASS_VALUES = frozenset(c.value for c in ActionClass)


def raise_class(base: ActionClass, proposed: ActionClass) -> ActionClass:
    """Purpose and policy may only raise a class, never lower it (section 12 floor rule)."""
    return proposed if proposed.rank > base.rank else base


@dataclass(frozen=True)
class Action:
    name: str
    description: str
    action_class: ActionClass
    # constraint key -> request parameter it binds to ("" when the key is not read from a
    # parameter, e.g. max_calls is metered and geo comes from the request context).
    constraint_bindings: Mapping[str, str] = field(default_factory=dict)
    # deployment ceiling per constraint key: every derived entry carries at most this.
    ceiling: Mapping[str, Any] = field(default_factory=dict)
    delegable: bool = False

    def accepts(self, key: str) -> bool:
        return key in self.constraint_bindings


@dataclass(frozen=True)
class DelegationCeiling:
    max_depth: int
    allowed_client_ids: frozenset[str]


@dataclass(frozen=True)
class Resource:
    uri: str
    title: str
    actions: Mapping[str, Action]
    default_actions: tuple[str, ...]
    delegation: DelegationCeiling | None = None
    # data_classification labels this resource carries (read by the PDP/RS).
    labels: tuple[str, ...] = ()
    # The resource's minimum class per action name or ``family.*`` (PROFILE.md section 12:
    # policy may only raise a class; RFC 9728 ``mission_action_class_floors``).
    class_floors: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Purpose:
    """A registered purpose: a ceiling on resources/actions and class raises, never a widening."""

    uri: str
    title: str
    ceiling: Mapping[str, frozenset[str]]  # resource -> actions the purpose allows
    class_raises: Mapping[str, ActionClass] = field(default_factory=dict)


@dataclass(frozen=True)
class Catalog:
    version: str
    resources: Mapping[str, Resource]
    purposes: Mapping[str, Purpose] = field(default_factory=dict)
    # constraint keys declared as allow-lists (array of strings, subset comparison)
    allow_list_keys: frozenset[str] = frozenset()
    # acr values from weakest to strongest, for the `aal` "stricter" comparison
    acr_order: tuple[str, ...] = ()

    def resource(self, uri: str) -> Resource | None:
        return self.resources.get(uri)

    @cached_property
    def constraints(self) -> ConstraintRegistry:
        """The constraint keys this deployment understands (built once per catalog)."""
        from missionbound.mission.constraints import ConstraintRegistry

        return ConstraintRegistry.for_catalog(self)

    def action_class(self, resource: str, action: str, purpose: str | None = None) -> ActionClass:
        """The class of ``action`` at ``resource``, raised (never lowered) by ``purpose``."""
        res = self.resources.get(resource)
        if res is None or action not in res.actions:
            # Unknown actions are treated as the highest class: fail closed.
            return ActionClass.PRIVILEGED_ADMIN
        base = res.actions[action].action_class
        if purpose and purpose in self.purposes:
            raised = self.purposes[purpose].class_raises.get(action)
            if raised is not None:
                return raise_class(base, raised)
        return base


# --------------------------------------------------------------------------- loading


def _need(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise CatalogError(f"catalog: {where}.{key} must be a {kind.__name__}")
    return value


def _load_action(raw: Mapping[str, Any], where: str) -> Action:
    name = _need(raw, "name", str, where)
    if not ACTION_NAME.fullmatch(name):
        raise CatalogError(f"catalog: action name {name!r} must match [A-Za-z0-9_.:-]+")
    try:
        action_class = ActionClass(raw.get("class", ""))
    except ValueError:
        raise CatalogError(
            f"catalog: {where} class must be one of {[c.value for c in ActionClass]}"
        ) from None
    bindings = raw.get("constraints", {})
    if not isinstance(bindings, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in bindings.items()
    ):
        raise CatalogError(f"catalog: {where}.constraints must map keys to parameter names")
    ceiling = raw.get("ceiling", {})
    if not isinstance(ceiling, Mapping):
        raise CatalogError(f"catalog: {where}.ceiling must be a table")
    for key in ceiling:
        if key not in bindings:
            raise CatalogError(f"catalog: {where} has a ceiling for {key!r} it does not accept")
    return Action(
        name=name,
        description=str(raw.get("description", name)),
        action_class=action_class,
        constraint_bindings=dict(bindings),
        ceiling=dict(ceiling),
        delegable=bool(raw.get("delegable", False)),
    )


def _load_delegation(raw: Any, where: str) -> DelegationCeiling | None:
    if raw is None:
        return None
    depth = _need(raw, "max_depth", int, where + ".delegation")
    if depth < 1:
        raise CatalogError(f"catalog: {where}.delegation.max_depth must be >= 1")
    delegates = raw.get("allowed_delegates", [])
    ids = []
    for matcher in delegates:
        if not isinstance(matcher, Mapping) or set(matcher) != {"client_id"}:
            raise CatalogError(f"catalog: {where} delegate matchers are {{client_id = ...}}")
        ids.append(str(matcher["client_id"]))
    return DelegationCeiling(max_depth=depth, allowed_client_ids=frozenset(ids))


def load_catalog(raw: Mapping[str, Any]) -> Catalog:
    """Build a :class:`Catalog` from plain data (a TOML table), checking it as it goes."""
    resources: dict[str, Resource] = {}
    for i, res in enumerate(_need(raw, "resources", list, "catalog")):
        where = f"resources[{i}]"
        uri = _need(res, "uri", str, where)
        actions: dict[str, Action] = {}
        for j, act in enumerate(_need(res, "actions", list, where)):
            action = _load_action(act, f"{where}.actions[{j}]")
            if action.name in actions:
                raise CatalogError(f"catalog: {where} declares {action.name!r} twice")
            actions[action.name] = action
        defaults = tuple(res.get("default_actions", list(actions)))
        for name in defaults:
            if name not in actions:
                raise CatalogError(f"catalog: {where} default action {name!r} is not declared")
        labels = res.get("labels", [])
        floors = res.get("class_floors", {})
        if not isinstance(floors, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in floors.items()):
            raise CatalogError(f"catalog: {where}.class_floors must map actions to classes")
        for action_name, cls in floors.items():
            if cls not in _CLASS_VALUES:
                raise CatalogError(f"catalog: {where}.class_floors[{action_name!r}] is not one "
                                   f"of {sorted(_CLASS_VALUES)}")
        resources[uri] = Resource(
            uri=uri,
            title=str(res.get("title", uri)),
            actions=actions,
            default_actions=defaults,
            delegation=_load_delegation(res.get("delegation"), where),
            labels=tuple(str(label) for label in labels),
            class_floors=dict(floors),
        )
    purposes: dict[str, Purpose] = {}
    for i, pur in enumerate(raw.get("purposes", [])):
        where = f"purposes[{i}]"
        ceiling_raw = _need(pur, "resources", Mapping, where)
        ceiling = {str(r): frozenset(str(a) for a in acts) for r, acts in ceiling_raw.items()}
        raises: dict[str, ActionClass] = {}
        for action_name, cls in pur.get("class_raises", {}).items():
            try:
                raises[str(action_name)] = ActionClass(cls)
            except ValueError:
                raise CatalogError(f"catalog: {where} raises to unknown class {cls!r}") from None
        uri = _need(pur, "uri", str, where)
        purposes[uri] = Purpose(uri=uri, title=str(pur.get("title", uri)), ceiling=ceiling,
                                class_raises=raises)
    allow_lists = raw.get("allow_list_keys", [])
    acr_order = raw.get("acr_order", [])
    catalog = Catalog(
        version=_need(raw, "version", str, "catalog"),
        resources=resources,
        purposes=purposes,
        allow_list_keys=frozenset(str(k) for k in allow_lists),
        acr_order=tuple(str(a) for a in acr_order),
    )
    _check_constraint_keys(catalog)
    return catalog


def _check_constraint_keys(catalog: Catalog) -> None:
    from missionbound.mission.errors import MissionError

    registry = catalog.constraints
    for res in catalog.resources.values():
        for action in res.actions.values():
            for key in action.constraint_bindings:
                if not registry.knows(key) or key in registry.context_only:
                    raise CatalogError(
                        f"catalog: action {action.name!r} accepts unknown constraint key {key!r}"
                    )
            for key, value in action.ceiling.items():
                try:
                    registry.validate(key, value, where=f"catalog ceiling of {action.name!r}")
                except MissionError as exc:
                    raise CatalogError(exc.description) from None


def default_action_groups(resource: Resource, names: Sequence[str]) -> list[list[str]]:
    """Split ``names`` into groups that can share one entry: same accepted constraint keys,
    same delegability (an entry's constraints and delegation apply to all its actions)."""
    groups: dict[tuple[frozenset[str], bool], list[str]] = {}
    for name in names:
        action = resource.actions[name]
        key = (frozenset(action.constraint_bindings), action.delegable)
        groups.setdefault(key, []).append(name)
    return [sorted(group) for group in groups.values()]
