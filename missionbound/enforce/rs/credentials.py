"""The credentials of a request (PROFILE.md section 2, steps 1 to 3 of
:meth:`MissionGuard.authorize <missionbound.enforce.rs.guard.MissionGuard.authorize>`).

1. **Credentials** (RFC 6750 section 2.1, RFC 9449 section 7.1): one ``Authorization``
   header, scheme ``Bearer`` or ``DPoP``.
2. **The token** (RFC 9068 section 4, :func:`~missionbound.protocol.access_tokens
   .verify_access_token`): a trusted ``iss`` and a signature by a key of that issuer's
   JWKS, fetched in a worker thread when the cache does not hold it; verified tokens are
   remembered (:mod:`missionbound.enforce.rs.token_cache`).
3. **Sender constraint** (RFC 9449 sections 4.3 and 7): a DPoP-bound token needs the
   ``DPoP`` scheme and a proof for this method and URL, by exactly that key, seen once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from urllib.parse import quote, urlsplit

import anyio
import anyio.to_thread
import httpx
import structlog
from joserfc.jwk import Key, KeySet
from starlette.requests import Request

from missionbound.enforce.rs.errors import (
    InvalidDPoPProofRefusal,
    InvalidRequestRefusal,
    InvalidTokenRefusal,
    NoCredentials,
    Scheme,
    UnavailableRefusal,
    UseDPoPNonceRefusal,
)
from missionbound.enforce.rs.replay import ReplayCache, ReplayCacheFull
from missionbound.enforce.rs.token_cache import VerifiedTokens
from missionbound.protocol.access_tokens import (
    MAX_ACCESS_TOKEN_LENGTH,
    WRONG_ISSUER,
    AccessToken,
    AccessTokenRejected,
    verify_access_token,
)
from missionbound.protocol.dpop import (
    DPoPProofError,
    UseDPoPNonce,
    single_dpop_header,
    verify_dpop_proof,
)
from missionbound.protocol.dpop_nonces import nonce_checker
from missionbound.protocol.jose_segments import read_compact
from missionbound.protocol.jwks import (
    JwksCache,
    JwksUnavailable,
    KeyRefreshThrottled,
    KeySource,
)

log = structlog.get_logger("missionbound.enforce.rs")

# RFC 6750 section 2.1: b64token.
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# request.scope key: the DPoP proofs this request already spent (see check_sender).
_SPENT_PROOFS = "missionbound.rs.spent_proofs"
# A jti is remembered a minute past its proof's window, so a clock running slightly behind
# the client's still refuses the replay.
_REPLAY_MARGIN_SECONDS = 60.0
_RETRY_AFTER_SECONDS = 5
# RFC 3986 section 3.3: the characters a path segment holds unencoded besides unreserved.
_PATH_SAFE = "/!$&'()*+,;=:@"


@dataclass(frozen=True)
class TrustedIssuer:
    """An Authorization Server whose tokens this resource accepts: ``issuer`` exactly as in
    ``iss``, and its keys, from ``jwks_uri`` (fetched and cached) or given as ``keys``
    (``StaticKeys``, or a ``JwksCache`` shared with other parts of the API). A key source of
    another kind is called on the event loop, so it must not block."""

    issuer: str
    jwks_uri: str | None = None
    keys: KeySource | None = None


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


class CredentialCheck:
    """Steps 1 to 3 for one resource: the trusted issuers and their keys, the verified-token
    cache, and the DPoP replay cache and nonces. Thread-safe; one per guard. Key fetches
    run in the guard's worker threads (``threads``)."""

    def __init__(
        self,
        *,
        resource: str,
        issuers: Sequence[TrustedIssuer],
        http_client: httpx.Client | None,
        dpop_required: bool,
        dpop_nonce_secret: bytes | None,
        dpop_max_age_seconds: int,
        replay_cache: ReplayCache,
        leeway_seconds: float,
        public_base_url: str,
        threads: anyio.CapacityLimiter,
    ) -> None:
        self.resource = resource
        self.dpop_required = dpop_required
        self.dpop_max_age_seconds = dpop_max_age_seconds
        self.leeway_seconds = leeway_seconds
        self._nonce_secret = dpop_nonce_secret
        self._replay = replay_cache
        self._verified = VerifiedTokens()
        self._threads = threads
        self._issuers = {spec.issuer: self._issuer(spec, http_client) for spec in issuers}
        if len(self._issuers) != len(issuers):
            raise ValueError("an issuer is listed twice")
        self._public_origin = _origin_of(public_base_url)

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
        """Close the HTTP clients this check created (never one it was given)."""
        for issuer in self._issuers.values():
            if issuer.owned is not None:
                issuer.owned.close()

    def credentials(self, request: Request) -> tuple[Scheme, str]:
        """Step 1: the scheme and the token of the one ``Authorization`` header."""
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

    async def verify_token(self, raw: str, now: datetime) -> AccessToken:
        """Step 2: the verified access token, from the cache of verified tokens when it is
        there."""
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

    def check_sender(self, request: Request, scheme: Scheme, raw: str, token: AccessToken,
                      now: datetime) -> None:
        """Step 3: the token is sent as its ``cnf.jkt`` binding requires."""
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


def _target_path(request: Request) -> str:
    raw = request.scope.get("raw_path")
    if isinstance(raw, bytes) and raw.startswith(b"/"):
        return raw.decode("latin-1").partition("?")[0]
    # No raw_path (it is optional in ASGI): encode the decoded path again.
    return quote(request.url.path, safe=_PATH_SAFE)



def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"public_base_url must be an absolute http(s) URL, not {url!r}")
    return f"{parts.scheme}://{parts.netloc}"



__all__ = ["CredentialCheck", "TrustedIssuer"]
