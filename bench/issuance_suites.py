"""The `issuance` suite: the Authorization Server over HTTP, on SQLite (a temporary file) and
PostgreSQL (a fresh schema, as the `store` suite makes them; skipped, saying why, when no
server answers). DESIGN.md "Fast" budgets, on 2 cores: full PAR -> token issuance p50 <= 10 ms,
refresh with DPoP >= 400 req/s, introspection >= 2,000 req/s.

How it is measured, so that the numbers can be trusted:

* In process: the real app from ``create_app`` driven through httpx's ``ASGITransport``, the
  way tests/web drives it. Not Starlette's ``TestClient``: it runs the app on a portal thread,
  a thread hop per request that neither uvicorn nor any real client pays. With
  ``ASGITransport`` a request takes uvicorn's path (the event loop, then the sync endpoint in
  the thread pool) minus sockets and HTTP parsing. Logging is configured as ``serve`` does
  (one JSON line per request), written to /dev/null.
* Over a real ``missionbound serve`` (uvicorn, one process, as ``serve`` runs it) on
  127.0.0.1, with 1, 2 and 4 client threads in this process, each on its own keep-alive
  connection (``http.client``): the rate a client sees. On the 2-core budget machine the
  server's Python holds one core (one process, one GIL); the clients and the database share
  the other.
* Client work is never timed: PKCE, DPoP proofs (ES256, signed before the clock starts) and
  reading the HTML forms happen between the timed requests. A timed request that gets an
  unexpected status stops the benchmark: errors are never counted as throughput.
* A full issuance is PAR (client_secret_basic, DPoP proof) -> GET /authorize (the consent page)
  -> POST /consent (approve) -> POST /token (authorization_code, DPoP): the AS's work, with a
  browser that is already signed in. Sign-in costs one scrypt (~50 ms by design, decision W4),
  so it is done once at setup and the session cookie is reused by every flow.
  ``flow+sign-in`` is the first-visit browser path instead: /authorize -> /login page ->
  POST /login (scrypt) -> /authorize, per flow.
* Refresh rotates the refresh token, so each client runs its own chain (its own Mission,
  DPoP key and refresh token family); ``max_derivations`` is set out of reach.
* Introspection is ``demo-rs`` (HTTP Basic) asking about DPoP-bound access tokens. It runs
  once ``POST /introspect`` is served, and is skipped with the reason until then.
* Each result also carries the CPU time per operation (in process: this whole process, client
  included; over uvicorn: the server process, without PostgreSQL's backends) and the load
  average: on a shared machine wall times move with whatever else runs, CPU time much less.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http.client
import importlib.util
import itertools
import json
import math
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from joserfc import jws
from joserfc.jwk import ECKey
from joserfc.jws import JWSRegistry
from store_suites import fresh_database_url, postgres_problem
from suites import ISSUER, Bench

from missionbound.config import Settings
from missionbound.issuer.keys import ensure_signing_key
from missionbound.store.engine import create_engine_for
from missionbound.store.migrate import upgrade
from missionbound.store.transactions import Store
from missionbound.web.app import create_app
from missionbound.web.logs import configure_logging

AGENT = ("demo-agent", "demo-agent-secret")
RESOURCE_SERVER = ("demo-rs", "demo-rs-secret")
APPROVER = ("bob", "bob")  # signs in and approves for alice (login_hint)
SUBJECT = "alice"
REDIRECT_URI = "http://127.0.0.1:8765/callback"
FORM = "application/x-www-form-urlencoded"
# Out of reach of any run, so the gate never refuses a refresh.
MAX_DERIVATIONS = 1_000_000
CLIENT_THREADS = (1, 2, 4)
SERVER_START_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 10.0
# Concurrent runs sign their DPoP proofs beforehand: enough for this many refreshes per second
# (several times the budget); a client that runs out ends the measured window early.
PROOFS_PER_SECOND = 2500
INTROSPECTED_TOKENS = 8


class BenchFailure(RuntimeError):
    """The server answered something a working issuer never would."""


@dataclass
class TimedBench(Bench):
    """A benchmark that times itself: ``setup()`` yields ``run(seconds) -> result``, the
    result carrying per-request (or per-flow) percentiles and the rate (bench/run.py)."""

    self_timed: ClassVar[bool] = True


# -- the client side: credentials, PKCE, DPoP, forms ----------------------------------------


def basic(credentials: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(":".join(credentials).encode()).decode("ascii")


AGENT_BASIC = basic(AGENT)
RS_BASIC = basic(RESOURCE_SERVER)


def bench_intent(issuer: str) -> str:
    expiry = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    return json.dumps({
        "goal": "Reconcile the Q3 invoices and pay approved vendors, up to 500 USD per "
                "invoice, by Friday.",
        "resources": [f"{issuer}/demo/erp", f"{issuer}/demo/mcp"],
        "constraints": ["only Q3 invoices", "pay approved vendors only"],
        "purpose": "https://missionbound.dev/purposes/accounts-payable",
        "mission_expiry": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "context": {"max_derivations": MAX_DERIVATIONS,
                    "max_value": {"amount": "500.00", "currency": "USD"},
                    "vendors": ["acme"]},
    })


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class DPoPKey:
    """One client's DPoP key (RFC 9449): ES256, as the demo agent uses."""

    _registry = JWSRegistry(algorithms=["ES256"])

    def __init__(self) -> None:
        self.key = ECKey.generate_key("P-256", private=True)
        self.jkt = self.key.thumbprint()
        self._header = {"typ": "dpop+jwt", "alg": "ES256",
                        "jwk": dict(self.key.as_dict(private=False))}

    def proof(self, url: str, method: str = "POST") -> str:
        claims = {"jti": secrets.token_urlsafe(16), "htm": method, "htu": url,
                  "iat": int(time.time())}
        return jws.serialize_compact(self._header, json.dumps(claims), self.key,
                                     registry=self._registry)


class _HiddenInputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "input" and found.get("type") == "hidden" and found.get("name"):
            self.values[found["name"] or ""] = found.get("value") or ""


def hidden_inputs(page: str) -> dict[str, str]:
    """The page's hidden form inputs: what a script posts back (DESIGN.md "Interfaces")."""
    parser = _HiddenInputs()
    parser.feed(page)
    return parser.values


def query_of(location: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(location).query).items()}


# -- one issuance, over any httpx.AsyncClient (in process or over the network) --------------


@dataclass
class Issued:
    key: DPoPKey
    access_token: str
    refresh_token: str
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step


async def _send(client: httpx.AsyncClient, steps: dict[str, float], step: str, method: str,
                path: str, *, expect: int, **kwargs: Any) -> httpx.Response:
    started = time.perf_counter()
    response = await client.request(method, path, **kwargs)
    steps[step] = steps.get(step, 0.0) + time.perf_counter() - started
    if response.status_code != expect:
        raise BenchFailure(f"{method} {path.split('?')[0]}: HTTP {response.status_code}, "
                           f"expected {expect}: {response.text[:300]}")
    return response


async def sign_in(client: httpx.AsyncClient, steps: dict[str, float], next_path: str) -> str:
    """The sign-in page and form; returns where the server sends the browser next."""
    page = await _send(client, steps, "sign-in", "GET", "/login", expect=200,
                       params={"next": next_path})
    form = {**hidden_inputs(page.text), "username": APPROVER[0], "password": APPROVER[1]}
    done = await _send(client, steps, "sign-in", "POST", "/login", expect=303, data=form)
    return done.headers["location"]


async def issue(client: httpx.AsyncClient, issuer: str, *, sign_in_first: bool) -> Issued:
    """PAR -> /authorize -> consent -> code -> token, with DPoP at PAR and token. Without
    ``sign_in_first`` the client's cookie jar must hold a signed-in session."""
    key, steps = DPoPKey(), {}
    verifier, challenge = pkce()
    par_proof, token_proof = key.proof(f"{issuer}/par"), key.proof(f"{issuer}/token")
    pushed = await _send(client, steps, "par", "POST", "/par", expect=201, headers={
        "Authorization": AGENT_BASIC, "DPoP": par_proof}, data={
        "response_type": "code", "client_id": AGENT[0], "redirect_uri": REDIRECT_URI,
        "code_challenge": challenge, "code_challenge_method": "S256", "state": "bench",
        "mission_intent": bench_intent(issuer), "login_hint": SUBJECT})
    authorize = "/authorize?" + urlencode(
        {"client_id": AGENT[0], "request_uri": pushed.json()["request_uri"]})
    if sign_in_first:
        client.cookies.clear()  # a browser that has never been here
        to_login = await _send(client, steps, "sign-in", "GET", authorize, expect=303)
        login_next = query_of(to_login.headers["location"])["next"]
        authorize = await sign_in(client, steps, login_next)
    page = await _send(client, steps, "authorize", "GET", authorize, expect=200)
    decision = {**hidden_inputs(page.text), "decision": "approve"}
    approved = await _send(client, steps, "consent", "POST", "/consent", expect=303,
                           data=decision)
    code = query_of(approved.headers["location"]).get("code")
    if code is None:
        raise BenchFailure(f"consent did not return a code: {approved.headers['location']}")
    tokens = await _send(client, steps, "token", "POST", "/token", expect=200, headers={
        "Authorization": AGENT_BASIC, "DPoP": token_proof}, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier})
    body = tokens.json()
    if body.get("token_type") != "DPoP":
        raise BenchFailure(f"the token is not DPoP-bound: {body.get('token_type')}")
    return Issued(key, body["access_token"], body["refresh_token"], steps)


async def issue_many(client: httpx.AsyncClient, issuer: str, count: int) -> list[Issued]:
    """``count`` Missions approved by one signed-in browser (one sign-in in all)."""
    await sign_in(client, {}, "/")
    return [await issue(client, issuer, sign_in_first=False) for _ in range(count)]


# -- statistics -----------------------------------------------------------------------------


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a sorted, non-empty list."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def latency_result(latencies: list[float], *, rate: float, cpu_s: float | None,
                   **extra: Any) -> dict[str, Any]:
    """Percentiles of ``latencies`` (seconds), the rate, and the CPU time per operation: on a
    shared machine, wall times move with whatever else runs; CPU time mostly does not."""
    ordered = sorted(latencies)
    return {
        "p50_us": statistics.median(ordered) * 1e6,
        "p95_us": percentile(ordered, 0.95) * 1e6,
        "p99_us": percentile(ordered, 0.99) * 1e6,
        "ops_per_s": rate,
        "samples": len(ordered),
        "cpu_us_per_op": None if cpu_s is None else cpu_s / len(ordered) * 1e6,
        "load_avg_1m": os.getloadavg()[0],
        **extra,
    }


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of another process (Linux ``/proc``), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- in process -----------------------------------------------------------------------------

_log_sink: Any = None


def _log_like_serve() -> None:
    """``serve``'s JSON log pipeline, into /dev/null: the rendering is paid, as in production,
    and the output does not bury the results. (structlog caches loggers on first use, so the
    first configuration of the process is the one that holds.)"""
    global _log_sink
    if _log_sink is None:
        _log_sink = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
        configure_logging("info", stream=_log_sink)


@dataclass
class InProcess:
    runner: asyncio.Runner
    client: httpx.AsyncClient
    issuer: str


@contextlib.contextmanager
def in_process(backend: str) -> Iterator[InProcess]:
    """The app on a fresh database, migrated and with a signing key, as ``serve`` has it."""
    _log_like_serve()
    if importlib.util.find_spec("sniffio") is None:
        # httpx's ASGITransport tries `import sniffio` on every request (to detect trio); it
        # is not installed, so each request would pay a failed import (a search of sys.path)
        # that no real client or server pays. A None entry fails that import at once.
        sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]
    with fresh_database_url(backend) as url, \
            tempfile.TemporaryDirectory(prefix="mb-bench-") as data_dir:
        upgrade(url)
        engine = create_engine_for(url)
        try:
            ensure_signing_key(Store(engine), datetime.now(UTC))
            settings = Settings(issuer=ISSUER, database_url=url, data_dir=Path(data_dir),
                                expiry_sweep_seconds=0)
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


def flow_bench(backend: str, *, sign_in_first: bool, factor: float, minimum: int) -> Callable[
        [], contextlib.AbstractContextManager[Callable[[float], dict[str, Any]]]]:
    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[float], dict[str, Any]]]:
        with in_process(backend) as here:
            if not sign_in_first:
                here.runner.run(sign_in(here.client, {}, "/"))
            for _ in range(3):  # warm caches (signing key, secrets, templates)
                here.runner.run(issue(here.client, here.issuer, sign_in_first=sign_in_first))

            async def flows(seconds: float) -> list[Issued]:
                done: list[Issued] = []
                deadline = time.perf_counter() + seconds * factor
                while time.perf_counter() < deadline or len(done) < minimum:
                    done.append(await issue(here.client, here.issuer,
                                            sign_in_first=sign_in_first))
                return done

            def run(seconds: float) -> dict[str, Any]:
                cpu = time.process_time()
                done = here.runner.run(flows(seconds))
                cpu = time.process_time() - cpu  # the client's share included
                totals = [sum(flow.steps.values()) for flow in done]
                steps = {name: statistics.median(flow.steps[name] for flow in done) * 1e3
                         for name in done[0].steps}
                detail = "step p50: " + ", ".join(
                    f"{name} {ms:.2f} ms" for name, ms in steps.items()) + (
                    f"; CPU {cpu / len(done) * 1e3:.1f} ms/flow (server and client)")
                return latency_result(totals, rate=len(totals) / sum(totals), cpu_s=cpu,
                                      steps_p50_ms=steps, detail=detail)

            yield run

    return setup


def sequential_bench(backend: str, endpoint: str, *, factor: float, minimum: int) -> Callable[
        [], contextlib.AbstractContextManager[Callable[[float], dict[str, Any]]]]:
    """One client, one request at a time, in process: refresh (one rotating chain) or
    introspection (a few access tokens, round robin)."""

    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[float], dict[str, Any]]]:
        with in_process(backend) as here:
            count = 1 if endpoint == "refresh" else INTROSPECTED_TOKENS
            issued = here.runner.run(issue_many(here.client, here.issuer, count))
            token_url = f"{here.issuer}/token"
            chain = issued[0]
            tokens = itertools.cycle([item.access_token for item in issued])

            async def refresh_once() -> float:
                proof = chain.key.proof(token_url)
                started = time.perf_counter()
                response = await here.client.post("/token", headers={
                    "Authorization": AGENT_BASIC, "DPoP": proof}, data={
                    "grant_type": "refresh_token", "refresh_token": chain.refresh_token})
                elapsed = time.perf_counter() - started
                if response.status_code != 200:
                    raise BenchFailure(f"refresh: HTTP {response.status_code}: "
                                       f"{response.text[:300]}")
                chain.refresh_token = response.json()["refresh_token"]
                return elapsed

            async def introspect_once() -> float:
                token = next(tokens)
                started = time.perf_counter()
                response = await here.client.post("/introspect", headers={
                    "Authorization": RS_BASIC}, data={"token": token})
                elapsed = time.perf_counter() - started
                if response.status_code != 200 or response.json().get("active") is not True:
                    raise BenchFailure(f"introspect: HTTP {response.status_code}: "
                                       f"{response.text[:300]}")
                return elapsed

            once = refresh_once if endpoint == "refresh" else introspect_once
            signing = ", with the client's proof signing" if endpoint == "refresh" else ""

            async def requests(seconds: float) -> list[float]:
                latencies: list[float] = []
                deadline = time.perf_counter() + seconds * factor
                while time.perf_counter() < deadline or len(latencies) < minimum:
                    latencies.append(await once())
                return latencies

            here.runner.run(requests(0.0))  # warm up (minimum requests)

            def run(seconds: float) -> dict[str, Any]:
                cpu = time.process_time()
                latencies = here.runner.run(requests(seconds))
                cpu = time.process_time() - cpu
                return latency_result(
                    latencies, rate=len(latencies) / sum(latencies), cpu_s=cpu,
                    detail=f"CPU {cpu / len(latencies) * 1e3:.2f} ms/request (server and "
                           f"client{signing})")

            yield run

    return setup


# -- a real server --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class Server:
    base: str  # also the issuer
    pid: int


@contextlib.contextmanager
def served(backend: str, *extra_args: str) -> Iterator[Server]:
    """``missionbound serve`` on 127.0.0.1 over a fresh database, with ``extra_args`` added
    to its command line. The server is stopped before the database is removed."""
    with fresh_database_url(backend) as url, \
            tempfile.TemporaryDirectory(prefix="mb-bench-serve-") as folder:
        base = f"http://127.0.0.1:{free_port()}"
        environment = {name: value for name, value in os.environ.items()
                       if not name.upper().startswith("MISSIONBOUND_")}
        environment["MISSIONBOUND_DATA_DIR"] = folder
        command = [sys.executable, "-m", "missionbound", "serve", "--host", "127.0.0.1",
                   "--port", base.rsplit(":", 1)[1], "--issuer", base, "--database-url", url,
                   *extra_args]
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


def _wait_until_healthy(base: str, process: subprocess.Popen[bytes], stderr: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(stderr.read_text(errors="replace").splitlines()[-20:])
            raise BenchFailure(f"missionbound serve exited with {process.returncode}:\n{tail}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/healthz", timeout=2.0).status_code == 200:
                return
        time.sleep(0.1)
    raise BenchFailure(f"missionbound serve at {base} did not become healthy in time")


@dataclass
class Worker:
    """One client thread's keep-alive connection and what it sends next."""

    send: Callable[[http.client.HTTPConnection], None]
    latencies: list[float] = field(default_factory=list)
    ended: list[float] = field(default_factory=list)  # perf_counter at each response
    ran_out_at: float | None = None
    error: BaseException | None = None


def _post(connection: http.client.HTTPConnection, path: str, form: dict[str, str],
          headers: dict[str, str]) -> tuple[int, bytes]:
    connection.request("POST", path, urlencode(form), {"Content-Type": FORM, **headers})
    response = connection.getresponse()
    return response.status, response.read()


def refresh_worker(chain: Issued, proofs: list[str]) -> Worker:
    supply = iter(proofs)

    def send(connection: http.client.HTTPConnection) -> None:
        status, body = _post(connection, "/token", {
            "grant_type": "refresh_token", "refresh_token": chain.refresh_token},
            {"Authorization": AGENT_BASIC, "DPoP": next(supply)})
        if status != 200:
            raise BenchFailure(f"refresh: HTTP {status}: {body[:300]!r}")
        chain.refresh_token = json.loads(body)["refresh_token"]

    return Worker(send)


def introspect_worker(tokens: list[str]) -> Worker:
    supply = itertools.cycle(tokens)

    def send(connection: http.client.HTTPConnection) -> None:
        status, body = _post(connection, "/introspect", {"token": next(supply)},
                             {"Authorization": RS_BASIC})
        if status != 200 or json.loads(body).get("active") is not True:
            raise BenchFailure(f"introspect: HTTP {status}: {body[:300]!r}")

    return Worker(send)


def drive(server: Server, workers: list[Worker], seconds: float) -> dict[str, Any]:
    """Every worker on its own thread and connection until the deadline; the rate counts the
    responses inside the window (which ends early if a worker ran out of proofs). CPU per
    operation is the server process's (not the database's, nor the clients')."""
    parts = urlsplit(server.base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    start = threading.Barrier(len(workers) + 1)
    began = 0.0

    def loop(worker: Worker) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=30)
        try:
            start.wait()
            deadline = began + seconds
            while (now := time.perf_counter()) < deadline:
                try:
                    worker.send(connection)
                except StopIteration:
                    worker.ran_out_at = now
                    return
                ended = time.perf_counter()
                worker.latencies.append(ended - now)
                worker.ended.append(ended)
        except BaseException as error:
            worker.error = error
        finally:
            connection.close()

    threads = [threading.Thread(target=loop, args=(worker,), daemon=True) for worker in workers]
    for thread in threads:
        thread.start()
    cpu_before = process_cpu_seconds(server.pid)
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join(timeout=seconds + 60)
    cpu_after = process_cpu_seconds(server.pid)
    for worker in workers:
        if worker.error is not None:
            raise BenchFailure(f"a client failed: {worker.error}") from worker.error
    window_end = min([began + seconds] + [w.ran_out_at for w in workers if w.ran_out_at])
    done = sum(1 for w in workers for ended in w.ended if ended <= window_end)
    latencies = [latency for w in workers for latency in w.latencies]
    server_cpu = (None if cpu_before is None or cpu_after is None
                  else cpu_after - cpu_before)
    return latency_result(latencies, rate=done / (window_end - began), cpu_s=server_cpu,
                          threads=len(workers),
                          window_s=round(window_end - began, 3),
                          detail=f"{len(workers)} client thread(s), {done} responses in "
                                 f"{window_end - began:.2f} s" + (
                                     "" if server_cpu is None else
                                     f"; server process CPU "
                                     f"{server_cpu / len(latencies) * 1e3:.2f} ms/response"))


def concurrent_bench(backend: str, endpoint: str, threads: int, *, factor: float) -> Callable[
        [], contextlib.AbstractContextManager[Callable[[float], dict[str, Any]]]]:
    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[float], dict[str, Any]]]:
        with served(backend) as server, asyncio.Runner() as runner:
            base = server.base

            async def seed(count: int) -> list[Issued]:
                async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                    return await issue_many(client, base, count)

            if endpoint == "refresh":
                chains = runner.run(seed(threads))

                def workers(seconds: float) -> list[Worker]:
                    per_thread = math.ceil(seconds * factor * PROOFS_PER_SECOND / threads) + 20
                    return [refresh_worker(chain, [chain.key.proof(f"{base}/token")
                                                   for _ in range(per_thread)])
                            for chain in chains]
            else:
                issued = runner.run(seed(INTROSPECTED_TOKENS))
                tokens = [item.access_token for item in issued]

                def workers(seconds: float) -> list[Worker]:
                    return [introspect_worker(tokens[i::threads] or tokens)
                            for i in range(threads)]

            drive(server, workers(0.2), 0.2)  # warm up: connections, caches

            def run(seconds: float) -> dict[str, Any]:
                return drive(server, workers(seconds), seconds * factor)

            yield run

    return setup


# -- the suite ------------------------------------------------------------------------------


def introspection_problem() -> str | None:
    """Why the introspection benchmarks cannot run yet, or None when POST /introspect is
    served."""
    with in_process("sqlite") as here:
        status = here.runner.run(here.client.post(
            "/introspect", headers={"Authorization": RS_BASIC}, data={"token": "probe"})
        ).status_code
    if status in (404, 405):
        return f"POST /introspect answers {status}: the endpoint is not served yet"
    return None


def _benches(backend: str, introspection: bool) -> list[Bench]:
    db = "sqlite" if backend == "sqlite" else "pg"
    where = "SQLite temp file" if backend == "sqlite" else "PostgreSQL fresh schema"
    inproc = "in process (httpx ASGITransport -> create_app)"
    uvicorn = "real `missionbound serve` (uvicorn, 1 process) on 127.0.0.1, http.client keep-alive"
    benches: list[Bench] = [
        TimedBench(
            f"issuance.{db}.flow signed-in", flow_bench(
                backend, sign_in_first=False, factor=2.5, minimum=30),
            note=f"per flow: PAR+DPoP, GET /authorize, POST /consent, POST /token+DPoP; "
                 f"browser signed in once at setup (scrypt excluded); {inproc}; {where}"),
        TimedBench(
            f"issuance.{db}.flow+sign-in", flow_bench(
                backend, sign_in_first=True, factor=1.0, minimum=10),
            note=f"per flow: as 'flow signed-in' plus /authorize -> /login -> POST /login "
                 f"(scrypt) -> /authorize, a fresh browser per flow; {inproc}; {where}"),
        TimedBench(
            f"issuance.{db}.refresh+dpop", sequential_bench(
                backend, "refresh", factor=1.5, minimum=50),
            note=f"per request, one rotating chain, sequential; {inproc}; {where}"),
    ]
    benches += [
        TimedBench(f"issuance.{db}.refresh+dpop uvicorn x{threads}",
                   concurrent_bench(backend, "refresh", threads, factor=1.5),
                   note=f"{threads} chain(s), one per client thread; {uvicorn}; {where}")
        for threads in CLIENT_THREADS
    ]
    if introspection:
        benches.append(TimedBench(
            f"issuance.{db}.introspect", sequential_bench(
                backend, "introspect", factor=1.5, minimum=50),
            note=f"per request, demo-rs Basic, {INTROSPECTED_TOKENS} tokens round robin, "
                 f"sequential; {inproc}; {where}"))
        benches += [
            TimedBench(f"issuance.{db}.introspect uvicorn x{threads}",
                       concurrent_bench(backend, "introspect", threads, factor=1.5),
                       note=f"demo-rs Basic, {INTROSPECTED_TOKENS} tokens; {threads} client "
                            f"thread(s); {uvicorn}; {where}")
            for threads in CLIENT_THREADS
        ]
    return benches


def issuance_benches() -> list[Bench]:
    problem = introspection_problem()
    if problem is not None:
        print(f"issuance: introspection benchmarks skipped: {problem}", flush=True)
    benches = _benches("sqlite", problem is None)
    pg_problem = postgres_problem()
    if pg_problem is None:
        benches += _benches("postgresql", problem is None)
    else:
        print(f"issuance: PostgreSQL benchmarks skipped: {pg_problem}", flush=True)
    return benches
