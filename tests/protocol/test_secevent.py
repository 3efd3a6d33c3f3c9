"""verify_set (RFC 8417 as a recipient): every SET is checked with real signatures, and every
refusal carries the RFC 8935 section 2.4 error code a push receiver would answer with."""

from __future__ import annotations

import json
import warnings
from datetime import datetime, timedelta
from typing import Any

import pytest
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import OctKey
from joserfc.jws import JWSRegistry

from missionbound.protocol.jwks import JwksCache, JwksUnavailable, StaticKeys
from missionbound.protocol.secevent import (
    LIFECYCLE_CHANGE,
    MAX_SET_LENGTH,
    SetRejected,
    is_set_type,
    verify_set,
)
from tests.e2e_support import free_port
from tests.protocol.proofs import b64url, forge_raw, generate_key, public_jwk
from tests.protocol.secevents import (
    AUDIENCE,
    DROP,
    IAT,
    ISSUER,
    NOW,
    Transmitter,
    lifecycle_event,
)


@pytest.fixture(scope="module")
def transmitter() -> Transmitter:
    return Transmitter()


@pytest.fixture(scope="module")
def keys(transmitter: Transmitter) -> StaticKeys:
    return StaticKeys(transmitter.jwks)


def verify(token: str, keys: StaticKeys, **options: Any) -> dict[str, Any]:
    options = {"issuer": ISSUER, "audience": AUDIENCE, "now": NOW, **options}
    return verify_set(token, keys=keys, **options)


def refused(token: Any, keys: StaticKeys, err: str, **options: Any) -> SetRejected:
    with pytest.raises(SetRejected) as caught:
        verify(token, keys, **options)
    assert caught.value.err == err, caught.value.description
    assert caught.value.as_json()["err"] == err
    return caught.value


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return forge_raw(json.dumps(header), json.dumps(claims), signature)


GOOD_CLAIMS = {"iss": ISSUER, "aud": AUDIENCE, "iat": IAT, "jti": "j1",
               "events": lifecycle_event()}


# -- accepted ---------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "ES384", "EdDSA", "Ed25519", "PS256", "RS256"])
def test_a_set_signed_with_each_accepted_algorithm_verifies(alg: str) -> None:
    signer = Transmitter(alg=alg)
    token = signer.sign(jti="abc")
    claims = verify(token, StaticKeys(signer.jwks))
    assert claims["jti"] == "abc"
    assert claims["events"][LIFECYCLE_CHANGE]["state"] == "active"


@pytest.mark.parametrize("typ", ["secevent+jwt", "SecEvent+JWT", "application/secevent+jwt",
                                 "APPLICATION/SECEVENT+JWT"])
def test_typ_is_a_media_type_compared_without_case_and_prefix(
    transmitter: Transmitter, keys: StaticKeys, typ: str
) -> None:
    # RFC 7515 section 4.1.9: "application/" may be omitted; media types ignore case.
    assert is_set_type(typ)
    verify(transmitter.sign(header={"typ": typ}), keys)


def test_aud_may_be_an_array_holding_the_audience(transmitter: Transmitter,
                                                  keys: StaticKeys) -> None:
    verify(transmitter.sign(aud=["someone-else", AUDIENCE]), keys)


def test_iat_a_little_ahead_within_the_skew_and_a_future_exp_are_accepted(
    transmitter: Transmitter, keys: StaticKeys
) -> None:
    verify(transmitter.sign(iat=IAT + 59, exp=IAT + 300), keys)


def test_an_old_set_is_accepted_without_max_age(transmitter: Transmitter,
                                                keys: StaticKeys) -> None:
    # RFC 8417 gives SETs no lifetime: one delivered a day late is still true.
    verify(transmitter.sign(iat=IAT - 86400), keys)
    verify(transmitter.sign(iat=IAT - 100), keys, max_age_seconds=120)


def test_key_ids_are_taken_from_the_jwks_never_from_the_header(keys: StaticKeys,
                                                               transmitter: Transmitter) -> None:
    # An embedded key is never read: signed by a stranger, the SET fails authentication
    # with the issuer's key even though its own "jwk" would verify it.
    stranger = generate_key("ES256")
    registry = JWSRegistry(algorithms=["ES256"], strict_check_header=False)
    header = {"alg": "ES256", "typ": "secevent+jwt", "kid": transmitter.kid,
              "jwk": public_jwk(stranger)}
    token = jws.serialize_compact(header, json.dumps(GOOD_CLAIMS), stranger, registry=registry)
    refused(token, keys, "authentication_failed")


# -- invalid_request: not a SET of this profile ----------------------------------------


@pytest.mark.parametrize("typ", [DROP, "JWT", "at+jwt", "secevent", "jwt+secevent", 7, None])
def test_a_token_of_another_type_is_refused(transmitter: Transmitter, keys: StaticKeys,
                                            typ: Any) -> None:
    # RFC 8417 section 2.3 / RFC 8725 section 3.11: an access token or ID token signed by
    # the same key never passes as a SET.
    refused(transmitter.sign(header={"typ": typ}), keys, "invalid_request")


@pytest.mark.parametrize("token", [
    "", "abc", "a.b", "a.b.c.d", "a b.c.d", "é.b.c", "a.b.c\n",
    "eyJh.eyJh.c2ln.ZXh0.cmE",  # five parts: a JWE
])
def test_malformed_tokens_are_invalid_requests(keys: StaticKeys, token: str) -> None:
    refused(token, keys, "invalid_request")


def test_a_token_that_is_not_text_is_an_invalid_request(keys: StaticKeys) -> None:
    refused(b"a.b.c", keys, "invalid_request")


def test_an_oversized_token_is_refused_before_decoding(keys: StaticKeys) -> None:
    token = "a" * (MAX_SET_LENGTH - 4) + ".b.c"
    error = refused(token + "cc", keys, "invalid_request")
    assert str(MAX_SET_LENGTH) in error.description


@pytest.mark.parametrize(("header_json", "claims_json"), [
    ("[]", json.dumps(GOOD_CLAIMS)),
    ('{"alg": "ES256", "typ": "secevent+jwt", "kid": "k", "kid": "k2"}',
     json.dumps(GOOD_CLAIMS)),
    ('{"alg": "ES256", "typ": "secevent+jwt", "kid": "k"}', '"a string"'),
    ('{"alg": "ES256", "typ": "secevent+jwt", "kid": "k"}',
     '{"iss": "a", "iss": "b", "aud": "x"}'),
    ('{"alg": "ES256", "typ": "secevent+jwt", "kid": "k"}', '{"iat": NaN}'),
])
def test_headers_and_claims_must_be_json_objects_without_duplicates(
    keys: StaticKeys, header_json: str, claims_json: str
) -> None:
    refused(forge_raw(header_json, claims_json), keys, "invalid_request")


def test_bad_base64_is_an_invalid_request(keys: StaticKeys) -> None:
    refused("e.e.c", keys, "invalid_request")


@pytest.mark.parametrize("header", [{"crit": ["exp"]}, {"b64": False}, {"kid": DROP},
                                    {"kid": ""}, {"kid": 5}])
def test_extensions_and_a_missing_kid_are_invalid_requests(
    transmitter: Transmitter, keys: StaticKeys, header: dict[str, Any]
) -> None:
    refused(transmitter.sign(header=header), keys, "invalid_request")


def test_a_missing_alg_is_an_invalid_request(keys: StaticKeys, transmitter: Transmitter) -> None:
    header = {"typ": "secevent+jwt", "kid": transmitter.kid}
    refused(unsigned(header, GOOD_CLAIMS, b"sig"), keys, "invalid_request")


@pytest.mark.parametrize("claims", [
    {"jti": DROP}, {"jti": ""}, {"jti": 12}, {"jti": "j" * 256},
    {"iat": DROP}, {"iat": "1700000000"}, {"iat": True}, {"iat": None},
    {"events": DROP}, {"events": {}}, {"events": []}, {"events": "x"},
    {"events": {LIFECYCLE_CHANGE: "active"}}, {"events": {"": {}}},
    {"iss": DROP}, {"iss": 1}, {"aud": DROP}, {"aud": []}, {"aud": [1]}, {"aud": 3},
    {"exp": "soon"}, {"nbf": []},
])
def test_missing_or_ill_typed_claims_are_invalid_requests(
    transmitter: Transmitter, keys: StaticKeys, claims: dict[str, Any]
) -> None:
    refused(transmitter.sign(**claims), keys, "invalid_request")


def test_a_jti_of_255_characters_is_the_longest_accepted(transmitter: Transmitter,
                                                         keys: StaticKeys) -> None:
    verify(transmitter.sign(jti="j" * 255), keys)


def test_a_set_issued_in_the_future_beyond_the_skew_is_refused(
    transmitter: Transmitter, keys: StaticKeys
) -> None:
    error = refused(transmitter.sign(iat=IAT + 61), keys, "invalid_request")
    assert "future" in error.description
    refused(transmitter.sign(iat=IAT + 11), keys, "invalid_request", max_clock_skew_seconds=10)


def test_a_set_older_than_max_age_is_refused(transmitter: Transmitter,
                                             keys: StaticKeys) -> None:
    refused(transmitter.sign(iat=IAT - 121), keys, "invalid_request", max_age_seconds=120)


def test_an_expired_or_not_yet_valid_set_is_refused(transmitter: Transmitter,
                                                    keys: StaticKeys) -> None:
    refused(transmitter.sign(exp=IAT - 61), keys, "invalid_request")
    refused(transmitter.sign(nbf=IAT + 61), keys, "invalid_request")


# -- invalid_key: the algorithm or the key is unacceptable ------------------------------


def test_alg_none_is_refused(transmitter: Transmitter, keys: StaticKeys) -> None:
    header = {"alg": "none", "typ": "secevent+jwt", "kid": transmitter.kid}
    refused(unsigned(header, GOOD_CLAIMS), keys, "invalid_key")
    refused(unsigned({**header, "alg": "None"}, GOOD_CLAIMS, b"x"), keys, "invalid_key")


def test_hs256_signed_with_the_issuers_public_key_is_refused(transmitter: Transmitter,
                                                             keys: StaticKeys) -> None:
    # The classic algorithm confusion: HMAC keyed with the public key everyone knows.
    secret = OctKey.import_key(json.dumps(transmitter.jwk, sort_keys=True).encode())
    header = {"alg": "HS256", "typ": "secevent+jwt", "kid": transmitter.kid}
    token = jws.serialize_compact(header, json.dumps(GOOD_CLAIMS), secret,
                                  registry=JWSRegistry(algorithms=["HS256"]))
    error = refused(token, keys, "invalid_key")
    assert "HS256" in error.description


@pytest.mark.parametrize("alg", ["ES512", "RS512", "HS512", "PS384", "dir", ""])
def test_algorithms_off_the_list_are_refused(transmitter: Transmitter, keys: StaticKeys,
                                             alg: str) -> None:
    header = {"alg": alg, "typ": "secevent+jwt", "kid": transmitter.kid}
    expected = "invalid_request" if alg == "" else "invalid_key"
    refused(unsigned(header, GOOD_CLAIMS, b"sig"), keys, expected)


def test_an_unknown_kid_is_an_invalid_key(transmitter: Transmitter, keys: StaticKeys) -> None:
    error = refused(transmitter.sign(header={"kid": "rotated-away"}), keys, "invalid_key")
    assert "rotated-away" in error.description


def test_a_kid_naming_a_key_of_another_type_is_an_invalid_key() -> None:
    ec, rsa = Transmitter("ES256"), Transmitter("RS256")
    keys = StaticKeys({"keys": [ec.jwk, rsa.jwk]})
    # An RS256 SET whose kid names the EC key, and an ES384 one naming a P-256 key.
    refused(rsa.sign(header={"kid": ec.kid}), keys, "invalid_key")
    p384 = Transmitter("ES384")
    refused(p384.sign(header={"kid": ec.kid}), keys, "invalid_key")


def test_a_key_published_for_another_algorithm_is_an_invalid_key() -> None:
    signer = Transmitter("RS256")
    keys = StaticKeys({"keys": [{**signer.jwk, "alg": "PS256"}]})
    refused(signer.sign(), keys, "invalid_key")
    verify(signer.sign(alg="PS256"), keys)
    # Without "alg" an Ed25519 key serves both names of its signatures (RFC 9864).
    ed = Transmitter("EdDSA")
    verify(ed.sign(alg="Ed25519"), StaticKeys(ed.jwks))
    refused(ed.sign(alg="Ed25519"), StaticKeys({"keys": [{**ed.jwk, "alg": "EdDSA"}]}),
            "invalid_key")


# -- authentication_failed: the signature ----------------------------------------------


def test_a_set_signed_by_another_key_with_the_same_kid_fails_authentication(
    transmitter: Transmitter, keys: StaticKeys
) -> None:
    impostor = Transmitter(kid=transmitter.kid)
    refused(impostor.sign(), keys, "authentication_failed")


def test_a_tampered_set_fails_authentication(transmitter: Transmitter,
                                             keys: StaticKeys) -> None:
    header, _, signature = transmitter.sign().split(".")
    changed = {**GOOD_CLAIMS, "events": lifecycle_event("active", 99)}
    token = f"{header}.{b64url(json.dumps(changed).encode())}.{signature}"
    refused(token, keys, "authentication_failed")
    refused(f"{header}.{b64url(json.dumps(changed).encode())}.", keys, "authentication_failed")


# -- invalid_issuer, invalid_audience ---------------------------------------------------


def test_another_issuer_is_refused(transmitter: Transmitter, keys: StaticKeys) -> None:
    refused(transmitter.sign(iss="https://evil.example"), keys, "invalid_issuer")
    refused(transmitter.sign(iss=ISSUER + "/"), keys, "invalid_issuer")


def test_another_audience_is_refused(transmitter: Transmitter, keys: StaticKeys) -> None:
    refused(transmitter.sign(aud="another-rs"), keys, "invalid_audience")
    refused(transmitter.sign(aud=["a", "b"]), keys, "invalid_audience")


# -- keys that cannot be had ------------------------------------------------------------


def test_unavailable_keys_are_no_verdict_on_the_set(transmitter: Transmitter) -> None:
    # Nothing listens on this port: the JWKS cannot be fetched. That is not a reason to
    # reject the SET for good, so it is not a SetRejected.
    with JwksCache(f"http://127.0.0.1:{free_port()}/jwks") as cache, pytest.raises(
        JwksUnavailable
    ):
        verify_set(transmitter.sign(), keys=cache, issuer=ISSUER, audience=AUDIENCE, now=NOW)


# -- the error object -------------------------------------------------------------------


def test_set_rejected_carries_rfc8935_codes_only() -> None:
    error = SetRejected("invalid_audience", 'not "yours" \\ here\n')
    assert error.as_json() == {"err": "invalid_audience", "description": "not 'yours' / here?"}
    assert error.status == 400 and error.error == "invalid_audience"
    with pytest.raises(ValueError):
        SetRejected("invalid_token", "no such RFC 8935 code")


def test_now_must_be_timezone_aware(transmitter: Transmitter, keys: StaticKeys) -> None:
    with pytest.raises(ValueError):
        verify(transmitter.sign(), keys, now=datetime(2026, 3, 2))
    with pytest.raises(ValueError):
        verify(transmitter.sign(), keys, max_age_seconds=0)


def test_the_default_clock_is_now(keys: StaticKeys, transmitter: Transmitter) -> None:
    now = datetime.now(NOW.tzinfo)
    fresh = transmitter.sign(iat=int(now.timestamp()))
    assert verify_set(fresh, keys=keys, issuer=ISSUER, audience=AUDIENCE)["iss"] == ISSUER
    ahead = transmitter.sign(iat=int((now + timedelta(hours=1)).timestamp()))
    with pytest.raises(SetRejected):
        verify_set(ahead, keys=keys, issuer=ISSUER, audience=AUDIENCE)


def test_no_security_warning_for_eddsa() -> None:
    signer = Transmitter("EdDSA")
    token = signer.sign()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SecurityWarning)
        verify(token, StaticKeys(signer.jwks))
