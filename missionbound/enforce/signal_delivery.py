"""Delivery of Security Event Tokens to a :class:`~missionbound.enforce.signals.SignalReceiver`:
the RFC 8935 push endpoint (an ASGI application) and an RFC 8936 poll client.

Both hand each SET to ``receiver.receive`` and translate its outcome to the wire: taken
(applied, stale, duplicate or ignored) is a 202 or an acknowledgement; refused
(:class:`~missionbound.protocol.secevent.SetRejected`) is a 400 or a ``setErrs`` entry with
the RFC 8935 error; the issuer's keys unavailable is neither, so the transmitter delivers the
SET again later (fail closed without losing the event).
"""

from __future__ import annotations

import hmac
import math
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from missionbound.protocol.jwks import HttpClientOwner, JwksUnavailable, KeyRefreshThrottled
from missionbound.protocol.secevent import (
    INVALID_REQUEST,
    MAX_JTI_LENGTH,
    MAX_SET_LENGTH,
    SET_MEDIA_TYPE,
    SetRejected,
)

if TYPE_CHECKING:
    from missionbound.enforce.signals import ReceivedSet, SignalReceiver

log = structlog.get_logger("missionbound.enforce.signals")

# A poll request carries at most this many acknowledgements plus errors (our transmitter's
# limit, missionbound.issuer.signal_delivery.MAX_POLL_ACKS).
MAX_ACKS_PER_POLL = 1000
# Retry-After of a push answered 503 because the issuer's keys could not be had.
KEYS_UNAVAILABLE_RETRY_SECONDS = 10


# -- push (RFC 8935) -----------------------------------------------------------------------


class PushEndpoint:
    """The RFC 8935 section 2 push endpoint of a :class:`SignalReceiver` (ASGI). It answers
    whatever path it is given, so a ``Route`` (not a ``Mount``, which would redirect the bare
    path to a trailing slash) puts it at one path of a larger app.

    - ``POST`` only (405 otherwise); ``Content-Type: application/secevent+jwt``.
    - With ``authorization``, the request's one ``Authorization`` header must equal it
      exactly (compared in constant time); otherwise 401.
    - 202 when the SET was taken (applied, stale, duplicate or ignored alike).
    - 400 ``{"err", "description"}`` when it is refused (section 2.3): the transmitter
      records that and does not send it again.
    - 503 with ``Retry-After`` when the issuer's keys cannot be had just now: no verdict,
      so the transmitter sends it again later (fail closed without losing the event).
    """

    def __init__(self, receiver: SignalReceiver, *, authorization: str | None = None) -> None:
        if authorization is not None and not authorization.strip():
            raise ValueError("authorization must be a non-empty header value")
        self.receiver = receiver
        self._authorization = authorization.encode("latin-1") if authorization else None
        scheme = authorization.split(" ", 1)[0] if authorization else ""
        self._challenge = scheme or "Bearer"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1003})
            return
        response = await self._answer(Request(scope, receive))
        await response(scope, receive, send)

    async def _answer(self, request: Request) -> Response:
        if request.method != "POST":
            return _error(405, "invalid_request", "SETs are delivered with POST (RFC 8935)",
                          headers={"Allow": "POST"})
        if self._authorization is not None:
            given = request.headers.getlist("authorization")
            if len(given) != 1 or not hmac.compare_digest(given[0].encode("latin-1"),
                                                          self._authorization):
                return _error(401, "authentication_failed",
                              "the Authorization header is missing or not the one configured",
                              headers={"WWW-Authenticate": self._challenge})
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != SET_MEDIA_TYPE:
            return _error(400, INVALID_REQUEST,
                          f"the request Content-Type must be {SET_MEDIA_TYPE} (RFC 8935 section 2)")
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_SET_LENGTH + 2:
                    return _error(400, INVALID_REQUEST,
                                  f"the SET is longer than {MAX_SET_LENGTH} octets")
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            token = bytes(body).decode("ascii").strip()
        except UnicodeDecodeError:
            return _error(400, INVALID_REQUEST, "a SET is ASCII text (RFC 7515 section 7.1)")
        try:
            await run_in_threadpool(self.receiver.receive, token)
        except SetRejected as exc:
            log.info("set_refused", err=exc.err, description=exc.description)
            return JSONResponse(exc.as_json(), status_code=400)
        except JwksUnavailable as exc:
            log.warning("set_keys_unavailable", detail=str(exc))
            wait = (math.ceil(exc.retry_after) if isinstance(exc, KeyRefreshThrottled)
                    else KEYS_UNAVAILABLE_RETRY_SECONDS)
            return Response(status_code=503, headers={"Retry-After": str(max(wait, 1))})
        return Response(status_code=202)


def _error(status: int, err: str, description: str,
           headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"err": err, "description": description}, status_code=status,
                        headers=dict(headers or {}))


async def _lifespan(receive: Receive, send: Send) -> None:
    """Served alone (``uvicorn.run(endpoint)``), there is nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# -- poll (RFC 8936) -----------------------------------------------------------------------


class PollFailed(Exception):
    """The poll request failed: no answer, an HTTP error (``status``, with the RFC 8936
    ``err`` when the transmitter sent one), or an answer that is not a poll response.
    Acknowledgements not yet delivered are kept for the next request."""

    def __init__(self, description: str, *, status: int | None = None,
                 err: str | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.err = err


class SignalPoller(HttpClientOwner):
    """An RFC 8936 poll client feeding a :class:`SignalReceiver`; one request at a time.

    :meth:`poll_once` sends ``{"maxEvents", "returnImmediately": true, "ack", "setErrs"}``,
    hands each SET of the answer to ``receiver.receive`` and returns what was taken. SETs
    taken (applied, stale, duplicate or ignored) are acknowledged, and refused ones reported
    in ``setErrs`` with their RFC 8935 error, in the *next* request (RFC 8936 section 2.4),
    or by :meth:`flush_acks`. A SET that could not be verified because the issuer's keys
    were unavailable is neither: the transmitter delivers it again. :attr:`more_available`
    is the last answer's ``moreAvailable``.

    ``auth`` authenticates the poll request as the stream's client (``httpx.BasicAuth`` for
    ``client_secret_basic``). ``client`` is used as given; without one the poller makes its
    own with ``timeout_seconds`` and :meth:`close` closes it.
    """

    def __init__(
        self,
        receiver: SignalReceiver,
        *,
        poll_url: str,
        auth: httpx.Auth | None = None,
        client: httpx.Client | None = None,
        timeout_seconds: float = 30.0,
    ) -> None:
        parts = urlsplit(poll_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"poll_url must be an absolute http or https URL, not {poll_url!r}")
        self.receiver = receiver
        self.poll_url = poll_url
        self.auth = auth
        self._hold_client(client, timeout_seconds)
        self._lock = threading.Lock()
        self._acks: list[str] = []
        self._errs: dict[str, dict[str, str]] = {}
        self.more_available = False

    @property
    def pending_acks(self) -> tuple[str, ...]:
        """The jti values to acknowledge with the next request."""
        with self._lock:
            return tuple(self._acks)

    @property
    def pending_errors(self) -> dict[str, dict[str, str]]:
        """The ``setErrs`` to send with the next request."""
        with self._lock:
            return dict(self._errs)

    def poll_once(self, *, max_events: int = 100) -> list[ReceivedSet]:
        """One poll request; the SETs of its answer that were taken, in answer order."""
        if not 1 <= max_events <= MAX_ACKS_PER_POLL:
            raise ValueError(f"max_events must be 1 to {MAX_ACKS_PER_POLL}")
        with self._lock:
            answer = self._request(max_events)
            sets = answer.get("sets", {})
            more = answer.get("moreAvailable", False)
            if not isinstance(sets, dict) or not isinstance(more, bool):
                raise PollFailed("the poll answer must hold a sets object and a moreAvailable "
                                 "boolean (RFC 8936 section 2.4)")
            self.more_available = more
            return [taken for jti, token in sets.items()
                    if (taken := self._take(jti, token)) is not None]

    def flush_acks(self) -> None:
        """Send the pending acknowledgements and errors now, asking for no SETs
        (``maxEvents: 0``, RFC 8936 section 2.4.1)."""
        with self._lock:
            while self._acks or self._errs:
                self._request(0)

    def _request(self, max_events: int) -> dict[str, Any]:
        """POST one poll request carrying (up to the limit) what is pending; forget what it
        carried once the transmitter answered 200."""
        acks = self._acks[:MAX_ACKS_PER_POLL]
        errs = dict(list(self._errs.items())[: MAX_ACKS_PER_POLL - len(acks)])
        body = {"maxEvents": max_events, "returnImmediately": True, "ack": acks,
                "setErrs": errs}
        try:
            response = self._client.post(
                self.poll_url, json=body, headers={"Accept": "application/json"},
                auth=self.auth if self.auth is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            raise PollFailed(f"no answer from {self.poll_url}: {type(exc).__name__}") from exc
        if response.status_code != 200:
            err, description = _rfc8936_error(response)
            raise PollFailed(f"{self.poll_url} answered HTTP {response.status_code}"
                             + (f": {err}: {description}" if err else ""),
                             status=response.status_code, err=err)
        try:
            answer = response.json()
        except ValueError as exc:
            raise PollFailed("the poll answer is not JSON") from exc
        if not isinstance(answer, dict):
            raise PollFailed("the poll answer is not a JSON object")
        del self._acks[: len(acks)]
        for jti in errs:
            self._errs.pop(jti, None)
        return answer

    def _take(self, jti: Any, token: Any) -> ReceivedSet | None:
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH:
            log.warning("poll_set_without_usable_jti")
            return None
        if not isinstance(token, str):
            self._errs[jti] = {"err": INVALID_REQUEST, "description": "the SET is not a string"}
            return None
        try:
            taken = self.receiver.receive(token)
        except SetRejected as exc:
            log.info("set_refused", jti=jti, err=exc.err, description=exc.description)
            self._errs[jti] = exc.as_json()
            return None
        except JwksUnavailable as exc:
            log.warning("set_keys_unavailable", jti=jti, detail=str(exc))
            return None  # not acknowledged: delivered again
        if taken.jti != jti:
            log.warning("poll_jti_mismatch", key=jti, jti=taken.jti)
        self._acks.append(jti)
        return taken


def _rfc8936_error(response: httpx.Response) -> tuple[str | None, str | None]:
    try:
        data = response.json()
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    err, description = data.get("err", data.get("error")), data.get(
        "description", data.get("error_description"))
    return (err if isinstance(err, str) else None,
            description if isinstance(description, str) else None)
