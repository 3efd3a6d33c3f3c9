"""The server's own metrics at ``/metrics`` (DESIGN.md "Interfaces"; docs/operations.md
"Metrics"), in the Prometheus text format of :mod:`missionbound.protocol.prometheus`, kept
per process (each replica exposes its own; the scraper sums them):

- ``missionbound_http_requests_total{route,method,status}`` and the histogram
  ``missionbound_http_request_seconds{route,method}``: every HTTP request, measured by the
  request middleware that already times it for its log line (web/middleware.py).
- ``missionbound_tokens_issued_total{grant_type}`` and
  ``missionbound_token_refusals_total{grant_type,error}``: the answers of ``/token``.
- ``missionbound_pdp_decisions_total{decision,reason}``: Mission PDP evaluations, over
  AuthZEN and in process (the demo MCP gateway's co-located PDP) alike.

Every label is bounded whatever callers send: ``route`` is the matched route's path template
(``/consent/{id}``, never the raw path; ``_unmatched`` when no route matched), ``method`` and
``grant_type`` one of a fixed set or ``_other``, ``status`` three digits, ``reason`` one of the
PDP's :class:`~missionbound.runtime.reasons.Reason`, ``error`` an OAuth error code, the first
:data:`MAX_ERROR_LABELS` distinct ones kept.

On a ``serve`` with the demo tenant, the demo MCP gateway's own metrics
(``missionbound_mcp_tool_*``, enforce/mcp/metrics.py) follow at the same URL; they stay at
``/demo/mcp/metrics`` too.

``/metrics`` is unauthenticated, like the gateway's, and kept out of the OpenAPI document:
operators keep it on their own network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, cast

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.routing import Mount
from starlette.types import Scope

from missionbound.issuer.clients import CONFIGURED_GRANT_TYPES, RESOURCE_AS_GRANT_TYPES
from missionbound.issuer.server import OAuthResponse
from missionbound.protocol.prometheus import (
    CONTENT_TYPE,
    OTHER,
    BoundedLabel,
    Counter,
    Histogram,
    render,
)
from missionbound.runtime.reasons import Reason

METRICS_PATH: Final = "/metrics"
HTTP_REQUESTS: Final = "missionbound_http_requests_total"
HTTP_SECONDS: Final = "missionbound_http_request_seconds"
TOKENS_ISSUED: Final = "missionbound_tokens_issued_total"
TOKEN_REFUSALS: Final = "missionbound_token_refusals_total"
PDP_DECISIONS: Final = "missionbound_pdp_decisions_total"

# The route label of a request no route matched (404s, slash redirects): one series, however
# many paths are probed.
UNMATCHED: Final = "_unmatched"
# Routes are the app's own, so finite; the cap is a guard against a mount that puts a raw
# path segment in its prefix.
MAX_ROUTE_LABELS: Final = 256
# OAuth error codes come from this code's error classes; the cap keeps a future bug from
# turning refusals into unbounded label values.
MAX_ERROR_LABELS: Final = 64
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
GRANT_TYPES: Final = frozenset({*CONFIGURED_GRANT_TYPES, *RESOURCE_AS_GRANT_TYPES})
REASONS: Final = frozenset(reason.value for reason in Reason)
# RFC 6749 section 5.2: error codes are %x20-21 / %x23-5B / %x5D-7E; ours are snake_case.
_ERROR_CODE = re.compile(r"[a-z0-9_]{1,64}")


class IssuerMetrics:
    """This process's counters and request latency histogram (``app.state.metrics``),
    recorded by the request middleware, the token endpoint and the Mission PDP. Thread-safe:
    the middleware records on the event loop, the endpoints from the thread pool."""

    def __init__(self) -> None:
        self.requests = Counter(HTTP_REQUESTS, "HTTP requests answered, by route template.",
                                ("route", "method", "status"))
        self.request_seconds = Histogram(
            HTTP_SECONDS, "Time from a request's arrival to the end of its answer.",
            ("route", "method"))
        self.tokens_issued = Counter(TOKENS_ISSUED, "Tokens issued at /token.",
                                     ("grant_type",))
        self.token_refusals = Counter(TOKEN_REFUSALS, "Token requests refused at /token.",
                                      ("grant_type", "error"))
        self.pdp_decisions = Counter(PDP_DECISIONS, "Mission PDP evaluations answered.",
                                     ("decision", "reason"))
        self._route = BoundedLabel(MAX_ROUTE_LABELS, max_length=128)
        self._error = BoundedLabel(MAX_ERROR_LABELS)
        self._endpoints = _EndpointTemplates()

    # -- recording ------------------------------------------------------------------------

    def observe_request(self, scope: Scope, root_path: str, status: int,
                        seconds: float) -> None:
        """One answered request. ``scope`` is read after the app ran (the router has put
        the matched route in it); ``root_path`` is the one it arrived with."""
        route = self._route(route_template(scope, root_path, self._endpoints))
        method = scope["method"]
        if method not in METHODS:
            method = OTHER
        self.requests.inc(route, method, str(status) if 100 <= status <= 599 else OTHER)
        self.request_seconds.observe(seconds, route, method)

    def count_token_answer(self, params: list[tuple[str, str]], answer: OAuthResponse) -> None:
        """The answer of ``/token``: a token issued (200), or refused with its ``error``."""
        grant_type = next((value for name, value in params if name == "grant_type"), OTHER)
        if grant_type not in GRANT_TYPES:
            grant_type = OTHER
        if answer.status == 200:
            self.tokens_issued.inc(grant_type)
            return
        body = answer.body if isinstance(answer.body, dict) else {}
        error = body.get("error")
        label = self._error(error) if isinstance(error, str) and _ERROR_CODE.fullmatch(
            error) else OTHER
        self.token_refusals.inc(grant_type, label)

    def count_pdp_decision(self, answer: Mapping[str, Any]) -> None:
        """One Mission PDP decision, as answered (AuthZEN decision object)."""
        if answer.get("decision") is True:
            self.pdp_decisions.inc("permit", "")
            return
        context = answer.get("context")
        reason = context.get("reason") if isinstance(context, Mapping) else None
        self.pdp_decisions.inc("deny", reason if reason in REASONS else OTHER)

    # -- exposition -----------------------------------------------------------------------

    def render(self) -> str:
        return render((self.requests, self.request_seconds, self.tokens_issued,
                       self.token_refusals, self.pdp_decisions))


class _EndpointTemplates:
    """The path template of each route of the outermost router, by the endpoint it puts in
    the scope: FastAPI records the matched route (``scope["route"]``) for its own API routes
    only, not for a plain Starlette ``Route`` (``/docs``, the MCP endpoint ``/demo/mcp``) or
    a ``Mount`` (``/static``, a mounted app that matched nothing of its own). Built on first
    use, rebuilt when the router's route list changed length."""

    def __init__(self) -> None:
        self._built_for: tuple[int, int] = (0, -1)  # (id of the router, its route count)
        self._templates: dict[int, str] = {}
        self._keep: list[Any] = []  # the endpoints, so their ids stay theirs

    def lookup(self, router: Any, endpoint: Any) -> str | None:
        routes = getattr(router, "routes", None)
        if not isinstance(routes, list):
            return None
        if self._built_for != (id(router), len(routes)):
            templates: dict[int, str] = {}
            keep: list[Any] = []
            for route in routes:
                target = route.app if isinstance(route, Mount) else getattr(
                    route, "endpoint", None)
                template = getattr(route, "path_format", None)
                if target is not None and isinstance(template, str):
                    templates.setdefault(id(target), template)
                    keep.append(target)
            self._templates, self._keep = templates, keep
            self._built_for = (id(router), len(routes))
        return self._templates.get(id(endpoint))


def route_template(scope: Scope, root_path: str, endpoints: _EndpointTemplates) -> str:
    """The path template of the route that answered (``/consent/{id}``), with the prefix of
    the mounts it sits under (``/demo/erp/invoices/{invoice_id}``); a mount's own template
    (``/static/{path}``) when it answered without a route of its own; :data:`UNMATCHED` when
    no route matched."""
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    if isinstance(template, str):
        # A mount moved its prefix from the path into root_path before its app routed.
        prefix = str(scope.get("root_path", ""))[len(root_path):]
        if isinstance(route, Mount):
            prefix = prefix.removesuffix(route.path)
        return prefix + template
    endpoint = scope.get("endpoint")
    if endpoint is not None:
        found = endpoints.lookup(scope.get("router"), endpoint)
        if found is not None:
            return found
    return UNMATCHED


def count_token_answer(request: Request, params: list[tuple[str, str]],
                       answer: OAuthResponse) -> None:
    """For the ``/token`` routes (web/oauth.py, web/resource_as.py): count ``answer``."""
    cast(IssuerMetrics, request.app.state.metrics).count_token_answer(params, answer)


router = APIRouter(tags=["operations"])


@router.get(METRICS_PATH, include_in_schema=False)
async def metrics(request: Request) -> Response:
    """The exposition: this server's metrics, then the demo MCP gateway's when it runs here
    (its families are its own names, so the two texts concatenate into one exposition)."""
    text = cast(IssuerMetrics, request.app.state.metrics).render()
    demo_mcp = getattr(request.app.state, "demo_mcp", None)
    if demo_mcp is not None:
        text += demo_mcp.state.metrics.render()
    return Response(text, media_type=CONTENT_TYPE)


__all__ = ["HTTP_REQUESTS", "HTTP_SECONDS", "METRICS_PATH", "PDP_DECISIONS", "TOKENS_ISSUED",
           "TOKEN_REFUSALS", "UNMATCHED", "IssuerMetrics", "count_token_answer",
           "route_template", "router"]
