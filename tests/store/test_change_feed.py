"""Mission change announcements (store/change_feed.py) and the Mission state cache
(store/mission_cache.py), on a real SQLite file and a real PostgreSQL schema.

What is proven here:

* every committed lifecycle event (creation, approval, suspend, resume, revoke, expiry) is
  announced once, with its version, and a rolled-back one never; on PostgreSQL another
  process hears it through LISTEN/NOTIFY, only at commit;
* the listener reconnects after its connection is killed, and moves the generation whenever
  it cannot vouch it heard everything (reconnection, an unreadable payload, a stall, an
  overflow of the announced versions);
* the cache's fill race, in every order (notification before, during and after the fill);
* a lost notification never makes the cache answer a revoked Mission as active;
* introspection answers from the cache, sees a revocation at once (this process, another
  process through the CLI), and a lifecycle change wakes the Shared Signals dispatcher.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from missionbound.issuer.introspection import read_mission
from missionbound.mission.lifecycle import Event, Role, State
from missionbound.mission.record import MissionRecord
from missionbound.store.change_feed import (
    CHANNEL,
    ChangeFeed,
    database_key,
    parse_payload,
    payload_of,
)
from missionbound.store.engine import create_engine_for, is_postgresql
from missionbound.store.lifecycle import expire_due, transition
from missionbound.store.mission_cache import MissionStateCache
from missionbound.store.transactions import Store
from tests.conftest import TEST_POOL
from tests.e2e_support import server_environment
from tests.issuer.flow import ISSUER, build_flow

WAIT = 10.0  # every wait below is bounded by this
RS = ("demo-rs", "demo-rs-secret")
ADMIN = {"role": "admin", "sub": "bob"}


def wait_for(condition: Callable[[], Any], timeout: float = WAIT, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.005)


def settled(read: Callable[[], int], quiet: float = 0.5) -> int:
    """``read()`` once it has not changed for ``quiet`` seconds (bounded by WAIT)."""
    deadline = time.monotonic() + WAIT
    value, since = read(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "never settled"
        time.sleep(0.02)
        if (current := read()) != value:
            value, since = current, time.monotonic()
    return value


def now_s() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def live(active_mission: Callable[..., MissionRecord]) -> Callable[[], MissionRecord]:
    """An active Mission that is valid by the wall clock (approved a minute ago)."""
    return lambda: active_mission(created_at=now_s() - timedelta(minutes=2))


def change(store: Store, mission_id: str, event: Event) -> MissionRecord:
    with store.begin() as session:
        result = transition(session, mission_id, event, roles={Role.ADMIN}, actor=ADMIN,
                            reason="test", now=now_s())
    return result.record


@pytest.fixture
def feed(engine: Engine) -> Iterator[ChangeFeed]:
    """This process's feed on the test database, listening (PostgreSQL)."""
    feed = ChangeFeed(engine)
    feed.start()
    assert feed.wait_listening(WAIT)
    try:
        yield feed
    finally:
        feed.stop()


@pytest.fixture
def other_engine(database_url: str) -> Iterator[Engine]:
    """The same database as another process sees it: on PostgreSQL a URL this process's
    in-process publication does not know (another ``application_name``), so only
    LISTEN/NOTIFY can connect the two."""
    url = database_url
    if url.startswith("postgresql"):
        url = make_url(url).update_query_dict(
            {"application_name": "other-replica"}).render_as_string(hide_password=False)
    engine = create_engine_for(url, **TEST_POOL)
    try:
        yield engine
    finally:
        engine.dispose()


def recorder(feed: ChangeFeed) -> list[tuple[str, int]]:
    heard: list[tuple[str, int]] = []
    feed.subscribe(lambda mission_id, version: heard.append((mission_id, version)))
    return heard


def lookup(store: Store, cache: MissionStateCache, mission_id: str) -> MissionRecord:
    """The Mission as introspection reads it, through ``cache``."""
    with store.begin_read() as session:
        record = read_mission(session, mission_id, cache)
    assert record is not None
    return record


# -- payloads ------------------------------------------------------------------------------


def test_payloads_are_mission_id_colon_version() -> None:
    assert payload_of("msn_abc", 7) == "msn_abc:7"
    assert parse_payload("msn_abc:7") == ("msn_abc", 7)
    for bad in ("", "msn_abc", "msn_abc:", ":3", "msn_abc:x", "msn_abc:-1", "msn_abc:٣"):
        assert parse_payload(bad) is None, bad


# -- announcing ------------------------------------------------------------------------------


def test_every_committed_lifecycle_event_is_announced_once(
    store: Store, feed: ChangeFeed, create_mission: Callable[..., MissionRecord],
    active_mission: Callable[..., MissionRecord],
) -> None:
    heard = recorder(feed)
    start = now_s() - timedelta(minutes=2)
    mission = active_mission(created_at=start)  # creation (1) and approval (2)
    change(store, mission.mission_id, Event.SUSPEND)  # 3
    change(store, mission.mission_id, Event.SUSPEND)  # an idempotent repeat: nothing
    change(store, mission.mission_id, Event.RESUME)  # 4
    with store.begin() as session:  # the clock's expiry: 5
        assert expire_due(session, mission.mission_expiry + timedelta(seconds=1)) >= 1
    ours = [entry for entry in heard if entry[0] == mission.mission_id]
    # In-process publication runs at commit, before the writer's call returns.
    assert ours == [(mission.mission_id, v) for v in (1, 2, 3, 4, 5)]
    assert feed.announced_version(mission.mission_id) == 5
    pending = create_mission(created_at=start)
    assert feed.announced_version(pending.mission_id) == 1


def test_a_rolled_back_transition_is_never_announced(
    store: Store, feed: ChangeFeed, live: Callable[[], MissionRecord]
) -> None:
    mission = live()
    heard = recorder(feed)
    with pytest.raises(RuntimeError), store.begin() as session:
        transition(session, mission.mission_id, Event.REVOKE, roles={Role.ADMIN},
                   actor=ADMIN, reason="test", now=now_s())
        raise RuntimeError("the caller fails after the transition")
    assert heard == [] and feed.announced_version(mission.mission_id) == 2
    assert lookup(store, MissionStateCache(feed, max_age_seconds=0),
                  mission.mission_id).state is State.ACTIVE


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_another_process_hears_of_a_change_at_commit_only(
    store: Store, other_engine: Engine, live: Callable[[], MissionRecord]
) -> None:
    other = ChangeFeed(other_engine)
    assert database_key(other_engine) != database_key(store.engine)
    other.start()
    try:
        assert other.wait_listening(WAIT)
        heard = recorder(other)
        rolled_back, committed = live(), live()
        with pytest.raises(RuntimeError), store.begin() as session:
            transition(session, rolled_back.mission_id, Event.REVOKE, roles={Role.ADMIN},
                       actor=ADMIN, reason="test", now=now_s())
            raise RuntimeError("rolled back")
        with store.begin() as session:
            transition(session, committed.mission_id, Event.REVOKE, roles={Role.ADMIN},
                       actor=ADMIN, reason="test", now=now_s())
            time.sleep(0.3)  # not committed yet: nothing may arrive
            assert (committed.mission_id, 3) not in heard
        wait_for(lambda: (committed.mission_id, 3) in heard, what="the NOTIFY")
        # Delivered in commit order: a notification of the rollback would have come first.
        assert [v for m, v in heard if m == rolled_back.mission_id] == [1, 2]
    finally:
        other.stop()


# -- the listener ------------------------------------------------------------------------------


def terminate(engine: Engine, backend_pid: int | None) -> None:
    assert backend_pid is not None
    with engine.begin() as connection:
        assert connection.execute(text("SELECT pg_terminate_backend(:pid)"),
                                  {"pid": backend_pid}).scalar() is True


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_listener_reconnects_in_a_new_generation(
    store: Store, other_engine: Engine, live: Callable[[], MissionRecord]
) -> None:
    feed = ChangeFeed(other_engine)
    feed.start()
    try:
        assert feed.wait_listening(WAIT) and feed.healthy
        generation = feed.generation
        terminate(store.engine, feed.backend_pid)
        wait_for(lambda: feed.connections == 2 and feed.healthy, what="the reconnection")
        # Lost (+1) and listening again (+1): entries of before are never trusted.
        assert feed.generation >= generation + 2
        heard = recorder(feed)
        mission = live()
        wait_for(lambda: (mission.mission_id, 2) in heard, what="the approval's NOTIFY")
    finally:
        feed.stop()
    assert not feed.running and not feed.healthy


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_an_unreadable_payload_moves_the_generation(store: Store, feed: ChangeFeed) -> None:
    generation = feed.generation
    with store.engine.begin() as connection:
        connection.execute(text("SELECT pg_notify(:c, 'not a payload')"), {"c": CHANNEL})
    wait_for(lambda: feed.generation > generation, what="the generation to move")


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_listener_without_proof_of_life_is_not_trusted(engine: Engine) -> None:
    # Pings every second, but distrusted after 0.4 s without one: it goes unhealthy between
    # two pings, and the next ping starts a new generation.
    feed = ChangeFeed(engine, heartbeat_seconds=1.0, stale_after_seconds=0.4)
    feed.start()
    try:
        assert feed.wait_listening(WAIT)
        generation = feed.generation
        wait_for(lambda: not feed.healthy, what="the feed to go stale")
        wait_for(lambda: feed.healthy, what="the next proof of life")
        assert feed.generation >= generation + 1
    finally:
        feed.stop()


def test_an_overflow_of_announced_versions_moves_the_generation(engine: Engine) -> None:
    feed = ChangeFeed(engine, max_announced=2)
    generation = feed.generation
    feed.deliver("msn_a", 1)
    feed.deliver("msn_b", 1)
    feed.deliver("msn_a", 2)  # known Mission: no overflow
    assert feed.generation == generation
    feed.deliver("msn_c", 1)
    assert feed.generation == generation + 1
    assert feed.announced_version("msn_a") == 0 and feed.announced_version("msn_c") == 1


def test_an_unstarted_postgresql_feed_is_never_healthy(engine: Engine) -> None:
    feed = ChangeFeed(engine)
    assert feed.healthy is (not is_postgresql(engine))
    assert feed.sees_other_processes is is_postgresql(engine)


# -- the cache -----------------------------------------------------------------------------------


@pytest.fixture
def cache(feed: ChangeFeed) -> Iterator[MissionStateCache]:
    cache = MissionStateCache(feed, max_age_seconds=3600)
    try:
        yield cache
    finally:
        cache.close()


def test_a_warm_entry_answers_and_a_change_is_seen_at_once(
    store: Store, cache: MissionStateCache, live: Callable[[], MissionRecord]
) -> None:
    mission = live()
    assert lookup(store, cache, mission.mission_id).state is State.ACTIVE
    assert (cache.hits, cache.misses["cold"]) == (0, 1)
    assert lookup(store, cache, mission.mission_id).state is State.ACTIVE
    assert cache.hits == 1
    change(store, mission.mission_id, Event.REVOKE)
    # Announced in process at commit: the very next lookup reads the database.
    revoked = lookup(store, cache, mission.mission_id)
    assert (revoked.state, revoked.version) == (State.REVOKED, 3)
    assert lookup(store, cache, mission.mission_id).state is State.REVOKED
    assert cache.hits == 2


def _load(store: Store, mission_id: str) -> MissionRecord:
    with store.begin_read() as session:
        record = read_mission(session, mission_id)
    assert record is not None
    return record


def _confirm(store: Store, mission_id: str) -> Callable[[], int | None]:
    return lambda: _load(store, mission_id).version


def test_fill_race_notification_before_the_fill(
    store: Store, cache: MissionStateCache, feed: ChangeFeed,
    live: Callable[[], MissionRecord],
) -> None:
    """The announcement of v3 is recorded, then a read returns v2 (a snapshot taken before
    the commit): it is answered, never kept, so the next lookup reads again."""
    mission = live()
    old = _load(store, mission.mission_id)
    change(store, mission.mission_id, Event.REVOKE)
    assert feed.announced_version(mission.mission_id) == 3
    assert cache.get(mission.mission_id, lambda: old, _confirm(store, mission.mission_id)) is old
    assert cache.peek(mission.mission_id) is None
    assert lookup(store, cache, mission.mission_id).state is State.REVOKED
    assert cache.hits == 0


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_fill_race_a_sqlite_snapshot_older_than_the_announcement(
    store: Store, cache: MissionStateCache, live: Callable[[], MissionRecord]
) -> None:
    """The real case on SQLite: introspection's read transaction began (its first read)
    before the revoke committed, and looks the Mission up after the announcement."""
    mission = live()
    with store.begin_read() as session:
        session.execute(text("SELECT count(*) FROM missions")).scalar()  # the snapshot
        change(store, mission.mission_id, Event.REVOKE)
        seen = read_mission(session, mission.mission_id, cache)
        assert seen is not None and seen.state is State.ACTIVE  # what its snapshot holds
    assert cache.peek(mission.mission_id) is None
    assert lookup(store, cache, mission.mission_id).state is State.REVOKED


def test_fill_race_notification_during_the_fill(
    store: Store, cache: MissionStateCache, feed: ChangeFeed,
    live: Callable[[], MissionRecord],
) -> None:
    """The read returns v2; v3 commits and is announced before the entry is stored."""
    mission = live()

    def load_then_revoke() -> MissionRecord:
        record = _load(store, mission.mission_id)
        change(store, mission.mission_id, Event.REVOKE)  # announced here, at commit
        return record

    got = cache.get(mission.mission_id, load_then_revoke, _confirm(store, mission.mission_id))
    assert got is not None and got.state is State.ACTIVE
    assert cache.peek(mission.mission_id) is None
    assert lookup(store, cache, mission.mission_id).state is State.REVOKED


def test_fill_race_notification_after_the_fill(
    store: Store, cache: MissionStateCache, feed: ChangeFeed,
    live: Callable[[], MissionRecord],
) -> None:
    """The entry (v2) is stored; the announcement of v3 arrives later: v2 is never
    answered again, whether or not the entry was evicted."""
    mission = live()
    assert lookup(store, cache, mission.mission_id).version == 2
    with store.begin() as session:  # committed without this process hearing of it yet
        session.execute(text("UPDATE missions SET state = 'revoked', version = 3 "
                             "WHERE mission_id = :m"), {"m": mission.mission_id})
    feed.deliver(mission.mission_id, 3)  # ... and now the notification arrives
    assert lookup(store, cache, mission.mission_id).state is State.REVOKED
    # Not evicted (subscribers off): the version comparison alone refuses it.
    kept = MissionStateCache(feed, max_age_seconds=3600)
    kept.close()  # unsubscribed: no eviction on announcements
    stale = _load(store, mission.mission_id)
    with store.begin() as session:
        session.execute(text("UPDATE missions SET state = 'active', version = 4 "
                             "WHERE mission_id = :m"), {"m": mission.mission_id})
    assert kept.get(mission.mission_id, lambda: stale) is stale  # kept: v3 >= announced 3
    feed.deliver(mission.mission_id, 4)
    fresh = kept.get(mission.mission_id, lambda: _load(store, mission.mission_id),
                     _confirm(store, mission.mission_id))
    assert fresh is not None and fresh.version == 4
    assert kept.misses["announced"] == 1


def test_an_entry_of_another_generation_is_not_trusted(
    store: Store, cache: MissionStateCache, feed: ChangeFeed,
    live: Callable[[], MissionRecord],
) -> None:
    mission = live()
    lookup(store, cache, mission.mission_id)
    feed.invalidate()
    lookup(store, cache, mission.mission_id)
    assert cache.misses["generation"] == 1 and cache.hits == 0
    lookup(store, cache, mission.mission_id)
    assert cache.hits == 1


def test_an_aged_entry_is_read_again_and_age_zero_turns_the_cache_off(
    store: Store, feed: ChangeFeed, live: Callable[[], MissionRecord]
) -> None:
    mission = live()
    clock = [100.0]
    cache = MissionStateCache(feed, max_age_seconds=5, clock=lambda: clock[0])
    lookup(store, cache, mission.mission_id)
    clock[0] += 4.9
    lookup(store, cache, mission.mission_id)
    assert cache.hits == 1
    clock[0] += 0.2
    lookup(store, cache, mission.mission_id)
    assert cache.misses["aged"] == 1
    off = MissionStateCache(feed, max_age_seconds=0)
    for _ in range(3):
        lookup(store, off, mission.mission_id)
    assert off.hits == 0 and len(off) == 0 and not off.enabled


def test_a_write_by_another_process_is_seen(
    store: Store, cache: MissionStateCache, database_url: str, tmp_path: Path,
    live: Callable[[], MissionRecord],
) -> None:
    """``missionbound mission revoke`` in another process: on PostgreSQL its NOTIFY reaches
    the listener; on SQLite nothing is announced to this process, and the hit is refused
    because the database's version differs (no waiting for the entry to age)."""
    mission = live()
    lookup(store, cache, mission.mission_id)
    assert lookup(store, cache, mission.mission_id).state is State.ACTIVE
    done = subprocess.run(
        [sys.executable, "-m", "missionbound", "mission", "revoke", mission.mission_id,
         "--reason", "from the CLI", "--database-url", database_url],
        env=server_environment(tmp_path / "cli"), capture_output=True, text=True,
        timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    if is_postgresql(store.engine):
        wait_for(lambda: cache.feed.announced_version(mission.mission_id) == 3,
                 what="the CLI's NOTIFY")
    assert lookup(store, cache, mission.mission_id).state is State.REVOKED
    if not is_postgresql(store.engine):
        assert cache.misses["unconfirmed"] == 1


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_lost_notification_never_fails_open(
    store: Store, other_engine: Engine, live: Callable[[], MissionRecord]
) -> None:
    """The reader's listener is killed; the revoke commits while nobody listens (its NOTIFY
    is lost to the reader). No answer after the commit is "active": not while the listener
    is away (the feed is unhealthy), and not after it is back (new generation), although
    the stale entry is still in the cache and would pass every other check (max age one
    hour)."""
    reader_store = Store(other_engine)
    feed = ChangeFeed(other_engine, min_backoff_seconds=2.0)  # stays away for 2 s
    cache = MissionStateCache(feed, max_age_seconds=3600)
    feed.start()
    try:
        assert feed.wait_listening(WAIT)
        mission = live()
        wait_for(lambda: feed.announced_version(mission.mission_id) == 2, what="approval")
        lookup(reader_store, cache, mission.mission_id)
        assert lookup(reader_store, cache, mission.mission_id).state is State.ACTIVE
        assert cache.hits == 1
        terminate(store.engine, feed.backend_pid)
        wait_for(lambda: not feed.healthy, what="the listener to notice")
        change(store, mission.mission_id, Event.REVOKE)  # heard by nobody in the reader
        assert lookup(reader_store, cache, mission.mission_id).state is State.REVOKED
        assert cache.misses["unhealthy"] >= 1
        stale = cache.peek(mission.mission_id)
        assert stale is not None and stale.state is State.ACTIVE  # still there
        wait_for(lambda: feed.healthy, what="the reconnection")
        assert feed.announced_version(mission.mission_id) == 0  # the NOTIFY was lost
        assert lookup(reader_store, cache, mission.mission_id).state is State.REVOKED
        assert cache.misses["generation"] == 1
    finally:
        cache.close()
        feed.stop()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_revoke_racing_the_loss_of_the_listener_is_never_answered_active_for_long(
    store: Store, other_engine: Engine, live: Callable[[], MissionRecord]
) -> None:
    """The listener is killed and the revoke commits at once, before the listener may have
    noticed: the reader converges to revoked within the detection delay, and never goes
    back to active."""
    reader_store = Store(other_engine)
    feed = ChangeFeed(other_engine)
    cache = MissionStateCache(feed, max_age_seconds=3600)
    feed.start()
    try:
        assert feed.wait_listening(WAIT)
        mission = live()
        lookup(reader_store, cache, mission.mission_id)
        terminate(store.engine, feed.backend_pid)
        change(store, mission.mission_id, Event.REVOKE)
        wait_for(lambda: lookup(reader_store, cache, mission.mission_id).state
                 is State.REVOKED, timeout=5.0, what="revoked")
        wait_for(lambda: feed.connections == 2 and feed.healthy, what="the reconnection")
        for _ in range(20):
            assert lookup(reader_store, cache, mission.mission_id).state is State.REVOKED
    finally:
        cache.close()
        feed.stop()


# -- the app -------------------------------------------------------------------------------


def test_introspection_answers_from_the_cache_and_the_dispatcher_wakes(
    database_url: str, tmp_path: Path
) -> None:
    """The serving app: introspection fills and uses the cache (the lifespan started the
    feed), a revocation is seen by the next introspection, and each change wakes the Shared
    Signals dispatcher at once (its own period here is a minute)."""
    flow = build_flow(database_url, tmp_path / "data", signals_delivery_seconds=60)
    try:
        with TestClient(flow.app, base_url=ISSUER) as client:
            feed: ChangeFeed = flow.app.state.change_feed
            cache: MissionStateCache = flow.app.state.mission_cache
            dispatcher = flow.app.state.signal_dispatcher
            assert flow.issuer.mission_cache is cache
            assert feed.wait_listening(WAIT)
            grant = flow.grant()

            def introspect() -> dict[str, Any]:
                response = client.post("/introspect", data={"token": grant.access_token},
                                       auth=RS)
                assert response.status_code == 200, response.text
                body: dict[str, Any] = response.json()
                return body

            assert introspect()["active"] is True
            hits = cache.hits
            assert introspect()["active"] is True
            assert cache.hits == hits + 1
            rounds = settled(lambda: dispatcher.rounds)  # the grant's own wake-ups done
            change(flow.store, grant.mission_id, Event.REVOKE)
            body = introspect()
            assert body == {"active": False, "mission": {**body["mission"], "state": "revoked"}}
            wait_for(lambda: dispatcher.rounds > rounds, timeout=5.0,
                     what="the dispatcher to wake")
        assert not feed.running
    finally:
        flow.client.close()
        flow.engine.dispose()
