"""The Security Event Tokens the transmitter sends (RFC 8417; OpenID Shared Signals
Framework 1.0 section 4; PROFILE.md section 10, "Signals").

What a SET says and how it is made, for every stream whatever its delivery (RFC 8935 push,
RFC 8936 poll): the event types the transmitter supports (the URIs are the receivers' too,
:mod:`missionbound.protocol.secevent`), the claims of one SET (:func:`set_claims`: one event
per SET, one audience per SET), queueing it on a stream (:func:`queue_set`), signing it when
it goes out (:func:`sign_set`), and the events of one committed lifecycle transition
(:class:`LifecycleEvent`: the lifecycle change, and CAEP ``session-revoked`` on revocation).
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from joserfc import jwt
from sqlalchemy.orm import Session

from missionbound.issuer.keys import SignerKey
from missionbound.mission.record import MISSION_ID
from missionbound.protocol.secevent import (
    LIFECYCLE_CHANGE,
    SESSION_REVOKED,
    SET_MEDIA_TYPE,
    SET_TYPE,
    VERIFICATION,
)
from missionbound.store import signals as rows
from missionbound.store.models import OutboxEvent, SignalStream

# PROFILE.md section 10: one lifecycle-change event per committed transition; CAEP 1.0
# section 3.1 session-revoked besides it when a Mission is revoked (every token bound to it
# is dead). VERIFICATION (SSF 1.0 section 8.1.4.1) goes on request to one stream whatever it
# asked for, so it is not among the events a stream may request.
EVENTS_SUPPORTED = (LIFECYCLE_CHANGE, SESSION_REVOKED)


# -- one SET -------------------------------------------------------------------------------


def new_jti() -> str:
    return secrets.token_urlsafe(18)


def set_claims(
    *,
    issuer: str,
    audience: str,
    subject: dict[str, Any],
    event_type: str,
    event: dict[str, Any],
    now: datetime,
) -> dict[str, Any]:
    """RFC 8417 section 2.2 claims with the SSF 1.0 section 4.1 ``sub_id``: one event per
    SET, one audience per SET."""
    return {
        "iss": issuer,
        "aud": audience,
        "iat": int(now.timestamp()),
        "jti": new_jti(),
        "sub_id": subject,
        "events": {event_type: event},
    }


def queue_set(
    session: Session,
    stream: SignalStream,
    *,
    issuer: str,
    subject: dict[str, Any],
    event_type: str,
    event: dict[str, Any],
    mission_id: str | None,
    now: datetime,
) -> str:
    """Queue one SET (:func:`set_claims`, addressed to the stream's audience) on ``stream``,
    in the caller's transaction; returns its ``jti``. It is signed when it goes out."""
    claims = set_claims(
        issuer=issuer,
        audience=stream.audience,
        subject=subject,
        event_type=event_type,
        event=event,
        now=now,
    )
    rows.add_delivery(
        session,
        stream_id=stream.stream_id,
        jti=claims["jti"],
        event_type=event_type,
        mission_id=mission_id,
        claims=claims,
        now=now,
    )
    return str(claims["jti"])


def sign_set(claims: dict[str, Any], signer: SignerKey) -> str:
    """The SET as a compact JWS: ``{"alg", "typ": "secevent+jwt", "kid"}`` (RFC 8417
    section 2.3), signed with the AS's current key, verifiable with its ``jwks_uri``."""
    header = signer.protected_header(typ=SET_TYPE)
    return str(jwt.encode(header, claims, signer.key, registry=signer.registry))


# -- the SETs of one lifecycle event -------------------------------------------------------


@dataclass(frozen=True)
class LifecycleEvent:
    """An outbox ``mission.lifecycle`` payload, checked."""

    mission_id: str
    origin: str
    state: str
    prior_state: str | None
    version: int
    committed_at: str | None
    reason: str | None

    @classmethod
    def parse(cls, event: OutboxEvent) -> LifecycleEvent | None:
        payload = event.payload
        if not isinstance(payload, dict):
            return None
        mission = payload.get("mission")
        if not isinstance(mission, dict):
            return None
        mission_id, origin = mission.get("id"), mission.get("origin")
        version = payload.get("version")
        fields = (payload.get("prior_state"), payload.get("committed_at"), payload.get("reason"))
        if (
            not isinstance(mission_id, str)
            or not MISSION_ID.fullmatch(mission_id)
            or mission_id != event.mission_id
            or not isinstance(origin, str)
            or not isinstance(payload.get("state"), str)
            or isinstance(version, bool)
            or not isinstance(version, int)
            or not all(value is None or isinstance(value, str) for value in fields)
        ):
            return None
        prior_state, committed_at, reason = fields
        return cls(
            mission_id=mission_id,
            origin=origin,
            state=payload["state"],
            prior_state=prior_state,
            version=version,
            committed_at=committed_at,
            reason=reason,
        )

    def lifecycle_body(self) -> dict[str, Any]:
        """PROFILE.md section 10: the lifecycle-change event."""
        return {
            "mission": {"id": self.mission_id, "origin": self.origin},
            "state": self.state,
            "prior_state": self.prior_state,
            "version": self.version,
            "committed_at": self.committed_at,
            "reason": self.reason,
        }

    def session_revoked_body(self, now: datetime) -> dict[str, Any]:
        """CAEP 1.0 section 3.1 ``session-revoked``: every token bound to the Mission."""
        body: dict[str, Any] = {
            "mission": {"id": self.mission_id, "origin": self.origin},
            "event_timestamp": _epoch(self.committed_at, now),
        }
        if self.reason:
            body["reason_admin"] = {"en": self.reason}
        return body

    def sets_for(self, delivered: list[str], now: datetime) -> list[tuple[str, dict[str, Any]]]:
        """(event type, event) of each SET a stream delivering ``delivered`` is owed."""
        sets: list[tuple[str, dict[str, Any]]] = []
        if LIFECYCLE_CHANGE in delivered:
            sets.append((LIFECYCLE_CHANGE, self.lifecycle_body()))
        if self.state == "revoked" and SESSION_REVOKED in delivered:
            sets.append((SESSION_REVOKED, self.session_revoked_body(now)))
        return sets


def _epoch(instant: str | None, fallback: datetime) -> int:
    if instant:
        with contextlib.suppress(ValueError):
            return int(datetime.fromisoformat(instant).timestamp())
    return int(fallback.timestamp())


__all__ = [
    "EVENTS_SUPPORTED",
    "LIFECYCLE_CHANGE",
    "SESSION_REVOKED",
    "SET_MEDIA_TYPE",
    "SET_TYPE",
    "VERIFICATION",
    "LifecycleEvent",
    "new_jti",
    "queue_set",
    "set_claims",
    "sign_set",
]
