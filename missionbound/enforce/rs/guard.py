"""The Mission-aware Resource Server check (PROFILE.md section 2, tiers RS-B and RS-C).

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
   them.
4. **Authority** (PROFILE.md sections 4, 6 and 9): an entry of ``authorization_details`` for
   this resource; for a delegated token, only entries whose ``delegation`` allows the
   immediate actor read from ``act`` (never ``client_id``) at the chain's depth; one that
   grants the action; every constraint of that entry evaluated against the request
   (:mod:`missionbound.enforce.rs.constraints`), unknown or unevaluable keys refused.
5. **State** (RS-C only): the Mission is ``active`` as the issuer last said, no older than
   the published staleness bound, and not known to be otherwise from Shared Signals
   (:mod:`missionbound.enforce.rs.state`).

The checks that need no I/O run on the event loop. The issuer's keys and the Mission's state
are fetched in a worker thread when the cache does not hold them, so a slow AS never blocks
other requests. Every decision is logged with ``mission.id``, ``jti`` and its reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from typing import Any, cast
from urllib.parse import quote, urlsplit

import anyio.to_thread
import httpx
import structlog
from joserfc.jwk import Key, KeySet
from starlette.requests import Request
from starlette.responses import JSONResponse

from missionbound.enforce.rs.constraints import PARAMETER_INVALID, check_constraints
from missionbound.enforce.rs.errors import (
    BodyTooLarge,
    InsufficientScopeRefusal,
    InvalidDPoPProofRefusal,
    InvalidRequestRefusal,
    InvalidTokenRefusal,
    NoCredentials,
    RSRefusal,
    Scheme,
    UnavailableRefusal,
    UseDPoPNonceRefusal,
    challenges,
)
from missionbound.enforce.rs.replay import MemoryReplayCache, ReplayCache, ReplayCacheFull
from missionbound.enforce.rs.request import MISSING, Extractor, RequestFacts, parse_json_body
from missionbound.enforce.rs.state import (
    MissionStateView,
    ObservedState,
    StateUnavailable,
    effective,
)
from missionbound.enforce.rs.token_cache import VerifiedTokens
from missionbound.mission.authority import ENTRY_TYPE, Entry
from missionbound.mission.delegation import Actor, delegable_entries
from missionbound.mission.errors import InvalidRequest
from missionbound.protocol.access_tokens import (
    MAX_ACCESS_TOKEN_LENGTH,
    WRONG_ISSUER,
    AccessToken,
    AccessTokenRejected,
    verify_access_token,
)
from missionbound.protocol.dpop import (
    DEFAULT_MAX_AGE_SECONDS,
    DPoPProofError,
    UseDPoPNonce,
    single_dpop_header,
    verify_dpop_proof,
)
from missionbound.protocol.dpop import SUPPORTED_ALGS as DPOP_ALGS
from missionbound.protocol.dpop_nonces import nonce_checker
from missionbound.protocol.jose_segments import read_compact
from missionbound.protocol.jwks import (
    JwksCache,
    JwksUnavailable,
    KeyRefreshThrottled,
    KeySource,
)
from missionbound.protocol.mission_claim import MissionEvidence

log = structlog.get_logger("missionbound.enforce.rs")

# RFC 6750 section 2.1: b64token.
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_WORKER_THREADS = 16
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
# request.scope key: the DPoP proofs this request already spent (see _check_sender).
_SPENT_PROOFS = "missionbound.rs.spent_proofs"
# A jti is remembered a minute past its proof's window, so a clock running slightly behind
# the client's still refuses the replay.
_REPLAY_MARGIN_SECONDS = 60.0
RFC9728_WELL_KNOWN = "/.well-known/oauth-protected-resource"
_RETRY_AFTER_SECONDS = 5
# RFC 3986 section 3.3: the characters a path segment holds unencoded besides unreserved.
_PATH_SAFE = "/!$&'()*+,;=:@"


class Tier(StrEnum):
    """PROFILE.md section 2. RS-B: stateless, the token's Mission authority enforced.
    RS-C: RS-B plus the Mission's state within a published staleness bound."""

    RS_B = "RS-B"
    RS_C = "RS-C"


@dataclass(frozen=True)
class TrustedIssuer:
    """An Authorization Server whose tokens this resource accepts: ``issuer`` exactly as in
    ``iss``, and its keys, from ``jwks_uri`` (fetched and cached) or given as ``keys``
    (``StaticKeys``, or a ``JwksCache`` shared with other parts of the API). A key source of
    another kind is called on the event loop, so it must not block."""

    issuer: str
    jwks_uri: str | None = None
    keys: KeySource | None = None


@dataclass(frozen=True)
class MissionContext:
    """What the route handler may rely on once the guard let the request through."""

    token: AccessToken
    action: str
    # The authorization_details entry that allowed the request (this resource, this action,
    # every constraint met).
    entry: Mapping[str, Any]
    # RS-C: the Mission state the decision used; None at RS-B.
    state: ObservedState | None = None
    facts: RequestFacts | None = field(default=None, repr=False)

    @property
    def mission(self) -> MissionEvidence:
        return self.token.mission

    @property
    def subject(self) -> str:
        return self.token.subject

    @property
    def actors(self) -> tuple[Actor, ...]:
        """The ``act`` chain, the immediate actor first; () when not delegated."""
        return self.token.actors

    @property
    def acting_client(self) -> str:
        """Who is acting: the immediate actor of ``act`` for a delegated token, else the
        client the token was issued to."""
        return self.token.actors[0].sub if self.token.actors else self.token.client_id


class _MustFetch(JwksUnavailable):
    """Raised by :class:`_NoWaitKeys` where the key cache would have to go to the network."""


class _NoWaitKeys:
    """A :class:`KeySource` over a :class:`JwksCache` that never does I/O."""

    def __init__(self, cache: JwksCache) -> None:
        self.cache = cache

    def key_for(self, kid: str) -> Key:
        key = self.cache.cached_key_for(kid)
        if key is None:
            raise _MustFetch(kid)
        return key

    def key_set(self) -> KeySet:
        raise _MustFetch("key set")


@dataclass
class _Issuer:
    issuer: str
    keys: KeySource
    inline_keys: KeySource  # the same keys, without I/O
    owned: JwksCache | None


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
        if dpop_nonce_secret is not None and len(dpop_nonce_secret) < 16:
            raise ValueError("dpop_nonce_secret must be at least 16 bytes")
        self.resource = resource
        self.tier = tier
        self.state = state
        self.labels = tuple(labels)
        self.dpop_required = dpop_required
        self.dpop_max_age_seconds = dpop_max_age_seconds
        self.leeway_seconds = leeway_seconds
        self.max_body_bytes = max_body_bytes
        self.resource_name = resource_name
        self.resource_documentation = resource_documentation
        self._nonce_secret = dpop_nonce_secret
        self._replay = replay_cache if replay_cache is not None else MemoryReplayCache()
        self._verified = VerifiedTokens()
        # The guard's own worker threads for key and state fetches: a burst of cache misses
        # waits here, never on the threads the application (or an AS in the same process,
        # which these fetches may be calling) needs to answer.
        self._threads = anyio.CapacityLimiter(worker_threads)
        self._clock = clock
        self._issuers = {spec.issuer: self._issuer(spec, http_client) for spec in issuers}
        if len(self._issuers) != len(issuers):
            raise ValueError("an issuer is listed twice")
        self.mission_origin = mission_origin or next(iter(self._issuers))
        self._public_origin = _origin_of(public_base_url or resource)
        self.accepted_schemes = ((Scheme.DPOP,) if dpop_required
                                 else (Scheme.BEARER, Scheme.DPOP))
        self.metadata_url = protected_resource_metadata_url(resource)
        # action -> constraint keys bound by the routes declared for it (for the metadata).
        self._declared: dict[str, set[str]] = {}

    @staticmethod
    def _issuer(spec: TrustedIssuer, client: httpx.Client | None) -> _Issuer:
        if isinstance(spec.keys, JwksCache):
            # A cache the caller configured (its refresh limits, its client): it fetches,
            # so it is asked in a worker thread only, like the guard's own.
            return _Issuer(spec.issuer, spec.keys, _NoWaitKeys(spec.keys), None)
        if spec.keys is not None:
            return _Issuer(spec.issuer, spec.keys, spec.keys, None)
        if spec.jwks_uri is None:
            raise ValueError(f"issuer {spec.issuer!r} needs jwks_uri or keys")
        cache = JwksCache(spec.jwks_uri, client=client)
        return _Issuer(spec.issuer, cache, _NoWaitKeys(cache), cache)

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(self._issuers)

    def close(self) -> None:
        """Close the HTTP clients this guard created (never one it was given)."""
        for issuer in self._issuers.values():
            if issuer.owned is not None:
                issuer.owned.close()

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
    ) -> MissionContext:
        """The verified context for ``request`` performing ``action`` at this resource;
        raises :class:`RSRefusal`. ``action`` None (a route no action is declared for)
        authenticates, then refuses. ``labels`` overrides the resource's labels for this
        route; ``path_params`` defaults to the request's."""
        attempt = _Attempt(action)
        try:
            context = await self._authorize(request, attempt, bind or {},
                                            self.labels if labels is None else tuple(labels),
                                            path_params)
        except RSRefusal as refusal:
            if refusal.scheme is None and refusal.status != 503:
                refusal.scheme = attempt.scheme
            self._log(request, attempt, refusal)
            raise
        self._log(request, attempt, None, context)
        return context

    async def _authorize(self, request: Request, attempt: _Attempt,
                         bind: Mapping[str, Extractor], labels: tuple[str, ...],
                         path_params: Mapping[str, str] | None) -> MissionContext:
        now = self._clock()
        attempt.scheme, raw = self._credentials(request)
        token = attempt.token = await self._verify_token(raw, now)
        self._check_sender(request, attempt.scheme, raw, token, now)
        entry, facts = await self._authority(request, token, attempt.action, bind, labels,
                                             path_params)
        state = await self._check_state(token, raw, now) if self.tier is Tier.RS_C else None
        assert attempt.action is not None  # _authority refused a route without an action
        return MissionContext(token=token, action=attempt.action, entry=entry, state=state,
                              facts=facts)

    def _credentials(self, request: Request) -> tuple[Scheme, str]:
        values = request.headers.getlist("authorization")
        if not values:
            raise NoCredentials("missing_token", "this resource requires a Mission-bound access "
                                "token in the Authorization header")
        if len(values) > 1:
            raise InvalidRequestRefusal("malformed_authorization",
                                        "the request carries more than one Authorization header")
        scheme_name, _, value = values[0].strip().partition(" ")
        scheme = {"bearer": Scheme.BEARER, "dpop": Scheme.DPOP}.get(scheme_name.lower())
        if scheme is None:
            # RFC 6750 section 3.1: a scheme we do not take is no credentials at all.
            raise NoCredentials("unsupported_scheme", f"the {scheme_name[:20]!r} scheme is not "
                                "accepted here; send a Bearer or DPoP access token")
        value = value.strip()
        if not _TOKEN68.fullmatch(value) or len(value) > MAX_ACCESS_TOKEN_LENGTH:
            raise InvalidRequestRefusal("malformed_authorization",
                                        f"the {scheme.value} credentials are not a token",
                                        scheme=scheme)
        if scheme is Scheme.BEARER and self.dpop_required:
            raise InvalidTokenRefusal("dpop_required", "this resource accepts DPoP-bound access "
                                      "tokens only (RFC 9449)", scheme=Scheme.DPOP)
        return scheme, value

    async def _verify_token(self, raw: str, now: datetime) -> AccessToken:
        known = self._verified.get(raw, now=now, leeway=self.leeway_seconds)
        if known is not None:
            return known
        token = await self._verify_new_token(raw, now)
        self._verified.put(raw, token)
        return token

    async def _verify_new_token(self, raw: str, now: datetime) -> AccessToken:
        issuer = self._issuer_of(raw)
        verify = partial(verify_access_token, raw, issuer=issuer.issuer, audience=self.resource,
                         now=now, leeway=self.leeway_seconds)
        try:
            try:
                return verify(keys=issuer.inline_keys)
            except _MustFetch:
                # Not cached (first use, old copy, a rotated key): fetch off the event loop.
                return await anyio.to_thread.run_sync(partial(verify, keys=issuer.keys),
                                                      limiter=self._threads)
        except AccessTokenRejected as exc:
            raise InvalidTokenRefusal(exc.reason, exc.description) from None
        except JwksUnavailable as exc:
            log.warning("rs_issuer_keys_unavailable", issuer=issuer.issuer, detail=str(exc))
            # A kid the cached set lacks, asked for too soon after the last fetch: the set is
            # fetched again once the refresh limit lets it, so say when.
            wait = (math.ceil(exc.retry_after) if isinstance(exc, KeyRefreshThrottled)
                    else _RETRY_AFTER_SECONDS)
            raise UnavailableRefusal(
                "issuer_keys_unavailable", f"the keys of {issuer.issuer} cannot be had just "
                "now; try again shortly", retry_after=max(1, wait)) from None

    def _issuer_of(self, raw: str) -> _Issuer:
        if len(self._issuers) == 1:
            return next(iter(self._issuers.values()))  # verify_access_token checks iss
        try:
            _, claims = read_compact(raw, "access token", ValueError,
                                     max_length=MAX_ACCESS_TOKEN_LENGTH)
        except ValueError as exc:
            raise InvalidTokenRefusal("malformed", str(exc)) from None
        iss = claims.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise InvalidTokenRefusal(WRONG_ISSUER, "the access token was not issued by an "
                                      "Authorization Server this resource trusts")
        return issuer

    def _check_sender(self, request: Request, scheme: Scheme, raw: str, token: AccessToken,
                      now: datetime) -> None:
        if token.jkt is None:
            if scheme is Scheme.DPOP:
                raise InvalidTokenRefusal("not_dpop_bound", "the access token is not DPoP-bound "
                                          "(no cnf.jkt); it cannot be sent with the DPoP scheme")
            if self.dpop_required:
                raise InvalidTokenRefusal("dpop_required", "this resource accepts DPoP-bound "
                                          "access tokens only (RFC 9449)", scheme=Scheme.DPOP)
            return
        if scheme is Scheme.BEARER:
            # RFC 9449 section 7.2: a DPoP-bound token sent as a bearer token is refused.
            raise InvalidTokenRefusal("dpop_bound_token_as_bearer", "the access token is "
                                      "DPoP-bound: send it with the DPoP scheme and a proof",
                                      scheme=Scheme.DPOP)
        try:
            proof_text = single_dpop_header(request.headers.getlist("dpop"))
            if proof_text is None:
                raise InvalidDPoPProofRefusal("missing_proof", "the access token is DPoP-bound "
                                              "and the request carries no DPoP proof")
            nonce_check = (None if self._nonce_secret is None
                           else nonce_checker(self._nonce_secret, now))
            proof = verify_dpop_proof(proof_text, method=request.method,
                                      url=self._request_url(request), now=now,
                                      access_token=raw, nonce_check=nonce_check,
                                      max_age_seconds=self.dpop_max_age_seconds)
        except UseDPoPNonce as exc:
            raise UseDPoPNonceRefusal(exc.nonce, exc.description) from None
        except DPoPProofError as exc:
            raise InvalidDPoPProofRefusal("invalid_proof", exc.description) from None
        if proof.jkt != token.jkt:
            raise InvalidDPoPProofRefusal("wrong_key", "the DPoP proof is signed with another "
                                          "key than the one the access token is bound to "
                                          "(cnf.jkt)")
        replay_key = f"{proof.jkt}:{proof.jti}"
        # Two guard dependencies on one route check the same request twice: the proof was
        # spent by this very request, which is not a replay.
        spent_here: set[str] = request.scope.setdefault(_SPENT_PROOFS, set())
        if replay_key in spent_here:
            return
        remember = (proof.accepted_until - now).total_seconds() + _REPLAY_MARGIN_SECONDS
        try:
            first = self._replay.first_use(replay_key, remember_seconds=remember)
        except ReplayCacheFull:
            log.warning("rs_dpop_replay_cache_full")
            raise UnavailableRefusal("replay_cache_full", "too many DPoP proofs in flight; "
                                     "try again shortly") from None
        if not first:
            raise InvalidDPoPProofRefusal("replayed_proof", "this DPoP proof was already used: "
                                          "sign a new proof for each request")
        spent_here.add(replay_key)

    def _request_url(self, request: Request) -> str:
        """The URL the client addressed (RFC 9449 section 4.3 item 9, RFC 9110 section 7.1):
        the path as sent, percent-encoded (ASGI ``raw_path``), never Starlette's decoded
        ``url.path``, in which ``/a%20b`` or ``/caf%C3%A9`` no longer compares with the
        proof's ``htu``."""
        return self._public_origin + _target_path(request)

    async def _authority(
        self, request: Request, token: AccessToken, action: str | None,
        bind: Mapping[str, Extractor], labels: tuple[str, ...],
        path_params: Mapping[str, str] | None,
    ) -> tuple[Mapping[str, Any], RequestFacts]:
        entries: Sequence[Mapping[str, Any]] = [
            entry for entry in token.authorization_details
            if entry.get("type") == ENTRY_TYPE and entry.get("resource") == self.resource]
        if not entries:
            raise InsufficientScopeRefusal("resource_not_granted", "the Mission grants nothing "
                                           f"at {self.resource}")
        if token.actors:
            # PROFILE.md section 9: the actor is read from act, never from client_id.
            entries = delegable_entries(cast(list[Entry], entries),
                                        delegate_client_id=token.actors[0].sub,
                                        depth=len(token.actors)).kept
            if not entries:
                raise InsufficientScopeRefusal(
                    "delegation_not_permitted", f"the Mission does not let "
                    f"{token.actors[0].sub[:100]!r} act at this resource at delegation depth "
                    f"{len(token.actors)}")
        if action is None:
            raise InsufficientScopeRefusal("route_not_declared", f"no Mission action is "
                                           f"declared for {request.method} {request.url.path}: "
                                           "refused (fail closed)")
        granting = [entry for entry in entries if _grants(entry, action)]
        if not granting:
            raise InsufficientScopeRefusal("action_not_granted", f"the Mission does not grant "
                                           f"{action!r} at this resource")
        facts = await self._facts(request, bind, path_params)
        first_refusal = None
        for entry in granting:
            refusal = check_constraints(entry, bindings=bind, facts=facts, labels=labels)
            if refusal is None:
                return entry, facts
            first_refusal = first_refusal or refusal
        assert first_refusal is not None
        wire = (InvalidRequestRefusal if first_refusal.reason == PARAMETER_INVALID
                else InsufficientScopeRefusal)
        raise wire(first_refusal.reason, first_refusal.description)

    async def _facts(self, request: Request, bind: Mapping[str, Extractor],
                     path_params: Mapping[str, str] | None) -> RequestFacts:
        body: Any = MISSING
        if any(extractor.needs_json_body for extractor in bind.values()):
            body = await self._json_body(request)
        return RequestFacts(
            method=request.method, path=request.url.path,
            path_params=dict(request.path_params if path_params is None else path_params),
            query=_single_values(request.query_params.multi_items()),
            headers=_single_values(request.headers.items()), json_body=body)

    async def _json_body(self, request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not _CONTENT_LENGTH.fullmatch(declared):
                raise InvalidRequestRefusal("malformed_content_length",
                                            "the Content-Length header is not a length")
            if int(declared) > self.max_body_bytes:
                raise self._too_large()
        raw = await self._bounded_body(request)
        if not raw:
            return MISSING
        try:
            return parse_json_body(raw)
        except InvalidRequest as exc:
            raise InvalidRequestRefusal("invalid_body", exc.description) from None

    async def _bounded_body(self, request: Request) -> bytes:
        """The body, never read past ``max_body_bytes``: a chunked body declares no length,
        and ``request.body()`` would buffer whatever the client keeps sending."""
        received = bytearray()
        async with aclosing(request.stream()) as chunks:
            async for chunk in chunks:
                received += chunk
                if len(received) > self.max_body_bytes:
                    raise self._too_large()
        body = bytes(received)
        # Where Request.body() keeps what it read: the route (FastAPI) and the middleware,
        # which hands the body on to the application, read it from there again.
        request._body = body
        return body

    def _too_large(self) -> BodyTooLarge:
        return BodyTooLarge("body_too_large", f"the body is larger than "
                            f"{self.max_body_bytes} bytes")

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
            "authorization_servers": list(self._issuers),
            "bearer_methods_supported": ["header"],
            "dpop_signing_alg_values_supported": list(DPOP_ALGS),
            "dpop_bound_access_tokens_required": self.dpop_required,
            "authorization_details_types_supported": [ENTRY_TYPE],
            "mission_bound_authorization_required": True,
            "mission_constraints_supported": sorted(bound),
            "mission_enforcement_tier": self.tier.value,
        }
        if self.state is not None and self.tier is Tier.RS_C:
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


def _target_path(request: Request) -> str:
    raw = request.scope.get("raw_path")
    if isinstance(raw, bytes) and raw.startswith(b"/"):
        return raw.decode("latin-1").partition("?")[0]
    # No raw_path (it is optional in ASGI): encode the decoded path again.
    return quote(request.url.path, safe=_PATH_SAFE)


def _single_values(items: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Each name's value; a name sent more than once maps to the list of its values, which no
    constraint accepts (parameter_invalid): the guard must never check one value while the
    application uses another."""
    out: dict[str, Any] = {}
    for name, value in items:
        if name in out:
            previous = out[name]
            out[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            out[name] = value
    return out


def _grants(entry: Mapping[str, Any], action: str) -> bool:
    actions = entry.get("actions")
    return isinstance(actions, list) and action in actions


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"public_base_url must be an absolute http(s) URL, not {url!r}")
    return f"{parts.scheme}://{parts.netloc}"


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

