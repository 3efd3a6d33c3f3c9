"""Every refusal of an ID-JAG redemption at the Resource AS (issuance digest 9.2 and its
error table): the status and error, nothing issued, no jti spent, one ``token.refused``
audit record (none when the client did not authenticate)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import OctKey
from sqlalchemy import select

from missionbound.issuer.keys import SignerKey, SigningAlgorithm
from missionbound.store.models import AuditRecord
from missionbound.store.transactions import Store
from tests.cross_domain.support import (
    AGENT,
    ERP,
    LEDGER,
    ORIGIN,
    OTHER_AGENT,
    RAS,
    Origin,
    ResourceAS,
    last_seq,
    refused,
    sign,
)
from tests.protocol.proofs import b64url, generate_key

FORM = "application/x-www-form-urlencoded"


def jag(origin: Origin, **overrides: Any) -> tuple[str, Any]:
    """A fresh Mission's ID-JAG (``overrides`` change its claims) and the DPoP key."""
    key = generate_key()
    return origin.id_jag(origin.mission(), jkt=key.thumbprint(), **overrides), key


def invalid_grant(ras: ResourceAS, assertion: str, key: Any, **kwargs: Any) -> dict[str, Any]:
    return refused(ras, lambda: ras.redeem(assertion, key=key, **kwargs), status=400,
                   error="invalid_grant")


# -- trust in the origin and the signature -------------------------------------------------


def test_an_untrusted_issuer_is_refused(origin: Origin, ras: ResourceAS) -> None:
    key = generate_key()
    mission = origin.mission()
    evil = "http://evil.test"
    assertion = origin.id_jag(mission, jkt=key.thumbprint(), iss=evil, mission={
        "id": mission.mission_id, "origin": evil, "authority_hash": mission.authority_hash})
    body = invalid_grant(ras, assertion, key)
    assert "not an origin this AS trusts" in body["error_description"]


def test_iss_other_than_mission_origin_is_refused(origin: Origin, ras: ResourceAS) -> None:
    key = generate_key()
    mission = origin.mission()
    assertion = origin.id_jag(mission, jkt=key.thumbprint(), mission={
        "id": mission.mission_id, "origin": "http://elsewhere.test",
        "authority_hash": mission.authority_hash})
    body = invalid_grant(ras, assertion, key)
    assert "mission.origin" in body["error_description"]


def test_a_forged_signer_with_the_origins_kid_is_refused(
    origin: Origin, ras: ResourceAS
) -> None:
    forger = generate_key()
    key = generate_key()
    forged = origin.id_jag(origin.mission(), jkt=key.thumbprint(), key=forger)
    invalid_grant(ras, forged, key)


def test_a_key_the_origin_does_not_publish_is_refused(origin: Origin, ras: ResourceAS) -> None:
    forger = generate_key()
    signer = SignerKey(kid=forger.thumbprint(), alg=SigningAlgorithm.ES256, key=forger)
    key = generate_key()
    claims = origin.id_jag_claims(origin.mission(), jkt=key.thumbprint())
    body = invalid_grant(ras, sign(claims, signer=signer), key)
    assert "does not publish" in body["error_description"]


@pytest.mark.parametrize("typ", ["JWT", "at+jwt", "oauth-id-jag", None])
def test_a_wrong_or_missing_typ_is_refused(origin: Origin, ras: ResourceAS,
                                           typ: str | None) -> None:
    key = generate_key()
    assertion = origin.id_jag(origin.mission(), jkt=key.thumbprint(), header={"typ": typ})
    invalid_grant(ras, assertion, key)


def test_alg_none_is_refused(origin: Origin, ras: ResourceAS) -> None:
    key = generate_key()
    claims = origin.id_jag_claims(origin.mission(), jkt=key.thumbprint())
    header = {"typ": "oauth-id-jag+jwt", "alg": "none", "kid": origin.signer().kid}
    unsigned = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}."
    invalid_grant(ras, unsigned, key)


def test_hs256_keyed_with_the_public_key_is_refused(origin: Origin, ras: ResourceAS) -> None:
    key = generate_key()
    claims = origin.id_jag_claims(origin.mission(), jkt=key.thumbprint())
    signer = origin.signer()
    public = json.dumps(signer.key.as_dict(private=False), sort_keys=True).encode()
    header = {"typ": "oauth-id-jag+jwt", "alg": "HS256", "kid": signer.kid}
    hmac = jws.serialize_compact(header, json.dumps(claims), OctKey.import_key(public))
    invalid_grant(ras, hmac, key)


def test_a_tampered_payload_is_refused(origin: Origin, ras: ResourceAS) -> None:
    assertion, key = jag(origin)
    header, _, signature = assertion.split(".")
    claims = json.loads(jws.extract_compact(assertion.encode()).payload)
    claims["authorization_details"][0]["actions"] = ["invoices.read", "journal-entries.write"]
    tampered = f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"
    invalid_grant(ras, tampered, key)


# -- audience and time ---------------------------------------------------------------------


@pytest.mark.parametrize("aud", [ORIGIN, ERP, [RAS, "http://other.test"], None])
def test_an_audience_other_than_this_as_is_refused(origin: Origin, ras: ResourceAS,
                                                   aud: Any) -> None:
    assertion, key = jag(origin, aud=aud)
    invalid_grant(ras, assertion, key)


def test_an_expired_grant_is_refused(origin: Origin, ras: ResourceAS) -> None:
    now = int(time.time())
    assertion, key = jag(origin, iat=now - 300, exp=now - 1)
    assert "expired" in invalid_grant(ras, assertion, key)["error_description"]


def test_a_grant_from_the_future_is_refused(origin: Origin, ras: ResourceAS) -> None:
    now = int(time.time())
    assertion, key = jag(origin, iat=now + 120, exp=now + 300)
    invalid_grant(ras, assertion, key)


def test_a_grant_living_longer_than_300_s_is_refused(origin: Origin, ras: ResourceAS) -> None:
    now = int(time.time())
    assertion, key = jag(origin, iat=now, exp=now + 301)
    assert "at most 300 s" in invalid_grant(ras, assertion, key)["error_description"]


# -- one-time use, proof of possession, the client -----------------------------------------


def test_a_replayed_grant_is_refused(origin: Origin, ras: ResourceAS) -> None:
    assertion, key = jag(origin)
    assert ras.redeem(assertion, key=key).status_code == 200
    body = invalid_grant(ras, assertion, key)
    assert "already redeemed" in body["error_description"]


def test_a_refused_verified_grant_names_its_mission_and_origin_in_the_audit_log(
        origin: Origin, ras: ResourceAS) -> None:
    assertion, _ = jag(origin)
    mission_id = json.loads(jws.extract_compact(assertion.encode()).payload)["mission"]["id"]
    seq = last_seq(ras.engine)
    invalid_grant(ras, assertion, generate_key())
    with Store(ras.engine).read() as session, session.begin():
        record = session.scalars(select(AuditRecord).where(AuditRecord.seq > seq)).one()
    assert record.event == "token.refused" and record.mission_id == mission_id
    assert record.data["origin"] == ORIGIN


def test_a_grant_without_a_dpop_proof_is_refused(origin: Origin, ras: ResourceAS) -> None:
    assertion, _ = jag(origin)
    refused(ras, lambda: ras.redeem(assertion), status=400, error="invalid_grant")
    # The same for a client registered with dpop_bound_access_tokens (not invalid_dpop_proof).
    other = origin.id_jag(origin.mission(), jkt=generate_key().thumbprint(),
                          client_id=OTHER_AGENT[0])
    refused(ras, lambda: ras.redeem(other, auth=OTHER_AGENT), status=400,
            error="invalid_grant")


def test_a_proof_of_another_key_is_refused(origin: Origin, ras: ResourceAS) -> None:
    assertion, _ = jag(origin)
    body = invalid_grant(ras, assertion, generate_key())
    assert "not the key the ID-JAG is bound to" in body["error_description"]


def test_a_proof_for_another_endpoint_is_refused(origin: Origin, ras: ResourceAS) -> None:
    assertion, key = jag(origin)
    proof = ras.dpop(key, htu=f"{ORIGIN}/token")
    refused(ras, lambda: ras.redeem(assertion, dpop=proof), status=400,
            error="invalid_dpop_proof")


def test_an_unbound_grant_is_refused(origin: Origin, ras: ResourceAS) -> None:
    key = generate_key()
    assertion = origin.id_jag(origin.mission(), jkt=key.thumbprint(), cnf={})
    assert "bearer grants" in invalid_grant(ras, assertion, key)["error_description"]


def test_a_grant_of_another_client_is_refused(origin: Origin, ras: ResourceAS) -> None:
    assertion, key = jag(origin)
    body = invalid_grant(ras, assertion, key, auth=OTHER_AGENT)
    assert "another client" in body["error_description"]


def test_an_unauthenticated_client_is_refused_and_leaves_no_record(
    origin: Origin, ras: ResourceAS
) -> None:
    assertion, key = jag(origin)
    refused(ras, lambda: ras.redeem(assertion, key=key, auth=(AGENT[0], "wrong")),
            status=401, error="invalid_client", audited=False)
    refused(ras, lambda: ras.redeem(assertion, key=key, auth=None),
            status=401, error="invalid_client", audited=False)


def test_a_request_without_assertion_is_refused(ras: ResourceAS) -> None:
    refused(ras, lambda: ras.redeem(None, key=generate_key()), status=400,
            error="invalid_request")


def test_a_repeated_assertion_is_refused(origin: Origin, ras: ResourceAS) -> None:
    assertion, key = jag(origin)
    send = lambda: ras.client.post(  # noqa: E731
        "/token", auth=AGENT, headers={"DPoP": ras.dpop(key), "Content-Type": FORM},
        content=f"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
                f"&assertion={assertion}&assertion={assertion}",
        )
    refused(ras, send, status=400, error="invalid_request")


# -- what the grant conveys ----------------------------------------------------------------


@pytest.mark.parametrize("mission", [
    "msn_not-an-object",
    {"id": "msn_x", "origin": ORIGIN, "authority_hash": "sha-256:" + "A" * 43},
    {"id": "msn_" + "A" * 22, "origin": ORIGIN},
    {"id": "msn_" + "A" * 22, "origin": ORIGIN, "authority_hash": "sha-256:short"},
    {"id": "msn_" + "A" * 22, "origin": ORIGIN, "authority_hash": "sha-256:" + "A" * 43,
     "state": "active"},
    None,
])
def test_a_malformed_mission_claim_is_refused(origin: Origin, ras: ResourceAS,
                                              mission: Any) -> None:
    assertion, key = jag(origin, mission=mission)
    invalid_grant(ras, assertion, key)


@pytest.mark.parametrize("entry", [
    {"type": "mission_resource_access", "resource": "http://elsewhere.test/api",
     "actions": ["invoices.read"]},
    {"type": "mission_resource_access", "resource": ERP, "actions": ["invoices.delete"]},
    {"type": "mission_resource_access", "resource": ERP, "actions": ["invoices.read"],
     "constraints": {"max_value": {"amount": "5.00", "currency": "USD"}}},
    {"type": "mission_resource_access", "resource": ERP, "actions": ["journal-entries.write"],
     "constraints": {"colour": ["blue"]}},
    {"type": "mission_resource_access", "resource": ERP, "actions": ["invoices.read"],
     "locations": ["EU"]},
    {"type": "payment_initiation", "resource": ERP, "actions": ["invoices.read"]},
], ids=["resource-not-served", "unknown-action", "constraint-not-accepted",
        "unknown-constraint-key", "unknown-member", "unknown-type"])
def test_authority_this_as_does_not_serve_is_refused(origin: Origin, ras: ResourceAS,
                                                      entry: dict[str, Any]) -> None:
    assertion, key = jag(origin, authorization_details=[entry])
    refused(ras, lambda: ras.redeem(assertion, key=key), status=400, error="invalid_target")


@pytest.mark.parametrize("details", [[], "not-an-array", [42], None])
def test_malformed_authorization_details_are_refused(origin: Origin, ras: ResourceAS,
                                                     details: Any) -> None:
    assertion, key = jag(origin, authorization_details=details)
    invalid_grant(ras, assertion, key)


def test_a_widened_request_is_refused(origin: Origin, ras: ResourceAS) -> None:
    more_money = [{"type": "mission_resource_access", "resource": ERP,
                   "actions": ["journal-entries.write"],
                   "constraints": {"max_value": {"amount": "900.00", "currency": "USD"}}}]
    assertion, key = jag(origin)
    refused(ras, lambda: ras.redeem(assertion, key=key,
                                    authorization_details=json.dumps(more_money)),
            status=400, error="invalid_authorization_details")
    other = "http://elsewhere.test/api"
    assertion, key = jag(origin, authorization_details=[
        {"type": "mission_resource_access", "resource": LEDGER, "actions": ["entries.read"]}])
    refused(ras, lambda: ras.redeem(assertion, key=key, resource=ERP), status=400,
            error="invalid_target")
    refused(ras, lambda: ras.redeem(assertion, key=key, resource=other), status=400,
            error="invalid_target")
