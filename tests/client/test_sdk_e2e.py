"""The agent SDK against a real ``missionbound serve`` (demo tenant, SQLite): every promise
of ``missionbound.client`` kept with real PAR, consent forms, DPoP, tokens, PDP, gateway and
local runner, in its sync and its async form.

bob approves through the real forms (``missionbound.demo.approver``); refusals are checked
by their typed errors and the facts they carry (reason, evaluation_id, mission_state).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from joserfc.jwk import ECKey

from missionbound.client import (
    ArgumentsChanged,
    AsyncMissionClient,
    CapabilityDrift,
    ConsentRejected,
    ConstraintExceeded,
    Mission,
    MissionClient,
    MissionClientError,
    MissionInactive,
    MissionRevoked,
    OAuthError,
    PendingMission,
    PepCredentials,
    PermitRefused,
    ToolNotGranted,
)
from missionbound.client.oauth import TokenSet
from missionbound.demo.approver import BrowserSession, approve
from tests.e2e_support import ServerHandle, free_port, running_server
from tests.issuer.test_client_authentication import REDIRECT_URI as KEY_REDIRECT
from tests.issuer.test_client_authentication import tenant_file

ROOT = Path(__file__).resolve().parents[2]
PEP = PepCredentials("demo-rs", "demo-rs-secret")  # DEMO SECRET
WIRE_UNDER_CAP = {"invoice_id": "inv-acme-1", "vendor": "acme", "amount": "120.00",
                  "currency": "USD"}
ENTRY = {"invoice_id": "inv-acme-2", "amount": "499.00", "currency": "USD"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    with running_server(tmp_path_factory.mktemp("sdk")) as handle:
        yield handle


def intent(issuer: str) -> dict[str, Any]:
    friday = (datetime.now(UTC) + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"goal": "Reconcile the Q3 invoices and pay approved vendors, up to 500 USD per "
                    "invoice, by Friday.",
            "resources": [f"{issuer}/demo/erp", f"{issuer}/demo/mcp"],
            "purpose": "https://missionbound.dev/purposes/accounts-payable",
            "mission_expiry": friday,
            "context": {"max_value": {"amount": "500.00", "currency": "USD"},
                        "vendors": ["acme"]}}


def agent(issuer: str) -> MissionClient:
    return MissionClient(issuer, "demo-agent", client_secret="demo-agent-secret")


def approved(client: MissionClient) -> Mission:
    pending = client.submit_intent(intent(client.issuer), login_hint="alice")
    return client.complete(pending, approve(pending.consent_url, "bob"))


def test_intent_consent_tokens_refresh_and_narrowing(server: ServerHandle) -> None:
    issuer = server.base_url
    with agent(issuer) as client:
        pending = client.submit_intent(intent(issuer), login_hint="alice")
        assert pending.consent_url.startswith(f"{issuer}/authorize?client_id=demo-agent&")
        mission = client.complete(pending, approve(pending.consent_url, "bob"))
        claims = mission.tokens.claims
        assert claims["mission"]["id"] == mission.mission_id
        assert claims["mission"]["origin"] == issuer
        assert claims["cnf"]["jkt"] == client.jkt  # bound to the agent's DPoP key
        assert mission.tokens.granted(f"{issuer}/demo/mcp") == [
            "execute_wire_transfer", "get_invoice", "list_invoices", "schedule_payment"]

        first = mission.tokens
        refreshed = mission.refresh()
        assert refreshed.refresh_token not in (None, first.refresh_token)  # rotated
        assert refreshed.access_token != first.access_token
        assert mission.tokens is refreshed

        narrowed = mission.narrow(f"{issuer}/demo/erp", scope=["invoices.read"])
        assert narrowed.claims["aud"] == f"{issuer}/demo/erp"
        assert [entry["actions"] for entry in narrowed.authorization_details] == [
            ["invoices.read"]]
        # The narrowed token comes alone: a refresh token would reach the whole Mission.
        assert narrowed.refresh_token is None
        # The Mission-wide token is kept, with the refresh token the narrowing rotated to.
        assert mission.tokens.refresh_token not in (None, refreshed.refresh_token)
        assert f"{issuer}/demo/mcp" in mission.tokens.claims["aud"]
        assert mission.refresh().access_token  # the grant is intact

        # A token about to expire is refreshed before use.
        stale = mission.tokens
        mission.aio.tokens = TokenSet(
            access_token=stale.access_token, token_type=stale.token_type,
            expires_at=datetime.now(UTC) + timedelta(seconds=5),
            refresh_token=stale.refresh_token, mission_id=stale.mission_id)
        assert mission.access_token() != stale.access_token

        # Narrowing never widens: a resource outside the Mission is refused.
        with pytest.raises(OAuthError) as wider:
            mission.narrow("https://elsewhere.example/api")
        assert wider.value.error == "invalid_target"


def test_an_authorization_details_proposal_is_what_gets_granted(server: ServerHandle) -> None:
    issuer = server.base_url
    erp = f"{issuer}/demo/erp"
    proposal = [{"type": "mission_resource_access", "resource": erp,
                 "actions": ["invoices.read"]}]
    with agent(issuer) as client:
        pending = client.submit_intent(intent(issuer), login_hint="alice",
                                       authorization_details=proposal)
        mission = client.complete(pending, approve(pending.consent_url, "bob"))
        granted = {entry["resource"]: entry["actions"]
                   for entry in mission.tokens.authorization_details}
        assert granted == {erp: ["invoices.read"]}
        with pytest.raises(ToolNotGranted):
            mission.request("POST", f"{erp}/journal-entries", json=ENTRY)


@pytest.mark.parametrize(("narrowing", "granted"), [
    ({"resources": ["/demo/erp"]}, {"/demo/erp": ["invoices.read", "journal-entries.write"]}),
    ({"scope": "invoices.read"}, {"/demo/erp": ["invoices.read"]}),
])
def test_the_first_token_can_ask_for_less_at_par(server: ServerHandle,
                                                 narrowing: dict[str, Any],
                                                 granted: dict[str, list[str]]) -> None:
    """``resources`` (RFC 8707) and ``scope`` pushed with the intent narrow the token the
    code gives, as at refresh."""
    issuer = server.base_url
    if "resources" in narrowing:
        narrowing = {"resources": [issuer + path for path in narrowing["resources"]]}
    with agent(issuer) as client:
        pending = client.submit_intent(intent(issuer), login_hint="alice", **narrowing)
        mission = client.complete(pending, approve(pending.consent_url, "bob"))
    actions: dict[str, list[str]] = {}
    for entry in mission.tokens.authorization_details:
        actions.setdefault(entry["resource"].removeprefix(issuer), []).extend(entry["actions"])
    assert actions == granted
    assert mission.tokens.claims["aud"] == f"{issuer}/demo/erp"


def test_a_bad_intent_and_a_rejected_consent_raise_what_happened(
        server: ServerHandle) -> None:
    with agent(server.base_url) as client:
        with pytest.raises(OAuthError) as bad:
            client.submit_intent('{"goal": "x", "goal": "y"}', login_hint="alice")
        assert (bad.value.error, bad.value.status) == ("invalid_request", 400)

        pending = client.submit_intent(intent(client.issuer), login_hint="alice")
        with BrowserSession("bob") as bob:
            callback = bob.reject(pending.consent_url)
        with pytest.raises(ConsentRejected):
            client.complete(pending, callback)
        client.close()
        client.close()  # closing twice is harmless

    with MissionClient(server.base_url, "demo-agent", client_secret="wrong") as impostor:
        with pytest.raises(OAuthError) as refused:
            impostor.submit_intent(intent(server.base_url), login_hint="alice")
        assert (refused.value.error, refused.value.status) == ("invalid_client", 401)


def test_the_gateway_session_ends_with_one_exception_that_says_why(
        server: ServerHandle) -> None:
    """Never an ExceptionGroup from the mcp client's task groups."""
    with agent(server.base_url) as client:
        mission = approved(client)
        with pytest.raises(KeyError, match="a bug of the caller's"), \
                mission.mcp(f"{server.base_url}/demo/mcp") as tools:
            tools.list_tools()
            raise KeyError("a bug of the caller's")
        with pytest.raises(MissionClientError, match="cannot reach the gateway"), \
                mission.mcp(f"http://127.0.0.1:{free_port()}/mcp") as tools:
            tools.list_tools()
        with pytest.raises(MissionClientError) as not_mcp, \
                mission.mcp(f"{server.base_url}/no-such-gateway") as tools:
            tools.list_tools()
        assert not isinstance(not_mcp.value, BaseExceptionGroup)


def test_a_cancelled_or_interrupted_wait_for_approval_ends_at_once(
        server: ServerHandle, tmp_path: Path) -> None:
    """The wait is bounded by the caller, not by its timeout: a cancelled async wait frees
    the port within a second or so, and Ctrl-C ends the example agent's wait."""
    redirect = f"http://127.0.0.1:{free_port()}/callback"

    async def cancelled() -> None:
        async with AsyncMissionClient(server.base_url, "demo-agent",
                                      client_secret="demo-agent-secret",
                                      redirect_uri=redirect) as client:
            pending = PendingMission(consent_url="", request_uri="", expires_in=60,
                                     state="s", redirect_uri=redirect, code_verifier="v")
            with anyio.move_on_after(0.5):
                await client.wait_for_approval(pending, timeout=120)

    started = time.monotonic()
    anyio.run(cancelled)
    with socket.socket() as again:  # the abandoned listener lets go of its port
        for _ in range(50):
            try:
                again.bind(("127.0.0.1", int(redirect.split(":")[2].split("/")[0])))
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("the cancelled listener still holds its port")
    assert time.monotonic() - started < 60  # far from the 120 s timeout

    env = {k: v for k, v in os.environ.items() if not k.startswith("MISSIONBOUND_")}
    agent_process = subprocess.Popen(
        [sys.executable, "-u", "examples/agent.py", "--issuer", server.base_url],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert agent_process.stdout is not None
        for line in agent_process.stdout:
            if "/authorize?" in line:
                break
        agent_process.send_signal(signal.SIGINT)
        assert agent_process.wait(30) != 0  # interrupted, within seconds, not 300
    finally:
        if agent_process.poll() is None:
            agent_process.kill()
            agent_process.wait(10)


def test_the_agent_waits_for_the_browser_on_its_loopback_redirect(
        server: ServerHandle) -> None:
    with agent(server.base_url) as client:
        pending = client.submit_intent(intent(client.issuer), login_hint="alice")
        got: list[Mission] = []
        waiting = threading.Thread(target=lambda: got.append(
            client.wait_for_approval(pending, timeout=20)))
        waiting.start()
        callback = approve(pending.consent_url, "bob")
        for _ in range(50):  # the browser follows the redirect to the listener
            try:
                assert httpx.get(callback, timeout=2).status_code == 200
                break
            except httpx.ConnectError:
                threading.Event().wait(0.1)
        waiting.join(20)
        assert got and got[0].mission_id.startswith("msn_")


def test_permits_tools_delegation_and_revocation(server: ServerHandle) -> None:
    issuer = server.base_url
    erp, mcp = f"{issuer}/demo/erp", f"{issuer}/demo/mcp"
    with agent(issuer) as client, MissionClient(
            issuer, "demo-subagent", client_secret="demo-subagent-secret") as sub:
        mission = approved(client)

        # An API protected by the RS kit.
        assert mission.request("GET", f"{erp}/invoices").status_code == 200
        with pytest.raises(ConstraintExceeded) as over:
            mission.request("POST", f"{erp}/journal-entries",
                            json={**ENTRY, "invoice_id": "inv-acme-big", "amount": "900.00"})
        assert over.value.status == 403

        # MCP tools through the gateway: only the grants listed; refusals typed.
        with mission.mcp(mcp) as tools:
            assert set(tools.list_tools()) == {"list_invoices", "get_invoice",
                                               "schedule_payment", "execute_wire_transfer"}
            assert tools.call_tool("get_invoice", {"invoice_id": "inv-acme-1"})[
                "amount"] == "120.00"
            assert tools.call_tool("execute_wire_transfer", WIRE_UNDER_CAP)[
                "status"] == "executed"
            with pytest.raises(ConstraintExceeded) as cap:
                tools.call_tool("execute_wire_transfer", {**WIRE_UNDER_CAP, "amount": "900.00",
                                                          "invoice_id": "inv-acme-big"})
            assert cap.value.reason == "parameter_violation"
            assert cap.value.evaluation_id.startswith("dec_")
            with pytest.raises(ToolNotGranted) as ungranted:
                tools.call_tool("send_remittance_email",
                                {"invoice_id": "inv-acme-1", "to": "ap@acme.example"})
            assert ungranted.value.reason == "out_of_authority"

        # Local tools: a permit for exactly these arguments, run once.
        book: list[dict[str, str]] = []
        local = mission.local_tools(erp, pep=PEP)
        local.register("journal-entries.write", lambda **entry: book.append(entry) or "posted")
        permit = local.permit("journal-entries.write", ENTRY)
        assert permit.token is not None and permit.conditions["use_limit"] == 1
        with pytest.raises(ArgumentsChanged) as changed:
            local.run("journal-entries.write", {**ENTRY, "amount": "4990.00"}, permit=permit)
        assert changed.value.evaluation_id == permit.evaluation_id
        assert book == []
        with pytest.raises(PermitRefused):  # the refused permit is spent
            local.run("journal-entries.write", ENTRY, permit=permit)
        assert local.run("journal-entries.write", ENTRY) == "posted"  # asks the PDP itself
        assert book == [ENTRY]
        with pytest.raises(ConstraintExceeded):
            local.permit("journal-entries.write", {**ENTRY, "amount": "900.00"})

        # Delegation: the sub-agent's own token, narrowed, naming it as the actor.
        delegated = mission.delegate(sub, resource=erp, scope=["invoices.read"])
        assert delegated.claims["act"]["sub"] == "demo-subagent"
        assert delegated.claims["cnf"]["jkt"] == sub.jkt != client.jkt
        assert sub.request("GET", f"{erp}/invoices",
                           access_token=delegated.access_token).status_code == 200
        with pytest.raises(ToolNotGranted):
            sub.request("POST", f"{erp}/journal-entries", json=ENTRY,
                        access_token=delegated.access_token)

        with BrowserSession("bob") as bob:
            bob.revoke(issuer, mission.mission_id, "sdk test")

        with pytest.raises(MissionRevoked) as refresh:
            mission.refresh()
        assert refresh.value.mission_state == "revoked"
        with pytest.raises(MissionRevoked):
            mission.delegate(sub, resource=erp, scope=["invoices.read"])
        with pytest.raises(MissionRevoked):
            mission.request("GET", f"{erp}/invoices")
        with pytest.raises(MissionInactive):
            local.permit("journal-entries.write", ENTRY)
        with pytest.raises(MissionInactive), mission.mcp(mcp) as tools:
            tools.call_tool("get_invoice", {"invoice_id": "inv-acme-1"})
        local.close()


def test_a_local_tool_bound_to_its_definition_at_approval(server: ServerHandle) -> None:
    """The demo binds every tool of /demo/mcp to its definition at approval: a local tool
    registered without the definition is refused capability_drift, one registered with
    the definition the gateway lists (the one the approver saw) gets its permit and runs."""
    issuer = server.base_url
    mcp = f"{issuer}/demo/mcp"
    arguments = {"invoice_id": "inv-acme-2", "date": "2026-12-01"}
    with agent(issuer) as client:
        mission = approved(client)
        with mission.mcp(mcp) as gateway:
            definitions = gateway.definitions()
        assert set(definitions) == {"list_invoices", "get_invoice", "schedule_payment",
                                    "execute_wire_transfer"}
        assert "inputSchema" in definitions["schedule_payment"]

        unbound = mission.local_tools(mcp, pep=PEP)
        unbound.register("schedule_payment", lambda **_: "scheduled")
        with pytest.raises(CapabilityDrift) as drift:
            unbound.run("schedule_payment", arguments)
        assert drift.value.evaluation_id.startswith("dec_")

        with mission.local_tools(mcp, pep=PEP) as bound:  # closed with the block
            bound.register("schedule_payment", lambda **_: "scheduled",
                           definition=definitions["schedule_payment"])
            assert bound.run("schedule_payment", arguments) == "scheduled"
        changed = {**definitions["schedule_payment"], "description": "something else"}
        other = mission.local_tools(mcp, pep=PEP)
        other.register("schedule_payment", lambda **_: "scheduled", definition=changed)
        with pytest.raises(CapabilityDrift):
            other.run("schedule_payment", arguments)
        for tools in (unbound, other):
            tools.close()


def test_a_client_authenticating_with_its_key(tmp_path: Path) -> None:
    """``private_key_jwt``: a client whose registered JWKS holds the public half of
    ``client_key`` gets its Mission with a fresh assertion per request (each is single use:
    PAR, the code, the refresh and each retry with the AS's DPoP nonce, required here, all
    authenticate)."""
    key = ECKey.generate_key("P-256", private=True)
    env = {"MISSIONBOUND_TENANT_FILE": str(tenant_file(tmp_path, key)),
           "MISSIONBOUND_DPOP_NONCE_REQUIRED": "true"}
    with running_server(tmp_path, env=env) as keyed, MissionClient(
            keyed.base_url, "key-agent", client_key=key, redirect_uri=KEY_REDIRECT) as client:
        issuer = keyed.base_url
        erp_only = {name: value for name, value in intent(issuer).items() if name != "purpose"}
        pending = client.submit_intent({**erp_only, "resources": [f"{issuer}/demo/erp"]},
                                       login_hint="carol")
        callback = approve(pending.consent_url, "carol", password="carol-password-not-demo")
        mission = client.complete(pending, callback)
        assert mission.tokens.claims["client_id"] == "key-agent"
        assert mission.refresh().refresh_token

        # Concurrent requests share the client's nonces: none is refused use_dpop_nonce.
        async def four_intents() -> list[PendingMission]:
            intent_text = json.dumps({**erp_only, "resources": [f"{issuer}/demo/erp"]})
            return list(await asyncio.gather(*(
                client.aio.submit_intent(intent_text, login_hint="carol") for _ in range(4))))

        assert len(client._wait(four_intents)) == 4
    with pytest.raises(ValueError, match="not both"):
        MissionClient("http://127.0.0.1:1", "x", client_secret="s", client_key=key)


def test_the_async_client_is_the_same_client(server: ServerHandle) -> None:
    issuer = server.base_url

    async def story() -> None:
        async with AsyncMissionClient(issuer, "demo-agent",
                                      client_secret="demo-agent-secret") as client:
            pending = await client.submit_intent(intent(issuer), login_hint="alice")
            callback = await asyncio.to_thread(approve, pending.consent_url, "bob")
            mission = await client.complete(pending, callback)
            response = await mission.request("GET", f"{issuer}/demo/erp/invoices")
            assert response.status_code == 200
            async with mission.mcp(f"{issuer}/demo/mcp") as tools:
                assert "get_invoice" in await tools.list_tools()
                with pytest.raises(ToolNotGranted):
                    await tools.call_tool("send_remittance_email",
                                          {"invoice_id": "inv-acme-1", "to": "x@acme.example"})
            permit = await mission.permit(f"{issuer}/demo/erp", "journal-entries.write",
                                          ENTRY, pep=PEP)
            assert permit.evaluation_id.startswith("dec_")

            # Ten tasks needing a fresh token at once: one refresh, one rotation.
            stale = mission.tokens
            mission.tokens = TokenSet(
                access_token=stale.access_token, token_type=stale.token_type,
                expires_at=datetime.now(UTC), refresh_token=stale.refresh_token,
                mission_id=stale.mission_id)
            tokens = await asyncio.gather(*(mission.access_token() for _ in range(10)))
            assert len(set(tokens)) == 1 and tokens[0] != stale.access_token
            # The rotated refresh token still works: no task spent an old one again (that
            # would have revoked the grant).
            assert (await mission.refresh()).access_token

    asyncio.run(asyncio.wait_for(story(), 60))

