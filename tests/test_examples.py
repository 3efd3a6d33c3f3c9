"""The README quickstart's example script runs as documented."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "preview_mission.py"


def run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISSIONBOUND_")}
    env["MISSIONBOUND_DATA_DIR"] = str(tmp_path)
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60, check=False)


def test_preview_of_the_demo_scenario(tmp_path: Path) -> None:
    result = run(tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "send a wire transfer to a vendor (cannot be undone) - at most 500.00 USD per " \
           "action; vendors limited to acme" in result.stdout
    for anchor in ("proposal_hash", "consent_rendering_hash", "authority_hash"):
        assert f"{anchor:<24} sha-256:" in result.stdout


def test_preview_refuses_a_bad_intent_with_the_oauth_error(tmp_path: Path) -> None:
    intent = tmp_path / "intent.json"
    intent.write_text('{"goal":"x","goal":"y"}')
    result = run(str(intent), tmp_path=tmp_path)
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"] == "invalid_request"


def test_demo_agent_gets_mission_bound_tokens_from_a_running_server(tmp_path: Path) -> None:
    # The README quickstart: `make run`, then the demo agent, approving by script as bob.
    from tests.e2e_support import running_server

    with running_server(tmp_path) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MISSIONBOUND_")}
        result = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "demo_agent.py"),
             "--issuer", server.base_url, "--approve-as", "bob"],
            capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is active; token_type DPoP." in result.stdout
    assert '"origin": "' + server.base_url + '"' in result.stdout
    assert "Refreshed" in result.stdout
    # The demo ERP API (missionbound.enforce.rs, RS-D): the PDP permits the entry under the
    # Mission's 500 USD cap; the ERP itself refuses the one over it, before asking the PDP.
    assert "GET /demo/erp/invoices -> 200: 4 invoices" in result.stdout
    assert re.search(r"POST a 120\.00 USD journal entry -> 201 \(posted by alice\), "
                     r"permitted by the PDP: evaluation_id dec_[A-Za-z0-9_-]{24}\n",
                     result.stdout), result.stdout
    assert "POST a 900.00 USD journal entry -> 403 insufficient_scope, refused by the ERP " \
           "before asking the PDP (constraint_exceeded): amount 900.00 USD exceeds" \
           in result.stdout, result.stdout
