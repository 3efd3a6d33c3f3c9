"""HTTP routes of the Shared Signals transmitter (OpenID Shared Signals Framework 1.0; RFC
8935 push and RFC 8936 poll; PROFILE.md section 10, "Signals").

Thin, like web/token_management.py: authenticate the receiver (before any transaction and
before the body is read, so an unauthenticated caller always gets 401), parse the JSON body
strictly, call one service function of :mod:`missionbound.issuer.signals` in one
transaction (or the transmitter, for poll), send what it returned. Every answer is
``no-store``; errors are JSON ``{"error", "error_description"}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar, cast

import structlog
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from missionbound.issuer import signals
from missionbound.issuer.clients import OAuthClient
from missionbound.issuer.server import MissionIssuer
from missionbound.issuer.signal_dispatcher import SignalDispatcher
from missionbound.issuer.signal_poll import long_poll, parse_poll_request
from missionbound.mission.canonical import parse_strict
from missionbound.mission.errors import InvalidRequest, wire_text
from missionbound.web.oauth import get_issuer

router = APIRouter(tags=["signals"])
log = structlog.get_logger("missionbound.signals")

JSON_TYPE = "application/json"
MAX_JSON_BODY = 65_536
NO_STORE = {"Cache-Control": "no-store"}
# RFC 7235 section 4.1: the schemes a receiver may authenticate with.
CHALLENGE = 'Basic realm="missionbound", Bearer realm="missionbound"'

Issuer = Annotated[MissionIssuer, Depends(get_issuer)]
T = TypeVar("T")


def get_dispatcher(request: Request) -> SignalDispatcher:
    return cast(SignalDispatcher, request.app.state.signal_dispatcher)


Dispatcher = Annotated[SignalDispatcher, Depends(get_dispatcher)]


def authenticated(issuer: MissionIssuer, request: Request, path: str) -> OAuthClient:
    """The receiver, or a 401 with ``WWW-Authenticate``."""
    try:
        return signals.authenticate_receiver(
            issuer, request.headers, method=request.method, path=path
        )
    except signals.ReceiverUnauthenticated as error:
        raise HTTPException(
            status_code=401,
            detail={"error": error.error, "error_description": wire_text(error.description)},
            headers={"WWW-Authenticate": CHALLENGE},
        ) from None


def json_document(request: Request, raw: bytes, *, allow_empty: bool = False) -> Any:
    """The request's JSON body, strictly parsed (no duplicate members, no floats)."""
    if allow_empty and not raw.strip():
        return None
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != JSON_TYPE:
        raise InvalidRequest(f"the request body must be {JSON_TYPE}")
    return parse_strict(raw, max_size=MAX_JSON_BODY, what="the request body")


async def receiver_request(
    request: Request, issuer: MissionIssuer, path: str, *, allow_empty: bool = False
) -> tuple[OAuthClient, Any]:
    """The authenticated receiver (off the event loop: a ``private_key_jwt`` assertion spends
    its ``jti`` in a transaction), then its JSON body (:func:`json_document`)."""
    client = await run_in_threadpool(authenticated, issuer, request, path)
    return client, json_document(request, await request.body(), allow_empty=allow_empty)


async def in_transaction(issuer: MissionIssuer, work: Callable[[Session], T]) -> T:
    """``work`` in one write transaction, off the event loop."""

    def run() -> T:
        with issuer.store.begin() as session:
            return work(session)

    return await run_in_threadpool(run)


def answer(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=NO_STORE)


def no_content() -> Response:
    return Response(status_code=204, headers=NO_STORE)


@router.get(signals.WELL_KNOWN_PATH, summary="SSF Transmitter Configuration Metadata")
def ssf_configuration(issuer: Issuer) -> JSONResponse:
    return JSONResponse(signals.transmitter_configuration(issuer.issuer))


# -- streams -------------------------------------------------------------------------------


def may_push(issuer: MissionIssuer, client_id: str) -> bool:
    """Only a client the operator configured may have the AS push to its URL (decision E12)."""
    return client_id in issuer.tenant.clients



@router.post(signals.CONFIGURATION_PATH, summary="Create a stream (SSF 1.0 8.1.1.1)",
             status_code=201)
async def create_stream(request: Request, issuer: Issuer) -> JSONResponse:
    client, body = await receiver_request(request, issuer, signals.CONFIGURATION_PATH)
    config = await in_transaction(issuer, lambda session: signals.create_stream(
        session, client_id=client.client_id, body=body, issuer=issuer.issuer,
        now=issuer.clock(), may_push=may_push(issuer, client.client_id),
    ))
    log.info("ssf_stream_created", client_id=client.client_id, stream_id=config["stream_id"],
             method=config["delivery"]["method"])
    return answer(config, 201)


@router.get(signals.CONFIGURATION_PATH, summary="Read one stream or list them (8.1.1.2)")
def read_streams(request: Request, issuer: Issuer, stream_id: str | None = None
                 ) -> JSONResponse:
    client = authenticated(issuer, request, signals.CONFIGURATION_PATH)
    with issuer.store.read() as session, session.begin():
        return answer(signals.read_streams(
            session, client_id=client.client_id, stream_id=stream_id, issuer=issuer.issuer))


async def _change(request: Request, issuer: Issuer, *, replace: bool) -> JSONResponse:
    client, body = await receiver_request(request, issuer, signals.CONFIGURATION_PATH)
    return answer(await in_transaction(issuer, lambda session: signals.change_stream(
        session, client_id=client.client_id, body=body, issuer=issuer.issuer,
        now=issuer.clock(), replace=replace, may_push=may_push(issuer, client.client_id),
    )))


@router.patch(signals.CONFIGURATION_PATH, summary="Update a stream (8.1.1.3)")
async def update_stream(request: Request, issuer: Issuer) -> JSONResponse:
    return await _change(request, issuer, replace=False)


@router.put(signals.CONFIGURATION_PATH, summary="Replace a stream (8.1.1.4)")
async def replace_stream(request: Request, issuer: Issuer) -> JSONResponse:
    return await _change(request, issuer, replace=True)


@router.delete(signals.CONFIGURATION_PATH, summary="Delete a stream (8.1.1.5)",
               status_code=204)
def delete_stream(request: Request, issuer: Issuer, stream_id: str | None = None) -> Response:
    client = authenticated(issuer, request, signals.CONFIGURATION_PATH)
    with issuer.store.begin() as session:
        signals.delete_stream(session, client_id=client.client_id, stream_id=stream_id)
    log.info("ssf_stream_deleted", client_id=client.client_id, stream_id=stream_id)
    return no_content()


# -- status and verification ---------------------------------------------------------------


@router.get(signals.STATUS_PATH, summary="Read a stream's status (8.1.2.1)")
def read_status(request: Request, issuer: Issuer, stream_id: str | None = None
                ) -> JSONResponse:
    client = authenticated(issuer, request, signals.STATUS_PATH)
    with issuer.store.read() as session, session.begin():
        return answer(signals.read_status(session, client_id=client.client_id,
                                          stream_id=stream_id))


@router.post(signals.STATUS_PATH, summary="Enable, pause or disable a stream (8.1.2.2)")
async def change_status(request: Request, issuer: Issuer, dispatcher: Dispatcher
                        ) -> JSONResponse:
    client, body = await receiver_request(request, issuer, signals.STATUS_PATH)
    status = await in_transaction(issuer, lambda session: signals.change_status(
        session, client_id=client.client_id, body=body, now=issuer.clock()))
    log.info("ssf_stream_status", client_id=client.client_id, stream_id=status["stream_id"],
             status=status["status"])
    dispatcher.wake()  # an enabled stream may have held SETs waiting
    return answer(status)


@router.post(signals.VERIFICATION_PATH, summary="Ask for a verification event (8.1.4.2)",
             status_code=204)
async def verify(request: Request, issuer: Issuer, dispatcher: Dispatcher) -> Response:
    client, body = await receiver_request(request, issuer, signals.VERIFICATION_PATH)
    try:
        await in_transaction(issuer, lambda session: signals.request_verification(
            session, client_id=client.client_id, body=body, issuer=issuer.issuer,
            now=issuer.clock(),
        ))
    except signals.VerificationTooSoon as error:
        raise HTTPException(
            status_code=error.status,
            detail={"error": error.error, "error_description": wire_text(error.description)},
            headers={"Retry-After": str(error.retry_after)},
        ) from None
    dispatcher.wake()
    return no_content()


# -- poll ----------------------------------------------------------------------------------


@router.post(signals.POLL_PATH, summary="Poll a stream's SETs (RFC 8936)")
async def poll(request: Request, issuer: Issuer, dispatcher: Dispatcher,
               stream_id: str | None = None) -> JSONResponse:
    client, body = await receiver_request(request, issuer, signals.POLL_PATH, allow_empty=True)
    poll_request = parse_poll_request(body)
    if stream_id is None:
        raise InvalidRequest("the stream_id query parameter is required")
    polled = await long_poll(dispatcher.transmitter, client_id=client.client_id,
                             stream_id=stream_id, request=poll_request, run=run_in_threadpool)
    return answer(polled.as_json())
