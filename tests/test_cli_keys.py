"""``missionbound keys rotate`` and ``keys list`` against real databases (SQLite file and
PostgreSQL schema), in-process with typer's CliRunner."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from missionbound import cli
from missionbound.config import ENV_PREFIX
from missionbound.issuer.keys import ensure_signing_key, public_jwks
from missionbound.store.keys import PRIVATE_JWK_MEMBERS
from missionbound.store.models import SigningKey
from missionbound.store.transactions import Store

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX) and name != "MISSIONBOUND_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def run(*args: str) -> Result:
    return runner.invoke(cli.app, list(args))


def private_values(store: Store) -> list[str]:
    """Every private member's value of every stored key: none may be printed."""
    with store.read() as session, session.begin():
        rows = session.query(SigningKey).all()
        return [
            str(value)
            for row in rows
            for name, value in row.private_jwk.items()
            if name in PRIVATE_JWK_MEMBERS
        ]


def test_rotate_prints_the_new_kid_and_the_retired_one_with_its_window(
    database_url: str, store: Store
) -> None:
    old = ensure_signing_key(store, datetime.now(UTC))
    result = run("keys", "rotate", "--database-url", database_url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("new signing key ") and lines[0].endswith(" (ES256)")
    new = lines[0].split()[3]
    assert lines[1].startswith(f"retired {old}, published until 20")
    assert [k["kid"] for k in public_jwks(store, datetime.now(UTC))["keys"]] == [old, new]


def test_rotate_to_eddsa_then_list(database_url: str, store: Store) -> None:
    assert run("keys", "rotate", "--alg", "EdDSA", "--database-url", database_url).exit_code == 0
    assert run("keys", "rotate", "--database-url", database_url).exit_code == 0
    listed = run("keys", "list", "--json", "--database-url", database_url)
    assert listed.exit_code == 0, listed.output
    keys = json.loads(listed.stdout)
    assert [(k["alg"], k["signing"], k["retired"] is None) for k in keys] == [
        ("EdDSA", False, False),
        ("ES256", True, True),
    ]
    assert keys[0]["published_until"] > keys[0]["retired"]
    assert set(keys[0]) == {"kid", "alg", "created", "retired", "published_until", "signing"}

    table = run("keys", "list", "--database-url", database_url)
    assert table.exit_code == 0, table.output
    for key in keys:
        assert key["kid"] in table.stdout
    assert "while current" in table.stdout
    secrets = private_values(store)
    assert len(secrets) == 2
    for output in (listed.stdout, table.stdout):
        for secret in secrets:
            assert secret not in output


def test_list_on_a_database_without_keys(database_url: str) -> None:
    result = run("keys", "list", "--database-url", database_url)
    assert result.exit_code == 0, result.output
    assert "no signing keys" in result.stdout


def test_rotate_refuses_an_unknown_algorithm(database_url: str) -> None:
    result = run("keys", "rotate", "--alg", "RS256", "--database-url", database_url)
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_rotate_needs_a_database_with_the_schema(tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path / 'nothing.db'}"
    result = run("keys", "rotate", "--database-url", missing)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert "missionbound db upgrade" in result.stderr
