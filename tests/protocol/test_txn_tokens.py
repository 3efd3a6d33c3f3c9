"""verify_txn_token (draft-ietf-oauth-transaction-tokens-10, "Txn-Token Validation"): real
signatures throughout, and every refusal with its reason code."""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import Key, OctKey
from joserfc.jws import JWSRegistry

from missionbound.mission.anchors import authority_hash
from missionbound.protocol.jwks import StaticKeys
from missionbound.protocol.txn_tokens import (
    BAD_SIGNATURE,
    EXPIRED,
    INVALID_CLAIM,
    INVALID_MISSION,
    MALFORMED,
    MAX_TXN_TOKEN_LENGTH,
    MISSING_CLAIM,
    NOT_YET_VALID,
    TOO_LONG_LIVED,
    UNKNOWN_KEY,
    UNSUPPORTED_ALGORITHM,
    WRONG_AUDIENCE,
    WRONG_ISSUER,
    WRONG_TYPE,
    MissionEvidence,
    TxnTokenRejected,
    is_txn_token_type,
    verify_txn_token,
)
from tests.protocol.proofs import b64url, forge_raw, generate_key, public_jwk

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
IAT = int(NOW.timestamp())
TRUST_DOMAIN = "https://as.example.test"
ISSUER = "https://as.example.test"
MISSION = {
    "id": "msn_" + "A" * 32,
    "origin": ISSUER,
    "authority_hash": authority_hash(ISSUER, []),
}
DROP: Any = object()


class Service:
    """A token service signing Txn-Tokens with one key of ``alg``."""

    def __init__(self, alg: str = "ES256", kid: str = "tts-key-1") -> None:
        self.alg = alg
        self.kid = kid
        self.key: Key = generate_key(alg)
        self.jwk = {**public_jwk(self.key), "kid": kid, "alg": alg, "use": "sig"}

    def sign(self, claims: dict[str, Any] | None = None, *, header: dict[str, Any] | None = None,
             key: Key | None = None, **overrides: Any) -> str:
        protected = _merge({"typ": "txntoken+jwt", "alg": self.alg, "kid": self.kid},
                           header or {})
        body = _merge(claims if claims is not None else good_claims(), overrides)
        registry = JWSRegistry(algorithms=[protected["alg"]], strict_check_header=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)
            return jws.serialize_compact(protected, json.dumps(body), key or self.key,
                                         registry=registry)


def good_claims(**overrides: Any) -> dict[str, Any]:
    claims = {
        "iss": ISSUER,
        "iat": IAT,
        "exp": IAT + 60,
        "aud": TRUST_DOMAIN,
        "txn": "97053963-771d-49cc-a4e3-20aad399c312",
        "sub": "alice",
        "scope": "invoices.read get_invoice",
        "req_wl": "demo-rs",
        "tctx": {"mission": dict(MISSION), "invoice": "inv-acme-1"},
        "rctx": {"req_ip": "192.0.2.7", "req_wl": "demo-rs"},
    }
    return _merge(claims, overrides)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = {**base, **overrides}
    return {name: value for name, value in merged.items() if value is not DROP}


@pytest.fixture(scope="module")
def service() -> Service:
    return Service()


@pytest.fixture(scope="module")
def keys(service: Service) -> StaticKeys:
    return StaticKeys({"keys": [service.jwk]})


def verify(token: Any, keys: StaticKeys, **options: Any) -> Any:
    return verify_txn_token(token, keys=keys, **{"trust_domain": TRUST_DOMAIN, "now": NOW,
                                                  **options})


def refused(token: Any, keys: StaticKeys, reason: str, **options: Any) -> TxnTokenRejected:
    with pytest.raises(TxnTokenRejected) as caught:
        verify(token, keys, **options)
    assert caught.value.reason == reason, caught.value.description
    assert caught.value.to_wire()["error"] == "invalid_token"
    assert caught.value.status == 401
    return caught.value


# -- accepted ----------------------------------------------------------------------------------


def test_a_good_txn_token_is_read_whole(service: Service, keys: StaticKeys) -> None:
    token = verify(service.sign(), keys, issuer=ISSUER)
    assert token.txn == "97053963-771d-49cc-a4e3-20aad399c312"
    assert token.sub == "alice"
    assert token.scope == ("invoices.read", "get_invoice")
    assert token.has_scope("get_invoice") and not token.has_scope("Get_invoice")
    assert token.aud == TRUST_DOMAIN and token.iss == ISSUER and token.req_wl == "demo-rs"
    assert (token.iat, token.exp) == (IAT, IAT + 60)
    assert token.mission == MissionEvidence(**MISSION)
    assert token.tctx == {"mission": MISSION, "invoice": "inv-acme-1"}
    assert token.rctx == {"req_ip": "192.0.2.7", "req_wl": "demo-rs"}
    assert token.claims["tctx"]["mission"] == MISSION


@pytest.mark.parametrize("alg", ["ES256", "ES384", "EdDSA", "PS256", "RS256"])
def test_every_asymmetric_algorithm_verifies(alg: str) -> None:
    signer = Service(alg)
    verify(signer.sign(), StaticKeys({"keys": [signer.jwk]}))


@pytest.mark.parametrize("typ", ["txntoken+jwt", "application/txntoken+jwt", "TxnToken+JWT"])
def test_the_type_may_be_spelled_as_rfc_7515_allows(service: Service, keys: StaticKeys,
                                                     typ: str) -> None:
    assert is_txn_token_type(typ)
    verify(service.sign(header={"typ": typ}), keys)


def test_rctx_is_optional_and_unknown_claims_are_ignored(service: Service,
                                                         keys: StaticKeys) -> None:
    token = verify(service.sign(rctx=DROP, iss=DROP, extra={"a": 1}), keys)
    assert token.rctx == {} and token.iss is None and token.claims["extra"] == {"a": 1}


def test_a_one_member_audience_array_names_the_trust_domain(service: Service,
                                                            keys: StaticKeys) -> None:
    assert verify(service.sign(aud=[TRUST_DOMAIN]), keys).aud == TRUST_DOMAIN


def test_leeway_absorbs_a_clock_behind_and_ahead(service: Service, keys: StaticKeys) -> None:
    verify(service.sign(exp=IAT - 10, iat=IAT - 70), keys, leeway=30)
    verify(service.sign(iat=IAT + 20, exp=IAT + 80), keys, leeway=30)


# -- refused: the JOSE layer -------------------------------------------------------------------


@pytest.mark.parametrize("typ", [DROP, "JWT", "at+jwt", "secevent+jwt", "oauth-id-jag+jwt",
                                 "application/at+jwt", "txntoken", 1])
def test_any_other_type_is_refused(service: Service, keys: StaticKeys, typ: Any) -> None:
    if isinstance(typ, str) or typ is DROP:
        token = service.sign(header={"typ": typ})
    else:  # joserfc signs no such header: refused before the signature anyway
        header = {"typ": typ, "alg": "ES256", "kid": service.kid}
        token = forge_raw(json.dumps(header), json.dumps(good_claims()))
    refused(token, keys, WRONG_TYPE)


def test_alg_none_is_refused(keys: StaticKeys, service: Service) -> None:
    header = {"typ": "txntoken+jwt", "alg": "none", "kid": service.kid}
    token = forge_raw(json.dumps(header), json.dumps(good_claims()), b"")
    error = refused(token, keys, UNSUPPORTED_ALGORITHM)
    assert "'none'" in error.description


def test_hs256_keyed_with_the_public_key_is_refused(service: Service, keys: StaticKeys) -> None:
    # The classic confusion: the public JWK (as published) used as an HMAC secret.
    secret = OctKey.import_key(json.dumps(service.jwk, sort_keys=True).encode())
    header = {"typ": "txntoken+jwt", "alg": "HS256", "kid": service.kid}
    token = jws.serialize_compact(header, json.dumps(good_claims()), secret,
                                  registry=JWSRegistry(algorithms=["HS256"]))
    error = refused(token, keys, UNSUPPORTED_ALGORITHM)
    assert "HS256" in error.description


@pytest.mark.parametrize("alg", ["HS512", "ES512", "RS512", "dir", "none"])
def test_algorithms_off_the_list_are_refused(service: Service, keys: StaticKeys,
                                             alg: str) -> None:
    header = {"typ": "txntoken+jwt", "alg": alg, "kid": service.kid}
    refused(forge_raw(json.dumps(header), json.dumps(good_claims())), keys,
            UNSUPPORTED_ALGORITHM)


def test_an_algorithm_the_key_cannot_make_is_refused(service: Service, keys: StaticKeys) -> None:
    # An EdDSA header naming the service's P-256 key.
    other = Service("EdDSA", kid=service.kid)
    refused(other.sign(), keys, UNSUPPORTED_ALGORITHM)


def test_a_bad_signature_is_refused(service: Service, keys: StaticKeys) -> None:
    impostor = generate_key("ES256")
    refused(service.sign(key=impostor), keys, BAD_SIGNATURE)


def test_claims_changed_after_signing_are_refused(service: Service, keys: StaticKeys) -> None:
    header, _, signature = service.sign().split(".")
    changed = b64url(json.dumps(good_claims(scope="execute_wire_transfer")).encode())
    refused(f"{header}.{changed}.{signature}", keys, BAD_SIGNATURE)


def test_an_unknown_kid_is_refused(service: Service, keys: StaticKeys) -> None:
    refused(service.sign(header={"kid": "rotated-away"}), keys, UNKNOWN_KEY)


def test_a_key_brought_in_the_header_is_never_used(keys: StaticKeys) -> None:
    rogue = Service(kid="rogue")
    token = rogue.sign(header={"jwk": public_jwk(rogue.key)})
    refused(token, keys, UNKNOWN_KEY)


@pytest.mark.parametrize("header", [{"kid": DROP}, {"kid": ""}, {"alg": DROP},
                                    {"crit": ["exp"]}, {"b64": False}])
def test_header_members_missing_or_unsupported_are_malformed(service: Service, keys: StaticKeys,
                                                             header: dict[str, Any]) -> None:
    protected = _merge({"typ": "txntoken+jwt", "alg": "ES256", "kid": service.kid}, header)
    refused(forge_raw(json.dumps(protected), json.dumps(good_claims())), keys, MALFORMED)


@pytest.mark.parametrize("token", [
    "", "not-a-jwt", "a.b", "a.b.c.d.e", "é.b.c", None, 42,
    forge_raw("[]", "{}"), forge_raw("{", "{}"),
    forge_raw('{"typ": "txntoken+jwt", "typ": "JWT", "alg": "ES256", "kid": "k"}', "{}"),
    "x" * (MAX_TXN_TOKEN_LENGTH + 1),
])
def test_what_is_no_compact_jws_is_malformed(keys: StaticKeys, token: Any) -> None:
    refused(token, keys, MALFORMED)


# -- refused: the claims -----------------------------------------------------------------------


@pytest.mark.parametrize("aud", ["https://other.example.test", [TRUST_DOMAIN, "https://x.test"],
                                 [], 7, None])
def test_another_trust_domain_is_refused(service: Service, keys: StaticKeys, aud: Any) -> None:
    refused(service.sign(aud=aud), keys, WRONG_AUDIENCE)


def test_an_unexpected_issuer_is_refused(service: Service, keys: StaticKeys) -> None:
    refused(service.sign(), keys, WRONG_ISSUER, issuer="https://other.example.test")
    refused(service.sign(iss=DROP), keys, WRONG_ISSUER, issuer=ISSUER)


def test_an_expired_txn_token_is_refused(service: Service, keys: StaticKeys) -> None:
    refused(service.sign(iat=IAT - 120, exp=IAT - 31), keys, EXPIRED, leeway=30)
    refused(service.sign(iat=IAT - 60, exp=IAT), keys, EXPIRED, leeway=0)


def test_a_txn_token_from_the_future_is_refused(service: Service, keys: StaticKeys) -> None:
    refused(service.sign(iat=IAT + 31, exp=IAT + 90), keys, NOT_YET_VALID, leeway=30)
    refused(service.sign(nbf=IAT + 31), keys, NOT_YET_VALID, leeway=30)


def test_a_long_lived_txn_token_is_refused(service: Service, keys: StaticKeys) -> None:
    refused(service.sign(exp=IAT + 301), keys, TOO_LONG_LIVED)
    verify(service.sign(exp=IAT + 3600), keys, max_lifetime_seconds=3600)


def test_exp_before_iat_is_refused(service: Service, keys: StaticKeys) -> None:
    refused(service.sign(iat=IAT + 10, exp=IAT + 5), keys, INVALID_CLAIM)


@pytest.mark.parametrize("name", ["iat", "exp", "aud", "txn", "sub", "scope", "req_wl", "tctx"])
def test_every_required_claim_is_required(service: Service, keys: StaticKeys, name: str) -> None:
    refused(service.sign(**{name: DROP}), keys, MISSING_CLAIM)


@pytest.mark.parametrize(("name", "value"), [
    ("iat", "1700000000"), ("exp", True), ("exp", None), ("txn", ""), ("txn", 7),
    ("sub", ["alice"]), ("req_wl", ""), ("scope", ""), ("scope", "a  b"), ("scope", ["a"]),
    ("tctx", []), ("tctx", "mission"), ("rctx", "x"), ("iss", 3),
])
def test_ill_typed_claims_are_refused(service: Service, keys: StaticKeys, name: str,
                                      value: Any) -> None:
    refused(service.sign(**{name: value}), keys, INVALID_CLAIM)


def test_a_tctx_without_mission_is_refused(service: Service, keys: StaticKeys) -> None:
    refused(service.sign(tctx={"invoice": "inv-acme-1"}), keys, MISSING_CLAIM)


@pytest.mark.parametrize("mission", [
    "msn_x", ["msn"], None,
    {**MISSION, "id": "not-a-mission-id"},
    {**MISSION, "id": DROP},
    {**MISSION, "origin": "urn:example:as"},
    {**MISSION, "origin": ""},
    {**MISSION, "authority_hash": "sha-1:abc"},
    {**MISSION, "authority_hash": "sha-256:short"},
    {**MISSION, "authority_hash": None},
])
def test_a_malformed_mission_is_refused(service: Service, keys: StaticKeys,
                                        mission: Any) -> None:
    if isinstance(mission, dict):
        mission = _merge(mission, {})
    refused(service.sign(tctx={"mission": mission}), keys, INVALID_MISSION)


def test_extra_mission_members_are_ignored(service: Service, keys: StaticKeys) -> None:
    token = verify(service.sign(tctx={"mission": {**MISSION, "state": "active"}}), keys)
    assert token.mission == MissionEvidence(**MISSION)


# -- the caller's mistakes ---------------------------------------------------------------------


def test_options_are_checked(service: Service, keys: StaticKeys) -> None:
    token = service.sign()
    with pytest.raises(ValueError, match="timezone-aware"):
        verify(token, keys, now=NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="leeway"):
        verify(token, keys, leeway=-1)
    with pytest.raises(ValueError, match="trust_domain"):
        verify(token, keys, trust_domain="")


def test_now_defaults_to_the_current_time(service: Service, keys: StaticKeys) -> None:
    current = int(datetime.now(UTC).timestamp())
    verify(service.sign(iat=current, exp=current + 60), keys, now=None)
    refused(service.sign(), keys, EXPIRED, now=NOW + timedelta(hours=1))
