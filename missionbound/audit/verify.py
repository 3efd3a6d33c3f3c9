"""``missionbound audit verify``: recompute the audit chain and every Mission's anchors
(PROFILE.md section 15) and report the first break.

Checked, in order, stopping at the first failure:

1. the global chain: sequence numbers 1..N without a gap, each ``record_hash`` equal to the
   digest of the record's content, each ``prev_hash`` equal to the previous ``record_hash``,
   and the chain head (``audit_chain_head``) pointing at the last record (a truncated tail);
2. every Mission's chain: ``mission_seq`` 1..n without a gap and ``mission_prev_hash``
   linking to the Mission's previous record;
3. every stored Mission record: its three anchors recomputed from the members they commit
   to (section 5), the anchors equal to the last ones the audit log committed for that
   Mission, and its lifecycle history one entry per version.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from missionbound.audit.log import ANCHOR_NAMES, CHAIN_HEAD_ID, compute_record_hash
from missionbound.mission.anchors import find_anchor_mismatch
from missionbound.mission.errors import MissionError
from missionbound.store.engine import is_postgresql, read_only_engine
from missionbound.store.models import AuditChainHead, AuditRecord, Mission, MissionHistory

_BATCH = 1000

# Which members each anchor commits to, to name them in a report.
_ANCHORED_MEMBERS = {
    "proposal_hash": "mission_intent / authorization_details_requested",
    "consent_rendering_hash": "consent_disclosure",
    "authority_hash": "authority_set",
}


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    records_checked: int
    missions_checked: int
    first_break: str | None


class _Break(Exception):
    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


@dataclass
class _MissionChain:
    last_seq: int
    last_hash: str
    # The anchors last committed to the log for this Mission, and the record that did.
    anchors: dict[str, str] | None = None
    anchors_seq: int | None = None


def verify(source: Engine | Session) -> VerifyReport:
    """Verify the whole log and every Mission. An :class:`Engine` is read in one snapshot
    (REPEATABLE READ on PostgreSQL, one read transaction on SQLite); a :class:`Session` is
    read in whatever transaction the caller holds."""
    with _reading_session(source) as session:
        return _Verifier(session).run()


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
    def __init__(self, session: Session) -> None:
        self.session = session
        self.records_checked = 0
        self.missions_checked = 0
        self.chains: dict[str, _MissionChain] = {}

    def run(self) -> VerifyReport:
        try:
            self._check_log()
            self._check_missions()
        except _Break as failure:
            return VerifyReport(
                False, self.records_checked, self.missions_checked, failure.description
            )
        return VerifyReport(True, self.records_checked, self.missions_checked, None)

    # -- 1 and 2: the chains -------------------------------------------------------------

    def _check_log(self) -> None:
        previous_hash: str | None = None
        expected_seq = 1
        for row in self._records():
            seq = row["seq"]
            label = _label(row)
            if seq != expected_seq:
                if seq > expected_seq:
                    missing = (
                        f"record {expected_seq}"
                        if seq == expected_seq + 1
                        else f"records {expected_seq} to {seq - 1}"
                    )
                    raise _Break(
                        f"audit {missing} missing: the log jumps from record "
                        f"{expected_seq - 1} to record {seq}"
                    )
                raise _Break(f"{label}: out of sequence (expected record {expected_seq})")
            if _recompute(row) != row["record_hash"]:
                raise _Break(f"{label}: record_hash does not match its content")
            if row["prev_hash"] != previous_hash:
                raise _Break(f"{label}: prev_hash does not link to audit record {seq - 1}")
            self._check_mission_link(row, label)
            previous_hash = row["record_hash"]
            expected_seq += 1
            self.records_checked += 1
        self._check_head(expected_seq - 1, previous_hash)

    def _records(self) -> Iterator[dict[str, Any]]:
        statement = select(AuditRecord.__table__).order_by(AuditRecord.seq)
        result = self.session.execute(statement.execution_options(yield_per=_BATCH))
        for row in result.mappings():
            yield dict(row)

    def _check_mission_link(self, row: dict[str, Any], label: str) -> None:
        mission_id = row["mission_id"]
        if mission_id is None:
            if row["mission_seq"] is not None or row["mission_prev_hash"] is not None:
                raise _Break(f"{label}: mission_seq set on a record without a Mission")
            return
        chain = self.chains.get(mission_id)
        expected_seq = 1 if chain is None else chain.last_seq + 1
        expected_prev = None if chain is None else chain.last_hash
        if row["mission_seq"] != expected_seq:
            raise _Break(
                f"{label}: mission_seq is {row['mission_seq']}, expected "
                f"{expected_seq} (a record of this Mission is missing)"
            )
        if row["mission_prev_hash"] != expected_prev:
            raise _Break(
                f"{label}: mission_prev_hash does not link to the Mission's previous record"
            )
        if chain is None:
            chain = self.chains[mission_id] = _MissionChain(0, "")
        chain.last_seq = expected_seq
        chain.last_hash = row["record_hash"]
        anchors = {name: row[name] for name in ANCHOR_NAMES if row[name] is not None}
        if anchors:
            chain.anchors = anchors
            chain.anchors_seq = row["seq"]

    def _check_head(self, last_seq: int, last_hash: str | None) -> None:
        head = self.session.execute(
            select(AuditChainHead.last_seq, AuditChainHead.last_hash).where(
                AuditChainHead.id == CHAIN_HEAD_ID
            )
        ).first()
        head_seq, head_hash = (0, None) if head is None else (head.last_seq, head.last_hash)
        if head_seq != last_seq:
            raise _Break(
                f"audit chain head names record {head_seq} but the log ends at "
                f"record {last_seq} (records were removed from its end)"
            )
        if head_hash != last_hash:
            raise _Break(f"audit chain head hash does not match audit record {last_seq}")

    # -- 3: the Missions -------------------------------------------------------------------

    def _check_missions(self) -> None:
        history = self._history_summary()
        statement = (
            select(Mission.mission_id, Mission.record, Mission.version)
            .order_by(Mission.mission_id)
            .execution_options(yield_per=_BATCH)
        )
        for mission_id, record, version in self.session.execute(statement):
            self._check_anchors(mission_id, record)
            entries, highest = history.get(mission_id, (0, 0))
            if entries != version or highest != version:
                raise _Break(
                    f"mission {mission_id}: lifecycle history has {entries} "
                    f"entries up to version {highest} but the Mission is at "
                    f"version {version}"
                )
            self.missions_checked += 1

    def _check_anchors(self, mission_id: str, record: Any) -> None:
        if not isinstance(record, dict):
            raise _Break(f"mission {mission_id}: stored record is not a JSON object")
        try:
            mismatch = find_anchor_mismatch(record)
        except (KeyError, TypeError, MissionError):
            raise _Break(f"mission {mission_id}: stored record is malformed") from None
        if mismatch is not None:
            raise _Break(
                f"mission {mission_id}: {mismatch} does not match the stored "
                f"{_ANCHORED_MEMBERS[mismatch]}"
            )
        chain = self.chains.get(mission_id)
        if chain is None or chain.anchors is None:
            return
        for name, committed in chain.anchors.items():
            if record.get(name) != committed:
                raise _Break(
                    f"mission {mission_id}: stored {name} differs from the one "
                    f"committed by audit record {chain.anchors_seq}"
                )

    def _history_summary(self) -> dict[str, tuple[int, int]]:
        rows = self.session.execute(
            select(
                MissionHistory.mission_id, func.count(), func.max(MissionHistory.version)
            ).group_by(MissionHistory.mission_id)
        )
        return {mission_id: (count, highest) for mission_id, count, highest in rows}


def _label(row: dict[str, Any]) -> str:
    mission = f" (mission {row['mission_id']})" if row["mission_id"] else ""
    return f"audit record {row['seq']}{mission}"


def _recompute(row: dict[str, Any]) -> str | None:
    try:
        return compute_record_hash(row)
    except (MissionError, TypeError, ValueError, AttributeError):
        # Content that no longer has a canonical form was altered just the same.
        return None
