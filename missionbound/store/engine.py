"""Engines for the two supported databases: an embedded SQLite file and PostgreSQL (psycopg 3).

DESIGN.md "Scale-out": one process on SQLite, N replicas on one PostgreSQL. Single-use ids,
the derivation gate and the audit chain rely on the database to serialize writers, so each
engine is configured here for that:

* SQLite: WAL (readers never block the writer), ``foreign_keys=ON``, a generous
  ``busy_timeout`` so concurrent writers queue instead of failing, ``synchronous=FULL`` so
  an acknowledged revoke survives a power cut, and every transaction begun with
  ``BEGIN IMMEDIATE``: the write lock is taken at the start, so two gate transactions can
  never both read "count 49" and both increment (SQLAlchemy's "Enabling Non-Legacy SQLite
  Transactional Modes" recipe; the sqlite3 driver's own BEGIN handling is switched off).
  Read-only work may use :func:`read_only_engine`, whose transactions begin ``DEFERRED``.
* PostgreSQL: ``postgresql://`` and ``postgres://`` mean psycopg 3; row locks
  (``SELECT ... FOR UPDATE``) do the serializing, at the default READ COMMITTED level.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

SQLITE_BUSY_TIMEOUT_MS = 30_000
BEGIN_MODE_OPTION = "missionbound_sqlite_begin"
_BEGIN_MODES = frozenset({"DEFERRED", "IMMEDIATE", "EXCLUSIVE"})


class DatabaseUrlError(ValueError):
    """The configured database URL names something this project cannot run on."""


def normalize_url(url: str | URL) -> URL:
    """Map the accepted spellings onto the drivers we ship.

    ``postgresql://`` / ``postgres://`` / ``postgresql+psycopg://`` -> psycopg 3;
    ``sqlite:///path`` / ``sqlite+pysqlite:///path`` -> the standard library driver.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with the raw text
        raise DatabaseUrlError(f"not a database URL: {exc}") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "psycopg"):
            raise DatabaseUrlError(
                f"PostgreSQL driver {driver!r} is not supported; use postgresql+psycopg://"
            )
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise DatabaseUrlError(f"SQLite driver {driver!r} is not supported")
        if parsed.database in (None, "", ":memory:") or (parsed.database or "").startswith(
            "file::memory:"
        ):
            # An in-memory database is private to one connection: the pool would hand
            # each thread a different, empty database and no lock would be shared.
            raise DatabaseUrlError("SQLite needs a file path (sqlite:///path/to/file.db)")
        return parsed.set(drivername="sqlite+pysqlite")
    raise DatabaseUrlError(f"unsupported database {backend!r}; use SQLite or PostgreSQL")


def create_engine_for(url: str | URL, **engine_kwargs: Any) -> Engine:
    """A synchronous engine for ``url`` configured as the module docstring describes.

    ``engine_kwargs`` go to :func:`sqlalchemy.create_engine` (pool sizes, ``echo``, ...).
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _create_sqlite_engine(parsed, engine_kwargs)
    engine_kwargs.setdefault("pool_pre_ping", True)
    return create_engine(parsed, **engine_kwargs)


def read_only_engine(engine: Engine) -> Engine:
    """The same pool, but SQLite transactions begin ``DEFERRED`` so readers do not queue
    behind writers. Only for sessions that never write (status, listings, verify)."""
    return engine.execution_options(**{BEGIN_MODE_OPTION: "DEFERRED"})


def _create_sqlite_engine(url: URL, engine_kwargs: dict[str, Any]) -> Engine:
    database = url.database or ""
    if not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **engine_kwargs)

    @event.listens_for(engine, "connect")
    def _configure_connection(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the driver: it would otherwise skip BEGIN before SELECTs
        # and DDL, breaking both isolation and transactional migrations.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            _ensure_wal(cursor)
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA synchronous = FULL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        mode = connection.get_execution_options().get(BEGIN_MODE_OPTION, "IMMEDIATE")
        if mode not in _BEGIN_MODES:
            raise ValueError(f"unknown SQLite BEGIN mode {mode!r}")
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _ensure_wal(cursor: Any) -> None:
    """Switch the file to WAL (a persistent property of the file, so only its first
    connection ever does). The switch needs a moment alone with the file and SQLite reports
    "database is locked" at once, without its busy handler, when another connection is
    opening it at the same time (replicas starting together): retry for a while."""
    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def is_postgresql(engine_or_dialect_name: Engine | str) -> bool:
    name = (
        engine_or_dialect_name
        if isinstance(engine_or_dialect_name, str)
        else engine_or_dialect_name.dialect.name
    )
    return name == "postgresql"
