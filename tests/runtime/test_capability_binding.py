"""Tool-manifest binding end to end on the Authorization Server and PDP side (runtime-digest
5.8, PROFILE.md sections 13 and 14): real parts throughout.

- The definition sources (missionbound/enforce/mcp/definitions.py) read the real demo
  payments MCP server with the SDK's client: in process, and over streamable HTTP from
  uvicorn on a loopback port; both give what ``tools/list`` shows an ``mcp.Client``.
- Approval through the consent page (tests/issuer/flow.py, SQLite and PostgreSQL) records a
  binding per granted tool of a resource the source knows, in the compiled policy (so
  ``policy_version`` covers it); Missions without such a resource compile exactly as before;
  a source that cannot read the definitions fails the approval closed.
- The Mission PDP (``app.state.mission_pdp``, the app's database) and ``POST
  /access/v1/evaluation`` decide ``capability_drift`` when the tool's current definition is
  not the approved one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import anyio
import pytest
import uvicorn
from mcp import Client
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer
from mcp_types import ListToolsResult, PaginatedRequestParams, Tool
from sqlalchemy import select

from missionbound.demo.payments_mcp import (
    MCP_PATH,
    Ledger,
    build_payments_app,
    build_payments_server,
)
from missionbound.enforce.mcp.definitions import (
    MAX_PAGES,
    InProcessToolDefinitions,
    McpToolDefinitions,
)
from missionbound.mission.lifecycle import State
from missionbound.mission.record import MissionRecord, format_instant
from missionbound.protocol.tool_manifest import (
    CapabilitySource,
    ToolDefinitionsUnavailable,
    tool_definition_digest,
    tool_id,
)
from missionbound.runtime.approval import read_tool_definitions
from missionbound.runtime.compiler import PolicyArtifact, compile_policy
from missionbound.runtime.digests import parameter_digest
from missionbound.runtime.errors import AuthZenError
from missionbound.runtime.pdp import MissionPDP, PepCaller
from missionbound.store.models import EvidenceRecord
from missionbound.store.runtime import load_policy_artifact
from tests.issuer.conftest import flow, flow_database_url  # noqa: F401 (the shared fixtures)
from tests.issuer.flow import (
    ERP,
    ISSUER,
    MCP,
    Flow,
    audit_verifies,
    callback_query,
    mission_intent,
    snapshot,
)

TIMEOUT = 5.0
TOOLS = ("execute_wire_transfer", "get_invoice", "list_invoices", "schedule_payment",
         "send_remittance_email")
RS = PepCaller(client_id="demo-rs", audiences=frozenset({ERP, MCP}))
RS_BASIC = ("demo-rs", "demo-rs-secret")
WIRE = {"invoice_id": "inv-acme-1", "vendor": "acme", "amount": "120.00", "currency": "USD"}


# -- what an SDK client sees -----------------------------------------------------------------


async def _client_listing(target: MCPServer | str) -> dict[str, dict[str, Any]]:
    async with Client(target, read_timeout_seconds=TIMEOUT) as client:
        listed = await client.list_tools()
    assert listed.next_cursor is None
    return {tool.name: tool.model_dump(by_alias=True, exclude_none=True, mode="json")
            for tool in listed.tools}


def client_listing(target: MCPServer | str) -> dict[str, dict[str, Any]]:
    """``tools/list`` as the official client shows it, each tool dumped by alias, no nulls."""
    return anyio.run(_client_listing, target)


def digests(definitions: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: tool_definition_digest(tool) for name, tool in definitions.items()}


# -- the sources over the real demo server ------------------------------------------------


def test_in_process_definitions_are_what_tools_list_shows() -> None:
    server = build_payments_server(Ledger())
    source = InProcessToolDefinitions({MCP: server})
    definitions = source.definitions(MCP)
    assert definitions is not None and sorted(definitions) == list(TOOLS)
    assert definitions == client_listing(server)
    wire = definitions["execute_wire_transfer"]
    assert wire["name"] == "execute_wire_transfer"
    assert wire["inputSchema"]["required"] == ["invoice_id", "vendor", "amount", "currency"]
    assert wire["annotations"]["destructiveHint"] is True  # by alias, not destructive_hint
    assert source.definitions(ERP) is None  # a resource it does not know


def test_in_process_definitions_can_be_read_from_inside_an_event_loop() -> None:
    source = InProcessToolDefinitions({MCP: build_payments_server(Ledger())})

    async def inside() -> dict[str, dict[str, Any]] | None:
        return source.definitions(MCP)

    found = asyncio.run(inside())
    assert found is not None and sorted(found) == list(TOOLS)


def _loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    """The demo payments app served by uvicorn on a free loopback port, in a thread."""
    sock = _loopback_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_payments_app(Ledger()), log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}{MCP_PATH}"
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


def test_definitions_over_http_give_the_same_digests(upstream_url: str) -> None:
    remote = McpToolDefinitions({MCP: upstream_url}).definitions(MCP)
    assert remote is not None and sorted(remote) == list(TOOLS)
    assert remote == client_listing(upstream_url)
    local = InProcessToolDefinitions({MCP: build_payments_server(Ledger())}).definitions(MCP)
    assert local is not None
    assert digests(remote) == digests(local)
    assert McpToolDefinitions({MCP: upstream_url}).definitions(ERP) is None


def test_an_unreachable_upstream_is_unavailable() -> None:
    sock = _loopback_socket()  # bound, never listening: connections are refused
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}{MCP_PATH}"
        with pytest.raises(ToolDefinitionsUnavailable):
            McpToolDefinitions({MCP: url}).definitions(MCP)
    finally:
        sock.close()


def test_an_upstream_that_never_answers_times_out() -> None:
    sock = _loopback_socket()
    sock.listen(8)  # accepts connections (the kernel's backlog) but never answers
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}{MCP_PATH}"
        started = time.monotonic()
        with pytest.raises(ToolDefinitionsUnavailable, match=r"within 0\.5 s"):
            McpToolDefinitions({MCP: url}, timeout_seconds=0.5).definitions(MCP)
        assert time.monotonic() - started < 3
    finally:
        sock.close()


# -- approval --------------------------------------------------------------------------------


class Unavailable:
    """A source that knows the demo MCP resource but cannot read it now."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def definitions(self, resource: str) -> dict[str, dict[str, Any]] | None:
        self.asked.append(resource)
        if resource == MCP:
            raise ToolDefinitionsUnavailable("the upstream is down")
        return None


@pytest.fixture
def payments(flow: Flow) -> Iterator[MCPServer]:  # noqa: F811 (the shared fixture)
    """A demo payments server whose definitions the flow's issuer binds at approval."""
    server = build_payments_server(Ledger())
    wired = flow.issuer.tool_definitions  # the app's own (the demo gateway's), put back after
    flow.issuer.tool_definitions = InProcessToolDefinitions({MCP: server})
    try:
        yield server
    finally:
        flow.issuer.tool_definitions = wired


def stored_artifact(flow: Flow, mission: MissionRecord) -> PolicyArtifact:  # noqa: F811
    with flow.store.read() as session, session.begin():
        stored = load_policy_artifact(session, mission.mission_id, mission.policy_version)
    assert stored is not None
    return PolicyArtifact.from_json(stored)


def approved(flow: Flow, **push: Any) -> tuple[MissionRecord, MissionRecord]:  # noqa: F811
    """(pending, approved) of a Mission pushed and approved through the consent page."""
    pushed = flow.push_ok(**push)
    pending = flow.mission_of(pushed.request_uri)
    query = flow.approve(pushed.request_uri)
    assert "code" in query, query
    return pending, flow.mission(pending.mission_id)


def compiled_without_bindings(flow: Flow, pending: MissionRecord,  # noqa: F811
                              mission: MissionRecord) -> PolicyArtifact:
    return compile_policy(dataclasses.replace(pending, authority_hash=mission.authority_hash),
                          flow.issuer.tenant.catalog,
                          resource_policies=flow.issuer.settings.pdp_resource_policies)


def test_approval_binds_every_granted_tool_to_its_definition(
        flow: Flow, payments: MCPServer) -> None:  # noqa: F811
    pending, mission = approved(flow)
    artifact = stored_artifact(flow, mission)
    bindings = artifact.manifest["policy_ir"]["capability_bindings"]
    listed = client_listing(payments)
    granted = sorted({action for entry in mission.authority_set if entry["resource"] == MCP
                      for action in entry["actions"]})
    assert granted and set(bindings) == {MCP}
    assert bindings[MCP] == {name: {"tool_id": tool_id(MCP, name),
                                    "source_digest": tool_definition_digest(listed[name])}
                             for name in granted}
    # policy_version covers the bindings: the same Mission without them is another version,
    # and recompiling with the same definitions gives the stored artifact back.
    assert compiled_without_bindings(flow, pending, mission).policy_version != \
        mission.policy_version
    recompiled = compile_policy(
        dataclasses.replace(pending, authority_hash=mission.authority_hash),
        flow.issuer.tenant.catalog,
        resource_policies=flow.issuer.settings.pdp_resource_policies,
        tool_definitions={MCP: listed})
    assert recompiled == artifact
    audit_verifies(flow.engine)


def test_a_mission_without_a_bound_resource_keeps_its_policy_version(
        flow: Flow, payments: MCPServer) -> None:  # noqa: F811
    pending, mission = approved(flow, intent=mission_intent(flow.now(), resources=[ERP]))
    assert {entry["resource"] for entry in mission.authority_set} == {ERP}
    artifact = stored_artifact(flow, mission)
    assert "capability_bindings" not in artifact.manifest["policy_ir"]
    assert compiled_without_bindings(flow, pending, mission) == artifact


def test_without_a_source_nothing_is_bound(flow: Flow) -> None:  # noqa: F811
    wired = flow.issuer.tool_definitions
    flow.issuer.tool_definitions = None
    try:
        pending, mission = approved(flow)
    finally:
        flow.issuer.tool_definitions = wired
    assert any(entry["resource"] == MCP for entry in mission.authority_set)
    assert compiled_without_bindings(flow, pending, mission) == stored_artifact(flow, mission)


def test_unreadable_definitions_fail_the_approval_closed(flow: Flow) -> None:  # noqa: F811
    source = Unavailable()
    wired = flow.issuer.tool_definitions
    flow.issuer.tool_definitions = source
    try:
        pushed = flow.push_ok()
        browser, hidden = flow.consent_form(pushed.request_uri)
        before = snapshot(flow.engine)
        response = flow.decide(browser, hidden)
        assert response.status_code == 303, response.text
        query = callback_query(response)
        assert query["error"] == "temporarily_unavailable", query
        assert query["state"] == pushed.state and query["iss"] == ISSUER
        assert "code" not in query
        assert MCP in source.asked
        assert snapshot(flow.engine) == before, "a failed approval wrote something"
        assert flow.mission_of(pushed.request_uri).state is State.PENDING_APPROVAL
    finally:
        flow.issuer.tool_definitions = wired
    # The pushed request was not spent: once the definitions can be read, the same consent
    # form approves.
    flow.issuer.tool_definitions = InProcessToolDefinitions(
        {MCP: build_payments_server(Ledger())})
    try:
        again = flow.decide(browser, hidden)
        assert "code" in callback_query(again)
    finally:
        flow.issuer.tool_definitions = wired
    mission = flow.mission_of(pushed.request_uri)
    assert mission.state is State.ACTIVE
    assert "capability_bindings" in stored_artifact(flow, mission).manifest["policy_ir"]


def test_read_tool_definitions_asks_only_for_the_missions_resources() -> None:
    source = Unavailable()
    entries = [{"type": "mission_resource_access", "resource": ERP, "actions": ["x"]},
               {"type": "other", "resource": MCP}]
    assert read_tool_definitions(source, entries) == {}
    assert source.asked == [ERP]
    assert read_tool_definitions(None, [{"type": "mission_resource_access",
                                         "resource": MCP, "actions": ["x"]}]) == {}


# -- decisions -------------------------------------------------------------------------------


def evaluation(flow: Flow, mission: MissionRecord, action: str,  # noqa: F811
               parameters: dict[str, Any] | None, *, audience: str = MCP,
               source: dict[str, Any] | None = None) -> dict[str, Any]:
    """An AuthZEN evaluation request for ``mission``'s own agent at the server's time."""
    assert mission.subject is not None
    properties: dict[str, Any] = {}
    if parameters is not None:
        properties = {"parameters": parameters,
                      "parameter_digest": parameter_digest(parameters)}
    context: dict[str, Any] = {
        "mission": {"id": mission.mission_id, "issuer": mission.origin,
                    "authority_hash": mission.authority_hash},
        "actor": {"client_id": mission.client_id},
        "credential": {"issuer": ISSUER,
                       "expires_at": format_instant(flow.now() + timedelta(minutes=5))},
    }
    if source is not None:
        context["capability_source"] = source
    return {"subject": {"type": "user", "id": mission.subject.sub,
                        "properties": {"iss": mission.subject.iss}},
            "resource": {"type": "mcp_tool", "id": action, "properties": {"audience": audience}},
            "action": {"name": action, "properties": properties},
            "context": context}


def current_source(server: MCPServer, name: str) -> dict[str, Any]:
    """``capability_source`` for tool ``name`` as ``server`` lists it now."""
    listed = client_listing(server)
    return CapabilitySource.for_tool(MCP, name, listed[name]).to_json()


def pdp_of(flow: Flow) -> MissionPDP:  # noqa: F811
    pdp = flow.app.state.mission_pdp
    assert isinstance(pdp, MissionPDP)
    return pdp


def denial_reasons(flow: Flow, mission_id: str) -> list[str]:  # noqa: F811
    with flow.store.read() as session, session.begin():
        records = session.scalars(select(EvidenceRecord.record).where(
            EvidenceRecord.mission_id == mission_id).order_by(EvidenceRecord.id)).all()
    return [record.get("denial_reason") or "permit" for record in records]


def _changed_wire_transfer(server: MCPServer, description: str) -> None:
    """Replace the server's execute_wire_transfer by one whose description differs (same
    parameters, same behaviour): the upstream's operator edits the tool."""
    server.remove_tool("execute_wire_transfer")

    def execute_wire_transfer(invoice_id: str, vendor: str, amount: str,
                              currency: str) -> str:
        return "executed"

    server.add_tool(execute_wire_transfer, description=description)


def test_a_bound_tool_is_permitted_with_its_current_definition(
        flow: Flow, payments: MCPServer) -> None:  # noqa: F811
    _, mission = approved(flow)
    body = evaluation(flow, mission, "execute_wire_transfer", WIRE,
                      source=current_source(payments, "execute_wire_transfer"))
    answer = pdp_of(flow).evaluate(body, RS)
    assert answer["decision"] is True, answer
    assert "permit" in answer["context"]
    assert denial_reasons(flow, mission.mission_id) == ["permit"]


def test_a_changed_definition_is_capability_drift(flow: Flow, payments: MCPServer) -> None:  # noqa: F811
    _, mission = approved(flow)
    approved_source = current_source(payments, "execute_wire_transfer")
    # Another tool added upstream: no drift (the digest covers one tool).
    payments.add_tool(lambda note: note, name="add_note", description="Add a note.")
    body = evaluation(flow, mission, "execute_wire_transfer", WIRE,
                      source=current_source(payments, "execute_wire_transfer"))
    assert body["context"]["capability_source"] == approved_source
    assert pdp_of(flow).evaluate(body, RS)["decision"] is True
    # The tool itself edited upstream: the PEP presents the new digest, the PDP refuses.
    _changed_wire_transfer(payments, "Pay an invoice by wire transfer. Now also refunds.")
    drifted = evaluation(flow, mission, "execute_wire_transfer", WIRE,
                         source=current_source(payments, "execute_wire_transfer"))
    assert drifted["context"]["capability_source"]["source_digest"] != \
        approved_source["source_digest"]
    answer = pdp_of(flow).evaluate(drifted, RS)
    assert answer["decision"] is False
    assert answer["context"]["reason"] == "capability_drift"
    assert "policy" not in answer["context"]
    assert denial_reasons(flow, mission.mission_id) == ["permit", "capability_drift"]


@pytest.mark.parametrize("presented", ["missing", "other_tool_id", "no_digest"])
def test_a_bound_tool_needs_its_own_capability_source(
        flow: Flow, payments: MCPServer, presented: str) -> None:  # noqa: F811
    _, mission = approved(flow)
    good = current_source(payments, "execute_wire_transfer")
    source = {"missing": None,
              "other_tool_id": {**good, "tool_id": tool_id(MCP, "get_invoice")},
              "no_digest": {"tool_id": good["tool_id"]}}[presented]
    answer = pdp_of(flow).evaluate(
        evaluation(flow, mission, "execute_wire_transfer", WIRE, source=source), RS)
    assert (answer["decision"], answer["context"]["reason"]) == (False, "capability_drift")


def test_a_tool_not_listed_at_approval_is_drift_until_reapproved(
        flow: Flow, payments: MCPServer) -> None:  # noqa: F811
    definition = client_listing(payments)["schedule_payment"]
    payments.remove_tool("schedule_payment")
    _, mission = approved(flow)
    bindings = stored_artifact(flow, mission).manifest["policy_ir"]["capability_bindings"]
    assert bindings[MCP]["schedule_payment"] == {
        "tool_id": tool_id(MCP, "schedule_payment"), "source_digest": None}
    schedule = {"invoice_id": "inv-acme-1",
                "date": (flow.now().date() + timedelta(days=1)).isoformat()}
    source = CapabilitySource.for_tool(MCP, "schedule_payment", definition).to_json()
    answer = pdp_of(flow).evaluate(
        evaluation(flow, mission, "schedule_payment", schedule, source=source), RS)
    assert (answer["decision"], answer["context"]["reason"]) == (False, "capability_drift")


def test_an_unbound_resource_ignores_capability_source(
        flow: Flow, payments: MCPServer) -> None:  # noqa: F811
    _, mission = approved(flow)
    foreign = {"tool_id": "https://elsewhere.example/tools/x", "source_digest": "sha-256:x"}
    for source in (None, foreign):
        answer = pdp_of(flow).evaluate(
            evaluation(flow, mission, "invoices.read", None, audience=ERP, source=source), RS)
        assert answer["decision"] is True, answer


def evidence_total(flow: Flow) -> int:  # noqa: F811
    with flow.store.read() as session, session.begin():
        return len(session.scalars(select(EvidenceRecord.id)).all())


@pytest.mark.parametrize("source", [
    "tools/execute_wire_transfer", {"source_digest": "sha-256:x"}, {"tool_id": 7},
    {"tool_id": "t", "source_digest": None}, {"tool_id": "t" * 5000},
    {"tool_id": "t", "source_digest": "sha-256:" + "A" * 200}],
    ids=["string", "no-tool-id", "number", "null-digest", "long-tool-id", "long-digest"])
def test_a_malformed_capability_source_is_a_400_and_records_nothing(
        flow: Flow, payments: MCPServer, source: Any) -> None:  # noqa: F811
    _, mission = approved(flow)
    body = evaluation(flow, mission, "execute_wire_transfer", WIRE, source=source)
    before = evidence_total(flow)
    with pytest.raises(AuthZenError) as refused:
        pdp_of(flow).evaluate(body, RS)
    assert refused.value.status == 400
    assert "capability_source" in refused.value.message
    response = flow.client.post("/access/v1/evaluation", json=body, auth=RS_BASIC)
    assert response.status_code == 400, response.text
    assert evidence_total(flow) == before


def test_capability_drift_over_authzen_http(flow: Flow, payments: MCPServer) -> None:  # noqa: F811
    _, mission = approved(flow)
    good = current_source(payments, "execute_wire_transfer")
    permitted = flow.client.post(
        "/access/v1/evaluation", auth=RS_BASIC,
        json=evaluation(flow, mission, "execute_wire_transfer", WIRE, source=good))
    assert permitted.status_code == 200, permitted.text
    assert permitted.json()["decision"] is True
    _changed_wire_transfer(payments, "Pay an invoice by wire transfer, to any vendor.")
    response = flow.client.post(
        "/access/v1/evaluation", auth=RS_BASIC,
        json=evaluation(flow, mission, "execute_wire_transfer", WIRE,
                        source=current_source(payments, "execute_wire_transfer")))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["decision"] is False
    assert set(answer["context"]) == {"evaluation_id", "reason"}
    assert answer["context"]["reason"] == "capability_drift"
    assert denial_reasons(flow, mission.mission_id) == ["permit", "capability_drift"]



def _listing_server(pages: list[list[Tool]]) -> Server[Any]:
    """A low-level MCP server whose tools/list answers ``pages``, chained by cursor."""

    async def list_tools(ctx: Any, params: PaginatedRequestParams | None) -> ListToolsResult:
        index = int(params.cursor) if params is not None and params.cursor else 0
        following = str(index + 1) if index + 1 < len(pages) else None
        return ListToolsResult(tools=pages[index], next_cursor=following)

    return Server("listing", on_list_tools=list_tools)


def _plain(name: str, description: str = "a tool") -> Tool:
    return Tool(name=name, description=description, input_schema={"type": "object"})


def test_every_page_of_tools_list_is_read() -> None:
    server = _listing_server([[_plain("a")], [_plain("b")], [_plain("c")]])
    found = InProcessToolDefinitions({MCP: server}).definitions(MCP)
    assert found is not None and sorted(found) == ["a", "b", "c"]
    assert found["b"] == {"name": "b", "description": "a tool",
                          "inputSchema": {"type": "object"}}


def test_a_listing_naming_one_tool_twice_is_unavailable() -> None:
    server = _listing_server([[_plain("a"), _plain("a", "another a")]])
    with pytest.raises(ToolDefinitionsUnavailable, match="names 'a' twice"):
        InProcessToolDefinitions({MCP: server}).definitions(MCP)


def test_an_endless_cursor_is_unavailable() -> None:
    server = _listing_server([[_plain(f"t{i}")] for i in range(MAX_PAGES + 1)])
    with pytest.raises(ToolDefinitionsUnavailable, match="more than 32 pages"):
        InProcessToolDefinitions({MCP: server}).definitions(MCP)
