"""The ``mcp_upstreams`` setting and ``serve --mcp-upstream RESOURCE=URL``: where the AS reads
the tools of an MCP gateway's upstream at approval (tool-manifest binding, docs/mcp.md), and
how the app wires it next to the demo tenant's in-process server. The binding itself, over
real processes, is in tests/e2e/test_mcp_gateway_e2e.py (the ``separate`` fixture)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from missionbound import cli
from missionbound.cli.serve import parse_mcp_upstreams
from missionbound.config import ENV_PREFIX, ConfigError, load_settings
from missionbound.demo.payments_mcp import Ledger, build_payments_server
from missionbound.enforce.mcp import InProcessToolDefinitions, McpToolDefinitions
from missionbound.enforce.mcp.definitions import CombinedToolDefinitions
from missionbound.protocol.tool_manifest import ToolDefinitionsUnavailable
from missionbound.web.app import DEMO_MCP_PATH, create_app
from tests.e2e.test_mcp_gateway_e2e import own_tenant

RESOURCE = "https://mcp.example.com/mcp"
UPSTREAM = "http://10.0.0.5:8080/mcp"
# Nothing listens on port 1: an upstream there cannot be read.
DEAD_UPSTREAM = "http://127.0.0.1:1/mcp"
DEAD_DATABASE = "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2"
ISSUER = "http://127.0.0.1:8000"
PAYMENTS_TOOLS = {"list_invoices", "get_invoice", "execute_wire_transfer",
                  "schedule_payment", "send_remittance_email"}

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    # serve runs in this process here: see tests/test_cli_pdp_tenant.py.
    monkeypatch.setattr("missionbound.web.logs.configure_logging", lambda *_a, **_k: None)


# -- the setting ---------------------------------------------------------------------------


def test_none_by_default(tmp_path: Path) -> None:
    assert load_settings(data_dir=tmp_path).mcp_upstreams == {}


def test_upstreams_from_the_environment(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISSIONBOUND_MCP_UPSTREAMS", json.dumps({RESOURCE: UPSTREAM}))
    assert load_settings(data_dir=tmp_path).mcp_upstreams == {RESOURCE: UPSTREAM}


def test_upstreams_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "mb.toml"
    config.write_text(f'[mcp_upstreams]\n"{RESOURCE}" = "{UPSTREAM}"\n')
    assert load_settings(config_file=config, data_dir=tmp_path).mcp_upstreams == {
        RESOURCE: UPSTREAM}


@pytest.mark.parametrize(("upstreams", "fragment"), [
    ({"mcp.example.com/mcp": UPSTREAM}, "must be an absolute http(s) URI"),
    ({"urn:example:mcp": UPSTREAM}, "must be an absolute http(s) URI"),
    ({RESOURCE + "#tools": UPSTREAM}, "must not contain a fragment"),
    ({RESOURCE: "ftp://10.0.0.5/mcp"}, "must be an absolute http(s) URL without fragment"),
    ({RESOURCE: "/mcp"}, "must be an absolute http(s) URL without fragment"),
    ({RESOURCE: UPSTREAM + "#x"}, "must be an absolute http(s) URL without fragment"),
])
def test_a_bad_value_is_a_configuration_error(tmp_path: Path, upstreams: dict[str, str],
                                              fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(data_dir=tmp_path, mcp_upstreams=upstreams)
    assert "invalid setting mcp_upstreams (MISSIONBOUND_MCP_UPSTREAMS)" in str(raised.value)
    assert fragment in str(raised.value)


def test_environment_json_that_is_no_object_is_a_configuration_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISSIONBOUND_MCP_UPSTREAMS", json.dumps([RESOURCE, UPSTREAM]))
    with pytest.raises(ConfigError, match=r"MISSIONBOUND_MCP_UPSTREAMS"):
        load_settings(data_dir=tmp_path)


def test_a_resource_as_refuses_it(tmp_path: Path) -> None:
    origin = {"issuer": "https://origin.example", "status_client_id": "ras",
              "status_client_secret": "s"}
    with pytest.raises(ConfigError, match="mcp_upstreams is an issuer setting"):
        load_settings(data_dir=tmp_path, role="resource_as", trusted_origins=[origin],
                      mcp_upstreams={RESOURCE: UPSTREAM})


# -- the flag --------------------------------------------------------------------------------


def serve(*args: str) -> Result:
    # Wide enough that rich does not wrap an error message across its panel's lines.
    return runner.invoke(cli.app, ["serve", "--database-url", DEAD_DATABASE, *args],
                         env={"COLUMNS": "300"})


def test_resources_and_urls_are_parsed() -> None:
    assert parse_mcp_upstreams([f"{RESOURCE}={UPSTREAM}",
                                " https://r.example/mcp?a=b = https://u.example/m?c=d "]) == {
        RESOURCE: UPSTREAM, "https://r.example/mcp?a=b": "https://u.example/m?c=d"}


@pytest.mark.parametrize("value", [RESOURCE, f"={UPSTREAM}", f"{RESOURCE}=",
                                   f"{RESOURCE}=10.0.0.5:8080/mcp"])
def test_a_malformed_value_is_a_usage_error(value: str) -> None:
    result = serve("--mcp-upstream", value)
    assert result.exit_code == 2, result.output
    assert "expected RESOURCE=URL" in result.output and "--mcp-upstream" in result.output
    assert "Traceback" not in result.output


def test_a_resource_given_twice_is_a_usage_error() -> None:
    with pytest.raises(typer.BadParameter, match="given twice"):
        parse_mcp_upstreams([f"{RESOURCE}={UPSTREAM}", f"{RESOURCE}={DEAD_UPSTREAM}"])


def test_a_flag_value_is_checked_as_the_setting() -> None:
    result = serve("--mcp-upstream", f"mcp.example.com={UPSTREAM}")
    assert result.exit_code == 2, result.output
    assert "invalid setting mcp_upstreams" in result.stderr


def test_a_good_value_lets_the_start_go_on() -> None:
    result = serve("--mcp-upstream", f"{RESOURCE}={UPSTREAM}")
    # Past the settings: the start stopped at the database, which does not answer.
    assert result.exit_code == 1, result.output
    assert "does not answer" in result.stderr


def test_the_flag_reaches_the_settings_with_those_of_the_config_file(tmp_path: Path) -> None:
    # A resource_as from the file refuses mcp_upstreams: only the flag can have set it.
    config = tmp_path / "mb.toml"
    config.write_text('role = "resource_as"\n\n[[trusted_origins]]\n'
                      'issuer = "https://origin.example"\nstatus_client_id = "ras"\n'
                      'status_client_secret = "s"\n')
    assert serve("--config", str(config)).exit_code == 1
    result = serve("--config", str(config), "--mcp-upstream", f"{RESOURCE}={UPSTREAM}")
    assert result.exit_code == 2 and "mcp_upstreams is an issuer setting" in result.stderr


# -- the app's source ------------------------------------------------------------------------


def test_without_the_setting_a_configured_tenant_binds_nothing(tmp_path: Path) -> None:
    tenant_file, _ = own_tenant(tmp_path, RESOURCE)
    settings = load_settings(issuer=ISSUER, data_dir=tmp_path, tenant_file=tenant_file)
    assert create_app(settings).state.issuer.tool_definitions is None


def test_a_configured_tenant_reads_the_upstreams(tmp_path: Path) -> None:
    tenant_file, _ = own_tenant(tmp_path, RESOURCE)
    settings = load_settings(issuer=ISSUER, data_dir=tmp_path, tenant_file=tenant_file,
                             mcp_upstreams={RESOURCE: DEAD_UPSTREAM})
    source = create_app(settings).state.issuer.tool_definitions
    assert isinstance(source, McpToolDefinitions)
    # Known but unreadable: approval fails closed on it (tests/runtime/test_capability_binding).
    with pytest.raises(ToolDefinitionsUnavailable, match=r"127\.0\.0\.1:1/"):
        source.definitions(RESOURCE)
    assert source.definitions("https://other.example/mcp") is None


def test_the_demo_tenant_combines_its_in_process_server_with_the_upstreams(
        tmp_path: Path) -> None:
    demo_mcp = ISSUER + DEMO_MCP_PATH
    settings = load_settings(issuer=ISSUER, data_dir=tmp_path,
                             mcp_upstreams={RESOURCE: DEAD_UPSTREAM})
    app = create_app(settings)
    source = app.state.issuer.tool_definitions
    assert isinstance(source, CombinedToolDefinitions)
    demo_tools = source.definitions(demo_mcp)  # the in-process server the gateway calls
    assert demo_tools is not None and set(demo_tools) == PAYMENTS_TOOLS
    assert app.state.demo_payments_server is not None
    with pytest.raises(ToolDefinitionsUnavailable, match=r"127\.0\.0\.1:1/"):
        source.definitions(RESOURCE)
    assert source.definitions("https://other.example/mcp") is None


def test_naming_the_demo_gateways_resource_puts_that_server_behind_it(tmp_path: Path) -> None:
    """``--mcp-upstream <issuer>/demo/mcp=URL``: the demo gateway fronts that MCP server
    (your own, examples/mcp_server.py), and the binding at approval reads that same server;
    the demo payments server is not built."""
    demo_mcp = ISSUER + DEMO_MCP_PATH
    settings = load_settings(issuer=ISSUER, data_dir=tmp_path,
                             mcp_upstreams={demo_mcp: DEAD_UPSTREAM})
    app = create_app(settings)
    assert app.state.demo_payments_server is None
    assert app.state.demo_payments_ledger is None
    assert isinstance(app.state.issuer.tool_definitions, McpToolDefinitions)
    with pytest.raises(ToolDefinitionsUnavailable, match=r"127\.0\.0\.1:1/"):
        app.state.issuer.tool_definitions.definitions(demo_mcp)


def test_a_source_that_knows_a_resource_but_fails_is_not_passed_over(tmp_path: Path) -> None:
    server = build_payments_server(Ledger(tmp_path / "ledger.jsonl"))
    combined = CombinedToolDefinitions(McpToolDefinitions({RESOURCE: DEAD_UPSTREAM}),
                                       InProcessToolDefinitions({RESOURCE: server}))
    with pytest.raises(ToolDefinitionsUnavailable):
        combined.definitions(RESOURCE)
