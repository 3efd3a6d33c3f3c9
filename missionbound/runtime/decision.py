"""The PDP decision (PROFILE.md section 12; runtime-digest sections 1.4, 1.10, 2.3, 3.4, 7).

:func:`decide` is pure: the compiled policy, the Mission's immutable members, its state as
the caller established it, one request and the clock in; a :class:`Decision` out. It never
consumes anything: metering reservation and idempotency claims happen afterwards, in the
caller's transaction, and may still turn a permit into ``quota_exceeded``. Anything it does
not understand is a deny.

Checks run in the order of :data:`missionbound.runtime.reasons.PRECEDENCE` and the first
failing one gives the reason (docs/runtime.md "The decision and its reasons").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

from missionbound.mission.catalog import ActionClass, Catalog
from missionbound.mission.constraint_checks import (
    allow_list_excess,
    amount_problem,
    country_problem,
    currency_problem,
    labels_outside,
    money_excess,
)
from missionbound.mission.constraints import ConstraintRegistry
from missionbound.mission.delegation import delegable_entries
from missionbound.mission.lifecycle import State
from missionbound.mission.record import MissionRecord
from missionbound.runtime.classification import (
    PARAMETER_BOUND,
    Classified,
    classify,
    is_gated,
    stronger,
)
from missionbound.runtime.compiler import CompiledEntry, CompiledPolicy
from missionbound.runtime.digests import DigestError, parameter_digest
from missionbound.runtime.reasons import Reason
from missionbound.runtime.request import DecisionRequest

ACTIVE: Final = State.ACTIVE.value
DIGEST_PREFIX: Final = "sha-256:"
MAX_ACT_LENGTH: Final = 16
METERED: Final = ConstraintRegistry.metered


class ResourcePolicy(Protocol):
    """A resource-policy tenant (runtime/tenants.py): does it permit this request?"""

    def permits(self, request: DecisionRequest) -> bool: ...


@dataclass(frozen=True, slots=True)
class MissionView:
    """The Mission's immutable members the decision reads (never its state)."""

    mission_id: str
    origin: str
    authority_hash: str
    policy_version: str
    subject_sub: str
    client_id: str
    mission_expiry: datetime
    authority_set: list[dict[str, Any]]

    @classmethod
    def of(cls, record: MissionRecord) -> MissionView:
        return cls(
            mission_id=record.mission_id,
            origin=record.origin,
            authority_hash=record.authority_hash or "",
            policy_version=record.policy_version,
            subject_sub=record.subject.sub if record.subject is not None else "",
            client_id=record.client_id,
            mission_expiry=record.mission_expiry,
            authority_set=list(record.authority_set),
        )


@dataclass(frozen=True, slots=True)
class StateView:
    """Mission state as established by the caller. ``valid_through`` is the end of the
    observation's validity (runtime-digest 1.7 rule 3); ``now`` for a read of the
    authoritative store in the same process (staleness bound 0)."""

    state: str
    version: int
    valid_through: datetime


@dataclass(frozen=True, slots=True)
class Charge:
    """A metered amount this permit would consume, for the caller to reserve atomically.
    ``entry_digest`` None: a Mission-wide bound (``mission_intent.context``)."""

    key: str  # max_calls | max_total_value | max_duration
    entry_digest: str | None
    limit: Any  # the constraint value as approved
    amount: int | str  # calls | decimal string | seconds
    currency: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: Reason | None
    action_class: ActionClass
    class_source: str
    entry_index: int | None = None
    entry_digest: str | None = None
    contributing_constraints: tuple[str, ...] = ()
    parameter_digest: str | None = None
    parameter_bound: bool = False
    charges: tuple[Charge, ...] = ()
    valid_until: datetime | None = None
    use_limit: int | None = None
    detail: str = field(default="", compare=False)


class _Deny(Exception):
    def __init__(self, reason: Reason, detail: str, keys: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.keys = reason, detail, keys


def decide(
    policy: CompiledPolicy,
    mission: MissionView,
    state: StateView,
    request: DecisionRequest,
    *,
    catalog: Catalog,
    now: datetime,
    resource_policies: Mapping[str, ResourcePolicy] | None = None,
    permit_lifetime: timedelta = timedelta(seconds=60),
) -> Decision:
    """Evaluate ``request`` against the Mission (see the module docstring)."""
    classified = classify(catalog, request.audience, request.action_name,
                          purpose=policy.purpose)
    granting: list[CompiledEntry] = []
    supplied_digest = request.parameter_digest
    try:
        _check_view(policy, mission, request)
        _check_state(mission, state, request, now)
        _check_credential(mission, request, now)
        delegates = _check_actor(policy, mission, request)
        granting = _granting(policy, request, delegates)
        _check_capability(policy, request)
        for entry in granting:
            compiled = entry.actions.get(request.action_name)
            if compiled is not None:
                classified = stronger(classified, compiled.classified)
        digest = _check_digest(request, classified)
        bound = classified.action_class in PARAMETER_BOUND
        valid_until = _window(mission, state, request, now, permit_lifetime)
        chosen, charges = _check_constraints(policy, granting, request, catalog, classified,
                                             valid_until - now)
        _check_resource_policy(policy, request, resource_policies or {})
    except _Deny as deny:
        first = granting[0] if granting else None
        return Decision(
            allowed=False, reason=deny.reason, action_class=classified.action_class,
            class_source=classified.class_source,
            entry_index=first.index if first else None,
            entry_digest=first.entry_digest if first else None,
            contributing_constraints=deny.keys, parameter_digest=supplied_digest,
            parameter_bound=classified.action_class in PARAMETER_BOUND, detail=deny.detail)
    return Decision(
        allowed=True, reason=None, action_class=classified.action_class,
        class_source=classified.class_source, entry_index=chosen.index,
        entry_digest=chosen.entry_digest, parameter_digest=digest, parameter_bound=bound,
        charges=charges, valid_until=valid_until,
        # Single use for every high-consequence and parameter-bound class in this build.
        use_limit=1 if bound or classified.action_class.high_consequence else None,
        detail="permitted")


# ---------------------------------------------------------------- who and when


def _check_view(policy: CompiledPolicy, mission: MissionView, request: DecisionRequest) -> None:
    # Runtime-digest 2.3 step 1 and 3.4 item 3: the loaded view, the Mission and the
    # request must name the same Mission, issuer and Authority Set.
    if (policy.mission_id != mission.mission_id or policy.issuer != mission.origin
            or policy.authority_hash != mission.authority_hash
            or mission.policy_version not in (policy.policy_version, policy.derivation_policy)):
        raise _Deny(Reason.VIEW_INCONSISTENT, "the compiled policy is not this Mission's")
    if request.mission_id != mission.mission_id:
        raise _Deny(Reason.VIEW_INCONSISTENT, "context.mission.id names another Mission")
    if request.mission_issuer != mission.origin:
        raise _Deny(Reason.VIEW_INCONSISTENT, "context.mission.issuer is not the Mission's")
    if request.authority_hash != mission.authority_hash:
        raise _Deny(Reason.VIEW_INCONSISTENT, "context.mission.authority_hash differs")
    if request.policy_version is not None and request.policy_version not in (
            policy.policy_version, policy.derivation_policy):
        raise _Deny(Reason.VIEW_INCONSISTENT, "context.mission.policy_version differs")


def _check_state(mission: MissionView, state: StateView, request: DecisionRequest,
                 now: datetime) -> None:
    # Exactly "active"; any other value, known or not, is non-active (runtime-digest 1.4).
    if state.state != ACTIVE:
        raise _Deny(Reason.MISSION_INACTIVE, f"the Mission is {state.state[:40]}")
    if mission.mission_expiry <= now:
        raise _Deny(Reason.MISSION_INACTIVE, "the Mission's expiry has passed")
    if request.observed_state is not None and request.observed_state != ACTIVE:
        # The PEP's observation is a floor, never a substitute (runtime-digest 1.7).
        raise _Deny(Reason.MISSION_INACTIVE, "the PEP observed a non-active state")
    if state.valid_through < now:
        raise _Deny(Reason.STALE_STATE, "the Mission state is older than its bound")
    if request.observed_version is not None and request.observed_version != state.version:
        raise _Deny(Reason.STALE_STATE, "the PEP observed another state version")


def _check_credential(mission: MissionView, request: DecisionRequest, now: datetime) -> None:
    if request.credential_expires_at is not None and request.credential_expires_at <= now:
        raise _Deny(Reason.CREDENTIAL_INVALID, "the credential has expired")
    if request.subject_id != mission.subject_sub:
        raise _Deny(Reason.CREDENTIAL_INVALID, "subject.id is not the Mission's Subject")


def _check_actor(policy: CompiledPolicy, mission: MissionView,
                 request: DecisionRequest) -> tuple[str, ...]:
    """The delegates of ``act``, root side first, or () when the Mission's own client acts
    (the actor is read from ``act``, never from ``client_id``: PROFILE.md section 9).

    ``context.actor.act`` runs root to leaf and may start with the Mission's own client
    (runtime-digest 3.3: "one member for a single actor"); that hop is the root, not a
    delegate, and dropping it never widens: that client holds the whole Authority Set."""
    act = request.act
    if len(act) > MAX_ACT_LENGTH or not all(
            isinstance(item, Mapping) and isinstance(item.get("sub"), str) and item["sub"]
            and set(item) <= {"sub", "iss"} for item in act):
        raise _Deny(Reason.ACTOR_INVALID, "context.actor.act is malformed")
    chain = tuple(str(item["sub"]) for item in act)
    if chain and chain[0] == mission.client_id:
        chain = chain[1:]
    if not chain:
        # Only the Mission's client acts. Without act, client_id must name it; with act,
        # a client_id naming anyone else contradicts the chain.
        if request.client_id != mission.client_id and not (act and request.client_id is None):
            raise _Deny(Reason.ACTOR_INVALID, "context.actor.client_id is not the Mission's "
                        "client and no act chain names a delegate")
        return ()
    if not _reachable([e.entry for e in policy.entries], chain):
        raise _Deny(Reason.ACTOR_INVALID, "the Mission lets this actor chain do nothing")
    return chain


def _reachable(entries: list[dict[str, Any]], chain: tuple[str, ...]) -> list[dict[str, Any]]:
    """The entries a delegate chain can hold: filtered one hop at a time, as the token
    exchanges that built the chain did (PROFILE.md section 9), so every hop must be an
    allowed delegate at its depth, not only the last one (never widen)."""
    kept = entries
    for depth, delegate in enumerate(chain, start=1):
        kept = delegable_entries(kept, delegate_client_id=delegate, depth=depth).kept
        if not kept:
            break
    return kept


def _granting(policy: CompiledPolicy, request: DecisionRequest,
              delegates: tuple[str, ...]) -> list[CompiledEntry]:
    granting = policy.granting_entries(request.audience, request.action_name)
    if granting and delegates:
        kept_ids = {id(raw) for raw in _reachable([e.entry for e in granting], delegates)}
        granting = [e for e in granting if id(e.entry) in kept_ids]
    if not granting:
        if policy.unsupported_entries:
            raise _Deny(Reason.UNSUPPORTED_AUTHORIZATION_TYPE, "no supported entry grants the "
                        "action and the Authority Set holds entries of an unsupported type")
        raise _Deny(Reason.OUT_OF_AUTHORITY, "no entry grants this action at this audience")
    return granting


def _window(mission: MissionView, state: StateView, request: DecisionRequest, now: datetime,
            lifetime: timedelta) -> datetime:
    ends = [now + lifetime, mission.mission_expiry]
    if request.credential_expires_at is not None:
        ends.append(request.credential_expires_at)
    if state.valid_through > now:  # a lease from a state source; == now: authoritative read
        ends.append(state.valid_through)
    return min(ends)


# ---------------------------------------------------------------- which capability


def _check_capability(policy: CompiledPolicy, request: DecisionRequest) -> None:
    """Tool-manifest binding (runtime-digest 5.8, 4.2): whether the tool is bound, and to
    which digest, comes from the policy view, never from the request. A bound tool needs the
    PEP's ``context.capability_source`` naming it, with the digest of the definition the PEP
    sees now equal to the one recorded at approval. Unbound: capability_source is ignored."""
    binding = policy.capability_binding(request.audience, request.action_name)
    if binding is None:
        return
    source = request.capability_source
    if source is None:
        raise _Deny(Reason.CAPABILITY_DRIFT, "the tool was bound to its definition at "
                    "approval and context.capability_source is missing")
    if source.tool_id != binding.tool_id:
        raise _Deny(Reason.CAPABILITY_DRIFT, "context.capability_source.tool_id is not the "
                    "approved tool")
    if binding.source_digest is None:
        raise _Deny(Reason.CAPABILITY_DRIFT, "the tool server did not list this tool at "
                    "approval: re-approve over its definition")
    if source.source_digest != binding.source_digest:
        raise _Deny(Reason.CAPABILITY_DRIFT, "the tool's definition is not the one approved")


# ---------------------------------------------------------------- what and how much


def _check_digest(request: DecisionRequest, classified: Classified) -> str | None:
    supplied = request.parameter_digest
    if supplied is not None and not supplied.startswith(DIGEST_PREFIX):
        raise _Deny(Reason.PARAMETER_VIOLATION, "parameter_digest is not sha-256",
                    ("parameter_digest",))
    if request.parameters is not None:
        try:
            computed = parameter_digest(request.parameters)
        except DigestError as exc:
            raise _Deny(Reason.PARAMETER_VIOLATION, str(exc), ("parameters",)) from None
        if supplied is not None and supplied != computed:
            raise _Deny(Reason.PARAMETER_VIOLATION, "parameter_digest is not the digest of "
                        "the parameters", ("parameter_digest",))
        if supplied is None and classified.action_class in PARAMETER_BOUND:
            raise _Deny(Reason.PARAMETER_VIOLATION, "a parameter-bound action needs "
                        "parameter_digest", ("parameter_digest",))
        return computed
    if supplied is None and classified.action_class in PARAMETER_BOUND:
        raise _Deny(Reason.PARAMETER_VIOLATION, "a parameter-bound action needs "
                    "parameter_digest", ("parameter_digest",))
    return supplied


def _check_constraints(policy: CompiledPolicy, granting: list[CompiledEntry],
                       request: DecisionRequest, catalog: Catalog, classified: Classified,
                       window: timedelta) -> tuple[CompiledEntry, tuple[Charge, ...]]:
    """Several granting entries are alternative grants: the first (in Authority Set order)
    whose every constraint holds wins. Otherwise ``constraint_unsupported`` if any entry
    failed on a key this PDP cannot evaluate, else ``parameter_violation``; the failing keys
    of every entry are the contributing constraints."""
    registry = catalog.constraints
    failed: dict[str, Reason] = {}
    details: list[str] = []
    for entry in granting:
        compiled = entry.actions.get(request.action_name)
        bindings = compiled.bindings if compiled is not None else {}
        charges: list[Charge] = []
        entry_failed = False
        for key in sorted(entry.constraints):
            problem = _check_key(key, entry.constraints[key], bindings.get(key), entry,
                                 request, catalog, registry, window, charges)
            if problem is not None:
                reason, words = problem
                entry_failed = True
                if failed.get(key) is not Reason.CONSTRAINT_UNSUPPORTED:
                    failed[key] = reason
                details.append(f"entry {entry.index}: {key}: {words}")
        if not entry_failed:
            charges += _mission_charges(policy, bindings, request, classified, window)
            return entry, tuple(charges)
    reason = (Reason.CONSTRAINT_UNSUPPORTED if Reason.CONSTRAINT_UNSUPPORTED in failed.values()
              else Reason.PARAMETER_VIOLATION)
    raise _Deny(reason, "; ".join(details), tuple(sorted(failed)))


_Problem = tuple[Reason, str]


def _unsupported(words: str) -> _Problem:
    return Reason.CONSTRAINT_UNSUPPORTED, words


def _violation(words: str) -> _Problem:
    return Reason.PARAMETER_VIOLATION, words


def _parameter(request: DecisionRequest, name: str) -> Any:
    if request.parameters is None:
        raise KeyError(name)
    return request.parameters[name]


def _money(request: DecisionRequest, name: str) -> tuple[str, str] | str:
    """(amount, currency) read from parameter ``name``: an object {amount, currency}, or a
    decimal string whose currency is the sibling parameter ``currency``; or a problem."""
    try:
        value = _parameter(request, name)
    except KeyError:
        return f"the parameters do not carry {name!r}"
    if isinstance(value, Mapping):
        amount, currency = value.get("amount"), value.get("currency")
    else:
        amount = value
        currency = request.parameters.get("currency") if request.parameters else None
    if currency is None:
        return "the parameters carry no currency"
    problem = amount_problem(amount) or currency_problem(currency)
    if problem is not None:
        return problem
    return str(amount), str(currency)


def _check_key(key: str, bound: Any, binding: str | None, entry: CompiledEntry,
               request: DecisionRequest, catalog: Catalog, registry: ConstraintRegistry,
               window: timedelta, charges: list[Charge]) -> _Problem | None:
    if not registry.knows(key) or key in registry.context_only or key == "aal":
        # aal needs the credential's acr and auth_time, which no decision request carries.
        return _unsupported(f"this PDP cannot evaluate {key!r} (fail closed)")
    if not registry.valid(key, bound):
        return _unsupported("the bound is malformed")
    if key == "data_classification":
        return _check_labels(bound, request, catalog)
    if key == "max_calls":
        charges.append(Charge(key, entry.entry_digest, bound, 1))
        return None
    if key == "max_duration":
        charges.append(Charge(key, entry.entry_digest, bound, _seconds(window)))
        return None
    if not binding:
        return _unsupported("the catalog binds no parameter to it for this action")
    if key in ("max_value", "max_total_value"):
        money = _money(request, binding)
        if isinstance(money, str):
            return _violation(money)
        amount, currency = money
        if key == "max_total_value":
            if currency != bound["currency"]:
                return _violation("the amount is not in the bound's currency")
            charges.append(Charge(key, entry.entry_digest, bound, amount, currency))
            return None
        excess = money_excess(bound, amount, currency, bound_words=f"the Mission's {key}")
        return None if excess is None else _violation(excess)
    try:
        value = _parameter(request, binding)
    except KeyError:
        return _violation(f"the parameters do not carry {binding!r}")
    if key == "geo":
        problem = country_problem(value)
        if problem is None and value not in bound:
            problem = f"country {value} is outside the Mission's geo"
        return None if problem is None else _violation(problem)
    excess = allow_list_excess(key, bound, value)
    return None if excess is None else _violation(excess)


def _check_labels(bound: Any, request: DecisionRequest, catalog: Catalog) -> _Problem | None:
    # The labels of the audience (deployment catalog) and of the object the PEP names
    # (resource.properties.data_classification); none at all cannot be established.
    resource = catalog.resource(request.audience)
    labels = list(resource.labels) if resource is not None else []
    extra = request.resource_properties.get("data_classification")
    if extra is not None:
        if not isinstance(extra, list) or not all(isinstance(x, str) for x in extra):
            return _violation("resource.properties.data_classification is not an array")
        labels += extra
    if not labels:
        return _violation("the data touched carries no classification label")
    outside = labels_outside(bound, labels)
    return _violation(f"labelled {', '.join(outside)}") if outside else None


def _seconds(window: timedelta) -> int:
    return max(1, math.ceil(window.total_seconds()))


def _mission_charges(policy: CompiledPolicy, bindings: Mapping[str, str],
                     request: DecisionRequest, classified: Classified,
                     window: timedelta) -> list[Charge]:
    """Mission-wide metered bounds (``mission_intent.context``) charge every gated call."""
    bounds = policy.mission_bounds
    if not bounds or not is_gated(classified.action_class):
        return []
    charges: list[Charge] = []
    if "max_calls" in bounds:
        charges.append(Charge("max_calls", None, bounds["max_calls"], 1))
    if "max_duration" in bounds:
        charges.append(Charge("max_duration", None, bounds["max_duration"], _seconds(window)))
    total = bounds.get("max_total_value")
    binding = bindings.get("max_total_value") or bindings.get("max_value")
    if total is not None and binding:
        money = _money(request, binding)
        if isinstance(money, str):
            raise _Deny(Reason.PARAMETER_VIOLATION, money, ("max_total_value",))
        amount, currency = money
        if currency != total["currency"]:
            raise _Deny(Reason.PARAMETER_VIOLATION, "the amount is not in the currency of "
                        "the Mission's max_total_value", ("max_total_value",))
        charges.append(Charge("max_total_value", None, total, amount, currency))
    return charges


# ---------------------------------------------------------------- resource policy


def _check_resource_policy(policy: CompiledPolicy, request: DecisionRequest,
                           tenants: Mapping[str, ResourcePolicy]) -> None:
    tenant_name = policy.resource_policies.get(request.audience)
    if tenant_name is None:
        return
    tenant = tenants.get(tenant_name)
    if tenant is None:
        raise _Deny(Reason.RESOURCE_POLICY, f"resource-policy tenant {tenant_name!r} is not "
                    "loaded (fail closed)")
    try:
        permitted = tenant.permits(request)
    except Exception as exc:  # any failure of a tenant is a deny (fail closed)
        raise _Deny(Reason.RESOURCE_POLICY, f"resource policy failed: {exc}") from None
    if permitted is not True:
        raise _Deny(Reason.RESOURCE_POLICY, f"resource policy {tenant_name!r} refuses")
