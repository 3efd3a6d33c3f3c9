"""Your own MCP server, with its tools governed by Missions through the MCP gateway.

    .venv/bin/python examples/mcp_server.py     # http://127.0.0.1:8002/mcp

Two read tools, ``list_invoices {vendor?}`` and ``get_invoice {invoice_id}`` (names the demo
catalog knows), on the official ``mcp`` SDK: streamable HTTP, stateless, JSON answers.
The server itself checks nobody: keep it where only the gateway can reach it. Agents talk to
the gateway, never to this server; the gateway shows each agent only the tools its Mission
grants, asks the PDP about every call and forwards only what was permitted.

Try it with the demo tenant: put this server behind the demo gateway of ``serve`` (the
server ``make run`` starts, with one flag more: stop ``make run`` first). ``--mcp-upstream``
names the gateway's resource and this server's URL; the AS then reads this server's tools
at each approval, so a tool changed afterwards is refused ``capability_drift``::

    .venv/bin/python examples/mcp_server.py
    .venv/bin/missionbound serve \\
        --mcp-upstream http://127.0.0.1:8000/demo/mcp=http://127.0.0.1:8002/mcp

An agent of the demo tenant (docs/agent-sdk.md) then reaches it at the gateway::

    with mission.mcp("http://127.0.0.1:8000/demo/mcp") as tools:
        tools.list_tools()                       # list_invoices, get_invoice
        tools.call_tool("get_invoice", {"invoice_id": "inv-globex-1"})

For real, the gateway is its own process whose ``--resource`` is the URL agents call (their
DPoP proofs are checked against it), named in the AS's catalog: copy
``missionbound/demo/tenant.toml``, replace every ``{issuer}/demo/mcp`` with
``http://127.0.0.1:8100/mcp`` and set your own passwords and secrets (a configured tenant
refuses the demo's)::

    MISSIONBOUND_TENANT_FILE=my-tenant.toml .venv/bin/missionbound serve \\
        --mcp-upstream http://127.0.0.1:8100/mcp=http://127.0.0.1:8002/mcp
    .venv/bin/python examples/mcp_server.py
    MISSIONBOUND_PEP_CLIENT_SECRET=<demo-rs's secret in my-tenant.toml> \\
      .venv/bin/missionbound gateway --resource http://127.0.0.1:8100/mcp \\
        --upstream http://127.0.0.1:8002/mcp --issuer http://127.0.0.1:8000 \\
        --pep-client-id demo-rs --port 8100     # --pdp defaults to the issuer

Either way a tool the Mission does not grant is hidden from ``tools/list`` and refused with
JSON-RPC ``-32001``.
"""

import argparse
from typing import Annotated

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field
from starlette.applications import Starlette

INVOICES = {  # your data
    "inv-acme-1": {"invoice_id": "inv-acme-1", "vendor": "acme", "amount": "120.00",
                   "currency": "USD"},
    "inv-globex-1": {"invoice_id": "inv-globex-1", "vendor": "globex", "amount": "200.00",
                     "currency": "USD"},
}


class Invoice(BaseModel):
    invoice_id: str
    vendor: str
    amount: str  # a decimal string: money never travels as a float
    currency: str


class InvoiceList(BaseModel):
    invoices: list[Invoice]


def build_app(host: str = "127.0.0.1") -> Starlette:
    """The server at ``/mcp``. Stateless with JSON answers: the gateway opens a short session
    per request, and any number of gateway replicas can call it."""
    server = MCPServer("invoices-example", instructions="Read the open invoices.")
    # Read-only hints: the agent's client may show them; the Mission's catalog, not the
    # annotation, is what classifies the tool.
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @server.tool(annotations=read_only)
    def list_invoices(
        vendor: Annotated[str | None, Field(description="Only this vendor's invoices.")] = None,
    ) -> InvoiceList:
        """List the open invoices, optionally of one vendor."""
        return InvoiceList(invoices=[Invoice.model_validate(invoice)
                                     for invoice in INVOICES.values()
                                     if vendor is None or invoice["vendor"] == vendor])

    @server.tool(annotations=read_only)
    def get_invoice(
        invoice_id: Annotated[str, Field(description="The invoice id, e.g. inv-acme-1.")],
    ) -> Invoice:
        """Read one invoice: its vendor, amount and currency."""
        if invoice_id not in INVOICES:
            raise ToolError(f"unknown invoice {invoice_id!r}")  # a tool error, isError
        return Invoice.model_validate(INVOICES[invoice_id])

    # On a loopback host the SDK also checks Host and Origin (DNS-rebinding protection).
    return server.streamable_http_app(streamable_http_path="/mcp", stateless_http=True,
                                      json_response=True, host=host)


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description="An MCP server to put behind the gateway.")
    cli.add_argument("--port", type=int, default=8002)
    args = cli.parse_args()
    print(f"MCP server on http://127.0.0.1:{args.port}/mcp (no authentication: keep it "
          "behind the gateway)")
    uvicorn.run(build_app(), host="127.0.0.1", port=args.port, log_level="warning")
