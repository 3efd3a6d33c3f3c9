"""The audit spine of PROFILE.md section 15: an append-only, hash-chained log keyed by
``mission.id``.

Each record carries a global sequence number ``seq`` and, when it concerns a Mission, a
per-Mission sequence ``mission_seq``. It is linked twice: ``prev_hash`` is the
``record_hash`` of the previous record of the whole log, ``mission_prev_hash`` the
``record_hash`` of the previous record of the same Mission (so one Mission's story can be
proven on its own). ``record_hash = digest_json(body)`` where the body is every stored
field except ``record_hash`` itself (:func:`record_body`).

Appends happen in the caller's transaction, beside the change they record, and are
serialized: on PostgreSQL by locking the single ``audit_chain_head`` row (``SELECT ... FOR
UPDATE``), on SQLite by the ``BEGIN IMMEDIATE`` write transaction. The head lock is held to
commit, so append after taking every other lock of the transaction
(``missionbound.store.transactions`` gives the order).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.orm import Session

from missionbound.mission.canonical import check_canonicalizable, digest_json
from missionbound.mission.errors import InvalidRequest
from missionbound.store.models import AuditChainHead, AuditRecord
from missionbound.store.upsert import insert_ignoring_conflicts

ANCHOR_NAMES = ("proposal_hash", "consent_rendering_hash", "authority_hash")
CHAIN_HEAD_ID = 1
RECORD_FORMAT = "missionbound-audit/1"

# The stored fields that enter the hash, in the order they are listed to auditors.
BODY_FIELDS = (
    "seq",
    "mission_id",
    "mission_seq",
    "event",
    "actor",
    "proposal_hash",
    "consent_rendering_hash",
    "authority_hash",
    "policy_version",
    "data",
    "at",
    "prev_hash",
    "mission_prev_hash",
)


def format_audit_instant(value: datetime) -> str:
    """RFC 3339 UTC with microseconds: both databases store microseconds, so the hashed
    text is exactly what comes back."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_body(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The hashed body of a record, from its stored fields (a row mapping or a dict)."""
    body: dict[str, Any] = {"format": RECORD_FORMAT}
    for name in BODY_FIELDS:
        value = fields[name]
        body[name] = format_audit_instant(value) if name == "at" else value
    return body


def compute_record_hash(fields: Mapping[str, Any]) -> str:
    return digest_json(record_body(fields))


def append(
    session: Session,
    *,
    event: str,
    mission_id: str | None,
    actor: dict[str, Any] | None,
    anchors: Mapping[str, str | None] | None,
    policy_version: str | None,
    data: dict[str, Any],
    at: datetime,
) -> AuditRecord:
    """Append one record to the log inside the caller's transaction and return it.

    Bad input (an unknown anchor name, a naive ``at``, data that has no canonical JSON form)
    raises :class:`InvalidRequest` before anything is written.
    """
    fields = _checked_fields(
        event=event,
        mission_id=mission_id,
        actor=actor,
        anchors=anchors,
        policy_version=policy_version,
        data=data,
        at=at,
    )
    # Whatever the transaction still has pending is written before the head is locked (the
    # lock order: audit records last), as the ORM's autoflush did when the head was an entity.
    session.flush()
    connection = session.connection()
    last_seq, last_hash = _lock_chain_head(session, connection)
    fields["seq"] = last_seq + 1
    fields["prev_hash"] = last_hash
    fields["mission_seq"] = None
    fields["mission_prev_hash"] = None
    if mission_id is not None:
        # Serialized by the head lock: no other appender can add to this Mission meanwhile.
        previous = connection.execute(_PREVIOUS_OF_MISSION, {"mission_id": mission_id}).first()
        fields["mission_seq"] = 1 if previous is None else previous.mission_seq + 1
        fields["mission_prev_hash"] = None if previous is None else previous.record_hash
    record_hash = compute_record_hash(fields)
    # Append-only rows: plain INSERT and UPDATE, no ORM unit of work.
    connection.execute(insert(AuditRecord), {**fields, "record_hash": record_hash})
    connection.execute(_ADVANCE_HEAD, {"seq": fields["seq"], "hash": record_hash})
    # Returned for the caller to read; not attached to the session.
    return AuditRecord(**fields, record_hash=record_hash)


def _checked_fields(
    *,
    event: str,
    mission_id: str | None,
    actor: dict[str, Any] | None,
    anchors: Mapping[str, str | None] | None,
    policy_version: str | None,
    data: dict[str, Any],
    at: datetime,
) -> dict[str, Any]:
    if not isinstance(event, str) or not 0 < len(event) <= 64:
        raise InvalidRequest("audit event must be a name of 1 to 64 characters")
    if mission_id is not None and (not isinstance(mission_id, str) or len(mission_id) > 128):
        raise InvalidRequest("audit mission_id must be a string of at most 128 characters")
    if not isinstance(data, dict):
        raise InvalidRequest("audit data must be a JSON object")
    if actor is not None and not isinstance(actor, dict):
        raise InvalidRequest("audit actor must be a JSON object")
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise InvalidRequest("audit time must be a timezone-aware datetime")
    unknown = set(anchors or {}) - set(ANCHOR_NAMES)
    if unknown:
        raise InvalidRequest(f"unknown audit anchor(s): {', '.join(sorted(unknown))}")
    fields: dict[str, Any] = {
        "mission_id": mission_id,
        "event": event,
        # Copies: a caller mutating its dict after the append must not desynchronize the
        # stored JSON from the hash computed here.
        "actor": _copy_json(actor),
        "policy_version": policy_version,
        "data": _copy_json(data),
        # Stored with microsecond precision; truncate nothing, convert to UTC.
        "at": at.astimezone(UTC),
    }
    for name in ANCHOR_NAMES:
        fields[name] = (anchors or {}).get(name)
    # Refuses floats that are not finite, oversized integers, non-string keys: the checks
    # canonicalization makes, done before any lock or write. The canonical bytes themselves
    # are built once, for the record hash.
    check_canonicalizable({"actor": fields["actor"], "data": fields["data"]})
    return fields


def _copy_json(value: Any) -> Any:
    """A deep copy of a JSON-shaped value (dicts, lists, tuples, scalars), as
    ``copy.deepcopy`` makes it, without its per-object bookkeeping."""
    if isinstance(value, dict):
        return {key: _copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_json(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_copy_json(item) for item in value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    # Anything else is refused by the check that follows; copy it as before meanwhile.
    return copy.deepcopy(value)


_HEAD_FOR_UPDATE = (
    select(AuditChainHead.last_seq, AuditChainHead.last_hash)
    .where(AuditChainHead.id == CHAIN_HEAD_ID)
    .with_for_update()
)
_ADVANCE_HEAD = (
    update(AuditChainHead)
    .where(AuditChainHead.id == CHAIN_HEAD_ID)
    .values(last_seq=bindparam("seq"), last_hash=bindparam("hash"))
)
_PREVIOUS_OF_MISSION = (
    select(AuditRecord.mission_seq, AuditRecord.record_hash)
    .where(AuditRecord.mission_id == bindparam("mission_id"))
    .order_by(AuditRecord.mission_seq.desc())
    .limit(1)
)


def _lock_chain_head(session: Session, connection: Connection) -> tuple[int, str | None]:
    """Lock the chain head to commit; its ``(last_seq, last_hash)``."""
    head = connection.execute(_HEAD_FOR_UPDATE).first()
    if head is None:
        # The migration inserts the head; a schema made by create_all() gets it here.
        insert_ignoring_conflicts(
            session, AuditChainHead, {"id": CHAIN_HEAD_ID, "last_seq": 0, "last_hash": None}
        )
        head = connection.execute(_HEAD_FOR_UPDATE).one()
    return int(head.last_seq), head.last_hash
