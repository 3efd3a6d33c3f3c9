"""``missionbound mission revoke|suspend|resume|complete`` against real databases (SQLite file
and PostgreSQL schema, tests/conftest.py), driven in-process with typer's CliRunner.

The command acts as the local operator (role ``admin``); exit codes follow decision W9:
0 success (an idempotent repeat included), 1 refused (the wire code named), 2 bad usage.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner, Result

from missionbound import audit, cli
from missionbound.config import ENV_PREFIX
from missionbound.mission.lifecycle import State
from missionbound.mission.record import MissionRecord
from missionbound.store import Store, missions
from missionbound.store.models import OutboxEvent
from tests.store.factories import count_traces

runner = CliRunner()
OPERATOR = "ops-anna"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX) and name != "MISSIONBOUND_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    # getpass.getuser() reads LOGNAME first: the operator the audit log names.
    monkeypatch.setenv("LOGNAME", OPERATOR)
    monkeypatch.chdir(tmp_path)


def run(database_url: str, *args: str) -> Result:
    return runner.invoke(cli.app, ["mission", *args, "--database-url", database_url])


def recent(**overrides: Any) -> dict[str, Any]:
    return {"created_at": datetime.now(UTC) - timedelta(minutes=2), **overrides}


def stored(store: Store, mission_id: str) -> MissionRecord:
    with store.read() as session, session.begin():
        record = missions.get(session, mission_id)
    assert record is not None
    return record


def traces(store: Store, mission_id: str) -> tuple[int, int, int, str, int]:
    with store.read() as session, session.begin():
        counted = count_traces(session, mission_id)
    record = stored(store, mission_id)
    return counted.history, counted.audit, counted.outbox, record.state.value, record.version


def test_suspend_resume_and_revoke_with_rich_output(
    database_url: str, store: Store, active_mission: Callable[..., MissionRecord]
) -> None:
    mission = active_mission(**recent())
    result = run(database_url, "suspend", mission.mission_id, "--reason", "Odd payment")
    assert result.exit_code == 0, result.output
    for expected in (mission.mission_id, "active -> suspended", "2 -> 3", "Odd payment",
                     f"operator {OPERATOR}", "suspended"):
        assert expected in result.stdout, expected
    record = stored(store, mission.mission_id)
    assert (record.state, record.version) == (State.SUSPENDED, 3)
    last = record.lifecycle_history[-1]
    assert last["actor"] == {"roles": ["admin"], "operator": OPERATOR, "via": "cli"}
    assert last["reason"] == "Odd payment"
    with store.read() as session, session.begin():
        event = session.scalars(select(OutboxEvent).where(
            OutboxEvent.mission_id == mission.mission_id).order_by(OutboxEvent.id.desc())).first()
        assert event is not None
        assert (event.payload["state"], event.payload["prior_state"], event.payload["reason"]) == (
            "suspended", "active", "Odd payment")

    resumed = run(database_url, "resume", mission.mission_id, "--reason", "Checked",
                  "--expected-version", "3", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout) == {
        "mission_id": mission.mission_id, "operation": "resume", "changed": True,
        "prior_state": "suspended", "state": "active", "prior_version": 3, "version": 4,
        "reason": "Checked", "actor": {"operator": OPERATOR, "via": "cli"}}

    revoked = run(database_url, "revoke", mission.mission_id, "--reason", "Done early")
    assert revoked.exit_code == 0, revoked.output
    assert "active -> revoked" in revoked.stdout
    assert stored(store, mission.mission_id).state is State.REVOKED
    shown = runner.invoke(cli.app, ["mission", "show", mission.mission_id,
                                    "--database-url", database_url])
    assert f"operator {OPERATOR}" in shown.stdout
    assert audit.verify(store.engine).ok


def test_reason_and_version_follow_the_endpoints_rules(
    database_url: str, store: Store, active_mission: Callable[..., MissionRecord]
) -> None:
    """Decision G6: CRLF becomes LF, tab and a lone CR are kept; 18 digits are a version."""
    mission = active_mission(**recent())
    stale = run(database_url, "suspend", mission.mission_id, "--reason", "x",
                "--expected-version", "9" * 18)
    assert stale.exit_code == 1, stale.output
    assert "mission_concurrent_modification" in stale.stderr
    result = run(database_url, "suspend", mission.mission_id, "--reason", "a\r\nb\tc\rd",
                 "--expected-version", "2")
    assert result.exit_code == 0, result.output
    assert stored(store, mission.mission_id).lifecycle_history[-1]["reason"] == "a\nb\tc\rd"


def test_complete_from_suspended(
    database_url: str, store: Store, active_mission: Callable[..., MissionRecord]
) -> None:
    mission = active_mission(**recent())
    assert run(database_url, "suspend", mission.mission_id, "--reason", "x").exit_code == 0
    result = run(database_url, "complete", mission.mission_id, "--reason", "Task done",
                 "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["state"] == "completed"


def test_an_idempotent_repeat_exits_0_and_changes_nothing(
    database_url: str, store: Store, active_mission: Callable[..., MissionRecord]
) -> None:
    mission = active_mission(**recent())
    assert run(database_url, "revoke", mission.mission_id, "--reason", "stop").exit_code == 0
    before = traces(store, mission.mission_id)
    again = run(database_url, "revoke", mission.mission_id, "--reason", "stop")
    assert again.exit_code == 0, again.output
    assert "already revoked" in again.stdout and "idempotent" in again.stdout
    assert traces(store, mission.mission_id) == before
    as_json = run(database_url, "revoke", mission.mission_id, "--reason", "stop", "--json")
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["changed"] is False
    # Resume on an active Mission is an idempotent success too (decision L2).
    active = active_mission(**recent())
    before = traces(store, active.mission_id)
    assert run(database_url, "resume", active.mission_id, "--reason", "x").exit_code == 0
    assert traces(store, active.mission_id) == before


def refused(result: Result, code: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith(f"error: {code}: "), result.stderr


def test_refusals_exit_1_with_the_wire_code_and_change_nothing(
    database_url: str, store: Store, active_mission: Callable[..., MissionRecord],
    create_mission: Callable[..., MissionRecord],
) -> None:
    pending = create_mission(**recent())
    before = traces(store, pending.mission_id)
    refused(run(database_url, "suspend", pending.mission_id, "--reason", "x"), "invalid_state")
    assert traces(store, pending.mission_id) == before

    mission = active_mission(**recent())
    stale = run(database_url, "suspend", mission.mission_id, "--reason", "x",
                "--expected-version", "1")
    refused(stale, "mission_concurrent_modification")
    assert "expected version 1" in stale.stderr
    assert run(database_url, "complete", mission.mission_id, "--reason", "x").exit_code == 0
    before = traces(store, mission.mission_id)
    for operation in ("suspend", "resume", "revoke"):
        refused(run(database_url, operation, mission.mission_id, "--reason", "x"),
                "mission_concurrent_modification")
    as_json = run(database_url, "revoke", mission.mission_id, "--reason", "x", "--json")
    refused(as_json, "mission_concurrent_modification")
    assert json.loads(as_json.stdout) == {
        "mission_id": mission.mission_id, "error": "mission_concurrent_modification",
        "error_description": "the Mission is completed; revoke refused"}
    assert traces(store, mission.mission_id) == before

    unknown = "msn_" + "x" * 32
    result = run(database_url, "revoke", unknown, "--reason", "x")
    refused(result, "not_found")
    assert f"no Mission {unknown}" in result.stderr


def test_an_expired_mission_is_refused_and_its_expiry_recorded(
    database_url: str, store: Store, active_mission: Callable[..., MissionRecord]
) -> None:
    mission = active_mission(created_at=datetime.now(UTC) - timedelta(days=2),
                             lifetime=timedelta(days=1))
    history, _, outbox, state, version = traces(store, mission.mission_id)
    assert state == "active"
    refused(run(database_url, "suspend", mission.mission_id, "--reason", "x"),
            "mission_concurrent_modification")
    # Clock first: the refusal rolled back, the expiry is persisted on its own.
    after = traces(store, mission.mission_id)
    assert (after[0], after[2], after[3], after[4]) == (history + 1, outbox + 1, "expired",
                                                         version + 1)


@pytest.mark.parametrize("args", [
    ["revoke", "inv-acme-1", "--reason", "x"],
    ["revoke", "{mission}"],
    ["revoke", "{mission}", "--reason", "   "],
    ["revoke", "{mission}", "--reason", "x" * 1025],
    ["revoke", "{mission}", "--reason", "bell\x07"],
    ["revoke", "{mission}", "--reason", "x", "--expected-version", "-1"],
    ["revoke", "{mission}", "--reason", "x", "--expected-version", "two"],
    # The endpoint's and the console's rules (decision G6).
    ["revoke", "{mission}", "--reason", "ok\x9bthere"],
    ["revoke", "{mission}", "--reason", "del\x7f"],
    ["revoke", "{mission}", "--reason", "x", "--expected-version", "1" * 19],
    ["revoke", "{mission}", "--reason", "x", "--expected-version", "+3"],
    ["revoke", "{mission}", "--reason", "x", "--expected-version", ""],
    ["approve", "{mission}", "--reason", "x"],
])
def test_bad_usage_exits_2(
    database_url: str, store: Store, active_mission: Callable[..., MissionRecord],
    args: list[str],
) -> None:
    mission = active_mission(**recent())
    before = traces(store, mission.mission_id)
    result = run(database_url, *[arg.replace("{mission}", mission.mission_id) for arg in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert traces(store, mission.mission_id) == before


def test_the_commands_never_create_a_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'absent.db'}"
    result = run(url, "revoke", "msn_" + "x" * 32, "--reason", "x")
    assert result.exit_code == 1
    assert "missionbound db upgrade" in result.stderr
    assert not (tmp_path / "absent.db").exists()
