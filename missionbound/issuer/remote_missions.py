"""The Mission state a Resource AS learns from the origin (PROFILE.md section 11: "freshness
comes from the origin's status endpoint"; docs/resource-as.md).

A Resource AS holds no Mission and never reports a Mission's state. Before it acts for one
(an ID-JAG redemption, a Transaction Token) it asks the origin's Mission Status endpoint
(PROFILE.md section 10, docs/mission-governance.md) and acts only on a signed ``active``:

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

import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import structlog
from sqlalchemy.orm import Session

from missionbound.config import TrustedOrigin
from missionbound.issuer.trusted_origins import (
    OriginUnavailable,
    TrustedOrigins,
    UntrustedToken,
    read_unverified,
    trusted_origins_of,
    verify_origin_jwt,
)
from missionbound.mission.errors import InvalidRequest
from missionbound.mission.intent import parse_instant
from missionbound.mission.lifecycle import State
from missionbound.mission.record import MISSION_ID
from missionbound.store.errors import DerivationRefused, InvalidGrant
from missionbound.store.remote_missions import RemoteState, record_remote_state, remote_state
from missionbound.store.transactions import run_after_rollback

if TYPE_CHECKING:
    from missionbound.issuer.server import MissionIssuer

log = structlog.get_logger("missionbound.issuer")

# The signed Mission Status (PROFILE.md section 10; issuer/mission_status.py signs it, and is
# not imported here: it imports the issuer's server, which imports this role's grants).
STATUS_TYPE = "mission-status-response+jwt"
STATUS_MEDIA_TYPE = f"application/{STATUS_TYPE}"
MAX_STATUS_BYTES = 65536
STATUS_CLOCK_SKEW = timedelta(seconds=30)
_STATES = frozenset(state.value for state in State)


class MissionUnknownAtOrigin(InvalidGrant):
    """The origin answered 404: it does not vouch for this Mission to this AS (unknown, or
    not one whose resources our status client may see)."""


def ask_mission_status(
    origins: TrustedOrigins, origin: TrustedOrigin, mission_id: str, audience: str,
    now: datetime,
) -> RemoteState:
    """The origin's signed state of ``mission_id`` for ``audience``, verified. Raises
    :class:`MissionUnknownAtOrigin` or :class:`OriginUnavailable`."""
    nonce = "n-" + secrets.token_urlsafe(16)
    signed = _post_status_request(origins.http, origin, mission_id, audience, nonce)
    try:
        header, claims = read_unverified(signed, "Mission Status")
        verify_origin_jwt(signed, header, keys=origins.keys(origin), typ=STATUS_TYPE,
                          what="Mission Status")
        return _status_of(claims, origin, mission_id, audience, nonce, now)
    except UntrustedToken as exc:
        log.warning("mission_status_unusable", origin=origin.issuer, mission=mission_id,
                    reason=str(exc))
        raise OriginUnavailable(
            f"the Mission Status from {origin.issuer} cannot be relied on ({exc}); "
            "refusing (fail closed)") from None


def _post_status_request(client: httpx.Client, origin: TrustedOrigin, mission_id: str,
                         audience: str, nonce: str) -> str:
    where = origin.status_endpoint
    try:
        with client.stream(
            "POST", where,
            data={"mission": mission_id, "audience": audience, "nonce": nonce},
            auth=(origin.status_client_id, origin.status_client_secret),
            headers={"Accept": STATUS_MEDIA_TYPE},
            follow_redirects=False,
        ) as response:
            if response.status_code == 404:
                raise MissionUnknownAtOrigin(
                    f"the origin {origin.issuer} does not vouch for Mission {mission_id} to "
                    "this Resource AS")
            if response.status_code != 200:
                log.warning("mission_status_refused", origin=origin.issuer,
                            mission=mission_id, status=response.status_code)
                raise OriginUnavailable(
                    f"the Mission Status endpoint of {origin.issuer} answered HTTP "
                    f"{response.status_code}; refusing (fail closed)")
            media_type = response.headers.get("content-type", "").split(";")[0].strip()
            if media_type.lower() != STATUS_MEDIA_TYPE:
                raise OriginUnavailable(
                    f"the Mission Status endpoint of {origin.issuer} answered "
                    f"{media_type[:80] or 'no Content-Type'}, not {STATUS_MEDIA_TYPE}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_STATUS_BYTES:
                    raise OriginUnavailable(
                        f"the Mission Status from {origin.issuer} is too large")
    except httpx.HTTPError as exc:
        log.warning("mission_status_unavailable", origin=origin.issuer, mission=mission_id,
                    error=type(exc).__name__)
        raise OriginUnavailable(
            f"the Mission Status endpoint of {origin.issuer} cannot be reached "
            f"({type(exc).__name__}); refusing (fail closed)") from None
    try:
        return bytes(body).decode("ascii").strip()
    except UnicodeDecodeError:
        raise OriginUnavailable(
            f"the Mission Status from {origin.issuer} is not a JWS") from None


def _status_of(claims: dict[str, Any], origin: TrustedOrigin, mission_id: str,
               audience: str, nonce: str, now: datetime) -> RemoteState:
    """The checks a consumer makes (docs/mission-governance.md, "The signed Mission
    Status"), then the state it reports."""
    def refuse(what: str) -> UntrustedToken:
        return UntrustedToken(f"its {what}")

    if claims.get("iss") != origin.issuer:
        raise refuse("iss is not the origin")
    if claims.get("aud") != audience:
        raise refuse("aud is not the audience asked for")
    if claims.get("sub") != origin.status_client_id:
        raise refuse("sub is not our status client")
    if claims.get("nonce") != nonce:
        raise refuse("nonce is not the one sent")
    mission = claims.get("mission")
    if (not isinstance(mission, dict) or mission.get("id") != mission_id
            or mission.get("origin") != origin.issuer):
        raise refuse("mission is not the Mission asked about")
    if not _is_number(claims.get("iat")) or not _is_number(claims.get("exp")):
        raise refuse("iat or exp is not a NumericDate")
    iat: float = claims["iat"]
    exp: float = claims["exp"]
    skew = STATUS_CLOCK_SKEW.total_seconds()
    if iat > now.timestamp() + skew or exp < now.timestamp() - skew:
        raise refuse("iat is in the future or exp has passed")
    state, version = claims.get("state"), claims.get("version")
    if not isinstance(state, str) or not 0 < len(state) <= 32:
        raise refuse("state is missing")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise refuse("version is not a positive integer")
    expiry = None
    if "mission_expiry" in claims:
        try:
            expiry = parse_instant(claims["mission_expiry"], "mission_expiry")
        except InvalidRequest:
            raise refuse("mission_expiry is not an RFC 3339 instant") from None
    return RemoteState(origin.issuer, mission_id, state, version, expiry, now)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def effective_remote_state(state: RemoteState, now: datetime) -> str:
    """The state to act on: what the origin said, the clock first (PROFILE.md section 7),
    and a state this software does not know read as no state at all (fail closed)."""
    if state.state not in _STATES:
        return ""
    if state.state == State.ACTIVE and state.mission_expiry is not None \
            and now >= state.mission_expiry:
        return State.EXPIRED.value
    return state.state


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
