"""What a protected route is handed once :class:`~missionbound.enforce.rs.guard.MissionGuard`
let its request through (PROFILE.md section 2): the verified token, the action and the
``authorization_details`` entry that allowed it, and at RS-C/RS-D the Mission state and the
PDP's permit the decision used."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from missionbound.enforce.rs.pdp_client import PdpDecision
from missionbound.enforce.rs.request import RequestFacts
from missionbound.enforce.rs.state import ObservedState
from missionbound.mission.delegation import Actor
from missionbound.protocol.access_tokens import AccessToken
from missionbound.protocol.mission_claim import MissionEvidence


@dataclass(frozen=True)
class MissionContext:
    """What the route handler may rely on once the guard let the request through."""

    token: AccessToken
    action: str
    # The authorization_details entry that allowed the request (this resource, this action,
    # every constraint met).
    entry: Mapping[str, Any]
    # RS-C: the Mission state the decision used; None at RS-B.
    state: ObservedState | None = None
    facts: RequestFacts | None = field(default=None, repr=False)
    # RS-D: the PDP's permit the route runs under (its parameters are what it may act on).
    decision: PdpDecision | None = None

    @property
    def evaluation_id(self) -> str | None:
        """RS-D: the PDP's ``evaluation_id`` of the permit, for the route's own records."""
        return self.decision.evaluation_id if self.decision is not None else None

    @property
    def mission(self) -> MissionEvidence:
        return self.token.mission

    @property
    def subject(self) -> str:
        return self.token.subject

    @property
    def actors(self) -> tuple[Actor, ...]:
        """The ``act`` chain, the immediate actor first; () when not delegated."""
        return self.token.actors

    @property
    def acting_client(self) -> str:
        """Who is acting: the immediate actor of ``act`` for a delegated token, else the
        client the token was issued to."""
        return self.token.actors[0].sub if self.token.actors else self.token.client_id


__all__ = ["MissionContext"]
