"""The demo story (DESIGN.md "The demo tenant") as a list of steps, played with the agent SDK
(:mod:`missionbound.client`) against a running instance, judged, never printed here.

*"Reconcile the Q3 invoices and pay approved vendors, up to 500 USD per invoice, by
Friday."* alice's agent (``demo-agent``) submits the Mission Intent; bob, her manager,
approves it through the real consent forms; the agent reads, pays under the cap, is denied
over it and outside the Mission, has a local tool's permit refused for other arguments,
delegates a narrowed token to ``demo-subagent``; bob revokes the Mission in the console;
refresh, exchange and every tool call are refused; the audit log verifies.

Each :class:`~missionbound.demo.story.Step` does its part with the SDK and returns what
actually happened (outcome, reason, evidence id); :mod:`missionbound.demo.story` runs and
judges them. A step that raises is a failure, and the story goes on: steps that need what
it would have made fail in turn, saying so.

Evidence ids are the PDP's ``evaluation_id`` wherever a decision was made (a refusal carries
it; for a permitted call it is read back from the instance's evidence records, where the
Decision Evidence of that call is), else the Mission id or an audit record (``audit #seq``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select

from missionbound.audit import verify
from missionbound.client import (
    LocalTools,
    McpTools,
    Mission,
    MissionClient,
    PendingMission,
    PepCredentials,
    Permit,
    TokenSet,
    errors,
)
from missionbound.demo.approver import BrowserSession
from missionbound.demo.story import (
    Outcome,
    Step,
    StepPrerequisite,
    StepResult,
)
from missionbound.store.models import AuditRecord, EvidenceRecord
from missionbound.store.transactions import Store

AGENT_ID = "demo-agent"
AGENT_SECRET = "demo-agent-secret"  # DEMO SECRET (demo tenant only)
SUBAGENT_ID = "demo-subagent"
SUBAGENT_SECRET = "demo-subagent-secret"  # DEMO SECRET
PEP = ("demo-rs", "demo-rs-secret")  # DEMO SECRET: the demo PEPs' credential at the PDP
REDIRECT_URI = "http://127.0.0.1:8765/callback"  # demo-agent's; never listened on here
SUBJECT = "alice"
APPROVER = "bob"  # alice's manager; demo password = user name
PURPOSE = "https://missionbound.dev/purposes/accounts-payable"
GOAL = ("Reconcile the Q3 invoices and pay approved vendors, up to 500 USD per invoice, "
        "by Friday.")
PAY_ACME_1 = {"invoice_id": "inv-acme-1", "vendor": "acme", "amount": "120.00",
              "currency": "USD"}
PAY_ACME_BIG = {"invoice_id": "inv-acme-big", "vendor": "acme", "amount": "900.00",
                "currency": "USD"}
REMITTANCE = {"invoice_id": "inv-acme-1", "to": "ap@acme.example"}
REVOKED_REASONS = ("mission_inactive", "mission_revoked")


@dataclass
class StoryContext:
    """What the steps share: the instance, and what earlier steps made."""

    issuer: str
    database: Engine  # the instance's: evidence look-ups, and the audit check
    agent: MissionClient | None = None
    subagent: MissionClient | None = None
    browser: BrowserSession | None = None  # bob's, kept from approval to revocation
    pending: PendingMission | None = None
    callback_url: str | None = None
    mission: Mission | None = None
    delegated: TokenSet | None = None  # the sub-agent's token
    local_tools: LocalTools | None = None
    schedule_date: str = field(
        default_factory=lambda: (datetime.now(UTC).date() + timedelta(days=1)).isoformat())
    scheduled: list[dict[str, str]] = field(default_factory=list)  # what the local tool did
    schedule_permit: Permit | None = None

    @property
    def mcp(self) -> str:
        return f"{self.issuer}/demo/mcp"

    @property
    def erp(self) -> str:
        return f"{self.issuer}/demo/erp"

    @property
    def pep(self) -> PepCredentials:
        return PepCredentials(client_id=PEP[0], client_secret=PEP[1])

    def active_mission(self) -> Mission:
        if self.mission is None:
            raise StepPrerequisite("no Mission: an earlier step did not get one")
        return self.mission

    def close(self) -> None:
        for closable in (self.local_tools, self.agent, self.subagent, self.browser):
            if closable is not None:
                with contextlib.suppress(Exception):
                    closable.close()


# --------------------------------------------------------------------------- the intent


def mission_intent(issuer: str) -> dict[str, Any]:
    """The demo scenario's Mission Intent for alice (the same as examples/agent.py)."""
    friday = datetime.now(UTC) + timedelta(days=3)
    return {
        "goal": GOAL,
        "resources": [f"{issuer}/demo/erp", f"{issuer}/demo/mcp"],
        "constraints": ["only Q3 invoices", "pay approved vendors only"],
        "purpose": PURPOSE,
        "mission_expiry": friday.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "context": {"max_derivations": 50,
                    "max_value": {"amount": "500.00", "currency": "USD"},
                    "vendors": ["acme"]},
    }


# --------------------------------------------------------------------------- evidence


def latest_decision(database: Engine, mission_id: str, action: str) -> str | None:
    """The ``evaluation_id`` of the PDP's latest permit of ``action`` on this Mission, from
    its Decision Evidence: for a permitted call, whose answer does not carry it, the record
    the call left (the story is the only caller of this instance, one call at a time)."""
    with Store(database).read() as session, session.begin():
        rows = session.scalars(
            select(EvidenceRecord).where(EvidenceRecord.mission_id == mission_id,
                                         EvidenceRecord.evaluation_id.is_not(None))
            .order_by(EvidenceRecord.id.desc()).limit(50)).all()
        for row in rows:
            record = row.record
            if record.get("decision") == "permit" \
                    and record.get("action", {}).get("name") == action:
                return row.evaluation_id
    return None


def execution_outcome(database: Engine, evaluation_id: str | None) -> str | None:
    """The ``outcome`` of the Execution Evidence recorded against ``evaluation_id`` (what
    the executor reported doing under that permit), or None."""
    if evaluation_id is None:
        return None
    with Store(database).read() as session, session.begin():
        for record in session.scalars(select(EvidenceRecord.record).where(
                EvidenceRecord.evaluation_id == evaluation_id)):
            if "execution_id" in record:
                return str(record.get("outcome"))
    return None


def _executed(database: Engine, evaluation_id: str | None, summary: str) -> str:
    outcome = execution_outcome(database, evaluation_id)
    return summary + (f"; Execution Evidence: {outcome}" if outcome else "")


def latest_audit(database: Engine, event: str, mission_id: str | None = None) -> str | None:
    """``audit #seq`` of the latest audit record of ``event`` (of ``mission_id`` when
    given: before the token answer names it, the agent does not know its Mission's id, and
    the story is the only writer of this database)."""
    query = select(AuditRecord.seq).where(AuditRecord.event == event)
    if mission_id is not None:
        query = query.where(AuditRecord.mission_id == mission_id)
    with Store(database).read() as session, session.begin():
        seq = session.scalars(query.order_by(AuditRecord.seq.desc()).limit(1)).first()
    return None if seq is None else f"audit #{seq}"


def _refusal(exc: errors.MissionClientError, outcome: Outcome, *,
             otherwise: str | None = None) -> StepResult:
    """A typed SDK refusal as a step result: its reason (or wire error), and its evidence:
    the PDP's ``evaluation_id``, or ``otherwise`` for a refusal made before any decision
    (an API refusing a token that does not hold the action, a revoked Mission's token)."""
    reason = exc.reason or exc.error
    if isinstance(exc, errors.MissionInactive) and not exc.reason:
        reason = f"mission_{exc.mission_state}" if exc.mission_state else "mission_inactive"
    return StepResult(outcome, reason=reason, evidence_id=exc.evaluation_id or otherwise,
                      detail=exc.description or None)


@contextlib.contextmanager
def _mcp(context: StoryContext) -> Iterator[McpTools]:
    with context.active_mission().mcp(context.mcp) as tools:
        yield tools


# --------------------------------------------------------------------------- the steps


def submit_intent(context: StoryContext) -> StepResult:
    context.agent = MissionClient(issuer=context.issuer, client_id=AGENT_ID,
                                  client_secret=AGENT_SECRET, redirect_uri=REDIRECT_URI)
    context.pending = context.agent.submit_intent(mission_intent(context.issuer),
                                                  login_hint=SUBJECT)
    return StepResult(Outcome.ISSUED,
                      evidence_id=latest_audit(context.database, "mission.created"),
                      detail=f"pending approval; {context.pending.request_uri}")


def approve_as_bob(context: StoryContext) -> StepResult:
    if context.pending is None:
        raise StepPrerequisite("no pending authorization request")
    context.browser = BrowserSession(APPROVER)
    context.callback_url = context.browser.approve(context.pending.consent_url)
    return StepResult(Outcome.OK,
                      evidence_id=latest_audit(context.database, "mission.transition"),
                      detail="/authorize -> /login -> consent form, decision=approve")


def redeem_code(context: StoryContext) -> StepResult:
    if context.agent is None or context.pending is None or context.callback_url is None:
        raise StepPrerequisite("no approval to redeem")
    context.mission = context.agent.complete(context.pending, context.callback_url)
    tokens = context.mission.tokens
    resources = sorted({detail.get("resource", "?").rsplit("/", 1)[-1]
                        for detail in tokens.authorization_details or []})
    return StepResult(Outcome.ISSUED, evidence_id=context.mission.mission_id,
                      detail=f"Mission active; a {tokens.token_type} token for "
                             f"{' and '.join(resources)}, a refresh token")


def erp_read(context: StoryContext) -> StepResult:
    mission = context.active_mission()
    try:
        response = mission.request("GET", f"{context.erp}/invoices")
    except (errors.ActionDenied, errors.MissionInactive) as exc:
        return _refusal(exc, Outcome.DENY, otherwise=mission.mission_id)
    response.raise_for_status()
    count = len(response.json().get("invoices", []))
    return StepResult(Outcome.PERMIT,
                      evidence_id=latest_decision(context.database, mission.mission_id,
                                                  "invoices.read"),
                      detail=f"200, {count} invoices")


def mcp_call(tool: str, arguments: dict[str, str]) -> Callable[[StoryContext], StepResult]:
    """A step calling ``tool`` through the gateway: permit (the tool ran) or deny."""

    def call(context: StoryContext) -> StepResult:
        mission = context.active_mission()
        try:
            with _mcp(context) as tools:
                result = tools.call_tool(tool, arguments)
        except (errors.ActionDenied, errors.MissionInactive) as exc:
            return _refusal(exc, Outcome.DENY, otherwise=mission.mission_id)
        evaluation_id = latest_decision(context.database, mission.mission_id, tool)
        return StepResult(Outcome.PERMIT, evidence_id=evaluation_id,
                          detail=_executed(context.database, evaluation_id,
                                           _summarize(result)))

    return call


def mcp_list(context: StoryContext) -> StepResult:
    mission = context.active_mission()
    with _mcp(context) as tools:
        listed = tools.list_tools()
        result = tools.call_tool("list_invoices", {})
    evaluation_id = latest_decision(context.database, mission.mission_id, "list_invoices")
    return StepResult(Outcome.PERMIT, evidence_id=evaluation_id,
                      detail=_executed(context.database, evaluation_id,
                                       f"tools listed: {', '.join(sorted(listed))}; "
                                       f"{_summarize(result)}"))


def _summarize(result: Any) -> str:
    """A few words of a tool's structured result."""
    if not isinstance(result, dict):
        return str(result)[:80]
    if "invoices" in result:
        return f"{len(result['invoices'])} invoices"
    if "status" in result:
        seq = result.get("ledger_seq")
        return f"{result['status']}" + (f", ledger #{seq}" if seq is not None else "")
    if "invoice_id" in result:
        return f"{result['invoice_id']}: {result.get('amount')} {result.get('currency')}"
    return ", ".join(sorted(result))[:80]


def _local_tools(context: StoryContext) -> LocalTools:
    """The agent's own ``schedule_payment`` (it only notes what it was asked to schedule),
    behind the SDK's local tool runner for the Mission resource ``<issuer>/demo/mcp``.

    The demo tenant binds every granted tool of ``<issuer>/demo/mcp`` to its definition at
    approval (tool-manifest binding, docs/mcp.md): the PDP permits a run of that tool only
    for the definition the approver saw. The local ``schedule_payment`` implements that very
    tool, so it is registered with that definition, read where the agent reads it: the
    gateway's ``tools/list``."""
    if context.local_tools is None:
        mission = context.active_mission()
        with mission.mcp(context.mcp) as gateway:
            definition = gateway.definitions().get("schedule_payment")
        if definition is None:
            raise AssertionError("the gateway does not list schedule_payment")
        tools = mission.local_tools(context.mcp, pep=context.pep)

        def schedule_payment(invoice_id: str, date: str) -> dict[str, str]:
            entry = {"invoice_id": invoice_id, "date": date}
            context.scheduled.append(entry)
            return {"status": "scheduled", **entry}

        tools.register("schedule_payment", schedule_payment, definition=definition)
        context.local_tools = tools
    return context.local_tools


def _schedule_permit(context: StoryContext, arguments: dict[str, str]) -> Permit:
    """The PDP's permit for the local ``schedule_payment`` with exactly ``arguments``."""
    permit: Permit = _local_tools(context).permit("schedule_payment", arguments)
    return permit


def _schedule_arguments(context: StoryContext) -> dict[str, str]:
    return {"invoice_id": "inv-acme-2", "date": context.schedule_date}


def local_permit(context: StoryContext) -> StepResult:
    _local_tools(context)
    try:
        permit = _schedule_permit(context, _schedule_arguments(context))
    except (errors.ActionDenied, errors.MissionInactive) as exc:
        return _refusal(exc, Outcome.DENY)
    context.schedule_permit = permit
    kind = "a signed single-use permit" if permit.token else "permitted, but no permit token"
    return StepResult(Outcome.PERMIT, evidence_id=permit.evaluation_id,
                      detail=f"inv-acme-2 on {context.schedule_date}: {kind}")


def local_changed_arguments(context: StoryContext) -> StepResult:
    if context.schedule_permit is None:
        raise StepPrerequisite("no permit for schedule_payment")
    tools = _local_tools(context)
    later = (date.fromisoformat(context.schedule_date) + timedelta(days=1)).isoformat()
    before = len(context.scheduled)
    try:
        tools.run("schedule_payment", {"invoice_id": "inv-acme-2", "date": later},
                  permit=context.schedule_permit)
    except errors.ActionDenied as exc:
        if len(context.scheduled) != before:
            raise AssertionError("the tool ran although its permit was refused") from exc
        refused = _refusal(exc, Outcome.DENY)
        return replace(refused, detail=_executed(context.database, exc.evaluation_id,
                                                 f"not run; {refused.detail}"))
    return StepResult(Outcome.PERMIT, detail=f"ran with date {later}")


def local_fresh_permit(context: StoryContext) -> StepResult:
    tools = _local_tools(context)
    arguments = _schedule_arguments(context)
    try:
        permit = _schedule_permit(context, arguments)
        tools.run("schedule_payment", arguments, permit=permit)
    except (errors.ActionDenied, errors.MissionInactive) as exc:
        return _refusal(exc, Outcome.DENY)
    if context.scheduled != [arguments]:
        raise AssertionError(f"the tool did not run exactly as permitted: {context.scheduled}")
    return StepResult(Outcome.PERMIT, evidence_id=permit.evaluation_id,
                      detail=_executed(context.database, permit.evaluation_id,
                                       f"ran once: inv-acme-2 on {context.schedule_date}"))


def delegate(context: StoryContext) -> StepResult:
    mission = context.active_mission()
    context.subagent = MissionClient(issuer=context.issuer, client_id=SUBAGENT_ID,
                                     client_secret=SUBAGENT_SECRET)
    context.delegated = mission.delegate(context.subagent, resource=context.erp,
                                         scope=["invoices.read"])
    claims = context.delegated.claims
    granted = [(detail.get("resource"), sorted(detail.get("actions", [])))
               for detail in context.delegated.authorization_details or []]
    actor = (claims.get("act") or {}).get("sub") or (claims.get("act") or {}).get("client_id")
    if granted != [(context.erp, ["invoices.read"])] or actor != SUBAGENT_ID:
        raise AssertionError(f"not narrowed as asked: {granted}, act {claims.get('act')}")
    return StepResult(Outcome.ISSUED,
                      evidence_id=latest_audit(context.database, "token.issued",
                                               mission.mission_id),
                      detail=f"only invoices.read on demo/erp; act: {actor}")


def _subagent_request(context: StoryContext, method: str, path: str,
                      body: dict[str, str] | None = None) -> StepResult:
    if context.subagent is None or context.delegated is None:
        raise StepPrerequisite("no delegated token")
    mission = context.active_mission()
    try:
        response = context.subagent.request(method, context.erp + path, json=body,
                                            access_token=context.delegated.access_token)
    except (errors.ActionDenied, errors.MissionInactive) as exc:
        return _refusal(exc, Outcome.DENY, otherwise=mission.mission_id)
    response.raise_for_status()
    action = "invoices.read" if method == "GET" else "journal-entries.write"
    return StepResult(Outcome.PERMIT,
                      evidence_id=latest_decision(context.database, mission.mission_id,
                                                  action),
                      detail=f"{response.status_code} with the delegated token")


def subagent_reads(context: StoryContext) -> StepResult:
    return _subagent_request(context, "GET", "/invoices")


def subagent_writes(context: StoryContext) -> StepResult:
    return _subagent_request(context, "POST", "/journal-entries",
                             {"invoice_id": "inv-acme-1", "amount": "120.00",
                              "currency": "USD"})


def revoke_as_bob(context: StoryContext) -> StepResult:
    mission = context.active_mission()
    if context.browser is None:
        context.browser = BrowserSession(APPROVER)
    context.browser.revoke(context.issuer, mission.mission_id,
                           reason="demo: the reconciliation is cancelled")
    return StepResult(Outcome.OK,
                      evidence_id=latest_audit(context.database, "mission.transition",
                                               mission.mission_id),
                      detail="console: revoke, with a reason and the confirmation")


def refresh_after_revoke(context: StoryContext) -> StepResult:
    mission = context.active_mission()
    try:
        mission.refresh()
    except errors.MissionInactive as exc:
        return _token_refusal(context, exc)
    return StepResult(Outcome.ISSUED, detail="a new token after the revocation")


def exchange_after_revoke(context: StoryContext) -> StepResult:
    mission = context.active_mission()
    if context.subagent is None:
        raise StepPrerequisite("no sub-agent")
    try:
        mission.delegate(context.subagent, resource=context.erp, scope=["invoices.read"])
    except errors.MissionInactive as exc:
        return _token_refusal(context, exc)
    return StepResult(Outcome.ISSUED, detail="a delegated token after the revocation")


def _token_refusal(context: StoryContext, exc: errors.MissionInactive) -> StepResult:
    """A refused token request: no PDP decision, its audit record is the evidence."""
    refused = _refusal(exc, Outcome.REFUSED)
    return StepResult(refused.outcome, reason=refused.reason,
                      evidence_id=latest_audit(context.database, "token.refused",
                                               context.active_mission().mission_id),
                      detail=refused.detail)


def local_permit_after_revoke(context: StoryContext) -> StepResult:
    return local_permit(context)


def audit_verifies(context: StoryContext) -> StepResult:
    """The check ``missionbound audit verify`` runs, on the instance's database."""
    report = verify(context.database)
    counts = (f"{report.records_checked} audit records, {report.missions_checked} "
              f"Mission(s), {report.evidence_checked} signed evidence records checked")
    if not report.ok:
        return StepResult(Outcome.ERROR, reason=f"broken: {report.first_break}",
                          detail=counts)
    # The evidence: the chain's head, the record every earlier one is hashed into.
    return StepResult(Outcome.OK, evidence_id=f"audit #{report.records_checked}",
                      detail=f"intact: {counts}")


def demo_steps() -> list[Step]:
    """The story, in order."""
    return [
        Step("alice's agent pushes the Mission Intent (PAR, PKCE S256, DPoP)",
             Outcome.ISSUED, submit_intent),
        Step("bob signs in and approves it on the consent page", Outcome.OK,
             approve_as_bob),
        Step("the agent redeems the code: Mission active, DPoP-bound token", Outcome.ISSUED,
             redeem_code),
        Step("ERP: GET /demo/erp/invoices", Outcome.PERMIT, erp_read),
        Step("MCP: list the tools, call list_invoices", Outcome.PERMIT, mcp_list),
        Step("MCP: get_invoice inv-acme-1", Outcome.PERMIT,
             mcp_call("get_invoice", {"invoice_id": "inv-acme-1"})),
        Step("MCP: execute_wire_transfer inv-acme-1, acme, 120.00 USD (under the cap)",
             Outcome.PERMIT, mcp_call("execute_wire_transfer", PAY_ACME_1)),
        Step("MCP: execute_wire_transfer inv-acme-big, 900.00 USD (over the 500 USD cap)",
             Outcome.DENY, mcp_call("execute_wire_transfer", PAY_ACME_BIG),
             ("parameter_violation",)),
        Step("MCP: send_remittance_email (a tool outside the Mission)", Outcome.DENY,
             mcp_call("send_remittance_email", REMITTANCE), ("out_of_authority",)),
        Step("local tool: the PDP's permit for schedule_payment inv-acme-2 on a date",
             Outcome.PERMIT, local_permit),
        Step("local tool: run it with another date under that permit", Outcome.DENY,
             local_changed_arguments, ("parameter_mismatch",)),
        Step("local tool: a fresh permit and the permitted arguments: it runs",
             Outcome.PERMIT, local_fresh_permit),
        Step("delegation: demo-subagent gets invoices.read on demo/erp only (exchange)",
             Outcome.ISSUED, delegate),
        Step("sub-agent: GET /demo/erp/invoices", Outcome.PERMIT, subagent_reads),
        Step("sub-agent: POST /demo/erp/journal-entries (not delegated)", Outcome.DENY,
             subagent_writes, ("action_not_granted", "out_of_authority")),
        Step("bob revokes the Mission in the console", Outcome.OK, revoke_as_bob),
        Step("after the revocation: the agent refreshes its token", Outcome.REFUSED,
             refresh_after_revoke, REVOKED_REASONS),
        Step("after the revocation: demo-subagent exchanges the agent's token again",
             Outcome.REFUSED, exchange_after_revoke, REVOKED_REASONS),
        Step("after the revocation: MCP get_invoice inv-acme-2", Outcome.DENY,
             mcp_call("get_invoice", {"invoice_id": "inv-acme-2"}), REVOKED_REASONS),
        Step("after the revocation: a permit for the local schedule_payment", Outcome.DENY,
             local_permit_after_revoke, REVOKED_REASONS),
        Step("after the revocation: ERP GET /demo/erp/invoices", Outcome.DENY, erp_read,
             REVOKED_REASONS),
        Step("audit: the hash chain, anchors and evidence chains verify", Outcome.OK,
             audit_verifies),
    ]
