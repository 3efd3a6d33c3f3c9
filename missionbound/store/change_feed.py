"""Mission change announcements: how every process serving a database learns, within
milliseconds, that a Mission's state changed (DESIGN.md "Scale-out", docs/scale-out.md).

**Announcing.** Every committed lifecycle event (creation, approval, suspend, resume,
revoke, complete, reject, the clock's expiry: everything
:func:`~missionbound.store.lifecycle.write_lifecycle_traces` records) calls
:func:`announce` in its own transaction with ``<mission_id>:<version>``:

* on PostgreSQL, ``SELECT pg_notify('missionbound_missions', payload)``: PostgreSQL delivers
  it to every listening connection of the database when the transaction commits, and never
  for a rollback;
* on every database, the announcement is also kept in ``session.info`` and published inside
  this process by a ``Session`` ``after_commit`` hook (dropped by ``after_rollback``), to the
  feeds of this process on the same database. On SQLite this is the only path (decision W8:
  one serving process); on PostgreSQL it spares the writing replica its own round trip.

Only version changes are announced: refreshes and derivations change no Mission state.

**Listening.** A :class:`ChangeFeed` per app (``app.state.change_feed``): callbacks
registered with :meth:`ChangeFeed.subscribe` get ``(mission_id, version)`` for every version
newer than the last one this feed saw for that Mission (the Mission cache, the Shared
Signals dispatcher's ``wake``). On PostgreSQL, :meth:`ChangeFeed.start` runs a daemon thread
holding one dedicated psycopg connection (autocommit, ``LISTEN``) that waits with
``notifies(timeout=...)``, pings the server every ``heartbeat_seconds`` and reconnects with
exponential backoff after any error.

**What a consumer may trust.** A cache may keep what it read while the feed is
:attr:`~ChangeFeed.healthy`, tagged with the :attr:`~ChangeFeed.generation` read *before*
reading, and trust it later only while the feed is healthy, the generation is unchanged and
the entry's version is at least :meth:`~ChangeFeed.announced_version`. The generation moves
whenever the feed cannot vouch that it saw every announcement since: each (re)connection
(announcements committed while nobody listened are lost), each lost connection, a listener
that went longer than ``stale_after_seconds`` without proof that its connection is alive,
a payload it could not read, and the bounded map of announced versions overflowing (a
forgotten version could otherwise let an older entry pass). :attr:`~ChangeFeed.healthy` is
False while not listening and while the last proof of life is older than
``stale_after_seconds`` (a stalled thread, a silently dead network path), so a listener
that is quietly broken stops being trusted on its own.

On SQLite the feed sees only this process (:attr:`~ChangeFeed.sees_other_processes` is
False): a write by another process (the CLI next to ``serve``) is announced nowhere, so a
consumer must confirm a cached version against the database (the Mission cache does).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from missionbound.store.engine import is_postgresql

log = structlog.get_logger("missionbound.change_feed")

CHANNEL = "missionbound_missions"
Callback = Callable[[str, int], None]

_PENDING_KEY = "missionbound.announcements"
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")
# libpq settings of the listening connection: fail fast when the server is unreachable, and
# notice a silently dead network path (no RST) through TCP keepalives and the user timeout
# instead of the kernel's retransmission limit (minutes).
_LISTENER_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
    "application_name": "missionbound change feed",
}


def payload_of(mission_id: str, version: int) -> str:
    return f"{mission_id}:{version}"


def parse_payload(payload: str) -> tuple[str, int] | None:
    """``(mission_id, version)`` of ``<mission_id>:<version>``, or None for anything else."""
    mission_id, sep, version = payload.rpartition(":")
    if not sep or not mission_id or not version.isascii() or not version.isdigit():
        return None
    return mission_id, int(version)


def database_key(engine: Engine) -> str:
    """Which database an engine writes to, as the in-process publication names it: the
    SQLite file's real path, or the PostgreSQL URL without its password (its options, such
    as a ``search_path``, included)."""
    url: URL = engine.url
    if engine.dialect.name == "sqlite":
        return "sqlite:" + os.path.realpath(url.database or "")
    return url.set(password=None).render_as_string(hide_password=True)


def announce(session: Session, mission_id: str, version: int) -> None:
    """Announce, when ``session``'s transaction commits, that ``mission_id`` is now at
    ``version`` (the module docstring). Called inside the transaction that wrote it."""
    connection = session.connection()
    engine = connection.engine
    payload = payload_of(mission_id, version)
    if is_postgresql(engine):
        session.execute(_NOTIFY, {"channel": CHANNEL, "payload": payload})
    pending: list[tuple[str, str, int]] = session.info.setdefault(_PENDING_KEY, [])
    pending.append((database_key(engine), mission_id, version))


@event.listens_for(Session, "after_commit")
def _publish_after_commit(session: Session) -> None:
    pending = session.info.pop(_PENDING_KEY, None)
    if pending:
        _HUB.publish(pending)


@event.listens_for(Session, "after_rollback")
def _drop_after_rollback(session: Session) -> None:
    # Never announce what did not commit. (A rolled-back savepoint would leave its
    # announcements to the outer commit: an announced version the database never reaches
    # only makes consumers read the database, never trust a stale entry. No code here uses
    # savepoints.)
    session.info.pop(_PENDING_KEY, None)


class _LocalHub:
    """This process's feeds, by database. Weak references: a feed nobody holds leaves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._feeds: dict[str, weakref.WeakSet[ChangeFeed]] = {}

    def join(self, key: str, feed: ChangeFeed) -> None:
        with self._lock:
            self._feeds.setdefault(key, weakref.WeakSet()).add(feed)

    def publish(self, announcements: Iterable[tuple[str, str, int]]) -> None:
        for key, mission_id, version in announcements:
            with self._lock:
                feeds = list(self._feeds.get(key, ()))
            for feed in feeds:
                feed.deliver(mission_id, version)


_HUB = _LocalHub()


class ChangeFeed:
    """The change announcements of one database, as one process receives them.

    ``max_announced`` bounds the map of announced versions (overflow clears it and moves the
    generation). The listener's timings (``heartbeat_seconds``, ``stale_after_seconds``,
    ``poll_seconds``, backoff between ``min_backoff_seconds`` and ``max_backoff_seconds``)
    matter only on PostgreSQL.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        heartbeat_seconds: float = 1.0,
        stale_after_seconds: float = 3.0,
        poll_seconds: float = 0.25,
        min_backoff_seconds: float = 0.05,
        max_backoff_seconds: float = 5.0,
        max_announced: int = 100_000,
    ) -> None:
        self.engine = engine
        self.sees_other_processes = is_postgresql(engine)
        self.heartbeat_seconds = heartbeat_seconds
        self.stale_after_seconds = stale_after_seconds
        self.poll_seconds = poll_seconds
        self.min_backoff_seconds = min_backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.max_announced = max_announced
        self._lock = threading.Lock()
        self._callbacks: list[Callback] = []
        self._announced: dict[str, int] = {}
        self._generation = 0
        # SQLite: every writer of the database is in this process (decision W8), and the
        # in-process publication cannot lose anything; PostgreSQL: only while listening.
        self._listening = not self.sees_other_processes
        self._alive_at = time.monotonic()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._listening_event = threading.Event()
        self.backend_pid: int | None = None  # the listening connection's server process
        self.connections = 0  # successful (re)connections, for tests and operators
        _HUB.join(database_key(engine), self)

    # -- what consumers read -----------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def healthy(self) -> bool:
        """Listening, and the connection was proven alive within ``stale_after_seconds``
        (always True on SQLite)."""
        if not self.sees_other_processes:
            return True
        return self._listening and time.monotonic() - self._alive_at < self.stale_after_seconds

    def mark(self) -> tuple[int, bool]:
        """``(generation, healthy)``, read together."""
        with self._lock:
            return self._generation, self.healthy

    def announced_version(self, mission_id: str) -> int:
        """The highest version announced for ``mission_id`` since the generation last moved
        (0 if none)."""
        return self._announced.get(mission_id, 0)

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Call ``callback(mission_id, version)`` for every newer version; returns the
        function that unsubscribes. Callbacks run on the thread that received the
        announcement (the committing request's, or the listener's): keep them short; an
        exception is logged and does not stop the others."""
        with self._lock:
            self._callbacks = [*self._callbacks, callback]

        def unsubscribe() -> None:
            with self._lock:
                self._callbacks = [c for c in self._callbacks if c is not callback]

        return unsubscribe

    # -- receiving ---------------------------------------------------------------------------

    def deliver(self, mission_id: str, version: int) -> None:
        """Record one announcement and tell the subscribers if it is news."""
        with self._lock:
            if self._announced.get(mission_id, 0) >= version:
                return  # already known (the writer's own process hears it twice)
            if mission_id not in self._announced and len(self._announced) >= self.max_announced:
                # Forgetting versions could let an older cache entry pass: nobody may trust
                # what was filled before.
                self._announced.clear()
                self._generation += 1
            self._announced[mission_id] = version
            callbacks = self._callbacks
        for callback in callbacks:
            try:
                callback(mission_id, version)
            except Exception:
                log.exception("change_feed_callback_failed", mission_id=mission_id)

    def invalidate(self) -> None:
        """Move the generation: nothing filled before may be trusted any more."""
        with self._lock:
            self._generation += 1

    def _receive(self, payload: str) -> None:
        parsed = parse_payload(payload)
        if parsed is None:
            # Someone else speaks on the channel: what it meant is unknown, so trust nothing.
            log.warning("change_feed_unreadable_payload", length=len(payload))
            self.invalidate()
            return
        self.deliver(*parsed)

    # -- the PostgreSQL listener ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start listening (PostgreSQL; nothing to do on SQLite). Idempotent."""
        if not self.sees_other_processes or self.running:
            return
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._listen, args=(self._stopping,), name="missionbound-change-feed",
            daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and close the connection (waits up to ``timeout`` seconds)."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def wait_listening(self, timeout: float) -> bool:
        """Wait until the listener is connected (True) or ``timeout`` passes (False)."""
        if not self.sees_other_processes:
            return True
        return self._listening_event.wait(timeout)

    def _connect(self) -> Any:
        import psycopg  # only PostgreSQL deployments need the driver

        args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
        return psycopg.connect(*args, **{**kwargs, **_LISTENER_CONNECT_ARGS}, autocommit=True)

    def _listen(self, stopping: threading.Event) -> None:
        backoff = self.min_backoff_seconds
        while not stopping.is_set():
            try:
                connection = self._connect()
            except Exception as exc:
                log.warning("change_feed_connect_failed", error=type(exc).__name__,
                            detail=_first_line(exc), retry_in_s=round(backoff, 3))
                stopping.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_seconds)
                continue
            try:
                with connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    self._listening_since(connection.info.backend_pid)
                    backoff = self.min_backoff_seconds
                    self._serve(connection, stopping)
            except Exception as exc:
                log.warning("change_feed_lost", error=type(exc).__name__,
                            detail=_first_line(exc), retry_in_s=round(backoff, 3))
            finally:
                self._not_listening()
            stopping.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff_seconds)

    def _serve(self, connection: Any, stopping: threading.Event) -> None:
        pinged = time.monotonic()
        while not stopping.is_set():
            for notification in connection.notifies(timeout=self.poll_seconds):
                self._receive(notification.payload)
            if time.monotonic() - pinged >= self.heartbeat_seconds:
                # Notifications that arrive meanwhile wait in psycopg's backlog for the
                # next notifies() call.
                connection.execute("SELECT 1")
                pinged = time.monotonic()
                self._alive()

    def _listening_since(self, backend_pid: int) -> None:
        with self._lock:
            # Announcements committed while nobody listened are lost: a new generation.
            self._generation += 1
            self._announced.clear()
            self._alive_at = time.monotonic()
            self._listening = True
            self.backend_pid = backend_pid
            self.connections += 1
        self._listening_event.set()
        log.info("change_feed_listening", channel=CHANNEL)

    def _alive(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._alive_at >= self.stale_after_seconds:
                # It was not vouched for a while (a stalled thread): start over.
                self._generation += 1
            self._alive_at = now

    def _not_listening(self) -> None:
        with self._lock:
            self._listening = False
            self._generation += 1
            self.backend_pid = None
        self._listening_event.clear()


def _first_line(exc: BaseException) -> str:
    """The first line of a driver message (never the conninfo, SQL or DETAIL), bounded."""
    text_ = str(exc).strip().splitlines()
    return text_[0][:300] if text_ else ""


__all__ = [
    "CHANNEL",
    "ChangeFeed",
    "announce",
    "database_key",
    "parse_payload",
    "payload_of",
]
