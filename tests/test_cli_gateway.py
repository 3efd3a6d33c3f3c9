"""``missionbound gateway``: the options it refuses before starting anything (exit 2, a
message naming the option), and an AS that does not answer (exit 1). The gateway serving
for real, as its own process in front of a payments server process, is in
tests/e2e/test_mcp_gateway_e2e.py."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from missionbound import cli
from missionbound.config import ENV_PREFIX
from tests.e2e_support import free_port

runner = CliRunner()
GOOD = {
    "--resource": "http://127.0.0.1:8100/mcp",
    "--upstream": "http://127.0.0.1:8765/mcp",
    "--issuer": "http://127.0.0.1:8000",
    "--pep-client-id": "gateway",
    "--pep-client-secret": "s3cret-s3cret",
}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def run(**options: str | None) -> Result:
    """``gateway`` with :data:`GOOD` options, ``options`` replacing them (None drops one;
    ``port="..."`` and the like are given as ``--port``)."""
    merged: dict[str, str | None] = {**GOOD, **{
        "--" + name.replace("_", "-"): value for name, value in options.items()}}
    args = ["gateway"]
    for name, value in merged.items():
        if value is not None:
            args += [name, value]
    return runner.invoke(cli.app, args)


def assert_usage_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


@pytest.mark.parametrize("option, value, message", [
    ("resource", "mcp.example.com/mcp", "--resource 'mcp.example.com/mcp': expected an "
                                        "absolute http(s) URL"),
    ("resource", "ftp://mcp.example.com/mcp", "expected an absolute http(s) URL"),
    ("resource", "https://mcp.example.com/mcp?tenant=a", "without query or fragment"),
    ("resource", "https://mcp.example.com/mcp#x", "without query or fragment"),
    ("resource", "https://mcp.example.com", "the MCP endpoint needs a path"),
    ("resource", "https://user:pw@mcp.example.com/mcp", "credentials do not belong"),
    ("resource", "https://mcp.example.com/mcp/", "without a trailing slash"),
    ("upstream", "127.0.0.1:8765/mcp", "--upstream '127.0.0.1:8765/mcp'"),
    ("upstream", "http://127.0.0.1:99999/mcp", "the port is not a number"),
    ("upstream", "http://127.0.0.1:8100/mcp/", "it would call itself"),
    ("issuer", "as.example", "--issuer 'as.example': expected an absolute http(s) URL"),
    ("pdp", "pdp.example", "--pdp 'pdp.example': expected an absolute http(s) URL"),
    ("port", "0", "--port 0: a TCP port is 1-65535"),
    ("port", "70000", "--port 70000"),
    ("pep_client_id", " ", "--pep-client-id is empty"),
    ("pep_client_secret", "", "is empty"),
    ("log_level", "loud", "--log-level 'loud'"),
    ("definitions_ttl", "-1", "--definitions-ttl -1: 0 to 86400 seconds"),
    ("definitions_ttl", "90000", "--definitions-ttl 90000"),
    ("mission_staleness", "-1", "--mission-staleness -1: 0 to 3600 seconds"),
    ("mission_staleness", "3601", "--mission-staleness 3601"),
    ("dpop_nonce_secret", "short", "--dpop-nonce-secret (or "
                                   "MISSIONBOUND_GATEWAY_DPOP_NONCE_SECRET) needs at least 16"),
])
def test_bad_options_are_usage_errors(option: str, value: str, message: str) -> None:
    assert_usage_error(run(**{option: value}), message)


@pytest.mark.parametrize("option", ["resource", "upstream", "issuer", "pep_client_id",
                                    "pep_client_secret"])
def test_required_options_are_usage_errors_when_missing(option: str) -> None:
    assert_usage_error(run(**{option: None}), "Missing option")


def test_the_secret_comes_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # Past option checking, it reads the AS's metadata: nothing answers there (exit 1).
    monkeypatch.setenv("MISSIONBOUND_PEP_CLIENT_SECRET", "from-the-env")
    port = free_port()
    result = run(pep_client_secret=None, issuer=f"http://127.0.0.1:{port}")
    assert result.exit_code == 1, result.output
    assert f"http://127.0.0.1:{port}/.well-known/oauth-authorization-server" in result.output
    assert "Traceback" not in result.output


@pytest.fixture
def metadata_server() -> Iterator[tuple[str, list[dict[str, object]]]]:
    """A loopback HTTP server answering every GET with the next JSON document of the list it
    yields (the AS metadata a test wants the gateway to read); its base URL."""
    documents: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(documents.pop(0)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", documents
    finally:
        server.shutdown()
        thread.join(5)


def test_metadata_naming_another_issuer_stops_the_gateway(
        metadata_server: tuple[str, list[dict[str, object]]]) -> None:
    # RFC 8414 section 3.3: the document must name the very issuer it was asked for.
    issuer, documents = metadata_server
    documents.append({"issuer": "https://other.example", "jwks_uri": f"{issuer}/jwks"})
    result = run(issuer=issuer)
    assert result.exit_code == 1, result.output
    assert "names the issuer 'https://other.example'" in result.output


def test_metadata_without_a_jwks_uri_stops_the_gateway(
        metadata_server: tuple[str, list[dict[str, object]]]) -> None:
    issuer, documents = metadata_server
    documents.append({"issuer": issuer})
    result = run(issuer=issuer)
    assert result.exit_code == 1, result.output
    assert "has no http(s) jwks_uri" in result.output


def test_metadata_without_a_mission_status_endpoint_stops_the_gateway(
        metadata_server: tuple[str, list[dict[str, object]]]) -> None:
    # The gateway refuses a Mission that is no longer active from its Mission Status (RS-C):
    # an AS without one is not a Mission-bound AS this gateway can front.
    issuer, documents = metadata_server
    documents.append({"issuer": issuer, "jwks_uri": f"{issuer}/jwks"})
    result = run(issuer=issuer)
    assert result.exit_code == 1, result.output
    assert "has no http(s) mission_status_endpoint" in result.output
