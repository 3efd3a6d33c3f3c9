"""The JWS checks SETs, Transaction Tokens and origins' JWTs share (protocol/jose_segments.py):
each refusal carries the neutral reason its verifier maps to its own error code."""

from __future__ import annotations

import json
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import Key
from joserfc.jws import JWSRegistry

from missionbound.protocol.jose_segments import (
    AllowListRegistry,
    JwsRefused,
    read_compact,
    verify_signed_jws,
)
from missionbound.protocol.jwks import SIGNATURE_ALGS, JwksUnavailable, StaticKeys
from tests.protocol.proofs import forge_raw, generate_key, public_jwk

REGISTRY = AllowListRegistry(SIGNATURE_ALGS, max_length=4096)
CLAIMS = {"iss": "https://issuer.example"}


class Refused(ValueError):
    pass


def signed(key: Key, header: dict[str, Any], alg: str = "ES256") -> str:
    registry = JWSRegistry(algorithms=[alg], strict_check_header=False)
    return jws.serialize_compact({"alg": alg, **header}, json.dumps(CLAIMS), key,
                                 registry=registry)


def keys_of(key: Key, **members: Any) -> StaticKeys:
    return StaticKeys({"keys": [{**public_jwk(key), "kid": "k1", **members}]})


def refusal(token: str, header: dict[str, Any], keys: StaticKeys, **options: Any) -> str:
    with pytest.raises(JwsRefused) as caught:
        verify_signed_jws(token, header, keys=keys, registry=REGISTRY, what="token", **options)
    return caught.value.reason


def test_a_token_signed_by_the_named_key_passes() -> None:
    key = generate_key()
    token = signed(key, {"kid": "k1"})
    header, claims = read_compact(token, "token", Refused, max_length=4096)
    assert claims == CLAIMS
    verify_signed_jws(token, header, keys=keys_of(key), registry=REGISTRY, what="token")


@pytest.mark.parametrize(("header", "reason"), [
    ({"kid": "k1"}, JwsRefused.MALFORMED),  # no alg
    ({"alg": "", "kid": "k1"}, JwsRefused.MALFORMED),
    ({"alg": "none", "kid": "k1"}, JwsRefused.UNSUPPORTED_ALGORITHM),
    ({"alg": "HS256", "kid": "k1"}, JwsRefused.UNSUPPORTED_ALGORITHM),
    ({"alg": "ES256", "kid": "k1", "crit": ["exp"]}, JwsRefused.MALFORMED),
    ({"alg": "ES256", "kid": "k1", "b64": False}, JwsRefused.MALFORMED),
    ({"alg": "ES256"}, JwsRefused.MALFORMED),  # no kid
    ({"alg": "ES256", "kid": 7}, JwsRefused.MALFORMED),
    ({"alg": "ES256", "kid": "other"}, JwsRefused.UNKNOWN_KEY),
    ({"alg": "RS256", "kid": "k1"}, JwsRefused.UNSUITABLE_KEY),  # an EC key
    ({"alg": "ES256", "kid": "k1"}, JwsRefused.BAD_SIGNATURE),  # filler signature
])
def test_each_refusal_has_its_reason(header: dict[str, Any], reason: str) -> None:
    token = forge_raw(json.dumps(header), json.dumps(CLAIMS))
    assert refusal(token, header, keys_of(generate_key())) == reason


def test_a_signature_by_another_key_is_bad() -> None:
    token = signed(generate_key(), {"kid": "k1"})
    header, _ = read_compact(token, "token", Refused, max_length=4096)
    assert refusal(token, header, keys_of(generate_key())) == JwsRefused.BAD_SIGNATURE


def test_a_key_published_for_another_algorithm_is_unsuitable() -> None:
    key = generate_key()
    token = signed(key, {"kid": "k1"})
    header, _ = read_compact(token, "token", Refused, max_length=4096)
    assert refusal(token, header, keys_of(key, alg="ES384")) == JwsRefused.UNSUITABLE_KEY


def test_kid_length_is_bounded_only_when_asked() -> None:
    key = generate_key()
    token = signed(key, {"kid": "k" * 256})
    header, _ = read_compact(token, "token", Refused, max_length=4096)
    assert refusal(token, header, keys_of(key), max_kid_length=255) == JwsRefused.MALFORMED
    assert refusal(token, header, keys_of(key)) == JwsRefused.UNKNOWN_KEY


def test_unavailable_keys_are_no_verdict() -> None:
    class Down:
        def key_for(self, kid: str) -> Key:
            raise JwksUnavailable("down")

        def key_set(self) -> Any:
            raise JwksUnavailable("down")

    token = signed(generate_key(), {"kid": "k1"})
    header, _ = read_compact(token, "token", Refused, max_length=4096)
    with pytest.raises(JwksUnavailable):
        verify_signed_jws(token, header, keys=Down(), registry=REGISTRY, what="token")


@pytest.mark.parametrize("token", [
    None, "a.b", "a.b.c.d", "a..c", "a b.c.d", "x" * 5000,
    forge_raw("[]", "{}"), forge_raw('{"alg": 1, "alg": 2}', "{}"),
])
def test_read_compact_refuses_what_is_no_compact_jws(token: Any) -> None:
    with pytest.raises(Refused):
        read_compact(token, "token", Refused, max_length=4096)
