"""Pushed authorization requests (RFC 9126): stored at ``/par``, used once at ``/authorize``.

A ``request_uri`` is bound to the client that pushed it and is single use (issuance digest
4.8: one approval event per ``request_uri``).
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from sqlalchemy import CursorResult, update
from sqlalchemy.orm import Session

from missionbound.mission.errors import InvalidRequest
from missionbound.store.errors import InvalidRequestUri
from missionbound.store.models import PushedAuthorizationRequest
from missionbound.store.validation import require_aware


def save_pushed_request(
    session: Session,
    *,
    request_uri: str,
    client_id: str,
    params: dict[str, Any],
    expires_at: datetime,
    mission_id: str | None = None,
) -> PushedAuthorizationRequest:
    if not isinstance(request_uri, str) or not 0 < len(request_uri) <= 512:
        raise InvalidRequest("request_uri must be 1 to 512 characters")
    if not isinstance(params, dict):
        raise InvalidRequest("pushed parameters must be a JSON object")
    require_aware(expires_at, "expires_at")
    pushed = PushedAuthorizationRequest(
        request_uri=request_uri,
        client_id=client_id,
        params=copy.deepcopy(params),
        mission_id=mission_id,
        expires_at=expires_at,
        consumed_at=None,
    )
    session.add(pushed)
    session.flush()
    return pushed


def get_pushed_request(
    session: Session, request_uri: str, *, client_id: str, now: datetime
) -> PushedAuthorizationRequest:
    """The pushed request for display (consent page): unused, unexpired, this client's."""
    pushed = session.get(PushedAuthorizationRequest, request_uri)
    _check_usable(pushed, client_id=client_id, now=now)
    assert pushed is not None
    return pushed


def consume_pushed_request(
    session: Session, request_uri: str, *, client_id: str, now: datetime
) -> PushedAuthorizationRequest:
    """Mark the request used, exactly once under concurrency (a conditional UPDATE: the
    second of two racing consumers matches no row), and return it."""
    require_aware(now, "now")
    result = session.execute(
        update(PushedAuthorizationRequest)
        .where(
            PushedAuthorizationRequest.request_uri == request_uri,
            PushedAuthorizationRequest.client_id == client_id,
            PushedAuthorizationRequest.consumed_at.is_(None),
            PushedAuthorizationRequest.expires_at > now,
        )
        .values(consumed_at=now),
        execution_options={"synchronize_session": False},
    )
    assert isinstance(result, CursorResult)
    pushed = session.get(PushedAuthorizationRequest, request_uri, populate_existing=True)
    if result.rowcount != 1:
        _check_usable(pushed, client_id=client_id, now=now)
        # Defensive: a racing consumer that committed is seen by the read above.
        raise InvalidRequestUri("request_uri was already used")
    assert pushed is not None
    return pushed


def _check_usable(
    pushed: PushedAuthorizationRequest | None, *, client_id: str, now: datetime
) -> None:
    # One message for unknown and foreign: a client must not learn about others' requests.
    if pushed is None or pushed.client_id != client_id:
        raise InvalidRequestUri("unknown request_uri")
    if pushed.consumed_at is not None:
        raise InvalidRequestUri("request_uri was already used")
    if pushed.expires_at <= now:
        raise InvalidRequestUri("request_uri has expired")
