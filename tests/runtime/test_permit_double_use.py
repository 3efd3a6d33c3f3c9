"""Single use across replicas (PROFILE.md section 12, "Permits"; runtime-digest 4.4): two OS
processes, each a local tool runner on the same database (a SQLite file, a PostgreSQL
schema), present the same permits at the same moment. For every permit exactly one process
runs the tool and the other is refused ``permit_consumed`` with no side effect, and the
store holds one ``completed`` and one ``suppressed`` Execution Evidence record for it.

Each process builds its own engine, verifier (runtime.permits.verify_permit: the ``jti``
spent in ``single_use_ids``) and recorder (runtime.evidence.EvidenceLog); they start
each permit together on a barrier. The recorder is the PDP's execution intake: the loser's
``permit_consumed`` is a refused attempt and never releases the winner's permit, whichever
report arrives first. Side effects are lines appended to one file by the tool itself.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from missionbound.enforce.local import ExecutionSuppressed, LocalToolRunner
from missionbound.issuer.keys import ensure_signing_key
from missionbound.mission.record import MissionRecord
from missionbound.protocol.jose_segments import read_compact
from missionbound.store.engine import create_engine_for
from missionbound.store.transactions import Store
from tests.enforce.local_support import (
    TOOLS,
    WIRE,
    WIRE_ARGUMENTS,
    SideEffects,
    db_verifier,
    executions,
    mint,
    recorder,
)
from tests.store.factories import T0

NOW = T0 + timedelta(hours=1)
PERMITS = 12  # permits raced per test: each a fresh chance for both processes to win
TIMEOUT_SECONDS = 60


def race(database_url: str, effects_path: str, permits: list[str], barrier: Any,
         results: Any, name: str) -> None:
    """One replica: its own engine and runner; every permit once, in step with the other."""
    engine = create_engine_for(database_url, pool_size=2, max_overflow=2)
    try:
        store = Store(engine)
        runner = LocalToolRunner(TOOLS, db_verifier(store, NOW),
                                 recorder(store, T0, emitter_id=f"runner-{name}"),
                                 emitter_id=f"runner-{name}", clock=lambda: NOW)
        runner.register(WIRE, SideEffects(Path(effects_path)).tool(WIRE))
        for index, permit in enumerate(permits):
            # Both start each permit together: every permit is a race of its own.
            barrier.wait(timeout=TIMEOUT_SECONDS)
            try:
                runner.run(WIRE, dict(WIRE_ARGUMENTS), permit=permit)
                results.put((name, index, "completed"))
            except ExecutionSuppressed as refused:
                results.put((name, index, refused.error))
            except Exception as exc:  # reported, so the test fails saying what happened
                results.put((name, index, f"error: {type(exc).__name__}: {exc}"))
    finally:
        engine.dispose()


def test_two_processes_never_both_run_one_permit(
        store: Store, database_url: str, active_mission: Callable[..., MissionRecord],
        tmp_path: Path) -> None:
    mission = active_mission()
    ensure_signing_key(store, T0)
    permits = [mint(store, mission, now=NOW) for _ in range(PERMITS)]
    effects = tmp_path / "effects.log"
    effects.touch()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    processes = [context.Process(target=race, args=(database_url, str(effects), permits,
                                                    barrier, results, name))
                 for name in ("a", "b")]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=TIMEOUT_SECONDS) for _ in range(2 * PERMITS)]
    for process in processes:
        process.join(timeout=TIMEOUT_SECONDS)
        assert process.exitcode == 0, process.exitcode

    by_permit: dict[int, Counter[str]] = {}
    for _, index, outcome in outcomes:
        by_permit.setdefault(index, Counter())[outcome] += 1
    assert all(count == Counter({"completed": 1, "permit_consumed": 1})
               for count in by_permit.values()), by_permit
    # The tool ran once per permit, never twice.
    assert len(SideEffects(effects).lines()) == PERMITS
    for permit_index in range(PERMITS):
        records = executions(store, _jti(permits[permit_index]))
        assert sorted((r["outcome"], r.get("error")) for r in records) == [
            ("completed", None), ("suppressed", "permit_consumed")], records
    # Both processes won some races only if they really ran at the same time; not asserted
    # (a scheduler may serialize them), the exactly-once property is.


def _jti(permit: str) -> str:
    _, claims = read_compact(permit, "permit", ValueError, max_length=65536)
    return str(claims["jti"])

