"""The kit as FastAPI dependencies.

``Annotated[MissionContext, Depends(require_mission(guard, "invoices.read"))]`` in a route's
signature runs the guard before the route body; a refused request never reaches it. Call
:func:`install` once so refusals are answered in the OAuth shape (a flat JSON body and one
``WWW-Authenticate`` line per challenge) and, for an application at the host root, the RFC
9728 metadata is served. Without :func:`install`, FastAPI's own handler still answers with the
right status and challenges, the body nested under ``detail``.

At RS-D :func:`install` is also what reports the outcome of a route that ran under a PDP
permit (``completed`` for a 2xx/3xx answer, ``failed`` for a 4xx/5xx or an exception): it
adds :class:`~missionbound.enforce.rs.starlette.ExecutionReporting`, which sees the
response's status, and ``require_mission`` hands it the permit. Without :func:`install` an
RS-D route still runs, unreported (logged ``rs_execution_unreported``): its reservation at
the PDP then stays charged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

import structlog
from fastapi import FastAPI, HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from missionbound.enforce.rs.context import MissionContext
from missionbound.enforce.rs.errors import RSRefusal
from missionbound.enforce.rs.guard import MissionGuard, metadata_path
from missionbound.enforce.rs.request import Extractor
from missionbound.enforce.rs.starlette import REPORTS_KEY, ExecutionReporting

log = structlog.get_logger("missionbound.enforce.rs")


class MissionRefused(HTTPException):
    """An :class:`RSRefusal` on its way out of a dependency."""

    def __init__(self, guard: MissionGuard, refusal: RSRefusal) -> None:
        answer = guard.refusal_response(refusal)
        # A dict holds one value per header: challenges are joined (RFC 9110 section 11.6.1
        # allows several in one field). install() sends them one per line instead.
        headers: dict[str, str] = {}
        for name, value in answer.headers.items():
            if name in ("content-length", "content-type"):
                continue  # FastAPI's handler writes its own body
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        super().__init__(status_code=refusal.status, detail=refusal.body(), headers=headers)
        self.guard = guard
        self.refusal = refusal


def require_mission(
    guard: MissionGuard,
    action: str,
    *,
    bind: Mapping[str, Extractor] | None = None,
    labels: Sequence[str] | None = None,
    consequential: bool = True,
    parameters: Extractor | None = None,
) -> Callable[[Request], Awaitable[MissionContext]]:
    """A dependency that lets the request through only when its Mission grants ``action`` at
    the guard's resource with every constraint met against ``bind``; at RS-D, for a
    ``consequential`` route, when the PDP permits it over ``parameters`` too (the
    :class:`MissionContext`'s ``evaluation_id`` names that permit)."""
    bindings = dict(bind or {})
    guard.declare(action, bindings, labels)

    async def mission_dependency(request: Request) -> MissionContext:
        try:
            context = await guard.authorize(request, action, bind=bindings, labels=labels,
                                            consequential=consequential,
                                            parameters=parameters)
        except RSRefusal as refusal:
            raise MissionRefused(guard, refusal) from None
        if context.decision is not None:
            pending = request.scope.get(REPORTS_KEY)
            if isinstance(pending, list):
                pending.append((guard, context))
            else:
                log.error("rs_execution_unreported", resource=guard.resource,
                          mission=context.mission.id, evaluation_id=context.evaluation_id,
                          detail="install(app, guard) was not called: RS-D outcomes are "
                                 "reported by the middleware it adds")
        return context

    return mission_dependency


def install(app: FastAPI, guard: MissionGuard, *, serve_metadata: bool = True) -> None:
    """Answer refusals in the OAuth shape; at RS-D, report the outcome of every route that
    ran under a PDP permit (call it before the app starts); with ``serve_metadata``, serve
    the RFC 9728 document at its well-known path (right only when ``app`` is at the host
    root: a mounted application's host serves it instead, see
    :meth:`MissionGuard.metadata`)."""

    async def refused(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, MissionRefused)
        return exc.guard.refusal_response(exc.refusal)

    app.add_exception_handler(MissionRefused, refused)
    if guard.pdp is not None and not any(
            getattr(m, "cls", None) is ExecutionReporting for m in app.user_middleware):
        # RS-D: the outcome of every permitted route goes back to the PDP.
        app.add_middleware(ExecutionReporting)
    if serve_metadata:
        add_metadata_route(app, guard)


def add_metadata_route(app: FastAPI, guard: MissionGuard) -> None:
    """Serve ``guard``'s RFC 9728 document at its well-known path on ``app``, which must be
    the application at the host root (section 3.1): :func:`install` does it for such an
    app; the host of a mounted app calls it itself."""

    async def protected_resource_metadata() -> JSONResponse:
        return JSONResponse(guard.metadata())

    app.add_api_route(metadata_path(guard.resource), protected_resource_metadata,
                      methods=["GET"], include_in_schema=False)
