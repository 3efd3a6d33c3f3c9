"""Pure ASGI middleware (not ``BaseHTTPMiddleware``, which adds a task per request that the
issuance and PDP budgets cannot afford).

* :class:`RequestLogMiddleware` (outermost): one log line per request, its count and duration
  in the metrics (web/metrics.py), and a JSON 500 for any exception nothing else handled -
  never a stack trace on the wire.
* :class:`BodySizeLimitMiddleware`: refuses bodies over ``max_request_body_size`` with a JSON
  413. (FastAPI's own ``max_body_size`` answers in text/plain, which breaks the rule that
  every error is JSON.)
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from missionbound.web.metrics import IssuerMetrics

log = structlog.get_logger("missionbound.web")

REQUEST_ID_HEADER = b"x-request-id"
# A caller's X-Request-ID is kept (AuthZEN 1.0 section 12.1.3: the PDP echoes it) when it is
# 1-128 visible ASCII characters; otherwise the server makes one.
_CALLER_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")


def request_id_of(scope: Scope) -> str:
    """The caller's ``X-Request-ID`` when it is sane, else a new one."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            if _CALLER_REQUEST_ID.fullmatch(value):
                return bytes(value).decode("ascii")
            break
    return secrets.token_hex(8)


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp, metrics: IssuerMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        root_path = scope.get("root_path", "")  # a mount extends it: web/metrics.py
        started = time.perf_counter()
        response: dict[str, Any] = {"status": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                response["started"] = True
                headers = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                log.exception("unhandled_error", method=scope["method"], path=scope["path"])
                if not response["started"]:
                    await send_json_error(
                        send_with_id,
                        500,
                        "server_error",
                        f"the server could not complete the request (request id {request_id})",
                    )
                # If the response had started there is nothing left to say: the server
                # closes the connection when the app returns without finishing it.
            finally:
                seconds = time.perf_counter() - started
                if self.metrics is not None:
                    self.metrics.observe_request(scope, root_path, response["status"], seconds)
                # The path only: query strings can carry codes and tokens.
                log.info(
                    "request",
                    method=scope["method"],
                    path=scope["path"],
                    status=response["status"],
                    duration_ms=round(seconds * 1000, 3),
                )


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_size: int) -> None:
        self.app = app
        self.max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_size
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            # Refused before a byte of the body is read.
            await send_json_error(send, 413, "request_too_large", _too_large(limit))
            return
        received = 0

        async def receive_with_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException, so FastAPI's body reader passes it on unchanged to
                    # the exception handlers (which answer 413 in JSON).
                    raise HTTPException(413, _too_large(limit))
            return message

        await self.app(scope, receive_with_limit, send)


def _too_large(limit: int) -> str:
    return f"the request body is larger than {limit} octets"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def send_json_error(send: Send, status: int, error: str, description: str) -> None:
    body = json.dumps({"error": error, "error_description": description}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
