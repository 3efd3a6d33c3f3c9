"""The Mission state a Resource AS learns from the origin (PROFILE.md section 11: "freshness
comes from the origin's status endpoint"; docs/resource-as.md).

A Resource AS holds no Mission and never reports a Mission's state. Before it acts for one
(an ID-JAG redemption, a Transaction Token) it asks the origin's Mission Status endpoint
(PROFILE.md section 10, docs/mission-governance.md) and acts only on a signed ``active``.
The exchange is :mod:`missionbound.protocol.mission_status`, shared with the Resource
Servers' RS-C state source (enforce/rs/state.py); this module maps its outcomes:

* ``POST <status_endpoint>`` with ``mission``, ``audience`` (a resource this AS serves) and a
  fresh ``nonce``, authenticated with HTTP Basic as the ``status_client_id`` the origin
  registered for this AS, bounded by :data:`~missionbound.issuer.trusted_origins.ORIGIN_TIMEOUT`;
* the answer must be ``200`` ``application/mission-status-response+jwt``, a JWS with ``typ``
  ``mission-status-response+jwt`` signed by a key of the origin's JWKS, ``iss`` the origin,
  ``aud`` the audience asked, ``sub`` our status client id, our ``nonce``, ``mission`` the
  Mission asked about, ``iat`` not in the future and ``exp`` not past (30 s skew);
* its state is recorded forward-only by ``version`` (store/remote_missions.py), which is what
  introspection of this AS's local tokens reads.

Outcomes: ``active`` (and ``mission_expiry`` not past) lets the caller go on; any other
state refuses with ``invalid_grant`` and ``mission_state`` (as the gate does at the origin);
a 404 (the origin does not vouch for this Mission to us) is ``invalid_grant``; anything that
keeps us from learning the state (network, timeout, another status, an answer that does not
verify) is 503 ``temporarily_unavailable``: fail closed, and the client may retry (decision
F4). The origin is asked on every use, never from a cache (decision F3).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy.orm import Session

from missionbound.config import TrustedOrigin
from missionbound.issuer.trusted_origins import (
    OriginUnavailable,
    TrustedOrigins,
    trusted_origins_of,
)
from missionbound.mission.lifecycle import State
from missionbound.mission.record import MISSION_ID
from missionbound.protocol.mission_status import (
    MAX_STATUS_BYTES,
    STATUS_CLOCK_SKEW,
    STATUS_MEDIA_TYPE,
    STATUS_TYPE,
    MissionStatusUnavailable,
    MissionStatusUnknown,
    request_mission_status,
    state_to_act_on,
)
from missionbound.store.errors import DerivationRefused, InvalidGrant
from missionbound.store.remote_missions import RemoteState, record_remote_state, remote_state
from missionbound.store.transactions import run_after_rollback

if TYPE_CHECKING:
    from missionbound.issuer.server import MissionIssuer

__all__ = [
    "MAX_STATUS_BYTES", "STATUS_CLOCK_SKEW", "STATUS_MEDIA_TYPE", "STATUS_TYPE",
    "MissionUnknownAtOrigin", "ask_any_audience", "ask_mission_status", "ask_remote_state",
    "effective_remote_state", "record_and_require_active", "require_active",
    "require_active_remote",
]

log = structlog.get_logger("missionbound.issuer")


class MissionUnknownAtOrigin(InvalidGrant):
    """The origin answered 404: it does not vouch for this Mission to this AS (unknown, or
    not one whose resources our status client may see)."""


def ask_mission_status(
    origins: TrustedOrigins, origin: TrustedOrigin, mission_id: str, audience: str,
    now: datetime,
) -> RemoteState:
    """The origin's signed state of ``mission_id`` for ``audience``, verified
    (:func:`missionbound.protocol.mission_status.request_mission_status`, bounded by the
    origins' client timeouts). Raises :class:`MissionUnknownAtOrigin` or
    :class:`OriginUnavailable`."""
    try:
        status = request_mission_status(
            origins.http, status_endpoint=origin.status_endpoint, issuer=origin.issuer,
            keys=origins.keys(origin), mission_id=mission_id, audience=audience,
            client_id=origin.status_client_id, client_secret=origin.status_client_secret,
            now=now)
    except MissionStatusUnknown:
        raise MissionUnknownAtOrigin(
            f"the origin {origin.issuer} does not vouch for Mission {mission_id} to "
            "this Resource AS") from None
    except MissionStatusUnavailable as exc:
        _log_unavailable(exc, origin, mission_id)
        raise OriginUnavailable(exc.description) from None
    return RemoteState(origin.issuer, mission_id, status.state, status.version,
                       status.mission_expiry, now)


def _log_unavailable(exc: MissionStatusUnavailable, origin: TrustedOrigin,
                     mission_id: str) -> None:
    if exc.reason == MissionStatusUnavailable.HTTP_STATUS:
        log.warning("mission_status_refused", origin=origin.issuer, mission=mission_id,
                    status=exc.status_code)
    elif exc.reason == MissionStatusUnavailable.UNREACHABLE:
        log.warning("mission_status_unavailable", origin=origin.issuer, mission=mission_id,
                    error=exc.error)
    elif exc.reason == MissionStatusUnavailable.UNTRUSTED:
        log.warning("mission_status_unusable", origin=origin.issuer, mission=mission_id,
                    reason=exc.detail)


def effective_remote_state(state: RemoteState, now: datetime) -> str:
    """The state to act on: what the origin said, the clock first (PROFILE.md section 7),
    and a state this software does not know read as no state at all (fail closed)."""
    return state_to_act_on(state.state, state.mission_expiry, now)


def require_active(state: RemoteState, now: datetime) -> None:
    """Refuse unless ``state`` is effectively ``active``: ``invalid_grant`` with
    ``mission_state`` (PROFILE.md section 8), as the origin's own gate would."""
    effective = effective_remote_state(state, now)
    if effective == State.ACTIVE:
        return
    if not effective:
        raise DerivationRefused(
            "the origin reports a Mission state this AS does not know; refusing (fail closed)",
            mission_state=None, mission_error="mission_state_unknown")
    raise DerivationRefused(
        f"the origin reports the Mission {effective}; nothing can be derived from it",
        mission_state=effective, mission_error=f"mission_{effective}")


def record_and_require_active(session: Session, state: RemoteState, now: datetime) -> None:
    """Record ``state`` in the request's transaction, then refuse unless it is active. The
    origin's word is knowledge, not part of the request: if the transaction rolls back (this
    refusal, or a later one), it is recorded after the rollback all the same."""
    run_after_rollback(session, f"remote-mission:{state.origin}:{state.mission_id}",
                       lambda fresh: record_remote_state(fresh, state))
    record_remote_state(session, state)
    # Another request may have learned a newer state meanwhile (a revocation): act on the
    # newest this AS knows, read under the row's lock so that a concurrent newer write is
    # either seen here or made after this request commits.
    latest = remote_state(session, state.origin, state.mission_id, for_update=True)
    require_active(latest if latest is not None and latest.version > state.version
                   else state, now)


def ask_remote_state(
    issuer: MissionIssuer, mission_claim: dict[str, Any], now: datetime, *,
    audience: str | None = None,
) -> RemoteState:
    """What the origin named by ``mission_claim["origin"]`` (a trusted origin of this AS)
    says now, signed, of Mission ``mission_claim["id"]``. Call it outside any database
    transaction: it is a network round trip (a slow origin must never hold this AS's
    database). ``audience`` is the resource to ask about (a token's ``aud``); without it
    this AS's resources are tried in turn until the origin answers for one. Errors:
    ``invalid_grant`` when the Mission is unknown to the origin or the origin is not
    trusted; 503 ``temporarily_unavailable`` when the origin cannot be asked."""
    origins = trusted_origins_of(issuer)
    origin = origins.find(mission_claim.get("origin"))
    mission_id = mission_claim.get("id")
    if origin is None:
        raise InvalidGrant("the Mission's origin is not an issuer this AS trusts")
    if not isinstance(mission_id, str) or not MISSION_ID.fullmatch(mission_id):
        raise InvalidGrant("the mission claim has no valid Mission id")
    return ask_any_audience(origins, origin, mission_id,
                            [audience] if audience else sorted(issuer.tenant.catalog.resources),
                            now)


def require_active_remote(
    issuer: MissionIssuer, mission_claim: dict[str, Any], now: datetime, *,
    audience: str | None = None,
) -> None:
    """:func:`ask_remote_state`, the answer recorded in a transaction of its own, then
    refused unless active (``invalid_grant`` + ``mission_state``). For callers outside any
    transaction; inside one, ask first and :func:`record_and_require_active` there."""
    state = ask_remote_state(issuer, mission_claim, now, audience=audience)
    with issuer.store.begin() as session:
        record_and_require_active(session, state, now)


def ask_any_audience(origins: TrustedOrigins, origin: TrustedOrigin, mission_id: str,
                     audiences: Iterable[str], now: datetime) -> RemoteState:
    """:func:`ask_mission_status` for the first of ``audiences`` the origin answers for."""
    unknown: MissionUnknownAtOrigin | None = None
    for audience in audiences:
        try:
            return ask_mission_status(origins, origin, mission_id, audience, now)
        except MissionUnknownAtOrigin as exc:
            unknown = exc
    raise unknown or MissionUnknownAtOrigin("no resource of this AS to ask the origin about")
