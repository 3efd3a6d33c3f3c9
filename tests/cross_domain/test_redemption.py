"""Redeeming an ID-JAG at the Resource AS (issuance digest 9.2): the local token and what
it carries, narrowing, the audit record, introspection of local tokens."""

from __future__ import annotations

from typing import Any

from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy import func, select

from missionbound import audit
from missionbound.store.models import IssuedToken
from tests.cross_domain.support import (
    AGENT,
    ERP,
    ERP_READ,
    ERP_WRITE,
    LEDGER,
    LEDGER_RS,
    ORIGIN,
    RAS,
    Origin,
    ResourceAS,
    remote_row,
)
from tests.protocol.proofs import generate_key
from tests.store.concurrency import run_concurrently

RACERS = 20


def decode(ras: ResourceAS, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    decoded = jwt.decode(token, KeySet.import_key_set(ras.jwks()), algorithms=["ES256"])
    return dict(decoded.header), dict(decoded.claims)


def test_an_id_jag_is_redeemed_for_a_dpop_bound_local_token(
    origin: Origin, ras: ResourceAS
) -> None:
    key = generate_key()
    mission = origin.mission()
    grant = origin.id_jag_claims(mission, jkt=key.thumbprint())
    assertion = origin.id_jag(mission, jkt=key.thumbprint(), jti=grant["jti"],
                              iat=grant["iat"], exp=grant["exp"])

    response = ras.redeem(assertion, key=key)

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "DPoP"
    assert "refresh_token" not in body
    assert 0 < body["expires_in"] <= 300
    header, claims = decode(ras, body["access_token"])
    assert header["typ"] == "at+jwt"
    assert claims["iss"] == RAS and claims["sub"] == "alice"
    assert claims["client_id"] == AGENT[0]
    assert claims["cnf"] == {"jkt": key.thumbprint()}
    assert claims["mission"] == {"id": mission.mission_id, "origin": ORIGIN,
                                 "authority_hash": mission.authority_hash}
    assert claims["exp"] <= grant["exp"]
    assert "act" not in claims
    assert claims["aud"] == [ERP, LEDGER]
    assert body["authorization_details"] == claims["authorization_details"]
    assert remote_row(ras.engine, mission.mission_id) == ("active", mission.version)


def test_the_local_token_never_outlives_the_grant(origin: Origin, ras: ResourceAS) -> None:
    key = generate_key()
    mission = origin.mission()
    claims = origin.id_jag_claims(mission, jkt=key.thumbprint())
    short = claims["iat"] + 40
    response = ras.redeem(origin.id_jag(mission, jkt=key.thumbprint(), exp=short), key=key)
    assert response.status_code == 200, response.text
    _, local = decode(ras, response.json()["access_token"])
    assert local["exp"] == short


def test_resource_narrows_the_local_token(origin: Origin, ras: ResourceAS) -> None:
    key = generate_key()
    mission = origin.mission()
    response = ras.redeem(origin.id_jag(mission, jkt=key.thumbprint()), key=key, resource=ERP)
    assert response.status_code == 200, response.text
    _, claims = decode(ras, response.json()["access_token"])
    assert claims["aud"] == ERP
    assert claims["authorization_details"] == [ERP_READ, ERP_WRITE]


def test_act_is_kept_verbatim(origin: Origin, ras: ResourceAS) -> None:
    key = generate_key()
    mission = origin.mission()
    act = {"sub": "demo-subagent", "act": {"sub": "demo-agent"}}
    response = ras.redeem(origin.id_jag(mission, jkt=key.thumbprint(), act=act), key=key)
    assert response.status_code == 200, response.text
    assert decode(ras, response.json()["access_token"])[1]["act"] == act


def test_introspection_shows_the_mission_but_never_its_state(
    origin: Origin, ras: ResourceAS
) -> None:
    key = generate_key()
    mission = origin.mission()
    token = ras.redeem(origin.id_jag(mission, jkt=key.thumbprint()), key=key).json()
    seen = ras.introspect(token["access_token"])
    assert seen["active"] is True
    assert seen["mission"] == {"id": mission.mission_id, "origin": ORIGIN,
                               "authority_hash": mission.authority_hash}
    assert seen["aud"] == ERP and seen["authorization_details"] == [ERP_READ, ERP_WRITE]
    assert seen["cnf"] == {"jkt": key.thumbprint()} and seen["token_type"] == "DPoP"
    # Each Resource Server sees its own audience only.
    ledger = ras.introspect(token["access_token"], auth=LEDGER_RS)
    assert ledger["aud"] == LEDGER
    assert [e["resource"] for e in ledger["authorization_details"]] == [LEDGER]


def test_twenty_concurrent_redemptions_of_one_grant_succeed_once(
    origin: Origin, ras: ResourceAS
) -> None:
    key = generate_key()
    mission = origin.mission()
    assertion = origin.id_jag(mission, jkt=key.thumbprint())
    results = run_concurrently(RACERS, lambda _: ras.redeem(assertion, key=key))
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:1]
    statuses = sorted(r.status_code for r in results if not isinstance(r, BaseException))
    assert statuses == [200] + [400] * (RACERS - 1)
    with ras.store.read() as session, session.begin():
        issued = session.scalar(select(func.count()).where(
            IssuedToken.mission_id == mission.mission_id))
    assert issued == 1


def test_the_audit_log_verifies(origin: Origin, ras: ResourceAS) -> None:
    key = generate_key()
    assert ras.redeem(origin.id_jag(origin.mission(), jkt=key.thumbprint()),
                      key=key).status_code == 200
    report = audit.verify(ras.engine)
    assert report.ok, report.first_break
