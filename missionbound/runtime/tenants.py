"""Resource-policy tenants: Mission-free AuthZEN decision points whose rules are Cedar
policies loaded from a folder (DESIGN.md "Interfaces", docs/authzen.md).

A tenant folder holds ``*.cedar`` policies (read in file name order), ``entities.json``
(Cedar entity JSON: the subjects, resources, groups and actions the policies speak of) and
optionally ``schema.cedarschema``, against which the policies and entities are validated at
start. Everything is parsed once, when the server starts; a tenant that does not load stops
the start with a :class:`TenantError` naming the folder and the file.

An AuthZEN request maps to Cedar as:

* principal ``<subject.type>::"<subject.id>"``, action ``Action::"<action.name>"``, resource
  ``<resource.type>::"<resource.id>"``, ``context`` as the Cedar context;
* ``subject.properties`` / ``resource.properties`` become attributes of a request-time
  entity that replaces the stored one for this request only: the stored attributes with the
  request's properties over them, the stored parents kept (decision M44).

A tenant is also a ``ResourcePolicy`` of the Mission PDP (``permits``): a Mission permit for a
resource guarded by a tenant needs the tenant's permit too (``pdp_resource_policies``).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import cedarpy

from missionbound.runtime.authzen import (
    ACTION,
    SUBJECT,
    Action,
    Entity,
    Evaluation,
    Search,
    decision,
    search_response,
)
from missionbound.runtime.errors import AuthZenError, MalformedRequest

if TYPE_CHECKING:
    from missionbound.runtime.request import DecisionRequest

ENTITIES_FILE: Final = "entities.json"
SCHEMA_FILE: Final = "schema.cedarschema"
POLICY_SUFFIX: Final = ".cedar"
ACTION_TYPE: Final = "Action"
# A tenant name is one URL path segment (/pdp/<name>/access/v1/...).
TENANT_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# Entity sets with request-time replacements, kept per set of replaced ids (bounded).
MAX_CACHED_BASES: Final = 256

EntityKey = tuple[str, str]


# resource.properties members that belong to the Mission envelope (runtime-digest 3.2).
MISSION_ENVELOPE_PROPERTIES = frozenset({"audience", "data_classification"})

class TenantError(Exception):
    """A tenant folder that cannot be served; the message names the tenant and the file."""


@dataclass(frozen=True, slots=True)
class _Stored:
    """One entity of ``entities.json`` in Cedar entity JSON form."""

    attrs: Mapping[str, Any]
    parents: list[Any]
    tags: Mapping[str, Any] | None


class Tenant:
    """One loaded tenant. Immutable after :meth:`load`; safe to share between threads."""

    def __init__(self, name: str, folder: Path, policies: Any, entities: Any, schema: Any,
                 stored: dict[EntityKey, _Stored], ids_by_type: dict[str, list[str]]) -> None:
        self.name = name
        self.folder = folder
        self._policies = policies
        self._entities = entities
        self._schema = schema
        self._stored = stored
        self._ids_by_type = ids_by_type
        self._bases: OrderedDict[frozenset[EntityKey], Any] = OrderedDict()
        self._bases_lock = threading.Lock()

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def load(cls, name: str, folder: Path | str) -> Tenant:
        """Parse and validate a tenant folder, or raise :class:`TenantError`."""
        if not TENANT_NAME.fullmatch(name):
            raise TenantError(f"PDP tenant name {name!r}: use 1-63 lowercase letters, digits, "
                              "'-' or '_' (it is a URL path segment)")
        path = Path(folder).expanduser()
        where = f"PDP tenant {name!r} ({path})"
        if not path.is_dir():
            raise TenantError(f"{where}: no such folder")
        schema = _load_schema(path / SCHEMA_FILE, where)
        policy_text = _load_policies(path, where, schema)
        try:
            policies = cedarpy.PolicySet.from_str(policy_text)
        except ValueError as error:  # each file parsed alone already; the union may clash
            raise TenantError(f"{where}: the policies do not parse together: {error}") from None
        entities_path = path / ENTITIES_FILE
        text = _read(entities_path, where)
        stored, ids_by_type = _index_entities(text, f"{where}: {ENTITIES_FILE}")
        try:
            entities = cedarpy.Entities.from_json_str(text, schema)
        except ValueError as error:
            raise TenantError(f"{where}: {ENTITIES_FILE} is not valid Cedar entity JSON"
                              f"{' for the schema' if schema is not None else ''}: {error}"
                              ) from None
        return cls(name, path, policies, entities, schema, stored, ids_by_type)

    # -- evaluation ----------------------------------------------------------------------

    def is_permitted(self, subject: Entity, action: Action, resource: Entity,
                     context: Mapping[str, Any]) -> bool:
        """The Cedar decision for one request. Anything Cedar cannot evaluate (an unknown
        entity a policy reads, a context the schema refuses) is a deny: fail closed."""
        entities = self._entities_for((subject, resource))
        request = _cedar_request(subject, action.name, resource, context)
        result = cedarpy.is_authorized(request, self._policies, entities, self._schema)
        return bool(result.allowed)

    def evaluate(self, evaluation: Evaluation) -> dict[str, Any]:
        """An AuthZEN decision object for ``evaluation`` (AuthZEN 1.0 section 6.2)."""
        return decision(self.is_permitted(evaluation.subject, evaluation.action,
                                          evaluation.resource, evaluation.context))

    def permits(self, request: DecisionRequest) -> bool:
        """``ResourcePolicy`` (runtime/decision.py): whether this tenant also permits the
        Mission PDP's request. Any failure to evaluate is a refusal (fail closed)."""
        subject = Entity(request.subject_type, request.subject_id, {})
        # The Mission envelope's own members (the PEP's audience, the data labels the PDP
        # checks) describe the request, not the tenant's object: a tenant schema does not
        # declare them and would refuse the entity for carrying them.
        attributes = {name: value for name, value in (request.resource_properties or {}).items()
                      if name not in MISSION_ENVELOPE_PROPERTIES}
        resource = Entity(request.resource_type, request.resource_id, attributes)
        try:
            return self.is_permitted(subject, Action(request.action_name, {}), resource, {})
        except AuthZenError:
            return False

    def search(self, search: Search) -> dict[str, Any]:
        """The tenant's entities of the searched type that evaluate to permit, in
        ``entities.json`` order, paginated (AuthZEN 1.0 section 8)."""
        assert search.subject is not None and search.resource is not None
        if search.kind == ACTION:
            candidates = self._ids_by_type.get(ACTION_TYPE, [])
            requests = [_cedar_request(search.subject, name, search.resource, search.context)
                        for name in candidates]
            allowed = self._batch(requests, (search.subject, search.resource))
            matches = [{"name": name} for name, ok in zip(candidates, allowed, strict=True) if ok]
            return search_response(search, matches)
        assert search.action is not None
        wanted = search.subject if search.kind == SUBJECT else search.resource
        candidates = self._ids_by_type.get(wanted.type, [])
        found = [Entity(wanted.type, ident, wanted.properties) for ident in candidates]
        if wanted.properties:
            # Each candidate carries the request's properties: one entity set per candidate.
            allowed = [self.is_permitted(*self._roles(search, entity), search.context)
                       for entity in found]
        else:
            fixed = search.resource if search.kind == SUBJECT else search.subject
            requests = []
            for entity in found:
                subject, action, resource = self._roles(search, entity)
                requests.append(_cedar_request(subject, action.name, resource, search.context))
            allowed = self._batch(requests, (fixed,))
        matches = [{"type": entity.type, "id": entity.id}
                   for entity, ok in zip(found, allowed, strict=True) if ok]
        return search_response(search, matches)

    # -- internals -----------------------------------------------------------------------

    @staticmethod
    def _roles(search: Search, found: Entity) -> tuple[Entity, Action, Entity]:
        assert search.action is not None and search.subject is not None
        assert search.resource is not None
        if search.kind == SUBJECT:
            return found, search.action, search.resource
        return search.subject, search.action, found

    def _batch(self, requests: list[dict[str, Any]], with_properties: Iterable[Entity]
               ) -> list[bool]:
        if not requests:
            return []
        entities = self._entities_for(with_properties)
        results = cedarpy.is_authorized_batch(requests, self._policies, entities, self._schema)
        return [bool(result.allowed) for result in results]

    def _entities_for(self, members: Iterable[Entity]) -> Any:
        """The stored entities, with a request-time entity for every member that carries
        properties (decision M44). 400 when the properties are no valid Cedar attributes."""
        replaced: dict[EntityKey, dict[str, Any]] = {}
        for member in members:
            if not member.properties:
                continue
            key = (member.type, member.id)
            entry = replaced.get(key)
            if entry is None:
                stored = self._stored.get(key)
                entry = {"uid": {"type": member.type, "id": member.id},
                         "attrs": dict(stored.attrs) if stored else {},
                         "parents": list(stored.parents) if stored else []}
                if stored is not None and stored.tags is not None:
                    entry["tags"] = dict(stored.tags)
                replaced[key] = entry
            entry["attrs"].update(member.properties)
        if not replaced:
            return self._entities
        base = self._base_without(frozenset(key for key in replaced if key in self._stored))
        try:
            return base.with_added_json_str(json.dumps(list(replaced.values())), self._schema)
        except ValueError as error:
            raise MalformedRequest(
                f"properties are not valid attributes for tenant {self.name!r}: "
                f"{str(error)[:300]}") from None

    def _base_without(self, keys: frozenset[EntityKey]) -> Any:
        """The stored entities minus ``keys`` (Cedar refuses a second entity with the same
        id), parsed once per set of keys and kept in a bounded cache."""
        if not keys:
            return self._entities
        with self._bases_lock:
            cached = self._bases.get(keys)
            if cached is not None:
                self._bases.move_to_end(keys)
                return cached
        kept = [
            {"uid": {"type": kind, "id": ident}, "attrs": dict(entity.attrs),
             "parents": entity.parents, **({"tags": entity.tags} if entity.tags else {})}
            for (kind, ident), entity in self._stored.items() if (kind, ident) not in keys
        ]
        built = cedarpy.Entities.from_json_str(json.dumps(kept), self._schema)
        with self._bases_lock:
            self._bases[keys] = built
            while len(self._bases) > MAX_CACHED_BASES:
                self._bases.popitem(last=False)
        return built


def _cedar_request(subject: Entity, action: str, resource: Entity,
                   context: Mapping[str, Any]) -> dict[str, Any]:
    # The structured uid form: ids may hold any character (quotes, newlines) without escaping.
    return {
        "principal": {"type": subject.type, "id": subject.id},
        "action": {"type": ACTION_TYPE, "id": action},
        "resource": {"type": resource.type, "id": resource.id},
        "context": dict(context),
    }


def load_tenants(folders: Mapping[str, Path | str]) -> dict[str, Tenant]:
    """Every configured tenant (``Settings.pdp_tenants``), or the first :class:`TenantError`."""
    return {name: Tenant.load(name, folder) for name, folder in folders.items()}


# -- loading helpers ---------------------------------------------------------------------------


def _read(path: Path, where: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TenantError(f"{where}: {path.name} is missing") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TenantError(f"{where}: {path.name} cannot be read: {error}") from None


def _load_schema(path: Path, where: str) -> Any:
    if not path.exists():
        return None
    try:
        return cedarpy.Schema.from_str(_read(path, where))
    except ValueError as error:
        raise TenantError(f"{where}: {SCHEMA_FILE} is not a valid Cedar schema: {error}"
                          ) from None


def _load_policies(folder: Path, where: str, schema: Any) -> str:
    files = sorted(folder.glob(f"*{POLICY_SUFFIX}"))
    if not files:
        raise TenantError(f"{where}: no *{POLICY_SUFFIX} policy file (a tenant without "
                          "policies would deny everything)")
    texts = []
    for path in files:
        text = _read(path, where)
        try:
            cedarpy.PolicySet.from_str(text)
        except ValueError as error:
            raise TenantError(f"{where}: {path.name} is not valid Cedar: {error}") from None
        if schema is not None:
            result = cedarpy.validate_policies(text, schema)
            if not result.validation_passed:
                problems = "; ".join(str(problem.error) for problem in result.errors)
                raise TenantError(f"{where}: {path.name} does not match {SCHEMA_FILE}: "
                                  f"{problems}")
        texts.append(text)
    return "\n".join(texts)


def _index_entities(text: str, where: str) -> tuple[dict[EntityKey, _Stored],
                                                     dict[str, list[str]]]:
    """The entities by uid and the ids of each type in file order (what searches list)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise TenantError(f"{where} is not JSON: {error.msg} at line {error.lineno}") from None
    if not isinstance(document, list):
        raise TenantError(f"{where} must be a JSON array of Cedar entities")
    stored: dict[EntityKey, _Stored] = {}
    ids_by_type: dict[str, list[str]] = {}
    for index, entity in enumerate(document):
        uid = entity.get("uid") if isinstance(entity, dict) else None
        kind = uid.get("type") if isinstance(uid, dict) else None
        ident = uid.get("id") if isinstance(uid, dict) else None
        if not isinstance(kind, str) or not isinstance(ident, str):
            raise TenantError(f"{where}: entity {index} needs \"uid\": "
                              "{\"type\": ..., \"id\": ...}")
        if (kind, ident) in stored:
            raise TenantError(f"{where}: entity {kind}::{json.dumps(ident)} appears twice")
        attrs = entity.get("attrs", {})
        parents = entity.get("parents", [])
        tags = entity.get("tags")
        if not isinstance(attrs, dict) or not isinstance(parents, list) or not isinstance(
                tags, dict | None):
            raise TenantError(f"{where}: entity {kind}::{json.dumps(ident)} needs attrs "
                              "(object), parents (array) and optional tags (object)")
        stored[(kind, ident)] = _Stored(attrs, parents, tags)
        ids_by_type.setdefault(kind, []).append(ident)
    return stored, ids_by_type
