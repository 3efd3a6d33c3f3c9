"""The test configuration the MCP conformance suite runs against: the Mission-aware MCP
gateway as operators run it, with nothing switched off.

Four pieces, all on 127.0.0.1:

- ``missionbound serve`` with a tenant of its own (:func:`tenant_config`): the AS that issues
  the Mission and the PDP that decides every call; the conformance tools are its catalog's
  actions at the gateway's resource, all ``consequential_write``, so every call gets a
  parameter-bound permit the gateway must verify as the tool runtime;
- the upstream (:mod:`tests.conformance.upstream`, its own process): the tools the
  scenarios call;
- ``missionbound gateway`` (its own process) in front of it, resource
  ``http://127.0.0.1:<port>/mcp``;
- :class:`CredentialProxy`, because the runner cannot authenticate (it has no option for a
  header, and DPoP needs a fresh signed proof per request): a reverse proxy, in this
  process, that holds an approved Mission's DPoP-bound token and its key and adds
  ``Authorization: DPoP`` and a fresh proof to every request it forwards to the gateway
  (:class:`missionbound.client.mcp_auth.DPoPAuth`, what an agent's MCP client uses). The
  gateway sees an agent; the runner sees an MCP server without authentication.

The Mission is approved the way a person approves one: PAR with DPoP, sign-in as the
approver, the consent form, the code redeemed for a token for the gateway's resource.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import httpx2
import uvicorn
from joserfc.jwk import Key
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from missionbound.client.mcp_auth import DPoPAuth
from tests.conformance.upstream import MCP_PATH, TOOLS
from tests.e2e_support import (
    ServerHandle,
    ServerStartError,
    free_port,
    parse_form,
    running_server,
)
from tests.protocol.proofs import generate_key, make_proof

REPO: Final = Path(__file__).resolve().parents[2]
START_TIMEOUT: Final = 30.0
HTTP_TIMEOUT: Final = 20.0
AGENT: Final = ("conformance-agent", "agent-" + secrets.token_urlsafe(16))
PEP: Final = ("conformance-gateway", "pep-" + secrets.token_urlsafe(16))
APPROVER: Final = ("bob", "bob-" + secrets.token_urlsafe(12))
REDIRECT_URI: Final = "http://127.0.0.1:8765/callback"
# The tools the Mission grants: every tool the upstream offers.
GRANTED: Final = tuple(TOOLS)
# Request headers the proxy passes on (MCP's own and content negotiation); everything else,
# above all any Authorization or DPoP a caller sends, is dropped.
FORWARDED_REQUEST: Final = ("accept", "content-type", "mcp-session-id", "mcp-protocol-version",
                            "last-event-id")
# Response headers that describe the body or the MCP session.
FORWARDED_RESPONSE: Final = ("content-type", "mcp-session-id", "mcp-protocol-version",
                             "www-authenticate", "allow")


def tenant_config(resource: str) -> str:
    """A tenant whose catalog offers the conformance tools at ``resource`` (the gateway)."""
    actions = "".join(textwrap.dedent(f"""
        [[catalog.resources.actions]]
        name = "{name}"
        description = "{description}"
        class = "consequential_write"
        """) for name, (description, _, _) in TOOLS.items())
    return textwrap.dedent(f"""\
        expiry_sweep_seconds = 0
        signals_delivery_seconds = 0

        [tenant]
        name = "conformance"

        [[users]]
        username = "alice"
        password = "alice-{secrets.token_urlsafe(12)}"
        display_name = "Alice Example"

        [[users]]
        username = "{APPROVER[0]}"
        password = "{APPROVER[1]}"
        display_name = "Bob Manager"
        roles = ["admin"]
        may_approve_for = ["alice"]

        [[clients]]
        client_id = "{AGENT[0]}"
        client_secret = "{AGENT[1]}"
        redirect_uris = ["{REDIRECT_URI}"]
        mission_resources = {{ "{resource}" = ["*"] }}

        [[clients]]
        client_id = "{PEP[0]}"
        client_secret = "{PEP[1]}"
        audiences = ["{resource}"]

        [catalog]
        version = "conformance-catalog:1"

        [[catalog.resources]]
        uri = "{resource}"
        title = "MCP conformance tools"
        """) + actions


@dataclass(frozen=True)
class Granted:
    mission_id: str
    access_token: str
    key: Key


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _dpop_post(http: httpx.Client, url: str, key: Key, data: dict[str, str]) -> httpx.Response:
    proof = make_proof(key, htm="POST", htu=url, iat=int(time.time()))
    return http.post(url, data=data, auth=AGENT, headers={"DPoP": proof})


def approve_mission(issuer: str, resource: str, tools: Sequence[str] = GRANTED) -> Granted:
    """PAR -> sign-in as the approver -> consent -> code -> a DPoP-bound Mission token for
    ``resource`` granting ``tools``."""
    key = generate_key("ES256")
    verifier, challenge = _pkce()
    intent = {"goal": "Run the MCP conformance scenarios through the gateway.",
              "resources": [resource],
              "mission_expiry": (datetime.now(UTC) + timedelta(days=1)).strftime(
                  "%Y-%m-%dT%H:%M:%SZ")}
    details = [{"type": "mission_resource_access", "resource": resource,
                "actions": list(tools)}]
    with httpx.Client(base_url=issuer, timeout=HTTP_TIMEOUT) as http:
        par = _dpop_post(http, f"{issuer}/par", key, {
            "response_type": "code", "client_id": AGENT[0], "redirect_uri": REDIRECT_URI,
            "code_challenge": challenge, "code_challenge_method": "S256", "state": "st-1",
            "mission_intent": json.dumps(intent),
            "authorization_details": json.dumps(details), "login_hint": "alice",
            "dpop_jkt": key.thumbprint()})
        if par.status_code != 201:
            raise RuntimeError(f"PAR answered {par.status_code}: {par.text[:500]}")
        authorize = http.get("/authorize", params={"client_id": AGENT[0],
                                                   "request_uri": par.json()["request_uri"]})
        login = http.get(urljoin(str(authorize.request.url), authorize.headers["location"]))
        action, _, hidden = parse_form(login.text)
        signed_in = http.post(action, data={**hidden, "username": APPROVER[0],
                                            "password": APPROVER[1]})
        consent = http.get(urljoin(str(signed_in.request.url), signed_in.headers["location"]))
        if consent.status_code != 200:
            raise RuntimeError(f"consent page: {consent.status_code}: {consent.text[:500]}")
        action, _, hidden = parse_form(consent.text)
        approved = http.post(action, data={**hidden, "decision": "approve"})
        code = parse_qs(urlsplit(approved.headers["location"]).query)["code"][0]
        token = _dpop_post(http, f"{issuer}/token", key, {
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier, "resource": resource})
        if token.status_code != 200:
            raise RuntimeError(f"/token answered {token.status_code}: {token.text[:500]}")
        body = token.json()
    return Granted(body["mission_id"], body["access_token"], key)


# -- processes ----------------------------------------------------------------------------


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n"
                               f"{log.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {START_TIMEOUT:g} s:\n"
                       f"{log.read_text(errors='replace')[-3000:]}")


@contextmanager
def process(command: list[str], port: int, folder: Path, what: str,
            env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` running (until the block ends) and listening on ``port``."""
    log = folder / f"{what.replace(' ', '-')}.log"
    with log.open("wb") as out:
        started = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env)
    try:
        _wait_for_port(port, started, log, what)
        yield started
    finally:
        if started.poll() is None:
            started.terminate()
            try:
                started.wait(timeout=10)
            except subprocess.TimeoutExpired:
                started.kill()
                started.wait(timeout=10)


# -- the credential proxy -----------------------------------------------------------------


class CredentialProxy:
    """``http://127.0.0.1:<port>/mcp`` forwarding to ``target`` (the gateway's MCP
    endpoint) with ``auth`` on every request. Test-only: whoever reaches it acts with the
    Mission it holds."""

    def __init__(self, target: str, auth: DPoPAuth) -> None:
        self.target = target
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{MCP_PATH}"
        self._auth = auth
        self._client: httpx2.AsyncClient | None = None
        app = Starlette(routes=[Route(MCP_PATH, self._forward,
                                      methods=["GET", "POST", "DELETE"])],
                        lifespan=self._lifespan)
        self._server = uvicorn.Server(uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning",
            timeout_graceful_shutdown=2))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @contextmanager
    def running(self) -> Iterator[CredentialProxy]:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the credential proxy did not start")
            time.sleep(0.02)
        try:
            yield self
        finally:
            self._server.should_exit = True
            self._thread.join(START_TIMEOUT)

    def _lifespan(self, _app: Starlette) -> _ClientLifespan:
        return _ClientLifespan(self)

    async def _forward(self, request: Request) -> Response:
        # Streamed both ways: a GET may open an event stream that stays open.
        assert self._client is not None
        headers = {name: value for name, value in request.headers.items()
                   if name.lower() in FORWARDED_REQUEST}
        outgoing = self._client.build_request(request.method, self.target,
                                              content=await request.body(), headers=headers)
        answer = await self._client.send(outgoing, stream=True)
        return StreamingResponse(
            answer.aiter_raw(), status_code=answer.status_code,
            headers={name: value for name, value in answer.headers.items()
                     if name.lower() in FORWARDED_RESPONSE},
            background=BackgroundTask(answer.aclose))


class _ClientLifespan:
    """The proxy's HTTP client lives as long as its server (opened in the server's loop)."""

    def __init__(self, proxy: CredentialProxy) -> None:
        self.proxy = proxy

    async def __aenter__(self) -> None:
        self.proxy._client = httpx2.AsyncClient(auth=self.proxy._auth, timeout=HTTP_TIMEOUT)

    async def __aexit__(self, *_: object) -> None:
        if self.proxy._client is not None:
            await self.proxy._client.aclose()


# -- the whole configuration --------------------------------------------------------------


@dataclass(frozen=True)
class Configuration:
    serve: ServerHandle
    gateway_url: str  # the gateway's resource = its MCP endpoint
    upstream_url: str
    proxy_url: str  # what the runner is pointed at
    granted: Granted

    @property
    def metrics_url(self) -> str:
        return f"{self.gateway_url}/metrics"


@contextmanager
def conformance_configuration(tmp_path: Path, *, attempts: int = 3) -> Iterator[Configuration]:
    """Everything of the module docstring running, stopped when the block ends. The ports
    are probed before the processes bind them, so one taken in between (or by another
    piece's probe) makes the whole configuration start again, ``attempts`` times at most."""
    last: Exception | None = None
    for _ in range(attempts):
        with ExitStack() as stack:
            try:
                configuration = _start(stack, tmp_path)
            except (RuntimeError, ServerStartError) as exc:
                last = exc
                continue
            yield configuration
            return
    raise RuntimeError(f"the conformance configuration did not start in {attempts} "
                       f"attempts") from last


def _start(stack: ExitStack, tmp_path: Path) -> Configuration:
    folder = Path(tempfile.mkdtemp(prefix="conformance-", dir=tmp_path))
    gateway_port, upstream_port = free_port(), free_port()
    if gateway_port == upstream_port:
        raise RuntimeError("the same free port twice")
    resource = f"http://127.0.0.1:{gateway_port}{MCP_PATH}"
    upstream = f"http://127.0.0.1:{upstream_port}{MCP_PATH}"
    config = folder / "missionbound.toml"
    config.write_text(tenant_config(resource))
    serve = stack.enter_context(running_server(folder, args=("--config", str(config)),
                                               start_timeout=START_TIMEOUT))
    stack.enter_context(process(
        [sys.executable, "-m", "tests.conformance.upstream", "--port", str(upstream_port)],
        upstream_port, folder, "upstream"))
    stack.enter_context(process(
        [sys.executable, "-m", "missionbound", "gateway", "--resource", resource,
         "--upstream", upstream, "--issuer", serve.base_url,
         "--pep-client-id", PEP[0], "--port", str(gateway_port), "--log-level", "warning"],
        gateway_port, folder, "gateway",
        env={**_clean_environment(), "MISSIONBOUND_PEP_CLIENT_SECRET": PEP[1]}))
    granted = approve_mission(serve.base_url, resource)
    proxy = stack.enter_context(
        CredentialProxy(resource, DPoPAuth(granted.access_token, granted.key)).running())
    return Configuration(serve=serve, gateway_url=resource, upstream_url=upstream,
                         proxy_url=proxy.url, granted=granted)


def _clean_environment() -> dict[str, str]:
    return {name: value for name, value in os.environ.items()
            if not name.upper().startswith("MISSIONBOUND_")}
