"""The README's quickstart, run as a newcomer runs it: every command of its ``sh`` blocks,
in order, from the project folder, with the tools the clone has (``make``, ``.venv``).

Only the environment differs from a newcomer's terminal: the server listens on a free port
with its data in a temporary folder (``MISSIONBOUND_PORT``, ``MISSIONBOUND_ISSUER``,
``MISSIONBOUND_DATA_DIR``, which ``make run``, the CLI and the example agent all read), so
a developer's own ``make run`` on port 8000 is left alone; ``http://127.0.0.1:8000`` in a
command becomes that server's URL and ``<mission_id>`` the Mission the agent printed.
The commands a newcomer leaves running (``make run``, the agent) run in the background.

docs/quickstart.md explains the same steps; it must give the same commands.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e_support import free_port

ROOT = Path(__file__).resolve().parents[1]
DEMO_ISSUER = "http://127.0.0.1:8000"
LONG_RUNNING = ("make run", ".venv/bin/python examples/agent.py")
STEP_TIMEOUT = 120.0


def quickstart_commands(markdown: str, heading: str | None = None) -> list[str]:
    """The commands of the ``sh`` blocks under ``heading`` (up to the next ``## ``; the
    whole text without one), backslash continuations joined, comments dropped."""
    section = markdown
    if heading is not None:
        start = markdown.index(heading)
        end = markdown.find("\n## ", start + len(heading))
        section = markdown[start:end if end != -1 else None]
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL):
        text = re.sub(r"\\\n\s*", "", block)
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_the_walkthrough_gives_the_readmes_commands() -> None:
    readme = quickstart_commands((ROOT / "README.md").read_text(), "## Quickstart")
    guide = quickstart_commands((ROOT / "docs" / "quickstart.md").read_text())
    assert readme, "the README quickstart has no commands"
    assert [c for c in guide if c in readme] == readme, (readme, guide)


class Background:
    """A long-running command in its own process group, its output in a file."""

    def __init__(self, command: str, env: dict[str, str], log: Path) -> None:
        self.command = command
        self.log = log
        self._out = log.open("wb")
        self.process = subprocess.Popen(shlex.split(command), cwd=ROOT, env=env,
                                        stdout=self._out, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = STEP_TIMEOUT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output(), re.MULTILINE)
            if found:
                return found
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"{self.command!r} did not print {pattern!r}:\n{self.output()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self._out.close()


@pytest.fixture
def background() -> Iterator[list[Background]]:
    started: list[Background] = []
    yield started
    for job in reversed(started):
        job.stop()


def test_the_readme_quickstart_works_as_written(tmp_path: Path,
                                                background: list[Background]) -> None:
    commands = quickstart_commands((ROOT / "README.md").read_text(), "## Quickstart")
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISSIONBOUND_")}
    env.update(MISSIONBOUND_PORT=str(port), MISSIONBOUND_ISSUER=issuer,
               MISSIONBOUND_DATA_DIR=str(tmp_path / "var"))
    mission_id: str | None = None
    agent: Background | None = None
    ran: list[str] = []

    for number, written in enumerate(commands):
        command = written.replace(DEMO_ISSUER, issuer)
        if "<mission_id>" in command:
            assert mission_id is not None, f"{written!r} needs a Mission the agent printed"
            command = command.replace("<mission_id>", mission_id)
        ran.append(command)
        if command.startswith(LONG_RUNNING):
            job = Background(command, env, tmp_path / f"step-{number}.log")
            background.append(job)
            if command.startswith("make run"):
                wait_until_healthy(issuer, job)
            else:
                agent = job
                mission_id = job.wait_for(r"^Mission (msn_\S+) is active$").group(1)
                job.wait_for(r"^refused: parameter_violation, evidence dec_\S+$")
            continue
        result = subprocess.run(shlex.split(command), cwd=ROOT, env=env, text=True,
                                capture_output=True, timeout=STEP_TIMEOUT, check=False)
        assert result.returncode == 0, (command, result.stdout[-3000:], result.stderr[-3000:])
        if " mission revoke " in command:
            assert agent is not None, "the quickstart revokes before an agent ran"
            agent.wait_for(r"^stopped: the Mission is revoked$", timeout=30)
            assert agent.process.wait(15) == 0
        if " mission show " in command:
            assert re.search(r"│ state\s+revoked\s", result.stdout), result.stdout
        if command.endswith("missionbound demo"):
            assert re.search(r"all \d+ steps went as expected", result.stdout), result.stdout

    # What the quickstart promises a newcomer, all of it exercised above.
    assert any(c.startswith("make run") for c in ran)
    assert any(c.startswith(".venv/bin/python examples/agent.py") for c in ran)
    assert any(" mission revoke " in c for c in ran)
    assert any(c.endswith("audit verify") for c in ran)


def wait_until_healthy(issuer: str, job: Background, timeout: float = STEP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if job.process.poll() is not None:
            pytest.fail(f"make run exited:\n{job.output()[-3000:]}")
        try:
            if httpx.get(f"{issuer}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"make run did not answer /healthz in {timeout:g} s:\n{job.output()[-3000:]}")
