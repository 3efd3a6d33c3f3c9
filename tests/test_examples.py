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


def test_the_minimal_agent_works_within_its_mission_against_a_running_server(
        tmp_path: Path) -> None:
    # examples/agent.py, the SDK's smallest agent, approving by script as bob.
    from tests.e2e_support import running_server

    with running_server(tmp_path) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MISSIONBOUND_")}
        result = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "agent.py"), "--issuer",
             server.base_url, "--approve-as", "bob", "--once"],
            capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^Mission msn_\S+ is active$", result.stdout, re.MULTILINE)
    assert "read 4 invoices" in result.stdout
    assert "'status': 'executed'" in result.stdout
    assert re.search(r"refused: parameter_violation, evidence dec_[A-Za-z0-9_-]{24}\n",
                     result.stdout), result.stdout


def test_the_minimal_agent_stays_under_sixty_lines() -> None:
    assert len((ROOT / "examples" / "agent.py").read_text().splitlines()) < 60
