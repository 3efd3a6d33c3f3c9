"""Engines: accepted URLs, SQLite configured for serialized writers, aware UTC times."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import StatementError

from missionbound.store.engine import (
    DatabaseUrlError,
    create_engine_for,
    normalize_url,
    read_only_engine,
)
from missionbound.store.models import SingleUseId
from missionbound.store.transactions import Store


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("postgresql://u@db:5432/mb", "postgresql+psycopg"),
        ("postgres://u@db/mb", "postgresql+psycopg"),
        ("postgresql+psycopg://u@db/mb", "postgresql+psycopg"),
        ("sqlite:////var/mb/missionbound.db", "sqlite+pysqlite"),
        ("sqlite+pysqlite:///relative.db", "sqlite+pysqlite"),
    ],
)
def test_accepted_urls_map_to_the_shipped_drivers(given: str, driver: str) -> None:
    assert normalize_url(given).drivername == driver


@pytest.mark.parametrize(
    "given",
    [
        "sqlite://",
        "sqlite:///:memory:",
        "postgresql+psycopg2://u@db/mb",
        "mysql://u@db/mb",
        "not a url",
    ],
)
def test_unusable_urls_are_refused(given: str) -> None:
    with pytest.raises(DatabaseUrlError):
        normalize_url(given)


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine_for(f"sqlite:///{tmp_path / 'nested' / 'mb.db'}")
    try:
        yield engine
    finally:
        engine.dispose()


def test_sqlite_connections_are_configured(sqlite_engine: Engine) -> None:
    with sqlite_engine.connect() as connection:
        pragma = {
            name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
        }
    assert pragma == {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "busy_timeout": 30000,
        "synchronous": 2,
    }


def _other_writer_is_blocked(database: str) -> bool:
    """Can a second connection start a write transaction right now?"""
    other = sqlite3.connect(database, timeout=0.05, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return True
    finally:
        other.close()


def test_sqlite_transactions_take_the_write_lock_at_begin(sqlite_engine: Engine) -> None:
    # Even a transaction whose first statement is a read holds the write lock: two gate
    # transactions can then never both read the same counter before either writes.
    database = sqlite_engine.url.database
    assert database is not None
    with sqlite_engine.connect() as connection:
        connection.execute(text("SELECT 1"))
        assert _other_writer_is_blocked(database)
    assert not _other_writer_is_blocked(database)


def test_read_only_sessions_do_not_take_the_write_lock(sqlite_engine: Engine) -> None:
    database = sqlite_engine.url.database
    assert database is not None
    with read_only_engine(sqlite_engine).connect() as connection:
        connection.execute(text("SELECT 1"))
        assert not _other_writer_is_blocked(database)


def test_sqlite_ddl_is_transactional(sqlite_engine: Engine) -> None:
    # The driver's legacy mode would have committed CREATE TABLE on its own; migrations
    # rely on DDL rolling back with its transaction.
    with sqlite_engine.connect() as connection:
        connection.execute(text("CREATE TABLE scratch (x INTEGER)"))
        connection.rollback()
    with sqlite_engine.connect() as connection:
        tables = connection.execute(
            text("SELECT name FROM sqlite_master WHERE name = 'scratch'")
        ).all()
    assert tables == []


def test_aware_times_round_trip_as_utc(store: Store) -> None:
    paris_summer = timezone(timedelta(hours=2))
    written = datetime(2026, 6, 1, 12, 30, 15, 123456, tzinfo=paris_summer)
    with store.begin() as session:
        session.add(SingleUseId(namespace="t", value="v", expires_at=written))
    with store.read() as session:
        read = session.execute(select(SingleUseId.expires_at)).scalar_one()
        later = session.execute(
            select(SingleUseId.value).where(
                SingleUseId.expires_at > datetime(2026, 6, 1, 10, 30, 15, tzinfo=UTC)
            )
        ).all()
    assert read == written
    assert read.tzinfo == UTC
    assert read.utcoffset() == timedelta(0)
    # 12:30:15.123456+02:00 is 10:30:15.123456Z: later than 10:30:15Z by the microseconds.
    assert later == [("v",)]


def test_naive_times_are_refused(store: Store) -> None:
    with pytest.raises(StatementError, match="naive datetime refused"), store.begin() as session:
        session.add(SingleUseId(namespace="t", value="v", expires_at=datetime(2026, 6, 1)))
        session.flush()
    with store.read() as session:
        assert session.execute(select(SingleUseId)).all() == []
