"""The Mission record of PROFILE.md section 7: immutable members plus state and version."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from missionbound.mission.errors import InvalidRequest
from missionbound.mission.lifecycle import State

MISSION_ID = re.compile(r"msn_[A-Za-z0-9_-]{22,124}")


def new_mission_id() -> str:
    """``msn_`` + 192 random bits, base64url (PROFILE.md section 7 asks for >= 128)."""
    return "msn_" + secrets.token_urlsafe(24)


def check_mission_id(value: str) -> str:
    """Validate an inbound id before any lookup."""
    if not isinstance(value, str) or not MISSION_ID.fullmatch(value):
        raise InvalidRequest("malformed mission id")
    return value


def format_instant(value: datetime) -> str:
    """RFC 3339 UTC with a ``Z`` designator and whole seconds (the record's time format)."""
    return value.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Principal:
    iss: str
    sub: str

    def as_dict(self) -> dict[str, str]:
        return {"iss": self.iss, "sub": self.sub}


@dataclass(frozen=True)
class MissionRecord:
    """A Mission as the AS holds it. Only ``state``, ``version``, ``activated_at`` and the
    approval members (filled once, at approval) ever change."""

    mission_id: str
    origin: str
    state: State
    version: int
    mission_intent: dict[str, Any]
    authorization_details_requested: list[Any]
    authority_set: list[Any]
    narrowing_decisions: list[Any]
    # None only while pending_approval without a login_hint: the AS establishes the Subject
    # at approval (PROFILE.md section 5; decision O2).
    subject: Principal | None
    client_id: str
    policy_version: str
    created_at: datetime
    mission_expiry: datetime
    approver: Principal | None = None
    proposal_hash: str | None = None
    consent_rendering_hash: str | None = None
    authority_hash: str | None = None
    consent_disclosure: dict[str, Any] | None = None
    approval_event_id: str | None = None
    activated_at: datetime | None = None
    lifecycle_history: list[dict[str, Any]] = field(default_factory=list)

    def with_state(self, state: State, version: int) -> MissionRecord:
        return replace(self, state=state, version=version)

    @property
    def max_derivations(self) -> int | None:
        """The derivation cap, None when the intent sets none. A cap that is present but not
        an integer >= 1 (only a bug or tampering can store one) reads as 0: nothing may be
        derived, rather than no limit (fail closed)."""
        context = self.mission_intent.get("context") or {}
        if not isinstance(context, dict) or "max_derivations" not in context:
            return None
        value = context["max_derivations"]
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        return 0

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (section 7 member names), as shown by status, CLI and audit."""
        return {
            "mission_id": self.mission_id,
            "origin": self.origin,
            "state": self.state.value,
            "version": self.version,
            "mission_intent": self.mission_intent,
            "authorization_details_requested": self.authorization_details_requested,
            "authority_set": self.authority_set,
            "proposal_hash": self.proposal_hash,
            "consent_rendering_hash": self.consent_rendering_hash,
            "authority_hash": self.authority_hash,
            "consent_disclosure": self.consent_disclosure,
            "narrowing_decisions": self.narrowing_decisions,
            "subject": self.subject.as_dict() if self.subject else None,
            "approver": self.approver.as_dict() if self.approver else None,
            "client_id": self.client_id,
            "policy_version": self.policy_version,
            "approval_event_id": self.approval_event_id,
            "created_at": format_instant(self.created_at),
            "activated_at": format_instant(self.activated_at) if self.activated_at else None,
            "mission_expiry": format_instant(self.mission_expiry),
            "lifecycle_history": self.lifecycle_history,
        }
