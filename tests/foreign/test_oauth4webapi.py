"""A foreign OAuth client, npm oauth4webapi, through the whole Level 1 flow against a real
``missionbound serve``: discovery, PAR with a Mission Intent, PKCE, DPoP, login and consent
by plain HTTP, RFC 9207 iss, code grant, refresh rotation, introspection (mission_flow.mjs)."""

from __future__ import annotations

import json
import subprocess

from tests.e2e_support import ServerHandle
from tests.foreign.conftest import ForeignClient

FLOW_TIMEOUT = 90.0
EXPECTED_STEPS = [
    "discovery", "metadata", "par", "authorize", "login", "consent_page", "consent",
    "callback", "token", "access_token", "refresh", "introspect", "done",
]


def test_oauth4webapi_runs_the_mission_flow(
    served: ServerHandle, foreign_client: ForeignClient
) -> None:
    result = subprocess.run(
        foreign_client.command("mission_flow.mjs", served.base_url),
        capture_output=True, text=True, timeout=FLOW_TIMEOUT, stdin=subprocess.DEVNULL,
    )
    steps = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert result.returncode == 0, (
        f"mission_flow.mjs exited {result.returncode}\nstdout:\n{result.stdout}\n"
        f"stderr:\n{result.stderr}\nserver stderr (tail):\n"
        + "\n".join(served.output()[1].splitlines()[-30:])
    )
    by_step = {step["step"]: step for step in steps}
    assert [step["step"] for step in steps] == EXPECTED_STEPS
    assert by_step["discovery"]["issuer"] == served.base_url
    assert by_step["par"]["request_uri"].startswith("urn:ietf:params:oauth:request_uri:")
    assert by_step["callback"]["iss"] == served.base_url
    assert by_step["token"]["token_type"] == "DPoP"
    assert by_step["token"]["authorization_details"] > 0
    mission_id = by_step["token"]["mission_id"]
    assert by_step["access_token"]["mission"]["id"] == mission_id
    assert by_step["access_token"]["mission"]["origin"] == served.base_url
    assert by_step["access_token"]["cnf_jkt"] == by_step["par"]["jkt"]
    assert by_step["refresh"] == {
        "step": "refresh", "rotated": True, "mission_id": mission_id,
        "dpop_nonce_retries": by_step["refresh"]["dpop_nonce_retries"],
    }
    assert by_step["introspect"] == {
        "step": "introspect", "active": True, "mission_state": "active",
    }
