"""Signing keys on real databases (SQLite file and PostgreSQL schema): generation and the
RFC 7638 kid, ensure/rotate/publish, and the race of several replicas creating the first key."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from joserfc import jws
from joserfc.jwk import JWKRegistry, thumbprint

from missionbound.issuer.keys import (
    RETIRED_KEY_PUBLISHED_FOR,
    NoSigningKey,
    SigningAlgorithm,
    ensure_signing_key,
    generate_signing_key,
    list_signing_keys,
    public_jwks,
    rotate_signing_key,
    signing_key,
)
from missionbound.store.keys import PRIVATE_JWK_MEMBERS
from missionbound.store.transactions import Store
from tests.store.concurrency import run_concurrently

# joserfc warns on every EdDSA use (RFC 9864 names it "Ed25519"); EdDSA is what we publish.
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
# RFC 7638 section 3.2: the required members, per key type, in lexicographic order.
REQUIRED_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}


def rfc7638_thumbprint(jwk: dict[str, str]) -> str:
    members = {name: jwk[name] for name in REQUIRED_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    digest = hashlib.sha256(canonical).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def verify(token: str, key_set: dict[str, object], alg: str) -> bytes:
    """Verify as a relying party would: pick the published key by the header's kid."""
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    keys = [k for k in key_set["keys"] if k["kid"] == header["kid"]]  # type: ignore[attr-defined]
    assert len(keys) == 1, f"kid {header['kid']} is not published"
    public = JWKRegistry.import_key(keys[0])
    assert not public.is_private
    registry = jws.JWSRegistry(algorithms=[alg])
    return jws.deserialize_compact(token, public, registry=registry).payload


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize(
    ("alg", "kty", "crv"), [("ES256", "EC", "P-256"), ("EdDSA", "OKP", "Ed25519")]
)
def test_generated_key_is_named_by_its_rfc7638_thumbprint(alg: str, kty: str, crv: str) -> None:
    generated = generate_signing_key(alg)
    assert generated.alg == alg
    assert (generated.public_jwk["kty"], generated.public_jwk["crv"]) == (kty, crv)
    assert generated.kid == rfc7638_thumbprint(generated.public_jwk)
    # joserfc agrees (its function hashes whatever members it is given: the required ones).
    required = {n: generated.public_jwk[n] for n in REQUIRED_MEMBERS[kty]}
    assert generated.kid == thumbprint(required)
    assert not PRIVATE_JWK_MEMBERS & set(generated.public_jwk)
    assert "d" in generated.private_jwk
    # Never in a repr (logs, tracebacks).
    assert generated.private_jwk["d"] not in repr(generated)


def test_rfc7638_computation_matches_the_rfc_example() -> None:
    # RFC 7638 section 3.1 (an RSA key): our independent computation is the RFC's.
    example = {
        "kty": "RSA",
        "e": "AQAB",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6"
            "tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5"
            "v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbIS"
            "D08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-"
            "kEgU8awapJzKnqDKgw"
        ),
    }
    assert rfc7638_thumbprint(example) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_an_unknown_algorithm_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported signing alg 'RS256'"):
        generate_signing_key("RS256")


# --------------------------------------------------------------------------- ensure


def test_there_is_no_signing_key_before_ensure(store: Store) -> None:
    with pytest.raises(NoSigningKey):
        signing_key(store, NOW)
    assert public_jwks(store, NOW) == {"keys": []}


def test_ensure_creates_one_key_then_keeps_it(store: Store) -> None:
    kid = ensure_signing_key(store, NOW)
    assert ensure_signing_key(store, NOW + timedelta(days=30)) == kid
    assert [k["kid"] for k in public_jwks(store, NOW)["keys"]] == [kid]
    signer = signing_key(store, NOW)
    assert (signer.kid, signer.alg) == (kid, SigningAlgorithm.ES256)


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_a_jws_signed_with_the_signing_key_verifies_against_the_jwks(
    store: Store, alg: str
) -> None:
    ensure_signing_key(store, NOW, alg=alg)
    signer = signing_key(store, NOW)
    token = jws.serialize_compact(
        signer.protected_header(typ="JWT"), b'{"sub":"alice"}', signer.key, registry=signer.registry
    )
    assert verify(token, public_jwks(store, NOW), alg) == b'{"sub":"alice"}'


def test_ensure_from_many_threads_leaves_a_usable_current_key(store: Store) -> None:
    results = run_concurrently(8, lambda _: ensure_signing_key(store, NOW))
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    published = {k["kid"] for k in public_jwks(store, NOW)["keys"]}
    # Every kid handed out is published (racing replicas may each have added one) ...
    assert set(results) <= published  # type: ignore[arg-type]
    # ... and exactly one signs, which ensure now returns everywhere.
    signer = signing_key(store, NOW)
    assert signer.kid in published
    assert ensure_signing_key(store, NOW) == signer.kid
    assert [k.kid for k in list_signing_keys(store, NOW) if k.signing] == [signer.kid]
    if store.engine.dialect.name == "sqlite":
        # BEGIN IMMEDIATE serializes the re-check: no duplicate on one file.
        assert len(published) == 1


# --------------------------------------------------------------------------- rotation


def test_rotation_keeps_the_old_key_published_until_the_window_ends(store: Store) -> None:
    old = ensure_signing_key(store, NOW)
    old_signer = signing_key(store, NOW)
    old_token = jws.serialize_compact(
        old_signer.protected_header(), b"before", old_signer.key, registry=old_signer.registry
    )
    rotated_at = NOW + timedelta(hours=1)
    new, retired = rotate_signing_key(store, rotated_at)
    assert retired == [old]
    assert new != old

    # The new key signs from now on; what the old one signed still verifies.
    signer = signing_key(store, rotated_at)
    assert signer.kid == new
    new_token = jws.serialize_compact(
        signer.protected_header(), b"after", signer.key, registry=signer.registry
    )
    last_moment = rotated_at + RETIRED_KEY_PUBLISHED_FOR - timedelta(microseconds=1)
    for when in (rotated_at, last_moment):
        key_set = public_jwks(store, when)
        assert [k["kid"] for k in key_set["keys"]] == [old, new]
        assert verify(old_token, key_set, "ES256") == b"before"
        assert verify(new_token, key_set, "ES256") == b"after"

    # Once the window has passed, only the new key is published.
    gone = public_jwks(store, rotated_at + RETIRED_KEY_PUBLISHED_FOR)
    assert [k["kid"] for k in gone["keys"]] == [new]
    assert signing_key(store, rotated_at + RETIRED_KEY_PUBLISHED_FOR).kid == new
    # ensure does not undo a rotation.
    assert ensure_signing_key(store, rotated_at) == new


def test_the_publication_window_outlives_an_access_token_plus_skew() -> None:
    assert timedelta(seconds=300 + 60) == RETIRED_KEY_PUBLISHED_FOR


def test_rotation_retires_every_current_key_and_can_switch_algorithm(store: Store) -> None:
    # Two current keys, as after two replicas raced to create the first one.
    results = run_concurrently(2, lambda _: ensure_signing_key(store, NOW))
    assert not [r for r in results if isinstance(r, BaseException)]
    before = {k.kid for k in list_signing_keys(store, NOW)}
    new, retired = rotate_signing_key(store, NOW, alg="EdDSA")
    assert set(retired) == before
    infos = {k.kid: k for k in list_signing_keys(store, NOW)}
    assert infos[new].signing and infos[new].alg == "EdDSA" and infos[new].retired_at is None
    for kid in retired:
        assert infos[kid].retired_at == NOW
        assert infos[kid].published_until == NOW + RETIRED_KEY_PUBLISHED_FOR
        assert not infos[kid].signing
    assert signing_key(store, NOW).alg is SigningAlgorithm.EdDSA


def test_rotation_with_no_key_just_adds_one(store: Store) -> None:
    new, retired = rotate_signing_key(store, NOW)
    assert retired == []
    assert signing_key(store, NOW).kid == new


def test_the_jwks_holds_public_members_only(store: Store) -> None:
    ensure_signing_key(store, NOW)
    rotate_signing_key(store, NOW, alg="EdDSA")
    key_set = public_jwks(store, NOW)
    assert len(key_set["keys"]) == 2
    for jwk in key_set["keys"]:
        assert not PRIVATE_JWK_MEMBERS & set(jwk)
        assert jwk["use"] == "sig"
        assert jwk["alg"] in ("ES256", "EdDSA")
        assert jwk["kid"] == rfc7638_thumbprint(jwk)
