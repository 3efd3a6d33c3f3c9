"""Hypothesis strategies for the PDP differential test: realistic Missions over the demo tenant
catalog and AuthZEN-shaped decision requests aimed at them.

The strategies lean towards the edges the PDP must get right (PROFILE.md sections 4, 6, 7, 9
and 12; runtime-digest sections 1.4, 1.10, 2.3, 3.4, 4.3, 7.1): amounts at, just below and just
above a bound, the wrong currency, malformed amounts, missing parameters, a missing or wrong
``parameter_digest``, audiences and actions in and out of the Authority Set, delegated actors
the entry allows or not, expired credentials, a wrong ``authority_hash`` or Mission id, and
Missions that are not active. Most draws are still well-formed, so permits are common too.

Everything here is plain data; the test turns a :class:`Case` into the PDP's input types.
"""

from __future__ import annotations

import hashlib
from base64 import urlsafe_b64encode
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any, TypeVar

from hypothesis import strategies as st

from missionbound.config import load_settings
from missionbound.mission.anchors import authority_hash
from missionbound.mission.authority import sort_authority_set
from missionbound.mission.canonical import canonicalize
from missionbound.mission.catalog import Catalog, default_action_groups
from missionbound.tenant import load_tenant

T = TypeVar("T")
ISSUER = "https://as.test"
ERP = f"{ISSUER}/demo/erp"
MCP = f"{ISSUER}/demo/mcp"
NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
AGENT = "demo-agent"
SUBAGENT = "demo-subagent"
SUBJECT = "alice"
MISSION_IDS = ("msn_differentialAAAAAAAAAAAAAAAAAA", "msn_differentialBBBBBBBBBBBBBBBBBB")

STATES = ("active", "suspended", "revoked", "completed", "expired", "pending_approval",
          "rejected", "ACTIVE", "paused")  # the last two are not states: they must fail closed
VENDORS = ("acme", "globex", "initech")
RECIPIENTS = ("ap@acme.example", "billing@globex.example", "cfo@initech.example")
AMOUNTS = ("0.01", "100.00", "120.00", "499.00", "500", "500.00", "5000.00")
GEO = ("US", "DE", "FR")
LABELS = ("finance", "pii", "public")
UNKNOWN_KEYS = ("x-risk-score", "purpose_binding", "max_derivations_per_action")
FOREIGN_AUDIENCES = (ERP + "/", "https://AS.test/demo/erp", "https://evil.test/api", ISSUER)
UNKNOWN_ACTIONS = ("delete_everything", "invoices.*", "Invoices.read")
HOLDS_TENANT = "erp-holds"
FROZEN_INVOICE = "inv-frozen"


class LegalHolds:
    """A resource-policy tenant (runtime/decision.py ResourcePolicy): a legal hold on one
    invoice; everything else is allowed. Plain Python, given to the PDP and the reference."""

    def permits(self, request: Any) -> bool:
        return bool(request.resource_id != FROZEN_INVOICE)


@cache
def demo_catalog() -> Catalog:
    """The demo tenant's catalog, loaded the way the server loads it (``{issuer}`` replaced)."""
    return load_tenant(load_settings(issuer=ISSUER)).catalog


def digest(value: Any) -> str:
    """``sha-256:`` + base64url(SHA-256(JCS(value))) (runtime-digest 4.3); raises on values
    JCS cannot carry (floats are refused by the canonicaliser)."""
    raw = hashlib.sha256(canonicalize(value)).digest()
    return "sha-256:" + urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class MissionData:
    mission_id: str
    origin: str
    subject_sub: str
    client_id: str
    authority_set: list[dict[str, Any]]
    authority_hash: str
    mission_expiry: datetime
    state: str
    version: int
    valid_through: datetime
    # Mission-wide metered bounds (mission_intent.context), e.g. {"max_total_value": {...}}
    intent_context: dict[str, Any] = field(default_factory=dict)
    # resource URI -> resource-policy tenant guarding it (compile_policy resource_policies)
    guarded: dict[str, str] = field(default_factory=dict)
    tenant_loaded: bool = True  # False: the guarding tenant is missing at decision time


@dataclass(frozen=True)
class RequestData:
    """Keyword arguments of ``DecisionRequest`` (the contract in /work/plan/issue7.md)."""

    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    mission: MissionData
    request: RequestData
    # "compiled": the compiled artifact's policy_version, "derivation": the record's
    # derivation policy version, "none": omitted, "wrong": another one
    policy_version_choice: str = "compiled"
    now: datetime = NOW

    def __repr__(self) -> str:  # hypothesis prints this for the failing example
        return (f"Case(mission={self.mission!r},\n     request={self.request.fields!r},\n"
                f"     policy_version={self.policy_version_choice!r})")


# ------------------------------------------------------------------------------ cheap draws
# Hypothesis spends ~40 us per draw; a case makes some seventy choices, which would cost more
# than compiling the Mission and deciding. So each composite draws ONE large integer and reads
# its choices off it as mixed-radix digits (:class:`Dice`). Choice 0 is always the common,
# well-formed one, so the integer 0 is the plainest case and hypothesis, shrinking the integer
# towards 0, shrinks a failure towards it too.

DICE_BITS = 512


class Dice:
    """Choices read off one integer: ``roll(n)`` is the next digit in base ``n``."""

    def __init__(self, value: int) -> None:
        self.value = value

    def roll(self, n: int) -> int:
        self.value, digit = divmod(self.value, n)
        return digit


# Bytes, not st.integers: hypothesis draws most large bounded integers small, which would
# leave every later choice at 0. Little-endian, so the first choices read the first bytes.
_DICE = st.binary(min_size=DICE_BITS // 8, max_size=DICE_BITS // 8).map(
    lambda raw: Dice(int.from_bytes(raw, "little")))


def roll(draw: Dice, n: int) -> int:
    """An integer in [0, n)."""
    return draw.roll(n)


def pick(draw: Dice, options: Sequence[T]) -> T:
    return options[roll(draw, len(options))]


def rarely(draw: Dice, one_in: int) -> bool:
    return roll(draw, one_in) == one_in - 1


def subset(draw: Dice, options: tuple[str, ...] | list[str]) -> list[str]:
    """A non-empty subset, as a sorted list (one draw: a bit mask)."""
    mask = roll(draw, 2 ** len(options) - 1) + 1
    return sorted(o for i, o in enumerate(options) if mask >> i & 1)


# ------------------------------------------------------------------------------ Missions


def money(draw: Dice) -> dict[str, str]:
    currency = "EUR" if rarely(draw, 6) else "USD"
    return {"amount": pick(draw, AMOUNTS), "currency": currency}


def constraint_value(draw: Dice, key: str) -> Any:
    if key in ("max_value", "max_total_value"):
        return money(draw)
    if key == "max_calls":
        return 1 + roll(draw, 5)
    if key == "max_duration":
        return pick(draw, ("PT1H", "P1D"))
    if key == "vendors":
        return subset(draw, VENDORS)
    if key == "recipients":
        return subset(draw, RECIPIENTS)
    if key == "geo":
        return subset(draw, GEO)
    if key == "data_classification":
        return subset(draw, LABELS)
    if key == "aal":
        return {"value": "urn:missionbound:acr:mfa", "freshness_seconds": 300}
    if key == "max_derivations":
        return 3
    return pick(draw, ("high", 3, ["a"]))  # an unknown key's value


_EXTRA_KEYS = ("geo", "data_classification", "max_duration", "aal", "max_derivations",
               *UNKNOWN_KEYS)


@cache
def _action_groups() -> dict[str, list[list[str]]]:
    return {uri: default_action_groups(resource, sorted(resource.actions))
            for uri, resource in demo_catalog().resources.items()}


def entry(draw: Dice) -> dict[str, Any]:
    """One ``mission_resource_access`` entry over a demo catalog resource."""
    resource = demo_catalog().resources[pick(draw, (MCP, ERP))]
    if rarely(draw, 10):  # actions the AS would never group (a key not every action binds)
        actions = subset(draw, sorted(resource.actions))[:3]
    else:  # as the AS derives entries: actions sharing accepted keys and delegability
        actions = subset(draw, pick(draw, _action_groups()[resource.uri]))
    accepted = sorted({key for name in actions
                       for key in resource.actions[name].constraint_bindings})
    constraints: dict[str, Any] = {}
    for key in accepted:
        if not rarely(draw, 4):  # mostly present: the bounds are what we test
            constraints[key] = constraint_value(draw, key)
    if rarely(draw, 20):  # a Common Constraint this action does not bind, or one nobody knows
        key = pick(draw, _EXTRA_KEYS)
        constraints[key] = constraint_value(draw, key)
    result: dict[str, Any] = {"type": "mission_resource_access", "resource": resource.uri,
                              "actions": actions}
    if constraints:
        result["constraints"] = constraints
    if rarely(draw, 3):
        delegation: dict[str, Any] = {"max_depth": pick(draw, (1, 1, 2))}
        delegates = pick(draw, ((SUBAGENT,), (SUBAGENT,), (SUBAGENT, "other-agent"),
                                ("other-agent",), None))
        if delegates is not None:
            delegation["allowed_delegates"] = [{"client_id": c} for c in delegates]
        result["delegation"] = delegation
    return result


@st.composite
def missions(hypothesis_draw: st.DrawFn) -> MissionData:
    draw = hypothesis_draw(_DICE)
    authority_set = sort_authority_set([entry(draw) for _ in range(1 + roll(draw, 3))])
    if rarely(draw, 25):  # an entry type this PDP does not evaluate
        authority_set.append({"type": "payment_initiation", "locations": [ERP],
                              "actions": ["invoices.read"]})
    expiry_offset = 86400 if not rarely(draw, 20) else pick(draw, (3600, 30, 0, -1, -3600))
    state = "active" if not rarely(draw, 25) else pick(draw, STATES)
    context: dict[str, Any] = {}
    if rarely(draw, 8):
        context = pick(draw, ({"max_calls": 10}, {"max_total_value": money(draw)},
                              {"max_duration": "P1D", "max_calls": 2}))
    guarded: dict[str, str] = {}
    if rarely(draw, 5):
        guarded = {pick(draw, (ERP, MCP)): HOLDS_TENANT}
    return MissionData(
        mission_id=pick(draw, MISSION_IDS),
        origin=ISSUER,
        subject_sub=SUBJECT,
        client_id=AGENT,
        authority_set=authority_set,
        authority_hash=authority_hash(ISSUER, authority_set),
        mission_expiry=NOW + timedelta(seconds=expiry_offset),
        state=state,
        version=2 + roll(draw, 3),
        valid_through=NOW - timedelta(seconds=1) if rarely(draw, 40) else NOW,
        intent_context=context,
        guarded=guarded,
        tenant_loaded=not rarely(draw, 6),
    )


# ------------------------------------------------------------------------------ requests


def _bounds(mission: MissionData, audience: str) -> list[dict[str, Any]]:
    return [value for e in mission.authority_set if e.get("resource") == audience
            for key, value in e.get("constraints", {}).items()
            if key in ("max_value", "max_total_value") and isinstance(value, dict)]


_DELTAS = (Decimal(0), Decimal("-0.01"), Decimal("0.01"), Decimal(0), Decimal("0.000001"))
_MALFORMED_AMOUNTS = ("4,235.0", "1e3", "-1.00", " 5.00", "", "12.", ".5", "0x10", "五", "01.00",
                      100, True, None, {"amount": "1.00"})


def amount_value(draw: Dice, bounds: list[dict[str, Any]]) -> Any:
    """An amount at, just under or just over a bound, or a malformed one."""
    choice = roll(draw, 20)
    if bounds and choice < 15:
        bound = Decimal(pick(draw, bounds)["amount"])
        value = bound + pick(draw, _DELTAS)
        return f"{value:.2f}" if rarely(draw, 3) else str(value)
    if choice < 18:
        return pick(draw, (*AMOUNTS, "0", "10000.00", "1000000.00"))
    return pick(draw, _MALFORMED_AMOUNTS)


def parameters_for(draw: Dice, mission: MissionData, audience: str,
                   action: str) -> dict[str, Any]:
    resource = demo_catalog().resources.get(audience)
    declared = resource.actions.get(action) if resource is not None else None
    bindings = dict(declared.constraint_bindings) if declared is not None else {}
    params: dict[str, Any] = {"invoice_id": pick(draw, ("inv-acme-1", "inv-globex-1"))}
    if "max_value" in bindings or "max_total_value" in bindings or rarely(draw, 10):
        params["amount"] = amount_value(draw, _bounds(mission, audience))
        params["currency"] = "USD" if not rarely(draw, 6) else pick(draw, ("EUR", "usd", "",
                                                                           840))
    if "vendors" in bindings:
        params["vendor"] = pick(draw, VENDORS) if not rarely(draw, 5) else \
            pick(draw, ("ACME", "", "evil-corp", 7))
    if "recipients" in bindings:
        params["to"] = pick(draw, RECIPIENTS) if not rarely(draw, 5) else \
            pick(draw, ("x@evil.example", ["ap@acme.example"]))
    if rarely(draw, 10):
        params["date"] = "2026-11-30"
    if rarely(draw, 10):  # a parameter goes missing (often the bound one)
        params.pop(pick(draw, sorted(params)))
    if rarely(draw, 100):
        params["ratio"] = 0.5  # a float: decimals travel as strings, no digest commits to it
    return params


_WRONG_DIGESTS = ("sha-256:p8LwnVQVzqLrb3wv9yYcg8mWVOpxbU3nHs9YhBq0hKk", "md5:abc",
                  "sha-256:", "SHA-256:" + "A" * 43)


def parameter_digest_for(draw: Dice, params: dict[str, Any] | None) -> str | None:
    choice = roll(draw, 20)
    if choice < 16 and params is not None:
        return digest(params)
    if choice < 18:
        return None
    return pick(draw, _WRONG_DIGESTS)


def actor_for(draw: Dice, mission: MissionData) -> tuple[str | None, tuple[dict[str, Any],
                                                                                 ...]]:
    """(client_id, act root->leaf). ``act`` is the token's delegation chain projected root to
    leaf (runtime-digest 3.3 ``context.actor``): the delegates below the approved agent, the
    leaf being the immediate actor; some chains start at the agent itself, as digest 3.3's
    worked example does. Most requests come from the agent itself (no ``act``); some from a
    delegate the entry names or not, some too deep, some from another client.
    Only shapes the AuthZEN reader lets through (runtime/request.py refuses a hop without a
    non-empty ``sub`` with a 400)."""
    choice = roll(draw, 20)
    sub = {"sub": SUBAGENT, "iss": ISSUER}
    if choice < 14:
        return mission.client_id, ()
    if choice < 18:
        return pick(draw, (SUBAGENT, None, mission.client_id)), (sub,)
    return pick(draw, (
        ("other-agent", ({"sub": "other-agent"},)),  # a delegate no entry names
        (SUBAGENT, (sub, {"sub": SUBAGENT})),  # deeper than max_depth 1
        ("third-agent", (sub, {"sub": "other-agent"})),
        (mission.client_id, ({"sub": mission.client_id, "iss": ISSUER},)),  # the agent itself
        (SUBAGENT, ({"sub": mission.client_id}, sub)),
        ("intruder", ()),  # another client, not delegated
        (None, ()),  # no actor at all
        (SUBAGENT, ()),  # the delegate's client_id without its act chain
    ))


def _sometimes(draw: Dice, good: Any, bad: tuple[Any, ...], one_in: int = 60) -> Any:
    return pick(draw, bad) if rarely(draw, one_in) else good


_POLICY_VERSION_CHOICES = ("compiled",) * 20 + ("derivation",) * 3 + ("none",) * 6 + ("wrong",)
_CATALOG_ACTIONS = {ERP: ("invoices.read", "journal-entries.write"),
                    MCP: ("execute_wire_transfer", "get_invoice", "list_invoices",
                          "schedule_payment", "send_remittance_email")}


@st.composite
def requests_for(hypothesis_draw: st.DrawFn, mission: MissionData) -> RequestData:
    draw = hypothesis_draw(_DICE)
    typed = [e for e in mission.authority_set if e.get("type") == "mission_resource_access"]
    choice = roll(draw, 10)
    if choice < 7:  # aimed at an entry of the Mission
        target = pick(draw, typed)
        audience, action = target["resource"], pick(draw, target["actions"])
    elif choice < 9:  # a catalog action the Mission may or may not hold
        audience = pick(draw, (MCP, ERP))
        action = pick(draw, _CATALOG_ACTIONS[audience])
    else:  # somewhere else entirely
        audience = pick(draw, (ERP, MCP, *FOREIGN_AUDIENCES))
        action = pick(draw, (*UNKNOWN_ACTIONS, "invoices.read", "get_invoice"))

    params: dict[str, Any] | None = parameters_for(draw, mission, audience, action)
    if rarely(draw, 12):
        params = None
    client_id, act = actor_for(draw, mission)
    other_id = MISSION_IDS[1] if mission.mission_id == MISSION_IDS[0] else MISSION_IDS[0]
    fields: dict[str, Any] = {
        "subject_type": "user",
        "subject_id": _sometimes(draw, mission.subject_sub, ("bob", "mallory")),
        "subject_iss": _sometimes(draw, ISSUER, (None, "https://idp.example")),
        "audience": audience,
        "resource_type": "mcp_tool" if audience == MCP else "erp_api",
        "resource_id": "inv-acme-1" if not rarely(draw, 6) else FROZEN_INVOICE,
        "resource_properties": {"audience": audience} if not rarely(draw, 15) else
        {"audience": audience, "data_classification": pick(draw, (["finance"], ["pii"],
                                                                  ["finance", "pii"], []))},
        "action_name": action,
        "parameters": params,
        "parameter_digest": parameter_digest_for(draw, params),
        "idempotency_key": _sometimes(draw, None, ("idk-1",), 10),
        "mission_id": _sometimes(draw, mission.mission_id, (other_id, "msn_unknown")),
        "mission_issuer": _sometimes(draw, mission.origin, ("https://other-as.test",)),
        "authority_hash": _sometimes(draw, mission.authority_hash,
                                     ("sha-256:" + "A" * 43, authority_hash(ISSUER, []))),
        "policy_version": pick(draw, _POLICY_VERSION_CHOICES),  # resolved by the test
        "observed_state": _sometimes(draw, None, ("active", "active", "suspended", "revoked"),
                                     20),
        "observed_version": _sometimes(draw, None, (mission.version, mission.version - 1,
                                                    mission.version + 1), 20),
        "client_id": client_id,
        "act": act,
        "credential_issuer": _sometimes(draw, ISSUER, (None, "https://other-as.test")),
        "credential_expires_at": _sometimes(
            draw, NOW + timedelta(seconds=300), (NOW, NOW - timedelta(seconds=1), None), 25),
        "confirmation": None,
    }
    return RequestData(fields)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    mission = draw(missions())
    request = draw(requests_for(mission))
    return Case(mission=mission, request=request,
                policy_version_choice=request.fields.pop("policy_version"))
