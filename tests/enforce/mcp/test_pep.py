"""The MCP PEP's own checks (missionbound/enforce/mcp/pep.py) with the real Mission PDP's
permits: a permit is spent once, a permit for other arguments is refused even when the
answer around it claims otherwise, and the in-process middleware (``protect``) enforces on an
``MCPServer`` the way the gateway does."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from missionbound.demo.payments_mcp import Ledger, build_payments_server
from missionbound.enforce.mcp import TOOL_REFUSED, McpPep, MemoryPermitStore, ToolRefused, protect
from missionbound.enforce.mcp.errors import InvalidToolArguments
from missionbound.enforce.mcp.pep import check_arguments
from missionbound.enforce.rs import MissionGuard, PdpClient, TrustedIssuer
from missionbound.mission.canonical import digest_json
from missionbound.protocol.access_tokens import AccessToken, verify_access_token
from missionbound.protocol.jwks import JwksCache
from tests.enforce.mcp.mcp_support import World, agent, build_world, evidence, new_grant, run
from tests.issuer.conftest import flow_database_url  # noqa: F401 (the shared fixture)
from tests.issuer.flow import ISSUER, MCP, Grant
from tests.issuer.governance_support import DEMO_RS

PAY = {"invoice_id": "inv-acme-1", "vendor": "acme", "amount": "120.00", "currency": "USD"}
PAY_OTHER = {"invoice_id": "inv-acme-2", "vendor": "acme", "amount": "499.00",
             "currency": "USD"}


@pytest.fixture(scope="module")
def world(flow_database_url: str,  # noqa: F811 (the imported fixture)
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from build_world(flow_database_url, tmp_path_factory.mktemp("mcp-pep"))


class ReplayingPdp(PdpClient):
    """The real PDP, whose first answer comes back for every later question (a replayed
    answer); ``rebind`` also rewrites its conditions' ``parameter_digest`` to the one asked
    about, so only the signed permit still says what was really permitted."""

    def __init__(self, *args: Any, rebind: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first: dict[str, Any] | None = None
        self.rebind = rebind

    def evaluate(self, request: Mapping[str, Any]) -> dict[str, Any]:
        if self.first is None:
            self.first = super().evaluate(request)
        answer = {**self.first, "context": dict(self.first["context"])}
        if self.rebind:
            asked = request["action"]["properties"]["parameter_digest"]
            answer["context"]["conditions"] = {**answer["context"]["conditions"],
                                               "parameter_digest": asked}
        return answer


def as_keys(world: World) -> JwksCache:
    return JwksCache(f"{ISSUER}/jwks", client=world.http)


def pep_with(world: World, pdp: PdpClient) -> McpPep:
    keys = as_keys(world)
    guard = MissionGuard(resource=MCP, issuers=[TrustedIssuer(ISSUER, keys=keys)],
                         dpop_required=True, public_base_url=ISSUER)
    return McpPep(resource=MCP, guard=guard, pdp=pdp, permit_keys=keys, permit_issuer=ISSUER)


def token_of(world: World, grant: Grant) -> AccessToken:
    return verify_access_token(grant.access_token, keys=as_keys(world), issuer=ISSUER,
                               audience=MCP, now=datetime.now(UTC))


def authorize(world: World, pep: McpPep, grant: Grant, arguments: dict[str, Any]) -> Any:
    async def work() -> Any:
        tools = await world.flow.app.state.demo_mcp.state.upstream.list_tools()
        return await pep.authorize_call(token_of(world, grant), "execute_wire_transfer",
                                        arguments, tools)
    return run(work)


def test_a_permit_is_acted_on_once(world: World) -> None:
    pdp = ReplayingPdp(ISSUER, client_id=DEMO_RS[0], client_secret=DEMO_RS[1],
                       http_client=world.http)
    pep = pep_with(world, pdp)
    granted = new_grant(world.flow)
    first = authorize(world, pep, granted, PAY)
    assert first.evaluation_id is not None and first.parameter_digest == digest_json(PAY)
    with pytest.raises(ToolRefused) as replayed:
        authorize(world, pep, granted, PAY)
    assert replayed.value.reason == "permit_consumed"
    assert replayed.value.evaluation_id == first.evaluation_id
    [suppressed] = evidence(world.flow, granted.mission_id, "execution")
    assert (suppressed["outcome"], suppressed["error"]) == ("suppressed", "permit_consumed")


def test_a_permit_for_other_arguments_is_refused(world: World) -> None:
    pdp = ReplayingPdp(ISSUER, client_id=DEMO_RS[0], client_secret=DEMO_RS[1],
                       http_client=world.http, rebind=True)
    pep = pep_with(world, pdp)
    granted = new_grant(world.flow)
    assert pdp.evaluate(authorize_body(world, granted, PAY))["decision"] is True
    with pytest.raises(ToolRefused) as refused:
        authorize(world, pep, granted, PAY_OTHER)
    assert refused.value.reason == "parameter_mismatch"
    [suppressed] = evidence(world.flow, granted.mission_id, "execution")
    assert (suppressed["outcome"], suppressed["error"]) == ("suppressed", "parameter_mismatch")


def authorize_body(world: World, grant: Grant, arguments: dict[str, Any]) -> dict[str, Any]:
    """The evaluation the PEP would send for ``arguments`` (to prime the replaying PDP)."""
    from missionbound.enforce.mcp.definitions import definition_of
    from missionbound.enforce.rs.pdp_client import mission_evaluation
    from missionbound.protocol.tool_manifest import CapabilitySource

    async def tools() -> Any:
        return await world.flow.app.state.demo_mcp.state.upstream.list_tools()

    [tool] = [t for t in run(tools) if t.name == "execute_wire_transfer"]
    source = CapabilitySource.for_tool(MCP, tool.name, definition_of(tool))
    return mission_evaluation(
        token=token_of(world, grant), action=tool.name, parameters=arguments,
        parameter_digest=digest_json(arguments),
        resource={"type": "mcp_tool", "id": tool.name, "properties": {"audience": MCP}},
        context={"capability_source": source.to_json()})


def test_the_single_use_store_refuses_a_second_use_and_when_full() -> None:
    store = MemoryPermitStore(max_entries=1)
    until = datetime.now(UTC)
    assert store.consume("dec_a", until) is True
    assert store.consume("dec_a", until) is False
    assert store.consume("dec_b", until) is False  # full of live permits: refused


@pytest.mark.parametrize("arguments", [
    {"invoice_id": "inv-1", "extra": "x"},
    {"invoice_id": 5},
    {},
])
def test_arguments_must_fit_the_schema_and_declare_nothing_new(
        arguments: dict[str, Any]) -> None:
    schema = {"type": "object", "properties": {"invoice_id": {"type": "string"}},
              "required": ["invoice_id"]}
    with pytest.raises(InvalidToolArguments):
        check_arguments(arguments, schema)
    check_arguments({"invoice_id": "inv-1"}, schema)


# -- the in-process middleware -----------------------------------------------------------------


def test_the_middleware_protects_an_mcp_server_the_same_way(world: World) -> None:
    ledger = Ledger()
    pdp = PdpClient(ISSUER, client_id=DEMO_RS[0], client_secret=DEMO_RS[1],
                    http_client=world.http)
    app = protect(build_payments_server(ledger), pep_with(world, pdp))
    granted = new_grant(world.flow)

    async def work() -> tuple[list[str], Any, MCPError, MCPError]:
        async with app.router.lifespan_context(app), \
                agent(app, granted, url=f"{ISSUER}/mcp") as client:
            listed = [tool.name for tool in (await client.list_tools()).tools]
            paid = await client.call_tool("execute_wire_transfer", PAY)
            with pytest.raises(MCPError) as over:
                await client.call_tool("execute_wire_transfer", {
                    "invoice_id": "inv-acme-big", "vendor": "acme", "amount": "900.00",
                    "currency": "USD"})
            with pytest.raises(MCPError) as hidden:
                await client.call_tool("send_remittance_email",
                                       {"invoice_id": "inv-acme-1", "to": "ap@acme.test"})
            with pytest.raises(MCPError) as ungoverned:
                await client.list_resources()
            assert ungoverned.value.data["reason"] == "method_not_governed"
            return listed, paid, over.value, hidden.value

    listed, paid, over, hidden = run(work)
    assert listed == ["list_invoices", "get_invoice", "schedule_payment",
                      "execute_wire_transfer"]
    assert not paid.is_error
    assert [(e.tool, e.arguments) for e in ledger.entries()] == [("execute_wire_transfer", PAY)]
    assert (over.code, over.data["reason"]) == (TOOL_REFUSED, "parameter_violation")
    assert (hidden.code, hidden.data["reason"]) == (TOOL_REFUSED, "out_of_authority")
    executed = evidence(world.flow, granted.mission_id, "execution")
    assert [e["outcome"] for e in executed] == ["completed"]


def test_a_tool_listed_twice_upstream_is_refused_without_a_decision(world: World) -> None:
    pdp = PdpClient(ISSUER, client_id=DEMO_RS[0], client_secret=DEMO_RS[1],
                    http_client=world.http)
    pep = pep_with(world, pdp)
    granted = new_grant(world.flow)

    async def work() -> Any:
        tools = await world.flow.app.state.demo_mcp.state.upstream.list_tools()
        [tool] = [t for t in tools if t.name == "execute_wire_transfer"]
        twin = tool.model_copy(update={"description": "Pay anyone."})
        return await pep.authorize_call(token_of(world, granted), tool.name, PAY,
                                        [*tools, twin])

    with pytest.raises(ToolRefused) as refused:
        run(work)
    assert refused.value.reason == "tool_definition_ambiguous"
    assert evidence(world.flow, granted.mission_id) == []
