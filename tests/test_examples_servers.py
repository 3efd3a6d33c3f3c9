"""The examples a newcomer copies to protect their own things, run as they are documented:
real processes, a real ``missionbound serve`` as AS and PDP, Missions approved by bob
through the forms, DPoP-bound tokens.

- ``examples/fastapi_api.py`` (the RS kit, FastAPI) at each tier, against the demo tenant:
  its resource identifier (``<issuer>/demo/erp``) is not the URL it answers at, so every
  permitted call also proves the kit checks DPoP ``htu`` against the URL the agent called.
- ``examples/mcp_server.py`` behind the demo gateway of ``serve`` (``--mcp-upstream
  <issuer>/demo/mcp=URL``, the quick way, with the agent SDK), and behind a ``missionbound
  gateway`` process with a tenant whose catalog names the gateway (the way for production),
  through the official ``mcp`` client.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest

from missionbound.client import MissionClient, ToolNotGranted
from missionbound.demo.approver import approve
from missionbound.demo.scenario import mission_intent
from tests.e2e.test_issuance_e2e import CLIENT
from tests.e2e.test_mcp_gateway_e2e import (
    DENIED,
    TIMEOUT,
    Granted,
    Process,
    approve_mission,
    call,
    own_tenant,
    refused,
    spawn,
    stop,
    structured,
    tool_names,
    wait_until_listening,
)
from tests.e2e_support import ServerHandle, free_port, running_server, server_environment

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIERS = ("B", "C", "D")


@pytest.fixture(scope="module")
def demo_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """``missionbound serve`` with the demo tenant, as ``make run`` starts it."""
    with running_server(tmp_path_factory.mktemp("examples-serve")) as server:
        yield server


def start_example(script: str, folder: Path, port: int) -> Process:
    """``python examples/<script>`` on ``port``, once it answers HTTP."""
    process = spawn([sys.executable, str(EXAMPLES / script), "--port", str(port)],
                    folder, f"{script}-{port}", server_environment(folder / "data"))
    try:
        wait_until_listening(process, f"http://127.0.0.1:{port}/")
    except BaseException:
        stop(process)
        raise
    return process


# -- the FastAPI example -----------------------------------------------------------------


def erp_details(resource: str) -> list[dict[str, Any]]:
    """Reads, and journal entries up to 500 USD each."""
    return [{"type": "mission_resource_access", "resource": resource,
             "actions": ["invoices.read"]},
            {"type": "mission_resource_access", "resource": resource,
             "actions": ["journal-entries.write"],
             "constraints": {"max_value": {"amount": "500.00", "currency": "USD"}}}]


def test_the_fastapi_example_enforces_the_mission_at_every_tier(
        demo_serve: ServerHandle, tmp_path: Path) -> None:
    issuer = demo_serve.base_url
    resource = f"{issuer}/demo/erp"  # the example's default: a name, not its URL
    ports = {tier: free_port() for tier in TIERS}
    started: list[Process] = []
    try:
        # All three at once (one start-up wait), each enforcing the same Mission resource.
        for tier, port in ports.items():
            started.append(spawn([sys.executable, str(EXAMPLES / "fastapi_api.py"),
                                  "--issuer", issuer, "--port", str(port), "--tier", tier],
                                 tmp_path, f"fastapi-{tier}", server_environment(tmp_path)))
        for process, port in zip(started, ports.values(), strict=True):
            wait_until_listening(process, f"http://127.0.0.1:{port}/")
        with httpx.Client(base_url=issuer, follow_redirects=False, timeout=TIMEOUT) as bob:
            granted = approve_mission(bob, issuer, resource, erp_details(resource))
        for tier, port in ports.items():
            check_fastapi_example(f"http://127.0.0.1:{port}", tier, resource, granted)
    finally:
        for process in started:
            stop(process)


def check_fastapi_example(api: str, tier: str, resource: str, granted: Granted) -> None:
    with httpx2.Client(base_url=api, auth=granted.auth(), timeout=TIMEOUT) as agent:
        # Permitted: the DPoP proofs name http://127.0.0.1:<port>/..., the token's audience
        # is <issuer>/demo/erp.
        listed = agent.get("/invoices")
        assert listed.status_code == 200, (tier, listed.text)
        assert {i["invoice_id"] for i in listed.json()["invoices"]} == {"inv-acme-1",
                                                                        "inv-acme-big"}
        one = agent.get("/invoices/inv-acme-1")
        assert (one.status_code, one.json()["amount"]) == (200, "120.00"), (tier, one.text)
        posted = agent.post("/journal-entries", json={
            "invoice_id": "inv-acme-1", "amount": "120.00", "currency": "USD"})
        assert posted.status_code == 201, (tier, posted.text)
        entry = posted.json()
        assert (entry["posted_by"], entry["mission_id"]) == ("alice", granted.mission_id)
        # Only RS-D asks the PDP: its permit names the Decision Evidence.
        assert (entry["evaluation_id"] or "").startswith("dec_") is (tier == "D"), entry
        # Over the Mission's 500 USD cap: refused by the kit, the route never runs.
        over = agent.post("/journal-entries", json={
            "invoice_id": "inv-acme-big", "amount": "900.00", "currency": "USD"})
        assert over.status_code == 403, (tier, over.text)
        assert (over.json()["error"], over.json()["reason"]) == ("insufficient_scope",
                                                                 "constraint_exceeded")
    # No token: 401 and a DPoP challenge pointing at the resource's RFC 9728 metadata.
    bare = httpx.get(f"{api}/invoices", timeout=TIMEOUT)
    assert bare.status_code == 401, (tier, bare.text)
    challenge = bare.headers["www-authenticate"]
    assert challenge.startswith("DPoP ") and "resource_metadata=" in challenge, challenge
    # The example serves that document too, naming its resource and the AS.
    metadata = httpx.get(f"{api}/.well-known/oauth-protected-resource/demo/erp",
                         timeout=TIMEOUT).json()
    assert metadata["resource"] == resource, metadata
    assert metadata["mission_enforcement_tier"] == f"RS-{tier}", metadata


# -- the MCP example behind the gateway ---------------------------------------------------


def test_the_mcp_example_behind_the_gateway_serves_only_the_mission(tmp_path: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="mcp-example-", dir=tmp_path))
    gateway_port, upstream_port = free_port(), free_port()
    resource = f"http://127.0.0.1:{gateway_port}/mcp"  # what agents call
    upstream = f"http://127.0.0.1:{upstream_port}/mcp"
    tenant_file, own = own_tenant(folder, resource)  # the demo tenant, catalog naming it
    server = start_example("mcp_server.py", folder, upstream_port)
    try:
        # As the example's docstring runs them: serve, the server, the gateway.
        with running_server(tmp_path, env={"MISSIONBOUND_TENANT_FILE": str(tenant_file)},
                            args=("--mcp-upstream", f"{resource}={upstream}")) as serve:
            gateway = spawn([sys.executable, "-m", "missionbound", "gateway",
                             "--resource", resource, "--upstream", upstream,
                             "--issuer", serve.base_url, "--pep-client-id", "demo-rs",
                             "--port", str(gateway_port)], folder, "gateway",
                            {**server_environment(folder / "data"),
                             "MISSIONBOUND_PEP_CLIENT_SECRET": own["demo-rs"]})
            try:
                wait_until_listening(gateway, f"http://127.0.0.1:{gateway_port}/")
                check_mcp_example(serve, resource, own)
            finally:
                stop(gateway)
    finally:
        stop(server)


def check_mcp_example(serve: ServerHandle, resource: str, own: dict[str, str]) -> None:
    with httpx.Client(base_url=serve.base_url, follow_redirects=False,
                      timeout=TIMEOUT) as bob:
        # A Mission granting get_invoice only: list_invoices stays outside it.
        granted = approve_mission(
            bob, serve.base_url, resource,
            [{"type": "mission_resource_access", "resource": resource,
              "actions": ["get_invoice"]}],
            client=(CLIENT[0], own[CLIENT[0]]), bob_password=own["bob"])
    auth = granted.auth()
    assert tool_names(resource, auth) == {"get_invoice"}
    invoice = structured(call(resource, auth, "get_invoice", {"invoice_id": "inv-globex-1"}))
    assert invoice == {"invoice_id": "inv-globex-1", "vendor": "globex", "amount": "200.00",
                       "currency": "USD"}
    # A tool the server has and the Mission does not grant, called by name.
    error = refused(resource, auth, "list_invoices", {})
    assert error.code == DENIED, error
    assert error.data["reason"] == "out_of_authority", error.data


def test_the_mcp_example_behind_the_demo_gateway_of_serve(tmp_path: Path) -> None:
    """The quick way: ``serve --mcp-upstream <issuer>/demo/mcp=<the example>``; an agent of
    the demo tenant calls ``/demo/mcp`` and reaches the example server, and the Mission's
    tools are bound to the example's definitions at approval."""
    folder = Path(tempfile.mkdtemp(prefix="mcp-demo-gateway-", dir=tmp_path))
    serve_port, upstream_port = free_port(), free_port()
    issuer = f"http://127.0.0.1:{serve_port}"  # the flag names the issuer's own resource
    server = start_example("mcp_server.py", folder, upstream_port)
    try:
        serve = spawn([sys.executable, "-m", "missionbound", "serve", "--host", "127.0.0.1",
                       "--port", str(serve_port), "--issuer", issuer, "--mcp-upstream",
                       f"{issuer}/demo/mcp=http://127.0.0.1:{upstream_port}/mcp"],
                      folder, "serve", server_environment(folder / "data"))
        try:
            wait_until_listening(serve, f"{issuer}/healthz")
            check_behind_the_demo_gateway(issuer)
        finally:
            stop(serve)
    finally:
        stop(server)


def check_behind_the_demo_gateway(issuer: str) -> None:
    with MissionClient(issuer, "demo-agent", client_secret="demo-agent-secret") as client:
        pending = client.submit_intent(mission_intent(issuer), login_hint="alice")
        mission = client.complete(pending, approve(pending.consent_url, "bob"))
        with mission.mcp(f"{issuer}/demo/mcp") as tools:
            # The Mission grants four tools; the example server has two of them.
            assert set(tools.list_tools()) == {"list_invoices", "get_invoice"}
            assert tools.call_tool("get_invoice", {"invoice_id": "inv-globex-1"})[
                "vendor"] == "globex"
            with pytest.raises(ToolNotGranted):
                tools.call_tool("send_remittance_email",
                                {"invoice_id": "inv-acme-1", "to": "ap@acme.example"})
