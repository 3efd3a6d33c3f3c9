"""Permits (PROFILE.md section 12, "Permits"; runtime-digest 4.1-4.5): minted with a real AS
signing key, verified as a tool runtime does, each refusal with its execution-evidence error,
and single use spent in the real database (SQLite and PostgreSQL) exactly once under
concurrency. A refused permit is never consumed."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, JWKRegistry, Key

from missionbound.issuer.keys import SignerKey, generate_signing_key
from missionbound.mission.lifecycle import Event, Role
from missionbound.protocol.jose_segments import b64url_decode
from missionbound.protocol.jwks import StaticKeys
from missionbound.protocol.permits import (
    PERMIT_TOMBSTONE_HORIZON,
    PermitRefused,
    arguments_digest,
    consume_permit,
    verify_permit_jwt,
)
from missionbound.runtime.digests import parameter_digest
from missionbound.runtime.permits import (
    PERMIT_NAMESPACE,
    PermitConsumer,
    PermitWindowTooShort,
    consume_in,
    mint_permit,
    verify_permit,
)
from missionbound.store.lifecycle import transition
from missionbound.store.single_use import consume_once
from missionbound.store.transactions import Store
from tests.protocol.proofs import b64url, forge_raw
from tests.store.concurrency import run_concurrently

NOW = datetime(2026, 11, 2, 8, 14, 0, tzinfo=UTC)
PDP = "https://as.example.test"
MCP = "https://as.example.test/demo/mcp"
ERP = "https://as.example.test/demo/erp"
WIRE = "execute_wire_transfer"
ARGUMENTS = {"invoice_id": "inv-acme-2", "vendor": "acme", "amount": "499.00",
             "currency": "USD"}
MISSION = {"id": "msn_" + "a" * 32, "origin": PDP,
           "authority_hash": "sha-256:" + "A" * 43}


def signer_and_keys() -> tuple[SignerKey, StaticKeys]:
    generated = generate_signing_key()
    key = JWKRegistry.import_key(generated.private_jwk)
    assert isinstance(key, ECKey)
    signer = SignerKey(kid=generated.kid, alg=generated.alg, key=key)
    return signer, StaticKeys({"keys": [generated.public_jwk]})


SIGNER, KEYS = signer_and_keys()
PRESENTER: Key = ECKey.generate_key("P-256", private=True)
PRESENTER_JKT = PRESENTER.thumbprint()


def mint(**overrides: Any) -> str:
    values: dict[str, Any] = {
        "signer": SIGNER, "issuer": PDP, "audience": MCP, "evaluation_id": "dec_1",
        "mission": MISSION, "policy_version": "sha-256:" + "P" * 43, "tool_id": WIRE,
        "action": WIRE, "parameter_digest": parameter_digest(ARGUMENTS), "subject": "alice",
        "client_id": "demo-agent", "act": None, "jkt": PRESENTER_JKT, "use_limit": 1,
        "now": NOW, "valid_until": NOW + timedelta(seconds=60),
    }
    values.update(overrides)
    return mint_permit(**values)


def check(token: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "key_for": KEYS, "issuer": PDP, "audience": MCP, "tool_id": WIRE,
        "arguments": ARGUMENTS, "presenter_jkt": PRESENTER_JKT,
        "now": NOW + timedelta(seconds=1),
    }
    values.update(overrides)
    return verify_permit_jwt(token, **values)


def refused(error: str, call: Callable[[], Any]) -> PermitRefused:
    with pytest.raises(PermitRefused) as caught:
        call()
    assert caught.value.error == error, caught.value.description
    return caught.value


def decoded(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    return (json.loads(b64url_decode(header)), json.loads(b64url_decode(payload)))


# -- the format --------------------------------------------------------------------------


def test_a_permit_carries_the_profile_claims_and_verifies() -> None:
    act = {"sub": "demo-subagent", "iss": PDP}
    token = mint(act=act)
    header, claims = decoded(token)
    assert header == {"typ": "mission-permit+jwt", "alg": "ES256", "kid": SIGNER.kid}
    assert claims == {
        "iss": PDP, "aud": MCP, "jti": "dec_1", "iat": int(NOW.timestamp()),
        "exp": int(NOW.timestamp()) + 60, "mission": MISSION,
        "policy_version": "sha-256:" + "P" * 43, "tool_id": WIRE, "action": WIRE,
        "parameter_digest": parameter_digest(ARGUMENTS), "sub": "alice",
        "client_id": "demo-agent", "act": act, "cnf": {"jkt": PRESENTER_JKT}, "use_limit": 1,
    }
    permit = check(token)
    assert (permit.evaluation_id, permit.tool_id, permit.jkt, permit.use_limit) == (
        "dec_1", WIRE, PRESENTER_JKT, 1)
    assert permit.mission.id == MISSION["id"] and permit.act == act
    assert permit.remember_until == permit.expires_at + PERMIT_TOMBSTONE_HORIZON


def test_the_protocol_digest_is_the_pdps_and_the_profile_vector() -> None:
    vector = {"amount_usd": "423.50", "source_invoice_id": "inv_2026Q3_842"}
    assert arguments_digest(vector) == parameter_digest(vector) == \
        "sha-256:WPVi6EnQ7H9Fh-qk9ADxmTg8zruOdVUX1esl-v3TfCI"
    assert arguments_digest(ARGUMENTS) == parameter_digest(ARGUMENTS)


def test_exp_never_passes_valid_until_nor_60_seconds() -> None:
    _, claims = decoded(mint(valid_until=NOW + timedelta(seconds=12, milliseconds=900)))
    assert claims["exp"] - claims["iat"] == 12
    with pytest.raises(ValueError, match="60 s"):
        mint(valid_until=NOW + timedelta(seconds=61))
    with pytest.raises(PermitWindowTooShort):
        mint(now=NOW + timedelta(milliseconds=100),
             valid_until=NOW + timedelta(milliseconds=900))
    with pytest.raises(ValueError, match="use_limit"):
        mint(use_limit=2)


# -- each refusal, with its error ---------------------------------------------------------


def test_a_permit_for_tool_x_is_refused_for_tool_y() -> None:
    refused("binding_mismatch", lambda: check(mint(), tool_id="send_remittance_email"))


def test_one_changed_argument_is_a_parameter_mismatch() -> None:
    token = mint()
    for name, value in (("amount", "499.01"), ("vendor", "globex"), ("invoice_id", "inv-x")):
        changed = {**ARGUMENTS, name: value}
        refused("parameter_mismatch", lambda changed=changed: check(token, arguments=changed))
    refused("parameter_mismatch", lambda: check(token, arguments={**ARGUMENTS, "memo": "x"}))
    refused("parameter_mismatch", lambda: check(token, arguments={**ARGUMENTS, "amount": 499.0}))
    refused("parameter_mismatch", lambda: check(token, arguments=[ARGUMENTS]))


def test_an_expired_permit_is_refused_as_expired() -> None:
    token = mint(valid_until=NOW + timedelta(seconds=30))
    assert check(token, now=NOW + timedelta(seconds=34))  # within the 5 s leeway
    refused("permit_expired", lambda: check(token, now=NOW + timedelta(seconds=35)))
    # Expiry wins over a binding mismatch: the permit is dead whatever the call.
    refused("permit_expired", lambda: check(token, now=NOW + timedelta(minutes=5),
                                            tool_id="other"))


def test_another_presenter_key_is_a_binding_mismatch() -> None:
    other = ECKey.generate_key("P-256", private=True).thumbprint()
    refused("binding_mismatch", lambda: check(mint(), presenter_jkt=other))
    refused("binding_mismatch", lambda: check(mint(), presenter_jkt=None))
    # A permit for a bearer credential binds no key.
    assert check(mint(jkt=None), presenter_jkt=None).jkt is None


def test_another_audience_is_a_binding_mismatch() -> None:
    refused("binding_mismatch", lambda: check(mint(), audience=ERP))
    refused("binding_mismatch", lambda: check(mint(audience=ERP)))


def test_a_tampered_or_foreign_signature_is_invalid() -> None:
    token = mint()
    header, payload, signature = token.split(".")
    claims = json.loads(b64url_decode(payload))
    claims["parameter_digest"] = parameter_digest({**ARGUMENTS, "amount": "900.00"})
    tampered = ".".join((header, b64url(json.dumps(claims).encode()), signature))
    refused("permit_invalid", lambda: check(tampered))
    # Signed by a key the PDP does not publish, under the PDP's kid.
    stranger, _ = signer_and_keys()
    impostor = SignerKey(kid=SIGNER.kid, alg=stranger.alg, key=stranger.key)
    refused("permit_invalid", lambda: check(mint(signer=impostor)))
    # An unknown kid, through a plain lookup function too.
    refused("permit_invalid", lambda: check(mint(signer=stranger)))
    refused("permit_invalid", lambda: check(mint(signer=stranger), key_for=lambda kid: None))
    assert check(mint(), key_for=KEYS.key_for).evaluation_id == "dec_1"


def test_alg_none_and_wrong_typ_are_invalid() -> None:
    _, claims = decoded(mint())
    none = forge_raw(json.dumps({"typ": "mission-permit+jwt", "alg": "none",
                                 "kid": SIGNER.kid}), json.dumps(claims), b"")
    refused("permit_invalid", lambda: check(none))
    for typ in ("at+jwt", "JWT", None):
        header = SIGNER.protected_header(**({"typ": typ} if typ else {}))
        token = jwt.encode(header, claims, SIGNER.key, registry=SIGNER.registry)
        refused("permit_invalid", lambda token=token: check(token))
    refused("permit_invalid", lambda: check("not.a.permit"))


def test_another_issuer_or_a_broken_claim_set_is_invalid() -> None:
    refused("permit_invalid", lambda: check(mint(issuer="https://other.example")))
    _, good = decoded(mint())

    def signed(claims: dict[str, Any]) -> str:
        header = SIGNER.protected_header(typ="mission-permit+jwt")
        return jwt.encode(header, claims, SIGNER.key, registry=SIGNER.registry)

    refused("permit_invalid", lambda: check(signed({**good, "exp": good["iat"] + 61})))
    for name in ("jti", "tool_id", "parameter_digest", "mission", "policy_version", "sub"):
        broken = {k: v for k, v in good.items() if k != name}
        refused("permit_invalid", lambda broken=broken: check(signed(broken)))
    refused("permit_invalid", lambda: check(signed({**good, "use_limit": 3})))
    refused("permit_invalid", lambda: check(signed({**good, "cnf": {"x5t#S256": "abc"}})))
    refused("permit_invalid", lambda: check(signed({**good, "iat": good["iat"] + 30,
                                                     "exp": good["exp"] + 30})))


def test_a_high_consequence_tool_may_demand_single_use() -> None:
    refused("permit_invalid", lambda: check(mint(use_limit=None), require_single_use=True))
    assert check(mint(), require_single_use=True).use_limit == 1


# -- single use in the database -----------------------------------------------------------


@pytest.fixture
def held(active_mission: Callable[..., Any]) -> Any:
    """MISSION, active in the database: the DB-backed verification spends a permit only
    while its Mission is effectively active (runtime/permits.py _require_active)."""
    return active_mission(mission_id=MISSION["id"], created_at=NOW - timedelta(days=1))




def test_a_replayed_permit_is_consumed(store: Store, held: Any) -> None:
    token = mint(evaluation_id="dec_replay")
    spend = PermitConsumer(store)
    first = verify_permit(store, token, key_for=KEYS, issuer=PDP, audience=MCP, tool_id=WIRE,
                          arguments=ARGUMENTS, presenter_jkt=PRESENTER_JKT, now=NOW)
    assert first.evaluation_id == "dec_replay"
    refused("permit_consumed", lambda: verify_permit(
        spend, token, key_for=KEYS, issuer=PDP, audience=MCP, tool_id=WIRE,
        arguments=ARGUMENTS, presenter_jkt=PRESENTER_JKT, now=NOW))


def test_a_refused_permit_is_not_consumed(store: Store, held: Any) -> None:
    token = mint(evaluation_id="dec_kept")

    def present(**overrides: Any) -> Any:
        values: dict[str, Any] = {"key_for": KEYS, "issuer": PDP, "audience": MCP,
                                  "tool_id": WIRE, "arguments": ARGUMENTS,
                                  "presenter_jkt": PRESENTER_JKT, "now": NOW}
        values.update(overrides)
        return verify_permit(store, token, **values)

    refused("parameter_mismatch", lambda: present(arguments={**ARGUMENTS, "amount": "1.00"}))
    refused("binding_mismatch", lambda: present(tool_id="get_invoice"))
    refused("binding_mismatch", lambda: present(presenter_jkt=None))
    assert present().evaluation_id == "dec_kept"


def test_consumption_in_the_callers_transaction_rolls_back_with_it(store: Store) -> None:
    permit = check(mint(evaluation_id="dec_tx"))
    with pytest.raises(RuntimeError), store.begin() as session:
        consume_permit(permit, consume_in(session))
        raise RuntimeError("the evidence could not be written")
    with store.begin() as session:
        consume_permit(permit, consume_in(session))
    with store.begin() as session:
        refused("permit_consumed", lambda: consume_permit(permit, consume_in(session)))


def test_a_permit_without_use_limit_is_not_recorded(store: Store, held: Any) -> None:
    token = mint(evaluation_id="dec_multi", use_limit=None)
    for _ in range(2):
        assert verify_permit(store, token, key_for=KEYS, issuer=PDP, audience=MCP,
                             tool_id=WIRE, arguments=ARGUMENTS, presenter_jkt=PRESENTER_JKT,
                             now=NOW).use_limit is None


def test_20_concurrent_presentations_run_once(store: Store, held: Any) -> None:
    token = mint(evaluation_id="dec_race")

    def present(_: int) -> str:
        try:
            verify_permit(store, token, key_for=KEYS, issuer=PDP, audience=MCP, tool_id=WIRE,
                          arguments=ARGUMENTS, presenter_jkt=PRESENTER_JKT, now=NOW)
        except PermitRefused as exc:
            return exc.error
        return "ran"

    results = run_concurrently(20, present)
    assert sorted(map(str, results)) == ["permit_consumed"] * 19 + ["ran"]


def test_a_permit_of_a_revoked_mission_is_refused_and_not_spent(store: Store, held: Any) -> None:
    """DESIGN.md "Atomic truth": a revoke acknowledged is never followed by an execution,
    even inside the permit's window; the refused permit is not spent."""
    token = mint(evaluation_id="dec_revoked")
    with store.begin() as session:
        transition(session, MISSION["id"], Event.REVOKE, roles={Role.ADMIN},
                   actor={"role": "admin", "iss": PDP, "sub": "bob"}, reason=None,
                   now=NOW - timedelta(seconds=1))
    refused("mission_inactive", lambda: verify_permit(
        store, token, key_for=KEYS, issuer=PDP, audience=MCP, tool_id=WIRE,
        arguments=ARGUMENTS, presenter_jkt=PRESENTER_JKT, now=NOW))
    with store.begin() as session:
        assert consume_once(session, PERMIT_NAMESPACE, "dec_revoked",
                            NOW + timedelta(hours=1)), "a refused permit was spent"
