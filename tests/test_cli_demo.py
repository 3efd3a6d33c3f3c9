"""``missionbound demo`` (DESIGN.md "Interfaces", "The demo tenant"): the whole story against
a fresh embedded instance, as a user runs it (a subprocess), and the judging of the story
in process against a real instance (a wrong expectation, a step that raises).

Every wait is bounded; the story itself takes a few seconds.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from missionbound.client import ConsentRejected, MissionClient, PendingMission
from missionbound.demo.approver import ApprovalError, BrowserSession, approve
from missionbound.demo.instance import DemoInstance, DemoInstanceError, PortInUse
from missionbound.demo.scenario import (
    AGENT_ID,
    AGENT_SECRET,
    StoryContext,
    demo_steps,
    mission_intent,
)
from missionbound.demo.story import Outcome, Step, StepReport, StepResult, run_story

TIMEOUT = 60.0  # seconds: a bound on one demo run (it takes a few)
STOP_TIMEOUT = 20.0  # seconds for --keep-running to stop after SIGINT
EVALUATION_ID = re.compile(r"\bdec_[A-Za-z0-9_-]{24}\b")


def environment(tmp_path: Path) -> dict[str, str]:
    """The caller's environment without its MISSIONBOUND_* settings (a developer's must not
    reach the demo), a temporary folder of its own, and no terminal (plain text, wide)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MISSIONBOUND_")}
    env["TMPDIR"] = str(tmp_path)
    env.pop("FORCE_COLOR", None)
    env["NO_COLOR"] = "1"
    return env


def demo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "missionbound", "demo", *args]


def step_block(output: str, number: int) -> str:
    """The lines the timeline printed for step ``number``: its title line and the ones
    under it, up to the next step."""
    match = re.search(rf"^ *{number} [✓✗] .*?(?=^ *{number + 1} [✓✗] |^╭|\Z)", output,
                      re.MULTILINE | re.DOTALL)
    assert match, f"step {number} is not in the output:\n{output}"
    return match.group(0)


def test_the_demo_plays_the_whole_story_and_exits_0(tmp_path: Path) -> None:
    result = subprocess.run(demo_command(), capture_output=True, text=True,
                            env=environment(tmp_path), timeout=TIMEOUT, check=False)
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    steps = demo_steps()
    for number, step in enumerate(steps, start=1):
        block = step_block(output, number)
        assert f"{number} ✓  {step.title}" in block, block
        expected = step.expected.value
        if step.expected_reasons:
            expected += f" ({' | '.join(step.expected_reasons)})"
        assert f"expected {expected}   actual {step.expected.value}   reason " in block, block
        if step.expected_reasons:
            given = re.search(r"   reason (\S+)   ", block)
            assert given and given.group(1) in step.expected_reasons, block
    # The refusals the story is about, each with its reason and its PDP decision.
    for title, reason in (("over the 500 USD cap", "parameter_violation"),
                          ("send_remittance_email", "out_of_authority"),
                          ("another date", "parameter_mismatch"),
                          ("after the revocation: MCP", "mission_inactive"),
                          ("after the revocation: a permit", "mission_inactive")):
        number = next(n for n, step in enumerate(steps, 1) if title in step.title)
        block = step_block(output, number)
        assert f"reason {reason}   evidence dec_" in block, block
    for title in ("refreshes", "exchanges"):
        number = next(n for n, step in enumerate(steps, 1) if title in step.title)
        assert "reason mission_revoked   evidence audit #" in step_block(output, number)
    # Permitted calls name their Decision Evidence too.
    assert len(set(EVALUATION_ID.findall(output))) >= 10, output
    assert f"all {len(steps)} steps went as expected" in output
    # The temporary data folder is gone.
    data = re.search(r"data +(\S+) \(temporary\)", output)
    assert data and not Path(data.group(1)).exists()


def test_a_port_already_taken_is_a_usage_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(demo_command("--port", str(port)), capture_output=True,
                                text=True, env=environment(tmp_path), timeout=TIMEOUT,
                                check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_keep_running_serves_until_interrupted(tmp_path: Path) -> None:
    log = tmp_path / "demo.out"
    data_dir = tmp_path / "data"
    with log.open("w") as out:
        process = subprocess.Popen(demo_command("--keep-running", "--data-dir", str(data_dir)),
                                   stdout=out, stderr=subprocess.STDOUT,
                                   env=environment(tmp_path), stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + TIMEOUT
        while "press Ctrl-C" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        output = log.read_text()
        issuer = re.search(r"issuer +(http://127\.0\.0\.1:\d+)\b", output)
        assert issuer, output
        assert f"console  {issuer.group(1)}/console/  (sign in as bob, password bob)" in output
        assert httpx.get(f"{issuer.group(1)}/healthz", timeout=5).status_code == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=STOP_TIMEOUT) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{issuer.group(1)}/healthz", timeout=2)
    # --data-dir is kept: the database the story wrote, for `missionbound audit verify`.
    assert (data_dir / "missionbound.db").is_file()


# -- judging, in process, against a real instance -----------------------------------------


@pytest.fixture
def instance() -> Iterator[DemoInstance]:
    """A real embedded instance; this process's logging left alone."""
    with DemoInstance.start(configure_logs=False) as started:
        yield started


def test_a_step_whose_outcome_differs_fails_the_story(instance: DemoInstance) -> None:
    # The story up to the first read, the read expected to be denied: it is permitted.
    steps = demo_steps()[:4]
    steps[3] = replace(steps[3], expected=Outcome.DENY)
    context = StoryContext(issuer=instance.issuer, database=instance.engine)
    seen: list[StepReport] = []
    try:
        report = run_story(steps, context, on_step=seen.append)
    finally:
        context.close()
    assert [step.result.outcome for step in report.steps] == [
        Outcome.ISSUED, Outcome.OK, Outcome.ISSUED, Outcome.PERMIT]
    assert [step.number for step in report.failed] == [4]
    assert not report.passed
    assert list(report.steps) == seen


def test_a_step_that_raises_fails_and_the_story_goes_on(instance: DemoInstance) -> None:
    def broken(_: StoryContext) -> StepResult:
        raise RuntimeError("the step broke")

    steps = demo_steps()
    story = [steps[0], Step("a step that raises", Outcome.OK, broken), *steps[1:3]]
    context = StoryContext(issuer=instance.issuer, database=instance.engine)
    try:
        report = run_story(story, context)
    finally:
        context.close()
    raised = report.steps[1]
    assert (raised.result.outcome, raised.result.reason) == (
        Outcome.ERROR, "RuntimeError: the step broke")
    assert [step.passed for step in report.steps] == [True, False, True, True]
    assert not report.passed


def test_a_step_without_what_it_needs_says_so(instance: DemoInstance) -> None:
    # The read with no Mission: not attempted, and a failure, never a silent pass.
    context = StoryContext(issuer=instance.issuer, database=instance.engine)
    report = run_story([demo_steps()[3]], context)
    [read] = report.steps
    assert read.result.outcome is Outcome.ERROR
    assert read.result.reason == "not attempted: no Mission: an earlier step did not get one"
    assert not report.passed


def test_the_port_of_a_running_instance_is_refused(instance: DemoInstance) -> None:
    with pytest.raises(PortInUse, match=f"port {instance.port} on 127.0.0.1 is already in use"):
        DemoInstance.start(port=instance.port, configure_logs=False)


# -- the approver: the real forms, with plain HTTP ------------------------------------------


def pending_mission(instance: DemoInstance) -> tuple[MissionClient, PendingMission]:
    client = MissionClient(instance.issuer, AGENT_ID, client_secret=AGENT_SECRET)
    return client, client.submit_intent(mission_intent(instance.issuer), login_hint="alice")


def test_the_approver_drives_the_forms_of_an_example_style_consent_url(
        instance: DemoInstance) -> None:
    client, pending = pending_mission(instance)
    try:
        # As examples/demo_agent.py builds it (the request_uri not percent-encoded).
        url = (f"{instance.issuer}/authorize?client_id={AGENT_ID}"
               f"&request_uri={pending.request_uri}")
        callback = approve(url, "bob")
        assert callback.startswith(pending.redirect_uri + "?code=")
        mission = client.complete(pending, callback)
        assert mission.tokens.token_type == "DPoP"
    finally:
        client.close()


def test_the_approver_says_why_it_could_not_approve(instance: DemoInstance) -> None:
    client, pending = pending_mission(instance)
    try:
        with pytest.raises(ApprovalError, match="signing in as bob failed: Unknown user name "
                                                "or wrong password"):
            approve(pending.consent_url, "bob", password="not-bob")
        # A rejection goes back to the agent as access_denied.
        with BrowserSession("bob") as bob:
            callback = bob.reject(pending.consent_url)
        with pytest.raises(ConsentRejected):
            client.complete(pending, callback)
    finally:
        client.close()


def test_settings_naming_another_tenant_are_refused(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # A configured tenant (the demo's, its secrets replaced, as configured tenants must):
    # the story's users, clients and secrets are not there, so the demo refuses to start.
    from missionbound.tenant import DEMO_TENANT_FILE

    text = re.sub(r'^(password|client_secret) *= *"[^"]*"',
                  lambda match: f'{match.group(1)} = "configured-{secrets.token_urlsafe(8)}"',
                  Path(DEMO_TENANT_FILE).read_text(), flags=re.MULTILINE)
    tenant = tmp_path / "tenant.toml"
    tenant.write_text(text)
    monkeypatch.setenv("MISSIONBOUND_TENANT_FILE", str(tenant))
    with pytest.raises(DemoInstanceError, match="the demo needs the demo tenant"):
        DemoInstance.start(data_dir=tmp_path / "data", configure_logs=False)
