"""Sessions and transactions: the :class:`Store` handle and the "after rollback" hooks.

Every repository function takes a :class:`~sqlalchemy.orm.Session` and never commits: the
caller decides what one transaction holds (DESIGN.md: a state change, its audit record and
its outbox event commit together or not at all).

Some refusals must leave a trace that outlives the refused transaction: a derivation refused
because the Mission is past ``mission_expiry`` should still persist the expiry (PROFILE.md
section 7, "persisting it may be lazy"), a replayed refresh token must still revoke its
family (section 8). A repository registers such work with :func:`run_after_rollback`;
:meth:`Store.begin` runs it, each action in a fresh transaction, after rolling back. The
actions are idempotent and re-check everything under their own locks.

Lock order (every writer follows it, so PostgreSQL never has to break a deadlock):
a refresh token family row -> token rows (codes, refresh tokens) -> the Mission row -> the
derivation counter -> meter counters (in key order) -> evidence chain heads (in ``chain_id``
order) -> the audit chain head. The audit chain head is taken by
``missionbound.audit.append`` and held to commit, so append audit records after every other
lock of the transaction. On PostgreSQL, inserting a row that references a Mission (code,
refresh token, issued token id) takes a key share lock on the Mission row, which waits for a
``FOR UPDATE`` holder: insert such rows after the gate (which holds the Mission lock
already) or before the first audit append.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from missionbound.store.engine import SQLITE_BUSY_TIMEOUT_MS, read_only_engine

log = logging.getLogger(__name__)

AfterRollback = Callable[[Session], object]
_AFTER_ROLLBACK_KEY = "missionbound.after_rollback"


def run_after_rollback(session: Session, key: str, action: AfterRollback) -> None:
    """Ask :meth:`Store.begin` to run ``action`` in a new transaction if this one rolls back.

    ``key`` de-duplicates (one expiry per Mission, one revocation per family). A session not
    opened by :meth:`Store.begin` simply ignores the request; the work then happens later
    (the expiry sweep, the next attempt).
    """
    pending: dict[str, AfterRollback] = session.info.setdefault(_AFTER_ROLLBACK_KEY, {})
    pending.setdefault(key, action)


class Store:
    """The engine plus session factories. Construct one per process and share it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Objects stay readable after commit: repositories return them to HTTP handlers
        # that run after the transaction closed.
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(read_only_engine(engine), expire_on_commit=False)
        # SQLite has one writer at a time. Writers of this process queue here, in order and
        # without polling, instead of in SQLite's busy handler, which sleeps in growing steps
        # (up to 100 ms) and so gave concurrent requests a tail of up to a second. Only this
        # process queues here: another process (the CLI next to `serve`, decision W8) still
        # meets the write lock in SQLite, and waits for it through busy_timeout as before.
        # Re-entrant: a transaction may open another before its own first statement (a
        # client assertion's jti is spent in its own transaction, client_auth.py).
        self._writer_lock = threading.RLock() if engine.dialect.name == "sqlite" else None

    def session(self) -> Session:
        """A plain session; the caller begins and commits (``with s.begin(): ...``)."""
        return self._sessions()

    def read(self) -> Session:
        """A session for reads only (on SQLite its transactions do not take the write lock)."""
        return self._read_sessions()

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """One write transaction: commit on success, roll back on any exception, then run
        the work registered with :func:`run_after_rollback` and re-raise.

        On SQLite the transaction (and that work) runs holding this process's writer lock."""
        with self._writing():
            session = self._sessions()
            try:
                with session.begin():
                    yield session
            except BaseException:
                actions = session.info.pop(_AFTER_ROLLBACK_KEY, None)
                session.close()
                if actions:
                    self._run_after_rollback(actions)
                raise
            finally:
                session.info.pop(_AFTER_ROLLBACK_KEY, None)
                session.close()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        lock = self._writer_lock
        if lock is None:
            yield
            return
        if not lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
            # What SQLite itself answers when its busy handler gives up.
            raise OperationalError(
                "BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked")
            )
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def begin_read(self) -> Iterator[Session]:
        """One read-only transaction, for requests that write nothing (introspection).

        On SQLite it begins ``DEFERRED``: it takes no write lock, so it neither queues
        behind writers nor makes them wait (WAL: readers and the writer run side by side).
        It always ends in a rollback, so a stray write can never be committed from here.
        """
        session = self._read_sessions()
        try:
            yield session
        finally:
            # Nothing is committed: closing rolls the (auto-begun) transaction back.
            session.close()

    def _run_after_rollback(self, actions: dict[str, AfterRollback]) -> None:
        for key, action in actions.items():
            try:
                with self._sessions() as session, session.begin():
                    action(session)
            except Exception:
                # The caller's own error is what must reach the client; this work is
                # best effort and is retried by the sweep or the next request.
                log.exception("after-rollback action %s failed", key)

    def dispose(self) -> None:
        self.engine.dispose()
