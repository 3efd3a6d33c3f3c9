"""Plain helpers shared by the storage and audit tests: valid Mission records and the
matching approval (anchors computed by the core, as the consent endpoint will)."""

from __future__ import annotations

import copy
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from missionbound.mission.anchors import Anchors, authority_hash, compute_anchors, proposal_hash
from missionbound.mission.lifecycle import State
from missionbound.mission.record import MissionRecord, Principal, format_instant, new_mission_id
from missionbound.store.models import AuditRecord, MissionHistory, OutboxEvent

# A fixed clock: every store function takes ``now``, so tests never depend on the wall clock.
T0 = datetime(2026, 10, 15, 14, 32, 11, tzinfo=UTC)
ISSUER = "https://as.example.test"
ERP = f"{ISSUER}/demo/erp"

ALICE = Principal(iss=ISSUER, sub="alice")
BOB = Principal(iss=ISSUER, sub="bob")


def authority_set() -> list[dict[str, Any]]:
    return [
        {
            "type": "mission_resource_access",
            "resource": ERP,
            "actions": ["invoices.read", "journal-entries.write"],
            "constraints": {"max_value": {"amount": "500.00", "currency": "USD"}},
        }
    ]


def make_record(
    *,
    created_at: datetime = T0,
    lifetime: timedelta = timedelta(days=3),
    max_derivations: int | None = None,
    subject: Principal = ALICE,
    client_id: str = "demo-agent",
    mission_id: str | None = None,
) -> MissionRecord:
    """A valid new Mission as the PAR endpoint would build it (pending, version 1)."""
    expiry = created_at + lifetime
    intent: dict[str, Any] = {
        "goal": "Reconcile the Q3 invoices and pay approved vendors, up to 500 USD per "
        "invoice, by Friday.",
        "resources": [ERP],
        "mission_expiry": format_instant(expiry),
    }
    if max_derivations is not None:
        intent["context"] = {"max_derivations": max_derivations}
    return MissionRecord(
        mission_id=mission_id or new_mission_id(),
        origin=ISSUER,
        state=State.PENDING_APPROVAL,
        version=1,
        mission_intent=intent,
        authorization_details_requested=[],
        authority_set=authority_set(),
        narrowing_decisions=[],
        subject=subject,
        client_id=client_id,
        policy_version="deploy-policy:v1",
        created_at=created_at,
        mission_expiry=expiry,
    )


def consent_disclosure(record: MissionRecord, approver: Principal = BOB) -> dict[str, Any]:
    """A small disclosure with the members ``missions.approve`` checks, as
    ``build_consent_disclosure`` lays them out: ``source_hashes`` computed from the record,
    ``subject`` and ``approver`` naming the principals."""
    return {
        "goal": record.mission_intent["goal"],
        "subject": record.subject.as_dict(),
        "approver": approver.as_dict(),
        "granted_authority": copy.deepcopy(record.authority_set),
        "narrowing_decisions": [],
        "mission_expiry": format_instant(record.mission_expiry),
        "source_hashes": {
            "proposal_hash": proposal_hash(
                record.origin, record.mission_intent, record.authorization_details_requested
            ),
            "authority_hash": authority_hash(record.origin, record.authority_set),
        },
        "template_version": "consent:1",
    }


@dataclass(frozen=True)
class Approval:
    """Everything ``missions.approve`` needs, consistent with ``record``."""

    approver: Principal
    approval_event_id: str
    anchors: Anchors
    consent_disclosure: dict[str, Any]
    authority_set: list[Any]
    policy_version: str

    def kwargs(self) -> dict[str, Any]:
        return {
            "approver": self.approver,
            "approval_event_id": self.approval_event_id,
            "anchors": self.anchors,
            "consent_disclosure": self.consent_disclosure,
            "authority_set": self.authority_set,
            "policy_version": self.policy_version,
        }


def make_approval(record: MissionRecord, approver: Principal = BOB) -> Approval:
    disclosure = consent_disclosure(record, approver)
    granted = copy.deepcopy(record.authority_set)
    anchors = compute_anchors(
        record.origin,
        mission_intent=record.mission_intent,
        authorization_details_requested=record.authorization_details_requested,
        consent_disclosure=disclosure,
        authority_set=granted,
    )
    return Approval(
        approver=approver,
        approval_event_id="ape_" + secrets.token_urlsafe(12),
        anchors=anchors,
        consent_disclosure=disclosure,
        authority_set=granted,
        policy_version="deploy-policy:v1",
    )


@dataclass(frozen=True)
class Traces:
    """What a Mission has left behind: history rows, audit records, outbox events."""

    history: int
    audit: int
    outbox: int


def count_traces(session: Session, mission_id: str) -> Traces:
    def count(model: Any) -> int:
        statement = select(func.count()).select_from(model).where(model.mission_id == mission_id)
        return session.scalar(statement) or 0

    return Traces(count(MissionHistory), count(AuditRecord), count(OutboxEvent))
