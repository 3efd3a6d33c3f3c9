"""The demo tenant's invoices (DESIGN.md "The demo tenant"), shared by the demo ERP API
(:mod:`missionbound.demo.erp`) and the demo payments MCP server
(:mod:`missionbound.demo.payments_mcp`), so both answer about the same invoices.

Amounts are decimal strings, never floats. Read-only: neither demo changes an invoice.
"""

INVOICES: dict[str, dict[str, str]] = {
    invoice["invoice_id"]: invoice for invoice in (
        {"invoice_id": "inv-acme-1", "vendor": "acme", "amount": "120.00", "currency": "USD"},
        {"invoice_id": "inv-acme-2", "vendor": "acme", "amount": "499.00", "currency": "USD"},
        {"invoice_id": "inv-acme-big", "vendor": "acme", "amount": "900.00", "currency": "USD"},
        {"invoice_id": "inv-globex-1", "vendor": "globex", "amount": "200.00",
         "currency": "USD"},
    )
}
