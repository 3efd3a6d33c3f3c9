"""The Mission's state as the Resource AS learns it from the origin's signed Mission Status
(issuer/remote_missions.py): asked at every redemption, recorded forward-only, refused unless
active, fail closed when the origin cannot answer or its answer does not verify."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from joserfc import jwt

from missionbound.issuer.keys import rotate_signing_key
from missionbound.issuer.mission_status import STATUS_MEDIA_TYPE
from missionbound.issuer.remote_missions import (
    ask_remote_state,
    record_and_require_active,
    require_active_remote,
)
from missionbound.issuer.trusted_origins import OriginUnavailable
from missionbound.mission.lifecycle import Event, State
from missionbound.store.errors import DerivationRefused, InvalidGrant
from missionbound.store.remote_missions import RemoteState, record_remote_state, remote_state
from tests.cross_domain.support import (
    ERP,
    ORIGIN,
    STATUS_CLIENT,
    Origin,
    ResourceAS,
    now_utc,
    refused,
    remote_row,
    through,
)
from tests.protocol.proofs import generate_key


def status_path(request: httpx.Request) -> bool:
    return request.url.path == "/mission/status"


# -- what the origin says ------------------------------------------------------------------


@pytest.mark.parametrize("state", [State.REVOKED, State.SUSPENDED, State.COMPLETED])
def test_a_mission_the_origin_says_is_not_active_is_refused(
    origin: Origin, ras: ResourceAS, state: State
) -> None:
    key = generate_key()
    mission = origin.mission(state=state)
    assertion = origin.id_jag(mission, jkt=key.thumbprint())
    body = refused(ras, lambda: ras.redeem(assertion, key=key), status=400,
                   error="invalid_grant")
    assert body["mission_state"] == state.value
    assert body["mission_error"] == f"mission_{state.value}"
    # What the origin said is recorded even though the redemption was refused.
    assert remote_row(ras.engine, mission.mission_id) == (state.value, mission.version + 1)


def test_a_mission_unknown_at_the_origin_is_refused(origin: Origin, ras: ResourceAS) -> None:
    key = generate_key()
    mission = origin.mission()
    ghost = "msn_" + "G" * 30
    assertion = origin.id_jag(mission, jkt=key.thumbprint(), mission={
        "id": ghost, "origin": ORIGIN, "authority_hash": mission.authority_hash})
    body = refused(ras, lambda: ras.redeem(assertion, key=key), status=400,
                   error="invalid_grant")
    assert "does not vouch" in body["error_description"]
    assert remote_row(ras.engine, ghost) is None


def test_revocation_at_the_origin_ends_local_tokens_once_learned(
    origin: Origin, ras: ResourceAS
) -> None:
    key = generate_key()
    mission = origin.mission()
    first = ras.redeem(origin.id_jag(mission, jkt=key.thumbprint()), key=key).json()
    unredeemed = origin.id_jag(mission, jkt=key.thumbprint())
    assert ras.introspect(first["access_token"])["active"] is True

    origin.transition(mission.mission_id, Event.REVOKE)
    # Nothing told the Resource AS yet: its last known state still stands ...
    assert ras.introspect(first["access_token"])["active"] is True
    # ... until it asks: the unredeemed grant is refused, and from then on the local token
    # is inactive, with nothing said about why (a Resource AS never reports state).
    body = refused(ras, lambda: ras.redeem(unredeemed, key=key), status=400,
                   error="invalid_grant")
    assert body["mission_state"] == "revoked"
    assert ras.introspect(first["access_token"]) == {"active": False}


def test_the_state_is_recorded_forward_only(ras: ResourceAS) -> None:
    now = now_utc()
    mission_id = "msn_" + "F" * 30
    newer = RemoteState(ORIGIN, mission_id, "revoked", 4, None, now)
    older = RemoteState(ORIGIN, mission_id, "active", 3, None, now + timedelta(seconds=5))
    with ras.store.begin() as session:
        record_remote_state(session, newer)
        record_remote_state(session, older)
    with ras.store.begin() as session:
        record_remote_state(session, RemoteState(ORIGIN, mission_id, "revoked", 4, None,
                                                 now + timedelta(seconds=9)))
        kept = remote_state(session, ORIGIN, mission_id)
    assert kept is not None
    assert (kept.state, kept.version) == ("revoked", 4)
    assert kept.checked_at == now + timedelta(seconds=9)


def test_an_older_answer_never_admits_a_mission_known_to_be_revoked(ras: ResourceAS) -> None:
    """Request A heard "active" (v3) from the origin; before A's transaction, request B
    learned "revoked" (v4). A acts on the newest state this AS knows: refused."""
    now = now_utc()
    mission_id = "msn_" + "G" * 30
    with ras.store.begin() as session:
        record_remote_state(session, RemoteState(ORIGIN, mission_id, "revoked", 4, None, now))
    with pytest.raises(DerivationRefused) as refused, ras.store.begin() as session:
        record_and_require_active(
            session, RemoteState(ORIGIN, mission_id, "active", 3, None, now), now)
    assert refused.value.mission_state == "revoked"


# -- when the origin cannot answer ---------------------------------------------------------


def test_an_origin_that_is_down_fails_closed_and_the_grant_survives(
    origin: Origin, ras: ResourceAS
) -> None:
    key = generate_key()
    mission = origin.mission()
    assertion = origin.id_jag(mission, jkt=key.thumbprint())

    def down(request: httpx.Request) -> httpx.Response | None:
        if status_path(request):
            raise httpx.ConnectError("connection refused", request=request)
        return None

    with ras.reaching_origin(through(origin, down)):
        body = refused(ras, lambda: ras.redeem(assertion, key=key), status=503,
                       error="temporarily_unavailable")
    assert "cannot be reached" in body["error_description"]
    # Nothing was spent: once the origin answers, the same grant is redeemed.
    assert ras.redeem(assertion, key=key).status_code == 200


def test_an_origin_whose_keys_cannot_be_fetched_fails_closed(
    origin: Origin, ras: ResourceAS
) -> None:
    key = generate_key()
    forger = generate_key()
    assertion = origin.id_jag(origin.mission(), jkt=key.thumbprint(),
                              header={"kid": forger.thumbprint()})

    def no_keys(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == "/jwks":
            raise httpx.ReadTimeout("timed out", request=request)
        return None

    with ras.reaching_origin(through(origin, no_keys)):
        refused(ras, lambda: ras.redeem(assertion, key=key), status=503,
                error="temporarily_unavailable")


def signed_status(origin: Origin, request: httpx.Request, *,
                  typ: str = "mission-status-response+jwt", **overrides: Any) -> str:
    """A Mission Status for ``request`` signed with the origin's key; ``overrides`` change
    its claims."""
    form = dict(httpx.QueryParams(request.content.decode()))
    signer = origin.signer()
    now = int(now_utc().timestamp())
    claims: dict[str, Any] = {
        "iss": ORIGIN, "aud": form["audience"], "sub": STATUS_CLIENT[0],
        "nonce": form["nonce"], "iat": now, "exp": now + 60,
        "mission": {"id": form["mission"], "origin": ORIGIN}, "state": "active", "version": 2,
        **overrides,
    }
    header = {"typ": typ, "alg": signer.alg.value, "kid": signer.kid}
    return jwt.encode(header, claims, signer.key, registry=signer.registry)


@pytest.mark.parametrize("change", [
    {"nonce": "n-not-the-one-sent"},
    {"aud": "http://ras.test/ledger"},
    {"sub": "someone-else"},
    {"iss": "http://evil.test"},
    {"mission": {"id": "msn_" + "O" * 30, "origin": ORIGIN}},
    {"exp": 1},
    {"version": 0},
    {"typ": "JWT"},
    {"content_type": "application/json"},
    {"http_status": 500},
    {"http_status": 401},
], ids=lambda change: next(iter(change)))
def test_a_status_answer_that_cannot_be_relied_on_fails_closed(
    origin: Origin, ras: ResourceAS, change: dict[str, Any]
) -> None:
    key = generate_key()
    assertion = origin.id_jag(origin.mission(), jkt=key.thumbprint())
    change = dict(change)
    media_type = change.pop("content_type", STATUS_MEDIA_TYPE)
    http_status = change.pop("http_status", 200)

    def forged(request: httpx.Request) -> httpx.Response | None:
        if not status_path(request):
            return None
        return httpx.Response(http_status, headers={"Content-Type": media_type},
                              text=signed_status(origin, request, **change))

    with ras.reaching_origin(through(origin, forged)):
        refused(ras, lambda: ras.redeem(assertion, key=key), status=503,
                error="temporarily_unavailable")


def test_a_rotated_origin_key_is_picked_up(origin: Origin, ras: ResourceAS) -> None:
    key = generate_key()
    mission = origin.mission()
    assert ras.redeem(origin.id_jag(mission, jkt=key.thumbprint()), key=key).status_code == 200
    rotate_signing_key(origin.store, now_utc(), alg="EdDSA")
    try:
        rotated = origin.id_jag(mission, jkt=key.thumbprint())
        assert origin.signer().alg.value == "EdDSA"
        response = ras.redeem(rotated, key=key)
        assert response.status_code == 200, response.text
    finally:
        rotate_signing_key(origin.store, now_utc(), alg="ES256")


# -- for Transaction Tokens: ask_remote_state, require_active_remote -----------------------


def test_require_active_remote_asks_the_origin(origin: Origin, ras: ResourceAS) -> None:
    mission = origin.mission()
    claim = {"id": mission.mission_id, "origin": ORIGIN, "authority_hash": "x"}
    require_active_remote(ras.issuer, claim, now_utc(), audience=ERP)
    assert remote_row(ras.engine, mission.mission_id) == ("active", mission.version)
    # Without an audience, this AS's resources are tried until the origin answers.
    require_active_remote(ras.issuer, claim, now_utc())

    origin.transition(mission.mission_id, Event.SUSPEND)
    # Asked outside the transaction, recorded and required inside it.
    state = ask_remote_state(ras.issuer, claim, now_utc(), audience=ERP)
    with ras.store.begin() as session, pytest.raises(DerivationRefused) as refusal:
        record_and_require_active(session, state, now_utc())
    assert refusal.value.to_wire()["mission_state"] == "suspended"
    # Recorded after the refused transaction rolled back.
    assert remote_row(ras.engine, mission.mission_id) == ("suspended", mission.version + 1)
    with pytest.raises(DerivationRefused):
        require_active_remote(ras.issuer, claim, now_utc())

    with pytest.raises(InvalidGrant):
        require_active_remote(ras.issuer, {**claim, "origin": "http://evil.test"}, now_utc())

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with ras.reaching_origin(down), pytest.raises(OriginUnavailable):
        require_active_remote(ras.issuer, claim, now_utc(), audience=ERP)
