"""The PDP's execution intake: Execution Evidence reported by the enforcement point that ran
(or refused to run) a permit, and the settlement it carries (PROFILE.md section 12,
"Evidence"; runtime-digest sections 4.5, 5.3, 5.11 and 7.4).

Runtime-digest 7.4: the settlement transport is Execution Evidence delivered to the PDP
intake; a duplicate is acknowledged without being applied again; a conflicting redelivery
fails closed. :meth:`ExecutionIntake.report` does, in one store transaction:

1. the Decision Evidence of ``evaluation_id``, locked (reports of one decision are applied
   one at a time); unknown, or decided for an audience the caller does not speak for: the
   same :class:`ExecutionUnknown` (404) either way, so a PEP learns nothing of another's
   decisions. A deny is :class:`ExecutionConflict` (409): nothing may have run under it;
2. the same report again (outcome, error, effective digest, tool, emitter): the stored
   record, unchanged and applied once (decision M140);
3. a **refusal** (``suppressed``) is always recorded (every PEP refusal has its record). It is
   the permit's final disposition when no execution claimed the permit before it: the intake
   then spends the permit's ``jti`` itself (the single-use row a tool runtime writes, so no
   runtime can run it afterwards) and releases what the permit reserved. A permit already
   spent (``permit_consumed``, or a runtime that consumed it and is running it) keeps its
   reservation for that execution's report: the refusal is recorded as a refused attempt
   (decision M141);
4. an **execution** (``completed`` or ``failed``) is the permit's final disposition: the
   first one spends the ``jti`` (if no runtime did), settles the reservation (``completed``
   commits, measuring ``max_duration`` by ``measured_duration_seconds``; ``failed`` stays
   charged) and is recorded; a second, different one is :class:`ExecutionConflict` (409),
   as is an execution after a refusal that was the permit's final disposition (decision
   M142).

The record is built by :meth:`EvidenceLog.record_execution` from the stored decision
(Mission, actor, action, the authorized ``parameter_digest``) and the reporter's facts
only (section 5.11: the reporter never submits a record). Local executors use the intake
in process through :meth:`ExecutionIntake.recorder`; remote ones through
``POST /mission/executions`` (web/authzen.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, cast

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from missionbound.protocol.permits import PERMIT_TOMBSTONE_HORIZON
from missionbound.runtime import metering
from missionbound.runtime.errors import AuthZenError, MalformedRequest
from missionbound.runtime.evidence import EvidenceLog, Outcome
from missionbound.runtime.pdp import PepCaller
from missionbound.runtime.request import MAX_TOOL_ID
from missionbound.store import runtime as runtime_rows
from missionbound.store.models import EvidenceRecord, MeterReservation, SingleUseId
from missionbound.store.runtime import PERMIT_NAMESPACE
from missionbound.store.single_use import consume_once
from missionbound.store.transactions import Store

log = structlog.get_logger("missionbound.runtime.execution")

COMPLETED: Final = "completed"
FAILED: Final = "failed"
SUPPRESSED: Final = "suppressed"
OUTCOMES: Final = frozenset({COMPLETED, FAILED, SUPPRESSED})
# runtime-digest 3.8 (the Execution Evidence error set) and PROFILE.md section 12
# (binding_mismatch): closed, anything else is a malformed report.
ERRORS: Final = frozenset({"parameter_mismatch", "permit_expired", "permit_consumed",
                           "binding_mismatch", "obligation_unfulfilled", "kill_switch"})
PERMIT_CONSUMED: Final = "permit_consumed"
REPORT_MEMBERS: Final = frozenset({"evaluation_id", "outcome", "error",
                                   "effective_parameter_digest", "measured_duration_seconds",
                                   "tool_id"})
MAX_EVALUATION_ID: Final = 255
MAX_DIGEST: Final = 128
LOCAL_EMITTER_ROLE: Final = "executor"
# The single-use namespace marking that a permit's final disposition is recorded (a refusal
# that settled it is otherwise told from a refused attempt by nothing in its record), kept
# far longer than any report of it can arrive.
DISPOSITION_NAMESPACE: Final = "execution"
DISPOSITION_HORIZON: Final = timedelta(days=30)


class ExecutionUnknown(AuthZenError):
    """No decision of this caller has ``evaluation_id`` (404): unknown, or another PEP's."""

    def __init__(self) -> None:
        super().__init__(404, "no decision with this evaluation_id for a resource this "
                              "client speaks for")


class ExecutionConflict(AuthZenError):
    """The report contradicts what is stored (409): a deny, or a permit whose execution was
    already reported otherwise. Nothing was recorded or settled (fail closed)."""

    def __init__(self, message: str) -> None:
        super().__init__(409, message)


@dataclass(frozen=True)
class ExecutionReport:
    """One report of a permit's execution or refusal, validated."""

    evaluation_id: str
    outcome: Outcome
    error: str | None = None
    effective_parameter_digest: str | None = None
    measured_duration_seconds: int | None = None
    tool_id: str | None = None

    def __post_init__(self) -> None:
        _text(self.evaluation_id, "evaluation_id", MAX_EVALUATION_ID)
        if self.outcome not in OUTCOMES:
            raise MalformedRequest("outcome must be completed, failed or suppressed")
        if self.error is not None and self.error not in ERRORS:
            raise MalformedRequest(f"error must be one of {', '.join(sorted(ERRORS))}")
        if self.outcome == SUPPRESSED and self.error is None:
            raise MalformedRequest("a suppressed outcome names its error")
        if self.outcome == COMPLETED and self.error is not None:
            raise MalformedRequest("a completed outcome has no error")
        if self.effective_parameter_digest is not None:
            _text(self.effective_parameter_digest, "effective_parameter_digest", MAX_DIGEST)
        measured = self.measured_duration_seconds
        if measured is not None:
            if isinstance(measured, bool) or not isinstance(measured, int) or measured < 0:
                raise MalformedRequest("measured_duration_seconds must be an integer >= 0")
            if self.outcome != COMPLETED:
                # runtime-digest 7.4: only a completed execution commits a measured duration.
                raise MalformedRequest("measured_duration_seconds goes with outcome completed")
        if self.tool_id is not None:
            _text(self.tool_id, "tool_id", MAX_TOOL_ID)


def parse_report(body: Mapping[str, Any]) -> ExecutionReport:
    """The JSON body of ``POST /mission/executions`` as a report; :class:`MalformedRequest`
    (400) for a missing, unknown or malformed member."""
    unknown = sorted(set(body) - REPORT_MEMBERS)
    if unknown:
        # Refused rather than ignored: a member the reporter expects recorded would be lost.
        raise MalformedRequest(f"unknown member {unknown[0][:64]!r}")
    outcome = body.get("outcome")
    if not isinstance(outcome, str):
        raise MalformedRequest("outcome is required: completed, failed or suppressed")
    error = body.get("error")
    if error is not None and not isinstance(error, str):
        raise MalformedRequest("error must be a string")
    return ExecutionReport(
        evaluation_id=cast(str, body.get("evaluation_id")),
        outcome=cast(Outcome, outcome),
        error=error,
        effective_parameter_digest=body.get("effective_parameter_digest"),
        measured_duration_seconds=body.get("measured_duration_seconds"),
        tool_id=body.get("tool_id"),
    )


@dataclass(frozen=True)
class Reported:
    """The stored Execution Evidence; ``created`` False for a report seen before;
    ``final`` True when this record is the permit's final disposition."""

    record: dict[str, Any]
    created: bool
    final: bool

    def summary(self) -> dict[str, Any]:
        """What the HTTP answer carries: the record's ids, never the record."""
        record = self.record
        names = ("execution_id", "evaluation_id", "mission_id", "outcome", "sequence")
        out: dict[str, Any] = {name: record[name] for name in names if name in record}
        if "error" in record:
            out["error"] = record["error"]
        out["final"] = self.final
        return out


class ExecutionIntake:
    """Takes Execution Evidence for the decisions of this PDP (one per process, shared)."""

    def __init__(self, store: Store, evidence: EvidenceLog) -> None:
        self._store = store
        self._evidence = evidence

    def report(self, *, caller_client_id: str, caller_audiences: frozenset[str],
               evaluation_id: str, outcome: Outcome, error: str | None = None,
               effective_parameter_digest: str | None = None,
               measured_duration_seconds: int | None = None, tool_id: str | None = None,
               now: datetime, emitter_role: str = "pep") -> dict[str, Any]:
        """Record (and settle) one report; returns the stored Execution Evidence. Raises
        :class:`ExecutionUnknown`, :class:`ExecutionConflict`, :class:`MalformedRequest`."""
        report = ExecutionReport(evaluation_id, outcome, error, effective_parameter_digest,
                                 measured_duration_seconds, tool_id)
        caller = PepCaller(caller_client_id, caller_audiences)
        return self.submit(report, caller, now=now, emitter_role=emitter_role).record

    def submit(self, report: ExecutionReport, caller: PepCaller, *, now: datetime,
               emitter_role: str = "pep") -> Reported:
        """:meth:`report` for a parsed report, saying whether it was new."""
        with self._store.begin() as session:
            return self._apply(session, report, caller, now, emitter_role)

    def recorder(self, emitter_id: str, audience: str) -> ExecutionRecorder:
        """The ``ExecutionRecorderLike`` of a local executor (enforce/local.py) that runs
        tools for ``audience``, recording as ``emitter_id``."""
        return ExecutionRecorder(self, emitter_id=emitter_id, audience=audience)

    # -- the transaction -------------------------------------------------------------------

    def _apply(self, session: Session, report: ExecutionReport, caller: PepCaller,
               now: datetime, emitter_role: str) -> Reported:
        decided = _lock_decision(session, report.evaluation_id)
        if decided is None or decided.get("audience") not in caller.audiences:
            raise ExecutionUnknown()
        if decided.get("decision") != "permit":
            raise ExecutionConflict("the decision was a deny: nothing may run under it")
        mission = decided.get("mission")
        mission_id = mission.get("id") if isinstance(mission, dict) else None
        if not isinstance(mission_id, str):  # pragma: no cover - the PDP always writes it
            raise ExecutionUnknown()
        authorized = decided.get("parameter_digest")
        authorized = authorized if isinstance(authorized, str) else None
        # A decision that bound no parameters has nothing to compare an effective digest
        # with; recording one would flag every run as a deviation (decision M143).
        effective = report.effective_parameter_digest if authorized is not None else None
        tool = report.tool_id or decided.get("tool_id")
        recorded = _executions(session, report.evaluation_id)
        final = _final_disposition(recorded, _settled(session, report.evaluation_id))
        for prior in recorded:
            if _same(prior, report, effective, tool, caller.client_id):
                self._check_measured(session, report)
                return Reported(prior, created=False, final=prior is final)
        suppressed = report.outcome == SUPPRESSED
        if not suppressed and final is not None:
            raise ExecutionConflict(
                f"the permit's final disposition is already recorded ({final['outcome']}): "
                "a permit runs once")
        is_final = False
        if suppressed:
            # The disposition only when nothing ran under the permit and nothing can any more:
            # spending the jti here is what makes the release safe (runtime-digest 7.4).
            is_final = (final is None and report.error != PERMIT_CONSUMED
                        and consume_once(session, PERMIT_NAMESPACE, report.evaluation_id,
                                         _remember_until(decided, now)))
        else:
            is_final = True
            # A runtime that verified the permit spent it already; RS-D executors do not.
            consume_once(session, PERMIT_NAMESPACE, report.evaluation_id,
                         _remember_until(decided, now))
        if is_final:
            consume_once(session, DISPOSITION_NAMESPACE, report.evaluation_id,
                         now + DISPOSITION_HORIZON)
            metering.settle(session, evaluation_id=report.evaluation_id,
                            outcome=report.outcome, now=now,
                            measured_duration_seconds=report.measured_duration_seconds)
        stored = self._evidence.record_execution(
            session, mission_id=mission_id, evaluation_id=report.evaluation_id,
            audience=cast(str, decided["audience"]), authorized_parameter_digest=authorized,
            effective_parameter_digest=effective, outcome=report.outcome, error=report.error,
            emitter_id=caller.client_id, now=now, tool_id=report.tool_id,
            emitter_role=emitter_role)
        if stored.get("unauthorized_execution"):
            # runtime-digest 5.3: recorded, and flagged for whoever watches the log.
            log.warning("unauthorized_execution", mission=mission_id,
                        evaluation_id=report.evaluation_id, emitter=caller.client_id)
        return Reported(stored, created=True, final=is_final)

    def _check_measured(self, session: Session, report: ExecutionReport) -> None:
        """A redelivered ``completed`` that measures another duration than the one
        committed is a conflicting redelivery (runtime-digest 7.4), not a duplicate."""
        if report.outcome != COMPLETED or report.measured_duration_seconds is None:
            return
        for reservation in _reservations(session, report.evaluation_id):
            if reservation.bound == metering.MAX_DURATION and reservation.state == "committed" \
                    and reservation.amount != str(report.measured_duration_seconds):
                raise ExecutionConflict("the execution was reported with another "
                                        "measured_duration_seconds")


class ExecutionRecorder:
    """``ExecutionRecorderLike`` (enforce/local.py) over the intake, for an executor in this
    process: each record in its own committed transaction before the runner goes on.

    A refusal of a permit that is not a decision for this executor's audience (a permit
    relayed from another resource, runtime-digest 4.5 item 1) has no decision to settle:
    it becomes a Refusal Record on the Mission's chain instead (decision M144)."""

    def __init__(self, intake: ExecutionIntake, *, emitter_id: str, audience: str) -> None:
        if not emitter_id or not audience:
            raise ValueError("a recorder needs its emitter id and the audience it runs for")
        self._intake = intake
        self.emitter_id = emitter_id
        self.audience = audience

    def record_execution(self, *, mission_id: str, evaluation_id: str, audience: str,
                         authorized_parameter_digest: str | None,
                         effective_parameter_digest: str | None, outcome: Outcome,
                         error: str | None, emitter_id: str, now: datetime,
                         tool_id: str | None = None) -> dict[str, Any]:
        """Report one run. ``authorized_parameter_digest`` (the permit's) is not trusted:
        the decision's is recorded. The recorder's own emitter id and audience are used."""
        report = ExecutionReport(evaluation_id, outcome, error, effective_parameter_digest,
                                 None, tool_id)
        caller = PepCaller(self.emitter_id, frozenset({self.audience}))
        try:
            return self._intake.submit(report, caller, now=now,
                                       emitter_role=LOCAL_EMITTER_ROLE).record
        except ExecutionUnknown:
            if outcome != SUPPRESSED or error is None:
                raise
        intake = self._intake
        with intake._store.begin() as session:
            return intake._evidence.record_refusal(
                session, mission_id=mission_id, audience=self.audience, action=tool_id or "",
                reason=error, emitter_id=self.emitter_id, now=now,
                parameter_digest=effective_parameter_digest,
                emitter_role=LOCAL_EMITTER_ROLE)


# -- reads (store/evidence.py is their natural home) --------------------------------------


def _lock_decision(session: Session, evaluation_id: str) -> dict[str, Any] | None:
    """The Decision Evidence of ``evaluation_id``, its row locked to commit (PostgreSQL
    ``FOR UPDATE``; SQLite's single writer): reports of one decision apply one at a time.
    Taken first, before meter and chain locks (store/transactions.py lock order)."""
    record = session.execute(
        select(EvidenceRecord.record)
        .where(EvidenceRecord.evaluation_id == evaluation_id,
               EvidenceRecord.kind == "decision")
        .order_by(EvidenceRecord.id).limit(1).with_for_update()
    ).scalar()
    return record if isinstance(record, dict) else None


def _executions(session: Session, evaluation_id: str) -> list[dict[str, Any]]:
    rows = session.execute(
        select(EvidenceRecord.record)
        .where(EvidenceRecord.evaluation_id == evaluation_id,
               EvidenceRecord.kind == "execution")
        .order_by(EvidenceRecord.id)
    ).scalars().all()
    return [row for row in rows if isinstance(row, dict)]


def _reservations(session: Session, evaluation_id: str) -> list[MeterReservation]:
    return list(runtime_rows.lock_reservations(session, evaluation_id))


def _settled(session: Session, evaluation_id: str) -> bool:
    """Whether a final disposition of the permit was recorded."""
    return session.scalar(
        select(SingleUseId.value).where(SingleUseId.namespace == DISPOSITION_NAMESPACE,
                                        SingleUseId.value == evaluation_id)
    ) is not None


def _same(prior: Mapping[str, Any], report: ExecutionReport, effective: str | None,
          tool: Any, emitter_id: str) -> bool:
    emitter = prior.get("emitter")
    return (prior.get("outcome") == report.outcome and prior.get("error") == report.error
            and prior.get("effective_parameter_digest") == effective
            and prior.get("tool_id") == tool
            and isinstance(emitter, dict) and emitter.get("id") == emitter_id)


def _final_disposition(recorded: list[dict[str, Any]],
                       settled: bool) -> dict[str, Any] | None:
    """The record that settled the permit: its execution (``completed``/``failed``), else,
    once a disposition is marked, the first refusal other than ``permit_consumed``. A
    refused attempt other than that one needs the permit spent already, so it is recorded
    after the final refusal (which spent it), never before (decision M141)."""
    for record in recorded:
        if record.get("outcome") in (COMPLETED, FAILED):
            return record
    if settled:
        for record in recorded:
            if record.get("error") != PERMIT_CONSUMED:
                return record
    return None


def _remember_until(decided: Mapping[str, Any], now: datetime) -> datetime:
    """How long the spent ``jti`` is remembered: as a tool runtime remembers it (the
    permit's end plus the tombstone horizon)."""
    conditions = decided.get("conditions")
    until = conditions.get("valid_until") if isinstance(conditions, dict) else None
    end = now
    if isinstance(until, str):
        with contextlib.suppress(ValueError):
            end = max(now, datetime.fromisoformat(until.replace("Z", "+00:00")))
    return end + PERMIT_TOMBSTONE_HORIZON


def _text(value: Any, name: str, limit: int) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise MalformedRequest(f"{name} must be a string of 1 to {limit} characters")


__all__ = [
    "ERRORS",
    "OUTCOMES",
    "ExecutionConflict",
    "ExecutionIntake",
    "ExecutionRecorder",
    "ExecutionReport",
    "ExecutionUnknown",
    "Reported",
    "parse_report",
]
