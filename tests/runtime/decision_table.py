"""The PDP decision table as data (issue 7): one row per behaviour, reusable by any runner.

Each :class:`TableCase` names an Authority Set (the demo one by default), Mission tweaks, the
AuthZEN request (:func:`~tests.runtime.table_support.authzen_body` plus dotted-path
overrides), the Mission state, and the expected ``decision`` and ``reason`` (plus optional
details in ``expect``: class, class_source, contributing keys, charges, entry, use_limit).
``test_decision_table.py`` runs it in-process through ``request_from_authzen`` and ``decide``;
an HTTP runner can POST ``case.body(mission)`` to ``/access/v1/evaluation``.

``needs`` names what a case relies on beyond the demo tenant: ``extended_catalog`` (the demo
catalog plus ``table_support.EXTRA_RESOURCE`` and ``EXTRA_PURPOSE``), ``state_injection``
(a state or freshness only an in-process runner sets up directly), ``resource_policy`` (the
Cedar tenant in ``tenants`` guarding the audience), ``compile_options`` (class floors).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from missionbound.mission.record import MissionRecord
from missionbound.protocol.tool_manifest import CapabilitySource
from missionbound.runtime.digests import parameter_digest
from tests.runtime.table_support import (
    ADMIN,
    AUDIENCES,
    DELETE,
    DEMO_AUTHORITY,
    ERP,
    EXTRA_PURPOSE,
    ISSUER,
    MCP,
    MRA,
    NOW,
    SUBAGENT,
    USD500,
    apply_overrides,
    authzen_body,
    make_mission,
)

COMPILED = "<compiled policy_version>"


@dataclass(frozen=True)
class TableCase:
    id: str
    allowed: bool
    reason: str | None
    action: str = "invoices.read"
    audience: str = "erp"  # a key of AUDIENCES, or a literal URI
    parameters: dict[str, Any] | None = None
    # auto: the digest of ``parameters`` goes into the request when parameters are given
    digest: str | None = "auto"
    authority: tuple[dict[str, Any], ...] = DEMO_AUTHORITY
    mission: Mapping[str, Any] = field(default_factory=dict)  # make_mission tweaks
    request: Mapping[str, Any] = field(default_factory=dict)  # apply_overrides paths
    # state: {"state": str, "version": int, "valid_through_s": seconds from NOW (0 = now)}
    state: Mapping[str, Any] = field(default_factory=dict)
    compile: Mapping[str, Any] = field(default_factory=dict)  # class_floors, resource_policies
    tenants: Mapping[str, str] = field(default_factory=dict)  # tenant name -> Cedar policies
    expect: Mapping[str, Any] = field(default_factory=dict)  # class, class_source, keys, ...
    needs: frozenset[str] = frozenset()

    def mission_record(self) -> MissionRecord:
        return make_mission(self.authority, **self.mission)

    def body(self, mission: MissionRecord, policy_version: str | None = None) -> dict[str, Any]:
        """The evaluation body; :data:`COMPILED` in an override becomes ``policy_version``
        (the compiled artifact's, known only once the Mission is approved)."""
        audience = AUDIENCES.get(self.audience, self.audience)
        body = authzen_body(mission, action=self.action, audience=audience,
                            parameters=self.parameters)
        if self.digest == "auto":
            if self.parameters is not None:
                body["action"]["properties"]["parameter_digest"] = parameter_digest(
                    self.parameters)
        elif self.digest is not None:
            body["action"]["properties"]["parameter_digest"] = self.digest
        overrides = {path: (policy_version if value == COMPILED else value)
                     for path, value in self.request.items()}
        return apply_overrides(body, overrides)


def _entry(resource: str, actions: list[str], **members: Any) -> dict[str, Any]:
    return {"type": MRA, "resource": resource, "actions": actions, **members}


def _with(entry_index: int, **constraints: Any) -> tuple[dict[str, Any], ...]:
    """The demo Authority Set with entry ``entry_index``'s constraints replaced."""
    entries = copy.deepcopy(list(DEMO_AUTHORITY))
    entries[entry_index]["constraints"] = constraints
    return tuple(entries)


def _plus(*extra: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    return (*DEMO_AUTHORITY, *extra)



WIRE = {"invoice_id": "inv-acme-1", "vendor": "acme", "amount": "120.00", "currency": "USD"}
JOURNAL = {"invoice_id": "inv-acme-1", "amount": "120.00", "currency": "USD"}
EMAIL = {"invoice_id": "inv-acme-1", "to": "ap@acme.example"}
SCHEDULE = {"invoice_id": "inv-acme-1", "date": "2026-11-27"}
DELEGATED = {"context.actor": {"client_id": SUBAGENT, "act": [{"sub": SUBAGENT, "iss": ISSUER}]}}
HOLDS = 'permit(principal, action, resource);\nforbid(principal, action, resource) when ' \
        '{ resource == invoice::"inv-frozen" };\n'
GUARDED = {"resource_policies": {ERP: "erp-holds"}}


# Tool-manifest binding (runtime-digest 5.8): tool definitions read at approval, compiled in
# as ``compile={"tool_definitions": ...}`` (the HTTP runner approves with them).
def _tool(name: str, *required: str) -> dict[str, Any]:
    return {"name": name, "description": f"the {name} tool", "inputSchema": {
        "type": "object", "properties": {key: {"type": "string"} for key in required},
        "required": list(required)}}


WIRE_TOOL = _tool("execute_wire_transfer", *WIRE)
SCHEDULE_TOOL = _tool("schedule_payment", *SCHEDULE)
# schedule_payment is granted but not listed: bound with no digest.
BOUND = {"tool_definitions": {MCP: {"execute_wire_transfer": WIRE_TOOL,
                                    "get_invoice": _tool("get_invoice", "invoice_id")}}}
BOUND_ALL = {"tool_definitions": {MCP: {"execute_wire_transfer": WIRE_TOOL,
                                        "schedule_payment": SCHEDULE_TOOL}}}


def _source(name: str, definition: dict[str, Any], resource: str = MCP) -> dict[str, Any]:
    return {"context.capability_source": CapabilitySource.for_tool(
        resource, name, definition).to_json()}


def _journal(amount: Any, currency: Any = "USD") -> dict[str, Any]:
    return {**JOURNAL, "amount": amount, "currency": currency}


def _wire(**changes: Any) -> dict[str, Any]:
    return {k: v for k, v in {**WIRE, **changes}.items() if v is not DELETE}


def _case(id: str, allowed: bool, reason: str | None = None, **kw: Any) -> TableCase:
    return TableCase(id=id, allowed=allowed, reason=reason, **kw)


PV = "parameter_violation"
CU = "constraint_unsupported"
MI = "mission_inactive"
VI = "view_inconsistent"
OOA = "out_of_authority"
XC = frozenset({"extended_catalog"})
SI = frozenset({"state_injection"})
RP = frozenset({"resource_policy"})
WJ = {"action": "journal-entries.write", "audience": "erp"}
WW = {"action": "execute_wire_transfer", "audience": "mcp"}
WE = {"action": "send_remittance_email", "audience": "mcp"}
WS = {"action": "schedule_payment", "audience": "mcp"}

CASES: tuple[TableCase, ...] = (
    # ---- the six classes, permitted
    _case("read-permit", True, expect={"class": "consequential_read", "class_source":
          "deployment", "use_limit": None, "parameter_bound": False, "entry_index": 0}),
    _case("write-permit", True, **WJ, parameters=JOURNAL, expect={
          "class": "consequential_write", "use_limit": 1, "parameter_bound": True,
          "entry_index": 1}),
    _case("irreversible-permit-charges", True, **WW, parameters=WIRE, expect={
          "class": "irreversible", "use_limit": 1, "entry_index": 2,
          "charges": [("max_calls", 1, None), ("max_total_value", "120.00", "USD")]}),
    _case("external-commitment-permit", True, **WE, parameters=EMAIL,
          expect={"class": "external_commitment", "use_limit": 1, "entry_index": 5}),
    _case("non-consequential-permit", True, action="notes.draft", audience="admin",
          authority=_plus(_entry(ADMIN, ["notes.draft"])), needs=XC,
          expect={"class": "non_consequential", "use_limit": None}),
    _case("privileged-admin-permit", True, action="users.grant", audience="admin",
          parameters={"user": "carol"}, authority=_plus(_entry(ADMIN, ["users.grant"])),
          needs=XC, expect={"class": "privileged_admin", "use_limit": 1}),
    _case("privileged-admin-needs-digest", False, PV, action="users.grant", audience="admin",
          authority=_plus(_entry(ADMIN, ["users.grant"])), needs=XC,
          expect={"keys": ("parameter_digest",)}),
    _case("purpose-raises-read-to-write", False, PV, mission={"purpose": EXTRA_PURPOSE},
          needs=XC, expect={"class": "consequential_write", "class_source": "purpose"}),
    _case("purpose-raised-read-with-digest", True, mission={"purpose": EXTRA_PURPOSE},
          parameters={"invoice_id": "inv-acme-1"}, needs=XC,
          expect={"class": "consequential_write", "use_limit": 1}),
    _case("floor-raises-read", False, PV, compile={"class_floors": {
          ERP: {"invoices.*": "irreversible_action"}}}, needs=frozenset({"compile_options"}),
          expect={"class": "irreversible", "class_source": "resource_floor"}),
    _case("floor-unknown-value-is-high", True, parameters={"invoice_id": "inv-acme-1"},
          compile={"class_floors": {ERP: {"invoices.read": "catastrophic"}}},
          needs=frozenset({"compile_options"}),
          expect={"class": "privileged_admin", "class_source": "resource_floor",
                  "use_limit": 1}),
    _case("floor-never-lowers", True, **WW, parameters=WIRE, compile={"class_floors": {
          MCP: {"execute_wire_transfer": "non_consequential"}}},
          needs=frozenset({"compile_options"}),
          expect={"class": "irreversible", "class_source": "deployment"}),
    # ---- max_value: at, below, above, currency, malformed
    _case("max-value-at-cap", True, **WJ, parameters=_journal("500.00")),
    _case("max-value-at-cap-no-decimals", True, **WJ, parameters=_journal("500")),
    _case("max-value-below-cap", True, **WJ, parameters=_journal("0.01")),
    _case("max-value-above-cap", False, PV, **WJ, parameters=_journal("500.01"),
          expect={"keys": ("max_value",), "entry_index": 1}),
    _case("max-value-18-digits-below", True, **WJ,
          parameters=_journal("499.999999999999999999")),
    _case("max-value-18-digits-above", False, PV, **WJ,
          parameters=_journal("500.000000000000000001"), expect={"keys": ("max_value",)}),
    _case("max-value-other-currency", False, PV, **WJ, parameters=_journal("1.00", "EUR")),
    _case("max-value-malformed-amount", False, PV, **WJ, parameters=_journal("4,235.0")),
    _case("max-value-amount-number", False, PV, **WJ, parameters=_journal(120)),
    _case("max-value-amount-missing", False, PV, **WJ,
          parameters={"invoice_id": "inv-acme-1", "currency": "USD"},
          expect={"keys": ("max_value",)}),
    _case("max-value-currency-missing", False, PV, **WJ,
          parameters={"invoice_id": "inv-acme-1", "amount": "1.00"}),
    _case("max-value-currency-malformed", False, PV, **WJ, parameters=_journal("1.00", "usd")),
    _case("max-value-money-object", True, **WJ,
          parameters={"invoice_id": "inv-1", "amount": {"amount": "10.00", "currency": "USD"}}),
    _case("max-value-digest-only", False, PV, **WJ, parameters=None,
          digest="sha-256:WPVi6EnQ7H9Fh-qk9ADxmTg8zruOdVUX1esl-v3TfCI",
          expect={"keys": ("max_value",)}),
    _case("max-value-float-amount", False, PV, **WJ, parameters=_journal(120.5),
          digest=None, expect={"keys": ("parameters",)}),
    # ---- allow-lists
    _case("vendors-allowed", True, **WW, parameters=_wire(vendor="acme")),
    _case("vendors-not-allowed", False, PV, **WW, parameters=_wire(vendor="globex"),
          expect={"keys": ("vendors",)}),
    _case("vendors-missing", False, PV, **WW, parameters=_wire(vendor=DELETE),
          expect={"keys": ("vendors",)}),
    _case("vendors-and-cap-both-fail", False, PV, **WW,
          parameters=_wire(vendor="globex", amount="900.00"),
          expect={"keys": ("max_value", "vendors")}),
    _case("wire-total-other-currency", False, PV, **WW, parameters=_wire(currency="EUR"),
          expect={"keys": ("max_total_value", "max_value")}),
    _case("recipients-allowed", True, **WE, parameters=EMAIL),
    _case("recipients-list-allowed", True, **WE, parameters={
          **EMAIL, "to": ["ap@acme.example", "billing@acme.example"]}),
    _case("recipients-list-one-outside", False, PV, **WE, parameters={
          **EMAIL, "to": ["ap@acme.example", "cfo@initech.example"]},
          expect={"keys": ("recipients",)}),
    _case("recipients-not-allowed", False, PV, **WE,
          parameters={**EMAIL, "to": "x@evil.example"}),
    # ---- geo, data_classification, aal, unknown keys
    *(_case(f"geo-{name}", ok, None if ok else PV, action="reports.export", audience="admin",
            parameters=params, authority=_plus(_entry(ADMIN, ["reports.export"],
                                                      constraints={"geo": ["DE", "US"]})),
            needs=XC)
      for name, ok, params in (("inside", True, {"country": "US"}),
                               ("outside", False, {"country": "FR"}),
                               ("malformed", False, {"country": "usa"}),
                               ("missing", False, {}))),
    _case("geo-unbound-action", False, CU, authority=_with(0, geo=["US"]),
          expect={"keys": ("geo",)}),
    _case("classification-within", True, authority=_with(0, data_classification=["finance"])),
    _case("classification-outside", False, PV, authority=_with(0, data_classification=["hr"]),
          expect={"keys": ("data_classification",)}),
    _case("classification-object-label-outside", False, PV,
          authority=_with(0, data_classification=["finance"]),
          request={"resource.properties.data_classification": ["pii"]}),
    _case("classification-unlabelled", False, PV, action="notes.draft", audience="admin",
          authority=_plus(_entry(ADMIN, ["notes.draft"],
                                 constraints={"data_classification": ["finance"]})),
          needs=XC),
    _case("aal-unsupported", False, CU, action="reports.export", audience="admin",
          parameters={"country": "US"}, needs=XC,
          authority=_plus(_entry(ADMIN, ["reports.export"], constraints={
              "aal": {"value": "urn:missionbound:acr:mfa"}})), expect={"keys": ("aal",)}),
    _case("unknown-key", False, CU, authority=_with(0, **{"x-risk-score": ["low"]}),
          expect={"keys": ("x-risk-score",)}),
    _case("max-derivations-in-entry", False, CU, authority=_with(0, max_derivations=3)),
    _case("unsupported-before-violation", False, CU, **WJ, parameters=_journal("900.00"),
          authority=_with(1, max_value=USD500, **{"x-risk-score": ["low"]}),
          expect={"keys": ("max_value", "x-risk-score")}),
    # ---- alternative grants and metering
    _case("alternative-grant-second-wins", True, **WJ, parameters=_journal("800.00"),
          authority=_plus(_entry(ERP, ["journal-entries.write"], constraints={
              "max_value": {"amount": "1000.00", "currency": "USD"}})),
          expect={"entry_index": 6}),
    _case("alternative-grants-all-fail", False, PV, **WJ, parameters=_journal("1800.00"),
          authority=_plus(_entry(ERP, ["journal-entries.write"], constraints={
              "max_value": {"amount": "1000.00", "currency": "USD"}})),
          expect={"keys": ("max_value",), "entry_index": 1}),
    _case("duration-charge", True, **WS, parameters=SCHEDULE,
          authority=_with(4, max_duration="PT1H"),
          expect={"charges": [("max_duration", 60, None)]}),
    _case("mission-wide-charges", True, **WS, parameters=SCHEDULE,
          mission={"context": {"max_calls": 10}},
          expect={"charges": [("max_calls", 1, None)], "mission_charge": True}),
    # ---- parameter_digest
    _case("write-digest-missing", False, PV, **WS, parameters=SCHEDULE, digest=None,
          expect={"keys": ("parameter_digest",)}),
    _case("write-no-parameters-no-digest", False, PV, **WS),
    _case("write-digest-only", True, **WS, digest="sha-256:" + "A" * 43),
    _case("digest-mismatch", False, PV, **WS, parameters=SCHEDULE,
          digest="sha-256:WPVi6EnQ7H9Fh-qk9ADxmTg8zruOdVUX1esl-v3TfCI"),
    _case("digest-other-algorithm", False, PV, **WS, digest="sha-512:abc"),
    _case("read-digest-mismatch", False, PV, parameters={"invoice_id": "inv-acme-1"},
          digest="sha-256:" + "B" * 43),
    # ---- actor
    _case("delegated-read", True, request=DELEGATED),
    _case("delegated-wire-out-of-authority", False, OOA, **WW, parameters=WIRE,
          request=DELEGATED),
    _case("delegated-act-wins-over-client-id", False, OOA, **WW, parameters=WIRE,
          request={"context.actor": {"client_id": "demo-agent",
                                     "act": [{"sub": SUBAGENT, "iss": ISSUER}]}}),
    _case("delegated-too-deep", False, "actor_invalid", request={"context.actor.act": [
          {"sub": SUBAGENT}, {"sub": SUBAGENT}]}),
    # context.actor.act runs root to leaf and may name the Mission's own client first
    # (runtime-digest 3.3): that hop is the root, not a delegate.
    _case("act-names-only-the-missions-client", True, request={"context.actor.act": [
          {"sub": "demo-agent", "iss": ISSUER}]}),
    _case("act-root-then-delegate", True, request={"context.actor": {
          "client_id": SUBAGENT, "act": [{"sub": "demo-agent", "iss": ISSUER},
                                         {"sub": SUBAGENT, "iss": ISSUER}]}}),
    # Every hop must be an allowed delegate at its depth, not only the last (never widen).
    _case("delegated-middle-hop-not-allowed", False, "actor_invalid",
          authority=(_entry(MCP, ["get_invoice"], delegation={
              "max_depth": 2, "allowed_delegates": [{"client_id": "other-agent"}]}),),
          request={"action.name": "get_invoice", "resource.properties.audience": MCP,
                   "context.actor": {"client_id": "other-agent", "act": [
                       {"sub": SUBAGENT}, {"sub": "other-agent"}]}}),
    _case("delegated-unknown-delegate", False, "actor_invalid",
          request={"context.actor.act": [{"sub": "evil-agent"}]}),
    _case("other-client", False, "actor_invalid",
          request={"context.actor.client_id": "someone-else"}),
    _case("no-actor", False, "actor_invalid", request={"context.actor": DELETE}),
    # ---- credential, time, state
    _case("credential-expired", False, "credential_invalid", request={
          "context.credential.expires_at": "2026-11-26T11:59:59Z"}),
    _case("credential-expires-now", False, "credential_invalid", request={
          "context.credential.expires_at": "2026-11-26T12:00:00Z"}),
    _case("subject-mismatch", False, "credential_invalid", request={"subject.id": "mallory"}),
    _case("window-capped-by-credential", True, request={
          "context.credential.expires_at": "2026-11-26T12:00:20Z"},
          expect={"valid_until_s": 20}),
    _case("mission-expired", False, MI, mission={"expiry": NOW}, needs=SI),
    *(_case(f"state-{state}", False, MI, state={"state": state}, needs=SI)
      for state in ("suspended", "revoked", "completed", "expired", "pending_approval",
                    "rejected", "paused")),
    _case("observed-suspended", False, MI, request={"context.mission_state_observation": {
          "state": "suspended", "mode": "fresh", "freshness_at": "2026-11-26T12:00:00Z"}}),
    _case("observed-version-mismatch", False, "stale_state", request={
          "context.mission_state_observation": {"state": "active", "version": 1,
                                                "mode": "fresh"}}),
    _case("observed-version-match", True, request={"context.mission_state_observation": {
          "state": "active", "version": 2, "mode": "fresh"}}),
    _case("stale-state", False, "stale_state", state={"valid_through_s": -1}, needs=SI),
    _case("state-lease-caps-window", True, state={"valid_through_s": 5}, needs=SI,
          expect={"valid_until_s": 5}),
    # ---- view consistency
    _case("wrong-authority-hash", False, VI, request={
          "context.mission.authority_hash": "sha-256:" + "C" * 43}),
    _case("wrong-mission-id", False, VI, request={
          "context.mission.id": "msn_someOtherMissionAAAAAAAAAAAAAA"}),
    _case("wrong-issuer", False, VI, request={"context.mission.issuer": "https://evil.example"}),
    _case("wrong-policy-version", False, VI, request={
          "context.mission.policy_version": "sha-256:" + "D" * 43}),
    _case("policy-version-compiled", True, request={"context.mission.policy_version": COMPILED}),
    _case("policy-version-derivation", True, request={
          "context.mission.policy_version": "demo-catalog:1"}),
    # ---- authority
    _case("unknown-action", False, OOA, action="delete_everything",
          expect={"class": "privileged_admin", "class_source": "default"}),
    _case("audience-trailing-slash", False, OOA, audience=ERP + "/"),
    _case("audience-case-differs", False, OOA, audience=ERP.replace("https://as", "https://AS")),
    _case("action-of-other-resource", False, OOA, action="journal-entries.write",
          audience="mcp", parameters=JOURNAL),
    _case("unsupported-type-present", False, "unsupported_authorization_type",
          action="transfer", authority=_plus({"type": "payment_initiation", "x": 1})),
    _case("unsupported-type-but-granted", True,
          authority=_plus({"type": "payment_initiation", "x": 1})),
    # ---- resource policy
    _case("resource-policy-permits", True, compile=GUARDED, tenants={"erp-holds": HOLDS},
          needs=RP),
    _case("resource-policy-refuses", False, "resource_policy", compile=GUARDED,
          tenants={"erp-holds": HOLDS}, request={"resource.id": "inv-frozen"}, needs=RP),
    _case("resource-policy-tenant-missing", False, "resource_policy", compile=GUARDED,
          needs=RP),
    _case("resource-policy-other-audience", True, **WS, parameters=SCHEDULE, compile=GUARDED,
          needs=RP),
    # ---- tool-manifest binding (capability_drift)
    _case("capability-bound-permit", True, **WW, parameters=WIRE, compile=BOUND,
          request=_source("execute_wire_transfer", WIRE_TOOL), expect={"use_limit": 1}),
    _case("capability-definition-changed", False, "capability_drift", **WW, parameters=WIRE,
          compile=BOUND, request=_source("execute_wire_transfer",
                                         {**WIRE_TOOL, "description": "pay twice"})),
    _case("capability-source-missing", False, "capability_drift", **WW, parameters=WIRE,
          compile=BOUND),
    _case("capability-source-without-digest", False, "capability_drift", **WW,
          parameters=WIRE, compile=BOUND, request={"context.capability_source": {
              "tool_id": f"{MCP}#execute_wire_transfer"}}),
    _case("capability-other-tool-id", False, "capability_drift", **WW, parameters=WIRE,
          compile=BOUND, request=_source("get_invoice", WIRE_TOOL)),
    _case("capability-not-listed-at-approval", False, "capability_drift", **WS,
          parameters=SCHEDULE, compile=BOUND, request=_source("schedule_payment",
                                                              SCHEDULE_TOOL)),
    _case("capability-listed-permit", True, **WS, parameters=SCHEDULE, compile=BOUND_ALL,
          request=_source("schedule_payment", SCHEDULE_TOOL)),
    _case("capability-unbound-ignores-source", True, **WW, parameters=WIRE,
          request=_source("get_invoice", {"name": "anything"})),
    _case("capability-unbound-resource", True, **WJ, parameters=JOURNAL, compile=BOUND),
    # ---- precedence: two failures, the earlier check's reason
    _case("prec-view-before-state", False, VI, state={"state": "revoked"}, needs=SI,
          request={"context.mission.authority_hash": "sha-256:" + "C" * 43}),
    _case("prec-state-before-credential", False, MI, state={"state": "suspended"}, needs=SI,
          request={"context.credential.expires_at": "2026-11-26T11:00:00Z"}),
    _case("prec-inactive-before-stale", False, MI, needs=SI,
          state={"state": "suspended", "valid_through_s": -10}),
    _case("prec-credential-before-actor", False, "credential_invalid", request={
          "context.credential.expires_at": "2026-11-26T11:00:00Z",
          "context.actor.client_id": "someone-else"}),
    _case("prec-actor-before-authority", False, "actor_invalid", action="delete_everything",
          request={"context.actor.client_id": "someone-else"}),
    _case("prec-authority-before-digest", False, OOA, action="execute_wire_transfer",
          audience="erp", digest=None),
    _case("prec-authority-before-drift", False, OOA, action="delete_invoice", audience="mcp",
          compile=BOUND),
    _case("prec-drift-before-digest", False, "capability_drift", **WW, parameters=WIRE,
          digest=None, compile=BOUND),
    _case("prec-digest-before-constraints", False, PV, **WJ, parameters=_journal("1.00"),
          digest=None, authority=_with(1, **{"x-risk-score": ["low"]}),
          expect={"keys": ("parameter_digest",)}),
    _case("prec-constraints-before-resource-policy", False, PV, **WJ,
          parameters=_journal("900.00"), compile=GUARDED, tenants={"erp-holds": HOLDS},
          request={"resource.id": "inv-frozen"}, needs=RP, expect={"keys": ("max_value",)}),
)
