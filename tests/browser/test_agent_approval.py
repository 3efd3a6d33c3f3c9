"""The newcomer's browser path of the quickstart: ``examples/agent.py`` without
``--approve-as`` prints the consent URL and waits on its loopback redirect URI; a person (here
Chromium) opens it, signs in as bob, approves, and the browser lands on the agent's own
listener, which hands the code to the SDK. Nothing is routed or faked: the redirect reaches
the agent process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.e2e_support import ServerHandle

ROOT = Path(__file__).resolve().parents[2]
WAIT = 60.0  # seconds: a bound on each wait for the agent


def read_until(agent: subprocess.Popen[str], pattern: str, seen: list[str]) -> re.Match[str]:
    """Lines of the agent's output until one matches ``pattern`` (all kept in ``seen``)."""
    assert agent.stdout is not None
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        line = agent.stdout.readline()
        if not line:
            break
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found
    raise AssertionError(f"the agent never printed {pattern!r}:\n{''.join(seen)}")


def test_the_agent_gets_its_answer_from_the_browser(page: Page, served: ServerHandle) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISSIONBOUND_")}
    agent = subprocess.Popen(
        [sys.executable, "-u", str(ROOT / "examples" / "agent.py"), "--issuer",
         served.base_url, "--once"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        consent_url = read_until(agent, r"^\s+(http://\S+/authorize\?\S+)$", seen).group(1)
        page.goto(consent_url)
        page.get_by_label("User name").fill("bob")
        page.get_by_label("Password").fill("bob")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", level=1)).to_contain_text("Approve a Mission")
        page.get_by_role("button", name="Approve").click()
        # The browser lands on the agent's loopback listener (the SDK's answer page).
        page.wait_for_url(re.compile(r"^http://127\.0\.0\.1:8765/callback\?"))
        expect(page.locator("body")).to_contain_text("The agent has its answer")

        read_until(agent, r"^Mission msn_\S+ is active$", seen)
        read_until(agent, r"^refused: parameter_violation, evidence dec_\S+$", seen)
        assert agent.wait(WAIT) == 0, "".join(seen)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(10)
