"""The Mission state cache of one serving process (``app.state.mission_cache``), for
introspection (docs/scale-out.md).

It keeps the :class:`~missionbound.mission.record.MissionRecord` introspection reads (state,
version, ``mission_expiry``, ``created_at``, origin, subject, anchors, Authority Set), by
Mission id, and answers from it only when it can vouch the entry is current. A hit is
trusted only if **all** of these hold; otherwise the database is read:

1. the cache is on (``mission_cache_max_age_seconds`` > 0);
2. the change feed (:mod:`missionbound.store.change_feed`) is healthy;
3. the entry was filled in the feed's current generation (no announcement can have been
   lost since: every reconnection, lost connection, stall or overflow moves it);
4. the entry's version is at least the highest version announced for that Mission;
5. the entry is younger than ``mission_cache_max_age_seconds`` (a safety net for writers
   that announce nothing: an operator's SQL, a process that crashed between commit and
   announcing cannot, since PostgreSQL delivers at commit);
6. where the feed does not see other processes (SQLite: the CLI next to ``serve`` writes
   without the serving process hearing of it), the database confirms the entry's version
   (one indexed integer, read in the request's own transaction).

The caller still applies the clock first: a cached ``active`` Mission past
``mission_expiry`` is effectively ``expired`` (the record carries its times). The
derivation gate (code redemption, refresh, token exchange) never uses this cache: it locks
the Mission row and reads the truth in the transaction that issues.

**The fill race.** A reader R fills an entry while a writer W commits version v+1 of the
same Mission. R reads the feed's ``(generation, healthy)`` first (t0), then the database
(t1: it sees v or v+1), then stores the entry (t2); the announcement of v+1 reaches this
process at tn, after W's commit.

* tn before t0 ("notification before the fill"): R's read normally sees v+1. It may still
  see v: a SQLite read transaction keeps the snapshot of its first statement (introspection
  read the token's row before the Mission's), and a PostgreSQL announcement could in
  principle be seen before the commit is visible to another session. Then the entry (v)
  is below the announced version (v+1): it is not stored, and would never be trusted.
* t0 < tn < t2 ("notification during the fill"): R saw v or v+1. With v, the announced
  v+1 is already recorded when R stores or looks up the entry: never trusted. With v+1: it
  is current.
* tn after t2 ("notification after the fill"): the entry holds v; from tn on it is below
  the announced version and never trusted again (it is also evicted). Between W's commit
  and tn the entry answers v: the notification's delay, the same as for a read that began
  just before the commit. That delay is what docs/scale-out.md measures.
* The announcement is lost (the listener's connection dropped): the listener notices,
  stops being healthy and moves the generation when it reconnects, so every entry filled
  before is refused. A listener that cannot notice (stalled thread, dead network path
  without a reset) stops being healthy once its last proof of life is older than the
  feed's ``stale_after_seconds``.

Hence the two rules the code follows. The announced version is *recorded* (highest per
Mission) and compared at every lookup, instead of deleting the entry when the notification
arrives: a delete that comes between R's read and R's store deletes nothing, and the stale
entry R then stores would be trusted until it aged out. And the generation is read *before*
the database: read after, a reconnection between R's read and its store would tag an entry
of unknown freshness with the new generation.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from missionbound.mission.record import MissionRecord
from missionbound.store.change_feed import ChangeFeed

DEFAULT_MAX_ENTRIES = 10_000

Loader = Callable[[], MissionRecord | None]
Confirmer = Callable[[], int | None]


@dataclass(frozen=True)
class _Entry:
    record: MissionRecord
    generation: int
    filled_at: float  # monotonic, taken before the database was read


class MissionStateCache:
    """Mission records by id, trusted only as the module docstring says.

    ``max_age_seconds`` 0 turns it off (every lookup reads the database). At most
    ``max_entries`` Missions are kept; the oldest fill goes first."""

    def __init__(
        self,
        feed: ChangeFeed,
        *,
        max_age_seconds: float,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.feed = feed
        self.max_age_seconds = max_age_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self.hits = 0
        # Why lookups went to the database: cold, unhealthy, generation, announced, aged,
        # unconfirmed.
        self.misses: Counter[str] = Counter()
        self._unsubscribe = feed.subscribe(self._announced)

    @property
    def enabled(self) -> bool:
        return self.max_age_seconds > 0

    def get(
        self, mission_id: str, load: Loader, confirm: Confirmer | None = None
    ) -> MissionRecord | None:
        """The Mission's record: from the cache when it can be trusted, else ``load()``
        (which reads the database and may raise; nothing is kept then).

        ``confirm()`` returns the stored version of the Mission (None if there is none); it
        is called, and must agree, for a hit when the feed does not see other processes.
        Without it such a cache never hits."""
        if not self.enabled:
            return load()
        generation, healthy = self.feed.mark()
        started = self._clock()
        entry = self._entries.get(mission_id)
        reason = "cold" if entry is None else self._distrust(
            entry, mission_id, generation, healthy, started)
        if reason is None:
            assert entry is not None
            if self.feed.sees_other_processes:
                return self._hit(entry)
            if confirm is not None and confirm() == entry.record.version:
                return self._hit(entry)
            reason = "unconfirmed"
        with self._lock:
            self.misses[reason] += 1
        record = load()
        if record is not None and healthy:
            self._keep(mission_id, _Entry(record, generation, started))
        return record

    def _distrust(self, entry: _Entry, mission_id: str, generation: int, healthy: bool,
                  now: float) -> str | None:
        """Why ``entry`` may not be used now, or None when it may."""
        if not healthy:
            return "unhealthy"
        if entry.generation != generation:
            return "generation"
        if entry.record.version < self.feed.announced_version(mission_id):
            return "announced"
        if now - entry.filled_at >= self.max_age_seconds:
            return "aged"
        return None

    def _hit(self, entry: _Entry) -> MissionRecord:
        with self._lock:
            self.hits += 1
        return entry.record

    def _keep(self, mission_id: str, entry: _Entry) -> None:
        with self._lock:
            if entry.record.version < self.feed.announced_version(mission_id):
                return  # already superseded (the notification came during the read)
            current = self._entries.pop(mission_id, None)
            if current is not None and (current.generation, current.record.version) > (
                    entry.generation, entry.record.version):
                self._entries[mission_id] = current  # a concurrent fill found newer
                return
            if len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[mission_id] = entry

    def _announced(self, mission_id: str, version: int) -> None:
        # Memory hygiene only: lookups compare with the announced version anyway.
        with self._lock:
            entry = self._entries.get(mission_id)
            if entry is not None and entry.record.version < version:
                del self._entries[mission_id]

    def peek(self, mission_id: str) -> MissionRecord | None:
        """The record held for ``mission_id``, trusted or not (for tests and operators)."""
        entry = self._entries.get(mission_id)
        return None if entry is None else entry.record

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        """Stop hearing the feed (the app is shutting down)."""
        self._unsubscribe()
        self.clear()


__all__ = ["MissionStateCache"]
