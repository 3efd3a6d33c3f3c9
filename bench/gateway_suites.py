"""The `gateway` suite: what the Mission-aware MCP gateway (issue 8, docs/mcp.md) adds to a
``tools/call``. Budget (issue 8): added p50 <= 3 ms for a permitted call.

Everything over HTTP on 127.0.0.1, with the official ``mcp`` client (one session per
benchmark, opened before timing; the servers are stateless, so each call is one POST):

* the **gateway**: a real ``missionbound serve`` (demo tenant, SQLite temp file), whose
  ``/demo/mcp`` is the gateway in front of the in-process demo payments server; the client
  authenticates with a DPoP-bound Mission token (``missionbound.client.mcp_auth.DPoPAuth``:
  a fresh ES256 proof per request, signed inside the timed call, as an agent pays it);
* the **direct** baseline: the same payments server as its own process
  (``python -m missionbound.demo.payments_mcp``), no authentication.

``gateway.<tool> permitted`` alternates one call through the gateway and one direct call
(same tool, same arguments), so both see the same machine load; the row is the gateway's
latency, the detail line the direct one and the difference (added = gateway - direct, per
percentile). A gateway call is: token and proof checks, the upstream's ``tools/list``
(definitions are listed for every call, the default TTL 0), the PDP's decision with its
signed Decision Evidence committed (SQLite), for a write the permit verified and the
execution reported (a second evidence record), then the upstream call. The gateway's upstream
is in process, so its hop costs less than the direct baseline's HTTP hop: the difference is
the gateway's work minus that saving. ``gateway.denied`` is a call of a tool the Mission
does not grant (``send_remittance_email``): the PDP's deny (``-32001``) with its evidence.

The Mission is issued as an agent gets one: PAR -> consent -> token for the gateway's
resource, granting reads and ``schedule_payment``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from issuance_suites import (
    AGENT,
    AGENT_BASIC,
    REDIRECT_URI,
    SUBJECT,
    BenchFailure,
    DPoPKey,
    Server,
    TimedBench,
    free_port,
    hidden_inputs,
    latency_result,
    percentile,
    pkce,
    query_of,
    served,
    sign_in,
)
from suites import Bench

from missionbound.client.mcp_auth import DPoPAuth, mission_mcp_client

MCP_PATH = "/demo/mcp"
PURPOSE = "https://missionbound.dev/purposes/accounts-payable"
GRANTED = ["list_invoices", "get_invoice", "schedule_payment"]
DENIED_TOOL = ("send_remittance_email", {"invoice_id": "inv-acme-1", "to": "ap@acme.example"})
# Bounds on every run: at least this many samples, at most this many (and the given seconds).
MIN_SAMPLES = 30
MAX_SAMPLES = 2000
WARM_UP = 20
START_TIMEOUT = 30.0
DENIED = -32001


def _far_date() -> str:
    return (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%d")


PERMITTED: dict[str, Callable[[], dict[str, Any]]] = {
    "get_invoice": lambda: {"invoice_id": "inv-acme-1"},
    "schedule_payment": lambda: {"invoice_id": "inv-acme-1", "date": _far_date()},
}


async def issue_for_gateway(issuer: str) -> tuple[str, DPoPKey]:
    """A Mission for the gateway's resource (reads and ``schedule_payment``): the token and
    its DPoP key."""
    resource = issuer + MCP_PATH
    key = DPoPKey()
    verifier, challenge = pkce()
    expiry = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    intent = {"goal": "Benchmark the MCP gateway on the demo invoices.",
              "resources": [resource], "purpose": PURPOSE, "mission_expiry": expiry,
              "context": {"max_derivations": 1_000_000}}
    details = [{"type": "mission_resource_access", "resource": resource, "actions": GRANTED}]
    async with httpx.AsyncClient(base_url=issuer, timeout=30) as client:
        pushed = await client.post("/par", headers={
            "Authorization": AGENT_BASIC, "DPoP": key.proof(f"{issuer}/par")}, data={
            "response_type": "code", "client_id": AGENT[0], "redirect_uri": REDIRECT_URI,
            "code_challenge": challenge, "code_challenge_method": "S256", "state": "bench",
            "mission_intent": json.dumps(intent), "authorization_details": json.dumps(details),
            "login_hint": SUBJECT, "dpop_jkt": key.jkt})
        if pushed.status_code != 201:
            raise BenchFailure(f"PAR: HTTP {pushed.status_code}: {pushed.text[:300]}")
        await sign_in(client, {}, "/")
        page = await client.get("/authorize", params={
            "client_id": AGENT[0], "request_uri": pushed.json()["request_uri"]})
        approved = await client.post("/consent", data={**hidden_inputs(page.text),
                                                       "decision": "approve"})
        code = query_of(approved.headers.get("location", "")).get("code")
        if code is None:
            raise BenchFailure(f"consent: HTTP {approved.status_code}: {approved.text[:300]}")
        token = await client.post("/token", headers={
            "Authorization": AGENT_BASIC, "DPoP": key.proof(f"{issuer}/token")}, data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier, "resource": resource})
        if token.status_code != 200:
            raise BenchFailure(f"/token: HTTP {token.status_code}: {token.text[:300]}")
        return token.json()["access_token"], key


@contextlib.contextmanager
def payments_upstream() -> Iterator[str]:
    """The demo payments MCP server as its own process; its endpoint URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mb-bench-payments-") as folder:
        log = Path(folder) / "payments.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "missionbound.demo.payments_mcp", "--port", str(port),
                 "--ledger", str(Path(folder) / "ledger.jsonl")],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={k: v for k, v in os.environ.items()
                     if not k.upper().startswith("MISSIONBOUND_")})
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                if process.poll() is not None:
                    raise BenchFailure(f"the payments server exited: {log.read_text()[-1000:]}")
                with contextlib.suppress(OSError), \
                        socket.create_connection(("127.0.0.1", port), timeout=1.0):
                    break
                if time.monotonic() > deadline:
                    raise BenchFailure("the payments server did not start")
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _samples_done(started: float, seconds: float, count: int) -> bool:
    elapsed = time.perf_counter() - started
    return count >= MAX_SAMPLES or (count >= MIN_SAMPLES and elapsed >= seconds)


async def _timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def _permitted_run(server: Server, upstream: str, token: str, key: DPoPKey, tool: str,
                         seconds: float) -> dict[str, Any]:
    from mcp import Client

    auth = DPoPAuth(token, key.key)
    via_gateway: list[float] = []
    direct: list[float] = []
    async with mission_mcp_client(server.base + MCP_PATH, auth) as gateway, \
            Client(upstream) as plain:
        async def through() -> None:
            result = await gateway.call_tool(tool, PERMITTED[tool]())
            if result.is_error:
                raise BenchFailure(f"the gateway answered a tool error: {result}")

        async def straight() -> None:
            result = await plain.call_tool(tool, PERMITTED[tool]())
            if result.is_error:
                raise BenchFailure(f"the upstream answered a tool error: {result}")

        for _ in range(WARM_UP):
            await through()
            await straight()
        started = time.perf_counter()
        while not _samples_done(started, seconds, len(via_gateway)):
            via_gateway.append(await _timed(through))
            direct.append(await _timed(straight))
        elapsed = time.perf_counter() - started
    gateway_sorted, direct_sorted = sorted(via_gateway), sorted(direct)
    extra: dict[str, Any] = {
        "direct_p50_us": percentile(direct_sorted, 0.5) * 1e6,
        "direct_p95_us": percentile(direct_sorted, 0.95) * 1e6,
    }
    extra["added_p50_us"] = percentile(gateway_sorted, 0.5) * 1e6 - extra["direct_p50_us"]
    extra["added_p95_us"] = percentile(gateway_sorted, 0.95) * 1e6 - extra["direct_p95_us"]
    extra["detail"] = (f"direct p50 {extra['direct_p50_us'] / 1000:.2f} ms, p95 "
                       f"{extra['direct_p95_us'] / 1000:.2f} ms; added by the gateway: p50 "
                       f"{extra['added_p50_us'] / 1000:.2f} ms, p95 "
                       f"{extra['added_p95_us'] / 1000:.2f} ms (budget p50 <= 3 ms); "
                       f"{len(via_gateway)} calls each")
    return latency_result(via_gateway, rate=len(via_gateway) / elapsed, cpu_s=None, **extra)


async def _denied_run(server: Server, token: str, key: DPoPKey,
                      seconds: float) -> dict[str, Any]:
    from mcp.shared.exceptions import MCPError

    auth = DPoPAuth(token, key.key)
    latencies: list[float] = []
    tool, arguments = DENIED_TOOL
    async with mission_mcp_client(server.base + MCP_PATH, auth) as gateway:
        async def refused() -> None:
            try:
                await gateway.call_tool(tool, arguments)
            except MCPError as exc:
                if exc.error.code != DENIED:
                    raise
                return
            raise BenchFailure(f"{tool} was not refused")

        for _ in range(WARM_UP):
            await refused()
        started = time.perf_counter()
        while not _samples_done(started, seconds, len(latencies)):
            latencies.append(await _timed(refused))
        elapsed = time.perf_counter() - started
    return latency_result(latencies, rate=len(latencies) / elapsed, cpu_s=None,
                          detail=f"{tool} (not granted): -32001 out_of_authority, "
                                 f"{len(latencies)} calls")


def permitted_bench(tool: str) -> Callable[[], contextlib.AbstractContextManager[
        Callable[[float], dict[str, Any]]]]:
    @contextlib.contextmanager
    def setup() -> Iterator[Callable[[float], dict[str, Any]]]:
        with served("sqlite") as server, payments_upstream() as upstream:
            token, key = asyncio.run(issue_for_gateway(server.base))
            yield lambda seconds: asyncio.run(
                _permitted_run(server, upstream, token, key, tool, seconds))
    return setup


@contextlib.contextmanager
def denied_setup() -> Iterator[Callable[[float], dict[str, Any]]]:
    with served("sqlite") as server:
        token, key = asyncio.run(issue_for_gateway(server.base))
        yield lambda seconds: asyncio.run(_denied_run(server, token, key, seconds))


def gateway_benches() -> list[Bench]:
    where = ("real `missionbound serve` (demo tenant, SQLite) /demo/mcp vs the payments "
             "server as its own process; mcp client over HTTP on 127.0.0.1, one call at a time")
    return [
        TimedBench("gateway.get_invoice permitted", permitted_bench("get_invoice"),
                   note=f"consequential_read through the gateway; {where}"),
        TimedBench("gateway.schedule_payment permitted", permitted_bench("schedule_payment"),
                   note=f"consequential_write: permit verified, execution reported; {where}"),
        TimedBench("gateway.denied", denied_setup,
                   note="a tool the Mission does not grant: the PDP's deny, -32001; " + where),
    ]


__all__ = ["gateway_benches", "issue_for_gateway", "payments_upstream"]
