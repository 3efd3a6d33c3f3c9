"""Runtime evidence (PROFILE.md section 12, "Evidence"; runtime-digest sections 5.1-5.6):
every decision on a consequential action, every refusal before a decision and every
execution's final disposition becomes a signed record, hash-linked per Mission.

:class:`EvidenceLog` builds each record from what the caller established (the Mission
record, the decision, the verified permit), never from a record or digest an agent submits
(section 5.11); signs it with the AS's current key (:mod:`missionbound.runtime.
evidence_format`); and appends it to its chain inside the caller's transaction, so the
record commits with the decision or execution it describes, or neither does.

What a record carries (the join keys of section 5.6): ``mission`` {``id``, ``issuer`` and
``origin`` (the same value: section 5.2 and PROFILE.md name it differently),
``authority_hash``, ``proposal_hash``, ``consent_rendering_hash``, ``policy_version``,
``policy_view_id``}, the ``actor`` (``client_id`` and the ``act`` chain, identities only),
``action``, ``tool_id``, ``parameter_digest`` (or ``evaluation_request_digest``), the
result (``decision``/``outcome``) and its reason, ``evaluation_id``, ``emitter``,
``sequence`` and ``prev_hash``. Never recorded: raw parameters (only their digest), the
resource's properties, token claims beyond the identities above, policy text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.orm import Session

from missionbound.audit.log import format_audit_instant
from missionbound.issuer.keys import SignerKey
from missionbound.mission.record import MissionRecord, format_instant
from missionbound.protocol import tool_manifest
from missionbound.runtime.decision import Charge, Decision
from missionbound.runtime.digests import evaluation_request_digest
from missionbound.runtime.evidence_format import (
    ChainReport,
    EvidenceBreak,
    RecordKind,
    new_record_id,
    record_hash,
    sign_record,
    verify_evidence_chain,
)
from missionbound.runtime.request import MAX_TOOL_ID, DecisionRequest
from missionbound.store import evidence as rows

Outcome = Literal["completed", "failed", "suppressed"]
OUTCOMES = frozenset({"completed", "failed", "suppressed"})
EMITTER_ROLES = frozenset({"pdp", "pep", "executor"})
# Reason and error values: the snake_case codes of runtime-digest 3.8, or a URI a deployment
# coins (section 4.2 suggests one for binding mismatches).
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}|[a-z][a-z0-9+.-]*:[\x21-\x7e]{1,200}")
_ACT_MEMBERS = ("sub", "iss", "client_id")
# Concurrent first records of one chain: the loser of the head insert starts over once;
# more attempts than this means something other than a race.
_MAX_ATTEMPTS = 3

__all__ = [
    "ChainReport",
    "EvidenceBreak",
    "EvidenceLog",
    "InvalidEvidence",
    "Outcome",
    "verify_evidence",
    "verify_evidence_chain",
]

# The name the issue 7 plan's first contract used.
verify_evidence = verify_evidence_chain


class InvalidEvidence(ValueError):
    """The caller asked for a record with a malformed member (a bug of the caller: the
    PDP and PEPs pass values they established)."""


class EvidenceLog:
    """Writes evidence records; one per process, shared (it holds no state but its
    configuration). ``issuer_url`` names the PDP as an emitter; ``signer`` gives the key to
    sign with now (``MissionIssuer.signer``: cached, follows rotation)."""

    def __init__(self, *, issuer_url: str, signer: Callable[[], SignerKey]) -> None:
        self.issuer_url = issuer_url
        self._signer = signer

    # -- the three kinds --------------------------------------------------------------------

    def record_decision(
        self,
        session: Session,
        *,
        mission: MissionRecord,
        request: DecisionRequest,
        decision: Decision,
        evaluation_id: str,
        now: datetime,
        policy_version: str | None = None,
    ) -> dict[str, Any]:
        """Decision Evidence (section 5.2) of one decision, permit or deny.

        ``policy_version`` is the version of the policy artifact the decision evaluated
        (the PDP's view); the Mission's own by default."""
        _check_text(evaluation_id, "evaluation_id", 255)
        view = policy_version or mission.policy_version
        record: dict[str, Any] = {
            "evidence_id": new_record_id(RecordKind.DECISION),
            "evaluation_id": evaluation_id,
            "mission": {**_mission_member(mission.mission_id, _anchors_of(mission)),
                        "policy_version": view, "policy_view_id": view},
            "mission_state_version": mission.version,
            "subject": _subject(request),
            "resource": {"type": request.resource_type, "id": request.resource_id},
            "action": {"name": request.action_name},
            "tool_id": tool_manifest.tool_id(request.audience, request.action_name),
            "audience": request.audience,
            "action_class": str(decision.action_class),
            "class_source": str(decision.class_source),
            "decision": "permit" if decision.allowed else "deny",
            "evaluated_at": format_audit_instant(_aware(now)),
            "emitter": {"id": self.issuer_url, "role": "pdp"},
            "contributing_constraints": [str(item) for item in decision.contributing_constraints],
        }
        actor = _actor(request)
        if actor:
            record["actor"] = actor
        if decision.parameter_digest is not None:
            record["parameter_digest"] = decision.parameter_digest
        else:
            # Section 5.2: required when there is no parameter_digest; the summary object
            # is the one section 5.2's worked example digests.
            record["evaluation_request_digest"] = evaluation_request_digest({
                "action": request.action_name, "audience": request.audience,
                "mission_id": mission.mission_id, "resource": request.resource_id,
                "subject": request.subject_id})
        if decision.allowed:
            conditions: dict[str, Any] = {}
            if decision.use_limit is not None:
                conditions["use_limit"] = decision.use_limit
            if decision.valid_until is not None:
                conditions["valid_until"] = format_instant(decision.valid_until)
            record["conditions"] = conditions
            if decision.entry_digest is not None:
                record["entry_digest"] = decision.entry_digest
        else:
            record["denial_reason"] = str(decision.reason) if decision.reason else "unknown"
        metering = [_charge(charge) for charge in decision.charges]
        if metering:
            record["metering"] = metering
        return self._append(session, RecordKind.DECISION, record, mission_id=mission.mission_id,
                            evaluation_id=evaluation_id, now=now)

    def record_refusal(
        self,
        session: Session,
        *,
        mission_id: str | None,
        audience: str,
        action: str,
        reason: str,
        emitter_id: str,
        now: datetime,
        parameter_digest: str | None = None,
        emitter_role: str | None = None,
    ) -> dict[str, Any]:
        """A Refusal Record (section 5.3): a refusal before any PDP decision. ``mission_id``
        only when the refusing component established the Mission reference first; its
        anchors come from the stored Mission when this AS holds it. ``emitter_role``
        defaults to ``pdp`` when the emitter is this PDP, else ``pep``."""
        role = emitter_role or ("pdp" if emitter_id == self.issuer_url else "pep")
        _check_emitter(emitter_id, role)
        _check_text(audience, "audience", 2048)
        _check_text(action, "action", 255)
        _check_code(reason, "reason")
        record: dict[str, Any] = {
            "refusal_id": new_record_id(RecordKind.REFUSAL),
            "audience": audience,
            "action": {"name": action},
            "decision": "deny",
            "denial_reason": reason,
            "evaluated_at": format_audit_instant(_aware(now)),
            "emitter": {"id": emitter_id, "role": role},
        }
        if mission_id is not None:
            _check_text(mission_id, "mission_id", 128)
            stored = rows.mission_reference(session, mission_id)
            record["mission"] = _mission_member(mission_id, stored)
        if parameter_digest is not None:
            _check_text(parameter_digest, "parameter_digest", 128)
            record["parameter_digest"] = parameter_digest
        else:
            summary = {"action": action, "audience": audience}
            if mission_id is not None:
                summary["mission_id"] = mission_id
            record["evaluation_request_digest"] = evaluation_request_digest(summary)
        return self._append(session, RecordKind.REFUSAL, record, mission_id=mission_id,
                            evaluation_id=None, now=now, emitter_id=emitter_id)

    def record_execution(
        self,
        session: Session,
        *,
        mission_id: str,
        evaluation_id: str,
        audience: str,
        authorized_parameter_digest: str | None,
        effective_parameter_digest: str | None,
        outcome: Outcome,
        error: str | None,
        emitter_id: str,
        now: datetime,
        tool_id: str | None = None,
        emitter_role: str = "pep",
    ) -> dict[str, Any]:
        """Execution Evidence (section 5.3): the final disposition of one permit. The
        Mission reference, actor, action and ``tool_id`` are copied from the Decision
        Evidence of ``evaluation_id`` when this log holds it (``tool_id`` given here wins:
        it is the tool that actually ran or was refused)."""
        _check_emitter(emitter_id, emitter_role)
        _check_text(mission_id, "mission_id", 128)
        _check_text(evaluation_id, "evaluation_id", 255)
        _check_text(audience, "audience", 2048)
        if outcome not in OUTCOMES:
            raise InvalidEvidence(f"outcome must be one of {', '.join(sorted(OUTCOMES))}")
        if error is not None:
            _check_code(error, "error")
        for name, digest in (("authorized_parameter_digest", authorized_parameter_digest),
                             ("effective_parameter_digest", effective_parameter_digest)):
            if digest is not None:
                _check_text(digest, name, 128)
        decided = rows.decision_record(session, evaluation_id)
        if decided is not None and isinstance(decided.get("mission"), dict):
            mission = {k: v for k, v in decided["mission"].items() if isinstance(v, str)}
        else:
            mission = _mission_member(mission_id, rows.mission_reference(session, mission_id))
        if mission.get("id") != mission_id:
            # The decision named another Mission: record what the executor said, only.
            mission = _mission_member(mission_id, None)
        record: dict[str, Any] = {
            "execution_id": new_record_id(RecordKind.EXECUTION),
            "evaluation_id": evaluation_id,
            "mission_id": mission_id,
            "mission": mission,
            "audience": audience,
            "authorized_parameter_digest": authorized_parameter_digest,
            "effective_parameter_digest": effective_parameter_digest,
            "outcome": outcome,
            "outcome_at": format_audit_instant(_aware(now)),
            "emitter": {"id": emitter_id, "role": emitter_role},
        }
        if error is not None:
            record["error"] = error
        if decided is not None:
            for member in ("actor", "action", "tool_id"):
                if member in decided:
                    record[member] = decided[member]
        if tool_id is not None:
            _check_text(tool_id, "tool_id", MAX_TOOL_ID)
            record["tool_id"] = tool_id
        if outcome != "suppressed" and authorized_parameter_digest != effective_parameter_digest:
            # Section 5.3: a deviation recorded as completed or failed stays a valid
            # record and MUST be flagged as an unauthorised execution.
            record["unauthorized_execution"] = True
        return self._append(session, RecordKind.EXECUTION, record, mission_id=mission_id,
                            evaluation_id=evaluation_id, now=now)

    # -- the chain -----------------------------------------------------------------------------

    def _append(self, session: Session, kind: RecordKind, content: dict[str, Any], *,
                mission_id: str | None, evaluation_id: str | None, now: datetime,
                emitter_id: str | None = None) -> dict[str, Any]:
        chain_id = rows.chain_of(mission_id, emitter_id or self.issuer_url)
        # The key first: a signer outage fails the decision before any lock (section 5.11:
        # no fallback, and no record left unsigned).
        signer = self._signer()
        for _ in range(_MAX_ATTEMPTS):
            head = rows.lock_chain_head(session, chain_id)
            content["sequence"] = 1 if head is None else head.last_sequence + 1
            content["prev_hash"] = None if head is None else head.last_hash
            stored, jws_value = sign_record(content, kind, signer)
            hash_ = record_hash(jws_value)
            if head is None:
                if not rows.start_chain(session, chain_id, hash_):
                    continue  # a concurrent first record won; lock its head and go again
            else:
                rows.advance_chain(session, chain_id, content["sequence"], hash_)
            rows.insert_record(session, {
                "chain_id": chain_id,
                "sequence": content["sequence"],
                "kind": kind.value,
                "record_id": content[_ID_MEMBER[kind]],
                "mission_id": mission_id,
                "evaluation_id": evaluation_id,
                "recorded_at": _aware(now),
                "record": stored,
                "record_hash": hash_,
                "prev_hash": content["prev_hash"],
            })
            return stored
        raise RuntimeError(f"evidence chain {chain_id} could not be started")


_ID_MEMBER = {RecordKind.DECISION: "evidence_id", RecordKind.REFUSAL: "refusal_id",
              RecordKind.EXECUTION: "execution_id"}
_MISSION_MEMBERS = ("authority_hash", "proposal_hash", "consent_rendering_hash",
                    "policy_version")


def _mission_member(mission_id: str, stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """``mission`` {id, issuer, origin, anchors, policy_version} from a Mission's JSON form;
    just {id} when this AS does not hold the Mission."""
    member: dict[str, Any] = {"id": mission_id}
    if stored is None:
        return member
    origin = stored.get("origin")
    if isinstance(origin, str):
        member["issuer"] = member["origin"] = origin
    for name in _MISSION_MEMBERS:
        if isinstance(stored.get(name), str):
            member[name] = stored[name]
    return member


def _anchors_of(mission: MissionRecord) -> dict[str, Any]:
    return {"origin": mission.origin, "authority_hash": mission.authority_hash,
            "proposal_hash": mission.proposal_hash,
            "consent_rendering_hash": mission.consent_rendering_hash}


def _subject(request: DecisionRequest) -> dict[str, str]:
    # Identifiers only (section 5.2: minimised, never a raw claim set).
    subject = {"type": request.subject_type, "id": request.subject_id}
    if request.subject_iss:
        subject["iss"] = request.subject_iss
    return subject


def _actor(request: DecisionRequest) -> dict[str, Any]:
    actor: dict[str, Any] = {}
    if request.client_id:
        actor["client_id"] = request.client_id
    if request.act:
        # Root -> leaf, as context.actor.act; each entry's identity members only.
        actor["act"] = [{name: str(entry[name]) for name in _ACT_MEMBERS
                         if isinstance(entry.get(name), str)} for entry in request.act]
    return actor


def _charge(charge: Charge) -> dict[str, Any]:
    amount = charge.amount
    entry: dict[str, Any] = {
        "key": str(charge.key),
        # Money is exact decimal text; calls and seconds are integers.
        "amount": amount if isinstance(amount, int) and not isinstance(amount, bool)
        else str(amount),
    }
    if charge.currency:
        entry["currency"] = charge.currency
    return entry


def _aware(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise InvalidEvidence("now must be a timezone-aware datetime")
    return now


def _check_text(value: Any, name: str, limit: int) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise InvalidEvidence(f"{name} must be a string of 1 to {limit} characters")


def _check_code(value: Any, name: str) -> None:
    if not isinstance(value, str) or not _CODE.fullmatch(value):
        raise InvalidEvidence(f"{name} must be a snake_case code or a URI")


def _check_emitter(emitter_id: Any, role: str) -> None:
    _check_text(emitter_id, "emitter_id", rows.MAX_EMITTER_ID)
    if role not in EMITTER_ROLES:
        raise InvalidEvidence(f"emitter role must be one of {', '.join(sorted(EMITTER_ROLES))}")
