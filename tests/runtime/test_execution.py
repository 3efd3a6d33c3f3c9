"""The PDP's execution intake (runtime/execution.py) and ``POST /mission/executions``
(web/authzen.py) on SQLite and PostgreSQL: Execution Evidence reported for the real PDP's
permits, recorded once, settling the permit's metering (runtime-digest 5.3 and 7.4).

Permits come from ``MissionPDP.evaluate`` over Missions approved as the consent step
approves them (tests/runtime/test_pdp.py); the HTTP tests drive the real app.
"""

from __future__ import annotations

import base64
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from missionbound.config import Settings
from missionbound.issuer.keys import ensure_signing_key
from missionbound.issuer.server import MissionIssuer
from missionbound.mission.record import MissionRecord
from missionbound.runtime import metering
from missionbound.runtime.errors import AuthZenError
from missionbound.runtime.evidence import EvidenceLog
from missionbound.runtime.execution import (
    ExecutionConflict,
    ExecutionIntake,
    ExecutionReport,
    ExecutionUnknown,
    Reported,
)
from missionbound.runtime.pdp import MissionPDP, PepCaller
from missionbound.runtime.permits import PermitConsumer
from missionbound.store import runtime as runtime_rows
from missionbound.store.models import EvidenceRecord, MeterReservation
from missionbound.store.transactions import Store
from missionbound.tenant import Tenant, load_tenant
from missionbound.web.app import create_app
from tests.runtime import test_pdp as pdp_support
from tests.runtime.table_support import (
    ADMIN,
    DEMO_AUTHORITY,
    ERP,
    ISSUER,
    MCP,
    NOW,
    authzen_body,
    make_mission,
)
from tests.runtime.test_pdp import approve_with_artifact, wire_transfer

# The PDP tests' fixtures: an issuer with a signing key, the demo tenant, a MissionPDP and
# a Mission approved with its policy artifact.
clock = pdp_support.clock
tenant = pdp_support.tenant
issuer = pdp_support.issuer
make_pdp = pdp_support.make_pdp
pdp = pdp_support.pdp
mission = pdp_support.mission

RS = PepCaller(client_id="demo-rs", audiences=frozenset({ERP, MCP}))
OTHER_PEP = PepCaller(client_id="other-rs", audiences=frozenset({ADMIN}))
SCHEDULE = {"invoice_id": "inv-acme-1", "date": "2026-11-27"}


@pytest.fixture
def intake(store: Store, issuer: MissionIssuer) -> ExecutionIntake:
    return ExecutionIntake(store, EvidenceLog(issuer_url=ISSUER, signer=issuer.signer))


def permitted(pdp: MissionPDP, body: dict[str, Any]) -> tuple[str, str | None]:
    """The evaluation_id and conditions.parameter_digest of a permit for ``body``."""
    answer = pdp.evaluate(body, RS)
    assert answer["decision"] is True, answer
    context = answer["context"]
    return context["evaluation_id"], context["conditions"].get("parameter_digest")


def submit(intake: ExecutionIntake, evaluation_id: str, outcome: str = "completed", *,
           caller: PepCaller = RS, **members: Any) -> Reported:
    return intake.submit(ExecutionReport(evaluation_id, outcome, **members),  # type: ignore[arg-type]
                         caller, now=NOW)


def executions(store: Store, evaluation_id: str) -> list[dict[str, Any]]:
    with store.begin_read() as session:
        rows = session.scalars(select(EvidenceRecord.record).where(
            EvidenceRecord.kind == "execution", EvidenceRecord.evaluation_id == evaluation_id
        ).order_by(EvidenceRecord.id)).all()
        return [dict(row) for row in rows]


def reservations(store: Store, evaluation_id: str) -> dict[str, tuple[str, str]]:
    """bound -> (state, amount) of the permit's reservations."""
    with store.begin_read() as session:
        rows = session.scalars(select(MeterReservation).where(
            MeterReservation.evaluation_id == evaluation_id)).all()
        return {row.bound: (row.state, row.amount) for row in rows}


def spent(store: Store, evaluation_id: str) -> bool:
    with store.begin_read() as session:
        return runtime_rows.permit_consumed(session, evaluation_id)


# -- one final disposition --------------------------------------------------------------------


def test_a_completed_execution_is_recorded_once_and_commits_the_reservation(
        intake: ExecutionIntake, pdp: MissionPDP, mission: MissionRecord, store: Store) -> None:
    evaluation_id, digest = permitted(pdp, wire_transfer(mission))
    first = submit(intake, evaluation_id, effective_parameter_digest=digest)
    assert first.created and first.final
    record = first.record
    assert record["outcome"] == "completed" and "error" not in record
    assert record["evaluation_id"] == evaluation_id and record["mission_id"] == mission.mission_id
    # The authorized digest is the decision's, never the reporter's say-so.
    assert record["authorized_parameter_digest"] == digest
    assert record["effective_parameter_digest"] == digest
    assert "unauthorized_execution" not in record
    assert record["emitter"] == {"id": "demo-rs", "role": "pep"}
    assert record["tool_id"] == f"{MCP}#execute_wire_transfer"
    assert reservations(store, evaluation_id) == {"max_calls": ("committed", "1"),
                                                  "max_total_value": ("committed", "120.00")}
    assert spent(store, evaluation_id)  # no runtime can run the permit after its execution

    again = submit(intake, evaluation_id, effective_parameter_digest=digest)
    assert not again.created and again.final and again.record == record
    assert [r["execution_id"] for r in executions(store, evaluation_id)] == [
        record["execution_id"]]


@pytest.mark.parametrize("second", [
    {"outcome": "failed"},
    {"outcome": "completed", "effective_parameter_digest": "sha-256:" + "B" * 43},
    {"outcome": "completed", "caller": PepCaller("demo-rs-2", frozenset({MCP}))},
])
def test_a_different_execution_of_the_same_permit_is_a_conflict(
        intake: ExecutionIntake, pdp: MissionPDP, mission: MissionRecord, store: Store,
        second: dict[str, Any]) -> None:
    evaluation_id, digest = permitted(pdp, wire_transfer(mission))
    submit(intake, evaluation_id, effective_parameter_digest=digest)
    members = {"effective_parameter_digest": digest, **second}
    with pytest.raises(ExecutionConflict) as conflict:
        submit(intake, evaluation_id, **members)
    assert conflict.value.status == 409
    assert len(executions(store, evaluation_id)) == 1
    assert reservations(store, evaluation_id)["max_calls"] == ("committed", "1")


def test_unknown_and_another_peps_decisions_get_the_same_404(
        intake: ExecutionIntake, pdp: MissionPDP, mission: MissionRecord, store: Store) -> None:
    evaluation_id, _ = permitted(pdp, wire_transfer(mission))
    with pytest.raises(ExecutionUnknown) as unknown:
        submit(intake, "dec_" + secrets.token_urlsafe(18))
    with pytest.raises(ExecutionUnknown) as foreign:
        submit(intake, evaluation_id, caller=OTHER_PEP)
    assert unknown.value.status == foreign.value.status == 404
    assert unknown.value.message == foreign.value.message  # no oracle
    assert executions(store, evaluation_id) == []
    assert reservations(store, evaluation_id)["max_calls"] == ("reserved", "1")


def test_nothing_is_reported_against_a_deny(intake: ExecutionIntake, pdp: MissionPDP,
                                            mission: MissionRecord, store: Store) -> None:
    answer = pdp.evaluate(wire_transfer(mission, amount="900.00"), RS)
    assert answer["decision"] is False
    evaluation_id = answer["context"]["evaluation_id"]
    for outcome, error in (("completed", None), ("suppressed", "parameter_mismatch")):
        with pytest.raises(ExecutionConflict):
            submit(intake, evaluation_id, outcome, error=error)
    assert executions(store, evaluation_id) == []


# -- refusals ---------------------------------------------------------------------------------


def test_a_suppressed_permit_gives_its_call_back_and_can_never_run(
        intake: ExecutionIntake, pdp: MissionPDP, mission: MissionRecord, store: Store) -> None:
    """max_calls 3: three permits, the fourth is quota_exceeded; one suppressed, and the
    next call is permitted. The suppressed permit is spent: it can never run afterwards."""
    ids = [permitted(pdp, wire_transfer(mission, amount="10.00"))[0] for _ in range(3)]
    assert pdp.evaluate(wire_transfer(mission, amount="10.00"), RS)["context"]["reason"] == (
        "quota_exceeded")
    other = "sha-256:" + "C" * 43
    refused = submit(intake, ids[0], "suppressed", error="parameter_mismatch",
                     effective_parameter_digest=other)
    assert refused.created and refused.final
    assert refused.record["error"] == "parameter_mismatch"
    assert refused.record["effective_parameter_digest"] == other
    assert "unauthorized_execution" not in refused.record  # nothing ran
    assert reservations(store, ids[0]) == {"max_calls": ("released", "0"),
                                           "max_total_value": ("released", "0")}
    assert spent(store, ids[0])
    assert pdp.evaluate(wire_transfer(mission, amount="10.00"), RS)["decision"] is True
    with pytest.raises(ExecutionConflict):
        submit(intake, ids[0])  # an execution after the permit's final refusal
    # The same refusal again changes nothing.
    again = submit(intake, ids[0], "suppressed", error="parameter_mismatch",
                   effective_parameter_digest=other)
    assert not again.created and again.record == refused.record
    with store.begin_read() as session:
        used = metering.remaining(session, mission.mission_id)
    assert sorted(v["used"] for v in used.values()) == ["3", "30.00"]


def test_a_replayed_permit_is_a_recorded_refusal_that_settles_nothing(
        intake: ExecutionIntake, pdp: MissionPDP, mission: MissionRecord, store: Store) -> None:
    evaluation_id, digest = permitted(pdp, wire_transfer(mission))
    submit(intake, evaluation_id, effective_parameter_digest=digest)
    replay = submit(intake, evaluation_id, "suppressed", error="permit_consumed",
                    effective_parameter_digest=digest)
    assert replay.created and not replay.final
    assert [(r["outcome"], r.get("error")) for r in executions(store, evaluation_id)] == [
        ("completed", None), ("suppressed", "permit_consumed")]
    assert reservations(store, evaluation_id)["max_calls"] == ("committed", "1")


def test_a_refusal_while_a_runtime_holds_the_spent_permit_waits_for_its_execution(
        intake: ExecutionIntake, pdp: MissionPDP, mission: MissionRecord, store: Store) -> None:
    """A runtime spent the permit and is running it; another refuses the same permit
    (other arguments) and reports first. The reservation stays for the execution, whose
    report then settles it."""
    evaluation_id, digest = permitted(pdp, wire_transfer(mission))
    assert PermitConsumer(store)(evaluation_id, NOW.replace(year=2027))
    refused = submit(intake, evaluation_id, "suppressed", error="parameter_mismatch",
                     effective_parameter_digest="sha-256:" + "D" * 43)
    assert refused.created and not refused.final
    assert reservations(store, evaluation_id)["max_calls"] == ("reserved", "1")
    ran = submit(intake, evaluation_id, effective_parameter_digest=digest)
    assert ran.created and ran.final
    assert reservations(store, evaluation_id)["max_calls"] == ("committed", "1")


# -- max_duration --------------------------------------------------------------------------


def test_a_completed_execution_charges_its_measured_duration(
        intake: ExecutionIntake, make_pdp: Callable[..., MissionPDP], store: Store,
        tenant: Tenant) -> None:
    """max_duration PT100S: a permit reserves its 60 s window; a second does not fit until
    the first completes in 10 s; failed stays charged."""
    authority = [dict(entry) for entry in DEMO_AUTHORITY]
    authority[4] = {**authority[4], "constraints": {"max_duration": "PT100S"}}
    record = approve_with_artifact(store, make_mission(
        authority, mission_id="msn_durationAAAAAAAAAAAAAAAAAAAAAAAAA"), tenant.catalog)
    pdp = make_pdp()

    def schedule() -> dict[str, Any]:
        return pdp.evaluate(_schedule(record), RS)

    first = schedule()
    assert first["decision"] is True
    assert schedule()["context"]["reason"] == "quota_exceeded"
    evaluation_id = first["context"]["evaluation_id"]
    digest = first["context"]["conditions"]["parameter_digest"]
    submit(intake, evaluation_id, effective_parameter_digest=digest,
           measured_duration_seconds=10)
    assert reservations(store, evaluation_id) == {"max_duration": ("committed", "10")}
    with pytest.raises(ExecutionConflict):  # the same execution, measured otherwise
        submit(intake, evaluation_id, effective_parameter_digest=digest,
               measured_duration_seconds=11)
    second = schedule()
    assert second["decision"] is True  # 10 + 60 <= 100
    submit(intake, second["context"]["evaluation_id"], "failed",
           effective_parameter_digest=digest)
    assert reservations(store, second["context"]["evaluation_id"]) == {
        "max_duration": ("committed", "60")}
    assert schedule()["context"]["reason"] == "quota_exceeded"  # 70 + 60 > 100


def _schedule(record: MissionRecord) -> dict[str, Any]:
    from missionbound.runtime.digests import parameter_digest

    body = authzen_body(record, action="schedule_payment", audience=MCP,
                        parameters=dict(SCHEDULE))
    body["action"]["properties"]["parameter_digest"] = parameter_digest(SCHEDULE)
    return body


# -- reports the intake refuses to read ----------------------------------------------------


@pytest.mark.parametrize("members", [
    {"outcome": "suppressed"},
    {"outcome": "completed", "error": "parameter_mismatch"},
    {"outcome": "failed", "error": "tool_crashed"},
    {"outcome": "suppressed", "error": "permit_expired", "measured_duration_seconds": 3},
    {"outcome": "completed", "measured_duration_seconds": -1},
    {"outcome": "done"},
])
def test_a_malformed_report_is_400(members: dict[str, Any]) -> None:
    with pytest.raises(AuthZenError) as malformed:
        ExecutionReport("dec_x", **members)
    assert malformed.value.status == 400


# -- concurrency -------------------------------------------------------------------------------


@pytest.mark.parametrize("outcomes", [("completed", "completed"), ("completed", "failed")])
def test_concurrent_reports_of_one_permit_apply_once(
        intake: ExecutionIntake, pdp: MissionPDP, mission: MissionRecord, store: Store,
        outcomes: tuple[str, str]) -> None:
    evaluation_id, digest = permitted(pdp, wire_transfer(mission))
    barrier = threading.Barrier(len(outcomes))
    results: list[str] = []
    lock = threading.Lock()

    def report(outcome: str) -> None:
        barrier.wait(timeout=30)
        try:
            answer = "created" if submit(intake, evaluation_id, outcome,
                                         effective_parameter_digest=digest).created else "same"
        except ExecutionConflict:
            answer = "conflict"
        with lock:
            results.append(answer)

    threads = [threading.Thread(target=report, args=(outcome,)) for outcome in outcomes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    expected = ["created", "same"] if outcomes[0] == outcomes[1] else ["conflict", "created"]
    assert sorted(results) == expected
    assert len(executions(store, evaluation_id)) == 1


# -- HTTP: POST /mission/executions ------------------------------------------------------------

BASIC = "Basic " + base64.b64encode(b"demo-rs:demo-rs-secret").decode("ascii")
OTHER_BASIC = "Basic " + base64.b64encode(b"other-rs:demo-rs-secret").decode("ascii")


@pytest.fixture
def http(store: Store, tmp_path: Path) -> Iterator[tuple[TestClient, MissionRecord]]:
    settings = Settings(issuer=ISSUER, data_dir=tmp_path, database_url=str(
        store.engine.url.render_as_string(hide_password=False)), expiry_sweep_seconds=0)
    demo = load_tenant(settings)
    rs = demo.clients["demo-rs"]
    peps = replace(demo, clients={
        **demo.clients, "demo-rs": replace(rs, audiences=frozenset({ERP, MCP})),
        "other-rs": replace(rs, client_id="other-rs", audiences=frozenset({ADMIN}))})
    ensure_signing_key(store, NOW.replace(day=1))
    app = create_app(settings, tenant=peps, engine=store.engine)
    app.state.issuer.clock = lambda: NOW
    record = approve_with_artifact(store, make_mission(
        mission_id="msn_" + secrets.token_urlsafe(24)), peps.catalog)
    with TestClient(app, base_url=ISSUER) as client:
        yield client, record


def test_the_http_intake_answers_201_then_200_then_409(
        http: tuple[TestClient, MissionRecord], store: Store) -> None:
    client, record = http
    decided = client.post("/access/v1/evaluation", json=wire_transfer(record),
                          headers={"Authorization": BASIC})
    assert decided.status_code == 200 and decided.json()["decision"] is True, decided.text
    context = decided.json()["context"]
    report = {"evaluation_id": context["evaluation_id"], "outcome": "completed",
              "effective_parameter_digest": context["conditions"]["parameter_digest"]}

    def post(body: Any, authorization: str | None = BASIC, **kwargs: Any) -> Any:
        headers = {"Authorization": authorization} if authorization else {}
        return client.post("/mission/executions", json=body, headers=headers, **kwargs)

    created = post(report)
    assert created.status_code == 201, created.text
    ids = created.json()
    assert ids["evaluation_id"] == context["evaluation_id"] and ids["outcome"] == "completed"
    assert isinstance(ids["execution_id"], str) and ids["execution_id"]
    assert ids["final"] is True and isinstance(ids["sequence"], int)
    again = post(report)
    assert again.status_code == 200 and again.json() == ids
    conflict = post({**report, "outcome": "failed"})
    assert conflict.status_code == 409
    assert conflict.json()["error"] == "conflict" and conflict.json()["error_description"]
    assert len(executions(store, context["evaluation_id"])) == 1

    unknown = post({**report, "evaluation_id": "dec_" + "Z" * 24})
    foreign = post(report, authorization=OTHER_BASIC)
    assert unknown.status_code == foreign.status_code == 404
    assert unknown.json() == foreign.json()
    unauthenticated = post(report, authorization=None)
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["www-authenticate"].startswith("Basic")
    assert post(report, authorization="Basic " + base64.b64encode(
        b"demo-rs:wrong").decode()).status_code == 401
    for malformed in ({**report, "outcome": "done"}, {**report, "extra": 1},
                      {"outcome": "completed"}, [report]):
        answer = post(malformed)
        assert answer.status_code == 400, (malformed, answer.text)
        assert answer.json()["error"] == "invalid_request"
    text = client.post("/mission/executions", content=b"evaluation_id=x",
                       headers={"Authorization": BASIC, "Content-Type": "text/plain"})
    assert text.status_code == 400
    assert len(executions(store, context["evaluation_id"])) == 1


def test_the_http_intake_needs_its_configuration(
        http: tuple[TestClient, MissionRecord]) -> None:
    client, _ = http
    client.app.state.execution_intake = None  # type: ignore[attr-defined]
    answer = client.post("/mission/executions", json={"evaluation_id": "dec_x",
                                                      "outcome": "completed"},
                         headers={"Authorization": BASIC})
    assert answer.status_code == 503
