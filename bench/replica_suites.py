"""The `replicas` suite: how fast another replica learns that a Mission was revoked, on
PostgreSQL (docs/scale-out.md; issue 4 budget: 100 ms). Skipped, saying why, when no
PostgreSQL answers. On SQLite there is one serving process (decision W8) and the
announcement is published in process when the revoke commits, so there is nothing to time.

* `replicas.pg.notify commit->other feed`: in this process, a writer (a Store, as any
  replica or the CLI has) revokes an active Mission; a ChangeFeed on its own connection,
  keyed as another process (so only LISTEN/NOTIFY connects them), waits for the
  announcement. Timed from just before COMMIT to the listener's callback, which is the
  moment the other replica's Mission cache stops trusting its entry (the callback runs on
  the listener thread; lookups compare with the announced version). Includes the commit
  itself (fsync); the detail line gives the commit's own p50.
* `replicas.pg.revoke seen by B (serve x2)`: two real `missionbound serve` processes, A and
  B, on one database. Missions are issued through A (PAR, consent, token with DPoP); B
  introspects each access token twice (its cache is warm), then is polled in a tight loop
  (one keep-alive connection) while this process commits the revoke. Timed from just before
  COMMIT to the receipt of B's first `active: false` answer: an upper bound that includes up
  to one introspection round trip. The detail line counts `active: true` answers to
  requests sent after the commit returned (the lag a client could actually observe).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from issuance_suites import (
    RS_BASIC,
    SERVER_STOP_TIMEOUT,
    TimedBench,
    _wait_until_healthy,
    free_port,
    issue_many,
    latency_result,
)
from sqlalchemy.engine import make_url
from store_suites import (
    ADMIN,
    ADMIN_ACTOR,
    OP_NOW,
    fresh_database_url,
    mission_template,
    postgres_problem,
    seed_active_missions,
)
from suites import Bench

from missionbound.mission.lifecycle import Event
from missionbound.store.change_feed import ChangeFeed
from missionbound.store.engine import create_engine_for
from missionbound.store.lifecycle import transition
from missionbound.store.migrate import upgrade
from missionbound.store.transactions import Store

WAIT = 5.0  # longest wait for one announcement or one converged replica
SEEDED = 400  # Missions revoked by the in-process benchmark (one per sample)
SERVED_SAMPLES = 40  # Missions issued through A and revoked, one per sample
QUICK_SAMPLES = 10


class BenchFailure(RuntimeError):
    """Something a working deployment would never do (a revoke never seen)."""


def _other_process_url(url: str) -> str:
    """The same database under a URL this process's in-process publication does not know,
    so only NOTIFY reaches a feed built on it."""
    return make_url(url).update_query_dict({"application_name": "bench-replica"}) \
        .render_as_string(hide_password=False)


# -- in process: commit -> another feed ----------------------------------------------------


def notify_bench() -> Callable[[], contextlib.AbstractContextManager[
        Callable[[float], dict[str, Any]]]]:
    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[float], dict[str, Any]]]:
        with fresh_database_url("postgresql") as url:
            upgrade(url)
            store = Store(create_engine_for(url))
            ids = seed_active_missions(store, mission_template(), SEEDED)
            reader = create_engine_for(_other_process_url(url))
            feed = ChangeFeed(reader)
            heard: dict[tuple[str, int], float] = {}
            arrived = threading.Condition()

            def on_announcement(mission_id: str, version: int) -> None:
                stamp = time.perf_counter()
                with arrived:
                    heard[(mission_id, version)] = stamp
                    arrived.notify_all()

            feed.subscribe(on_announcement)
            feed.start()
            try:
                if not feed.wait_listening(WAIT):
                    raise BenchFailure("the change feed did not connect")
                remaining = iter(ids)

                def run(seconds: float) -> dict[str, Any]:
                    latencies, after_return, commits = [], [], []
                    deadline = time.perf_counter() + seconds
                    while time.perf_counter() < deadline or len(latencies) < 20:
                        mission_id = next(remaining, None)
                        if mission_id is None:
                            break
                        with store.begin() as session:
                            transition(session, mission_id, Event.REVOKE, roles=ADMIN,
                                       actor=ADMIN_ACTOR, reason="bench", now=OP_NOW)
                            before_commit = time.perf_counter()
                        returned = time.perf_counter()
                        with arrived:
                            if not arrived.wait_for(lambda m=mission_id: (m, 3) in heard,
                                                    timeout=WAIT):
                                raise BenchFailure(f"no announcement of {mission_id} in {WAIT} s")
                            stamp = heard[(mission_id, 3)]
                        latencies.append(stamp - before_commit)
                        after_return.append(stamp - returned)
                        commits.append(returned - before_commit)
                    return latency_result(
                        latencies, rate=len(latencies) / sum(latencies), cpu_s=None,
                        detail=f"{len(latencies)} revocations; COMMIT itself p50 "
                               f"{statistics.median(commits) * 1e3:.2f} ms; after the "
                               f"writer's commit returned p50 "
                               f"{statistics.median(after_return) * 1e3:.2f} ms, p95 "
                               f"{sorted(after_return)[int(len(after_return) * .95) - 1] * 1e3:.2f}"
                               f" ms")

                yield run
            finally:
                feed.stop()
                reader.dispose()
                store.dispose()

    return setup


# -- two real replicas ---------------------------------------------------------------------


@contextlib.contextmanager
def serving(url: str, issuer: str | None = None) -> Iterator[str]:
    """``missionbound serve`` on ``url``; yields its base URL (the issuer, unless given)."""
    with tempfile.TemporaryDirectory(prefix="mb-bench-replica-") as folder:
        base = f"http://127.0.0.1:{free_port()}"
        environment = {name: value for name, value in os.environ.items()
                       if not name.upper().startswith("MISSIONBOUND_")}
        environment["MISSIONBOUND_DATA_DIR"] = folder
        command = [sys.executable, "-m", "missionbound", "serve", "--host", "127.0.0.1",
                   "--port", base.rsplit(":", 1)[1], "--issuer", issuer or base,
                   "--database-url", url]
        stderr_path = Path(folder) / "stderr.log"
        with open(Path(folder) / "stdout.log", "wb") as out, open(stderr_path, "wb") as err:
            process = subprocess.Popen(command, env=environment, stdout=out, stderr=err,
                                       stdin=subprocess.DEVNULL)
        try:
            _wait_until_healthy(base, process, stderr_path)
            yield base
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=SERVER_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=SERVER_STOP_TIMEOUT)


def mission_of(access_token: str) -> str:
    payload = access_token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["mission"]["id"])


@dataclass
class Poll:
    """B's answers for one token: ``(sent, received, active)``, perf_counter seconds."""

    answers: list[tuple[float, float, bool]] = field(default_factory=list)
    error: BaseException | None = None


def introspect_once(connection: http.client.HTTPConnection, token: str) -> bool:
    connection.request("POST", "/introspect", urlencode({"token": token}), {
        "Content-Type": "application/x-www-form-urlencoded", "Authorization": RS_BASIC})
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise BenchFailure(f"introspect at B: HTTP {response.status}: {body[:300]!r}")
    return json.loads(body)["active"] is True


def poll_until_inactive(connection: http.client.HTTPConnection, token: str, poll: Poll,
                        started: threading.Event) -> None:
    try:
        deadline = time.perf_counter() + WAIT + 1
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            active = introspect_once(connection, token)
            poll.answers.append((sent, time.perf_counter(), active))
            started.set()
            if not active:
                return
    except BaseException as exc:
        poll.error = exc
    finally:
        started.set()


def served_bench() -> Callable[[], contextlib.AbstractContextManager[
        Callable[[float], dict[str, Any]]]]:
    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[float], dict[str, Any]]]:
        with fresh_database_url("postgresql") as url, serving(url) as a, \
                serving(url, issuer=a) as b, asyncio.Runner() as runner:

            async def seed() -> list[str]:
                async with httpx.AsyncClient(base_url=a, timeout=30) as client:
                    return [item.access_token
                            for item in await issue_many(client, a, SERVED_SAMPLES)]

            tokens = runner.run(seed())
            store = Store(create_engine_for(url))
            parts = urlsplit(b)
            connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1",
                                                    parts.port or 80, timeout=30)
            try:
                remaining = iter(tokens)

                def run(seconds: float) -> dict[str, Any]:
                    samples = SERVED_SAMPLES if seconds >= 1 else QUICK_SAMPLES
                    latencies: list[float] = []
                    stale_after_commit = 0
                    stale_latest = 0.0  # the latest such request, after the commit returned
                    for _ in range(samples):
                        token = next(remaining, None)
                        if token is None:
                            break
                        for _warm in range(2):  # B reads, then answers from its cache
                            if not introspect_once(connection, token):
                                raise BenchFailure("a fresh token is inactive at B")
                        poll, started = Poll(), threading.Event()
                        poller = threading.Thread(target=poll_until_inactive, daemon=True,
                                                  args=(connection, token, poll, started))
                        poller.start()
                        started.wait(WAIT)
                        time.sleep(0.005)
                        with store.begin() as session:
                            transition(session, mission_of(token), Event.REVOKE, roles=ADMIN,
                                       actor=ADMIN_ACTOR, reason="bench",
                                       now=datetime.now(UTC))
                            before_commit = time.perf_counter()
                        returned = time.perf_counter()
                        poller.join(WAIT + 5)
                        if poll.error is not None:
                            raise BenchFailure(f"polling B failed: {poll.error!r}")
                        if not poll.answers or poll.answers[-1][2]:
                            raise BenchFailure(f"B still answered active after {WAIT} s")
                        latencies.append(poll.answers[-1][1] - before_commit)
                        stale = [sent - returned for sent, _, active in poll.answers
                                 if active and sent > returned]
                        stale_after_commit += len(stale)
                        stale_latest = max([stale_latest, *stale])
                    round_trips = [received - sent for sent, received, _ in poll.answers]
                    return latency_result(
                        latencies, rate=len(latencies) / sum(latencies), cpu_s=None,
                        stale_answers_after_commit=stale_after_commit,
                        stale_latest_ms=stale_latest * 1e3,
                        detail=f"{len(latencies)} revocations; B answered active to "
                               f"{stale_after_commit} request(s) sent after a commit "
                               f"returned (the latest sent {stale_latest * 1e3:.2f} ms after "
                               f"it); one introspection at B ~"
                               f"{statistics.median(round_trips) * 1e3:.2f} ms")

                yield run
            finally:
                connection.close()
                store.dispose()

    return setup


def replica_benches() -> list[Bench]:
    problem = postgres_problem()
    if problem is not None:
        print(f"replicas: skipped: {problem}", flush=True)
        return []
    return [
        TimedBench("replicas.pg.notify commit->other feed", notify_bench(),
                   note="COMMIT of a revoke -> LISTEN callback of a feed on another "
                        "connection (in process); PostgreSQL fresh schema"),
        TimedBench("replicas.pg.revoke seen by B (serve x2)", served_bench(),
                   note="COMMIT of a revoke -> replica B's first active:false answer to a "
                        "tight introspection loop (upper bound); 2 real `missionbound serve` "
                        "on one PostgreSQL"),
    ]
