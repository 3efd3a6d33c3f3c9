"""Preview what a Mission Intent would be granted, with the demo tenant (or your own config).

    .venv/bin/python examples/preview_mission.py                 # the demo scenario
    .venv/bin/python examples/preview_mission.py intent.json     # your own intent
    MISSIONBOUND_ISSUER=https://as.example.com .venv/bin/python examples/preview_mission.py

It runs only the pure Mission core: intake (PROFILE.md section 3), derivation against the
catalog and the client's registration, the consent disclosure and the three anchors
(section 5). Nothing is stored. Exit 1 with the OAuth error if the intent is refused.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from missionbound.config import load_settings
from missionbound.mission import (
    ClientCeiling,
    MissionError,
    Party,
    Principal,
    build_consent_disclosure,
    compute_anchors,
    derive_authority,
    validate_intent,
)
from missionbound.mission.anchors import authority_hash, proposal_hash
from missionbound.tenant import load_tenant


def demo_intent(issuer: str, now: datetime) -> str:
    friday = (now + timedelta(days=(4 - now.weekday()) % 7 or 7)).replace(
        hour=17, minute=0, second=0, microsecond=0)
    return json.dumps({
        "goal": "Reconcile the Q3 invoices and pay approved vendors, up to 500 USD per "
                "invoice, by Friday.",
        "resources": [f"{issuer}/demo/erp", f"{issuer}/demo/mcp"],
        "constraints": ["only Q3 invoices", "pay approved vendors only"],
        "purpose": "https://missionbound.dev/purposes/accounts-payable",
        "mission_expiry": friday.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "context": {"max_derivations": 50,
                    "max_value": {"amount": "500.00", "currency": "USD"},
                    "vendors": ["acme"]},
    })


def main(argv: list[str]) -> int:
    settings = load_settings()
    tenant = load_tenant(settings)
    now = datetime.now(UTC)
    raw = Path(argv[1]).read_text() if len(argv) > 1 else demo_intent(settings.issuer, now)
    agent = tenant.clients["demo-agent"]
    try:
        intent = validate_intent(raw, catalog=tenant.catalog, now=now,
                                 max_size=settings.mission_intent_max_size,
                                 client_purposes=agent.mission_purposes_registered)
        derivation = derive_authority(
            intent, catalog=tenant.catalog, now=now,
            client=ClientCeiling(agent.client_id, agent.mission_resources),
            max_lifetime=settings.max_mission_lifetime)
    except MissionError as refused:
        print(json.dumps(refused.to_wire(), indent=2))
        return 1
    alice = Party(Principal(settings.issuer, "alice"), tenant.users["alice"].display_name)
    bob = Party(Principal(settings.issuer, "bob"), tenant.users["bob"].display_name)
    disclosure = build_consent_disclosure(
        disclosure_id="preview", intent=intent, authority_set=derivation.authority_set,
        narrowing_decisions=derivation.narrowing_decisions,
        mission_expiry=derivation.mission_expiry, subject=alice, approver=bob,
        client_id=agent.client_id, client_name=agent.client_name, catalog=tenant.catalog,
        proposal_hash=proposal_hash(settings.issuer, intent.value, []),
        authority_hash=authority_hash(settings.issuer, derivation.authority_set),
        rendered_at=now)
    anchors = compute_anchors(settings.issuer, mission_intent=intent.value,
                              authorization_details_requested=[],
                              consent_disclosure=disclosure,
                              authority_set=derivation.authority_set)
    print("Granted authority:")
    for item in disclosure["authority"]:
        for action in item["actions"]:
            limits = "; ".join(c["text"] for c in item["constraints"]) or "no limits"
            print(f"  {item['resource_title']}: {action['description']} "
                  f"({action['class_text']}) - {limits}")
    print("\nNarrowing decisions:")
    for decision in derivation.narrowing_decisions:
        print(f"  {decision['field']}: {json.dumps(decision['requested'])} -> "
              f"{json.dumps(decision['granted'])} ({decision['rule']})")
    print("\nAnchors:")
    for name, value in anchors.as_dict().items():
        print(f"  {name:<24} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
