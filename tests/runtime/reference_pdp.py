"""A deliberately small reference evaluator for the Mission PDP, written from the spec text,
for the differential test (tests/runtime/test_differential.py).

It shares no code with ``missionbound.runtime``: no Cedar, no compiled artifact, no entry
index, no shared constraint checks. It reads the Mission, its state and the request as plain
attributes and walks the checks of runtime-digest section 1.10 in order, returning the first
failing reason (the order of ``runtime/reasons.py`` PRECEDENCE). From ``missionbound.mission``
it takes only the catalog, as data: each action's class and which request parameter each
constraint key binds to (PROFILE.md section 6: "The catalog declares which keys each action
accepts and which request parameter each key binds to").

Where the spec leaves a choice open, the reference follows the project's documented choice
and says so ("project choice"), so that a disagreement always points at one sentence.
Written for clarity, not speed.
"""

from __future__ import annotations

import hashlib
import re
from base64 import urlsafe_b64encode
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import rfc8785

from missionbound.mission.catalog import Catalog

ENTRY_TYPE = "mission_resource_access"
DECIMAL_STRING = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]{1,18})?")  # digest 7.1 / PROFILE.md 6
ISO_4217 = re.compile(r"[A-Z]{3}")
ISO_3166 = re.compile(r"[A-Z]{2}")
LABEL = re.compile(r"[A-Za-z0-9_.:/@-]{1,128}")
DURATION = re.compile(r"P(?:[0-9]+W|(?:[0-9]+D)?(?:T(?:[0-9]+H)?(?:[0-9]+M)?(?:[0-9]+S)?)?)")
METERED = ("max_calls", "max_total_value", "max_duration")  # PROFILE.md 12 "Metering"
# Keys this PDP can evaluate at all. aal needs the credential's acr and auth_time, which no
# decision request carries (project choice: constraint_unsupported); max_derivations is
# Mission-wide only (PROFILE.md 6 "context only").
EVALUABLE = {"max_value", "max_total_value", "max_calls", "max_duration",
             "data_classification", "geo"}
# runtime-digest 2.4: parameter binding MUST from consequential_write upwards.
PARAMETER_BOUND = {"consequential_write", "irreversible", "external_commitment",
                   "privileged_admin"}


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str | None
    entry_index: int | None = None  # on a permit: the entry that granted it


class Denied(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ------------------------------------------------------------------------------ plain data


def action_class(catalog: Catalog, audience: str, action: str) -> str:
    """The catalog's class; an action the catalog does not know is the widest class
    (runtime-digest 2.4: "if it cannot place the call, use the widest class")."""
    resource = catalog.resources.get(audience)
    if resource is None or action not in resource.actions:
        return "privileged_admin"
    return resource.actions[action].action_class.value


def bindings_of(catalog: Catalog, audience: str, action: str) -> dict[str, str]:
    resource = catalog.resources.get(audience)
    if resource is None or action not in resource.actions:
        return {}
    return dict(resource.actions[action].constraint_bindings)


def sha256_digest_of(value: Any) -> str | None:
    """runtime-digest 4.3: ``sha-256:`` + base64url(SHA-256(JCS(object))). None when the value
    cannot be committed to: not an object, or holding a float (4.3 step 3: "Keep money and
    other decimals as strings")."""
    if not isinstance(value, dict) or _holds_float(value):
        return None
    try:
        raw = rfc8785.dumps(value)
    except Exception:
        return None
    return "sha-256:" + urlsafe_b64encode(hashlib.sha256(raw).digest()).rstrip(b"=").decode()


def _holds_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_holds_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_float(v) for v in value)
    return False


# ------------------------------------------------------------------------------ who and when


def check_view(mission: Any, request: Any, policy_versions: Collection[str]) -> None:
    """runtime-digest 2.3.1 / 3.4.3: "context.mission.id and authority_hash MUST equal the
    manifest's"; the issuer is the Mission's origin; a present policy_version must name this
    Mission's policy ("omission ... never fails"). Project choice: the compiled artifact's
    version and the derivation policy version the record carries are both this Mission's."""
    if (request.mission_id != mission.mission_id or request.mission_issuer != mission.origin
            or request.authority_hash != mission.authority_hash):
        raise Denied("view_inconsistent")
    if request.policy_version is not None and request.policy_version not in policy_versions:
        raise Denied("view_inconsistent")


def check_state(mission: Any, state: Any, request: Any, now: datetime) -> None:
    """PROFILE.md 7: "Only active permits anything ... Unknown state values fail closed ...
    expired whenever now >= mission_expiry". Digest 3.4.2: an observed state that is not
    active => mission_inactive. 3.4.4/3.4.6: another state version, or past the freshness
    bound => stale_state. 1.10 step 4: mission_inactive, then stale_state."""
    if state.state != "active" or now >= mission.mission_expiry:
        raise Denied("mission_inactive")
    if request.observed_state is not None and request.observed_state != "active":
        raise Denied("mission_inactive")
    if request.observed_version is not None and request.observed_version != state.version:
        raise Denied("stale_state")
    if now > state.valid_through:
        raise Denied("stale_state")


def check_credential(mission: Any, request: Any, now: datetime) -> None:
    """Digest 1.4 Time: "Token expired => refuse" (credential_invalid); 1.6 "Credential facts
    expired/inconsistent" => credential_invalid: a token for another Subject than the
    Mission's (PROFILE.md 12: "subject = token sub"). Project choice: the credential's
    issuer is not compared with the origin (cross-domain tokens come from another AS)."""
    if request.credential_expires_at is not None and now >= request.credential_expires_at:
        raise Denied("credential_invalid")
    if request.subject_id != mission.subject_sub:
        raise Denied("credential_invalid")


def delegates_of(mission: Any, request: Any) -> tuple[str, ...]:
    """The delegation chain below the approved agent, first delegate to immediate actor.

    Digest 1.4 Actor: "evaluate the authenticated act chain (projected root->leaf) ... with an
    act chain present, client_id alone is never the immediate actor". Without ``act`` the
    caller is the Mission's own client (PROFILE.md 8: client_id is the requesting client).
    ``act`` projects the token's ``act`` claim (PROFILE.md 9: only delegates nest there); digest
    3.3 also allows the chain to start at the agent itself ("root->leaf; one member for a
    single actor", worked example ``act: [{"sub": <client_id>}]``), so a leading hop naming
    the Mission's client is the root, not a delegate."""
    subs = [hop["sub"] for hop in request.act]
    if not subs:
        if request.client_id != mission.client_id:
            raise Denied("actor_invalid")
        return ()
    if subs[0] == mission.client_id:
        subs = subs[1:]
    return tuple(subs)


def entry_admits(entry: Mapping[str, Any], delegates: tuple[str, ...]) -> bool:
    """PROFILE.md 9: each exchange keeps "only entries that carry delegation with remaining
    depth and a matching allowed_delegates", so an entry reaches a chain only if every hop is
    named and the chain is no deeper than max_depth."""
    if not delegates:
        return True
    delegation = entry.get("delegation")
    if not isinstance(delegation, Mapping):
        return False
    named = {m.get("client_id") for m in delegation.get("allowed_delegates", [])}
    return len(delegates) <= delegation["max_depth"] and set(delegates) <= named


# ------------------------------------------------------------------------------ what


def granting_entries(mission: Any, request: Any) -> list[tuple[int, dict[str, Any]]]:
    """Digest 2.3.2: the entry ``resource`` against ``resource.properties.audience`` by exact
    byte equality, the action a listed literal; several entries are alternative grants."""
    return [(i, e) for i, e in enumerate(mission.authority_set)
            if e.get("type") == ENTRY_TYPE and e.get("resource") == request.audience
            and request.action_name in e.get("actions", [])]


def check_digest(request: Any, cls: str) -> None:
    """Digest 3.4.7: "Parameter-bound class and no parameter_digest => parameter_violation;
    parameters present and recomputed digest != supplied => parameter_violation"; 4.3 step 5
    "Verifiers reject any other prefix". Parameters that cannot be digested at all (a float)
    are refused whatever the class (project choice, from 4.3 step 3)."""
    supplied = request.parameter_digest
    if supplied is not None and not supplied.startswith("sha-256:"):
        raise Denied("parameter_violation")
    if request.parameters is not None:
        computed = sha256_digest_of(request.parameters)
        if computed is None or (supplied is not None and supplied != computed):
            raise Denied("parameter_violation")
    if supplied is None and cls in PARAMETER_BOUND:
        raise Denied("parameter_violation")


def money_in(params: Mapping[str, Any] | None, name: str) -> tuple[Decimal, str] | None:
    """The amount the parameter ``name`` carries, as (Decimal, currency): an object
    {amount, currency}, or a decimal string beside a ``currency`` parameter (the demo tools'
    shape). None when missing or malformed (digest 7.1: "malformed/missing input => refuse")."""
    if params is None or name not in params:
        return None
    value = params[name]
    if isinstance(value, dict):
        amount, currency = value.get("amount"), value.get("currency")
    else:
        amount, currency = value, params.get("currency")
    if not isinstance(amount, str) or not DECIMAL_STRING.fullmatch(amount):
        return None
    if not isinstance(currency, str) or not ISO_4217.fullmatch(currency):
        return None
    return Decimal(amount), currency


def key_verdict(key: str, bound: Any, catalog: Catalog, request: Any) -> str | None:
    """One constraint key of one entry: None (holds), "constraint_unsupported" (this PDP
    cannot evaluate it here: digest 1.4 "Unknown / un-suppliable / unenforceable /
    unmeterable => refuse"), or "parameter_violation" (violated, or the request does not
    supply what it needs: 3.4.7)."""
    allow_lists = catalog.allow_list_keys
    if key not in EVALUABLE and key not in allow_lists:
        return "constraint_unsupported"
    if key in ("max_calls", "max_duration"):
        return None  # counted by metering after the decision, never a decide() deny
    params = request.parameters
    if key == "data_classification":
        # Digest 7.1: "the data the action touches carries a label among the set (label
        # source: Resource policy / resource metadata; unknown or unlabelled data => cannot
        # establish => refuse)": the resource's catalog labels plus the object's own.
        resource = catalog.resources.get(request.audience)
        labels = list(resource.labels) if resource is not None else []
        extra = request.resource_properties.get("data_classification")
        if extra is not None:
            if not isinstance(extra, list) or not all(isinstance(x, str) for x in extra):
                return "parameter_violation"
            labels += extra
        ok = bool(labels) and all(label in bound for label in labels)
        return None if ok else "parameter_violation"
    name = bindings_of(catalog, request.audience, request.action_name).get(key)
    if not name:
        return "constraint_unsupported"  # the catalog binds nothing to it for this action
    if key in ("max_value", "max_total_value"):
        money = money_in(params, name)
        if money is None or money[1] != bound["currency"]:
            return "parameter_violation"  # incomparable: no currency conversion
        if key == "max_total_value":
            return None  # the cumulative sum is metering's; one call only has to be comparable
        return None if money[0] <= Decimal(bound["amount"]) else "parameter_violation"
    if params is None or name not in params:
        return "parameter_violation"
    value = params[name]
    if key == "geo":
        ok = isinstance(value, str) and bool(ISO_3166.fullmatch(value)) and value in bound
        return None if ok else "parameter_violation"
    values = value if isinstance(value, list) else [value]  # allow-list: every value allowed
    ok = bool(values) and all(isinstance(v, str) and v in bound for v in values)
    return None if ok else "parameter_violation"


def bound_is_valid(key: str, bound: Any, catalog: Catalog) -> bool:
    """A malformed bound cannot be evaluated (fail closed: constraint_unsupported)."""
    if key in ("max_value", "max_total_value"):
        return (isinstance(bound, dict) and set(bound) == {"amount", "currency"}
                and isinstance(bound["amount"], str)
                and bool(DECIMAL_STRING.fullmatch(bound["amount"]))
                and isinstance(bound["currency"], str)
                and bool(ISO_4217.fullmatch(bound["currency"])))
    if key == "max_calls":
        return type(bound) is int and bound >= 1
    if key == "max_duration":
        return (isinstance(bound, str) and bool(DURATION.fullmatch(bound))
                and bound not in ("P", "PT") and not bound.endswith("T")
                and any(c.isdigit() and c != "0" for c in bound))
    if key in ("geo", "data_classification") or key in catalog.allow_list_keys:
        pattern = ISO_3166 if key == "geo" else LABEL
        return (isinstance(bound, list) and bool(bound) and len(set(bound)) == len(bound)
                and all(isinstance(v, str) and pattern.fullmatch(v) for v in bound))
    return False


def entry_verdict(entry: Mapping[str, Any], catalog: Catalog, request: Any) -> str | None:
    """Digest 2.3.4 "Evaluate every constraint key of the matched entry"; 1.10 step 12:
    constraint_unsupported before parameter_violation."""
    verdicts: set[str | None] = set()
    for key, bound in entry.get("constraints", {}).items():
        known = key in EVALUABLE or key in catalog.allow_list_keys
        if known and not bound_is_valid(key, bound, catalog):
            verdicts.add("constraint_unsupported")
        else:
            verdicts.add(key_verdict(key, bound, catalog, request))
    verdicts.discard(None)
    if "constraint_unsupported" in verdicts:
        return "constraint_unsupported"
    return "parameter_violation" if verdicts else None


def mission_wide_verdict(bounds: Mapping[str, Any], catalog: Catalog, request: Any,
                         cls: str) -> str | None:
    """Mission-wide metered bounds (mission_intent.context, PROFILE.md 6) charge every gated
    call; a cumulative value bound needs the call's amount in its currency when the action
    carries an amount (digest 7.2/7.3)."""
    total = bounds.get("max_total_value")
    if total is None or cls == "non_consequential":
        return None
    binds = bindings_of(catalog, request.audience, request.action_name)
    name = binds.get("max_total_value") or binds.get("max_value")
    if not name:
        return None
    money = money_in(request.parameters, name)
    return None if money is not None and money[1] == total["currency"] else "parameter_violation"


# ------------------------------------------------------------------------------ decide


def decide(mission: Any, state: Any, request: Any, *, catalog: Catalog, now: datetime,
           policy_versions: Collection[str], mission_bounds: Mapping[str, Any],
           guarded: Mapping[str, str], tenants: Mapping[str, Any]) -> Verdict:
    """The decision for one request, before idempotency and metering (which run after it and
    may still turn a permit into a deny: digest 1.10 steps 17-18)."""
    try:
        check_view(mission, request, policy_versions)
        check_state(mission, state, request, now)
        check_credential(mission, request, now)
        delegates = delegates_of(mission, request)
        typed = [e for e in mission.authority_set if e.get("type") == ENTRY_TYPE]
        if delegates and not any(entry_admits(e, delegates) for e in typed):
            raise Denied("actor_invalid")  # the chain can hold nothing of this Mission
        granting = [(i, e) for i, e in granting_entries(mission, request)
                    if entry_admits(e, delegates)]
        if not granting:
            # Digest 1.10 step 8: a type whitelist, unsupported type vs out of authority.
            others = any(e.get("type") != ENTRY_TYPE for e in mission.authority_set)
            raise Denied("unsupported_authorization_type" if others else "out_of_authority")
        cls = action_class(catalog, request.audience, request.action_name)
        check_digest(request, cls)
        failures = [entry_verdict(entry, catalog, request) for _, entry in granting]
        if None not in failures:
            # Project choice: constraint_unsupported if any alternative failed on it.
            raise Denied("constraint_unsupported" if "constraint_unsupported" in failures
                         else "parameter_violation")
        chosen = granting[failures.index(None)][0]  # alternative grants: the first that holds
        reason = mission_wide_verdict(mission_bounds, catalog, request, cls)
        if reason:
            raise Denied(reason)
        check_resource_policy(request, guarded, tenants)
        return Verdict(True, None, chosen)
    except Denied as denied:
        return Verdict(False, denied.reason)


def check_resource_policy(request: Any, guarded: Mapping[str, str],
                          tenants: Mapping[str, Any]) -> None:
    """Digest 1.4 Resource policy: "action fails closed unless both Mission authority and
    Resource policy permit"; a guarding tenant that is not loaded refuses (fail closed)."""
    name = guarded.get(request.audience)
    if name is None:
        return
    tenant = tenants.get(name)
    if tenant is None or tenant.permits(request) is not True:
        raise Denied("resource_policy")
