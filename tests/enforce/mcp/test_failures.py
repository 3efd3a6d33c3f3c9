"""The gateway when something around it fails or misbehaves (missionbound/enforce/mcp): a PDP
that permits without the signed permit, a PDP that cannot be reached, an upstream whose tool
schema cannot be checked, a tool name past the AuthZEN bound, made-up tool names in the
metrics. The real application, Mission PDP, evidence and ``mcp`` client of
tests/enforce/mcp/mcp_support.py; the PDPs here are the real ``PdpClient`` over HTTP, one
answer changed or its transport broken."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CallToolRequestParams,
    CallToolResult,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
    Tool,
)
from starlette.applications import Starlette

from missionbound.client.mcp_auth import DPoPAuth
from missionbound.enforce.mcp import (
    TOOL_REFUSED,
    McpPep,
    Upstream,
    build_gateway_app,
    mount_gateway,
)
from missionbound.enforce.rs import MissionGuard, PdpClient, TrustedIssuer
from missionbound.enforce.rs.pdp_client import PdpUnavailable
from missionbound.protocol.jwks import JwksCache
from tests.enforce.mcp.mcp_support import (
    TIMEOUT,
    World,
    build_world,
    evidence,
    new_grant,
    run,
)
from tests.issuer.conftest import flow_database_url  # noqa: F401 (the shared fixture)
from tests.issuer.flow import ISSUER, MCP, Grant
from tests.issuer.governance_support import DEMO_RS

PAY = {"invoice_id": "inv-acme-1", "vendor": "acme", "amount": "120.00", "currency": "USD"}
REMOTE_REF = "https://127.0.0.1:9/x"


@pytest.fixture(scope="module")
def world(flow_database_url: str,  # noqa: F811 (the imported fixture)
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from build_world(flow_database_url, tmp_path_factory.mktemp("mcp-failures"))


# -- PDPs ------------------------------------------------------------------------------------


class CountingPdp(PdpClient):
    """The real PDP over AuthZEN (as ``demo-rs``), counting the questions it is asked."""

    def __init__(self, world: World) -> None:
        super().__init__(ISSUER, client_id=DEMO_RS[0], client_secret=DEMO_RS[1],
                         http_client=world.http)
        self.asked = 0

    def evaluate(self, request: Mapping[str, Any]) -> dict[str, Any]:
        self.asked += 1
        return super().evaluate(request)


class PermitDroppingPdp(CountingPdp):
    """The real PDP's answer with its signed permit (``context.permit``) taken out: its
    conditions still bind the parameters (``parameter_digest``), and nothing proves them."""

    def evaluate(self, request: Mapping[str, Any]) -> dict[str, Any]:
        answer = super().evaluate(request)
        assert "permit" in answer.get("context", {}), answer  # there was one to drop
        context = {k: v for k, v in answer["context"].items() if k != "permit"}
        return {**answer, "context": context}


class UnreachablePdp(CountingPdp):
    """A PDP that gives no answer (its transport fails)."""

    def evaluate(self, request: Mapping[str, Any]) -> dict[str, Any]:
        self.asked += 1
        raise PdpUnavailable(f"POST {self.endpoint}: ConnectError")


# -- gateways --------------------------------------------------------------------------------


def gateway(world: World, pdp: PdpClient, upstream: Upstream | None = None) -> Starlette:
    """A gateway for the demo resource at ``/demo/mcp``, as another process would build it
    (tests/enforce/mcp/test_gateway.py ``another_replica``): its own guard and PEP, ``pdp``,
    and ``upstream`` (default: the demo payments server)."""
    keys = JwksCache(f"{ISSUER}/jwks", client=world.http)
    guard = MissionGuard(resource=MCP, issuers=[TrustedIssuer(ISSUER, keys=keys)],
                         dpop_required=True, public_base_url=ISSUER)
    if upstream is None:
        upstream = Upstream(world.flow.app.state.demo_payments_server)
    app = build_gateway_app(resource=MCP, upstream=upstream, guard=guard, pdp=pdp,
                            permit_keys=keys, permit_issuer=ISSUER)
    host = Starlette()
    mount_gateway(host, "/demo/mcp", app)
    host.state.gateway = app
    return host


def pep_of(host: Starlette) -> McpPep:
    pep = host.state.gateway.state.pep
    assert isinstance(pep, McpPep)
    return pep


@asynccontextmanager
async def agent_in(app: Any, grant: Grant, mode: str) -> AsyncIterator[Client]:
    """:func:`tests.enforce.mcp.mcp_support.agent` with the SDK client's protocol ``mode``
    (``"legacy"``: the initialize handshake)."""
    assert grant.dpop_key is not None
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=ISSUER,
                                  auth=DPoPAuth(grant.access_token, grant.dpop_key),
                                  timeout=TIMEOUT) as http, \
            Client(streamable_http_client(MCP, http_client=http), cache=None, mode=mode,
                   read_timeout_seconds=TIMEOUT) as client:
        yield client


def refused(app: Any, grant: Grant, tool: str, arguments: dict[str, Any],
            mode: str = "auto") -> MCPError:
    """The JSON-RPC error the call is answered with (a result instead fails the test, its
    content shown)."""
    async def work() -> MCPError:
        async with agent_in(app, grant, mode) as client:
            try:
                result = await client.call_tool(tool, arguments)
            except MCPError as error:
                return error
            pytest.fail(f"answered with a result, not a JSON-RPC error: {result}")
    return run(work)


# -- 1. a permit without its signed permit ---------------------------------------------------


def test_a_parameter_bound_permit_without_its_signed_permit_is_refused_and_suppressed(
        world: World) -> None:
    pdp = PermitDroppingPdp(world)
    app = gateway(world, pdp)
    granted = new_grant(world.flow)
    before = world.ledger.entries()
    error = refused(app, granted, "execute_wire_transfer", PAY)
    assert error.code == TOOL_REFUSED, error
    assert error.data["reason"] == "permit_missing"
    assert pdp.asked == 1
    assert world.ledger.entries() == before  # the upstream was never called
    [decided] = evidence(world.flow, granted.mission_id)
    assert decided["decision"] == "permit"
    assert error.data == {"reason": "permit_missing",
                          "evaluation_id": decided["evaluation_id"]}
    # The PDP hears the permit was not acted on: what it reserved is given back.
    [suppressed] = evidence(world.flow, granted.mission_id, "execution")
    assert suppressed["evaluation_id"] == decided["evaluation_id"]
    assert (suppressed["outcome"], suppressed["error"]) == ("suppressed",
                                                            "obligation_unfulfilled")


# -- 2. no PDP -------------------------------------------------------------------------------


def test_an_unreachable_pdp_refuses_the_call_without_an_evaluation(world: World) -> None:
    pdp = UnreachablePdp(world)
    app = gateway(world, pdp)
    granted = new_grant(world.flow)
    before = world.ledger.entries()
    error = refused(app, granted, "execute_wire_transfer", PAY)
    assert error.code == TOOL_REFUSED, error
    assert error.data == {"reason": "pdp_unreachable", "evaluation_id": None}
    assert "ConnectError" not in error.message and ISSUER not in error.message
    assert pdp.asked == 1
    assert world.ledger.entries() == before
    assert evidence(world.flow, granted.mission_id) == []
    assert pep_of(app).metrics.count("execute_wire_transfer", "refused",
                                     "pdp_unreachable") == 1


# -- 3. a schema that cannot be checked ------------------------------------------------------


class RemoteRefUpstream:
    """An in-process low-level MCP server listing ``get_invoice`` (a tool the demo Missions
    grant) whose ``inputSchema`` points at a remote ``$ref``; it counts the calls it gets."""

    def __init__(self) -> None:
        self.called = 0
        self.server: Server[Any] = Server("remote-ref-tools", on_list_tools=self.list_tools,
                                          on_call_tool=self.call_tool)

    async def list_tools(self, ctx: Any, params: PaginatedRequestParams | None
                         ) -> ListToolsResult:
        return ListToolsResult(tools=[Tool(
            name="get_invoice", description="Read one invoice.",
            input_schema={"type": "object",
                          "properties": {"invoice_id": {"$ref": REMOTE_REF}},
                          "required": ["invoice_id"]})])

    async def call_tool(self, ctx: Any, params: CallToolRequestParams) -> CallToolResult:
        self.called += 1
        return CallToolResult(content=[TextContent(type="text", text="an invoice")])


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_a_granted_tool_whose_schema_has_a_remote_ref_is_invalid_params_without_detail(
        world: World, mode: str) -> None:
    tools = RemoteRefUpstream()
    pdp = CountingPdp(world)
    app = gateway(world, pdp, Upstream(tools.server))
    granted = new_grant(world.flow)

    async def listed() -> list[str]:
        async with agent_in(app, granted, mode) as client:
            return [tool.name for tool in (await client.list_tools()).tools]

    assert run(listed) == ["get_invoice"]  # granted: its schema is checked
    error = refused(app, granted, "get_invoice", {"invoice_id": "inv-acme-1"}, mode=mode)
    assert error.code == INVALID_PARAMS, error
    assert error.message == "the tool's input schema cannot be checked"
    # Never the schema's address, nor the resolver's exception.
    for leak in ("127.0.0.1", REMOTE_REF, "Unresolvable", "Referencing", "Traceback"):
        assert leak not in error.message and leak not in str(error.data), error
    assert tools.called == 0 and pdp.asked == 0
    assert evidence(world.flow, granted.mission_id) == []


# -- 4. a tool name past the bound -----------------------------------------------------------


def test_a_tool_name_over_255_characters_is_invalid_params_and_nothing_is_decided(
        world: World) -> None:
    pdp = CountingPdp(world)
    app = gateway(world, pdp)
    granted = new_grant(world.flow)
    error = refused(app, granted, "x" * 256, {})
    assert error.code == INVALID_PARAMS, error
    assert "x" * 65 not in error.message  # the name is not echoed back whole
    assert pdp.asked == 0
    assert evidence(world.flow, granted.mission_id) == []


def test_a_tool_name_at_the_bound_is_refused_here_or_judged_never_pdp_unreachable(
        world: World) -> None:
    pdp = CountingPdp(world)
    app = gateway(world, pdp)
    granted = new_grant(world.flow)
    # At the bound (and just under it, where the PDP's own bounds on what the gateway
    # derives from the name, such as operation_ref "tools/<name>", bite first) the name is
    # either refused here, undecided, or the PDP's to judge: never "the PDP is unreachable"
    # for a request the PDP answered.
    for length in (249, 250, 255):
        asked = pdp.asked
        answer = refused(app, granted, "y" * length, {})
        if answer.code == INVALID_PARAMS:
            assert pdp.asked == asked, length
            continue
        assert answer.code == TOOL_REFUSED, (length, answer)
        assert answer.data["reason"] == "out_of_authority", (length, answer.data)
        decided = evidence(world.flow, granted.mission_id)[-1]
        assert decided["evaluation_id"] == answer.data["evaluation_id"]
    assert pdp.asked >= 1  # a name within every bound reaches the PDP


# -- 5. metrics of made-up names -------------------------------------------------------------


def test_metrics_count_a_tool_the_upstream_does_not_list_as_unlisted(world: World) -> None:
    metrics = world.flow.app.state.demo_mcp.state.metrics
    denied = metrics.count("_unlisted", "deny", "out_of_authority")
    invalid = metrics.count("_unlisted", "refused", "invalid_arguments")
    made_up = "exfiltrate_to_attacker_7f3a"
    granted = new_grant(world.flow)
    denial = refused(world.flow.app, granted, made_up, {})
    assert (denial.code, denial.data["reason"]) == (TOOL_REFUSED, "out_of_authority")
    floating = refused(world.flow.app, granted, made_up + "_float", {"amount": 1.5})
    assert floating.code == INVALID_PARAMS, floating
    assert metrics.count("_unlisted", "deny", "out_of_authority") == denied + 1
    assert metrics.count("_unlisted", "refused", "invalid_arguments") == invalid + 1
    assert metrics.count(made_up, "deny") == 0
    text = world.flow.client.get("/demo/mcp/metrics")
    assert text.status_code == 200
    assert made_up not in text.text
    assert (f'missionbound_mcp_tool_calls_total{{tool="_unlisted",decision="deny",'
            f'reason="out_of_authority"}} {denied + 1}') in text.text


def test_metrics_never_name_a_tool_called_while_the_upstream_is_unreachable(
        world: World) -> None:
    """Nothing is listed when the upstream cannot be reached: the name the agent sent is
    not a tool anyone knows, so it is no label either."""
    app = gateway(world, CountingPdp(world), Upstream("http://127.0.0.1:9/mcp",
                                                      timeout_seconds=2))
    granted = new_grant(world.flow)
    made_up = "never_listed_tool_c41e"
    error = refused(app, granted, made_up, {})
    assert error.code != TOOL_REFUSED, error  # the upstream failed: -32603
    metrics = pep_of(app).metrics
    assert made_up not in metrics.render()
    assert metrics.count("_unlisted", "error", "upstream_unavailable") == 1
