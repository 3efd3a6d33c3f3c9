"""The Mission-aware Resource Server check (PROFILE.md section 2, tiers RS-B, RS-C and RS-D).

:meth:`MissionGuard.authorize` decides one request for one action of this resource and
returns the verified :class:`MissionContext`, or raises an
:class:`~missionbound.enforce.rs.errors.RSRefusal`. In order:

1. **Credentials** (RFC 6750 section 2.1, RFC 9449 section 7.1): one ``Authorization``
   header, scheme ``Bearer`` or ``DPoP``.
2. **The token** (RFC 9068 section 4, :func:`~missionbound.protocol.access_tokens
   .verify_access_token`): a trusted ``iss``, ``typ: at+jwt``, an asymmetric signature by a
   key of the issuer's JWKS (cached; a new ``kid`` refetches once, so rotation just works,
   though no sooner than the cache's refresh limit after the last fetch: until then 503 with
   the ``Retry-After`` the limit implies),
   ``aud`` = this resource, ``exp``/``iat``/``nbf``, and the ``mission`` claim: a token
   without it is refused (downgrade by omission).
3. **Sender constraint** (RFC 9449 sections 4.3 and 7): a DPoP-bound token (``cnf.jkt``)
   needs the ``DPoP`` scheme and a proof for this method and URL, carrying ``ath``, signed
   by exactly that key, seen once (replay cache), with this server's nonce when it issues
   them. Steps 1 to 3: :mod:`missionbound.enforce.rs.credentials`.
4. **Authority** (PROFILE.md sections 4, 6 and 9): an entry of ``authorization_details`` for
   this resource; for a delegated token, only entries whose ``delegation`` allows the
   immediate actor read from ``act`` (never ``client_id``) at the chain's depth; one that
   grants the action; every constraint of that entry evaluated against the request
   (:mod:`missionbound.enforce.rs.constraints`), unknown or unevaluable keys refused
   (:mod:`missionbound.enforce.rs.authority`).
5. **State** (RS-C, and RS-D given a state source): the Mission is ``active`` as the
   issuer last said, no older than the published staleness bound, and not known to be
   otherwise from Shared Signals (:mod:`missionbound.enforce.rs.state`).
6. **The PDP** (RS-D, consequential routes): an AuthZEN evaluation of the action with the
   parameters the route will act on; a permit's conditions checked before the route runs
   (:mod:`missionbound.enforce.rs.pdp_gate` over :mod:`missionbound.enforce.rs.pdp_client`).
   The outcome is reported back to the PDP (:meth:`MissionGuard.report_outcome`):
   ``suppressed`` here when the permit is refused, ``completed``/``failed`` by the surface
   once the route answered.

The checks that need no I/O run on the event loop. The issuer's keys and the Mission's state
are fetched in a worker thread when the cache does not hold them, so a slow AS never blocks
other requests. Every decision is logged with ``mission.id``, ``jti`` and its reason.

This module holds the orchestration: the guard's configuration, the order of the checks, the
Mission state check, the refusal on the wire and the RFC 9728 metadata. What a route is handed
is :class:`~missionbound.enforce.rs.context.MissionContext` (re-exported here with
:class:`~missionbound.enforce.rs.credentials.TrustedIssuer`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpx
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse

from missionbound.enforce.rs.authority import AuthorityCheck
from missionbound.enforce.rs.context import MissionContext
from missionbound.enforce.rs.credentials import CredentialCheck, TrustedIssuer
from missionbound.enforce.rs.errors import (
    InvalidTokenRefusal,
    RSRefusal,
    Scheme,
    UnavailableRefusal,
    challenges,
)
from missionbound.enforce.rs.pdp_client import PdpClient, route_parameters
from missionbound.enforce.rs.pdp_gate import PdpGate
from missionbound.enforce.rs.replay import MemoryReplayCache, ReplayCache
from missionbound.enforce.rs.request import Extractor
from missionbound.enforce.rs.state import (
    MissionStateView,
    ObservedState,
    StateUnavailable,
    effective,
)
from missionbound.mission.authority import ENTRY_TYPE
from missionbound.protocol.access_tokens import AccessToken
from missionbound.protocol.dpop import DEFAULT_MAX_AGE_SECONDS
from missionbound.protocol.dpop import SUPPORTED_ALGS as DPOP_ALGS

log = structlog.get_logger("missionbound.enforce.rs")

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_WORKER_THREADS = 16
RFC9728_WELL_KNOWN = "/.well-known/oauth-protected-resource"


class Tier(StrEnum):
    """PROFILE.md section 2. RS-B: stateless, the token's Mission authority enforced.
    RS-C: RS-B plus the Mission's state within a published staleness bound. RS-D: RS-B
    (RS-C with a state source) plus the PDP's decision for every consequential action."""

    RS_B = "RS-B"
    RS_C = "RS-C"
    RS_D = "RS-D"


@dataclass
class _Attempt:
    """What is known of a request so far, for the log line of its decision."""

    action: str | None
    scheme: Scheme | None = None
    token: AccessToken | None = None


class MissionGuard:
    """The checks of one protected resource. Build one per resource and share it across
    requests (it is thread-safe and holds the key, replay and state caches).

    ``resource`` is this resource's identifier (RFC 8707), the ``aud`` it accepts and the
    ``resource`` of the ``authorization_details`` entries it enforces. ``labels`` are its
    data-classification labels (PROFILE.md section 6). ``dpop_required`` refuses tokens
    that are not DPoP-bound. ``dpop_nonce_secret`` makes proofs carry this server's nonce
    (RFC 9449 section 9; every replica needs the same secret). ``public_base_url`` is the
    scheme and host clients address, for DPoP ``htu``: by default the resource identifier's
    own, never the request's ``Host`` header (a proof made for another server that happens
    to accept the same token would pass otherwise). ``state`` (required at
    RS-C) is where the Mission's state comes from; ``mission_origin`` the Authorization
    Server that holds the Missions (default: the one trusted issuer).
    """

    def __init__(
        self,
        *,
        resource: str,
        issuers: Sequence[TrustedIssuer],
        tier: Tier = Tier.RS_B,
        state: MissionStateView | None = None,
        pdp: PdpClient | None = None,
        mission_origin: str | None = None,
        labels: Sequence[str] = (),
        dpop_required: bool = False,
        dpop_nonce_secret: bytes | None = None,
        dpop_max_age_seconds: int = DEFAULT_MAX_AGE_SECONDS,
        replay_cache: ReplayCache | None = None,
        http_client: httpx.Client | None = None,
        leeway_seconds: float = 30.0,
        public_base_url: str | None = None,
        resource_name: str | None = None,
        resource_documentation: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        worker_threads: int = DEFAULT_WORKER_THREADS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        parts = urlsplit(resource)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment \
                or parts.query:
            # A query would have to follow the RFC 9728 well-known suffix (section 3.1): no
            # resource of ours needs one, so it is refused rather than half supported.
            raise ValueError(f"resource must be an absolute http(s) URI without query or "
                             f"fragment, not {resource!r}")
        if not issuers:
            raise ValueError("at least one trusted issuer is required")
        if tier is Tier.RS_C and state is None:
            raise ValueError("RS-C needs a state source (a MissionStateView)")
        if tier is Tier.RS_B and state is not None:
            # A state source that is never asked would look like RS-C and not be it.
            raise ValueError("a state source is read at RS-C only: pass tier=Tier.RS_C")
        if (tier is Tier.RS_D) != (pdp is not None):
            raise ValueError("RS-D needs a PDP (a PdpClient), and a PDP is asked at RS-D only")
        if dpop_nonce_secret is not None and len(dpop_nonce_secret) < 16:
            raise ValueError("dpop_nonce_secret must be at least 16 bytes")
        self.resource = resource
        self.tier = tier
        self.state = state
        self.pdp = pdp
        self.labels = tuple(labels)
        self.dpop_required = dpop_required
        self.dpop_max_age_seconds = dpop_max_age_seconds
        self.leeway_seconds = leeway_seconds
        self.max_body_bytes = max_body_bytes
        self.resource_name = resource_name
        self.resource_documentation = resource_documentation
        # The guard's own worker threads for key and state fetches: a burst of cache misses
        # waits here, never on the threads the application (or an AS in the same process,
        # which these fetches may be calling) needs to answer.
        self._threads = anyio.CapacityLimiter(worker_threads)
        self._clock = clock
        self._credential_check = CredentialCheck(
            resource=resource, issuers=issuers, http_client=http_client,
            dpop_required=dpop_required, dpop_nonce_secret=dpop_nonce_secret,
            dpop_max_age_seconds=dpop_max_age_seconds,
            replay_cache=replay_cache if replay_cache is not None else MemoryReplayCache(),
            leeway_seconds=leeway_seconds, public_base_url=public_base_url or resource,
            threads=self._threads)
        self.mission_origin = mission_origin or self._credential_check.issuers[0]
        self._authority_check = AuthorityCheck(resource=resource, max_body_bytes=max_body_bytes)
        self._pdp_gate = (None if pdp is None else
                          PdpGate(pdp=pdp, resource=resource, threads=self._threads, clock=clock))
        self.accepted_schemes = ((Scheme.DPOP,) if dpop_required
                                 else (Scheme.BEARER, Scheme.DPOP))
        self.metadata_url = protected_resource_metadata_url(resource)
        # action -> constraint keys bound by the routes declared for it (for the metadata).
        self._declared: dict[str, set[str]] = {}

    @property
    def issuers(self) -> tuple[str, ...]:
        return self._credential_check.issuers

    def close(self) -> None:
        """Close the HTTP clients this guard created (never one it was given)."""
        self._credential_check.close()

    def declare(self, action: str, bind: Mapping[str, Extractor],
                labels: Sequence[str] | None = None) -> None:
        """Record that a route performs ``action`` with these bindings and, when given,
        data-classification labels of its own (metadata only)."""
        keys = self._declared.setdefault(action, set())
        keys.update(bind)
        if labels:
            keys.add("data_classification")

    # -- the decision ------------------------------------------------------------------

    async def authorize(
        self,
        request: Request,
        action: str | None,
        *,
        bind: Mapping[str, Extractor] | None = None,
        labels: Sequence[str] | None = None,
        path_params: Mapping[str, str] | None = None,
        consequential: bool = True,
        parameters: Extractor | None = None,
    ) -> MissionContext:
        """The verified context for ``request`` performing ``action`` at this resource;
        raises :class:`RSRefusal`. ``action`` None (a route no action is declared for)
        authenticates, then refuses. ``labels`` overrides the resource's labels for this
        route; ``path_params`` defaults to the request's. At RS-D a ``consequential``
        route is decided by the PDP over ``parameters`` (default: the JSON body, path and
        query parameters, :func:`~missionbound.enforce.rs.pdp_client.route_parameters`)."""
        attempt = _Attempt(action)
        asked = (parameters or route_parameters()) if self.pdp is not None and consequential \
            else None
        try:
            context = await self._authorize(request, attempt, bind or {},
                                            self.labels if labels is None else tuple(labels),
                                            path_params, asked)
        except RSRefusal as refusal:
            if refusal.scheme is None and refusal.status != 503:
                refusal.scheme = attempt.scheme
            self._log(request, attempt, refusal)
            raise
        self._log(request, attempt, None, context)
        return context

    async def authenticate(self, request: Request) -> AccessToken:
        """Steps 1 to 3 (and 5, given a state source) without an action: the verified,
        sender-constrained Mission token of ``request``; raises :class:`RSRefusal`. For a
        surface whose action is only known past the HTTP layer (an MCP gateway reads the
        tool from the JSON-RPC body), which then decides the action itself."""
        attempt = _Attempt(None)
        try:
            now = self._clock()
            credentials = self._credential_check
            attempt.scheme, raw = credentials.credentials(request)
            token = attempt.token = await credentials.verify_token(raw, now)
            credentials.check_sender(request, attempt.scheme, raw, token, now)
            if self.state is not None:
                await self._check_state(token, raw, now)
        except RSRefusal as refusal:
            if refusal.scheme is None and refusal.status != 503:
                refusal.scheme = attempt.scheme
            self._log(request, attempt, refusal)
            raise
        return token

    async def _authorize(self, request: Request, attempt: _Attempt,
                         bind: Mapping[str, Extractor], labels: tuple[str, ...],
                         path_params: Mapping[str, str] | None,
                         parameters: Extractor | None) -> MissionContext:
        now = self._clock()
        credentials = self._credential_check
        attempt.scheme, raw = credentials.credentials(request)
        token = attempt.token = await credentials.verify_token(raw, now)
        credentials.check_sender(request, attempt.scheme, raw, token, now)
        entry, facts = await self._authority_check.check(request, token, attempt.action, bind,
                                                         labels, path_params, parameters)
        state = await self._check_state(token, raw, now) if self.state is not None else None
        assert attempt.action is not None  # check() refused a route without an action
        decision = None
        if parameters is not None:
            assert self._pdp_gate is not None  # parameters are asked for at RS-D only
            decision = await self._pdp_gate.ask(request, token, attempt.action, facts,
                                                parameters)
        return MissionContext(token=token, action=attempt.action, entry=entry, state=state,
                              facts=facts, decision=decision)

    async def _check_state(self, token: AccessToken, raw: str, now: datetime) -> ObservedState:
        view = self.state
        assert view is not None
        mission = token.mission
        if mission.origin != self.mission_origin:
            raise InvalidTokenRefusal("mission_origin_unknown", f"this resource learns Mission "
                                      f"state from {self.mission_origin} only, not from "
                                      f"{mission.origin[:200]!r}")
        observed = view.cached(mission.id)
        if observed is None:
            try:
                observed = await anyio.to_thread.run_sync(
                    partial(view.observe, mission.id, access_token=raw), limiter=self._threads)
            except StateUnavailable as exc:
                log.warning("rs_mission_state_unavailable", mission=mission.id, detail=str(exc))
                raise UnavailableRefusal("mission_state_unavailable", "the Mission's state "
                                         "cannot be had just now; try again shortly") from None
        state = effective(observed, now)
        if state != "active":
            shown = state or "unknown"
            raise InvalidTokenRefusal("mission_inactive", f"the Mission is {shown}",
                                      mission_state=shown)
        return observed

    # -- execution reports (RS-D) --------------------------------------------------------

    async def report_outcome(self, context: MissionContext, status: int | None) -> None:
        """Report how the route ran under ``context``'s permit: ``completed`` for a
        2xx/3xx answer, ``failed`` for a 4xx/5xx or no answer (``status`` None: the route
        raised). Nothing for a context without a permit. Never raises: a report the PDP
        did not take is logged with the Mission and ``evaluation_id``."""
        if self._pdp_gate is not None:
            await self._pdp_gate.report_outcome(context, status)

    # -- the wire ----------------------------------------------------------------------

    def refusal_response(self, refusal: RSRefusal) -> JSONResponse:
        """The HTTP answer for ``refusal``: its status, JSON body and headers."""
        response = JSONResponse(refusal.body(), status_code=refusal.status,
                                headers={"Cache-Control": "no-store"})
        for value in challenges(refusal, accepted=self.accepted_schemes, dpop_algs=DPOP_ALGS,
                                resource_metadata=self.metadata_url):
            response.headers.append("WWW-Authenticate", value)
        for name, value in refusal.extra_headers():
            response.headers.append(name, value)
        return response

    def metadata(self) -> dict[str, Any]:
        """This resource's RFC 9728 Protected Resource Metadata (section 2), with the Mission
        members of the issuance digest (section 11.3) and the tier it enforces."""
        bound = set().union(*self._declared.values()) if self._declared else set()
        if self.labels:
            bound.add("data_classification")
        document: dict[str, Any] = {
            "resource": self.resource,
            "authorization_servers": list(self.issuers),
            "bearer_methods_supported": ["header"],
            "dpop_signing_alg_values_supported": list(DPOP_ALGS),
            "dpop_bound_access_tokens_required": self.dpop_required,
            "authorization_details_types_supported": [ENTRY_TYPE],
            "mission_bound_authorization_required": True,
            "mission_constraints_supported": sorted(bound),
            "mission_enforcement_tier": self.tier.value,
        }
        if self.state is not None:
            document["mission_state_staleness_seconds"] = self.state.staleness_seconds
        if self.resource_name:
            document["resource_name"] = self.resource_name
        if self.resource_documentation:
            document["resource_documentation"] = self.resource_documentation
        return document

    def _log(self, request: Request, attempt: _Attempt, refusal: RSRefusal | None,
             context: MissionContext | None = None) -> None:
        token = attempt.token
        log.info(
            "rs_decision",
            resource=self.resource,
            method=request.method,
            path=request.url.path,
            action=attempt.action,
            decision="refuse" if refusal is not None else "allow",
            reason=refusal.reason if refusal is not None else None,
            status=refusal.status if refusal is not None else None,
            mission=token.mission.id if token is not None else None,
            jti=token.jti if token is not None else None,
            client=token.client_id if token is not None else None,
            actor=token.actors[0].sub if token is not None and token.actors else None,
            mission_state=(context.state.state if context is not None and context.state
                           else refusal.mission_state if refusal is not None else None),
        )



def protected_resource_metadata_url(resource: str) -> str:
    """RFC 9728 section 3.1: the well-known suffix goes between the host and the path of the
    resource identifier (``https://x/api`` -> ``https://x/.well-known/oauth-protected-
    resource/api``)."""
    parts = urlsplit(resource)
    # Section 3.1: only a path of "/" alone is dropped; any other path follows as it is.
    path = parts.path if parts.path != "/" else ""
    return f"{parts.scheme}://{parts.netloc}{RFC9728_WELL_KNOWN}{path}"


def metadata_path(resource: str) -> str:
    """The path part of :func:`protected_resource_metadata_url`, for routing."""
    return urlsplit(protected_resource_metadata_url(resource)).path


__all__ = [
    "MissionContext", "MissionGuard", "Tier", "TrustedIssuer", "metadata_path",
    "protected_resource_metadata_url",
]

