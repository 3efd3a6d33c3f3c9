"""The Mission-aware MCP gateway end to end (issue 8, "Proof"), with real processes and the
official ``mcp`` client over streamable HTTP, authenticated by
:class:`missionbound.client.mcp_auth.DPoPAuth`.

In ``missionbound serve`` (the demo tenant mounts the gateway at ``<issuer>/demo/mcp`` in
front of the in-process demo payments server, its ledger a file in the data folder): bob
approves alice's Missions (PAR with DPoP, sign-in, consent: plain HTTP forms); the agent
sees only the granted tools, reads invoices, pays ``inv-acme-1`` under the cap (one ledger
entry, Decision and Execution Evidence). Refused, each with JSON-RPC ``-32001`` carrying the
PDP's ``reason`` and ``evaluation_id``, the ledger unchanged and the denial's Decision
Evidence in the database: a payment over the cap (``inv-acme-big``, 900.00), a tool the
Mission does not grant called by name (``send_remittance_email``), a vendor outside the
allow-list (``inv-globex-1`` under ``vendors: ["acme"]``), and any call after bob revoked the
Mission.

Then the gateway as its own process (``missionbound gateway``) in front of the payments
server as its own process (``python -m missionbound.demo.payments_mcp``), with ``serve`` as
AS and PDP: a permitted read and a denied call.

The refusal after a tool definition change needs an upstream that changes: it is tested
in-process with the gateway's own tests (tests/enforce/mcp/), not here.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import httpx2
import pytest
from joserfc.jwk import Key
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult
from sqlalchemy import select

from missionbound.client.dpop import create_dpop_proof
from missionbound.client.mcp_auth import DPoPAuth, mission_mcp_client
from missionbound.demo.invoices import INVOICES
from missionbound.demo.payments_mcp import MCP_PATH, Ledger, LedgerEntry
from missionbound.enforce.mcp import McpToolDefinitions
from missionbound.protocol.tool_manifest import tool_definition_digest, tool_id
from missionbound.runtime.compiler import PolicyArtifact
from missionbound.runtime.evidence import verify_evidence_chain
from missionbound.store.engine import create_engine_for
from missionbound.store.models import EvidenceRecord
from missionbound.store.models import PolicyArtifact as PolicyArtifactRecord
from missionbound.store.transactions import Store
from missionbound.web.app import DEMO_PAYMENTS_LEDGER
from tests.e2e.test_issuance_e2e import CLIENT, REDIRECT_URI, dpop_post, follow, pkce_pair
from tests.e2e_support import (
    ServerHandle,
    free_port,
    parse_form,
    running_server,
    server_environment,
)
from tests.issuer.conftest import flow_database_url  # noqa: F401 (the shared fixture)
from tests.protocol.proofs import generate_key

PURPOSE = "https://missionbound.dev/purposes/accounts-payable"
GATEWAY_PATH = "/demo/mcp"
TIMEOUT = 20.0  # seconds, a bound on every wait
DENIED = -32001  # the gateway's JSON-RPC error for a refused tools/call (docs/mcp.md)
PAY_ACME_1 = {"invoice_id": "inv-acme-1", "vendor": "acme", "amount": "120.00",
              "currency": "USD"}
T = TypeVar("T")


# -- a Mission, approved through the forms ---------------------------------------------------


@dataclass(frozen=True)
class Granted:
    mission_id: str
    access_token: str
    key: Key
    csrf_token: str  # bob's browser session, for the lifecycle endpoint

    def auth(self) -> DPoPAuth:
        return DPoPAuth(self.access_token, self.key)


def payments_details(resource: str, *, vendors: list[str]) -> list[dict[str, Any]]:
    """The MCP grant of these tests (RFC 9396): reads, and wire transfers up to 500 USD to
    ``vendors``; not ``schedule_payment``, not ``send_remittance_email``."""
    return [
        {"type": "mission_resource_access", "resource": resource,
         "actions": ["list_invoices", "get_invoice"]},
        {"type": "mission_resource_access", "resource": resource,
         "actions": ["execute_wire_transfer"],
         "constraints": {"max_value": {"amount": "500.00", "currency": "USD"},
                         "vendors": vendors}},
    ]


def approve_mission(http: httpx.Client, issuer: str, resource: str,
                    details: list[dict[str, Any]], *, client: tuple[str, str] = CLIENT,
                    bob_password: str = "bob") -> Granted:
    """PAR (DPoP, the intent for ``resource`` and ``details``), sign-in as bob (alice's
    approver), consent, code -> a DPoP-bound Mission token for ``resource``. ``client`` and
    ``bob_password`` default to the demo tenant's."""
    key = generate_key("ES256")
    verifier, challenge = pkce_pair()
    expiry = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    intent = {"goal": "Pay the approved Q3 invoices of acme, up to 500 USD each.",
              "resources": [resource], "purpose": PURPOSE, "mission_expiry": expiry,
              "context": {"max_derivations": 50}}
    par = dpop_post(http, issuer, "/par", key, {
        "response_type": "code", "client_id": client[0], "redirect_uri": REDIRECT_URI,
        "code_challenge": challenge, "code_challenge_method": "S256",
        "state": "st-" + secrets.token_urlsafe(8), "mission_intent": json.dumps(intent),
        "authorization_details": json.dumps(details), "login_hint": "alice",
        "dpop_jkt": key.thumbprint(),
    }, client)
    assert par.status_code == 201, par.text
    authorize = http.get("/authorize", params={"client_id": client[0],
                                               "request_uri": par.json()["request_uri"]})
    login_page = http.get(follow(http, authorize))
    action, _, hidden = parse_form(login_page.text)
    signed_in = http.post(action, data={**hidden, "username": "bob", "password": bob_password})
    consent_page = http.get(follow(http, signed_in))
    assert consent_page.status_code == 200, consent_page.text[:500]
    action, _, hidden = parse_form(consent_page.text)
    approved = http.post(action, data={**hidden, "decision": "approve"})
    code = parse_qs(urlsplit(follow(http, approved)).query)["code"][0]
    token = dpop_post(http, issuer, "/token", key, {
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier, "resource": resource,
    }, client)
    assert token.status_code == 200, token.text
    body = token.json()
    assert body["token_type"] == "DPoP"
    return Granted(body["mission_id"], body["access_token"], key, hidden["csrf_token"])


def revoke(http: httpx.Client, granted: Granted) -> None:
    """bob revokes the Mission through ``POST /mission/lifecycle`` (his session's CSRF token)."""
    answer = http.post("/mission/lifecycle", data={
        "mission": granted.mission_id, "operation": "revoke", "reason": "e2e",
        "nonce": "n-" + secrets.token_urlsafe(12), "csrf_token": granted.csrf_token})
    assert answer.status_code == 200, answer.text


# -- the agent, with the real mcp client ----------------------------------------------------


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, TIMEOUT))


def agent(url: str, auth: DPoPAuth) -> Client:
    """The agent's MCP client: a new connection (and HTTP client) per use, one ``auth``
    (token, key, the nonces it learnt) across them."""
    return mission_mcp_client(url, auth, read_timeout_seconds=TIMEOUT)


async def _tool_names(url: str, auth: DPoPAuth) -> set[str]:
    async with agent(url, auth) as client:
        return {tool.name for tool in (await client.list_tools()).tools}


def tool_names(url: str, auth: DPoPAuth) -> set[str]:
    return run(_tool_names(url, auth))


async def _call(url: str, auth: DPoPAuth, tool: str, arguments: dict[str, Any]
                ) -> CallToolResult:
    async with agent(url, auth) as client:
        return await client.call_tool(tool, arguments)


def call(url: str, auth: DPoPAuth, tool: str, arguments: dict[str, Any]) -> CallToolResult:
    result = run(_call(url, auth, tool, arguments))
    assert not result.is_error, result
    return result


def refused(url: str, auth: DPoPAuth, tool: str, arguments: dict[str, Any]) -> MCPError:
    """The JSON-RPC error the gateway answered a refused call with (the client raises it)."""
    try:
        result = run(_call(url, auth, tool, arguments))
    except MCPError as exc:
        return exc
    except BaseExceptionGroup as group:  # the SDK may wrap it in its task group's
        found = group.subgroup(MCPError)
        if found is None:
            raise
        error = found.exceptions[0]
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        assert isinstance(error, MCPError)
        return error
    pytest.fail(f"{tool} {arguments} was not refused: {result}")


def structured(result: CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None, result
    return dict(result.structured_content)


# -- what the server recorded -----------------------------------------------------------------


def evidence_chain(server: ServerHandle, mission_id: str) -> list[dict[str, Any]]:
    engine = create_engine_for(server.database_url)
    try:
        with Store(engine).read() as session, session.begin():
            return [dict(row.record) for row in session.scalars(
                select(EvidenceRecord).where(EvidenceRecord.chain_id == mission_id)
                .order_by(EvidenceRecord.sequence))]
    finally:
        engine.dispose()


def policy_artifact(server: ServerHandle, mission_id: str) -> dict[str, Any]:
    """The manifest of the policy artifact compiled when ``mission_id`` was approved (its
    only one: no amendment here)."""
    engine = create_engine_for(server.database_url)
    try:
        with Store(engine).read() as session, session.begin():
            stored = session.scalars(select(PolicyArtifactRecord.artifact).where(
                PolicyArtifactRecord.mission_id == mission_id)).all()
    finally:
        engine.dispose()
    assert len(stored) == 1, stored
    return PolicyArtifact.from_json(stored[0]).manifest


def decision_evidence(server: ServerHandle, mission_id: str, evaluation_id: str
                      ) -> dict[str, Any]:
    [record] = [record for record in evidence_chain(server, mission_id)
                if record.get("evaluation_id") == evaluation_id and "evidence_id" in record]
    return record


def assert_denied(error: MCPError, server: ServerHandle, granted: Granted, *, tool: str,
                  reason: str) -> None:
    """-32001 with the PDP's reason and evaluation_id, nothing else of the policy, and the
    denial's Decision Evidence in the database."""
    assert error.code == DENIED, error
    assert error.data == {"reason": reason, "evaluation_id": error.data["evaluation_id"]}
    # Never the policy: not the cap, not the allow-list.
    assert not any(word in error.message for word in ("500", "acme", "vendors", "max_value"))
    evaluation_id = error.data["evaluation_id"]
    assert isinstance(evaluation_id, str) and evaluation_id.startswith("dec_"), error.data
    record = decision_evidence(server, granted.mission_id, evaluation_id)
    assert (record["decision"], record["denial_reason"]) == ("deny", reason), record
    assert record["action"]["name"] == tool


def chain_verifies(server: ServerHandle, mission_id: str) -> None:
    chain = evidence_chain(server, mission_id)
    jwks = httpx.get(f"{server.base_url}/jwks", timeout=TIMEOUT).json()
    report = verify_evidence_chain(chain, jwks)
    assert report.ok and report.records_checked == len(chain), report


def ledger_file(server: ServerHandle) -> Path:
    """The demo payments server's ledger file in the server's data folder."""
    return server.data_dir / DEMO_PAYMENTS_LEDGER


def ledger_of(server: ServerHandle) -> list[LedgerEntry]:
    return Ledger.read(ledger_file(server))


# -- in serve: the demo tenant's gateway at /demo/mcp -------------------------------------


# The gateway trusts a Mission state it read for this long (RS-C): long enough that a
# revocation after a first call is always refused by the PDP in these tests, with Decision
# Evidence, however slow the machine. The refusal before any JSON-RPC (state read after the
# revocation) is tests/enforce/mcp/test_gateway.py's.
STATE_TRUSTED = {"MISSIONBOUND_DEMO_ERP_STALENESS_SECONDS": "600"}


@pytest.fixture(scope="module")
def server(flow_database_url: str,  # noqa: F811 (the imported fixture)
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """One demo-tenant server per backend for this module's tests (each makes its own
    Missions), on the shared empty database of tests/issuer/conftest.py: a SQLite file or
    a new PostgreSQL schema (skipped, saying why, when no PostgreSQL answers)."""
    with running_server(tmp_path_factory.mktemp("mcp-gateway"),
                        database_url=flow_database_url, env=STATE_TRUSTED) as handle:
        yield handle


@pytest.fixture
def http(server: ServerHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, follow_redirects=False,
                      timeout=TIMEOUT) as client:
        yield client


def test_an_agent_works_within_its_mission_and_is_refused_beyond_it(
        server: ServerHandle, http: httpx.Client) -> None:
    issuer = server.base_url
    mcp = issuer + GATEWAY_PATH
    granted = approve_mission(http, issuer, mcp, payments_details(mcp, vendors=["acme"]))
    auth = granted.auth()
    before = ledger_of(server)

    # Only the granted tools are listed (schedule_payment, send_remittance_email are not).
    assert tool_names(mcp, auth) == {"list_invoices", "get_invoice", "execute_wire_transfer"}
    # Reads.
    listed = structured(call(mcp, auth, "list_invoices", {}))
    assert {invoice["invoice_id"] for invoice in listed["invoices"]} == set(INVOICES)
    assert structured(call(mcp, auth, "get_invoice", {"invoice_id": "inv-acme-1"})) == \
        INVOICES["inv-acme-1"]
    assert ledger_of(server) == before  # reads execute nothing

    # A payment under the cap: executed once, with its evidence.
    receipt = structured(call(mcp, auth, "execute_wire_transfer", PAY_ACME_1))
    assert receipt["status"] == "executed"
    after_payment = ledger_of(server)
    [entry] = after_payment[len(before):]
    assert (entry.tool, entry.arguments) == ("execute_wire_transfer", PAY_ACME_1)
    assert entry.seq == receipt["ledger_seq"]
    chain = evidence_chain(server, granted.mission_id)
    permits = [record for record in chain if record.get("decision") == "permit"
               and record["action"]["name"] == "execute_wire_transfer"]
    [permit] = permits
    [executed] = [record for record in chain if "execution_id" in record
                  and record.get("evaluation_id") == permit["evaluation_id"]]
    assert executed["outcome"] == "completed"

    # Over the cap: 900.00 > 500.00.
    over = refused(mcp, auth, "execute_wire_transfer", {
        "invoice_id": "inv-acme-big", "vendor": "acme", "amount": "900.00",
        "currency": "USD"})
    assert_denied(over, server, granted, tool="execute_wire_transfer",
                  reason="parameter_violation")
    # A tool the Mission does not grant, called by name although it was not listed.
    ungranted = refused(mcp, auth, "send_remittance_email",
                        {"invoice_id": "inv-acme-1", "to": "ap@acme.example"})
    assert_denied(ungranted, server, granted, tool="send_remittance_email",
                  reason="out_of_authority")
    # A vendor outside the allow-list, with an amount under the cap.
    globex = refused(mcp, auth, "execute_wire_transfer", {
        "invoice_id": "inv-globex-1", "vendor": "globex", "amount": "200.00",
        "currency": "USD"})
    assert_denied(globex, server, granted, tool="execute_wire_transfer",
                  reason="parameter_violation")

    assert ledger_of(server) == after_payment  # no refusal executed anything
    chain_verifies(server, granted.mission_id)


def test_after_the_mission_is_revoked_every_call_is_refused(
        server: ServerHandle, http: httpx.Client) -> None:
    issuer = server.base_url
    mcp = issuer + GATEWAY_PATH
    granted = approve_mission(http, issuer, mcp, payments_details(mcp, vendors=["acme"]))
    auth = granted.auth()
    call(mcp, auth, "get_invoice", {"invoice_id": "inv-acme-2"})
    before = ledger_of(server)
    revoke(http, granted)

    for tool, arguments in (
            ("get_invoice", {"invoice_id": "inv-acme-2"}),
            ("execute_wire_transfer", {"invoice_id": "inv-acme-2", "vendor": "acme",
                                       "amount": "499.00", "currency": "USD"})):
        error = refused(mcp, auth, tool, arguments)
        assert_denied(error, server, granted, tool=tool, reason="mission_inactive")
    assert ledger_of(server) == before
    chain_verifies(server, granted.mission_id)


# -- the gateway as its own process -------------------------------------------------------


@dataclass(frozen=True)
class Process:
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def spawn(command: list[str], folder: Path, name: str, env: dict[str, str]) -> Process:
    log = folder / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Process(process, log)


def wait_until_listening(proc: Process, url: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert proc.process.poll() is None, f"exited early:\n{proc.output()[-3000:]}"
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    pytest.fail(f"{url} did not answer within {TIMEOUT} s:\n{proc.output()[-3000:]}")


def stop(proc: Process) -> None:
    if proc.process.poll() is None:
        proc.process.terminate()
        try:
            proc.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.process.kill()
            proc.process.wait(timeout=TIMEOUT)


@dataclass(frozen=True)
class Separate:
    serve: ServerHandle
    resource: str  # the gateway's
    ledger: Path  # the payments process's
    secrets: dict[str, str]  # the tenant's, by user or client name
    gateway: Process
    upstream: str  # the payments process's MCP endpoint, serve's mcp_upstreams for resource


@pytest.fixture
def separate(tmp_path: Path) -> Iterator[Separate]:
    """serve (AS + PDP) with a tenant whose catalog names the separate gateway's resource,
    the payments server, and ``missionbound gateway`` in front of it, requiring its DPoP
    nonces."""
    folder = Path(tempfile.mkdtemp(prefix="gateway-", dir=tmp_path))
    gateway_port, payments_port = free_port(), free_port()
    resource = f"http://127.0.0.1:{gateway_port}/mcp"
    upstream = f"http://127.0.0.1:{payments_port}{MCP_PATH}"
    tenant_file, own = own_tenant(folder, resource)
    ledger = folder / "ledger.jsonl"
    env = server_environment(folder / "data")
    # The payments server first: serve reads its tools/list at approval (mcp_upstreams).
    payments = spawn([sys.executable, "-m", "missionbound.demo.payments_mcp",
                      "--host", "127.0.0.1", "--port", str(payments_port),
                      "--ledger", str(ledger)], folder, "payments", env)
    try:
        wait_until_listening(payments, f"http://127.0.0.1:{payments_port}/")
        with running_server(tmp_path, env={
                "MISSIONBOUND_TENANT_FILE": str(tenant_file),
                "MISSIONBOUND_MCP_UPSTREAMS": json.dumps({resource: upstream})}) as serve:
            # The PDP credential from the environment, as an operator would pass it.
            gateway = spawn([sys.executable, "-m", "missionbound", "gateway",
                             "--resource", resource, "--upstream", upstream,
                             "--issuer", serve.base_url, "--pep-client-id", "demo-rs",
                             # The Mission's state read from Mission Status on every request.
                             "--mission-staleness", "0",
                             "--host", "127.0.0.1", "--port", str(gateway_port)],
                            folder, "gateway",
                            {**env, "MISSIONBOUND_PEP_CLIENT_SECRET": own["demo-rs"],
                             "MISSIONBOUND_GATEWAY_DPOP_NONCE_SECRET": secrets.token_urlsafe(24)})
            try:
                wait_until_listening(gateway, f"http://127.0.0.1:{gateway_port}/")
                yield Separate(serve, resource, ledger, own, gateway, upstream)
            finally:
                stop(gateway)
    finally:
        stop(payments)


def own_tenant(folder: Path, gateway_resource: str) -> tuple[Path, dict[str, str]]:
    """The demo tenant with the MCP resource at the separate gateway's URL and its own
    secrets (a configured tenant refuses the demo's): the file and {name: secret}."""
    from missionbound.tenant import DEMO_TENANT_FILE, demo_credentials

    text = Path(DEMO_TENANT_FILE).read_text().replace("{issuer}/demo/mcp", gateway_resource)
    own: dict[str, str] = {}
    for credential in demo_credentials():
        own[credential.name] = credential.secret + "-" + secrets.token_urlsafe(8)

    def replace(match: re.Match[str]) -> str:
        # A user's password or a client's secret: the entry's name is the table's last one.
        name = re.findall(r'(?:username|client_id) = "([^"]+)"', text[:match.start()])[-1]
        return f'{match.group(1)} = {json.dumps(own[name])}'
    text = re.sub(r'^(password|client_secret) *= *"[^"]*"', replace, text, flags=re.MULTILINE)
    path = folder / "tenant.toml"
    path.write_text(text)
    return path, own


def test_a_separate_gateway_process_in_front_of_a_separate_upstream(
        separate: Separate) -> None:
    serve, resource = separate.serve, separate.resource
    bob = httpx.Client(base_url=serve.base_url, follow_redirects=False, timeout=TIMEOUT)
    granted = approve_mission(
        bob, serve.base_url, resource, payments_details(resource, vendors=["acme"]),
        client=(CLIENT[0], separate.secrets[CLIENT[0]]),
        bob_password=separate.secrets["bob"])
    # serve read the payments process's tools/list at approval (mcp_upstreams): the compiled
    # policy binds every granted tool to the digest of its definition as listed there.
    listed = McpToolDefinitions({resource: separate.upstream}).definitions(resource)
    assert listed is not None
    bindings = policy_artifact(serve, granted.mission_id)["policy_ir"]["capability_bindings"]
    assert bindings == {resource: {
        name: {"tool_id": tool_id(resource, name),
               "source_digest": tool_definition_digest(listed[name])}
        for name in ("execute_wire_transfer", "get_invoice", "list_invoices")}}
    # The gateway wants its nonce in every proof (RFC 9449 section 9).
    proof = create_dpop_proof(granted.key, method="POST", url=resource,
                              access_token=granted.access_token)
    asked = httpx.post(resource, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                       headers={"Authorization": f"DPoP {granted.access_token}",
                                "DPoP": proof}, timeout=TIMEOUT)
    assert asked.status_code == 401 and asked.headers["dpop-nonce"]
    assert 'error="use_dpop_nonce"' in asked.headers["www-authenticate"]
    # DPoPAuth retries with it (one plain HTTP request here: the SDK's client would retry
    # on its own when its first request is refused), and keeps it for the next requests.
    auth = granted.auth()
    with httpx2.Client(auth=auth, timeout=TIMEOUT) as plain:
        listed = plain.post(resource, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                            headers={"Accept": "application/json, text/event-stream"})
    assert listed.status_code == 200, listed.text
    assert auth.nonce_for(resource) is not None
    assert tool_names(resource, auth) == {"list_invoices", "get_invoice",
                                          "execute_wire_transfer"}
    # A permitted read, through the gateway process to the payments process.
    assert structured(call(resource, auth, "get_invoice",
                           {"invoice_id": "inv-globex-1"})) == INVOICES["inv-globex-1"]
    # A denied call: the PDP in serve refuses, the payments process executes nothing.
    error = refused(resource, auth, "execute_wire_transfer", {
        "invoice_id": "inv-globex-1", "vendor": "globex", "amount": "200.00",
        "currency": "USD"})
    assert_denied(error, serve, granted, tool="execute_wire_transfer",
                  reason="parameter_violation")
    assert Ledger.read(separate.ledger) == []
    # Without a token: the RS kit's 401, pointing at the gateway's RFC 9728 metadata.
    bare = httpx.post(resource, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                      timeout=TIMEOUT)
    assert bare.status_code == 401
    metadata_url = resource.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
    assert f'resource_metadata="{metadata_url}"' in bare.headers["www-authenticate"]
    metadata = httpx.get(metadata_url, timeout=TIMEOUT).json()
    assert metadata["resource"] == resource
    assert metadata["authorization_servers"] == [serve.base_url]
    # bob revokes the Mission: the gateway reads Mission Status (RS-C, staleness 0 here) and
    # refuses the very next request, tools/list included, before any JSON-RPC.
    try:
        revoke(bob, granted)
    finally:
        bob.close()
    with httpx2.Client(auth=auth, timeout=TIMEOUT) as plain:
        after = plain.post(resource, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                           headers={"Accept": "application/json, text/event-stream"})
    assert after.status_code == 401, after.text
    assert after.json()["reason"] == "mission_inactive"
    assert Ledger.read(separate.ledger) == []
