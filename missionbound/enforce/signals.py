"""A Shared Signals receiver for Mission lifecycle events (PROFILE.md section 10, "Signals").

The Authorization Server emits one Security Event Token per committed Mission transition
(``LIFECYCLE_CHANGE``, with ``mission {id, origin}``, ``state``, ``version``...). This module
is the other end:

- :class:`SignalReceiver` verifies a SET (:func:`missionbound.protocol.secevent.verify_set`),
  drops a ``jti`` it has already taken, and applies the lifecycle change to a
  :class:`MissionStateBook`.
- :class:`MissionStateBook` holds the newest known state of each Mission. It applies a state
  only when its ``version`` is higher than the one it has, so SETs delivered twice or out of
  order never move a Mission back (issuance-digest section 8.5, "never regress").
  :meth:`MissionStateBook.is_active` is true only for the exact state ``active``: an
  unknown Mission, or any other state, is not active (fail closed).
- :meth:`SignalReceiver.push_endpoint` is the RFC 8935 push endpoint as an ASGI application;
  :class:`SignalPoller` is an RFC 8936 poll client (both in
  :mod:`missionbound.enforce.signal_delivery`, re-exported here).

The receiver never changes anything at the AS: an event is what the AS decided, not
authority to decide (issuance-digest section 8.5, consumer duties).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import structlog

from missionbound.enforce.signal_delivery import PollFailed, PushEndpoint, SignalPoller
from missionbound.protocol.jwks import KeySource
from missionbound.protocol.secevent import (
    INVALID_REQUEST,
    LIFECYCLE_CHANGE,
    SESSION_REVOKED,
    VERIFICATION,
    SetRejected,
    verify_set,
)

__all__ = [
    "LIFECYCLE_CHANGE", "SESSION_REVOKED", "VERIFICATION", "MissionState", "MissionStateBook",
    "Outcome", "PollFailed", "PushEndpoint", "ReceivedSet", "SetRejected", "SignalPoller",
    "SignalReceiver",
]

log = structlog.get_logger("missionbound.enforce.signals")

ACTIVE = "active"
# PROFILE.md section 7: nothing leaves these states, so an ended Mission can be remembered
# by its id alone.
ENDED_STATES = frozenset({"revoked", "completed", "expired", "rejected"})
# The last this many jti values taken are remembered to recognise a SET delivered again.
DEFAULT_REMEMBERED_JTIS = 10_000
# Verification events kept for inspection (SSF 1.0 section 8.1.4).
REMEMBERED_VERIFICATIONS = 100


@dataclass(frozen=True)
class MissionState:
    """What a receiver knows of one Mission: its state at ``version``."""

    mission_id: str
    origin: str
    state: str
    version: int
    committed_at: str | None
    prior_state: str | None = None
    reason: str | None = None


MissionListener = Callable[[MissionState], None]


class MissionStateBook:
    """The newest known state of each Mission, in memory; thread-safe.

    :meth:`apply` takes a state only when its ``version`` is strictly higher than the one
    held (a lower or equal version changes nothing: never regress), and only from the
    Mission's own ``origin``. Listeners registered with :meth:`subscribe` are called after
    each applied change, outside the book's lock, in the thread that applied it: two changes
    applied at once by two threads may reach a listener in either order, so a listener that
    needs the current state reads :meth:`get`.

    With ``max_missions`` the book forgets Missions beyond that many, least recently changed
    first, and among them first those recorded ``active`` or ``pending_approval``: a
    forgotten Mission is not active (fail closed), and a SET older than the forgotten one can
    then only bring it back to a state that is the same or more restrictive. A forgotten
    suspended or ended Mission could be revived by such a late SET, so those go last.
    """

    def __init__(self, *, max_missions: int | None = None) -> None:
        if max_missions is not None and max_missions < 1:
            raise ValueError("max_missions must be at least 1")
        self.max_missions = max_missions
        self._lock = threading.Lock()
        self._states: dict[str, MissionState] = {}
        # Least recently changed first; "safe to forget" Missions kept apart.
        self._forgettable: OrderedDict[str, None] = OrderedDict()
        self._kept: OrderedDict[str, None] = OrderedDict()
        self._listeners: list[MissionListener] = []
        # Ended Missions moved out of _states to stay under max_missions: their ids only.
        # Forgetting them entirely would let a late, older "active" SET revive them.
        self._ended: set[str] = set()
        self.forgotten = 0  # Missions dropped or compacted because of max_missions

    def get(self, mission_id: str) -> MissionState | None:
        """The state held for ``mission_id``; None when unknown, or ended and compacted
        (see ``max_missions``)."""
        return self._states.get(mission_id)

    def has_ended(self, mission_id: str) -> bool:
        """True when the Mission is known to be in a state nothing leaves (revoked,
        completed, expired, rejected), held in full or compacted."""
        state = self._states.get(mission_id)
        return mission_id in self._ended or (state is not None and state.state in ENDED_STATES)

    def is_active(self, mission_id: str) -> bool:
        state = self._states.get(mission_id)
        return state is not None and state.state == ACTIVE

    def apply(self, state: MissionState) -> bool:
        """Record ``state`` when it is newer than what the book holds; False otherwise."""
        _check_state(state)
        with self._lock:
            if state.mission_id in self._ended:
                return False  # ended for good: no later SET can change that
            held = self._states.get(state.mission_id)
            if held is not None and held.origin != state.origin:
                log.warning("mission_origin_mismatch", mission_id=state.mission_id,
                            held_origin=held.origin, origin=state.origin)
                return False
            if held is not None and state.version <= held.version:
                if state.version == held.version and state.state != held.state:
                    log.warning("mission_version_conflict", mission_id=state.mission_id,
                                version=state.version, held=held.state, offered=state.state)
                return False
            self._states[state.mission_id] = state
            self._forgettable.pop(state.mission_id, None)
            self._kept.pop(state.mission_id, None)
            order = self._forgettable if state.state in (ACTIVE, "pending_approval") else self._kept
            order[state.mission_id] = None
            if self.max_missions is not None:
                while len(self._states) > self.max_missions:
                    if not self._forget_one(keep=state.mission_id):
                        break  # only suspended Missions left: keep them, over the bound
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(state)
            except Exception:
                log.exception("mission_listener_failed", mission_id=state.mission_id)
        return True

    def subscribe(self, listener: MissionListener) -> Callable[[], None]:
        """Call ``listener`` after each applied change; returns the function that stops it."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def snapshot(self) -> dict[str, MissionState]:
        with self._lock:
            return dict(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def _forget_one(self, *, keep: str) -> bool:
        """Make room for one: forget the least recently changed active or pending Mission
        (forgotten, it reads as not active, and a late older SET can only bring back a state
        it already had), else compact the least recently changed ended one to its id. A
        suspended Mission is never forgotten: a late older "active" SET would revive it.
        False when nothing may go."""
        for mission_id in self._forgettable:
            if mission_id != keep:
                del self._forgettable[mission_id]
                del self._states[mission_id]
                self.forgotten += 1
                return True
        for mission_id in self._kept:
            if mission_id != keep and self._states[mission_id].state in ENDED_STATES:
                del self._kept[mission_id]
                del self._states[mission_id]
                self._ended.add(mission_id)
                self.forgotten += 1
                return True
        log.warning("mission_book_over_bound", held=len(self._states), bound=self.max_missions)
        return False


def _check_state(state: MissionState) -> None:
    if not state.mission_id or not state.origin or not state.state:
        raise ValueError("a MissionState needs mission_id, origin and state")
    if isinstance(state.version, bool) or not isinstance(state.version, int) or state.version < 0:
        raise ValueError("a MissionState version is a non-negative integer")


class Outcome(StrEnum):
    """What receiving one SET did."""

    APPLIED = "applied"  # a lifecycle change newer than what the book held: recorded
    STALE = "stale"  # a lifecycle change not newer than what the book holds: nothing changed
    DUPLICATE = "duplicate"  # this jti was taken before: acknowledged, not applied again
    IGNORED = "ignored"  # no lifecycle change in it (session-revoked, verification, unknown)


@dataclass(frozen=True)
class ReceivedSet:
    """A SET that passed verification, and what the receiver made of it."""

    jti: str
    outcome: Outcome
    event_types: tuple[str, ...]
    state: MissionState | None = None  # the lifecycle change it carries
    session_revoked_mission: str | None = None  # CAEP session-revoked: the Mission's id
    verification: bool = False  # an SSF verification event
    verification_state: str | None = None  # its "state", as the receiver asked for it
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


class SignalReceiver:
    """Verifies SETs from one issuer, addressed to ``audience``, and applies them to ``book``.

    ``keys`` holds the issuer's public keys (a :class:`~missionbound.protocol.jwks.JwksCache`
    on its ``jwks_uri``). ``max_age_seconds`` refuses SETs issued longer ago than that
    (default: none, since a SET delivered late after an outage is still true and the version
    rule keeps it from undoing anything newer). ``remember_jtis`` bounds the memory of SETs
    taken, for recognising redeliveries. ``clock`` returns the current time (tests).
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        keys: KeySource,
        book: MissionStateBook | None = None,
        max_age_seconds: int | None = None,
        remember_jtis: int = DEFAULT_REMEMBERED_JTIS,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not issuer or not audience:
            raise ValueError("issuer and audience are required")
        if remember_jtis < 1:
            raise ValueError("remember_jtis must be at least 1")
        self.issuer = issuer
        self.audience = audience
        self.keys = keys
        self.book = book if book is not None else MissionStateBook()
        self.max_age_seconds = max_age_seconds
        self.remember_jtis = remember_jtis
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._taken: OrderedDict[str, None] = OrderedDict()
        self._verifications: deque[str | None] = deque(maxlen=REMEMBERED_VERIFICATIONS)

    @property
    def verification_states(self) -> list[str | None]:
        """The ``state`` of each verification event taken (None: it had none), oldest first."""
        with self._lock:
            return list(self._verifications)

    def receive(self, token: str) -> ReceivedSet:
        """Verify and apply one SET. Raises :class:`SetRejected` (RFC 8935 error code) or
        :class:`~missionbound.protocol.jwks.JwksUnavailable` (ask again later)."""
        claims = verify_set(token, keys=self.keys, issuer=self.issuer, audience=self.audience,
                            now=self._clock(), max_age_seconds=self.max_age_seconds)
        jti: str = claims["jti"]
        events: dict[str, Any] = claims["events"]
        state = (self._lifecycle_change(claims, events[LIFECYCLE_CHANGE])
                 if LIFECYCLE_CHANGE in events else None)
        revoked = (self._mission_ref(events[SESSION_REVOKED], "session-revoked", optional=True)
                   if SESSION_REVOKED in events else None)
        verification = VERIFICATION in events
        verification_state = (self._verification_state(events[VERIFICATION])
                              if verification else None)

        with self._lock:
            duplicate = jti in self._taken
            if duplicate:
                self._taken.move_to_end(jti)
            else:
                self._taken[jti] = None
                while len(self._taken) > self.remember_jtis:
                    self._taken.popitem(last=False)
                if verification:
                    self._verifications.append(verification_state)

        if duplicate:
            outcome = Outcome.DUPLICATE
        elif state is not None:
            outcome = Outcome.APPLIED if self.book.apply(state) else Outcome.STALE
        else:
            outcome = Outcome.IGNORED
        log.info("set_received", jti=jti, outcome=outcome.value,
                 mission_id=state.mission_id if state else (revoked[0] if revoked else None),
                 state=state.state if state else None, version=state.version if state else None)
        return ReceivedSet(
            jti=jti,
            outcome=outcome,
            event_types=tuple(events),
            state=state,
            session_revoked_mission=revoked[0] if revoked else None,
            verification=verification,
            verification_state=verification_state,
            claims=claims,
        )

    def push_endpoint(self, *, authorization: str | None = None) -> PushEndpoint:
        """The RFC 8935 push endpoint of this receiver, as an ASGI application: serve it
        alone, or route one path of a Starlette or FastAPI app to it
        (``app.router.routes.append(Route("/ssf/events", endpoint))``).

        ``authorization``: the exact ``Authorization`` header value the transmitter was given
        (the stream's ``authorization_header``); anything else is answered 401."""
        return PushEndpoint(self, authorization=authorization)

    # -- event bodies ----------------------------------------------------------------------

    def _lifecycle_change(self, claims: dict[str, Any], body: dict[str, Any]) -> MissionState:
        """PROFILE.md section 10: ``mission {id, origin}``, ``state``, ``prior_state``,
        ``version``, ``committed_at``, ``reason``."""
        ref = self._mission_ref(body, "lifecycle-change", optional=False)
        assert ref is not None
        mission_id, origin = ref
        state = body.get("state")
        if not isinstance(state, str) or not state:
            raise _invalid("the lifecycle-change event lacks its state")
        version = body.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise _invalid("the lifecycle-change version must be a non-negative integer")
        optional: dict[str, str | None] = {}
        for name in ("prior_state", "committed_at", "reason"):
            value = body.get(name)
            if value is not None and not isinstance(value, str):
                raise _invalid(f"the lifecycle-change {name} must be a string or null")
            optional[name] = value
        # The SET's subject, when given, is the Mission (PROFILE.md section 10).
        sub_id = claims.get("sub_id")
        if sub_id is not None and sub_id != {"format": "opaque", "id": mission_id}:
            raise _invalid("the SET sub_id is not the Mission of its lifecycle-change event")
        return MissionState(mission_id=mission_id, origin=origin, state=state, version=version,
                            committed_at=optional["committed_at"],
                            prior_state=optional["prior_state"], reason=optional["reason"])

    def _mission_ref(self, body: dict[str, Any], event: str, *, optional: bool
                     ) -> tuple[str, str] | None:
        mission = body.get("mission")
        if mission is None and optional:
            return None
        if not isinstance(mission, dict):
            raise _invalid(f"the {event} event lacks its mission object")
        mission_id, origin = mission.get("id"), mission.get("origin")
        if not isinstance(mission_id, str) or not mission_id or not isinstance(origin, str):
            raise _invalid(f"the {event} mission must have string id and origin")
        # A transmitter speaks only for the Missions it issued (issuance-digest 8.5: iss must
        # equal the event's origin).
        if origin != self.issuer:
            raise _invalid(
                f"the {event} event is about a Mission of {origin[:200]!r}, not of the SET's "
                f"issuer {self.issuer!r}"
            )
        return mission_id, origin

    @staticmethod
    def _verification_state(body: dict[str, Any]) -> str | None:
        state = body.get("state")
        if state is not None and not isinstance(state, str):
            raise _invalid("the verification event state must be a string")
        return state


def _invalid(description: str) -> SetRejected:
    return SetRejected(INVALID_REQUEST, description)
