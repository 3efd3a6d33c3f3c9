"""The kit as ASGI middleware for any Starlette application (FastAPI included).

:class:`MissionMiddleware` sits in front of the whole application: every request must match
a declared :class:`Protect` route (method and path template give its Mission action and the
request parameters its constraints bind to) or a ``public`` path; anything else is
authenticated and then refused (fail closed). It also answers the resource's RFC 9728
metadata when the application is mounted at the host root. The route handler finds the
verified :class:`~missionbound.enforce.rs.context.MissionContext` with
:func:`mission_context`; a refused request never reaches it.

At RS-D a route that ran under a PDP permit is reported to the PDP
(:meth:`MissionGuard.report_outcome`) when the application starts its response, before the
response goes out: ``completed`` for a 2xx/3xx status, ``failed`` for a 4xx/5xx, or when
the application raised or never answered (:func:`run_reporting`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from missionbound.enforce.rs.context import MissionContext
from missionbound.enforce.rs.errors import RSRefusal
from missionbound.enforce.rs.guard import MissionGuard, metadata_path
from missionbound.enforce.rs.request import Extractor

STATE_KEY = "mission"
# request.scope key: the permits the request's route runs under, reported once it answered
# (a list of (guard, context); FastAPI's require_mission appends to it, install() reads it).
REPORTS_KEY = "missionbound.rs.executions"
log = structlog.get_logger("missionbound.enforce.rs")


@dataclass(frozen=True)
class Protect:
    """``method`` + ``path`` (a Starlette path template such as ``/invoices/{invoice_id}``,
    relative to where the application is mounted) perform ``action``; ``bind`` says which
    request parameter each constraint key of the Mission is checked against; ``labels``
    overrides the resource's data-classification labels for this route. At RS-D the PDP
    decides a ``consequential`` route (every route unless marked ``consequential=False``)
    over ``parameters``, the object the route acts on (default: the JSON body, path and
    query parameters; docs/resource-servers.md "RS-D")."""

    method: str
    path: str
    action: str
    bind: Mapping[str, Extractor] = field(default_factory=dict)
    labels: Sequence[str] | None = None
    consequential: bool = True
    parameters: Extractor | None = None


@dataclass(frozen=True)
class _Compiled:
    route: Protect
    pattern: re.Pattern[str]
    convertors: dict[str, Any]


class MissionMiddleware:
    def __init__(self, app: ASGIApp, *, guard: MissionGuard, routes: Sequence[Protect],
                 public: Sequence[str] = ()) -> None:
        self.app = app
        self.guard = guard
        self.public = tuple(path.rstrip("/") or "/" for path in public)
        self._routes = []
        for route in routes:
            pattern, _, convertors = compile_path(route.path)
            self._routes.append(_Compiled(route, pattern, convertors))
            guard.declare(route.action, route.bind, route.labels)
        self._metadata_path = metadata_path(guard.resource)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            # Lifespan passes; a WebSocket carries no DPoP proof per message: not served.
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        if scope["path"] == self._metadata_path and scope["method"] in ("GET", "HEAD"):
            await JSONResponse(self.guard.metadata())(scope, receive, send)
            return
        if self._is_public(path):
            await self.app(scope, receive, send)
            return
        route, params = self._match(scope["method"], path)
        request = Request(scope, receive)
        try:
            context = await self.guard.authorize(
                request, route.action if route else None,
                bind=route.bind if route else None,
                labels=route.labels if route else None, path_params=params,
                consequential=route.consequential if route else True,
                parameters=route.parameters if route else None)
        except RSRefusal as refusal:
            await self.guard.refusal_response(refusal)(scope, receive, send)
            return
        scope.setdefault("state", {})[STATE_KEY] = context
        if route is not None and (any(e.needs_json_body for e in route.bind.values())
                                  or context.decision is not None):
            receive = _replay(await request.body(), receive)  # the guard read it
        if context.decision is None:
            await self.app(scope, receive, send)
            return
        await run_reporting(self.app, scope, receive, send, [(self.guard, context)])

    def _is_public(self, path: str) -> bool:
        # A public path opens itself and what lies under it, except "/": under the root
        # lies the whole API, so "/" opens the root page alone (fail closed).
        return any(path == prefix or (prefix != "/" and path.startswith(prefix + "/"))
                   for prefix in self.public)

    def _match(self, method: str, path: str) -> tuple[Protect | None, dict[str, str]]:
        """The one declared route for the request. Starlette dispatches by the
        application's own route order, which this table cannot see: when two lines that ask
        for different things match (``/invoices/{id}`` and ``/invoices/export``), either
        could be the route that runs, so the request counts as undeclared (fail closed)."""
        found: list[tuple[Protect, dict[str, str]]] = []
        for compiled in self._routes:
            # HTTP methods are case-sensitive (RFC 9110 section 9.1) and servers send them
            # upper case; a table written "get" means GET.
            if compiled.route.method.upper() != method:
                continue
            match = compiled.pattern.match(path)
            if match is not None:
                found.append((compiled.route, dict(match.groupdict())))
        if not found:
            return None, {}
        first = found[0][0]
        if any(_demands(route) != _demands(first) for route, _ in found[1:]):
            log.warning("rs_route_ambiguous", method=method, path=path,
                        actions=sorted({route.action for route, _ in found}))
            return None, {}
        return found[0]


def _demands(route: Protect) -> tuple[Any, ...]:
    labels = None if route.labels is None else tuple(route.labels)
    return route.action, dict(route.bind), labels, route.consequential, route.parameters


def mission_context(request: Request) -> MissionContext:
    """The context :class:`MissionMiddleware` verified for ``request``. Raises LookupError
    when the request did not pass through the middleware (a public path, say)."""
    context = request.scope.get("state", {}).get(STATE_KEY)
    if not isinstance(context, MissionContext):
        raise LookupError("this request was not checked by MissionMiddleware")
    return context


def _route_path(scope: Scope) -> str:
    """The path relative to where the application is mounted (Starlette keeps the full path
    in ``path`` and the mount point in ``root_path``)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return path or "/"


Pending = list[tuple[MissionGuard, MissionContext]]


async def run_reporting(app: ASGIApp, scope: Scope, receive: Receive, send: Send,
                        pending: Pending) -> None:
    """Run ``app`` and report each permit in ``pending`` (it may grow while the app runs)
    once: at the response start, with its status, before the start goes out; or as
    ``failed`` when the app raises or returns without a response."""
    started = False

    async def settle(status: int | None) -> None:
        while pending:
            guard, context = pending.pop(0)
            await guard.report_outcome(context, status)

    async def reporting_send(message: Message) -> None:
        nonlocal started
        if message["type"] == "http.response.start" and not started:
            started = True
            await settle(int(message["status"]))
        await send(message)

    try:
        await app(scope, receive, reporting_send)
    except Exception:
        if not started:
            await settle(None)
        raise
    if not started:
        await settle(None)


class ExecutionReporting:
    """ASGI middleware that reports the permits routes ran under (FastAPI's
    :func:`~missionbound.enforce.rs.fastapi.install` adds it): it gives each request a
    list at ``scope[REPORTS_KEY]`` that ``require_mission`` fills."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        pending: Pending = []
        scope[REPORTS_KEY] = pending
        await run_reporting(self.app, scope, receive, send, pending)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the application the body the guard already read."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
