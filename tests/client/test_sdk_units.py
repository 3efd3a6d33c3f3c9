"""The agent SDK's rules that need no server: how refusals become typed errors, how the
authorization response is checked, the loopback listener."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import pytest

from missionbound.client import errors
from missionbound.client.callback import wait_for_callback
from missionbound.client.oauth import PendingMission, TokenSet, read_callback, refusal
from tests.e2e_support import free_port

ISSUER = "http://127.0.0.1:8000"
REDIRECT = "http://127.0.0.1:8765/callback"
PENDING = PendingMission(consent_url=f"{ISSUER}/authorize", request_uri="urn:x", expires_in=60,
                         state="s-1", redirect_uri=REDIRECT, code_verifier="v")


@pytest.mark.parametrize(("facts", "kind"), [
    ({"error": "invalid_grant", "mission_state": "revoked"}, errors.MissionRevoked),
    ({"error": "invalid_grant", "mission_state": "suspended"}, errors.MissionInactive),
    ({"error": "invalid_token", "reason": "mission_inactive"}, errors.MissionInactive),
    ({"reason": "out_of_authority", "evaluation_id": "dec_1"}, errors.ToolNotGranted),
    ({"error": "insufficient_scope", "reason": "action_not_granted"}, errors.ToolNotGranted),
    ({"reason": "parameter_violation"}, errors.ConstraintExceeded),
    ({"error": "insufficient_scope", "reason": "constraint_exceeded"}, errors.ConstraintExceeded),
    ({"reason": "quota_exceeded"}, errors.ConstraintExceeded),
    ({"reason": "capability_drift"}, errors.CapabilityDrift),
    ({"reason": "parameter_mismatch"}, errors.ArgumentsChanged),
    ({"reason": "permit_consumed"}, errors.PermitRefused),
    ({"reason": "pdp_unreachable"}, errors.PdpUnavailable),
    ({"error": "temporarily_unavailable"}, errors.PdpUnavailable),
    ({"reason": "stale_state"}, errors.ActionDenied),
    ({"error": "invalid_request", "status": 400, "oauth": True}, errors.OAuthError),
    ({"error": "invalid_client", "status": 401, "oauth": True}, errors.OAuthError),
    ({"error": "access_denied", "status": 403, "oauth": True}, errors.OAuthError),
    ({"error": "temporarily_unavailable", "status": 503, "oauth": True}, errors.OAuthError),
    ({"error": "invalid_token", "status": 401}, errors.MissionClientError),
])
def test_each_refusal_becomes_the_error_that_names_it(facts: dict[str, Any],
                                                       kind: type[Exception]) -> None:
    raised = errors.error_for("refused", **facts)  # type: ignore[arg-type]
    assert type(raised) is kind
    assert raised.reason == facts.get("reason")
    assert raised.evaluation_id == facts.get("evaluation_id")


def test_a_stopped_mission_explains_a_refusal_before_its_reason() -> None:
    # A PDP deny for a revoked Mission is about the Mission, whatever else failed.
    raised = errors.error_for("x", reason="out_of_authority", mission_state="revoked")
    assert isinstance(raised, errors.MissionRevoked)
    assert raised.mission_state == "revoked"


def test_an_rs_refusal_body_keeps_every_fact() -> None:
    raised = refusal(403, {"error": "insufficient_scope", "error_description": "over the cap",
                           "reason": "parameter_violation", "evaluation_id": "dec_9"},
                     what="POST /x")
    assert isinstance(raised, errors.ConstraintExceeded)
    assert (raised.status, raised.evaluation_id, raised.description) == (403, "dec_9",
                                                                        "over the cap")
    assert "dec_9" in str(raised)
    assert type(refusal(502, "<html>", what="GET /x")) is errors.MissionClientError


def test_the_authorization_response_must_answer_this_request_from_this_issuer() -> None:
    good = f"{REDIRECT}?code=c-1&state=s-1&iss=http%3A%2F%2F127.0.0.1%3A8000"
    assert read_callback(good, PENDING, issuer=ISSUER) == "c-1"
    with pytest.raises(errors.MissionClientError, match="state"):
        read_callback(good.replace("s-1", "s-2"), PENDING, issuer=ISSUER)
    with pytest.raises(errors.MissionClientError, match="RFC 9207"):  # a mix-up attack
        read_callback(f"{REDIRECT}?code=c&state=s-1&iss=https%3A%2F%2Fevil", PENDING,
                      issuer=ISSUER)
    with pytest.raises(errors.MissionClientError, match="not an answer"):
        read_callback(good.replace("/callback", "/other"), PENDING, issuer=ISSUER)
    with pytest.raises(errors.ConsentRejected) as rejected:
        read_callback(f"{REDIRECT}?error=access_denied&state=s-1&iss={ISSUER}", PENDING,
                      issuer=ISSUER)
    assert rejected.value.error == "access_denied"
    with pytest.raises(errors.OAuthError) as other:  # not a rejection: a broken request
        read_callback(f"{REDIRECT}?error=invalid_request&state=s-1&iss={ISSUER}", PENDING,
                      issuer=ISSUER)
    assert type(other.value) is errors.OAuthError


def test_a_token_answer_without_a_token_is_an_error() -> None:
    with pytest.raises(errors.MissionClientError):
        TokenSet.from_answer({"token_type": "DPoP"})
    tokens = TokenSet.from_answer({"access_token": "a.e30.b", "expires_in": 60,
                                   "authorization_details": [
                                       {"resource": "r", "actions": ["x", "y"]}]})
    assert tokens.granted("r") == ["x", "y"] and tokens.granted("s") == []
    assert "a.e30.b" not in repr(tokens)  # tokens stay out of logs


def listening(state: str | None = None) -> tuple[str, threading.Thread, list[str]]:
    """A listener on a free loopback port, in a thread, once it answers: (its redirect URI,
    the thread, what it returned)."""
    redirect = f"http://127.0.0.1:{free_port()}/callback"
    got: list[str] = []
    listener = threading.Thread(target=lambda: got.append(
        wait_for_callback(redirect, timeout=10, state=state)))
    listener.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            httpx.get(redirect.replace("/callback", "/favicon.ico"))
            return redirect, listener, got
        except httpx.ConnectError:
            time.sleep(0.05)
    pytest.fail("the listener did not start")


def test_the_listener_returns_the_callback_and_ignores_other_paths() -> None:
    redirect, listener, got = listening()
    assert httpx.get(redirect.replace("/callback", "/favicon.ico")).status_code == 404
    assert httpx.get(f"{redirect}?code=c&state=s").status_code == 200
    listener.join(10)
    assert got == [f"{redirect}?code=c&state=s"]


def test_the_listener_says_when_it_cannot_listen_or_nothing_comes() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(errors.MissionClientError, match="cannot listen"):
            wait_for_callback(f"http://127.0.0.1:{port}/callback", timeout=1)
    with pytest.raises(errors.MissionClientError, match="no answer"):
        wait_for_callback(f"http://127.0.0.1:{free_port()}/callback", timeout=0.3)
    with pytest.raises(errors.MissionClientError, match="loopback"):
        wait_for_callback("https://agent.example/callback", timeout=1)


def test_the_listener_waits_for_the_answer_to_its_own_request() -> None:
    """Any web page can make the browser call the loopback port; only the answer carrying
    this request's state ends the wait."""
    redirect, listener, got = listening(state="mine")
    assert httpx.get(f"{redirect}?code=forged&state=other").status_code == 400
    assert httpx.get(f"{redirect}?code=forged").status_code == 400
    assert httpx.get(f"{redirect}?code=c&state=mine").status_code == 200
    listener.join(10)
    assert got == [f"{redirect}?code=c&state=mine"]


def test_a_script_that_never_closes_its_client_still_exits() -> None:
    script = ("from missionbound.client import MissionClient\n"
              "client = MissionClient('http://127.0.0.1:9', 'demo-agent')\n"
              "print('done')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=False)
    assert (result.returncode, result.stdout) == (0, "done\n"), result.stderr
