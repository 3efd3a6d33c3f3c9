"""The smaller repositories: clients, signing keys, pushed requests, codes, refresh tokens,
issued token ids and the outbox. Exactly-once promises are checked with real threads."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select

from missionbound.mission.errors import InvalidRequest
from missionbound.mission.record import MissionRecord
from missionbound.store import outbox
from missionbound.store.clients import get_client, list_clients, put_client
from missionbound.store.codes import (
    AuthorizationCodeReused,
    redeem_authorization_code,
    save_authorization_code,
)
from missionbound.store.errors import InvalidGrant, InvalidRequestUri, RefreshTokenReused
from missionbound.store.keys import (
    add_signing_key,
    current_signing_key,
    published_signing_keys,
    retire_signing_key,
)
from missionbound.store.models import RefreshToken, RefreshTokenFamily
from missionbound.store.par import consume_pushed_request, get_pushed_request, save_pushed_request
from missionbound.store.refresh import (
    revoke_refresh_token,
    rotate_refresh_token,
    save_refresh_token,
    start_refresh_family,
)
from missionbound.store.tokens import get_issued_token, record_issued_token, tokens_for_mission
from missionbound.store.transactions import Store
from tests.store.concurrency import run_concurrently
from tests.store.factories import T0

CreateMission = Callable[..., MissionRecord]
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_clients_are_registered_and_replaced(store: Store) -> None:
    with store.begin() as session:
        put_client(
            session,
            client_id="demo-agent",
            metadata={"client_name": "Agent"},
            secret_hash="h1",
            now=T0,
        )
    with store.begin() as session:
        put_client(
            session,
            client_id="demo-agent",
            metadata={"client_name": "Agent 2"},
            secret_hash=None,
            now=T0 + timedelta(days=1),
        )
    with store.read() as session:
        client = get_client(session, "demo-agent")
        assert client is not None
        assert (client.client_metadata, client.secret_hash, client.created_at) == (
            {"client_name": "Agent 2"},
            None,
            T0,
        )
        assert [c.client_id for c in list_clients(session)] == ["demo-agent"]
        assert get_client(session, "nobody") is None


def test_signing_keys_rotate_and_stay_published_until_not_after(store: Store) -> None:
    public = {"kty": "EC", "crv": "P-256", "x": "x", "y": "y"}
    with store.begin() as session:
        add_signing_key(
            session,
            kid="k1",
            alg="ES256",
            private_jwk={**public, "d": "d"},
            public_jwk=public,
            now=T0,
        )
        add_signing_key(
            session,
            kid="k2",
            alg="ES256",
            private_jwk={**public, "d": "d2"},
            public_jwk=public,
            now=T0 + timedelta(days=1),
        )
        retire_signing_key(
            session, "k1", now=T0 + timedelta(days=1), keep_published_until=T0 + timedelta(days=2)
        )
    with store.read() as session:
        signer = current_signing_key(session, now=T0 + timedelta(days=1))
        assert signer is not None and signer.kid == "k2"
        assert [k.kid for k in published_signing_keys(session, now=T0 + timedelta(days=1))] == [
            "k1",
            "k2",
        ]
        assert [k.kid for k in published_signing_keys(session, now=T0 + timedelta(days=2))] == [
            "k2"
        ]


def test_a_public_jwk_carrying_a_private_member_is_refused(store: Store) -> None:
    with pytest.raises(InvalidRequest, match="private"), store.begin() as session:
        add_signing_key(
            session,
            kid="k1",
            alg="ES256",
            private_jwk={"d": "d"},
            public_jwk={"kty": "EC", "d": "d"},
            now=T0,
        )


def test_a_pushed_request_is_used_once_by_its_own_client(
    store: Store, create_mission: CreateMission
) -> None:
    mission = create_mission()
    uri = "urn:ietf:params:oauth:request_uri:abc"
    with store.begin() as session:
        save_pushed_request(
            session,
            request_uri=uri,
            client_id="demo-agent",
            params={"scope": "openid"},
            expires_at=T0 + timedelta(seconds=90),
            mission_id=mission.mission_id,
        )
    with store.read() as session:
        shown = get_pushed_request(session, uri, client_id="demo-agent", now=T0)
        assert (shown.params, shown.mission_id) == ({"scope": "openid"}, mission.mission_id)
        with pytest.raises(InvalidRequestUri, match="unknown"):
            get_pushed_request(session, uri, client_id="intruder", now=T0)
        with pytest.raises(InvalidRequestUri, match="expired"):
            get_pushed_request(session, uri, client_id="demo-agent", now=T0 + timedelta(seconds=90))
    results = run_concurrently(20, lambda _: _consume(store, uri))
    assert sorted(map(str, results)) == ["ok"] + ["request_uri was already used"] * 19


def _consume(store: Store, uri: str) -> str:
    try:
        with store.begin() as session:
            consume_pushed_request(session, uri, client_id="demo-agent", now=T0)
        return "ok"
    except InvalidRequestUri as refused:
        return refused.description


def _redeem(store: Store, code_hash: str, client_id: str = "demo-agent") -> str:
    try:
        with store.begin() as session:
            code = redeem_authorization_code(
                session, code_hash, client_id=client_id, now=T0 + timedelta(seconds=10)
            )
            return code.mission_id
    except AuthorizationCodeReused:
        return "reused"
    except InvalidGrant as refused:
        return refused.description


def test_an_authorization_code_is_redeemed_exactly_once(
    store: Store, create_mission: CreateMission
) -> None:
    mission = create_mission()
    with store.begin() as session:
        for name, lifetime in (("fresh", 60), ("stale", 5)):
            save_authorization_code(
                session,
                code_hash=name,
                mission_id=mission.mission_id,
                client_id="demo-agent",
                redirect_uri="http://127.0.0.1:8765/callback",
                code_challenge=CHALLENGE,
                dpop_jkt=None,
                expires_at=T0 + timedelta(seconds=lifetime),
            )
    assert _redeem(store, "fresh", client_id="intruder") == "unknown authorization code"
    results = run_concurrently(20, lambda _: _redeem(store, "fresh"))
    assert sorted(map(str, results)) == sorted([mission.mission_id] + ["reused"] * 19)
    assert _redeem(store, "stale") == "authorization code has expired"
    assert _redeem(store, "never-issued") == "unknown authorization code"


def test_refresh_tokens_rotate_and_a_replay_revokes_the_family(
    store: Store, active_mission: CreateMission
) -> None:
    mission = active_mission()
    with store.begin() as session:
        start_refresh_family(
            session,
            family_id="fam",
            mission_id=mission.mission_id,
            client_id="demo-agent",
            dpop_jkt="jkt",
            now=T0,
        )
        save_refresh_token(
            session,
            token_hash="rt1",
            family_id="fam",
            issued_at=T0,
            expires_at=T0 + timedelta(days=1),
        )
    with store.begin() as session:
        used = rotate_refresh_token(session, "rt1", client_id="demo-agent", now=T0)
        assert (used.mission_id, used.dpop_jkt) == (mission.mission_id, "jkt")
        save_refresh_token(
            session,
            token_hash="rt2",
            family_id="fam",
            issued_at=T0,
            expires_at=T0 + timedelta(days=1),
        )
    # rt1 again: a replay. The caller's transaction rolls back on the error, yet the
    # family must end up revoked.
    with pytest.raises(RefreshTokenReused), store.begin() as session:
        rotate_refresh_token(session, "rt1", client_id="demo-agent", now=T0)
    with store.read() as session:
        family = session.get(RefreshTokenFamily, "fam")
        revoked = session.scalars(
            select(RefreshToken.token_hash)
            .where(RefreshToken.revoked_at.is_not(None))
            .order_by(RefreshToken.token_hash)
        ).all()
    assert family is not None and family.revoked_at is not None
    assert revoked == ["rt1", "rt2"]
    with pytest.raises(InvalidGrant, match="revoked"), store.begin() as session:
        rotate_refresh_token(session, "rt2", client_id="demo-agent", now=T0)


def test_refresh_token_refusals(store: Store, active_mission: CreateMission) -> None:
    mission = active_mission()
    with store.begin() as session:
        start_refresh_family(
            session,
            family_id="fam",
            mission_id=mission.mission_id,
            client_id="demo-agent",
            dpop_jkt=None,
            now=T0,
        )
        save_refresh_token(
            session,
            token_hash="short",
            family_id="fam",
            issued_at=T0,
            expires_at=T0 + timedelta(minutes=1),
        )
        save_refresh_token(
            session,
            token_hash="other",
            family_id="fam",
            issued_at=T0,
            expires_at=T0 + timedelta(days=1),
        )
    for token, client, now, message in [
        ("short", "demo-agent", T0 + timedelta(minutes=1), "expired"),
        ("short", "intruder", T0, "unknown"),
        ("missing", "demo-agent", T0, "unknown"),
    ]:
        with pytest.raises(InvalidGrant, match=message), store.begin() as session:
            rotate_refresh_token(session, token, client_id=client, now=now)
    with store.begin() as session:
        assert revoke_refresh_token(session, "other", now=T0) is True
        assert revoke_refresh_token(session, "missing", now=T0) is False
    with pytest.raises(InvalidGrant, match="revoked"), store.begin() as session:
        save_refresh_token(
            session,
            token_hash="late",
            family_id="fam",
            issued_at=T0,
            expires_at=T0 + timedelta(days=1),
        )


def test_issued_tokens_are_recorded_by_jti(store: Store, active_mission: CreateMission) -> None:
    mission = active_mission()
    with store.begin() as session:
        record_issued_token(
            session,
            jti="j1",
            mission_id=mission.mission_id,
            client_id="demo-agent",
            kind="access_token",
            aud="https://as.example.test/demo/erp",
            issued_at=T0,
            expires_at=T0 + timedelta(minutes=5),
        )
        record_issued_token(
            session,
            jti="j2",
            mission_id=mission.mission_id,
            client_id="demo-agent",
            kind="id_jag",
            aud=["https://ras"],
            issued_at=T0 + timedelta(minutes=1),
            expires_at=T0 + timedelta(minutes=20),
        )
    with store.read() as session:
        first = get_issued_token(session, "j1")
        assert first is not None and first.aud == "https://as.example.test/demo/erp"
        assert [t.jti for t in tokens_for_mission(session, mission.mission_id)] == ["j1", "j2"]
        assert [
            t.jti
            for t in tokens_for_mission(
                session, mission.mission_id, unexpired_at=T0 + timedelta(minutes=10)
            )
        ] == ["j2"]
    with pytest.raises(InvalidRequest), store.begin() as session:
        record_issued_token(
            session,
            jti="j1",
            mission_id=mission.mission_id,
            client_id="demo-agent",
            kind="access_token",
            aud=None,
            issued_at=T0,
            expires_at=T0,
        )


def test_outbox_delivery_retries_and_marks(store: Store) -> None:
    with store.begin() as session:
        first = outbox.enqueue(session, topic="t", payload={"n": 1}, mission_id=None, now=T0)
        second = outbox.enqueue(session, topic="t", payload={"n": 2}, mission_id=None, now=T0)
    with store.begin() as session:
        due = outbox.claim_due(session, now=T0)
        assert [e.payload["n"] for e in due] == [1, 2]
        outbox.mark_delivered(session, first.id, now=T0)
        outbox.mark_failed(session, second.id, now=T0, retry_in=timedelta(seconds=30))
    with store.begin() as session:
        assert outbox.claim_due(session, now=T0 + timedelta(seconds=29)) == []
        retried = outbox.claim_due(session, now=T0 + timedelta(seconds=30))
        assert [(e.id, e.attempts) for e in retried] == [(second.id, 1)]


# Only PostgreSQL has row locks to skip; SQLite serializes whole transactions instead.
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_replicas_claim_disjoint_outbox_events(store: Store) -> None:
    with store.begin() as session:
        for n in range(4):
            outbox.enqueue(session, topic="t", payload={"n": n}, mission_id=None, now=T0)
    with store.begin() as first, store.begin() as second:
        mine = {e.id for e in outbox.claim_due(first, now=T0, limit=2)}
        theirs = {e.id for e in outbox.claim_due(second, now=T0, limit=10)}
    assert len(mine) == 2 and len(theirs) == 2 and not mine & theirs
