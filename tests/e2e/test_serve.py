"""``missionbound serve`` as a user runs it: a real process on a free port, configured by
``MISSIONBOUND_*`` variables and flags, talked to over real HTTP, then stopped with SIGTERM.
Every wait is bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from missionbound.config import ENV_PREFIX
from missionbound.store.engine import create_engine_for
from missionbound.store.migrate import current_revision, head_revision

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
# uvicorn shuts down gracefully on SIGTERM, then re-raises the signal so the exit status
# tells a supervisor why the process ended.
STOPPED_BY_SIGTERM = (0, -signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def clean_environment(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    env.update(variables)
    return env


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    stdout: Path
    stderr: Path

    def output(self) -> tuple[str, str]:
        return self.stdout.read_text(), self.stderr.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
                pytest.fail("serve did not stop within 15 s of SIGTERM")
        return self.process.returncode


def start(tmp_path: Path, args: list[str], env: dict[str, str]) -> Server:
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "missionbound", "serve", *args],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=err,
        )
    port = args[args.index("--port") + 1]
    return Server(process, f"http://127.0.0.1:{port}", stdout, stderr)


def wait_until_healthy(server: Server) -> httpx.Response:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"serve exited with {server.process.returncode}: {server.output()[1]}")
        try:
            response = httpx.get(f"{server.base_url}/healthz", timeout=2.0)
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        return response
    pytest.fail(f"serve did not answer within {START_TIMEOUT} s: {server.output()[1]}")


@pytest.fixture
def serve_demo(tmp_path: Path, empty_database_url: str) -> Iterator[tuple[Server, str]]:
    port = free_port()
    env = clean_environment(
        MISSIONBOUND_DATA_DIR=str(tmp_path / "data"),
        MISSIONBOUND_DATABASE_URL=empty_database_url,
    )
    server = start(tmp_path, ["--port", str(port)], env)
    try:
        yield server, empty_database_url
    finally:
        server.stop()


def test_serve_runs_the_demo_tenant_over_http(serve_demo: tuple[Server, str]) -> None:
    server, database_url = serve_demo
    health = wait_until_healthy(server)
    assert health.status_code == 200
    # This test's own requests carry an X-Request-ID (logged as request_id): the demo ERP
    # calls this server in the background at start (Shared Signals, JWKS), and those lines
    # may come between ours.
    mine = {"X-Request-ID": "test-serve"}
    assert health.json() == {"status": "ok", "checks": {"database": "ok"}}

    metadata = httpx.get(f"{server.base_url}/.well-known/oauth-authorization-server", timeout=5,
                         headers=mine)
    assert metadata.status_code == 200
    # No issuer configured: it is the address the server listens on.
    assert metadata.json()["issuer"] == server.base_url
    assert metadata.json()["mission_ladder_levels_supported"] == [1]

    # A signing key was created at start and is published where the metadata says.
    jwks = httpx.get(metadata.json()["jwks_uri"], timeout=5, headers=mine)
    assert jwks.status_code == 200
    [published] = jwks.json()["keys"]
    assert published["alg"] == "ES256" and "d" not in published

    missing = httpx.get(f"{server.base_url}/no/such/path", timeout=5, headers=mine)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"

    # Migrations were applied at start.
    engine = create_engine_for(database_url)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()

    assert server.stop() in STOPPED_BY_SIGTERM
    stdout, stderr = server.output()
    # The demo banner names every demo secret.
    assert "DEMO SECRETS" in stdout
    for secret in ("alice", "bob", "demo-agent-secret", "demo-subagent-secret", "demo-rs-secret"):
        assert secret in stdout
    # Every log line is one JSON object; each request wrote exactly one line.
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    requests = [line for line in lines if line["event"] == "request"]
    ours = [r for r in requests if r.get("request_id") == "test-serve"]
    assert [(r["method"], r["path"], r["status"]) for r in ours] == [
        ("GET", "/.well-known/oauth-authorization-server", 200),
        ("GET", "/jwks", 200),
        ("GET", "/no/such/path", 404),
    ]
    assert all(isinstance(r["duration_ms"], float) for r in requests)
    assert any(line["event"] == "serving" and line["tenant"] == "demo" for line in lines)
    assert any(
        line["event"] == "signing_key_ready" and line["kid"] == published["kid"] for line in lines
    )
    # SIGTERM shut the app down gracefully (lifespan shutdown ran).
    assert any(line["event"] == "Application shutdown complete." for line in lines)


def test_flags_win_over_the_environment(tmp_path: Path) -> None:
    port = free_port()
    env = clean_environment(
        MISSIONBOUND_DATA_DIR=str(tmp_path / "data"),
        MISSIONBOUND_ISSUER="https://from-env.example",
        MISSIONBOUND_PORT="1",  # overridden by --port below
    )
    server = start(tmp_path, ["--port", str(port), "--issuer", "https://from-flag.example"], env)
    try:
        assert wait_until_healthy(server).status_code == 200
        metadata = httpx.get(f"{server.base_url}/.well-known/oauth-authorization-server", timeout=5)
        assert metadata.json()["issuer"] == "https://from-flag.example"
    finally:
        assert server.stop() in STOPPED_BY_SIGTERM
    assert (tmp_path / "data" / "missionbound.db").is_file()


def run_to_exit(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "missionbound", "serve", "--port", str(free_port()), *args],
        cwd=tmp_path,
        env=clean_environment(MISSIONBOUND_DATA_DIR=str(tmp_path / "data")),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )


def test_serve_refuses_demo_secrets_in_a_configured_tenant(tmp_path: Path) -> None:
    config = tmp_path / "acme.toml"
    demo = (Path(__file__).parents[2] / "missionbound" / "demo" / "tenant.toml").read_text()
    config.write_text(demo.replace('name = "demo"', 'name = "acme"'))
    result = run_to_exit(tmp_path, ["--config", str(config)])
    assert result.returncode == 2
    assert "demo password or secret" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "DEMO SECRETS" not in result.stdout


def test_serve_reports_a_database_that_does_not_answer(tmp_path: Path) -> None:
    url = "postgresql+psycopg://missionbound@127.0.0.1:1/missionbound"
    result = run_to_exit(tmp_path, ["--database-url", url])
    assert result.returncode == 1
    assert "does not answer" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_reports_a_bad_setting(tmp_path: Path) -> None:
    config = tmp_path / "mb.toml"
    config.write_text(
        textwrap.dedent("""\
        issuer = "https://as.example/"
    """)
    )
    result = run_to_exit(tmp_path, ["--config", str(config)])
    assert result.returncode == 2
    assert "must not end with '/'" in result.stderr
    assert "Traceback" not in result.stderr
