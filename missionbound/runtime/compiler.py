"""The policy compiler: an approved Mission -> a deterministic Cedar artifact (PROFILE.md
section 12, runtime-digest section 2.2).

At approval the Authority Set, the catalog (classes, constraint bindings) and the
resource-policy references compile to Cedar text, a Cedar schema and Cedar entities, plus a
canonical JSON **manifest** describing them. ``policy_version`` is the manifest's digest under
the section 2.2 envelope: ``sha-256:`` b64url(SHA-256(JCS({"typ": "mission-policy-view",
"iss": <mission origin>, "value": <manifest>}))). Same inputs, same compiler version ->
byte-identical manifest -> same ``policy_version``. The manifest never holds lifecycle state
(state, version, timestamps): state is an input of each decision, not of the artifact.

The Cedar shape: principal ``Mission::"<id>"``, resource ``Audience::"<uri>"`` (the
``resource.properties.audience`` the PEP asserts; runtime-digest 2.3: never AuthZEN
``resource.type``/``id``), one ``permit`` per supported Authority Set entry (Cedar names them
``policy0``, ``policy1``, ... in text order; the compiled index maps them back to entries),
actions as ``Action`` entities. Cedar decides *which entries grant this action here*; the
constraints of those entries are then checked in Python (runtime/decision.py) with exact
decimals: Cedar's ``decimal`` holds only four fractional digits, while Mission amounts may
carry up to eighteen (mission/constraints.py ``DECIMAL``).

Tool-manifest binding (runtime-digest 5.8): when approval read the tool definitions of a
granted resource (``tool_definitions``), ``policy_ir.capability_bindings`` records, per
resource and granted tool, ``{"tool_id", "source_digest"}`` (``source_digest`` null when the
tool server did not list the tool), so ``policy_version`` covers them. The member is present
only when something was recorded: a Mission without bound resources compiles byte for byte
as before.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import cedarpy

from missionbound.mission.anchors import anchor, authority_hash
from missionbound.mission.authority import ENTRY_TYPE
from missionbound.mission.canonical import digest_json
from missionbound.mission.catalog import ACTION_NAME, ActionClass, Catalog
from missionbound.mission.constraints import ConstraintRegistry
from missionbound.mission.errors import InvalidRequest
from missionbound.mission.record import MissionRecord
from missionbound.protocol.tool_manifest import (
    ToolDefinitionError,
    tool_definition_digest,
    tool_id,
)
from missionbound.runtime.classification import Classified, classify
from missionbound.runtime.digests import DigestError, entry_digest

POLICY_VIEW: Final = "mission-policy-view"
COMPILER: Final = {"profile": "https://missionbound.dev/policy-compiler/cedar", "version": "1"}
ARTIFACT_ENCODING: Final = "application/vnd.missionbound.cedar-artifact+json"
IR_VERSION: Final = "1"
METERED: Final = ConstraintRegistry.metered


class PolicyCompileError(ValueError):
    """The Mission cannot be compiled, or a stored artifact does not load (fail closed)."""


# ---------------------------------------------------------------- the artifact


@dataclass(frozen=True)
class PolicyArtifact:
    """What the store keeps with the Mission: the manifest and the Cedar sources."""

    mission_id: str
    policy_version: str
    manifest: dict[str, Any]
    policies: str
    schema: str
    entities: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "mission_id": self.mission_id,
            "policy_version": self.policy_version,
            "manifest": self.manifest,
            "policies": self.policies,
            "schema": self.schema,
            "entities": self.entities,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PolicyArtifact:
        """Read a stored artifact, re-deriving both digests: a changed byte anywhere refuses."""
        try:
            artifact = cls(
                mission_id=_typed(data, "mission_id", str),
                policy_version=_typed(data, "policy_version", str),
                manifest=_typed(data, "manifest", dict),
                policies=_typed(data, "policies", str),
                schema=_typed(data, "schema", str),
                entities=_typed(data, "entities", list),
            )
        except TypeError as exc:
            raise PolicyCompileError(f"stored policy artifact: {exc}") from None
        artifact.check_integrity()
        return artifact

    def check_integrity(self) -> None:
        manifest = self.manifest
        if manifest.get("mission_id") != self.mission_id:
            raise PolicyCompileError("policy artifact: manifest is for another Mission")
        issuer = manifest.get("issuer")
        if not isinstance(issuer, str):
            raise PolicyCompileError("policy artifact: manifest has no issuer")
        described = manifest.get("artifact")
        if not isinstance(described, dict) or described.get("digest") != _sources_digest(
                self.policies, self.schema, self.entities):
            raise PolicyCompileError("policy artifact: Cedar sources do not match the manifest")
        if policy_version_of(issuer, manifest) != self.policy_version:
            raise PolicyCompileError("policy artifact: policy_version is not the manifest's")


def _typed(data: Mapping[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    if not isinstance(value, kind):
        raise TypeError(f"{key} must be a {kind.__name__}")
    return value


def policy_version_of(issuer: str, manifest: Mapping[str, Any]) -> str:
    """Runtime-digest section 2.2 ``policy_view_id``, which this build calls policy_version."""
    return anchor(POLICY_VIEW, issuer, dict(manifest))


def _sources_digest(policies: str, schema: str, entities: list[dict[str, Any]]) -> str:
    try:
        return digest_json({"policies": policies, "schema": schema, "entities": entities})
    except InvalidRequest as exc:
        raise PolicyCompileError(f"policy artifact: {exc.description}") from None


# ---------------------------------------------------------------- compiling


def _cedar_string(value: str) -> str:
    """A Cedar string literal (Cedar escapes as Rust does: ``\\u{..}``, not JSON's ``\\uXXXX``)."""
    out = ['"']
    for char in value:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{{{ord(char):x}}}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _supported(raw: Any, index: int) -> bool:
    """True for a well-formed ``mission_resource_access`` entry; False for another type
    (evaluated as unsupported at decision time); a malformed entry of our type refuses."""
    if not isinstance(raw, dict):
        raise PolicyCompileError(f"authority_set[{index}] is not a JSON object")
    if raw.get("type") != ENTRY_TYPE:
        return False
    resource, actions = raw.get("resource"), raw.get("actions")
    if not isinstance(resource, str) or not resource:
        raise PolicyCompileError(f"authority_set[{index}].resource is not a URI string")
    if not isinstance(actions, list) or not actions or not all(
            isinstance(a, str) and ACTION_NAME.fullmatch(a) for a in actions):
        raise PolicyCompileError(f"authority_set[{index}].actions is not an array of names")
    for member in ("constraints", "delegation"):
        if member in raw and not isinstance(raw[member], dict):
            raise PolicyCompileError(f"authority_set[{index}].{member} is not a JSON object")
    return True


def _action_facts(catalog: Catalog, resource: str, action: str, purpose: str | None,
                  floors: Mapping[str, str] | None) -> dict[str, Any]:
    classified = classify(catalog, resource, action, purpose=purpose, floors=floors)
    res = catalog.resource(resource)
    declared = res.actions.get(action) if res is not None else None
    bindings = dict(sorted(declared.constraint_bindings.items())) if declared else {}
    return {"class": classified.action_class.value, "class_source": classified.class_source,
            "constraint_bindings": bindings}


def _mission_bounds(record: MissionRecord) -> dict[str, Any]:
    # Metered bounds stay Mission-wide (mission/derivation.py never copies them into
    # entries): the PDP charges them on every gated call.
    context = record.mission_intent.get("context")
    if not isinstance(context, dict):
        return {}
    return {key: context[key] for key in sorted(METERED) if key in context}


def _capability_bindings(
    entries: list[dict[str, Any]],
    tool_definitions: Mapping[str, Mapping[str, Mapping[str, Any]]],
) -> dict[str, dict[str, dict[str, str | None]]]:
    """resource -> granted tool -> ``{"tool_id", "source_digest"}`` for every supported
    entry whose resource has definitions. A granted tool the server does not list is
    recorded with ``source_digest`` None: it is bound, and refuses until re-approval."""
    bindings: dict[str, dict[str, dict[str, str | None]]] = {}
    for ir in entries:
        if not ir["supported"]:
            continue
        resource = ir["resource"]
        listed = tool_definitions.get(resource)
        if listed is None:
            continue
        for action in ir["actions"]:
            definition = listed.get(action)
            try:
                digest = None if definition is None else tool_definition_digest(definition)
            except ToolDefinitionError as exc:
                raise PolicyCompileError(f"tool {action!r} at {resource}: {exc}") from None
            bindings.setdefault(resource, {})[action] = {
                "tool_id": tool_id(resource, action), "source_digest": digest}
    return {uri: dict(sorted(tools.items())) for uri, tools in sorted(bindings.items())}


def compile_policy(
    record: MissionRecord,
    catalog: Catalog,
    *,
    resource_policies: Mapping[str, str] | None = None,
    class_floors: Mapping[str, Mapping[str, str]] | None = None,
    tool_definitions: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> PolicyArtifact:
    """Compile an approved Mission. ``resource_policies`` maps a resource URI to the
    resource-policy tenant guarding it; ``class_floors`` maps a resource URI to its
    ``mission_action_class_floors`` (default: the catalog's ``class_floors`` per resource);
    ``tool_definitions`` maps a tool server's resource URI to its tools as ``tools/list``
    showed them at approval (tool name -> definition object), binding each granted tool to
    its definition's digest. Only the resources the Authority Set names enter the manifest,
    so configuration for other resources never changes this Mission's version."""
    if record.authority_hash is None:
        raise PolicyCompileError("the Mission is not approved: it has no authority_hash")
    try:
        committed = authority_hash(record.origin, record.authority_set)
    except InvalidRequest as exc:
        raise PolicyCompileError(f"authority_set: {exc.description}") from None
    if committed != record.authority_hash:
        raise PolicyCompileError("the Authority Set does not match its authority_hash")
    purpose = record.mission_intent.get("purpose")
    purpose = purpose if isinstance(purpose, str) else None
    floors_by_resource = class_floors if class_floors is not None else {
        uri: resource.class_floors for uri, resource in catalog.resources.items()
        if resource.class_floors}
    ir_entries: list[dict[str, Any]] = []
    policy_lines: list[str] = []
    audiences: set[str] = set()
    actions: set[str] = set()
    principal = f"Mission::{_cedar_string(record.mission_id)}"
    for index, raw in enumerate(record.authority_set):
        try:
            digest = entry_digest(record.origin, raw) if isinstance(raw, dict) else ""
        except DigestError as exc:
            raise PolicyCompileError(f"authority_set[{index}]: {exc}") from None
        if not _supported(raw, index):
            ir_entries.append({"index": index, "entry_digest": digest,
                               "type": str(raw.get("type")), "supported": False})
            continue
        resource = raw["resource"]
        floors = floors_by_resource.get(resource)
        ir: dict[str, Any] = {
            "index": index, "entry_digest": digest, "type": ENTRY_TYPE, "supported": True,
            "resource": resource, "resource_match": "exact", "actions": list(raw["actions"]),
            "action_facts": {a: _action_facts(catalog, resource, a, purpose, floors)
                             for a in raw["actions"]},
        }
        for member in ("constraints", "delegation"):
            if member in raw:
                ir[member] = raw[member]
        ir_entries.append(ir)
        audiences.add(resource)
        actions.update(raw["actions"])
        action_list = ", ".join(f"Action::{_cedar_string(a)}" for a in raw["actions"])
        policy_lines.append(
            f"@id({_cedar_string(f'entry{index}')})\n"
            f"permit(principal == {principal}, action in [{action_list}], "
            f"resource == Audience::{_cedar_string(resource)});\n")
    policies = "".join(policy_lines)
    schema = "entity Mission;\nentity Audience;\n" + "".join(
        f"action {_cedar_string(a)} appliesTo {{ principal: [Mission], resource: [Audience], "
        "context: {} };\n" for a in sorted(actions))
    entities: list[dict[str, Any]] = [
        {"uid": {"type": "Mission", "id": record.mission_id}, "attrs": {}, "parents": []}]
    entities += [{"uid": {"type": "Audience", "id": uri}, "attrs": {}, "parents": []}
                 for uri in sorted(audiences)]
    entities += [{"uid": {"type": "Action", "id": name}, "attrs": {}, "parents": []}
                 for name in sorted(actions)]
    check_cedar(policies, schema)
    references = resource_policies or {}
    bindings = _capability_bindings(ir_entries, tool_definitions or {})
    manifest: dict[str, Any] = {
        "mission_id": record.mission_id,
        "issuer": record.origin,
        "authority_hash": record.authority_hash,
        "derivation_policy": record.policy_version,
        "catalog_version": catalog.version,
        "compiler": dict(COMPILER),
        "policy_ir": {
            "ir_version": IR_VERSION,
            "purpose": purpose,
            "mission_bounds": _mission_bounds(record),
            "entries": ir_entries,
            "resource_policies": {uri: references[uri] for uri in sorted(audiences)
                                  if uri in references},
        },
        "artifact": {"digest": _sources_digest(policies, schema, entities),
                     "encoding": ARTIFACT_ENCODING},
    }
    if bindings:
        # Only when recorded: Missions without bound tools keep their policy_version.
        manifest["policy_ir"]["capability_bindings"] = bindings
    return PolicyArtifact(
        mission_id=record.mission_id,
        policy_version=policy_version_of(record.origin, manifest),
        manifest=manifest,
        policies=policies,
        schema=schema,
        entities=entities,
    )


def check_cedar(policies: str, schema: str) -> None:
    """Validate the policies against the schema (cedarpy.validate_policies); refuse on error."""
    try:
        result = cedarpy.validate_policies(policies, schema)
    except (ValueError, RuntimeError) as exc:
        raise PolicyCompileError(f"Cedar validation could not run: {exc}") from None
    if not result.validation_passed:
        problems = "; ".join(str(error) for error in result.errors) or "no details"
        raise PolicyCompileError(f"the compiled Cedar policies do not validate: {problems}")


# ---------------------------------------------------------------- loading


@dataclass(frozen=True)
class CompiledAction:
    """What the decision needs about one action of one entry, precomputed."""

    classified: Classified
    bindings: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class CapabilityBinding:
    """A granted tool bound at approval to the digest of its definition (None: the tool
    server did not list it then)."""

    tool_id: str
    source_digest: str | None


@dataclass(frozen=True)
class CompiledEntry:
    index: int
    entry: dict[str, Any]  # as approved (what delegation rules read)
    entry_digest: str
    resource: str
    constraints: Mapping[str, Any]
    delegation: Mapping[str, Any] | None
    actions: Mapping[str, CompiledAction]


@dataclass(frozen=True, eq=False)
class CompiledPolicy:
    """A loaded artifact: Cedar handles parsed once, entries indexed for the hot path."""

    mission_id: str
    policy_version: str
    issuer: str
    authority_hash: str
    derivation_policy: str
    policy_set: Any
    entities: Any
    schema: Any
    entries: tuple[CompiledEntry, ...]  # supported entries, in Authority Set order
    unsupported_entries: tuple[int, ...]
    resource_policies: Mapping[str, str]
    purpose: str | None
    mission_bounds: Mapping[str, Any]  # metered bounds of mission_intent.context
    # resource -> tool name -> binding; empty when approval bound no tool
    capability_bindings: Mapping[str, Mapping[str, CapabilityBinding]]
    _by_policy_id: Mapping[str, CompiledEntry] = field(repr=False)
    _principal: Mapping[str, str] = field(repr=False)

    def granting_entries(self, audience: str, action: str) -> list[CompiledEntry]:
        """The entries whose permit Cedar finds applicable, in Authority Set order."""
        result = cedarpy.is_authorized(
            {"principal": self._principal,
             "action": {"type": "Action", "id": action},
             "resource": {"type": "Audience", "id": audience}},
            self.policy_set, self.entities)
        if not result.allowed:
            return []
        by_id = self._by_policy_id
        # An id Cedar names that the index does not know cannot grant (fail closed).
        found = [by_id[pid] for pid in result.diagnostics.reasons if pid in by_id]
        return sorted(found, key=lambda entry: entry.index)

    def capability_binding(self, audience: str, action: str) -> CapabilityBinding | None:
        """The binding approval recorded for tool ``action`` at ``audience``, if any."""
        return self.capability_bindings.get(audience, {}).get(action)


def load_policy(artifact: PolicyArtifact) -> CompiledPolicy:
    """Parse an artifact once (checking both digests and re-validating the Cedar)."""
    artifact.check_integrity()
    check_cedar(artifact.policies, artifact.schema)
    manifest = artifact.manifest
    try:
        ir = manifest["policy_ir"]
        policy_set = cedarpy.PolicySet.from_str(artifact.policies)
        entities = cedarpy.Entities.from_json_str(json.dumps(artifact.entities))
        schema = cedarpy.Schema.from_str(artifact.schema)
        compiled: list[CompiledEntry] = []
        unsupported: list[int] = []
        for item in ir["entries"]:
            if not item["supported"]:
                unsupported.append(int(item["index"]))
                continue
            facts = item["action_facts"]
            compiled.append(CompiledEntry(
                index=int(item["index"]),
                entry={k: item[k] for k in ("type", "resource", "actions", "constraints",
                                            "delegation") if k in item},
                entry_digest=item["entry_digest"],
                resource=item["resource"],
                constraints=item.get("constraints", {}),
                delegation=item.get("delegation"),
                actions={name: CompiledAction(
                    Classified(ActionClass(facts[name]["class"]), facts[name]["class_source"]),
                    facts[name]["constraint_bindings"]) for name in item["actions"]},
            ))
        principal = {"type": "Mission", "id": artifact.mission_id}
        return CompiledPolicy(
            mission_id=artifact.mission_id,
            policy_version=artifact.policy_version,
            issuer=manifest["issuer"],
            authority_hash=manifest["authority_hash"],
            derivation_policy=manifest["derivation_policy"],
            policy_set=policy_set,
            entities=entities,
            schema=schema,
            entries=tuple(compiled),
            unsupported_entries=tuple(unsupported),
            resource_policies=dict(ir["resource_policies"]),
            purpose=ir.get("purpose"),
            mission_bounds=dict(ir["mission_bounds"]),
            capability_bindings=_load_bindings(ir.get("capability_bindings", {})),
            # Cedar names policies policy0, policy1, ... in text order: one per supported entry.
            _by_policy_id={f"policy{i}": entry for i, entry in enumerate(compiled)},
            _principal=principal,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyCompileError(f"policy artifact does not load: {exc}") from None


def _load_bindings(raw: Any) -> dict[str, dict[str, CapabilityBinding]]:
    if not isinstance(raw, dict):
        raise TypeError("policy_ir.capability_bindings is not an object")
    loaded: dict[str, dict[str, CapabilityBinding]] = {}
    for resource, tools in raw.items():
        if not isinstance(tools, dict):
            raise TypeError(f"capability_bindings of {resource} is not an object")
        for name, item in tools.items():
            tool, digest = item["tool_id"], item["source_digest"]
            if not isinstance(tool, str) or not (digest is None or isinstance(digest, str)):
                raise TypeError(f"capability binding of {name} at {resource} is malformed")
            loaded.setdefault(resource, {})[name] = CapabilityBinding(tool, digest)
    return loaded


# ---------------------------------------------------------------- cache


class PolicyCache:
    """Compiled policies by (mission_id, policy_version), least recently used out first.

    The key carries the content identity, so an entry never goes stale: a changed Mission
    authority has another policy_version and misses. Thread-safe; a miss loads outside the
    lock (two threads may load the same artifact once each; the first stored wins)."""

    def __init__(self, max_entries: int = 1024) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._items: OrderedDict[tuple[str, str], CompiledPolicy] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, mission_id: str, policy_version: str,
            loader: Callable[[], CompiledPolicy]) -> CompiledPolicy:
        key = (mission_id, policy_version)
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        loaded = loader()
        if (loaded.mission_id, loaded.policy_version) != key:
            raise PolicyCompileError("the loaded policy is not the one asked for")
        with self._lock:
            found = self._items.setdefault(key, loaded)
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
            return found

    def discard(self, mission_id: str) -> None:
        """Drop every version of a Mission (memory only: versions never go stale)."""
        with self._lock:
            for key in [k for k in self._items if k[0] == mission_id]:
                del self._items[key]

    def __len__(self) -> int:
        return len(self._items)
