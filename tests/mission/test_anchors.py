"""The three anchors: digest vectors from issuance-digest.md section 4.7 and our own."""

from __future__ import annotations

from typing import Any

import pytest

from missionbound.mission.anchors import (
    AUTHORITY_SET,
    anchor,
    authority_hash,
    compute_anchors,
    consent_rendering_hash,
    find_anchor_mismatch,
    proposal_hash,
    verify_anchor,
)
from missionbound.mission.canonical import canonicalize
from missionbound.mission.errors import InvalidRequest

ISS = "https://as.example.com"
V1 = {"goal": "Reconcile Q3 invoices", "resources": ["https://erp.example.com"],
      "mission_expiry": "2026-12-31T23:59:59Z"}
V3 = [
    {"type": "mission_resource_access", "resource": "https://erp.example.com",
     "actions": ["invoices.read"],
     "delegation": {"max_depth": 2, "allowed_delegates": [{"sub_profile": "ai_agent"}]}},
    {"type": "mission_resource_access", "resource": "https://erp.example.com",
     "actions": ["journal-entries.write"], "constraints": {"max_amount_usd": 500}},
]


@pytest.mark.parametrize(
    "name, typ, iss, value, expected",
    [
        ("V1", "mission-intent", ISS, V1, "sha-256:P38IRTmTaUESJ5RpCw1WXmIqfsQmYek7zxiQWERcq-E"),
        ("V2", "mission-intent", ISS,
         {**V1, "context": {"acr": "urn:example:acr:mfa", "max_derivations": 20}},
         "sha-256:51LGmWk92WLsmnx5F0dFv3VihMjjzka00MuwAKU2Gn8"),
        ("V3", AUTHORITY_SET, ISS, V3, "sha-256:3zDQdOwDNiHEVto9WHjoGQy7t_V4Ulx98ALo4AHzQaU"),
        ("V5", "mission-intent", ISS, {**V1, "goal": "Réconcilier les factures — T3"},
         "sha-256:Ec_m2wQqNXdg-y3ojNg6D558xXFFCVVbrA_HxG2WWtE"),
        ("V6 domain separation", "mission-intent", ISS, V3,
         "sha-256:jlRd-f4ITlW2FK3k_2h4rcN4QB95atTHem49Gw0b6Uw"),
        ("V7 issuer binding", AUTHORITY_SET, "https://as2.example.com", V3,
         "sha-256:45XqYYMnZ3tZHaUlqMlCrec1QMedOlCiSzV7lpnue6k"),
        ("V8 order matters", AUTHORITY_SET, ISS, list(reversed(V3)),
         "sha-256:WR0YNYYFIziCjeoYMDD-lCsKSPf--lbW5F1uWnZzWAg"),
        ("H1", "mission-intent", ISS,
         {"goal": "Reconcile Q3 invoices", "resources": ["https://erp.example.com"],
          "expires_at": "2026-12-31T23:59:59Z"},
         "sha-256:6mIFoCz79uCHNzKLfBpBwqFjoFXdpmpuc65486IqimQ"),
        ("H2", AUTHORITY_SET, ISS,
         [{"type": "mission_resource_access", "resource": "https://erp.example.com",
           "actions": ["invoices.read"]},
          {"type": "mission_resource_access", "resource": "https://erp.example.com",
           "actions": ["journal-entries.write"],
           "constraints": {"max_amount": {"amount": "500.00", "currency": "USD"}}}],
         "sha-256:vUCCfjGulit9u0qJ0Z6pQSNerZtXMqRlfJNCr4PzLro"),
    ],
)
def test_published_vectors(name: str, typ: str, iss: str, value: Any, expected: str) -> None:
    assert anchor(typ, iss, value) == expected, name
    assert verify_anchor(expected, typ, iss, value)


def test_v1_canonical_bytes() -> None:
    envelope = {"typ": "mission-intent", "iss": ISS, "value": V1}
    assert canonicalize(envelope) == (
        b'{"iss":"https://as.example.com","typ":"mission-intent","value":{"goal":"Reconcile Q3'
        b' invoices","mission_expiry":"2026-12-31T23:59:59Z","resources":["https://erp.example'
        b'.com"]}}'
    )


def test_proposal_hash_commits_to_intent_and_requested_details() -> None:
    # Our own vector: PROFILE.md section 5 envelope, typ mission-proposal.
    envelope = {"typ": "mission-proposal", "iss": ISS,
                "value": {"mission_intent": V1, "authorization_details": []}}
    assert canonicalize(envelope) == (
        b'{"iss":"https://as.example.com","typ":"mission-proposal","value":{"authorization_de'
        b'tails":[],"mission_intent":{"goal":"Reconcile Q3 invoices","mission_expiry":"2026-12'
        b'-31T23:59:59Z","resources":["https://erp.example.com"]}}}'
    )
    assert proposal_hash(ISS, V1, None) == "sha-256:TqwA57PPMY6BGLwEz4nVdDWekzN5e7B1Va9iZ7k9LIU"
    assert proposal_hash(ISS, V1, None) == proposal_hash(ISS, V1, [])
    assert proposal_hash(ISS, V1, V3) != proposal_hash(ISS, V1, [])
    assert authority_hash(ISS, V3) == anchor(AUTHORITY_SET, ISS, V3)


def test_unknown_algorithm_prefix_is_refused_not_downgraded() -> None:
    good = anchor(AUTHORITY_SET, ISS, V3)
    with pytest.raises(InvalidRequest, match="sha-512"):
        verify_anchor("sha-512:" + good.removeprefix("sha-256:"), AUTHORITY_SET, ISS, V3)
    with pytest.raises(InvalidRequest):
        verify_anchor(good.removeprefix("sha-256:"), AUTHORITY_SET, ISS, V3)
    assert not verify_anchor(good, AUTHORITY_SET, ISS, V3[:1])


def test_find_anchor_mismatch_names_the_altered_member() -> None:
    disclosure = {"disclosure_id": "d1", "goal": V1["goal"]}
    anchors = compute_anchors(ISS, mission_intent=V1, authorization_details_requested=[],
                              consent_disclosure=disclosure, authority_set=V3)
    record: dict[str, Any] = {
        "origin": ISS, "mission_intent": V1, "authorization_details_requested": [],
        "consent_disclosure": disclosure, "authority_set": V3, **anchors.as_dict(),
    }
    assert find_anchor_mismatch(record) is None
    assert anchors.consent_rendering_hash == consent_rendering_hash(ISS, disclosure)
    assert find_anchor_mismatch({**record, "authority_set": V3[:1]}) == "authority_hash"
    assert find_anchor_mismatch({**record, "mission_intent": {**V1, "goal": "x"}}) == \
        "proposal_hash"
    assert find_anchor_mismatch({**record, "consent_disclosure": {}}) == "consent_rendering_hash"
    assert find_anchor_mismatch({**record, "origin": "https://evil.example"}) == "proposal_hash"
    assert find_anchor_mismatch({**record, "authority_hash": 5}) == "authority_hash"
    pending = {k: v for k, v in record.items() if not k.endswith("_hash")}
    assert find_anchor_mismatch(pending) is None
