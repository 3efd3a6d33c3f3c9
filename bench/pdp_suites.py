"""The `pdp` suite: the Mission PDP (runtime/pdp.py) for a permitted ``consequential_read``
(``invoices.read`` at the demo ERP), on SQLite (a temporary file) and PostgreSQL (a fresh
schema; skipped, saying why, when no server answers). DESIGN.md "Fast" budgets, on 2 cores:
PDP decision in-process p50 <= 60 us (decide() alone); AuthZEN HTTP evaluation >= 1,500/s.

* ``pdp.<db>.evaluate``: ``MissionPDP.evaluate(body, caller)`` called directly, in process:
  request parsing, the Mission read (cache or database), the compiled policy (cached per
  process), decide(), the signed Decision Evidence record, one write transaction. This is
  the service's own cost per decision; the HTTP stack is not in it.
* ``pdp.<db>.authzen uvicorn xN``: ``POST /access/v1/evaluation`` (HTTP Basic ``demo-rs``)
  against a real ``missionbound serve`` on 127.0.0.1, N client threads on keep-alive
  connections, the same body every time (one evaluation per request).

The Mission is issued the way an agent gets one: PAR -> consent (which compiles and stores
the policy artifact) -> token; the evaluation names it as a Resource Server would, from the
access token's ``mission`` claim.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
from issuance_suites import (
    CLIENT_THREADS,
    RS_BASIC,
    BenchFailure,
    Issued,
    Server,
    TimedBench,
    Worker,
    drive,
    in_process,
    issue_many,
    served,
)
from store_suites import postgres_problem
from suites import Bench

from missionbound.runtime.pdp import PepCaller

SUBJECT = "alice"
AGENT_ID = "demo-agent"


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (
        -len(payload) % 4)))
    return claims


def evaluation_body(issuer: str, issued: Issued) -> dict[str, Any]:
    """What the demo ERP (RS-D) would ask before ``GET /demo/erp/invoices/inv-acme-1``."""
    claims = _claims(issued.access_token)
    mission = claims["mission"]
    credential: dict[str, Any] = {
        "issuer": issuer,
        "expires_at": datetime.fromtimestamp(claims["exp"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if "cnf" in claims:
        credential["confirmation"] = claims["cnf"]
    return {
        "subject": {"type": "user", "id": SUBJECT, "properties": {"iss": issuer}},
        "resource": {"type": "invoice", "id": "inv-acme-1",
                     "properties": {"audience": f"{issuer}/demo/erp"}},
        "action": {"name": "invoices.read"},
        "context": {
            "mission": {"id": mission["id"], "issuer": mission["origin"],
                        "authority_hash": mission["authority_hash"]},
            "actor": {"client_id": AGENT_ID},
            "credential": credential,
        },
    }


def _check(answer: Any) -> None:
    if not isinstance(answer, dict) or answer.get("decision") is not True:
        raise BenchFailure(f"the PDP did not permit the read: {str(answer)[:300]}")


def evaluate_bench(backend: str) -> Callable[[], contextlib.AbstractContextManager[
        Callable[[], object]]]:
    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[], object]]:
        with in_process(backend) as here:
            issued = here.runner.run(issue_many(here.client, here.issuer, 1))[0]
            app = here.client._transport.app  # type: ignore[attr-defined]
            pdp = app.state.mission_pdp
            if pdp is None:
                raise BenchFailure("the app has no Mission PDP (app.state.mission_pdp)")
            body = evaluation_body(here.issuer, issued)
            caller = PepCaller(client_id="demo-rs",
                               audiences=frozenset({f"{here.issuer}/demo/erp"}))
            _check(pdp.evaluate(body, caller))

            def once() -> object:
                return pdp.evaluate(body, caller)

            yield once

    return setup


def authzen_worker(body: bytes) -> Worker:
    def send(connection: http.client.HTTPConnection) -> None:
        connection.request("POST", "/access/v1/evaluation", body, {
            "Content-Type": "application/json", "Authorization": RS_BASIC})
        response = connection.getresponse()
        answer = response.read()
        if response.status != 200:
            raise BenchFailure(f"evaluation: HTTP {response.status}: {answer[:300]!r}")
        _check(json.loads(answer))

    return Worker(send)


def authzen_bench(backend: str, threads: int, *, factor: float) -> Callable[
        [], contextlib.AbstractContextManager[Callable[[float], dict[str, Any]]]]:
    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[float], dict[str, Any]]]:
        with served(backend) as server, asyncio.Runner() as runner:
            body = _served_body(server, runner)

            def workers() -> list[Worker]:
                return [authzen_worker(body) for _ in range(threads)]

            drive(server, workers(), 0.3)  # warm up: connections, caches, the policy

            def run(seconds: float) -> dict[str, Any]:
                return drive(server, workers(), seconds * factor)

            yield run

    return setup


def _served_body(server: Server, runner: asyncio.Runner) -> bytes:
    async def seed() -> Issued:
        async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
            return (await issue_many(client, server.base, 1))[0]

    issued = runner.run(seed())
    return json.dumps(evaluation_body(server.base, issued)).encode()


def _benches(backend: str) -> list[Bench]:
    db = "sqlite" if backend == "sqlite" else "pg"
    where = "SQLite temp file" if backend == "sqlite" else "PostgreSQL fresh schema"
    benches: list[Bench] = [
        Bench(f"pdp.{db}.evaluate", evaluate_bench(backend), batch=50,
              note=f"MissionPDP.evaluate in process, consequential_read permit with its "
                   f"signed Decision Evidence, one write transaction; {where}"),
    ]
    benches += [
        TimedBench(f"pdp.{db}.authzen uvicorn x{threads}",
                   authzen_bench(backend, threads, factor=1.5),
                   note=f"POST /access/v1/evaluation, demo-rs Basic, permitted invoices.read; "
                        f"real `missionbound serve` (uvicorn, 1 process) on 127.0.0.1, "
                        f"{threads} client thread(s), http.client keep-alive; {where}")
        for threads in CLIENT_THREADS
    ]
    return benches


def pdp_benches() -> list[Bench]:
    benches = _benches("sqlite")
    problem = postgres_problem()
    if problem is None:
        benches += _benches("postgresql")
    else:
        print(f"pdp: PostgreSQL benchmarks skipped: {problem}", flush=True)
    return benches
