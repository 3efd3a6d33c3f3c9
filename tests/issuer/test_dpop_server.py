"""DPoP at the issuer on real databases (SQLite file and PostgreSQL schema): jti replay is
refused exactly once across transactions and threads, a rolled-back request consumes nothing,
and server nonces are issued, checked, expired and never forgeable."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from joserfc.jwk import Key
from sqlalchemy import select

from missionbound.issuer.dpop import (
    REPLAY_MARGIN,
    REPLAY_NAMESPACE,
    check_not_replayed,
    load_nonce_secret,
    verify_request_proof,
)
from missionbound.protocol.dpop import (
    DPoPProof,
    DPoPProofError,
    UseDPoPNonce,
    access_token_hash,
    verify_dpop_proof,
)
from missionbound.protocol.dpop_nonces import (
    DEFAULT_NONCE_STEP,
    check_nonce,
    issue_nonce,
    nonce_checker,
)
from missionbound.store.models import SingleUseId
from missionbound.store.transactions import Store
from tests.protocol.proofs import METHOD, NOW, URL, generate_key, make_proof
from tests.store.concurrency import run_concurrently

SECRET = b"s" * 32


@pytest.fixture
def key() -> Key:
    return generate_key("ES256")


def verified(proof: str) -> DPoPProof:
    return verify_dpop_proof(proof, method=METHOD, url=URL, now=NOW)


def accept(store: Store, proof: DPoPProof) -> None:
    with store.begin() as session:
        check_not_replayed(session, proof, now=NOW)


def present(store: Store, headers: list[str], **overrides: Any) -> DPoPProof | None:
    arguments: dict[str, Any] = {"method": METHOD, "url": URL, "now": NOW, "nonce_secret": None}
    with store.begin() as session:
        return verify_request_proof(session, headers, **{**arguments, **overrides})


# -- replay (RFC 9449 section 11.1) ------------------------------------------------------


def test_the_same_jti_is_refused_the_second_time(store: Store, key: Key) -> None:
    proof = verified(make_proof(key, jti="once"))
    accept(store, proof)
    with pytest.raises(DPoPProofError) as caught:
        accept(store, proof)
    assert caught.value.error == "invalid_dpop_proof"
    assert "already used" in caught.value.description


def test_a_new_proof_reusing_a_jti_is_refused_too(store: Store, key: Key) -> None:
    accept(store, verified(make_proof(key, jti="reused")))
    with pytest.raises(DPoPProofError):
        accept(store, verified(make_proof(key, jti="reused", htu=URL + "?again")))


def test_the_same_jti_under_another_key_is_accepted(store: Store, key: Key) -> None:
    accept(store, verified(make_proof(key, jti="shared")))
    accept(store, verified(make_proof(generate_key("ES256"), jti="shared")))


def test_a_rolled_back_request_does_not_consume_the_jti(store: Store, key: Key) -> None:
    proof = verified(make_proof(key, jti="rolled-back"))
    with pytest.raises(RuntimeError), store.begin() as session:
        check_not_replayed(session, proof, now=NOW)
        raise RuntimeError("the token request failed after the DPoP check")
    accept(store, proof)
    with pytest.raises(DPoPProofError):
        accept(store, proof)


def test_the_jti_is_remembered_past_the_proofs_window(store: Store, key: Key) -> None:
    proof = verified(make_proof(key, jti="remembered"))
    accept(store, proof)
    with store.read() as session, session.begin():
        row = session.scalars(
            select(SingleUseId).where(SingleUseId.namespace == REPLAY_NAMESPACE)
        ).one()
        assert row.value == f"{proof.jkt}:remembered"
        assert row.expires_at == proof.accepted_until + REPLAY_MARGIN


def test_concurrent_requests_with_one_proof_succeed_exactly_once(store: Store, key: Key) -> None:
    proof = make_proof(key)  # signed before the threads start: joserfc's warning filter is global
    results = run_concurrently(20, lambda _: present(store, [proof]))
    accepted = [r for r in results if isinstance(r, DPoPProof)]
    refusals = [r for r in results if isinstance(r, DPoPProofError)]
    assert len(accepted) == 1
    assert len(refusals) == 19, [r for r in results if not isinstance(r, DPoPProof)]


# -- verify_request_proof ----------------------------------------------------------------


def test_a_request_without_a_dpop_header_has_no_proof(store: Store) -> None:
    assert present(store, []) is None


def test_a_request_with_two_dpop_headers_is_refused(store: Store, key: Key) -> None:
    with pytest.raises(DPoPProofError) as caught:
        present(store, [make_proof(key), make_proof(key)])
    assert caught.value.error == "invalid_dpop_proof"


def test_a_valid_request_proof_is_accepted_once(store: Store, key: Key) -> None:
    proof = make_proof(key)
    result = present(store, [proof])
    assert result is not None and result.jkt == key.thumbprint()
    with pytest.raises(DPoPProofError, match="already used"):
        present(store, [proof])


def test_an_invalid_proof_consumes_nothing(store: Store, key: Key) -> None:
    proof = make_proof(key, jti="kept")
    with pytest.raises(DPoPProofError):
        present(store, [proof], method="GET")
    assert present(store, [proof]) is not None


def test_the_access_token_hash_is_checked(store: Store, key: Key) -> None:
    proof = make_proof(key, ath=access_token_hash("token-a"))
    with pytest.raises(DPoPProofError, match="ath"):
        present(store, [proof], access_token="token-b")
    assert present(store, [proof], access_token="token-a") is not None


def test_a_required_nonce_round_trip(store: Store, key: Key) -> None:
    secret = load_nonce_secret(store, now=NOW)
    first = make_proof(key, jti="first")
    with pytest.raises(UseDPoPNonce) as caught:
        present(store, [first], nonce_secret=secret)
    assert caught.value.error == "use_dpop_nonce"
    # The client retries with the nonce it was sent. The refused attempt rolled back, so even
    # its jti is still unused, and the secret (committed on its own) still verifies the nonce.
    retry = make_proof(key, jti="first", nonce=caught.value.nonce)
    result = present(store, [retry], nonce_secret=secret)
    assert result is not None and result.nonce == caught.value.nonce


def test_nonces_are_ignored_when_the_server_requires_none(store: Store, key: Key) -> None:
    assert present(store, [make_proof(key, nonce="stale-or-foreign")]) is not None


# -- the shared nonce secret -------------------------------------------------------------


def test_every_replica_reads_the_same_nonce_secret(store: Store) -> None:
    first = load_nonce_secret(store, now=NOW)
    replica = Store(store.engine)
    assert load_nonce_secret(replica, now=NOW + timedelta(hours=1)) == first
    assert len(first) == 32
    # A nonce issued by one replica verifies on the other.
    check_nonce(load_nonce_secret(replica, now=NOW), issue_nonce(first, NOW), NOW)


# -- nonces (RFC 9449 section 8) ---------------------------------------------------------


def test_an_issued_nonce_is_accepted() -> None:
    nonce = issue_nonce(SECRET, NOW)
    assert len(nonce) == 32
    check_nonce(SECRET, nonce, NOW)


def test_nonces_change_with_the_step_and_are_stable_within_it() -> None:
    step_start = NOW - timedelta(seconds=NOW.timestamp() % DEFAULT_NONCE_STEP.total_seconds())
    assert issue_nonce(SECRET, step_start) == issue_nonce(SECRET, step_start + timedelta(minutes=4))
    assert issue_nonce(SECRET, step_start) != issue_nonce(SECRET, step_start + DEFAULT_NONCE_STEP)
    assert issue_nonce(SECRET, NOW) != issue_nonce(b"t" * 32, NOW)


@pytest.mark.parametrize("steps_later", [-1, 0, 1])
def test_a_nonce_from_the_current_or_a_neighbouring_step_is_accepted(steps_later: int) -> None:
    nonce = issue_nonce(SECRET, NOW)
    check_nonce(SECRET, nonce, NOW + steps_later * DEFAULT_NONCE_STEP)


@pytest.mark.parametrize("steps_later", [2, 3, -2, 1000])
def test_a_stale_nonce_is_refused_with_a_fresh_one(steps_later: int) -> None:
    later = NOW + steps_later * DEFAULT_NONCE_STEP
    with pytest.raises(UseDPoPNonce) as caught:
        check_nonce(SECRET, issue_nonce(SECRET, NOW), later)
    assert caught.value.error == "use_dpop_nonce"
    assert "no longer valid" in caught.value.description
    check_nonce(SECRET, caught.value.nonce, later)


def test_a_missing_nonce_is_refused_with_a_fresh_one() -> None:
    with pytest.raises(UseDPoPNonce) as caught:
        check_nonce(SECRET, None, NOW)
    assert "requires a nonce" in caught.value.description
    check_nonce(SECRET, caught.value.nonce, NOW)


def forged_nonces() -> list[str]:
    genuine = issue_nonce(SECRET, NOW)
    flipped = genuine[:-1] + ("A" if genuine[-1] != "A" else "B")
    return [
        issue_nonce(b"another secret", NOW),  # another server's
        flipped,  # tampered MAC
        "B" + genuine[1:] if genuine[0] != "B" else "C" + genuine[1:],  # tampered step
        genuine + "A",
        genuine[:-1],
        "",
        "not a nonce at all",
        "=" * 32,
    ]


@pytest.mark.parametrize("nonce", forged_nonces())
def test_a_forged_nonce_is_refused_with_a_fresh_one(nonce: str) -> None:
    with pytest.raises(UseDPoPNonce) as caught:
        check_nonce(SECRET, nonce, NOW)
    assert "not one this server issued" in caught.value.description
    check_nonce(SECRET, caught.value.nonce, NOW)


def test_the_nonce_checker_plugs_into_verify_dpop_proof(key: Key) -> None:
    check = nonce_checker(SECRET, NOW)
    proof = make_proof(key, nonce=issue_nonce(SECRET, NOW))
    assert verify_dpop_proof(proof, method=METHOD, url=URL, now=NOW, nonce_check=check).nonce
    with pytest.raises(UseDPoPNonce):
        verify_dpop_proof(make_proof(key), method=METHOD, url=URL, now=NOW, nonce_check=check)


def test_nonce_arguments_are_validated() -> None:
    with pytest.raises(ValueError):
        issue_nonce(SECRET, NOW.replace(tzinfo=None))
    with pytest.raises(ValueError):
        issue_nonce(b"", NOW)
    with pytest.raises(ValueError):
        issue_nonce(SECRET, NOW, step=timedelta(0))
