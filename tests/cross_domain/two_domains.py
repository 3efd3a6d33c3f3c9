"""Two trust domains as real processes, for the end-to-end proof of issue 5.

:func:`two_domains` starts two ``missionbound serve`` processes on 127.0.0.1, each with its
own configuration file, database and port: the **origin** (the Mission Issuer, with the
Resource AS as a ``resource_authorities`` entry and a status client registered for it) and
the **Resource AS** (``role = "resource_as"``, trusting the origin). Their configurations
name each other's URLs, so the ports are chosen first; a port taken in between makes the
whole pair start again.

:class:`ErpResource` is a small Resource Server of the partner domain (a Starlette app on a
uvicorn thread): ``GET /erp/invoices`` with ``Authorization: DPoP <local token>`` and its
proof. It checks the token with the Resource AS's introspection over real HTTP and the
proof against the token's ``cnf.jkt`` with :mod:`missionbound.protocol.dpop`.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from missionbound.protocol.dpop import DPoPProofError, verify_dpop_proof
from tests.e2e_support import ServerHandle, free_port, server_environment, stop_server

START_TIMEOUT = 30.0
HTTP_TIMEOUT = 10.0
STATUS_CLIENT = ("ras-status", "status-" + secrets.token_urlsafe(12))
AGENT_AT_ORIGIN = ("agent", "agent-origin-" + secrets.token_urlsafe(12))
AGENT_AT_RAS = ("agent", "agent-ras-" + secrets.token_urlsafe(12))
ERP_RS = ("erp-rs", "erp-rs-" + secrets.token_urlsafe(12))
BOB_PASSWORD = "bob-" + secrets.token_urlsafe(8)
REDIRECT_URI = "http://127.0.0.1:8765/callback"

_ERP_CATALOG = """
[[catalog.resources]]
uri = "{erp}"
title = "Partner ERP"

[[catalog.resources.actions]]
name = "invoices.read"
description = "list and read invoices"
class = "consequential_read"

[[catalog.resources.actions]]
name = "journal-entries.write"
description = "post journal entries"
class = "consequential_write"
constraints = {{ max_value = "amount" }}
"""


def origin_config(ras: str) -> str:
    erp = f"{ras}/erp"
    return textwrap.dedent(f"""\
        expiry_sweep_seconds = 0
        signals_delivery_seconds = 0

        [[resource_authorities]]
        issuer = "{ras}"
        resources = ["{erp}"]

        [tenant]
        name = "origin"

        [[users]]
        username = "alice"
        password = "alice-{secrets.token_urlsafe(8)}"
        display_name = "Alice Example"

        [[users]]
        username = "bob"
        password = "{BOB_PASSWORD}"
        display_name = "Bob Manager"
        roles = ["admin"]
        may_approve_for = ["alice"]

        [[clients]]
        client_id = "{AGENT_AT_ORIGIN[0]}"
        client_secret = "{AGENT_AT_ORIGIN[1]}"
        redirect_uris = ["{REDIRECT_URI}"]
        mission_resources = {{ "{erp}" = ["*"] }}

        [[clients]]
        client_id = "{STATUS_CLIENT[0]}"
        client_secret = "{STATUS_CLIENT[1]}"
        audiences = ["{erp}"]

        [catalog]
        version = "origin-catalog:1"
        """) + _ERP_CATALOG.format(erp=erp)


def ras_config(origin: str) -> str:
    return textwrap.dedent(f"""\
        role = "resource_as"

        [[trusted_origins]]
        issuer = "{origin}"
        status_client_id = "{STATUS_CLIENT[0]}"
        status_client_secret = "{STATUS_CLIENT[1]}"

        [tenant]
        name = "partner"

        [[clients]]
        client_id = "{AGENT_AT_RAS[0]}"
        client_secret = "{AGENT_AT_RAS[1]}"

        [[clients]]
        client_id = "{ERP_RS[0]}"
        client_secret = "{ERP_RS[1]}"
        audiences = ["{{issuer}}/erp"]

        [catalog]
        version = "partner-catalog:1"
        """) + _ERP_CATALOG.format(erp="{issuer}/erp")


@dataclass(frozen=True)
class TwoDomains:
    origin: ServerHandle
    ras: ServerHandle

    @property
    def erp(self) -> str:
        return f"{self.ras.base_url}/erp"


@contextmanager
def two_domains(tmp_path: Path, *, ras_database_url: str | None = None,
                attempts: int = 3) -> Iterator[TwoDomains]:
    """The origin (SQLite) and the Resource AS (``ras_database_url``, default SQLite),
    stopped when the block ends."""
    for attempt in range(attempts):
        origin_port, ras_port = free_port(), free_port()
        if origin_port == ras_port:
            continue
        origin_url, ras_url = f"http://127.0.0.1:{origin_port}", f"http://127.0.0.1:{ras_port}"
        root = Path(tempfile.mkdtemp(prefix=f"domains-{attempt}-", dir=tmp_path))
        origin = _start(root / "origin", origin_port, origin_config(ras_url), None)
        try:
            ras = _start(root / "ras", ras_port, ras_config(origin_url), ras_database_url)
        except _PortTaken:
            stop_server(origin)
            continue
        except BaseException:
            stop_server(origin)
            raise
        try:
            yield TwoDomains(origin, ras)
        finally:
            stop_server(ras)
            stop_server(origin)
        return
    raise RuntimeError(f"could not start the two domains in {attempts} attempts")


class _PortTaken(RuntimeError):
    pass


def _start(folder: Path, port: int, config: str, database_url: str | None) -> ServerHandle:
    folder.mkdir(parents=True)
    config_file = folder / "missionbound.toml"
    config_file.write_text(config)
    data_dir = folder / "data"
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "missionbound", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--issuer", base_url, "--config", str(config_file)]
    if database_url is not None:
        command += ["--database-url", database_url]
    stdout_path, stderr_path = folder / "stdout.log", folder / "stderr.log"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(command, cwd=folder, env=server_environment(data_dir),
                                   stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    server = ServerHandle(base_url=base_url, process=process, data_dir=data_dir,
                          database_url=database_url or f"sqlite:///{data_dir}/missionbound.db",
                          stdout_path=stdout_path, stderr_path=stderr_path)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = server.output()[1]
            if "address already in use" in error.lower():
                raise _PortTaken(error)
            raise RuntimeError(f"missionbound serve exited with {process.returncode}:\n"
                               f"{error[-3000:]}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"{base_url} did not answer /healthz within {START_TIMEOUT} s:\n"
                       f"{server.output()[1][-3000:]}")


# -- a Resource Server of the partner domain -----------------------------------------------


class ErpResource:
    """``GET /erp/invoices`` behind the Resource AS's local tokens (RS-B with introspection:
    the token must be active at the Resource AS, carry ``invoices.read`` for the ERP and be
    presented with a DPoP proof of its ``cnf.jkt``)."""

    def __init__(self, ras: str, erp: str) -> None:
        self.ras, self.erp = ras, erp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._http = httpx.Client(timeout=HTTP_TIMEOUT)
        self._seen_jtis: set[str] = set()
        self._lock = threading.Lock()
        app = Starlette(routes=[Route("/erp/invoices", self.invoices, methods=["GET"])])
        self._server = uvicorn.Server(uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> ErpResource:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the ERP resource server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(START_TIMEOUT)
        self._http.close()

    def invoices(self, request: Request) -> JSONResponse:
        # Sync handler: Starlette runs it in its thread pool (the introspection is blocking).
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        proofs = request.headers.getlist("dpop")
        if scheme.lower() != "dpop" or not token or len(proofs) != 1:
            return _challenge("invalid_token", "send Authorization: DPoP and one DPoP proof")
        seen = self._http.post(f"{self.ras}/introspect", data={"token": token}, auth=ERP_RS)
        claims = seen.json() if seen.status_code == 200 else {"active": False}
        if claims.get("active") is not True:
            return _challenge("invalid_token", "the token is not active at the Resource AS")
        try:
            proof = verify_dpop_proof(proofs[0], method="GET", url=f"{self.url}/erp/invoices",
                                      now=datetime.now(UTC), access_token=token)
        except DPoPProofError as exc:
            return _challenge("invalid_dpop_proof", exc.description)
        with self._lock:
            replayed = proof.jti in self._seen_jtis
            self._seen_jtis.add(proof.jti)
        if replayed or claims.get("cnf", {}).get("jkt") != proof.jkt:
            return _challenge("invalid_dpop_proof", "the proof is replayed or of another key")
        granted = any(entry.get("resource") == self.erp and "invoices.read" in entry["actions"]
                      for entry in claims.get("authorization_details", []))
        if not granted:
            return JSONResponse({"error": "insufficient_scope"}, status_code=403)
        return JSONResponse({"invoices": [{"id": "inv-acme-1", "amount": "120.00"}],
                             "mission": claims["mission"]})


def _challenge(error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=401,
                        headers={"WWW-Authenticate": f'DPoP error="{error}"'})
