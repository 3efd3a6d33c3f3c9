"""Shared fixtures: real databases (SQLite file and PostgreSQL), a Store, Mission factories.

Every test that asks for ``engine`` (or ``store``, ``database_url``) runs twice: on a fresh
SQLite file and on a fresh PostgreSQL schema, both brought to the newest migration. The
PostgreSQL server is ``MISSIONBOUND_TEST_DATABASE_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``); each test gets its own schema
(``search_path``), dropped afterwards, so tests and concurrent runs never see each other.
The PostgreSQL variants are skipped, saying so, only when no server answers.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable, Iterator
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from missionbound.mission.record import MissionRecord
from missionbound.store import missions
from missionbound.store.engine import create_engine_for
from missionbound.store.migrate import upgrade
from missionbound.store.transactions import Store
from tests.store.factories import make_approval, make_record

DEFAULT_TEST_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ("sqlite", "postgresql")

# Enough connections for the concurrency tests without exhausting a shared server
# (PostgreSQL's default max_connections is 100 and other test runs may share it).
TEST_POOL = {"pool_size": 5, "max_overflow": 20, "pool_timeout": 60}


def postgres_url() -> str:
    return os.environ.get("MISSIONBOUND_TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL)


@cache
def postgres_problem() -> tuple[str, str] | None:
    """``("skip", why)`` when no PostgreSQL server answers, ``("fail", why)`` when one answers
    but refuses us (wrong credentials or database: a broken setup must not pass as a skip),
    ``None`` when it is usable. Asked once per run."""
    url = postgres_url()
    shown = make_url(url).render_as_string(hide_password=True)
    engine = create_engine_for(url, connect_args={"connect_timeout": 3}, pool_pre_ping=False)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as exc:
        if _server_answers(url):
            return ("fail", f"PostgreSQL at {shown} answers but refused the connection: {exc}")
        return ("skip", f"no PostgreSQL answers at {shown}: set MISSIONBOUND_TEST_DATABASE_URL")
    finally:
        engine.dispose()
    return None


def _server_answers(url: str) -> bool:
    parsed = make_url(url)
    if not parsed.host:  # a Unix socket: the driver's error is all we have
        return False
    try:
        socket.create_connection((parsed.host, parsed.port or 5432), timeout=3).close()
    except OSError:
        return False
    return True


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database kind. A test needing only one can override it with
    ``@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)``."""
    name: str = request.param
    if name == "postgresql":
        problem = postgres_problem()
        if problem is not None:
            kind, reason = problem
            if kind == "skip":
                pytest.skip(reason)
            pytest.fail(reason)
    return name


@pytest.fixture
def empty_database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL to a database with nothing in it: a new SQLite file, or a new PostgreSQL schema
    that the URL selects through libpq's ``options=-csearch_path=...``."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'missionbound.db'}"
        return
    schema = "mb_test_" + secrets.token_hex(6)
    admin = create_engine_for(postgres_url(), pool_size=1, max_overflow=0)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        base = make_url(postgres_url())
        url = base.update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def database_url(empty_database_url: str) -> str:
    """A database brought to the newest migration (through ``missionbound.store.upgrade``)."""
    upgrade(empty_database_url)
    return empty_database_url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine_for(database_url, **TEST_POOL)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def store(engine: Engine) -> Store:
    return Store(engine)


# -- Missions ---------------------------------------------------------------------------


@pytest.fixture
def create_mission(store: Store) -> Callable[..., MissionRecord]:
    """Store a pending Mission; ``make_record`` keyword arguments pass through."""

    def create(**overrides: Any) -> MissionRecord:
        record = make_record(**overrides)
        with store.begin() as session:
            return missions.create_pending(
                session,
                record,
                {"role": "client", "client_id": record.client_id},
                record.created_at,
            )

    return create


@pytest.fixture
def active_mission(
    store: Store, create_mission: Callable[..., MissionRecord]
) -> Callable[..., MissionRecord]:
    """Store a Mission and approve it one minute after creation."""

    def create(**overrides: Any) -> MissionRecord:
        record = create_mission(**overrides)
        approval = make_approval(record)
        with store.begin() as session:
            result = missions.approve(
                session,
                record.mission_id,
                now=record.created_at + timedelta(minutes=1),
                **approval.kwargs(),
            )
        return result.record

    return create
