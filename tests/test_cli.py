"""The ``missionbound`` command against real databases (SQLite file and PostgreSQL schema,
from tests/conftest.py), driven in-process with typer's CliRunner. ``serve`` runs as a real
process in tests/e2e/test_serve.py."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from typer.testing import CliRunner, Result

from missionbound import cli
from missionbound.config import ENV_PREFIX
from missionbound.mission.record import MissionRecord
from missionbound.store.engine import create_engine_for
from tests.store.factories import ERP

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX) and name != "MISSIONBOUND_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def run(*args: str) -> Result:
    return runner.invoke(cli.app, list(args))


def recent(**overrides: object) -> dict[str, object]:
    # The factories' fixed clock is in the past; these Missions must be current.
    return {"created_at": datetime.now(UTC) - timedelta(minutes=2), **overrides}


def assert_friendly(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: ")
    for fragment in fragments:
        assert fragment in result.stderr


# --------------------------------------------------------------------------- db upgrade


def test_db_upgrade_creates_the_schema_then_has_nothing_to_do(empty_database_url: str) -> None:
    first = run("db", "upgrade", "--database-url", empty_database_url)
    assert first.exit_code == 0, first.output
    assert "upgraded from empty to" in first.stdout
    second = run("db", "upgrade", "--database-url", empty_database_url)
    assert second.exit_code == 0, second.output
    assert "already at revision" in second.stdout
    # Now the read commands work on it.
    assert run("mission", "list", "--json", "--database-url", empty_database_url).exit_code == 0


def test_db_upgrade_uses_data_dir_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISSIONBOUND_DATA_DIR", str(tmp_path / "state"))
    result = run("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "state" / "missionbound.db").is_file()


def test_db_upgrade_reports_a_database_that_does_not_answer() -> None:
    result = run("db", "upgrade", "--database-url", "postgresql://mb@127.0.0.1:1/mb")
    assert_friendly(result, 1, "does not answer", "127.0.0.1")


# --------------------------------------------------------------------------- mission list


def test_mission_list_when_there_are_none(database_url: str) -> None:
    table = run("mission", "list", "--database-url", database_url)
    assert table.exit_code == 0, table.output
    assert "no Missions" in table.stdout
    listed = run("mission", "list", "--json", "--database-url", database_url)
    assert json.loads(listed.stdout) == []


def test_mission_list_shows_stored_missions_and_filters(
    database_url: str,
    create_mission: Callable[..., MissionRecord],
    active_mission: Callable[..., MissionRecord],
) -> None:
    pending = create_mission(**recent())
    active = active_mission(**recent(client_id="demo-subagent"))

    listed = json.loads(run("mission", "list", "--json", "--database-url", database_url).stdout)
    assert {m["mission_id"] for m in listed} == {pending.mission_id, active.mission_id}
    by_id = {m["mission_id"]: m for m in listed}
    assert by_id[active.mission_id]["state"] == "active"
    assert by_id[active.mission_id]["effective_state"] == "active"
    assert by_id[pending.mission_id]["effective_state"] == "pending_approval"

    def ids(*options: str) -> set[str]:
        result = run("mission", "list", "--json", "--database-url", database_url, *options)
        assert result.exit_code == 0, result.output
        return {m["mission_id"] for m in json.loads(result.stdout)}

    assert ids("--state", "active") == {active.mission_id}
    assert ids("--state", "pending_approval") == {pending.mission_id}
    assert ids("--client", "demo-subagent") == {active.mission_id}
    assert ids("--subject", "alice") == {pending.mission_id, active.mission_id}
    assert ids("--subject", "bob") == set()
    assert len(ids("--limit", "1")) == 1

    table = run("mission", "list", "--database-url", database_url)
    assert table.exit_code == 0, table.output
    assert pending.mission_id in table.stdout and active.mission_id in table.stdout
    assert "demo-subagent" in table.stdout


def test_mission_list_shows_the_effective_state(
    database_url: str, create_mission: Callable[..., MissionRecord]
) -> None:
    # Pending for longer than the consent window: expired, though the store still says
    # pending_approval (PROFILE.md section 7: the clock comes first).
    stale = create_mission(created_at=datetime.now(UTC) - timedelta(hours=1))
    listed = json.loads(run("mission", "list", "--json", "--database-url", database_url).stdout)
    assert [(m["state"], m["effective_state"]) for m in listed] == [("pending_approval", "expired")]
    table = run("mission", "list", "--database-url", database_url).stdout
    assert stale.mission_id in table and "expired (stored: pending_approval)" in table


def test_mission_list_rejects_an_unknown_state(database_url: str) -> None:
    result = run("mission", "list", "--state", "paused", "--database-url", database_url)
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_read_commands_never_create_a_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'absent' / 'mb.db'}"
    for command in (("mission", "list"), ("mission", "show", "msn_" + "A" * 32),
                    ("audit", "verify")):  # fmt: skip
        assert_friendly(run(*command, "--database-url", url), 1, "missionbound db upgrade")
    assert not (tmp_path / "absent").exists()


def test_read_commands_on_an_empty_database_ask_for_an_upgrade(empty_database_url: str) -> None:
    if empty_database_url.startswith("sqlite"):
        # An existing file without the schema.
        create_engine_for(empty_database_url).dispose()
        Path(empty_database_url.removeprefix("sqlite:///")).touch()
    result = run("mission", "list", "--database-url", empty_database_url)
    assert_friendly(result, 1, "no schema yet", "missionbound db upgrade")


# --------------------------------------------------------------------------- mission show


def test_mission_show(database_url: str, active_mission: Callable[..., MissionRecord]) -> None:
    mission = active_mission(**recent())
    shown = run("mission", "show", mission.mission_id, "--json", "--database-url", database_url)
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == {**mission.as_dict(), "effective_state": "active"}

    table = run("mission", "show", mission.mission_id, "--database-url", database_url)
    assert table.exit_code == 0, table.output
    for expected in (mission.mission_id, "Reconcile the Q3 invoices", ERP, "invoices.read",
                     str(mission.authority_hash), "approve", "bob"):  # fmt: skip
        assert expected in table.stdout, expected


def test_mission_show_unknown_and_malformed_ids(database_url: str) -> None:
    unknown = "msn_" + "x" * 32
    assert_friendly(
        run("mission", "show", unknown, "--database-url", database_url), 1, f"no Mission {unknown}"
    )
    assert_friendly(
        run("mission", "show", "inv-acme-1", "--database-url", database_url), 2, "not a Mission id"
    )


# --------------------------------------------------------------------------- audit verify


def test_audit_verify_on_an_empty_log(database_url: str) -> None:
    result = run("audit", "verify", "--database-url", database_url)
    assert result.exit_code == 0, result.output
    assert "audit log intact: 0 records, 0 Missions checked" in result.stdout


def test_audit_verify_passes_then_names_the_first_tampered_record(
    database_url: str, engine: Engine, active_mission: Callable[..., MissionRecord]
) -> None:
    mission = active_mission(**recent())
    intact = run("audit", "verify", "--database-url", database_url)
    assert intact.exit_code == 0, intact.output
    assert "audit log intact: 2 records, 1 Missions checked" in intact.stdout

    # Change one byte of what the first record says happened.
    with engine.begin() as connection:
        event = connection.execute(text("SELECT event FROM audit_records WHERE seq = 1")).scalar()
        assert isinstance(event, str)
        connection.execute(
            text("UPDATE audit_records SET event = :event WHERE seq = 1"),
            {"event": event[:-1] + chr(ord(event[-1]) ^ 1)},
        )
    broken = run("audit", "verify", "--database-url", database_url)
    assert_friendly(broken, 1, "audit record 1", mission.mission_id, "record_hash")


# --------------------------------------------------------------------------- settings


def test_commands_read_the_database_from_a_config_file(
    tmp_path: Path, database_url: str, create_mission: Callable[..., MissionRecord]
) -> None:
    mission = create_mission(**recent())
    config = tmp_path / "mb.toml"
    config.write_text(f"database_url = {json.dumps(database_url)}\n")
    result = run("mission", "list", "--json", "--config", str(config))
    assert [m["mission_id"] for m in json.loads(result.stdout)] == [mission.mission_id]


def test_commands_read_the_database_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, database_url: str, create_mission: Callable[..., MissionRecord]
) -> None:
    mission = create_mission(**recent())
    monkeypatch.setenv("MISSIONBOUND_DATABASE_URL", database_url)
    result = run("mission", "show", mission.mission_id, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["mission_id"] == mission.mission_id


def test_the_flag_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setenv("MISSIONBOUND_DATABASE_URL", f"sqlite:///{tmp_path / 'nowhere.db'}")
    result = run("audit", "verify", "--database-url", database_url)
    assert result.exit_code == 0, result.output


def test_a_bad_config_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "mb.toml"
    config.write_text('port = "eighty"\n')
    assert_friendly(run("mission", "list", "--config", str(config)), 2, "MISSIONBOUND_PORT")
    config.write_text("[catalog\n")
    assert_friendly(run("db", "upgrade", "--config", str(config)), 2, "not valid TOML")
    assert_friendly(run("audit", "verify", "--config", str(tmp_path / "nope.toml")), 2,
                    "no such file")  # fmt: skip


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("::", False), ("192.0.2.10", False), ("as.example.com", False)],
)
def test_the_demo_warning_knows_which_listening_addresses_stay_on_this_machine(
    host: str, loopback: bool
) -> None:
    from missionbound.cli.serve import _is_loopback_host

    assert _is_loopback_host(host) is loopback
