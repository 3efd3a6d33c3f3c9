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

* ``cross-domain.<db>.id-jag+redeem`` (and ``x2``): the full round trip of issue 5, over two
  real ``missionbound serve`` processes on 127.0.0.1 with their own configuration files: the
  origin (role issuer, on ``<db>``; the Resource AS as the ``resource_authorities`` entry for
  ``<origin>/demo/erp``, and a status client whose ``audiences`` hold that API) and a Resource
  AS (role resource_as, on SQLite; ``trusted_origins`` = the origin with that status client,
  ``demo-agent`` under its own secret, a catalog serving ``<origin>/demo/erp`` with the demo's
  actions). Each round trip is the ID-JAG token exchange at the origin, then its redemption at
  the Resource AS (RFC 7523 JWT bearer grant, a DPoP proof of the same key), which asks the
  origin's signed Mission Status on every redemption (decision F3); the two requests are timed
  together, both proofs signed beforehand. One Mission per client thread (x1: sequential).
  The tenants use fresh secrets (demo secrets are refused outside the demo tenant).

Each Mission's ``max_derivations`` is out of reach (the issuance suite's intent), so the gate
never refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import importlib.util
import json
import math
import os
import secrets
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from issuance_suites import (
    AGENT_BASIC,
    APPROVER,
    CLIENT_THREADS,
    PROOFS_PER_SECOND,
    REDIRECT_URI,
    SERVER_STOP_TIMEOUT,
    SUBJECT,
    BenchFailure,
    DPoPKey,
    InProcess,
    Issued,
    Server,
    TimedBench,
    Worker,
    _log_like_serve,
    _post,
    _send,
    _wait_until_healthy,
    basic,
    bench_intent,
    drive,
    free_port,
    hidden_inputs,
    issue_many,
    latency_result,
    pkce,
    process_cpu_seconds,
    query_of,
)
from store_suites import fresh_database_url, postgres_problem
from suites import ISSUER, Bench

from missionbound.config import Settings
from missionbound.issuer.keys import ensure_signing_key
from missionbound.store.engine import create_engine_for
from missionbound.store.migrate import upgrade
from missionbound.store.transactions import Store
from missionbound.tenant import DEMO_TENANT_FILE
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


# -- the round trip: ID-JAG at the origin, redeemed at a Resource AS (two real servers) -------

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ROUND_TRIP_THREADS = (1, 2)
# Proof pairs signed beforehand per second of measurement (several times what two servers
# answer); a client that runs out ends the measured window early, as in `drive`.
ROUND_TRIPS_PER_SECOND = 400
SERVE_ATTEMPTS = 3  # a port taken between choosing it and binding it: start the pair again
# Fresh per process: the tenants refuse the demo secrets outside the demo tenant.
ORIGIN_AGENT = ("demo-agent", "bench-agent-origin-" + secrets.token_urlsafe(12))
RAS_AGENT = ("demo-agent", "bench-agent-ras-" + secrets.token_urlsafe(12))
STATUS_CLIENT = ("bench-ras-status", "bench-status-" + secrets.token_urlsafe(12))
APPROVER_PASSWORD = "bench-bob-" + secrets.token_urlsafe(8)


def origin_config(origin: str, ras: str) -> str:
    """The origin (role issuer): the demo tenant's users, agent and catalog under fresh
    secrets, plus the Resource AS's status client (an audience of the demo ERP API), and the
    Resource AS as the authority for that API. Adapted from tests/cross_domain/two_domains.py;
    the catalog is the packaged demo tenant's own."""
    demo = DEMO_TENANT_FILE.read_text()
    catalog = demo[demo.index("\n[catalog]\n"):]
    return textwrap.dedent(f"""\
        expiry_sweep_seconds = 0
        signals_delivery_seconds = 0

        [[resource_authorities]]
        issuer = "{ras}"
        resources = ["{origin}/demo/erp"]

        [tenant]
        name = "bench-origin"

        [[users]]
        username = "alice"
        password = "bench-alice-{secrets.token_urlsafe(8)}"
        display_name = "Alice Example"

        [[users]]
        username = "{APPROVER[0]}"
        password = "{APPROVER_PASSWORD}"
        display_name = "Bob Manager"
        roles = ["admin"]
        may_approve_for = ["{SUBJECT}"]

        [[clients]]
        client_id = "{ORIGIN_AGENT[0]}"
        client_secret = "{ORIGIN_AGENT[1]}"
        token_endpoint_auth_methods = ["client_secret_basic"]
        redirect_uris = ["{REDIRECT_URI}"]
        mission_purposes_registered = ["https://missionbound.dev/purposes/accounts-payable"]
        mission_resources = {{ "{{issuer}}/demo/erp" = ["*"], "{{issuer}}/demo/mcp" = ["*"] }}

        [[clients]]
        client_id = "{STATUS_CLIENT[0]}"
        client_secret = "{STATUS_CLIENT[1]}"
        token_endpoint_auth_methods = ["client_secret_basic"]
        redirect_uris = []
        mission_resources = {{}}
        audiences = ["{{issuer}}/demo/erp"]
        """) + catalog


def ras_config(origin: str) -> str:
    """The Resource AS (role resource_as): trusts the origin (asking its Mission Status as
    the status client), knows ``demo-agent`` under its own secret, and catalogs the origin's
    demo ERP API with the demo's actions."""
    return textwrap.dedent(f"""\
        role = "resource_as"
        expiry_sweep_seconds = 0

        [[trusted_origins]]
        issuer = "{origin}"
        status_client_id = "{STATUS_CLIENT[0]}"
        status_client_secret = "{STATUS_CLIENT[1]}"

        [tenant]
        name = "bench-partner"

        [[clients]]
        client_id = "{RAS_AGENT[0]}"
        client_secret = "{RAS_AGENT[1]}"
        token_endpoint_auth_methods = ["client_secret_basic"]
        redirect_uris = []

        [catalog]
        version = "bench-partner-catalog:1"

        [[catalog.resources]]
        uri = "{origin}/demo/erp"
        title = "Demo ERP API (of the origin's domain)"

        [[catalog.resources.actions]]
        name = "invoices.read"
        description = "list and read invoices"
        class = "consequential_read"

        [[catalog.resources.actions]]
        name = "journal-entries.write"
        description = "post journal entries"
        class = "consequential_write"
        constraints = {{ max_value = "amount" }}
        ceiling = {{ max_value = {{ amount = "10000.00", currency = "USD" }} }}
        """)


@dataclass(frozen=True)
class Pair:
    origin: Server
    ras: Server


class _PortTaken(BenchFailure):
    pass


@contextlib.contextmanager
def _serve(folder: Path, port: int, config: str, database_url: str) -> Iterator[Server]:
    """One ``missionbound serve --config`` on 127.0.0.1, stopped when the block ends."""
    folder.mkdir()
    config_file = folder / "missionbound.toml"
    config_file.write_text(config)
    base = f"http://127.0.0.1:{port}"
    environment = {name: value for name, value in os.environ.items()
                   if not name.upper().startswith("MISSIONBOUND_")}
    environment["MISSIONBOUND_DATA_DIR"] = str(folder)
    command = [sys.executable, "-m", "missionbound", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--issuer", base, "--config", str(config_file),
               "--database-url", database_url]
    stderr_path = folder / "stderr.log"
    with open(folder / "stdout.log", "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(command, cwd=folder, env=environment, stdout=out,
                                   stderr=err, stdin=subprocess.DEVNULL)
    try:
        try:
            _wait_until_healthy(base, process, stderr_path)
        except BenchFailure as failure:
            if "address already in use" in str(failure).lower():
                raise _PortTaken(str(failure)) from None
            raise
        yield Server(base, process.pid)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=SERVER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=SERVER_STOP_TIMEOUT)


@contextlib.contextmanager
def two_domains(origin_backend: str) -> Iterator[Pair]:
    """The origin (on ``origin_backend``) and the Resource AS (SQLite), each with its own
    configuration, database and port; both stopped (the Resource AS first) before their
    databases are removed, whatever happens."""
    for attempt in range(SERVE_ATTEMPTS):
        origin_port, ras_port = free_port(), free_port()
        if origin_port == ras_port:
            continue
        origin, ras = f"http://127.0.0.1:{origin_port}", f"http://127.0.0.1:{ras_port}"
        with contextlib.ExitStack() as stack:
            folder = Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="mb-bench-domains-")))
            origin_url = stack.enter_context(fresh_database_url(origin_backend))
            ras_url = stack.enter_context(fresh_database_url("sqlite"))
            try:
                origin_server = stack.enter_context(_serve(
                    folder / "origin", origin_port, origin_config(origin, ras), origin_url))
                ras_server = stack.enter_context(_serve(
                    folder / "ras", ras_port, ras_config(origin), ras_url))
            except _PortTaken:
                if attempt + 1 == SERVE_ATTEMPTS:
                    raise
                continue
            yield Pair(origin_server, ras_server)
            return
    raise BenchFailure(f"could not start the two domains in {SERVE_ATTEMPTS} attempts")


async def approved_mission(client: httpx.AsyncClient, origin: str) -> Issued:
    """One Mission at the origin, as the issuance suite's ``issue`` makes it (PAR with DPoP,
    /authorize, consent, code + DPoP), with the origin tenant's credentials; ``client`` holds
    the approver's signed-in session."""
    key, steps = DPoPKey(), {}
    verifier, challenge = pkce()
    agent = basic(ORIGIN_AGENT)
    par_proof, token_proof = key.proof(f"{origin}/par"), key.proof(f"{origin}/token")
    pushed = await _send(client, steps, "par", "POST", "/par", expect=201, headers={
        "Authorization": agent, "DPoP": par_proof}, data={
        "response_type": "code", "client_id": ORIGIN_AGENT[0], "redirect_uri": REDIRECT_URI,
        "code_challenge": challenge, "code_challenge_method": "S256", "state": "bench",
        "mission_intent": bench_intent(origin), "login_hint": SUBJECT})
    page = await _send(client, steps, "authorize", "GET", "/authorize?" + urlencode(
        {"client_id": ORIGIN_AGENT[0], "request_uri": pushed.json()["request_uri"]}),
        expect=200)
    approved = await _send(client, steps, "consent", "POST", "/consent", expect=303,
                           data={**hidden_inputs(page.text), "decision": "approve"})
    code = query_of(approved.headers["location"]).get("code")
    if code is None:
        raise BenchFailure(f"consent did not return a code: {approved.headers['location']}")
    tokens = await _send(client, steps, "token", "POST", "/token", expect=200, headers={
        "Authorization": agent, "DPoP": token_proof}, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier})
    body = tokens.json()
    if body.get("token_type") != "DPoP":
        raise BenchFailure(f"the token is not DPoP-bound: {body.get('token_type')}")
    return Issued(key, body["access_token"], body["refresh_token"], steps)


async def approved_missions(origin: str, count: int) -> list[Issued]:
    async with httpx.AsyncClient(base_url=origin, timeout=30) as client:
        page = await _send(client, {}, "sign-in", "GET", "/login", expect=200,
                           params={"next": "/"})
        await _send(client, {}, "sign-in", "POST", "/login", expect=303, data={
            **hidden_inputs(page.text), "username": APPROVER[0],
            "password": APPROVER_PASSWORD})
        return [await approved_mission(client, origin) for _ in range(count)]


def round_trip_worker(pair: Pair, issued: Issued, proofs: list[tuple[str, str]],
                      connections: list[http.client.HTTPConnection]) -> Worker:
    """Per round trip: the ID-JAG from the origin (on the worker's connection), then its
    redemption at the Resource AS (on a keep-alive connection of this worker's own, kept in
    ``connections`` to be closed afterwards). Both proofs were signed beforehand."""
    supply = iter(proofs)
    ras = urlsplit(pair.ras.base)
    to_ras: http.client.HTTPConnection | None = None
    exchange = {"grant_type": TOKEN_EXCHANGE, "requested_token_type": ID_JAG,
                "subject_token": issued.refresh_token, "subject_token_type": REFRESH_TOKEN,
                "audience": pair.ras.base}
    origin_auth, ras_auth = basic(ORIGIN_AGENT), basic(RAS_AGENT)

    def send(connection: http.client.HTTPConnection) -> None:
        nonlocal to_ras
        if to_ras is None:
            to_ras = http.client.HTTPConnection(ras.hostname or "127.0.0.1", ras.port or 80,
                                                timeout=30)
            connections.append(to_ras)
        exchange_proof, redeem_proof = next(supply)
        status, body = _post(connection, "/token", exchange, {
            "Authorization": origin_auth, "DPoP": exchange_proof})
        check(ID_JAG_USE, status, body)
        grant = json.loads(body)["access_token"]
        status, body = _post(to_ras, "/token", {"grant_type": JWT_BEARER, "assertion": grant},
                             {"Authorization": ras_auth, "DPoP": redeem_proof})
        if status != 200 or json.loads(body).get("token_type") != "DPoP":
            raise BenchFailure(f"redeem at the Resource AS: HTTP {status}: {body[:300]!r}")

    return Worker(send)


def round_trip_bench(origin_backend: str, threads: int, *, factor: float) -> Setup:
    """``threads`` clients, each with its own Mission at the origin, each round trip an
    ID-JAG issuance at the origin then its redemption at the Resource AS (which asks the
    origin's Mission Status), timed together."""

    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[float], dict[str, Any]]]:
        with two_domains(origin_backend) as pair, asyncio.Runner() as runner:
            missions = runner.run(approved_missions(pair.origin.base, threads))
            origin_token, ras_token = f"{pair.origin.base}/token", f"{pair.ras.base}/token"

            def measure(seconds: float) -> dict[str, Any]:
                per_thread = math.ceil(seconds * ROUND_TRIPS_PER_SECOND / threads) + 20
                connections: list[http.client.HTTPConnection] = []
                workers = [round_trip_worker(pair, issued, [
                    (issued.key.proof(origin_token), issued.key.proof(ras_token))
                    for _ in range(per_thread)], connections) for issued in missions]
                ras_cpu = process_cpu_seconds(pair.ras.pid)
                try:
                    result = drive(pair.origin, workers, seconds)
                finally:
                    for connection in connections:
                        connection.close()
                ras_after = process_cpu_seconds(pair.ras.pid)
                origin_cpu = result["cpu_us_per_op"]
                ras_us = (None if ras_cpu is None or ras_after is None
                          else (ras_after - ras_cpu) / result["samples"] * 1e6)
                if origin_cpu is not None and ras_us is not None:
                    result["cpu_us_per_op"] = origin_cpu + ras_us
                result.update(origin_cpu_us_per_op=origin_cpu, ras_cpu_us_per_op=ras_us)
                cpu = ("" if origin_cpu is None or ras_us is None else
                       f"; server CPU per round trip: origin {origin_cpu / 1e3:.2f} ms "
                       f"(ID-JAG + Mission Status), Resource AS {ras_us / 1e3:.2f} ms")
                result["detail"] = (f"{threads} client thread(s), "
                                    f"{result['samples']} round trips in "
                                    f"{result['window_s']:.2f} s{cpu}")
                return result

            measure(0.2)  # warm up: connections, caches, the Resource AS's JWKS of the origin

            def run(seconds: float) -> dict[str, Any]:
                return measure(seconds * factor)

            yield run

    return setup


def _round_trip_benches(origin_backend: str) -> list[Bench]:
    db = "sqlite" if origin_backend == "sqlite" else "pg"
    where = ("origin and Resource AS on SQLite temp files" if origin_backend == "sqlite"
             else "origin on a PostgreSQL fresh schema, Resource AS on a SQLite temp file")
    return [
        TimedBench(
            f"cross-domain.{db}.id-jag+redeem" + ("" if threads == 1 else f" x{threads}"),
            round_trip_bench(origin_backend, threads, factor=1.5),
            note=f"per round trip, {threads} Mission(s), one per client thread, sequential "
                 "within a thread: token exchange refresh token -> ID-JAG at the origin "
                 "(DPoP), then the RFC 7523 JWT bearer grant at the Resource AS (DPoP, same "
                 "key; it asks the origin's signed Mission Status) -> local token; two real "
                 "`missionbound serve` (uvicorn, 1 process each) on 127.0.0.1, http.client "
                 f"keep-alive; {where}")
        for threads in ROUND_TRIP_THREADS
    ]


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
    if ID_JAG_USE in uses:
        benches += _round_trip_benches("sqlite")
        if pg_problem is None:
            benches += _round_trip_benches("postgresql")
    else:
        print("cross-domain: id-jag+redeem benchmarks skipped with id-jag", flush=True)
    return benches
