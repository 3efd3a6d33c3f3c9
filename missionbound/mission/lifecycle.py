"""The seven-state Mission lifecycle of PROFILE.md section 7, as a pure decision function.

The store applies what :func:`decide_transition` returns; nothing here reads a clock or a
database. Callers pass ``now`` so that the same inputs always give the same answer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from missionbound.mission.errors import (
    ConcurrentModification,
    InvalidRequest,
    InvalidState,
    TransitionForbidden,
)


class State(enum.StrEnum):
    PENDING_APPROVAL = "pending_approval"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"
    COMPLETED = "completed"
    EXPIRED = "expired"
    REJECTED = "rejected"


TERMINAL_STATES = frozenset({State.REVOKED, State.COMPLETED, State.EXPIRED, State.REJECTED})


class Event(enum.StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    SUSPEND = "suspend"
    RESUME = "resume"
    REVOKE = "revoke"
    COMPLETE = "complete"
    EXPIRE = "expire"


class Role(enum.StrEnum):
    """Who is asking, relative to this Mission (a principal can hold several roles)."""

    CLIENT = "client"  # the OAuth client the Mission was approved for
    SUBJECT = "subject"  # the principal the task is for
    APPROVER = "approver"  # the principal who consented (or may consent, while pending)
    ADMIN = "admin"  # a deployment administrator
    CLOCK = "clock"  # the AS itself, acting on mission_expiry or the consent window


# The four operations the lifecycle endpoint exposes (PROFILE.md section 10).
LIFECYCLE_OPERATIONS = (Event.REVOKE, Event.SUSPEND, Event.RESUME, Event.COMPLETE)

# (from, event) -> to. Anything not listed is illegal.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.PENDING_APPROVAL, Event.APPROVE): State.ACTIVE,
    (State.PENDING_APPROVAL, Event.REJECT): State.REJECTED,
    (State.PENDING_APPROVAL, Event.EXPIRE): State.EXPIRED,
    (State.ACTIVE, Event.SUSPEND): State.SUSPENDED,
    (State.SUSPENDED, Event.RESUME): State.ACTIVE,
    (State.ACTIVE, Event.REVOKE): State.REVOKED,
    (State.SUSPENDED, Event.REVOKE): State.REVOKED,
    (State.ACTIVE, Event.COMPLETE): State.COMPLETED,
    (State.SUSPENDED, Event.COMPLETE): State.COMPLETED,
    (State.ACTIVE, Event.EXPIRE): State.EXPIRED,
    (State.SUSPENDED, Event.EXPIRE): State.EXPIRED,
}

# The state each event aims at, used for the idempotent-repeat rule.
EVENT_TARGET: dict[Event, State] = {
    Event.APPROVE: State.ACTIVE,
    Event.REJECT: State.REJECTED,
    Event.SUSPEND: State.SUSPENDED,
    Event.RESUME: State.ACTIVE,
    Event.REVOKE: State.REVOKED,
    Event.COMPLETE: State.COMPLETED,
    Event.EXPIRE: State.EXPIRED,
}


@dataclass(frozen=True)
class LifecyclePolicy:
    """Deployment knobs the profile leaves to policy."""

    subject_may_suspend: bool = False
    consent_window: timedelta = timedelta(minutes=10)


DEFAULT_POLICY = LifecyclePolicy()


def allowed_roles(event: Event, policy: LifecyclePolicy = DEFAULT_POLICY) -> frozenset[Role]:
    """Who may trigger ``event`` (PROFILE.md section 7, column "Who")."""
    if event in (Event.APPROVE, Event.REJECT):
        return frozenset({Role.APPROVER})
    if event is Event.SUSPEND:
        roles = {Role.ADMIN}
        if policy.subject_may_suspend:
            roles.add(Role.SUBJECT)
        return frozenset(roles)
    if event is Event.RESUME:
        return frozenset({Role.ADMIN})
    if event is Event.REVOKE:
        return frozenset({Role.SUBJECT, Role.APPROVER, Role.ADMIN})
    if event is Event.COMPLETE:
        return frozenset({Role.CLIENT, Role.ADMIN})
    return frozenset({Role.CLOCK})


def parse_state(value: str) -> State:
    """Read a stored state; an unknown value is refused, never treated as active."""
    try:
        return State(value)
    except ValueError:
        raise InvalidState(f"unknown Mission state {value!r}; refusing (fail closed)") from None


def effective_state(
    stored: State,
    *,
    now: datetime,
    mission_expiry: datetime,
    created_at: datetime,
    policy: LifecyclePolicy = DEFAULT_POLICY,
) -> State:
    """Clock first: a Mission past its expiry (or a pending one past the consent window) is
    ``expired`` whatever the stored state says; persisting that may happen later."""
    if stored in TERMINAL_STATES:
        return stored
    if now >= mission_expiry:
        return State.EXPIRED
    if stored is State.PENDING_APPROVAL and now >= created_at + policy.consent_window:
        return State.EXPIRED
    return stored


def is_effectively_active(stored: str, *, now: datetime, mission_expiry: datetime) -> bool:
    """Only the exact stored value ``active`` before expiry permits anything; any other
    value, including one this code does not know, does not."""
    return stored == State.ACTIVE.value and now < mission_expiry


@dataclass(frozen=True)
class TransitionDecision:
    """What the store must do. ``changed`` False means an idempotent repeat: no event."""

    event: Event
    from_state: State
    to_state: State
    from_version: int
    to_version: int

    @property
    def changed(self) -> bool:
        return self.from_state is not self.to_state


def decide_transition(
    current: State,
    version: int,
    event: Event,
    roles: frozenset[Role] | set[Role],
    *,
    expected_version: int | None = None,
    policy: LifecyclePolicy = DEFAULT_POLICY,
) -> TransitionDecision:
    """Decide ``event`` on a Mission whose *effective* state is ``current``.

    Precedence (docs/decisions.md L1): who may ask, then the idempotent repeat (so a retried
    request whose first attempt committed still succeeds; a version the Mission never had is
    not a retry), then ``expected_version``, then the terminal rule, then legality.
    """
    if not (set(roles) & allowed_roles(event, policy)):
        raise TransitionForbidden(f"not allowed to {event.value} this Mission")
    if expected_version is not None and (
        isinstance(expected_version, bool) or not isinstance(expected_version, int)
    ):
        raise InvalidRequest("expected_version must be an integer")
    target = EVENT_TARGET[event]
    if current is target and (expected_version is None or expected_version <= version):
        return TransitionDecision(event, current, current, version, version)
    if expected_version is not None and expected_version != version:
        raise ConcurrentModification(
            f"expected version {expected_version} but the Mission is at version {version}"
        )
    if current in TERMINAL_STATES:
        raise ConcurrentModification(f"the Mission is {current.value}; {event.value} refused")
    to_state = TRANSITIONS.get((current, event))
    if to_state is None:
        raise InvalidState(f"cannot {event.value} a Mission that is {current.value}")
    return TransitionDecision(event, current, to_state, version, version + 1)
