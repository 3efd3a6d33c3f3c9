"""Registered OAuth clients (RFC 7591 metadata; secrets only as hashes)."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from missionbound.mission.errors import InvalidRequest
from missionbound.store.models import Client
from missionbound.store.validation import require_aware


def put_client(
    session: Session,
    *,
    client_id: str,
    metadata: dict[str, Any],
    secret_hash: str | None,
    now: datetime,
) -> Client:
    """Register ``client_id``, or replace its metadata and secret hash (keeps
    ``created_at``): loading a tenant configuration twice is harmless."""
    if not isinstance(client_id, str) or not 0 < len(client_id) <= 255:
        raise InvalidRequest("client_id must be 1 to 255 characters")
    if not isinstance(metadata, dict):
        raise InvalidRequest("client metadata must be a JSON object")
    require_aware(now, "now")
    client = session.get(Client, client_id)
    if client is None:
        client = Client(client_id=client_id, created_at=now)
        session.add(client)
    client.client_metadata = copy.deepcopy(metadata)
    client.secret_hash = secret_hash
    session.flush()
    return client


def get_client(session: Session, client_id: str) -> Client | None:
    return session.get(Client, client_id)


def list_clients(session: Session) -> list[Client]:
    return list(session.scalars(select(Client).order_by(Client.client_id)))
