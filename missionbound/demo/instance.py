"""An embedded missionbound instance for ``missionbound demo``: the application ``serve``
builds (AS, PDP, the demo ERP API at ``/demo/erp``, the demo payments MCP server behind the
gateway at ``/demo/mcp``), with the demo tenant, served by uvicorn in a background thread on
127.0.0.1.

The socket is bound here, before the application is built, for two reasons: the issuer URL
names the port, so a free port must be known first (``port=None`` binds port 0); and a port
someone else holds is found at once, as :class:`PortInUse`, instead of as a log line from a
server thread. uvicorn then serves on that very socket (no window in which another process
could take the port between a probe and the bind).

Use it as a context manager::

    with DemoInstance.start() as instance:
        httpx.get(f"{instance.issuer}/healthz")
"""

from __future__ import annotations

import errno
import io
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TextIO, cast

import uvicorn
from sqlalchemy import Engine

from missionbound.config import ConfigError, Settings, load_settings
from missionbound.issuer.keys import ensure_signing_key
from missionbound.store.engine import create_engine_for
from missionbound.store.migrate import upgrade_engine
from missionbound.store.transactions import Store
from missionbound.tenant import load_tenant
from missionbound.web.app import create_app
from missionbound.web.logs import configure_logging

HOST = "127.0.0.1"
START_TIMEOUT = 20.0  # seconds for uvicorn to start serving (migrations ran before)
STOP_TIMEOUT = 10.0  # seconds for uvicorn to finish its requests and lifespan shutdown
SIGNALS_TIMEOUT = 5.0  # seconds for the demo ERP's Shared Signals stream to be verified
DATABASE_FILE = "missionbound.db"
SERVER_LOG = "demo-server.log"  # the server's JSON log, in the data folder


class DemoInstanceError(RuntimeError):
    """The embedded instance could not be started as asked."""


class PortInUse(DemoInstanceError):
    """The requested port is held by another process (the CLI's exit status 2)."""


@dataclass
class DemoInstance:
    """A running embedded instance; :meth:`stop` (or leaving the ``with`` block) ends it and,
    for a temporary data folder, deletes it."""

    issuer: str
    port: int
    data_dir: Path
    database_url: str
    settings: Settings
    engine: Engine
    _server: uvicorn.Server
    _thread: threading.Thread
    _temporary: bool
    _log: _LogSink | None
    _stopped: bool = field(default=False)

    @property
    def console_url(self) -> str:
        return f"{self.issuer}/console/"

    @classmethod
    def start(cls, *, port: int | None = None, data_dir: Path | None = None,
              log_level: str = "warning", configure_logs: bool = True) -> DemoInstance:
        """Bind ``port`` (a free one when None), migrate a fresh SQLite database in
        ``data_dir`` (a new temporary folder when None), build the app and serve it.

        The server's log goes to ``<data_dir>/demo-server.log`` at ``log_level``, not to the
        terminal, so the demo's timeline stays readable. Logging is process-wide: with
        ``configure_logs=False`` it is left as it is (a test process shares it).

        Raises :class:`PortInUse` for a port that is taken, :class:`DemoInstanceError` when
        the settings leave the demo tenant (a tenant file or configuration in the
        environment) or the server does not start in time.
        """
        sock = _bind(port)
        bound_port: int = sock.getsockname()[1]
        temporary = data_dir is None
        folder = Path(tempfile.mkdtemp(prefix="missionbound-demo-")) if data_dir is None \
            else data_dir.expanduser().resolve()
        log: _LogSink | None = None
        engine: Engine | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            issuer = f"http://{HOST}:{bound_port}"
            database_url = f"sqlite:///{folder / DATABASE_FILE}"
            try:
                settings = load_settings(host=HOST, port=bound_port, issuer=issuer,
                                         data_dir=folder, database_url=database_url,
                                         log_level=log_level)
                tenant = load_tenant(settings)
            except ConfigError as exc:
                raise DemoInstanceError(str(exc)) from None
            if not tenant.is_demo:
                # The story uses the demo tenant's users, clients, secrets and resources.
                raise DemoInstanceError(
                    "the demo needs the demo tenant, but the settings name another one "
                    "(unset MISSIONBOUND_TENANT_FILE / MISSIONBOUND_CONFIG_FILE)")
            if configure_logs:
                log = _LogSink(folder / SERVER_LOG)
                configure_logging(settings.log_level, stream=cast(TextIO, log))
            engine = create_engine_for(database_url)
            upgrade_engine(engine)
            ensure_signing_key(Store(engine), datetime.now(UTC))
            app = create_app(settings, tenant=tenant, engine=engine)
            server = uvicorn.Server(uvicorn.Config(
                app, log_config=None, access_log=False, lifespan="on",
                # Requests still in flight at stop get this long (uvicorn's default: forever).
                timeout_graceful_shutdown=int(STOP_TIMEOUT)))
            thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                      name="missionbound-demo-server", daemon=True)
            instance = cls(issuer=issuer, port=bound_port, data_dir=folder,
                           database_url=database_url, settings=settings, engine=engine,
                           _server=server, _thread=thread, _temporary=temporary, _log=log)
            thread.start()
            instance._wait_until_started()
            instance._wait_for_erp_signals(app.state.demo_erp)
            return instance
        except BaseException:
            sock.close()
            if engine is not None:
                engine.dispose()
            if log is not None:
                log.close()
            if temporary:
                shutil.rmtree(folder, ignore_errors=True)
            raise

    def _wait_until_started(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive():
                self.stop()
                raise DemoInstanceError(
                    f"the server stopped while starting; see {self.data_dir / SERVER_LOG}")
            if time.monotonic() > deadline:
                self.stop()
                raise DemoInstanceError(f"the server did not start within {START_TIMEOUT} s")
            time.sleep(0.02)

    def _wait_for_erp_signals(self, erp: Any) -> None:
        """Wait (bounded) until the demo ERP's Shared Signals stream is verified: from then
        on a revocation reaches it at once, and stopping does not have to wait for the
        verification the lifespan task is still waiting for (up to 10 s, in a thread the
        event loop cannot cancel). Past the bound the demo goes on: the ERP then refuses a
        revoked Mission through its PDP and the staleness bound."""
        signals = getattr(getattr(erp, "state", None), "signals", None)
        receiver = getattr(signals, "receiver", None)
        if receiver is None:
            return
        deadline = time.monotonic() + SIGNALS_TIMEOUT
        while not receiver.verification_states and time.monotonic() < deadline:
            time.sleep(0.02)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server thread ends (or ``timeout``): True when it ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        """Stop serving (bounded), release the database, delete a temporary data folder.
        Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._server.should_exit = True
        self._thread.join(STOP_TIMEOUT)
        if self._thread.is_alive():  # a request that will not end: stop waiting for it
            self._server.force_exit = True
            self._thread.join(STOP_TIMEOUT)
        self.engine.dispose()
        if self._log is not None:
            self._log.close()
        if self._temporary:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def _bind(port: int | None) -> socket.socket:
    """A listening-ready TCP socket on 127.0.0.1:``port`` (0 = any free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Like uvicorn's own bind: a port in TIME_WAIT after a previous run is reusable, one
    # another process listens on is not.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port or 0))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(f"port {port} on {HOST} is already in use; choose another with "
                            "--port, or omit it for a free one") from None
        raise DemoInstanceError(f"cannot listen on {HOST}:{port}: {exc.strerror}") from None
    return sock


class _LogSink(io.TextIOBase):
    """The server log file, as the stream :func:`configure_logging` writes to. structlog
    keeps its stream for the life of the process, so after :meth:`close` (the instance
    stopped, its folder perhaps deleted) records are dropped instead of failing on a closed
    file."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._file: io.TextIOWrapper | None = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            if self._file is not None:
                self._file.write(text)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
