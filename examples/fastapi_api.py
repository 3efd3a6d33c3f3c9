"""Protect your own FastAPI API with Missions: an invoices API behind the Resource Server kit.

    make run                                    # the AS + PDP, demo tenant, on :8000
    .venv/bin/python examples/fastapi_api.py    # this API on http://127.0.0.1:8001

Routes: ``GET /invoices``, ``GET /invoices/{id}`` (action ``invoices.read``) and ``POST
/journal-entries`` with JSON ``{"invoice_id", "amount", "currency"}`` (action
``journal-entries.write``; the Mission's ``max_value`` cap is checked against ``amount``).
An agent needs a DPoP-bound Mission token for the resource this API enforces
(docs/resource-servers.md); anything the Mission does not cover is refused (401/403).

The resource identifier is a *name* (RFC 8707), not where the API listens. The demo
tenant's catalog only knows ``<issuer>/demo/erp``, so by default this API enforces Missions
for ``http://127.0.0.1:8000/demo/erp`` while it answers on port 8001: ``public_base_url``
tells the kit which URL agents address, the one their DPoP proofs sign (``htu``). For your
own API, add a resource to your catalog and pass ``--resource``.

``--tier``: B checks the token alone; C also asks the AS whether the Mission is still
active (Mission Status); D (default) also asks the Mission PDP about every call.
C and D use the demo Resource Servers' credential ``demo-rs``.
"""

import argparse
import itertools
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from missionbound.enforce.rs import (
    MissionContext,
    MissionGuard,
    MissionStateView,
    MissionStatusSource,
    PdpClient,
    Tier,
    TrustedIssuer,
    install,
    json_field,
    money,
    require_mission,
)
from missionbound.protocol.jwks import JwksCache

# DEMO SECRET: the demo tenant's `demo-rs` client. Refused outside the demo tenant; give
# your API its own client at your AS and read the secret from the environment.
RS_CLIENT_ID, RS_CLIENT_SECRET = "demo-rs", "demo-rs-secret"

INVOICES = {  # your data
    "inv-acme-1": {"invoice_id": "inv-acme-1", "vendor": "acme", "amount": "120.00",
                   "currency": "USD"},
    "inv-acme-big": {"invoice_id": "inv-acme-big", "vendor": "acme", "amount": "900.00",
                     "currency": "USD"},
}


def build_app(issuer: str, resource: str, public_base_url: str, tier: str = "D") -> FastAPI:
    """The API enforcing Missions of ``issuer`` for ``resource``, reached at
    ``public_base_url``, at tier RS-``tier``."""
    keys = JwksCache(f"{issuer}/jwks")  # the AS's signing keys (fetched, cached, rotated)
    state = pdp = None
    if tier in ("C", "D"):  # is the Mission still active? (trusted for 5 s)
        state = MissionStateView(MissionStatusSource(
            issuer=issuer, status_endpoint=f"{issuer}/mission/status", keys=keys,
            audience=resource, client_id=RS_CLIENT_ID, client_secret=RS_CLIENT_SECRET),
            staleness_seconds=5)
    if tier == "D":  # the PDP decides every call and records Decision Evidence
        pdp = PdpClient(issuer, client_id=RS_CLIENT_ID, client_secret=RS_CLIENT_SECRET)
    guard = MissionGuard(
        resource=resource, issuers=[TrustedIssuer(issuer, keys=keys)],
        tier=Tier("RS-" + tier), state=state, pdp=pdp,
        labels=["finance"],  # the catalog's data classification of this resource
        dpop_required=True,  # sender-constrained tokens only (RFC 9449)
        public_base_url=public_base_url)  # the URL agents call (and DPoP proofs sign)

    app = FastAPI(title="Invoices API (Mission-bound example)")
    install(app, guard)  # OAuth-shaped refusals, RFC 9728 metadata, RS-D execution reports
    ReadInvoices = Annotated[MissionContext, Depends(require_mission(guard, "invoices.read"))]
    WriteEntries = Annotated[MissionContext, Depends(require_mission(
        guard, "journal-entries.write",
        # The catalog binds max_value to the amount: decimal strings, never floats.
        bind={"max_value": money(json_field("amount"), json_field("currency"))}))]
    journal: list[dict[str, Any]] = []
    entry_numbers = itertools.count(1)

    @app.get("/invoices")
    async def list_invoices(mission: ReadInvoices) -> dict[str, Any]:
        return {"invoices": list(INVOICES.values())}

    @app.get("/invoices/{invoice_id}")
    async def get_invoice(invoice_id: str, mission: ReadInvoices) -> JSONResponse:
        invoice = INVOICES.get(invoice_id)
        return JSONResponse(invoice or {"error": "not_found"},
                            status_code=200 if invoice else 404)

    @app.post("/journal-entries", status_code=201)
    async def post_journal_entry(mission: WriteEntries) -> JSONResponse:
        # Act on what was checked: at RS-D the parameters the PDP permitted, else the body
        # the guard read (no body model: FastAPI would parse it before the guard runs).
        body = (dict(mission.decision.parameters) if mission.decision is not None
                else mission.facts.json_body if mission.facts is not None else None)
        if not isinstance(body, dict) or body.get("invoice_id") not in INVOICES:
            return JSONResponse({"error": "invalid_request",
                                 "error_description": "unknown invoice_id"}, status_code=400)
        entry = {"entry_id": f"je-{next(entry_numbers)}", **body,
                 # Who, on whose authority: the evidence a Mission gives your API.
                 "posted_by": mission.subject, "acting_client": mission.acting_client,
                 "mission_id": mission.mission.id, "evaluation_id": mission.evaluation_id}
        journal.append(entry)
        return JSONResponse(entry, status_code=201)

    return app


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description="An invoices API protected by Missions.")
    cli.add_argument("--issuer", default="http://127.0.0.1:8000")
    cli.add_argument("--resource", help="the Mission resource identifier "
                     "(default: <issuer>/demo/erp)")
    cli.add_argument("--port", type=int, default=8001)
    cli.add_argument("--tier", choices=["B", "C", "D"], default="D")
    args = cli.parse_args()
    base_url = f"http://127.0.0.1:{args.port}"
    print(f"Invoices API on {base_url}, Missions of {args.issuer}, RS-{args.tier}")
    uvicorn.run(build_app(args.issuer, args.resource or f"{args.issuer}/demo/erp", base_url,
                          args.tier), host="127.0.0.1", port=args.port, log_level="warning")
