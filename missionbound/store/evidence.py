"""Storage of runtime evidence (runtime-digest sections 5.1-5.5): the append primitives
:class:`missionbound.runtime.evidence.EvidenceLog` builds on, and the reads of the
verifier and the console.

Records are grouped in chains: one per Mission (``chain_id`` = ``mission_id``), and one per
emitter for the refusals that name no Mission (``chain_id`` = ``"emitter:" + id``). An
append, inside the caller's transaction, locks the chain's head row
(:func:`lock_chain_head`), inserts the record and advances the head: three statements, and
the lock serializes appends to one chain only, never two. On SQLite the ``BEGIN IMMEDIATE``
write transaction serializes everything anyway. The head lock is held to commit: take it
after the other locks of the decision's transaction and before the audit chain head
(``missionbound.store.transactions`` gives the order).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from missionbound.mission.record import check_mission_id
from missionbound.store.keys import PRIVATE_JWK_MEMBERS
from missionbound.store.models import (
    AuditRecord,
    EvidenceChainHead,
    EvidenceRecord,
    Mission,
    SigningKey,
)
from missionbound.store.upsert import insert_ignoring_conflicts

UNBOUND_CHAIN_PREFIX = "emitter:"
MAX_EMITTER_ID = 255
PAGE = 1000


def chain_of(mission_id: str | None, emitter_id: str) -> str:
    """The chain a record joins: its Mission's, else its emitter's chain of unbound records."""
    if mission_id is not None:
        return mission_id
    return UNBOUND_CHAIN_PREFIX + emitter_id


@dataclass(frozen=True)
class ChainHead:
    last_sequence: int
    last_hash: str


_HEAD_FOR_UPDATE = (
    select(EvidenceChainHead.last_sequence, EvidenceChainHead.last_hash)
    .where(EvidenceChainHead.chain_id == bindparam("chain_id"))
    .with_for_update()
)
_ADVANCE_HEAD = (
    update(EvidenceChainHead)
    .where(EvidenceChainHead.chain_id == bindparam("b_chain_id"))
    .values(last_sequence=bindparam("b_sequence"), last_hash=bindparam("b_record_hash"))
)
_INSERT_RECORD = insert(EvidenceRecord)


def lock_chain_head(session: Session, chain_id: str) -> ChainHead | None:
    """The chain's head, locked to commit (PostgreSQL ``FOR UPDATE``); None for a chain
    that has no record yet. Whatever the session has pending is flushed first, so its
    row locks come before this one."""
    session.flush()
    row = session.connection().execute(_HEAD_FOR_UPDATE, {"chain_id": chain_id}).first()
    return None if row is None else ChainHead(int(row.last_sequence), row.last_hash)


def start_chain(session: Session, chain_id: str, record_hash: str) -> bool:
    """Create the head of a new chain at its first record; False when a concurrent
    transaction created it first (the caller then locks that head and starts over)."""
    return insert_ignoring_conflicts(
        session,
        EvidenceChainHead,
        {"chain_id": chain_id, "last_sequence": 1, "last_hash": record_hash},
    )


def advance_chain(session: Session, chain_id: str, sequence: int, record_hash: str) -> None:
    """Point the (locked) head at the record just appended."""
    session.connection().execute(
        _ADVANCE_HEAD,
        {"b_chain_id": chain_id, "b_sequence": sequence, "b_record_hash": record_hash},
    )


def insert_record(session: Session, values: Mapping[str, Any]) -> None:
    """One plain INSERT: append-only rows, no ORM unit of work."""
    session.connection().execute(_INSERT_RECORD, dict(values))


def decision_record(session: Session, evaluation_id: str) -> dict[str, Any] | None:
    """The stored Decision Evidence of ``evaluation_id`` (what an execution record copies
    its Mission reference, actor and action from), or None."""
    return session.execute(
        select(EvidenceRecord.record)
        .where(EvidenceRecord.evaluation_id == evaluation_id, EvidenceRecord.kind == "decision")
        .order_by(EvidenceRecord.id)
        .limit(1)
    ).scalar()


def mission_reference(session: Session, mission_id: str) -> dict[str, Any] | None:
    """The stored record of a Mission of this AS (for the anchors a refusal or an execution
    record carries), or None when the Mission is not stored here."""
    record = session.execute(
        select(Mission.record).where(Mission.mission_id == mission_id)
    ).scalar()
    return record if isinstance(record, dict) else None


# -- reads: the verifier ------------------------------------------------------------------


def records_in_chain_order(session: Session) -> Iterator[dict[str, Any]]:
    """Every record's columns, chain by chain (``chain_id`` order), each chain in
    ``sequence`` order, a page per query (keyset pagination: constant memory, any size).
    Plain rows, not ORM objects: nothing is added to the caller's session."""
    table = EvidenceRecord.__table__
    after: tuple[str, int] | None = None
    while True:
        statement = select(table).order_by(table.c.chain_id, table.c.sequence).limit(PAGE)
        if after is not None:
            chain_id, sequence = after
            statement = statement.where(
                (table.c.chain_id > chain_id)
                | ((table.c.chain_id == chain_id) & (table.c.sequence > sequence))
            )
        page = [dict(row) for row in session.execute(statement).mappings()]
        yield from page
        if len(page) < PAGE:
            return
        after = (page[-1]["chain_id"], page[-1]["sequence"])


def chain_heads(session: Session) -> dict[str, ChainHead]:
    rows = session.execute(
        select(
            EvidenceChainHead.chain_id,
            EvidenceChainHead.last_sequence,
            EvidenceChainHead.last_hash,
        )
    )
    return {row.chain_id: ChainHead(int(row.last_sequence), row.last_hash) for row in rows}


def verification_jwks(session: Session) -> dict[str, list[dict[str, Any]]]:
    """The public half of every signing key the AS ever stored, retired or not: evidence is
    kept for the Mission's audit horizon, longer than a retired key stays in ``/jwks``
    (runtime-digest 5.4: retired keys stay resolvable for the retention window)."""
    keys = []
    for row in session.scalars(select(SigningKey).order_by(SigningKey.created_at)):
        public = {k: v for k, v in row.public_jwk.items() if k not in PRIVATE_JWK_MEMBERS}
        keys.append({**public, "kid": row.kid, "alg": row.alg, "use": "sig"})
    return {"keys": keys}


# -- reads: the console -------------------------------------------------------------------


@dataclass(frozen=True)
class EvidencePage:
    records: list[EvidenceRecord]
    more: bool  # more records of the same period follow


def mission_evidence(
    session: Session,
    mission_id: str,
    *,
    since: datetime | None,
    until: datetime | None,
    after_sequence: int = 0,
    limit: int = 200,
) -> EvidencePage:
    """The Mission's evidence recorded in ``[since, until)`` (either end open when None),
    in ``sequence`` order from ``after_sequence`` on, at most ``limit`` records."""
    check_mission_id(mission_id)
    statement = select(EvidenceRecord).where(
        EvidenceRecord.chain_id == mission_id, EvidenceRecord.sequence > after_sequence
    )
    if since is not None:
        statement = statement.where(EvidenceRecord.recorded_at >= since)
    if until is not None:
        statement = statement.where(EvidenceRecord.recorded_at < until)
    found = list(session.scalars(statement.order_by(EvidenceRecord.sequence).limit(limit + 1)))
    return EvidencePage(found[:limit], len(found) > limit)


def evidence_beside_audit_page(
    session: Session,
    mission_id: str,
    audit_records: Sequence[AuditRecord],
    *,
    audit_more: bool,
    first_page: bool,
    after_sequence: int = 0,
    limit: int = 200,
) -> EvidencePage:
    """The evidence to show among one page of the Mission's audit timeline: what was
    recorded from the page's first audit record (from the beginning on the first page) up to
    the first audit record of the next page (to the end on the last page). Consecutive pages
    so cover every record exactly once."""
    if not audit_records and not first_page:
        return EvidencePage([], False)
    since = None if first_page else audit_records[0].at
    until = None
    if audit_more and audit_records:
        until = session.scalar(
            select(AuditRecord.at)
            .where(AuditRecord.mission_id == mission_id,
                   AuditRecord.mission_seq > audit_records[-1].mission_seq)
            .order_by(AuditRecord.mission_seq)
            .limit(1)
        )
    return mission_evidence(session, mission_id, since=since, until=until,
                            after_sequence=after_sequence, limit=limit)


def chain_records(session: Session, chain_id: str) -> Sequence[EvidenceRecord]:
    """One whole chain in ``sequence`` order (tests and exports; the verifier pages)."""
    return list(
        session.scalars(
            select(EvidenceRecord)
            .where(EvidenceRecord.chain_id == chain_id)
            .order_by(EvidenceRecord.sequence)
        )
    )
