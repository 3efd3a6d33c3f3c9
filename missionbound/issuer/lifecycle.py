"""Changing a Mission's lifecycle on request (PROFILE.md sections 7 and 10, "Lifecycle").

The one service function behind every way a person or a client stops, pauses, resumes or
closes a Mission: the lifecycle endpoint, the console and the CLI. It checks the operation,
lets the pure machine decide with the caller's roles (``mission_access``) and applies the
decision through the store, which writes the history row, the audit record (with the acting
party and the reason) and the outbox event in the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from missionbound.mission.errors import InvalidRequest
from missionbound.mission.lifecycle import (
    DEFAULT_POLICY,
    LIFECYCLE_OPERATIONS,
    Event,
    LifecyclePolicy,
    Role,
)
from missionbound.store.lifecycle import TransitionResult, transition

OPERATION_NAMES = tuple(event.value for event in LIFECYCLE_OPERATIONS)


@dataclass(frozen=True)
class LifecycleActor:
    """Who asks: the roles they hold on this Mission and how the audit log names them
    (for example ``{"user": "bob", "via": "console"}`` or
    ``{"client_id": "demo-agent", "auth": "private_key_jwt"}``)."""

    roles: frozenset[Role]
    trace: dict[str, Any] = field(default_factory=dict)


def parse_operation(value: Any) -> Event:
    """The ``operation`` form field: one of revoke, suspend, resume, complete."""
    if isinstance(value, str) and value in OPERATION_NAMES:
        return Event(value)
    raise InvalidRequest(f"operation must be one of {', '.join(OPERATION_NAMES)}")


def change_lifecycle(
    session: Session,
    mission_id: str,
    operation: Event | str,
    actor: LifecycleActor,
    *,
    reason: str | None,
    now: datetime,
    expected_version: int | None = None,
    policy: LifecyclePolicy = DEFAULT_POLICY,
) -> TransitionResult:
    """Apply one lifecycle operation in the caller's transaction.

    Raises the core's typed errors (``TransitionForbidden`` when the actor's roles do not
    allow it, ``InvalidState``, ``ConcurrentModification``, ``MissionNotFound``,
    ``InvalidRequest``); each surface maps them to its own wire form. An idempotent repeat
    returns ``decision.changed`` False and writes nothing."""
    event = parse_operation(operation.value if isinstance(operation, Event) else operation)
    return transition(
        session,
        mission_id,
        event,
        roles=actor.roles,
        actor={"roles": sorted(role.value for role in actor.roles), **actor.trace},
        reason=reason,
        now=now,
        expected_version=expected_version,
        policy=policy,
    )
