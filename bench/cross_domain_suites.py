"""The `cross-domain` suite: the token exchange uses of the origin AS (RFC 8693) over HTTP, on
SQLite (a temporary file) and PostgreSQL (a fresh schema; skipped, saying why, when no server
answers). Measured exactly as the `issuance` suite measures (bench/issuance_suites.py): in
process through httpx's ``ASGITransport``, and over a real ``missionbound serve`` with 1, 2
and 4 client threads on keep-alive connections; client work (DPoP proofs) is never timed and
any unexpected status stops the benchmark.

* ``cross-domain.<db>.id-jag``: one ID-JAG issuance round trip (docs/cross-domain.md): token
  exchange with the agent's DPoP-bound Mission refresh token as ``subject_token``, one
  ``audience`` (a configured ``resource_authorities`` entry), a DPoP proof of the refresh
  token's key; gated and counted, the grant signed, recorded and audited. The refresh token is
  not rotated (decision J2), so one Mission per client thread serves every request.
* ``cross-domain.<db>.delegation``: delegation (docs/delegation.md): the agent's access token
  as ``subject_token``, ``demo-subagent`` authenticated with its own DPoP key, narrowed to
  ``invoices.read`` at the ERP API. Skipped, with the server's answer, while the server does
  not issue delegated tokens.

Each Mission's ``max_derivations`` is out of reach (the issuance suite's intent), so the gate
never refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from issuance_suites import (
    AGENT_BASIC,
    CLIENT_THREADS,
    PROOFS_PER_SECOND,
    SERVER_STOP_TIMEOUT,
    BenchFailure,
    DPoPKey,
    InProcess,
    Issued,
    Server,
    TimedBench,
    Worker,
    _log_like_serve,
    _post,
    _wait_until_healthy,
    basic,
    drive,
    free_port,
    issue_many,
    latency_result,
)
from store_suites import fresh_database_url, postgres_problem
from suites import ISSUER, Bench

from missionbound.config import Settings
from missionbound.issuer.keys import ensure_signing_key
from missionbound.store.engine import create_engine_for
from missionbound.store.migrate import upgrade
from missionbound.store.transactions import Store
from missionbound.web.app import create_app

SUBAGENT_BASIC = basic(("demo-subagent", "demo-subagent-secret"))
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_JAG = "urn:ietf:params:oauth:token-type:id-jag"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
REFRESH_TOKEN = "urn:ietf:params:oauth:token-type:refresh_token"
# The Resource AS the benchmark's ID-JAGs are for: authoritative for the demo ERP API.
RESOURCE_AS = "https://ras.bench.test"

Setup = Callable[[], contextlib.AbstractContextManager[Callable[[float], dict[str, Any]]]]


def resource_authorities(issuer: str) -> list[dict[str, Any]]:
    return [{"issuer": RESOURCE_AS, "resources": [f"{issuer}/demo/erp"]}]


# -- the two uses: what one request sends ----------------------------------------------------


@dataclass(frozen=True)
class Use:
    """One token exchange use: the form for a Mission (its tokens), who authenticates, whose
    key proves possession, and what a success must say."""

    name: str
    form: Callable[[Issued, str], dict[str, str]]
    authorization: str
    own_key: bool  # a new DPoP key of the requester (delegate); else the Mission's own
    issued_token_type: str


def _id_jag_form(issued: Issued, issuer: str) -> dict[str, str]:
    return {"grant_type": TOKEN_EXCHANGE, "requested_token_type": ID_JAG,
            "subject_token": issued.refresh_token, "subject_token_type": REFRESH_TOKEN,
            "audience": RESOURCE_AS}


def _delegation_form(issued: Issued, issuer: str) -> dict[str, str]:
    return {"grant_type": TOKEN_EXCHANGE, "requested_token_type": ACCESS_TOKEN,
            "subject_token": issued.access_token, "subject_token_type": ACCESS_TOKEN,
            "resource": f"{issuer}/demo/erp", "scope": "invoices.read"}


ID_JAG_USE = Use("id-jag", _id_jag_form, AGENT_BASIC, own_key=False,
                 issued_token_type=ID_JAG)
DELEGATION_USE = Use("delegation", _delegation_form, SUBAGENT_BASIC, own_key=True,
                     issued_token_type=ACCESS_TOKEN)


@dataclass
class Chain:
    """One Mission and the key that proves each of its exchanges."""

    issued: Issued
    key: DPoPKey
    form: dict[str, str]


def chain_for(use: Use, issued: Issued, issuer: str) -> Chain:
    return Chain(issued, DPoPKey() if use.own_key else issued.key, use.form(issued, issuer))


def check(use: Use, status: int, body: bytes | str) -> None:
    if status != 200:
        raise BenchFailure(f"{use.name}: HTTP {status}: {body[:300]!r}")
    answered = json.loads(body).get("issued_token_type")
    if answered != use.issued_token_type:
        raise BenchFailure(f"{use.name}: issued_token_type {answered!r}")


# -- in process -------------------------------------------------------------------------------


@contextlib.contextmanager
def in_process(backend: str) -> Iterator[InProcess]:
    """The app on a fresh database with :data:`RESOURCE_AS` configured (otherwise as the
    issuance suite's ``in_process``)."""
    _log_like_serve()
    if importlib.util.find_spec("sniffio") is None:
        # As the issuance suite: spare each request httpx's failed `import sniffio`.
        sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]
    with fresh_database_url(backend) as url, \
            tempfile.TemporaryDirectory(prefix="mb-bench-") as data_dir:
        upgrade(url)
        engine = create_engine_for(url)
        try:
            ensure_signing_key(Store(engine), datetime.now(UTC))
            settings = Settings(issuer=ISSUER, database_url=url, data_dir=Path(data_dir),
                                expiry_sweep_seconds=0,
                                resource_authorities=resource_authorities(ISSUER))
            app = create_app(settings, engine=engine)
            with asyncio.Runner() as runner:
                client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                           base_url=ISSUER, follow_redirects=False)
                try:
                    yield InProcess(runner, client, ISSUER)
                finally:
                    runner.run(client.aclose())
        finally:
            engine.dispose()


async def exchange_once(here: InProcess, use: Use, chain: Chain) -> float:
    proof = chain.key.proof(f"{here.issuer}/token")  # before the clock starts
    started = time.perf_counter()
    response = await here.client.post("/token", data=chain.form, headers={
        "Authorization": use.authorization, "DPoP": proof})
    elapsed = time.perf_counter() - started
    check(use, response.status_code, response.text)
    return elapsed


def sequential_bench(backend: str, use: Use, *, factor: float, minimum: int) -> Setup:
    """One client, one request at a time, in process."""

    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[float], dict[str, Any]]]:
        with in_process(backend) as here:
            [issued] = here.runner.run(issue_many(here.client, here.issuer, 1))
            chain = chain_for(use, issued, here.issuer)

            async def requests(seconds: float) -> list[float]:
                latencies: list[float] = []
                deadline = time.perf_counter() + seconds * factor
                while time.perf_counter() < deadline or len(latencies) < minimum:
                    latencies.append(await exchange_once(here, use, chain))
                return latencies

            here.runner.run(requests(0.0))  # warm up (minimum requests)

            def run(seconds: float) -> dict[str, Any]:
                cpu = time.process_time()
                latencies = here.runner.run(requests(seconds))
                cpu = time.process_time() - cpu
                return latency_result(
                    latencies, rate=len(latencies) / sum(latencies), cpu_s=cpu,
                    detail=f"CPU {cpu / len(latencies) * 1e3:.2f} ms/request (server and "
                           "client, with the client's proof signing)")

            yield run

    return setup


def use_problem(use: Use) -> str | None:
    """Why ``use`` cannot be measured (the server's answer to one try), or None."""
    with in_process("sqlite") as here:
        try:
            [issued] = here.runner.run(issue_many(here.client, here.issuer, 1))
            here.runner.run(exchange_once(here, use, chain_for(use, issued, here.issuer)))
        except BenchFailure as failure:
            return str(failure)
    return None


# -- over a real server -----------------------------------------------------------------------


@contextlib.contextmanager
def served(backend: str) -> Iterator[Server]:
    """``missionbound serve`` on 127.0.0.1 over a fresh database, with :data:`RESOURCE_AS`
    configured (otherwise as the issuance suite's ``served``)."""
    with fresh_database_url(backend) as url, \
            tempfile.TemporaryDirectory(prefix="mb-bench-serve-") as folder:
        base = f"http://127.0.0.1:{free_port()}"
        environment = {name: value for name, value in os.environ.items()
                       if not name.upper().startswith("MISSIONBOUND_")}
        environment["MISSIONBOUND_DATA_DIR"] = folder
        environment["MISSIONBOUND_RESOURCE_AUTHORITIES"] = json.dumps(
            resource_authorities(base))
        command = [sys.executable, "-m", "missionbound", "serve", "--host", "127.0.0.1",
                   "--port", base.rsplit(":", 1)[1], "--issuer", base, "--database-url", url]
        stderr_path = Path(folder) / "stderr.log"
        with open(Path(folder) / "stdout.log", "wb") as out, open(stderr_path, "wb") as err:
            process = subprocess.Popen(command, env=environment, stdout=out, stderr=err,
                                       stdin=subprocess.DEVNULL)
        try:
            _wait_until_healthy(base, process, stderr_path)
            yield Server(base, process.pid)
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=SERVER_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=SERVER_STOP_TIMEOUT)


def exchange_worker(use: Use, chain: Chain, proofs: list[str]) -> Worker:
    supply = iter(proofs)

    def send(connection: Any) -> None:
        status, body = _post(connection, "/token", chain.form, {
            "Authorization": use.authorization, "DPoP": next(supply)})
        check(use, status, body)

    return Worker(send)


def concurrent_bench(backend: str, use: Use, threads: int, *, factor: float) -> Setup:
    """``threads`` clients, each with its own Mission (and, for delegation, its own delegate
    key), against a real ``missionbound serve``."""

    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[float], dict[str, Any]]]:
        with served(backend) as server, asyncio.Runner() as runner:
            base = server.base

            async def seed(count: int) -> list[Issued]:
                async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                    return await issue_many(client, base, count)

            chains = [chain_for(use, issued, base) for issued in runner.run(seed(threads))]

            def workers(seconds: float) -> list[Worker]:
                per_thread = math.ceil(seconds * factor * PROOFS_PER_SECOND / threads) + 20
                return [exchange_worker(use, chain, [chain.key.proof(f"{base}/token")
                                                     for _ in range(per_thread)])
                        for chain in chains]

            drive(server, workers(0.2), 0.2)  # warm up: connections, caches

            def run(seconds: float) -> dict[str, Any]:
                return drive(server, workers(seconds), seconds * factor)

            yield run

    return setup


# -- the suite ----------------------------------------------------------------------------------


def _benches(backend: str, uses: list[Use]) -> list[Bench]:
    db = "sqlite" if backend == "sqlite" else "pg"
    where = "SQLite temp file" if backend == "sqlite" else "PostgreSQL fresh schema"
    inproc = "in process (httpx ASGITransport -> create_app)"
    uvicorn = "real `missionbound serve` (uvicorn, 1 process) on 127.0.0.1, http.client keep-alive"
    what = {
        "id-jag": "token exchange refresh token -> ID-JAG (DPoP, one audience), gated, counted",
        "delegation": "token exchange access token -> delegated token for demo-subagent "
                      "(its own DPoP key), gated, counted",
    }
    benches: list[Bench] = []
    for use in uses:
        benches.append(TimedBench(
            f"cross-domain.{db}.{use.name}",
            sequential_bench(backend, use, factor=1.5, minimum=50),
            note=f"per request, one Mission, sequential: {what[use.name]}; {inproc}; {where}"))
        benches += [
            TimedBench(f"cross-domain.{db}.{use.name} uvicorn x{threads}",
                       concurrent_bench(backend, use, threads, factor=1.5),
                       note=f"{threads} Mission(s), one per client thread: {what[use.name]}; "
                            f"{uvicorn}; {where}")
            for threads in CLIENT_THREADS
        ]
    return benches


def cross_domain_benches() -> list[Bench]:
    uses = []
    for use in (DELEGATION_USE, ID_JAG_USE):
        problem = use_problem(use)
        if problem is None:
            uses.append(use)
        else:
            print(f"cross-domain: {use.name} benchmarks skipped: {problem}", flush=True)
    benches = _benches("sqlite", uses)
    pg_problem = postgres_problem()
    if pg_problem is None:
        benches += _benches("postgresql", uses)
    else:
        print(f"cross-domain: PostgreSQL benchmarks skipped: {pg_problem}", flush=True)
    return benches
