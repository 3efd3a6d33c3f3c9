"""``missionbound audit verify``: recompute the audit chain and every Mission's anchors
(PROFILE.md section 15) and report the first break.

Checked, in order, stopping at the first failure:

1. the global chain: sequence numbers 1..N without a gap, each ``record_hash`` equal to the
   digest of the record's content, each ``prev_hash`` equal to the previous ``record_hash``,
   and the chain head (``audit_chain_head``) pointing at the last record (a truncated tail);
2. every Mission's chain: ``mission_seq`` 1..n without a gap and ``mission_prev_hash``
   linking to the Mission's previous record; and, walking the Mission's lifecycle records
   in order, each against the one before: the anchors set once, at the approval, and never
   changed afterwards, ``record_digest`` present and changed only at the approval (so an
   event recorded over a rewritten record does not launder the rewrite);
3. every stored Mission, in ``mission_id`` order: its record readable (a JSON object whose
   anchors are strings), its three anchors recomputed from the members they commit to
   (section 5) and equal to the last ones the audit log committed for that Mission; its
   ``mission.created`` record present; the stored ``state`` and ``version`` (the columns the
   gate reads) equal to those of its last lifecycle audit record and of its last lifecycle
   history entry, with one history entry per version; its ``policy_version`` equal to the
   one the log committed; the columns that copy record members
   (``subject_sub``, ``client_id``, ``created_at``, ``mission_expiry``, ``activated_at``,
   ``approval_event_id``) equal to the record's members; and its ``mission_expiry`` no later
   than the one its intent asked for (the intent is anchored, the AS only ever shortens);
4. every ``mission.created`` record names a stored Mission (no Mission row was deleted);
5. every runtime evidence chain: signatures, links, stored columns and chain heads
   (:mod:`missionbound.audit.evidence_checks`).

Content the verifier cannot read (a record that is not JSON, an anchor that is not a string,
a time that does not parse) is itself a break, named like the others, never a traceback.
Errors of the database itself (:class:`~sqlalchemy.exc.SQLAlchemyError`) are raised.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Text, and_, cast, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from missionbound.audit.evidence_checks import EvidenceChecker
from missionbound.audit.log import ANCHOR_NAMES, CHAIN_HEAD_ID, compute_record_hash
from missionbound.audit.mission_checks import (
    Break,
    HistoryTail,
    MissionChain,
    MissionRow,
    check_copied_columns,
    check_lifecycle,
    check_lifecycle_step,
    check_policy_version,
    check_record_digest,
    record_of,
)
from missionbound.mission.anchors import find_anchor_mismatch
from missionbound.protocol.jwks import KeySource
from missionbound.store.engine import is_postgresql, read_only_engine
from missionbound.store.models import AuditChainHead, AuditRecord, Mission, MissionHistory

_BATCH = 1000

# The audit events that record a lifecycle event (``data`` carries ``state`` and
# ``version``): written by ``store.missions.create_pending`` and
# ``store.lifecycle.commit_transition`` (tests/audit/test_verify.py checks the names agree).
CREATED_EVENT = "mission.created"
LIFECYCLE_EVENTS = frozenset({CREATED_EVENT, "mission.transition"})

# Which members each anchor commits to, to name them in a report.
_ANCHORED_MEMBERS = {
    "proposal_hash": "mission_intent / authorization_details_requested",
    "consent_rendering_hash": "consent_disclosure",
    "authority_hash": "authority_set",
}

# The Mission columns read, the record as its stored text (parsed here, per Mission, so that
# one unreadable record is named instead of aborting the read).
_MISSION_COLUMNS = (
    Mission.mission_id,
    Mission.state,
    Mission.version,
    cast(Mission.record, Text).label("record"),
    Mission.subject_sub,
    Mission.client_id,
    Mission.created_at,
    Mission.mission_expiry,
    Mission.activated_at,
    Mission.approval_event_id,
)


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    records_checked: int
    missions_checked: int
    first_break: str | None
    evidence_checked: int = 0


@dataclass(frozen=True)
class _Unreadable:
    """A stored row (audit record by ``seq``, Mission by ``mission_id``) whose columns the
    driver could not even decode."""

    key: Any
    error: Exception

    @property
    def mission_id(self) -> str:
        return str(self.key)


def verify(source: Engine | Session, *,
           evidence_jwks: Mapping[str, Any] | KeySource | None = None) -> VerifyReport:
    """Verify the whole log, every Mission and every evidence chain. An :class:`Engine` is
    read in one snapshot (REPEATABLE READ on PostgreSQL, one read transaction on SQLite); a
    :class:`Session` is read in whatever transaction the caller holds. Evidence signatures
    are checked with ``evidence_jwks`` when given, else with every key the database holds."""
    with _reading_session(source) as session:
        return _Verifier(session, evidence_jwks).run()


@contextmanager
def _reading_session(source: Engine | Session) -> Iterator[Session]:
    if isinstance(source, Session):
        yield source
        return
    engine = read_only_engine(source)
    if is_postgresql(engine):
        # One snapshot for the log, the head and the Missions: appends committed while we
        # read must not look like a truncated chain or a missing anchor.
        engine = engine.execution_options(isolation_level="REPEATABLE READ")
    with Session(engine) as session, session.begin():
        yield session


class _Verifier:
    def __init__(self, session: Session,
                 evidence_jwks: Mapping[str, Any] | KeySource | None = None) -> None:
        self.session = session
        self.evidence_jwks = evidence_jwks
        self.records_checked = 0
        self.missions_checked = 0
        self.evidence_checked = 0
        self.chains: dict[str, MissionChain] = {}

    def run(self) -> VerifyReport:
        try:
            self._check_log()
            self._check_missions()
            self._check_evidence()
        except Break as failure:
            return VerifyReport(
                False, self.records_checked, self.missions_checked, failure.description,
                self.evidence_checked,
            )
        return VerifyReport(
            True, self.records_checked, self.missions_checked, None, self.evidence_checked
        )

    def _check_evidence(self) -> None:
        checker = EvidenceChecker(self.session, self.evidence_jwks)
        try:
            checker.run()
        finally:
            self.evidence_checked = checker.checked

    # -- 1 and 2: the chains -------------------------------------------------------------

    def _check_log(self) -> None:
        previous_hash: str | None = None
        expected_seq = 1
        for row in self._records():
            seq = row.key if isinstance(row, _Unreadable) else row["seq"]
            label = f"audit record {seq}" if isinstance(row, _Unreadable) else _label(row)
            if seq != expected_seq:
                if seq > expected_seq:
                    missing = (
                        f"record {expected_seq}"
                        if seq == expected_seq + 1
                        else f"records {expected_seq} to {seq - 1}"
                    )
                    raise Break(
                        f"audit {missing} missing: the log jumps from record "
                        f"{expected_seq - 1} to record {seq}"
                    )
                raise Break(f"{label}: out of sequence (expected record {expected_seq})")
            if isinstance(row, _Unreadable):
                raise Break(f"{label} cannot be read: {_describe(row.error)}")
            if _recompute(row) != row["record_hash"]:
                raise Break(f"{label}: record_hash does not match its content")
            if row["prev_hash"] != previous_hash:
                raise Break(f"{label}: prev_hash does not link to audit record {seq - 1}")
            self._check_mission_link(row, label)
            previous_hash = row["record_hash"]
            expected_seq += 1
            self.records_checked += 1
        self._check_head(expected_seq - 1, previous_hash)

    def _records(self) -> Iterator[dict[str, Any] | _Unreadable]:
        """Every record in ``seq`` order, a page per query. A page the driver cannot decode
        (JSON that does not parse, a time that is not one) is read again record by record,
        so the unreadable record is named."""
        table = AuditRecord.__table__
        after: int | None = None
        while True:
            statement = select(table).order_by(table.c.seq).limit(_BATCH)
            if after is not None:
                statement = statement.where(table.c.seq > after)
            try:
                page: list[dict[str, Any] | _Unreadable] = [
                    dict(row) for row in self.session.execute(statement).mappings()
                ]
            except SQLAlchemyError:
                raise
            except Exception:
                page = self._records_one_by_one(after)
            yield from page
            if len(page) < _BATCH:
                return
            last = page[-1]
            after = last.key if isinstance(last, _Unreadable) else last["seq"]

    def _records_one_by_one(self, after: int | None) -> list[dict[str, Any] | _Unreadable]:
        table = AuditRecord.__table__
        seqs = select(table.c.seq).order_by(table.c.seq).limit(_BATCH)
        if after is not None:
            seqs = seqs.where(table.c.seq > after)
        page: list[dict[str, Any] | _Unreadable] = []
        for seq in self.session.scalars(seqs):
            try:
                row = self.session.execute(select(table).where(table.c.seq == seq)).mappings()
                page.append(dict(row.one()))
            except SQLAlchemyError:
                raise
            except Exception as exc:
                page.append(_Unreadable(seq, exc))
        return page

    def _check_mission_link(self, row: dict[str, Any], label: str) -> None:
        mission_id = row["mission_id"]
        if mission_id is None:
            if row["mission_seq"] is not None or row["mission_prev_hash"] is not None:
                raise Break(f"{label}: mission_seq set on a record without a Mission")
            return
        chain = self.chains.get(mission_id)
        expected_seq = 1 if chain is None else chain.last_seq + 1
        expected_prev = None if chain is None else chain.last_hash
        if row["mission_seq"] != expected_seq:
            raise Break(
                f"{label}: mission_seq is {row['mission_seq']}, expected "
                f"{expected_seq} (a record of this Mission is missing)"
            )
        if row["mission_prev_hash"] != expected_prev:
            raise Break(
                f"{label}: mission_prev_hash does not link to the Mission's previous record"
            )
        if chain is None:
            chain = self.chains[mission_id] = MissionChain(0, "")
        chain.last_seq = expected_seq
        chain.last_hash = row["record_hash"]
        anchors = {name: row[name] for name in ANCHOR_NAMES if row[name] is not None}
        if anchors:
            chain.anchors = anchors
            chain.anchors_seq = row["seq"]
        if row["event"] in LIFECYCLE_EVENTS:
            check_lifecycle_step(label, chain, row)
            chain.lifecycle_seq = row["seq"]
            chain.lifecycle_data = row["data"]
            chain.lifecycle_policy_version = row["policy_version"]
            chain.lifecycle_anchors = {name: row[name] for name in ANCHOR_NAMES}
            if row["event"] == CREATED_EVENT and chain.created_seq is None:
                chain.created_seq = row["seq"]

    def _check_head(self, last_seq: int, last_hash: str | None) -> None:
        head = self.session.execute(
            select(AuditChainHead.last_seq, AuditChainHead.last_hash).where(
                AuditChainHead.id == CHAIN_HEAD_ID
            )
        ).first()
        head_seq, head_hash = (0, None) if head is None else (head.last_seq, head.last_hash)
        if head_seq != last_seq:
            raise Break(
                f"audit chain head names record {head_seq} but the log ends at "
                f"record {last_seq} (records were removed from its end)"
            )
        if head_hash != last_hash:
            raise Break(f"audit chain head hash does not match audit record {last_seq}")

    # -- 3 and 4: the Missions -------------------------------------------------------------

    def _check_missions(self) -> None:
        history = self._history_tails()
        stored: set[str] = set()
        for row in self._mission_rows():
            mission_id = row.mission_id
            stored.add(mission_id)
            if isinstance(row, _Unreadable):
                raise Break(f"record of {mission_id} cannot be read: {_describe(row.error)}")
            try:
                self._check_mission(row, history.get(mission_id))
            except Break:
                raise
            except Exception as exc:
                # Whatever the stored content makes the checks trip over (a member of the
                # wrong type, an anchor the core cannot parse) is a break of this Mission.
                raise Break(f"record of {mission_id} cannot be read: {_describe(exc)}") from None
            self.missions_checked += 1
        for mission_id, chain in sorted(self.chains.items()):
            if chain.created_seq is not None and mission_id not in stored:
                raise Break(
                    f"audit record {chain.created_seq} (mission {mission_id}) records the "
                    "creation of a Mission that is not stored (its row was deleted)"
                )

    def _check_mission(self, row: MissionRow, tail: HistoryTail | None) -> None:
        mission_id = row.mission_id
        record = record_of(row)
        self._check_anchors(mission_id, record)
        chain = self.chains.get(mission_id)
        if chain is None or chain.created_seq is None:
            raise Break(f"mission {mission_id} has no mission.created audit record")
        check_lifecycle(mission_id, row, chain, tail)
        check_policy_version(mission_id, record, chain)
        check_copied_columns(mission_id, row, record)
        # Last: the most general check, after the ones that can say precisely what moved.
        check_record_digest(mission_id, record, chain)

    def _mission_rows(self) -> Iterator[MissionRow | _Unreadable]:
        """Every Mission row in ``mission_id`` order, a batch per query. A batch the driver
        cannot decode is read again row by row, so the unreadable Mission is named."""
        after: str | None = None
        while True:
            try:
                batch: list[MissionRow | _Unreadable] = list(
                    self.session.execute(_page(after, *_MISSION_COLUMNS)).all()
                )
            except SQLAlchemyError:
                raise
            except Exception:
                batch = self._one_by_one(after)
            yield from batch
            if len(batch) < _BATCH:
                return
            after = batch[-1].mission_id

    def _one_by_one(self, after: str | None) -> list[MissionRow | _Unreadable]:
        rows: list[MissionRow | _Unreadable] = []
        for mission_id in self.session.scalars(_page(after, Mission.mission_id)):
            statement = select(*_MISSION_COLUMNS).where(Mission.mission_id == mission_id)
            try:
                rows.append(self.session.execute(statement).one())
            except SQLAlchemyError:
                raise
            except Exception as exc:
                rows.append(_Unreadable(mission_id, exc))
        return rows

    def _check_anchors(self, mission_id: str, record: dict[str, Any]) -> None:
        mismatch = find_anchor_mismatch(record)
        if mismatch is not None:
            raise Break(
                f"mission {mission_id}: {mismatch} does not match the stored "
                f"{_ANCHORED_MEMBERS[mismatch]}"
            )
        chain = self.chains.get(mission_id)
        if chain is None or chain.anchors is None:
            return
        for name, committed in chain.anchors.items():
            if record.get(name) != committed:
                raise Break(
                    f"mission {mission_id}: stored {name} differs from the one "
                    f"committed by audit record {chain.anchors_seq}"
                )

    def _history_tails(self) -> dict[str, HistoryTail]:
        """Per Mission: how many history entries, the highest version, and the state the
        entry of that version moved to."""
        summary = (
            select(
                MissionHistory.mission_id,
                func.count().label("entries"),
                func.max(MissionHistory.version).label("highest"),
            )
            .group_by(MissionHistory.mission_id)
            .subquery()
        )
        rows = self.session.execute(
            select(
                summary.c.mission_id, summary.c.entries, summary.c.highest, MissionHistory.to_state
            ).join(
                MissionHistory,
                and_(
                    MissionHistory.mission_id == summary.c.mission_id,
                    MissionHistory.version == summary.c.highest,
                ),
            )
        )
        return {
            mission_id: HistoryTail(entries, highest, to_state)
            for mission_id, entries, highest, to_state in rows
        }


def _page(after: str | None, *columns: Any) -> Any:
    statement = select(*columns).order_by(Mission.mission_id).limit(_BATCH)
    if after is not None:
        statement = statement.where(Mission.mission_id > after)
    return statement


def _describe(exc: Exception) -> str:
    detail = str(exc)
    if len(detail) > 200:
        detail = detail[:197] + "..."
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _label(row: dict[str, Any]) -> str:
    mission = f" (mission {row['mission_id']})" if row["mission_id"] else ""
    return f"audit record {row['seq']}{mission}"


def _recompute(row: dict[str, Any]) -> str | None:
    try:
        return compute_record_hash(row)
    except Exception:
        # Content that no longer has a canonical form was altered just the same.
        return None
