"""``missionbound serve --pdp-tenant NAME=DIR``: parsed, checked and loaded before the server
starts; a bad value is a usage error (exit 2) saying what to write. The server itself runs as
a real process in tests/e2e/test_serve.py; here the start stops at the database, which does
not answer, so nothing is served."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from missionbound import cli
from missionbound.cli.serve import parse_pdp_tenants
from missionbound.config import ENV_PREFIX

ROOT = Path(__file__).resolve().parents[1]
TODO = ROOT / "examples" / "authzen-todo"
# Nothing listens on port 1: the start gets past the tenants and fails at the database.
DEAD_DATABASE = "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2"

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    # serve runs in this process here: its JSON log pipeline would stay bound to the
    # runner's captured stream, closed once the invocation ends, and every later test that
    # logs would fail writing to it.
    monkeypatch.setattr("missionbound.web.logs.configure_logging", lambda *_a, **_k: None)


def serve(*args: str) -> Result:
    return runner.invoke(cli.app, ["serve", "--database-url", DEAD_DATABASE, *args])


def test_names_and_folders_are_parsed() -> None:
    assert parse_pdp_tenants(["todo=examples/authzen-todo", " search = /srv/search "]) == {
        "todo": Path("examples/authzen-todo"), "search": Path("/srv/search")}


@pytest.mark.parametrize(("value", "fragment"), [
    ("todo", "expected NAME=DIR"), ("=dir", "expected NAME=DIR"), ("todo=", "expected NAME=DIR"),
])
def test_a_malformed_value_is_a_usage_error(value: str, fragment: str) -> None:
    result = serve("--pdp-tenant", value)
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "--pdp-tenant" in result.output
    assert "Traceback" not in result.output


def test_a_tenant_given_twice_is_a_usage_error() -> None:
    with pytest.raises(typer.BadParameter, match="given twice"):
        parse_pdp_tenants(["todo=a", "todo=b"])
    result = serve("--pdp-tenant", f"todo={TODO}", "--pdp-tenant", f"todo={TODO}")
    assert result.exit_code == 2 and "given twice" in result.output


def test_a_folder_that_is_no_tenant_is_a_usage_error(tmp_path: Path) -> None:
    result = serve("--pdp-tenant", f"todo={tmp_path / 'missing'}")
    assert result.exit_code == 2, result.output
    assert "PDP tenant 'todo'" in result.stderr and "no such folder" in result.stderr


def test_a_good_tenant_is_loaded_and_the_start_goes_on(tmp_path: Path) -> None:
    result = serve("--pdp-tenant", f"todo={TODO}")
    # Past the tenant: the start stopped at the database, which does not answer.
    assert result.exit_code == 1, result.output
    assert "does not answer" in result.stderr


def test_the_flag_adds_to_the_tenants_of_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "mb.toml"
    config.write_text(f'[pdp_tenants]\nbroken = "{tmp_path / "nope"}"\n')
    result = serve("--config", str(config), "--pdp-tenant", f"todo={TODO}")
    # The file's tenant is still loaded (and refused): the flag added to it.
    assert result.exit_code == 2 and "PDP tenant 'broken'" in result.stderr
    result = serve("--config", str(config), "--pdp-tenant", f"broken={TODO}")
    # The flag overrides the file's tenant of the same name.
    assert result.exit_code == 1 and "does not answer" in result.stderr
