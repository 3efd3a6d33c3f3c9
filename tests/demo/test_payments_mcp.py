"""The demo payments MCP server (missionbound/demo/payments_mcp.py) over real streamable HTTP:
uvicorn serves :func:`build_payments_app` on a loopback socket in a thread, and the official
``mcp`` client talks to it. Reads answer the demo invoices; a permitted effectful call adds
exactly one ledger entry (in memory and in the JSON-lines file); every argument that
contradicts the invoice is an MCP tool error (``isError``) and leaves the ledger unchanged.
One test runs the ``python -m`` entry point as a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from mcp import Client
from mcp_types import CallToolResult, TextContent

from missionbound.demo.invoices import INVOICES
from missionbound.demo.payments_mcp import MCP_PATH, Ledger, build_payments_app

TIMEOUT = 5.0  # seconds, for every wait on a server
TOMORROW = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()


@dataclass
class Served:
    url: str
    ledger: Ledger
    ledger_path: Path


def _loopback_socket() -> socket.socket:
    """A listening socket on a free loopback port, handed to uvicorn: no bind race."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    ledger_path = tmp_path_factory.mktemp("payments") / "ledger.jsonl"
    ledger = Ledger(ledger_path)
    sock = _loopback_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(
        build_payments_app(ledger), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield Served(f"http://127.0.0.1:{port}{MCP_PATH}", ledger, ledger_path)
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


async def _call(url: str, tool: str, arguments: dict[str, Any]) -> CallToolResult:
    async with Client(url, read_timeout_seconds=TIMEOUT) as client:
        return await client.call_tool(tool, arguments)


def call(url: str, tool: str, arguments: dict[str, Any]) -> CallToolResult:
    return asyncio.run(asyncio.wait_for(_call(url, tool, arguments), TIMEOUT))


def error_text(result: CallToolResult) -> str:
    assert result.is_error, result
    assert isinstance(result.content[0], TextContent)
    return result.content[0].text


def test_tools_list_shows_the_five_tools_with_their_input_schemas(served: Served) -> None:
    async def listing() -> dict[str, Any]:
        async with Client(served.url, read_timeout_seconds=TIMEOUT) as client:
            return {tool.name: tool for tool in (await client.list_tools()).tools}

    tools = asyncio.run(asyncio.wait_for(listing(), TIMEOUT))
    assert sorted(tools) == sorted(["list_invoices", "get_invoice", "schedule_payment",
                                    "execute_wire_transfer", "send_remittance_email"])
    expected = {  # tool -> (properties, required)
        "list_invoices": ({"vendor"}, set()),
        "get_invoice": ({"invoice_id"}, {"invoice_id"}),
        "schedule_payment": ({"invoice_id", "date"}, {"invoice_id", "date"}),
        "execute_wire_transfer": ({"invoice_id", "vendor", "amount", "currency"},
                                  {"invoice_id", "vendor", "amount", "currency"}),
        "send_remittance_email": ({"invoice_id", "to"}, {"invoice_id", "to"}),
    }
    for name, (properties, required) in expected.items():
        schema = tools[name].input_schema
        assert schema["type"] == "object"
        assert set(schema["properties"]) == properties, name
        assert set(schema.get("required", [])) == required, name
    # Amounts are decimal strings on the wire, never numbers.
    assert tools["execute_wire_transfer"].input_schema["properties"]["amount"]["type"] == "string"
    assert tools["list_invoices"].annotations.read_only_hint is True
    assert tools["execute_wire_transfer"].annotations.destructive_hint is True


def test_reads_answer_the_demo_invoices(served: Served) -> None:
    before = served.ledger.entries()
    for invoice_id, invoice in INVOICES.items():
        result = call(served.url, "get_invoice", {"invoice_id": invoice_id})
        assert not result.is_error
        assert result.structured_content == invoice
    everything = call(served.url, "list_invoices", {})
    assert everything.structured_content == {"invoices": list(INVOICES.values())}
    acme = call(served.url, "list_invoices", {"vendor": "acme"})
    assert acme.structured_content is not None
    assert [i["invoice_id"] for i in acme.structured_content["invoices"]] == [
        "inv-acme-1", "inv-acme-2", "inv-acme-big"]
    nobody = call(served.url, "list_invoices", {"vendor": "initech"})
    assert nobody.structured_content == {"invoices": []}
    assert "unknown invoice" in error_text(
        call(served.url, "get_invoice", {"invoice_id": "inv-nope"}))
    assert served.ledger.entries() == before  # reads execute nothing


@pytest.mark.parametrize(("tool", "arguments", "status"), [
    ("execute_wire_transfer",
     {"invoice_id": "inv-acme-1", "vendor": "acme", "amount": "120.00", "currency": "USD"},
     "executed"),
    ("schedule_payment", {"invoice_id": "inv-globex-1", "date": TOMORROW}, "scheduled"),
    ("send_remittance_email", {"invoice_id": "inv-acme-2", "to": "ap@acme.example"}, "sent"),
])
def test_an_allowed_effectful_call_adds_exactly_one_ledger_entry(
        served: Served, tool: str, arguments: dict[str, str], status: str) -> None:
    before = served.ledger.entries()
    result = call(served.url, tool, arguments)
    assert not result.is_error, result
    after = served.ledger.entries()
    assert after[:-1] == before and len(after) == len(before) + 1
    entry = after[-1]
    assert (entry.seq, entry.tool, entry.arguments) == (len(after), tool, arguments)
    assert result.structured_content == {
        "tool": tool, "invoice_id": arguments["invoice_id"], "status": status,
        "ledger_seq": entry.seq}
    # The file says the same, for a reader in another process.
    assert Ledger.read(served.ledger_path) == after


WIRE = {"invoice_id": "inv-acme-1", "vendor": "acme", "amount": "120.00", "currency": "USD"}


@pytest.mark.parametrize(("tool", "arguments", "message"), [
    ("execute_wire_transfer", {**WIRE, "invoice_id": "inv-nope"}, "unknown invoice"),
    ("execute_wire_transfer", {**WIRE, "vendor": "globex"}, "payable to acme"),
    ("execute_wire_transfer", {**WIRE, "amount": "119.99"}, "is for 120.00 USD"),
    ("execute_wire_transfer", {**WIRE, "amount": "900.00", "invoice_id": "inv-acme-2"},
     "is for 499.00 USD"),
    ("execute_wire_transfer", {**WIRE, "amount": "1.2e2"}, "not a decimal string"),
    ("execute_wire_transfer", {**WIRE, "amount": "-120.00"}, "not a decimal string"),
    ("execute_wire_transfer", {**WIRE, "currency": "EUR"}, "is in USD"),
    ("execute_wire_transfer", {**WIRE, "amount": 120}, "amount"),  # a number, not a string
    ("execute_wire_transfer", {"invoice_id": "inv-acme-1", "vendor": "acme"}, "amount"),
    ("schedule_payment", {"invoice_id": "inv-nope", "date": TOMORROW}, "unknown invoice"),
    ("schedule_payment", {"invoice_id": "inv-acme-1", "date": "2026-02-30"},
     "not a calendar date"),
    ("schedule_payment", {"invoice_id": "inv-acme-1", "date": "20991231"},
     "not a calendar date"),
    ("schedule_payment", {"invoice_id": "inv-acme-1", "date": "2000-01-03"}, "in the past"),
    ("send_remittance_email", {"invoice_id": "inv-nope", "to": "ap@acme.example"},
     "unknown invoice"),
    ("send_remittance_email", {"invoice_id": "inv-acme-1", "to": "not-an-address"},
     "not an e-mail address"),
    ("send_remittance_email",
     {"invoice_id": "inv-acme-1", "to": "ap@acme.example\r\nBcc: thief@evil.example"},
     "not an e-mail address"),
])
def test_a_contradiction_is_a_tool_error_and_executes_nothing(
        served: Served, tool: str, arguments: dict[str, Any], message: str) -> None:
    before = served.ledger.entries()
    assert message in error_text(call(served.url, tool, arguments))
    assert served.ledger.entries() == before
    assert Ledger.read(served.ledger_path) == before


def test_the_entry_point_serves_and_writes_its_ledger_file(tmp_path: Path) -> None:
    ledger_path = tmp_path / "ledger.jsonl"
    with _loopback_socket() as probe:
        port = probe.getsockname()[1]  # free now; the child binds it a moment later
    process = subprocess.Popen(
        [sys.executable, "-m", "missionbound.demo.payments_mcp", "--host", "127.0.0.1",
         "--port", str(port), "--ledger", str(ledger_path)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not listen"
                time.sleep(0.02)
        result = call(f"http://127.0.0.1:{port}{MCP_PATH}", "execute_wire_transfer", WIRE)
        assert not result.is_error, result
        [entry] = Ledger.read(ledger_path)
        assert (entry.seq, entry.tool, entry.arguments) == (1, "execute_wire_transfer", WIRE)
    finally:
        process.terminate()
        process.wait(TIMEOUT)
