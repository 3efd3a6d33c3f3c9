"""What the console shows, in words: state badges, the lifecycle operations a person may
offer, and a short human description of every audit record on a Mission's timeline.

Pure functions of what the routes (:mod:`missionbound.web.console`) loaded: no database, no
framework. Every value that comes from a client or a person (goals, reasons, error
descriptions, actor names) is passed on as text and escaped by the templates.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from missionbound.mission.delegation import MAX_CHAIN_LENGTH
from missionbound.mission.lifecycle import (
    LIFECYCLE_OPERATIONS,
    TRANSITIONS,
    Event,
    LifecyclePolicy,
    Role,
    State,
    allowed_roles,
    effective_state,
)
from missionbound.mission.record import MissionRecord, format_instant

STATE_WORDS: Mapping[State, str] = {
    State.PENDING_APPROVAL: "pending approval",
    State.ACTIVE: "active",
    State.SUSPENDED: "suspended",
    State.REVOKED: "revoked",
    State.COMPLETED: "completed",
    State.EXPIRED: "expired",
    State.REJECTED: "rejected",
}

STATE_MEANING: Mapping[State, str] = {
    State.PENDING_APPROVAL: "waiting for an approver; nothing may be done under it yet",
    State.ACTIVE: "the agent may get tokens and act within the granted authority",
    State.SUSPENDED: "paused: no new tokens, refreshes or permits until it is resumed",
    State.REVOKED: "ended by a person: nothing more may be done under it",
    State.COMPLETED: "closed as done: nothing more may be done under it",
    State.EXPIRED: "past its end: nothing more may be done under it",
    State.REJECTED: "the approver said no: nothing was ever granted",
}


@dataclass(frozen=True)
class Operation:
    """A lifecycle operation as the console offers it."""

    name: str  # the form value: revoke, suspend, resume, complete
    label: str  # the button
    done: str  # the past tense, for the message after it
    effect: str  # what happens, in one sentence
    final: bool  # cannot be undone


OPERATIONS: Mapping[Event, Operation] = {
    Event.SUSPEND: Operation(
        "suspend", "Suspend", "suspended",
        "Pause the Mission: no new tokens, refreshes or permits until an administrator "
        "resumes it.", final=False),
    Event.RESUME: Operation(
        "resume", "Resume", "resumed",
        "Let the Mission continue: the agent may get tokens and permits again.", final=False),
    Event.REVOKE: Operation(
        "revoke", "Revoke", "revoked",
        "End the Mission for good: no new token, refresh or permit, and introspection "
        "reports its tokens inactive; access tokens already out run to their expiry "
        "(minutes) at Resource Servers that do not ask.",
        final=True),
    Event.COMPLETE: Operation(
        "complete", "Complete", "completed",
        "Close the Mission as done: nothing more may be done under it.", final=True),
}
OPERATION_BY_NAME: Mapping[str, Operation] = {op.name: op for op in OPERATIONS.values()}


@dataclass(frozen=True)
class StateBadge:
    effective: State
    stored: State | None  # set only when the clock has overtaken the stored state

    @property
    def words(self) -> str:
        return STATE_WORDS[self.effective]

    @property
    def meaning(self) -> str:
        return STATE_MEANING[self.effective]

    @property
    def stored_words(self) -> str | None:
        return STATE_WORDS[self.stored] if self.stored is not None else None


def state_badge(record: MissionRecord, now: datetime, policy: LifecyclePolicy) -> StateBadge:
    """The effective state (PROFILE.md section 7: clock first), and the stored one when the
    clock has overtaken it and nothing has persisted that yet."""
    effective = effective_state(record.state, now=now, mission_expiry=record.mission_expiry,
                                created_at=record.created_at, policy=policy)
    return StateBadge(effective, None if effective is record.state else record.state)


def offered_operations(roles: frozenset[Role], state: State, policy: LifecyclePolicy
                       ) -> list[Operation]:
    """The operations to show as buttons: the person's roles allow them (section 7, "Who")
    and the Mission's effective state permits them. Offering is a courtesy: the lifecycle
    service decides again when the form is sent."""
    return [
        OPERATIONS[event]
        for event in LIFECYCLE_OPERATIONS
        if roles & allowed_roles(event, policy) and (state, event) in TRANSITIONS
    ]


# --------------------------------------------------------------------------- timeline


@dataclass(frozen=True)
class TimelineEntry:
    mission_seq: int
    seq: int
    at: str  # RFC 3339, for <time datetime>
    at_text: str  # for people
    event: str  # the audit event name
    kind: str  # lifecycle, token, refusal or other (a CSS class and a word)
    title: str
    details: list[str]
    actor: str
    actor_chain: list[str]
    reason: str | None
    data_json: str
    policy_version: str | None = None
    # Set on runtime evidence entries only (decision, refusal, execution).
    evidence_sequence: int | None = None
    evaluation_id: str | None = None
    result: str | None = None  # permit / deny / completed / failed / suppressed


_TRANSITION_TITLES: Mapping[str, str] = {
    "approve": "Approved",
    "reject": "Rejected",
    "suspend": "Suspended",
    "resume": "Resumed",
    "revoke": "Revoked",
    "complete": "Completed",
    "expire": "Expired",
}
_GRANT_WORDS: Mapping[str, str] = {
    "urn:ietf:params:oauth:grant-type:token-exchange": "token exchange",
    "urn:ietf:params:oauth:grant-type:jwt-bearer": "JWT bearer",
}
_REFUSED_THINGS: Mapping[str, str] = {
    "token": "Token request refused",
    "par": "Pushed authorization request refused",
    "introspection": "Introspection refused",
    "revocation": "Token revocation refused",
    "lifecycle": "Lifecycle change refused",
}


def instant_text(moment: datetime) -> str:
    """``2026-11-23 09:00:05 UTC``: sortable, unambiguous, short."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _words(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _state_words(value: Any) -> str:
    try:
        return STATE_WORDS[State(value)]
    except ValueError:
        return _words(value)


def actor_label(actor: Any) -> str:
    """Who acted, as a person reads it: ``bob via the console (admin)``, ``client
    demo-agent``, ``the server's clock``."""
    if not isinstance(actor, Mapping):
        return "not recorded"
    if actor.get("role") == Role.CLOCK.value:
        return "the server's clock"
    if "user" in actor:
        label = _words(actor["user"])
        if actor.get("via"):
            label += f" via the {_words(actor['via'])}"
    elif "client_id" in actor:
        label = f"client {_words(actor['client_id'])}"
    elif "sub" in actor:
        label = _words(actor["sub"])
    else:
        label = _words(dict(actor))
    roles = actor.get("roles")
    if isinstance(roles, list) and roles:
        label += " (" + ", ".join(_words(role) for role in roles) + ")"
    elif isinstance(actor.get("role"), str) and "client_id" not in actor:
        label += f" ({actor['role']})"
    return label


def actor_chain(actor: Any, data: Any) -> list[str]:
    """The delegation chain behind the actor, outermost first, when the record holds one:
    a delegated token's ``on_behalf_of`` (the earlier delegates, then the approved agent:
    issuer/delegation.py), else an RFC 8693 ``act``, nested: each ``act`` acted for the one
    around it."""
    behalf = data.get("on_behalf_of") if isinstance(data, Mapping) else None
    if isinstance(behalf, list) and behalf and all(isinstance(item, str) for item in behalf):
        return [f"client {item}" for item in behalf]
    chain: list[str] = []
    for holder in (actor, data):
        current = holder.get("act") if isinstance(holder, Mapping) else None
        # A token's act names the actor itself outermost: it acted for the ones inside.
        if (isinstance(current, Mapping) and isinstance(actor, Mapping)
                and "client_id" in actor and current.get("sub") == actor["client_id"]):
            current = current.get("act")
        depth = 0
        while isinstance(current, Mapping) and depth < MAX_CHAIN_LENGTH:
            chain.append(actor_label(current))
            current = current.get("act")
            depth += 1
        if chain:
            break
    return chain


def _chain_depth(act: Any) -> int:
    """How many actors an ``act`` claim names (0 for none), up to what the page shows."""
    depth = 0
    while isinstance(act, Mapping) and depth < MAX_CHAIN_LENGTH:
        depth += 1
        act = act.get("act")
    return depth


def describe(record: Any) -> TimelineEntry:
    """One audit record (``missionbound.store.models.AuditRecord``) as a timeline entry."""
    event: str = record.event
    data: Mapping[str, Any] = record.data if isinstance(record.data, Mapping) else {}
    details: list[str] = []
    reason = data.get("reason") if isinstance(data.get("reason"), str) else None
    kind = "other"
    if event == "mission.created":
        kind, title = "lifecycle", "Mission requested"
        details.append("waiting for approval")
    elif event == "mission.transition":
        kind = "lifecycle"
        name = _words(data.get("event", ""))
        title = _TRANSITION_TITLES.get(name, f"Lifecycle event {name}")
        details.append(f"{_state_words(data.get('prior_state'))} → "
                       f"{_state_words(data.get('state'))}, version {_words(data.get('version'))}")
    elif event == "token.issued":
        kind, title = "token", "Token issued"
        grant_type = _words(data.get("grant_type", "unknown"))
        details.append(f"{_GRANT_WORDS.get(grant_type, grant_type)} grant, "
                       f"derivation {_words(data.get('derivation'))}")
        depth = _chain_depth(data.get("act"))
        if depth:
            # A delegated token (docs/delegation.md): the actor line says for whom.
            title = "Token issued to a delegate"
            details.append(f"delegation depth {depth}")
        audience = data.get("aud")
        if isinstance(audience, list):
            details.append("for " + ", ".join(_words(item) for item in audience))
        elif audience is not None:
            details.append(f"for {_words(audience)}")
        if isinstance(data.get("exp"), int):
            details.append("expires " + instant_text(datetime.fromtimestamp(data["exp"], UTC)))
        if data.get("cnf_jkt"):
            details.append("bound to a DPoP key")
    elif event == "token.revoked":
        kind, title = "token", "Token revoked"
    elif event.endswith(".refused"):
        kind = "refusal"
        title = _REFUSED_THINGS.get(event.removesuffix(".refused"), f"Refused ({event})")
        if data.get("error"):
            details.append(_words(data["error"]))
        if data.get("error_description"):
            details.append(_words(data["error_description"]))
    else:
        title = event
    return TimelineEntry(
        mission_seq=record.mission_seq,
        seq=record.seq,
        at=format_instant(record.at),
        at_text=instant_text(record.at),
        event=event,
        kind=kind,
        title=title,
        details=details,
        actor=actor_label(record.actor),
        actor_chain=actor_chain(record.actor, data),
        reason=reason,
        data_json=json.dumps(data, ensure_ascii=False, sort_keys=True, indent=2),
        policy_version=record.policy_version,
    )


# --------------------------------------------------------------------------- evidence

_EMITTER_WORDS: Mapping[str, str] = {"pdp": "the PDP", "pep": "enforcement point",
                                     "executor": "executor"}
_OUTCOME_TITLES: Mapping[str, str] = {"completed": "Executed", "failed": "Execution failed",
                                      "suppressed": "Execution suppressed"}


def describe_evidence(row: Any) -> TimelineEntry:
    """One runtime evidence record (``missionbound.store.models.EvidenceRecord``) as a
    timeline entry: what was asked or done, the result and its reason, the evaluation it
    belongs to and its place in the Mission's evidence chain (runtime-digest 5.1-5.3)."""
    record: Mapping[str, Any] = row.record if isinstance(row.record, Mapping) else {}
    kind: str = row.kind
    action = record.get("action")
    name = _words(action.get("name")) if isinstance(action, Mapping) else "an action"
    details: list[str] = []
    if kind == "decision":
        result = _words(record.get("decision", "?"))
        title = f"{'Permitted' if result == 'permit' else 'Denied'}: {name}"
        reason = record.get("denial_reason")
        details.append(f"class {_words(record.get('action_class'))}")
    elif kind == "refusal":
        result = "deny"
        title = f"Refused before a decision: {name}"
        reason = record.get("denial_reason")
    else:
        result = _words(record.get("outcome", "?"))
        title = f"{_OUTCOME_TITLES.get(result, 'Execution ' + result)}: {name}"
        reason = record.get("error")
        if record.get("unauthorized_execution") is True:
            details.append("UNAUTHORISED: the arguments differ from the permitted ones")
    if record.get("audience") is not None:
        details.append(f"at {_words(record['audience'])}")
    emitter = record.get("emitter")
    actor = "not recorded"
    if isinstance(emitter, Mapping):
        role = _words(emitter.get("role", ""))
        actor = f"{_EMITTER_WORDS.get(role, role)} {_words(emitter.get('id', ''))}"
    members = record.get("actor")
    if isinstance(members, Mapping):
        # Who asked: the client, and the delegation chain root -> leaf (section 5.6).
        chain = members.get("act")
        hops = ([_words(hop.get("sub")) for hop in chain if isinstance(hop, Mapping)]
                if isinstance(chain, list) else [])
        asked = f"client {_words(members['client_id'])}" if members.get("client_id") else ""
        if hops:
            asked += (", " if asked else "") + "delegation " + " → ".join(hops)
        if asked:
            details.append(f"asked by {asked}")
    content = {key: value for key, value in record.items() if key != "evidence_envelope"}
    return TimelineEntry(
        mission_seq=0,
        seq=0,
        at=format_instant(row.recorded_at),
        at_text=instant_text(row.recorded_at),
        event=f"evidence.{kind}",
        kind=kind,
        title=title,
        details=details,
        actor=actor,
        actor_chain=[],
        reason=reason if isinstance(reason, str) else None,
        data_json=json.dumps(content, ensure_ascii=False, sort_keys=True, indent=2),
        evidence_sequence=row.sequence,
        evaluation_id=row.evaluation_id,
        result=result,
    )


def merge_timeline(audit_records: Iterable[Any], evidence: Iterable[Any]) -> list[TimelineEntry]:
    """Audit records and evidence records in one list, by time; at the same instant the
    audit record first (a lifecycle change precedes what is decided under it)."""
    keyed = [((record.at, 0, record.mission_seq), describe(record)) for record in audit_records]
    keyed += [((row.recorded_at, 1, row.sequence), describe_evidence(row)) for row in evidence]
    keyed.sort(key=lambda pair: pair[0])
    return [entry for _, entry in keyed]
