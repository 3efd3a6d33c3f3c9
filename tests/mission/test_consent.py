"""The consent disclosure object and its anchor."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from missionbound.mission.anchors import authority_hash, consent_rendering_hash, proposal_hash
from missionbound.mission.catalog import Catalog
from missionbound.mission.consent import Party, build_consent_disclosure, describe_constraint
from missionbound.mission.constraints import ConstraintRegistry
from missionbound.mission.derivation import ClientCeiling, derive_authority
from missionbound.mission.record import Principal

from .conftest import ERP, ISS, MCP, NOW, make_intent

ALICE = Party(Principal(ISS, "alice"), "Alice")
BOB = Party(Principal(ISS, "bob"), "Bob")


def disclosure(catalog: Catalog, client: ClientCeiling, approver: Party = ALICE,
               **intent: Any) -> dict[str, Any]:
    mission_intent = make_intent(catalog, **intent)
    derivation = derive_authority(mission_intent, catalog=catalog, client=client, now=NOW,
                                  max_lifetime=timedelta(days=30))
    return build_consent_disclosure(
        disclosure_id="disc_1", intent=mission_intent,
        authority_set=derivation.authority_set,
        narrowing_decisions=derivation.narrowing_decisions,
        mission_expiry=derivation.mission_expiry, subject=ALICE, approver=approver,
        client_id="agent", client_name="Agent", catalog=catalog,
        proposal_hash=proposal_hash(ISS, mission_intent.value, []),
        authority_hash=authority_hash(ISS, derivation.authority_set), rendered_at=NOW)


def test_disclosure_shows_everything_the_approver_must_see(catalog: Catalog,
                                                           client: ClientCeiling) -> None:
    shown = disclosure(catalog, client, approver=BOB, resources=[ERP, MCP],
                       constraints=["only Q3"], purpose="https://purposes.example.com/ap",
                       context={"max_derivations": 20, "acr": "urn:acr:mfa",
                                "max_value": {"amount": "500.00", "currency": "USD"}})
    assert shown["goal"] == "Reconcile Q3 invoices"
    assert shown["stated_constraints"] == ["only Q3"]
    assert shown["on_behalf_of_another"] is True
    assert shown["subject"]["sub"] == "alice" and shown["approver"]["sub"] == "bob"
    write = next(a for a in shown["authority"] if a["actions"][0]["name"] ==
                 "journal-entries.write")
    assert write["constraints"] == [{"key": "max_value",
                                     "value": {"amount": "500.00", "currency": "USD"},
                                     "text": "at most 500.00 USD per action"}]
    read = next(a for a in shown["authority"] if a["actions"][0]["name"] == "invoices.read")
    assert read["actions"][0]["class"] == "consequential_write"  # raised by the purpose
    assert "helper, sub-agent" in read["delegation"]["text"]
    wire = next(a for a in shown["authority"] if a["actions"][0]["name"] ==
                "execute_wire_transfer")
    assert wire["actions"][0]["class_text"] == "cannot be undone"
    assert [b["text"] for b in shown["bounds"]] == [
        "at most 20 token issuances", "the approver must sign in at level urn:acr:mfa",
        "at most 500.00 USD per action"]
    assert shown["mission_expiry"] == {"requested": "2026-12-31T23:59:59Z",
                                       "granted": "2026-12-26T12:00:00Z", "shortened": True}
    assert shown["narrowing_decisions"][-1]["rule"] == "max_mission_lifetime"
    assert set(shown["source_hashes"]) == {"proposal_hash", "authority_hash"}


def test_any_change_in_what_is_shown_changes_the_anchor(catalog: Catalog,
                                                        client: ClientCeiling) -> None:
    base = consent_rendering_hash(ISS, disclosure(catalog, client))
    assert base == consent_rendering_hash(ISS, disclosure(catalog, client))
    assert base != consent_rendering_hash(ISS, disclosure(catalog, client, approver=BOB))
    assert base != consent_rendering_hash(ISS, disclosure(catalog, client, goal="Other goal"))


def test_constraint_words() -> None:
    registry = ConstraintRegistry(frozenset({"vendors"}))
    assert describe_constraint("max_calls", 1, registry) == "at most 1 call"
    assert describe_constraint("max_duration", "PT8H", registry) == "at most 8 hours of activity"
    assert describe_constraint("max_duration", "PT90S", registry) == \
        "at most 90 seconds of activity"
    assert describe_constraint("vendors", ["acme", "globex"], registry) == \
        "vendors limited to acme, globex"
    assert describe_constraint("geo", ["US"], registry) == "only from US"
    assert describe_constraint("max_total_value", {"amount": "9", "currency": "EUR"},
                               registry) == "at most 9 EUR in total"


def test_consent_rendering_hash_vector(catalog: Catalog, client: ClientCeiling) -> None:
    """A fixed disclosure and its anchor, computed a second way with the standard library
    (for ASCII keys, integers and plain strings, sorted compact JSON is the JCS form)."""
    import base64
    import hashlib
    import json

    shown = disclosure(catalog, client, approver=BOB)
    envelope = {"typ": "mission-consent-disclosure", "iss": ISS, "value": shown}
    canonical = json.dumps(envelope, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest())
    independent = "sha-256:" + digest.rstrip(b"=").decode()
    assert consent_rendering_hash(ISS, shown) == independent
    # Pinned: a change to the disclosure's shape changes what approvers are proven to have seen.
    assert independent == PINNED_CONSENT_ANCHOR


PINNED_CONSENT_ANCHOR = "sha-256:zKasEy2GrPDBQ-qBBWSkkKLoP3IKDDPyEDwm55KeUAw"
