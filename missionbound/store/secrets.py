"""Server secrets shared by every replica (session and CSRF MACs, DPoP nonces).

A secret is created by the first replica that asks and read by all others: an insert that
ignores a conflict, then a read, so two replicas starting at once agree on one value.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime

from sqlalchemy.orm import Session

from missionbound.mission.errors import InvalidRequest
from missionbound.store.models import ServerSecret
from missionbound.store.upsert import insert_ignoring_conflicts
from missionbound.store.validation import require_aware

SECRET_BYTES = 32


def server_secret(session: Session, name: str, *, now: datetime) -> bytes:
    """The 32-byte secret called ``name``, created on first use."""
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        raise InvalidRequest("secret name must be 1 to 64 characters")
    require_aware(now, "now")
    existing = session.get(ServerSecret, name)
    if existing is None:
        value = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode()
        insert_ignoring_conflicts(
            session, ServerSecret, {"name": name, "value": value, "created_at": now}
        )
        existing = session.get(ServerSecret, name, populate_existing=True)
    assert existing is not None
    return base64.urlsafe_b64decode(existing.value)
