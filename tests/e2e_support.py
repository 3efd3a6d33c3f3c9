"""End-to-end test support: a real ``missionbound serve`` process, and HTML form parsing.

:func:`running_server` starts ``python -m missionbound serve`` on a free 127.0.0.1 port with
its own data folder (SQLite there unless a database URL is given), waits until ``/healthz``
answers 200, and stops it on exit (SIGTERM, then SIGKILL). Every wait is bounded, and a server
that does not come up fails with what it wrote on stderr::

    with running_server(tmp_path) as server:
        httpx.get(f"{server.base_url}/.well-known/oauth-authorization-server")

:func:`parse_form` reads a server-rendered page's form (action, method, hidden inputs) so a
script can drive ``/login`` and the consent page with plain HTTP (DESIGN.md "Interfaces").
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

ENV_PREFIX = "MISSIONBOUND_"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
# A free port can be taken between our probe and the server's bind: try a few ports.
PORT_ATTEMPTS = 3


class ServerStartError(RuntimeError):
    """``missionbound serve`` exited or did not answer ``/healthz`` in time."""


@dataclass(frozen=True)
class ServerHandle:
    base_url: str  # also the issuer, unless running_server was given another one
    process: subprocess.Popen[bytes]
    data_dir: Path
    database_url: str
    stdout_path: Path
    stderr_path: Path

    def output(self) -> tuple[str, str]:
        """What the server has written so far (stdout: banner; stderr: JSON log lines)."""
        return (
            self.stdout_path.read_text(errors="replace"),
            self.stderr_path.read_text(errors="replace"),
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server_environment(data_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without its ``MISSIONBOUND_*`` variables (a developer's
    settings must not leak into a test server), plus the data folder and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    env[f"{ENV_PREFIX}DATA_DIR"] = str(data_dir)
    env.update(extra or {})
    return env


@contextmanager
def running_server(
    tmp_path: Path,
    *,
    database_url: str | None = None,
    env: Mapping[str, str] | None = None,
    issuer: str | None = None,
    data_dir: Path | None = None,
    args: tuple[str, ...] = (),
    start_timeout: float = START_TIMEOUT,
) -> Iterator[ServerHandle]:
    """A running ``missionbound serve`` on 127.0.0.1, stopped when the block ends.

    ``database_url`` defaults to SQLite in the data folder (``data_dir``, by default a new
    folder under ``tmp_path``); ``env`` adds or overrides environment variables; ``issuer``
    defaults to the base URL; ``args`` are extra ``serve`` flags (e.g. ``--config FILE``).
    Several servers may share one ``tmp_path`` (each gets its own folder for logs).
    """
    root = Path(tempfile.mkdtemp(prefix="serve-", dir=tmp_path))
    data_dir = data_dir if data_dir is not None else root / "data"
    environment = server_environment(data_dir, env)
    last_error: ServerStartError | None = None
    for attempt in range(PORT_ATTEMPTS):
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        command = [
            sys.executable, "-m", "missionbound", "serve",
            "--host", "127.0.0.1", "--port", str(port), "--issuer", issuer or base_url,
        ]
        if database_url is not None:
            command += ["--database-url", database_url]
        command += list(args)
        stdout_path = root / f"stdout-{attempt}.log"
        stderr_path = root / f"stderr-{attempt}.log"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            process = subprocess.Popen(
                command, cwd=root, env=environment, stdout=out, stderr=err,
                stdin=subprocess.DEVNULL,
            )
        server = ServerHandle(
            base_url=base_url,
            process=process,
            data_dir=data_dir,
            database_url=database_url or f"sqlite:///{data_dir / 'missionbound.db'}",
            stdout_path=stdout_path,
            stderr_path=stderr_path,
        )
        try:
            _wait_until_healthy(server, start_timeout)
        except ServerStartError as exc:
            stop_server(server)
            last_error = exc
            if "address already in use" in server.output()[1].lower():
                continue  # someone took the port after our probe: try another
            raise
        except BaseException:
            stop_server(server)
            raise
        try:
            yield server
        finally:
            stop_server(server)
        return
    assert last_error is not None
    raise last_error


def _wait_until_healthy(server: ServerHandle, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        code = server.process.poll()
        if code is not None:
            raise ServerStartError(
                f"missionbound serve exited with {code} before answering /healthz; "
                f"stderr:\n{_tail(server.output()[1])}"
            )
        try:
            response = httpx.get(f"{server.base_url}/healthz", timeout=2.0)
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:300]}"
        time.sleep(0.1)
    raise ServerStartError(
        f"missionbound serve at {server.base_url} did not answer /healthz with 200 within "
        f"{timeout:g} s (last: {last}); stderr:\n{_tail(server.output()[1])}"
    )


def stop_server(server: ServerHandle) -> int:
    """SIGTERM (uvicorn shuts down gracefully), then SIGKILL if it lingers. Idempotent."""
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait(timeout=STOP_TIMEOUT)
    return process.returncode


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServerHandle]:
    """A demo-tenant server on SQLite in ``tmp_path``, for one test."""
    with running_server(tmp_path) as server:
        yield server


# -- HTML forms ------------------------------------------------------------------------------


@dataclass
class Form:
    action: str = ""
    method: str = "GET"
    hidden: dict[str, str] = field(default_factory=dict)
    # (name, value) of every named submit button, e.g. ("decision", "approve").
    buttons: list[tuple[str, str]] = field(default_factory=list)
    # Names of the other named fields (text, password, ...), in document order.
    fields: list[str] = field(default_factory=list)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # attribute values arrive unescaped
        self.forms: list[Form] = []
        self._current: Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._current = Form(
                action=attributes.get("action", ""),
                method=(attributes.get("method") or "get").upper(),
            )
            self.forms.append(self._current)
            return
        if self._current is None or "name" not in attributes:
            return
        name, value = attributes["name"], attributes.get("value", "")
        if tag == "input":
            kind = attributes.get("type", "text").lower()
            if kind == "hidden":
                self._current.hidden[name] = value
            elif kind == "submit":
                self._current.buttons.append((name, value))
            else:
                self._current.fields.append(name)
        elif tag == "button" and attributes.get("type", "submit").lower() == "submit":
            self._current.buttons.append((name, value))
        elif tag in ("select", "textarea"):
            self._current.fields.append(name)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def parse_forms(html: str) -> list[Form]:
    """Every ``<form>`` of a page, in document order."""
    parser = _FormParser()
    parser.feed(html)
    parser.close()
    return parser.forms


def parse_form(html: str) -> tuple[str, str, dict[str, str]]:
    """``(action, method, hidden inputs)`` of the page's only form.

    Raises ``ValueError`` when the page has no form or more than one (the login and consent
    pages have exactly one: DESIGN.md "Interfaces").
    """
    forms = parse_forms(html)
    if len(forms) != 1:
        raise ValueError(f"expected exactly one <form>, found {len(forms)}")
    form = forms[0]
    return form.action, form.method, dict(form.hidden)
