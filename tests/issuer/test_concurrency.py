"""Single use under real concurrency (DESIGN.md "Atomic truth"; RFC 9700 section 4.5 and the
OAuch ``SingleFastACExchangeTest`` / ``MultiFastRefreshTest``), on SQLite and PostgreSQL.

Fifty threads present the same authorization code, the same refresh token, or the same
consent form (one browser session) to one app at once. Exactly one succeeds; every other is
a clean 4xx (a 5xx would surface as an exception in its thread); the store shows exactly one
derivation or approval. A lost race on a code or refresh token is a replay, so the winner's
grant ends revoked (RFC 6749 section 4.1.2, PROFILE.md section 8).
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx
from sqlalchemy import func, select

from missionbound.mission.lifecycle import State
from missionbound.store.models import (
    AuthorizationCode,
    IssuedToken,
    MissionHistory,
    RefreshToken,
)
from tests.issuer.flow import Flow, audit_verifies, callback_query
from tests.store.concurrency import run_concurrently

RACERS = 50


def responses(results: Sequence[httpx.Response | BaseException]) -> list[httpx.Response]:
    """Every thread got an HTTP answer, none of them a server error."""
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, f"{len(failures)} threads failed, first: {failures[:1]!r}"
    answered = [r for r in results if not isinstance(r, BaseException)]
    assert all(r.status_code < 500 for r in answered), [r.text for r in answered
                                                        if r.status_code >= 500][:1]
    return answered


def stale_signing_key(flow: Flow) -> None:
    """Make the next request re-read the signing key, as one does every
    ``SIGNER_CACHE_SECONDS``: a race must not depend on the cache being warm."""
    flow.issuer._signer = None


def rows(flow: Flow, model: type, mission_id: str) -> int:
    with flow.store.read() as session, session.begin():
        column = model.mission_id  # type: ignore[attr-defined]
        return int(session.scalar(select(func.count()).where(column == mission_id)) or 0)


def test_fifty_redemptions_of_one_code_succeed_once(flow: Flow) -> None:
    pushed, code = flow.approved_code()
    mission_id = flow.mission_of(pushed.request_uri).mission_id
    stale_signing_key(flow)
    answered = responses(run_concurrently(
        RACERS, lambda _: flow.redeem(code, pushed.pkce.verifier)))
    won = [r for r in answered if r.status_code == 200]
    assert len(won) == 1
    assert {(r.status_code, r.json()["error"]) for r in answered if r.status_code != 200} == {
        (400, "invalid_grant")}
    assert flow.derivations(mission_id) == 1
    assert rows(flow, IssuedToken, mission_id) == 1
    assert rows(flow, RefreshToken, mission_id) == 1
    # Every loser was a replay of a used code: the winner's grant is revoked.
    refreshed = flow.refresh(won[0].json()["refresh_token"])
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
    assert flow.derivations(mission_id) == 1


def test_fifty_uses_of_one_refresh_token_succeed_once(flow: Flow) -> None:
    grant = flow.grant()
    stale_signing_key(flow)
    answered = responses(run_concurrently(
        RACERS, lambda _: flow.refresh(grant.refresh_token)))
    won = [r for r in answered if r.status_code == 200]
    assert len(won) == 1
    assert {(r.status_code, r.json()["error"]) for r in answered if r.status_code != 200} == {
        (400, "invalid_grant")}
    assert flow.derivations(grant.mission_id) == 2
    assert rows(flow, IssuedToken, grant.mission_id) == 2
    assert rows(flow, RefreshToken, grant.mission_id) == 2
    # The rotated token was reused: its family, the winner's successor included, is revoked.
    successor = flow.refresh(won[0].json()["refresh_token"])
    assert successor.status_code == 400 and successor.json()["error"] == "invalid_grant"


def test_fifty_submissions_of_one_consent_form_approve_once(flow: Flow) -> None:
    pushed = flow.push_ok()
    browser, hidden = flow.consent_form(pushed.request_uri)
    answered = responses(run_concurrently(RACERS, lambda _: flow.decide(browser, hidden)))
    won = [r for r in answered if r.status_code == 303]
    assert len(won) == 1
    assert "code" in callback_query(won[0])
    assert {r.status_code for r in answered if r.status_code != 303} == {400}
    mission = flow.mission_of(pushed.request_uri)
    assert mission.state is State.ACTIVE and mission.version == 2
    assert rows(flow, MissionHistory, mission.mission_id) == 2  # created, approved
    assert rows(flow, AuthorizationCode, mission.mission_id) == 1
    # The one code works.
    code = callback_query(won[0])["code"]
    assert flow.redeem(code, pushed.pkce.verifier).status_code == 200


def test_the_races_left_a_verifiable_audit_log(flow: Flow) -> None:
    # Run last in the module.
    audit_verifies(flow.engine)
