"""A one-shot listener on a loopback redirect URI, for agents that run in a terminal
(RFC 8252 section 7.3: native apps receive the authorization response on a loopback port).

The agent prints the consent URL, the approver's browser comes back to the redirect URI,
and :func:`wait_for_callback` returns the full URL it was sent to (the code, ``state`` and
``iss`` are read by :func:`missionbound.client.oauth.read_callback`).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from missionbound.client.errors import MissionClientError

PAGE: Final = b"The agent has its answer; you can close this tab.\n"


def wait_for_callback(redirect_uri: str, *, timeout: float = 300.0, state: str | None = None,
                      stop: threading.Event | None = None) -> str:
    """Serve ``redirect_uri`` (an ``http://127.0.0.1:<port>/<path>`` or ``localhost`` URI)
    until the authorization response arrives at its path, and return that request's full
    URL. With ``state``, only a request carrying that ``state`` is the answer: any page the
    browser visits can send it to the loopback port, so others get 400 and the wait goes on.
    Other paths (a browser's ``/favicon.ico``) get 404.

    Raises :class:`MissionClientError` when the port is taken, when nothing arrives in
    ``timeout`` seconds, or when ``stop`` is set (the caller gave up: checked every second
    at most, so a cancelled wait ends promptly)."""
    parts = urlsplit(redirect_uri)
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1") \
            or parts.port is None:
        raise MissionClientError(f"a local listener needs a loopback http redirect URI with "
                                 f"a port, not {redirect_uri!r}")
    received: list[str] = []

    class Callback(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            target = urlsplit(self.path)
            if target.path != parts.path:
                self.send_error(404)
                return
            if state is not None and parse_qs(target.query).get("state") != [state]:
                self.send_error(400, "not the answer this agent is waiting for")
                return
            received.append(f"{parts.scheme}://{parts.netloc}{self.path}")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.end_headers()
            self.wfile.write(PAGE)

        def log_message(self, *args: Any) -> None:  # the terminal is the agent's
            return None

    try:
        server = HTTPServer((parts.hostname, parts.port), Callback)
    except OSError as exc:
        raise MissionClientError(f"cannot listen on {parts.netloc} for the answer: "
                                 f"{exc.strerror}") from None
    deadline = time.monotonic() + timeout
    try:
        while not received:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MissionClientError(f"no answer arrived at {redirect_uri} within "
                                         f"{timeout:g} s")
            if stop is not None and stop.is_set():
                raise MissionClientError(f"stopped waiting for the answer at {redirect_uri}")
            server.timeout = min(1.0, remaining)
            server.handle_request()
    finally:
        server.server_close()
    return received[0]
