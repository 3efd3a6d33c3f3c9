"""Errors on the wire: every error is JSON ``{"error", "error_description"}`` (RFC 6749
section 5.2 shape) with the status that fits.

* Request validation failures are 400 ``invalid_request``, never FastAPI's 422: OAuth clients
  understand the former (RFC 6749 section 5.2, RFC 9126 section 2.3).
* :class:`~missionbound.mission.errors.MissionError` carries its own code and status, so
  handlers can raise the core's typed errors and stay thin.
* Unexpected exceptions become a JSON 500 in :mod:`missionbound.web.middleware`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from missionbound.mission.errors import MissionError

# Codes for plain HTTP errors raised by routing and the framework (no OAuth code applies).
_HTTP_ERROR_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "access_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "temporarily_unavailable",
}


def error_response(
    status: int,
    error: str,
    description: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    # Error responses are specific to one request; RFC 6749 section 5.1 asks for no-store on
    # token responses and the same reasoning holds for their errors.
    all_headers = {"Cache-Control": "no-store", **(headers or {})}
    return JSONResponse(
        {"error": error, "error_description": description, **extra},
        status_code=status,
        headers=all_headers,
    )


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """One readable sentence from pydantic's error list, e.g. ``query.limit: Input should
    be a valid integer``. Input values are left out: they may be secrets."""
    parts = []
    for error in errors:
        if error.get("type") == "json_invalid":
            parts.append("the request body is not valid JSON")
            continue
        location = ".".join(str(part) for part in error.get("loc", ()))
        message = str(error.get("msg", "invalid value"))
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts) or "the request is malformed"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(400, "invalid_request", describe_validation_errors(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if isinstance(exc.detail, Mapping) and "error" in exc.detail:
        # A handler that already speaks the wire format: pass it through.
        body = dict(exc.detail)
        return error_response(
            exc.status_code,
            str(body.pop("error")),
            str(body.pop("error_description", "")),
            headers,
            **body,
        )
    code = _HTTP_ERROR_CODES.get(exc.status_code, "server_error" if exc.status_code >= 500
                                 else "invalid_request")  # fmt: skip
    description = str(exc.detail)
    if exc.status_code == 404:
        description = f"no such resource: {request.url.path}"
    elif exc.status_code == 405:
        description = f"{request.method} is not allowed on {request.url.path}"
    return error_response(exc.status_code, code, description, headers)


async def _mission_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MissionError)
    # to_wire() may carry members beyond error and error_description (PROFILE.md section 8:
    # mission_state and mission_error on a refused derivation).
    wire = exc.to_wire()
    extra: dict[str, Any] = {
        k: v for k, v in wire.items() if k not in ("error", "error_description")
    }
    return error_response(exc.status, exc.error, exc.description, None, **extra)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(MissionError, _mission_error)
