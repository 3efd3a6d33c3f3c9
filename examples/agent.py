"""A minimal agent on the missionbound SDK, against `make run` (http://127.0.0.1:8000).

    .venv/bin/python examples/agent.py                    # approve in your browser as bob/bob
    .venv/bin/python examples/agent.py --approve-as bob   # a script signs in and approves

It asks alice's Mission, reads invoices, pays one under the 500 USD cap through the MCP
gateway, is refused one over it, then keeps working until the Mission is revoked.
"""

import argparse
import os
import time
from datetime import UTC, datetime, timedelta

from missionbound.client import ConstraintExceeded, MissionClient, MissionInactive
from missionbound.demo.approver import approve

parser = argparse.ArgumentParser()
parser.add_argument("--issuer", default=os.environ.get("MISSIONBOUND_ISSUER",
                                                      "http://127.0.0.1:8000"))
parser.add_argument("--approve-as", metavar="USER", help="approve by script, no browser")
parser.add_argument("--once", action="store_true", help="stop after the work")
args = parser.parse_args()
issuer = args.issuer
intent = {
    "goal": "Reconcile the Q3 invoices and pay approved vendors, up to 500 USD per invoice, "
            "by Friday.",
    "resources": [f"{issuer}/demo/erp", f"{issuer}/demo/mcp"],
    "purpose": "https://missionbound.dev/purposes/accounts-payable",
    "mission_expiry": f"{datetime.now(UTC) + timedelta(days=3):%Y-%m-%dT%H:%M:%SZ}",
    "context": {"max_value": {"amount": "500.00", "currency": "USD"}, "vendors": ["acme"]},
}
wire = {"invoice_id": "inv-acme-1", "vendor": "acme", "amount": "120.00", "currency": "USD"}

with MissionClient(issuer, "demo-agent", client_secret="demo-agent-secret") as client:
    pending = client.submit_intent(intent, login_hint="alice")  # PAR + PKCE + DPoP
    if args.approve_as:
        mission = client.complete(pending, approve(pending.consent_url, args.approve_as))
    else:
        print(f"Approve as bob (password bob):\n  {pending.consent_url}")
        mission = client.wait_for_approval(pending)
    print(f"Mission {mission.mission_id} is active")
    invoices = mission.request("GET", f"{issuer}/demo/erp/invoices").json()["invoices"]
    print(f"read {len(invoices)} invoices")
    with mission.mcp(f"{issuer}/demo/mcp") as tools:
        print("paid:", tools.call_tool("execute_wire_transfer", wire))
        try:
            tools.call_tool("execute_wire_transfer", {**wire, "invoice_id": "inv-acme-big",
                                                      "amount": "900.00"})
        except ConstraintExceeded as refused:
            print(f"refused: {refused.reason}, evidence {refused.evaluation_id}")
    print(f"revoke it: .venv/bin/missionbound mission revoke {mission.mission_id} --reason done")
    while not args.once:
        try:
            mission.refresh()
            time.sleep(2)
        except MissionInactive as stopped:
            print(f"stopped: the Mission is {stopped.mission_state}")
            break
