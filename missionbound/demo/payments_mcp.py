"""The demo payments MCP server (DESIGN.md "The demo tenant"): the upstream that the Mission-aware
MCP gateway (issue 8, PROFILE.md section 13) fronts at ``<issuer>/demo/mcp``.

A real MCP server on the official ``mcp`` SDK (``MCPServer``, streamable HTTP at ``/mcp``),
usable on its own. Tools, over the demo invoices of :mod:`missionbound.demo.invoices`:

- ``list_invoices {vendor?}`` and ``get_invoice {invoice_id}``: reads;
- ``schedule_payment {invoice_id, date}``: a write (``date`` is ``YYYY-MM-DD``, today or later,
  UTC);
- ``execute_wire_transfer {invoice_id, vendor, amount, currency}``: irreversible (amounts are
  decimal strings, never numbers);
- ``send_remittance_email {invoice_id, to}``: an external commitment.

Arguments that contradict the invoice (an unknown invoice, a vendor, amount or currency that is
not the invoice's, a date that is not a calendar date or is in the past, an address that is not
an e-mail address) are refused as MCP tool errors (a ``tools/call`` result with ``isError``),
and nothing is executed. Every effectful call that was executed is appended, with its
arguments, to the :class:`Ledger`: the record of what actually happened, which the gateway's
tests compare with what the Mission allowed. The ledger does not refuse a second payment of the
same invoice: single use is the gateway's job (its permits), and a ledger that hid a replay
would hide a gateway bug.

NO AUTHENTICATION: anyone who can reach this server can pay. It is meant to listen on a
loopback address behind the gateway of issue 8, which authenticates the agent, asks the PDP and
verifies the permit before it forwards a call here. Never expose it directly.

Run it alone: ``python -m missionbound.demo.payments_mcp --host 127.0.0.1 --port 8765
[--ledger FILE]`` (``FILE`` gets one JSON object per executed call, so another process can read
it with :meth:`Ledger.read`).
"""

import argparse
import json
import re
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field
from starlette.applications import Starlette

from missionbound.demo.invoices import INVOICES

SERVER_NAME = "missionbound-demo-payments"
MCP_PATH = "/mcp"
EFFECTFUL_TOOLS = ("schedule_payment", "execute_wire_transfer", "send_remittance_email")

_AMOUNT = re.compile(r"(0|[1-9][0-9]{0,11})(\.[0-9]{1,2})?")  # as the demo ERP API accepts
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # RFC 3339 full-date only
# The WHATWG "valid e-mail address" (HTML Living Standard 4.10.5.1.5), with a dotted domain:
# no display names, no comments, no line breaks that could smuggle headers.
_EMAIL = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+")


@dataclass(frozen=True)
class LedgerEntry:
    """One executed effectful call: ``seq`` counts from 1 in execution order."""

    seq: int
    tool: str
    arguments: dict[str, str]
    executed_at: str  # RFC 3339, UTC

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> "LedgerEntry":
        raw = json.loads(line)
        return cls(seq=int(raw["seq"]), tool=str(raw["tool"]),
                   arguments={str(k): str(v) for k, v in raw["arguments"].items()},
                   executed_at=str(raw["executed_at"]))


class Ledger:
    """What the payments server actually executed, in order. Thread-safe (the SDK runs
    synchronous tools in worker threads).

    With ``path``, each entry is also appended to that JSON-lines file in a single write and
    flushed before the tool answers, so another process (a test, the gateway's benchmark)
    can read it with :meth:`read`; entries already in the file are loaded, and numbering goes
    on from them. A demo record, not a durable store: no fsync.
    """

    def __init__(self, path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._path = path
        if path is not None:
            # Like the SQLite file's folder (store/engine.py): a server on PostgreSQL may
            # never have created its data folder.
            path.parent.mkdir(parents=True, exist_ok=True)
        self._entries: list[LedgerEntry] = Ledger.read(path) if path is not None else []

    @staticmethod
    def read(path: Path) -> list[LedgerEntry]:
        """The entries in a ledger file; a missing file is an empty ledger. A last line
        without its newline (a write in progress) is not an entry yet."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [LedgerEntry.from_json(line) for line in text.split("\n")[:-1] if line]

    def record(self, tool: str, arguments: dict[str, str]) -> LedgerEntry:
        with self._lock:
            entry = LedgerEntry(
                seq=len(self._entries) + 1, tool=tool, arguments=dict(arguments),
                executed_at=datetime.now(UTC).isoformat(timespec="microseconds"))
            if self._path is not None:
                with self._path.open("a", encoding="utf-8") as file:
                    file.write(entry.to_json() + "\n")
            self._entries.append(entry)
            return entry

    def entries(self) -> list[LedgerEntry]:
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class Invoice(BaseModel):
    invoice_id: str
    vendor: str
    amount: str  # a decimal string
    currency: str


class InvoiceList(BaseModel):
    invoices: list[Invoice]


# The answer to an executed effectful call; ledger_seq names its ledger entry.
class Receipt(BaseModel):
    tool: str
    invoice_id: str
    status: str
    ledger_seq: int


InvoiceId = Annotated[str, Field(description="The invoice id, e.g. inv-acme-1.")]


def _invoice(invoice_id: str) -> Invoice:
    found = INVOICES.get(invoice_id)
    if found is None:
        raise ToolError(f"unknown invoice {invoice_id!r}")
    return Invoice.model_validate(found)


def _check_date(value: str) -> None:
    try:
        when = date.fromisoformat(value) if _DATE.fullmatch(value) else None
    except ValueError:
        when = None
    if when is None:
        raise ToolError(f"date {value!r} is not a calendar date (YYYY-MM-DD)")
    if when < datetime.now(UTC).date():
        raise ToolError(f"date {value} is in the past")


def _check_transfer(invoice: Invoice, vendor: str, amount: str, currency: str) -> None:
    if vendor != invoice.vendor:
        raise ToolError(f"invoice {invoice.invoice_id} is payable to {invoice.vendor}, "
                        f"not {vendor!r}")
    if not _AMOUNT.fullmatch(amount):
        raise ToolError(f"amount {amount!r} is not a decimal string such as \"120.00\"")
    # Compared as decimals, so "120.0" pays the 120.00 invoice; never as floats.
    if Decimal(amount) != Decimal(invoice.amount):
        raise ToolError(f"invoice {invoice.invoice_id} is for {invoice.amount} "
                        f"{invoice.currency}, not {amount}")
    if currency != invoice.currency:
        raise ToolError(f"invoice {invoice.invoice_id} is in {invoice.currency}, "
                        f"not {currency!r}")


def build_payments_server(ledger: Ledger) -> MCPServer:
    """The payments MCP server, recording executed effectful calls in ``ledger``."""
    server: MCPServer = MCPServer(
        SERVER_NAME, title="Demo payments", version="0.1.0",
        instructions="Pay the demo tenant's invoices. Amounts are decimal strings.")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    def list_invoices(
        vendor: Annotated[str | None, Field(description="Only this vendor's invoices.")] = None,
    ) -> InvoiceList:
        """List the open invoices, optionally of one vendor."""
        return InvoiceList(invoices=[_invoice(invoice_id) for invoice_id, invoice
                                     in INVOICES.items()
                                     if vendor is None or invoice["vendor"] == vendor])

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    def get_invoice(invoice_id: InvoiceId) -> Invoice:
        """Read one invoice: its vendor, amount and currency."""
        return _invoice(invoice_id)

    @server.tool(annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=False,
        open_world_hint=False))
    def schedule_payment(
        invoice_id: InvoiceId,
        date: Annotated[str, Field(description="Payment date, YYYY-MM-DD, today or later.")],
    ) -> Receipt:
        """Schedule the payment of an invoice on a date."""
        _invoice(invoice_id)
        _check_date(date)
        entry = ledger.record("schedule_payment", {"invoice_id": invoice_id, "date": date})
        return Receipt(tool=entry.tool, invoice_id=invoice_id, status="scheduled",
                       ledger_seq=entry.seq)

    @server.tool(annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=True, idempotent_hint=False,
        open_world_hint=True))
    def execute_wire_transfer(
        invoice_id: InvoiceId,
        vendor: Annotated[str, Field(description="The payee: the invoice's vendor.")],
        amount: Annotated[str, Field(description="The invoice's amount, a decimal string.")],
        currency: Annotated[str, Field(description="The invoice's ISO 4217 currency code.")],
    ) -> Receipt:
        """Pay an invoice by wire transfer, now. Irreversible."""
        _check_transfer(_invoice(invoice_id), vendor, amount, currency)
        entry = ledger.record("execute_wire_transfer", {
            "invoice_id": invoice_id, "vendor": vendor, "amount": amount, "currency": currency})
        return Receipt(tool=entry.tool, invoice_id=invoice_id, status="executed",
                       ledger_seq=entry.seq)

    @server.tool(annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=False,
        open_world_hint=True))
    def send_remittance_email(
        invoice_id: InvoiceId,
        to: Annotated[str, Field(description="The recipient's e-mail address.")],
    ) -> Receipt:
        """E-mail the remittance advice of an invoice to the vendor."""
        _invoice(invoice_id)
        if len(to) > 254 or not _EMAIL.fullmatch(to):
            raise ToolError(f"{to!r} is not an e-mail address")
        entry = ledger.record("send_remittance_email", {"invoice_id": invoice_id, "to": to})
        return Receipt(tool=entry.tool, invoice_id=invoice_id, status="sent",
                       ledger_seq=entry.seq)

    return server


def build_payments_app(ledger: Ledger, *, host: str = "127.0.0.1") -> Starlette:
    """The server as an ASGI app: streamable HTTP at ``/mcp``, stateless with JSON responses
    (no session holds anything; the ledger is the only state), so any number of clients or
    gateway replicas can call it. ``host`` is where it listens: on a loopback address the SDK
    turns on its DNS-rebinding protection (``Host`` and ``Origin`` must be loopback).
    Serve it with its lifespan (uvicorn does), which runs the SDK's session manager.
    """
    return build_payments_server(ledger).streamable_http_app(
        streamable_http_path=MCP_PATH, stateless_http=True, json_response=True, host=host)


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="python -m missionbound.demo.payments_mcp",
        description="The demo payments MCP server (no authentication: keep it behind the "
                    "gateway, on a loopback address).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--ledger", type=Path, default=None,
                        help="append executed calls to this JSON-lines file")
    args = parser.parse_args(argv)
    app = build_payments_app(Ledger(args.ledger), host=args.host)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

