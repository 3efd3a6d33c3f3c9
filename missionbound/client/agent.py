"""The agent SDK, asynchronous: from a Mission Intent to tokens, permits and tool calls.

An agent is one OAuth client with one DPoP key (RFC 9449): every token it gets is bound to
that key, and every request it sends carries a fresh proof of it.

- :class:`AsyncMissionClient` talks to the Authorization Server: pushes a Mission Intent
  (PAR, RFC 9126, with PKCE S256 and a DPoP proof), gives the consent URL, redeems the code
  (:meth:`~AsyncMissionClient.complete`, or :meth:`~AsyncMissionClient.wait_for_approval`
  with a loopback listener) and, for a delegate, exchanges another agent's token (RFC 8693).
- :class:`AsyncMission` is one approved Mission in the agent's hands: fresh tokens (refresh
  with rotation), narrowed tokens per resource, delegation, calls to APIs, permits of the
  PDP, local tools through the runner and MCP tools through the gateway
  (:mod:`missionbound.client.tools`).

Refusals raise the typed errors of :mod:`missionbound.client.errors` (``MissionRevoked``,
``ConstraintExceeded``, ``ToolNotGranted``, ...). The synchronous twin is
:mod:`missionbound.client.sync`.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlencode

import anyio
import httpx
from joserfc import jwt
from joserfc.jwk import ECKey, Key

from missionbound.client.callback import wait_for_callback
from missionbound.client.dpop import create_dpop_proof, default_alg, origin_of
from missionbound.client.errors import MissionClientError
from missionbound.client.oauth import (
    ACCESS_TOKEN_TYPE,
    DEFAULT_REDIRECT_URI,
    TOKEN_EXCHANGE,
    PendingMission,
    TokenSet,
    consent_url,
    json_or_none,
    pkce_pair,
    read_callback,
    refusal,
)
from missionbound.protocol.jwks import JwksCache

if TYPE_CHECKING:
    from missionbound.client.tools import AsyncLocalTools, AsyncMcpTools, PepCredentials, Permit

# A token this close to its expiry is refreshed before use (clocks differ; requests take time).
REFRESH_MARGIN_SECONDS: Final = 30.0
METADATA_PATH: Final = "/.well-known/oauth-authorization-server"
JWT_BEARER_ASSERTION: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLIENT_ASSERTION_SECONDS: Final = 60
_REFUSALS: Final = frozenset({401, 403, 503})


class AsyncMissionClient:
    """One OAuth client of a Mission-bound Authorization Server at ``issuer``.

    It authenticates with ``client_secret`` (``client_secret_basic``) or ``client_key``, a
    private key whose public half the AS has registered for it (``private_key_jwt``, RFC
    7523: a fresh single-use assertion per request); with neither it is a public client.
    ``dpop_key`` is its private DPoP key (a fresh P-256 key by default; keep your own
    to bind tokens across runs). ``http`` is used as given (its timeouts, proxies); without
    one the client makes its own and :meth:`aclose` closes it.
    """

    def __init__(self, issuer: str, client_id: str, *, client_secret: str | None = None,
                 client_key: Key | None = None, redirect_uri: str = DEFAULT_REDIRECT_URI,
                 dpop_key: Key | None = None, http: httpx.AsyncClient | None = None,
                 timeout: float = 10.0) -> None:
        if client_secret is not None and client_key is not None:
            raise ValueError("a client authenticates with a secret or a key, not both")
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self.dpop_key: Key = dpop_key or ECKey.generate_key("P-256", private=True)
        self._secret = client_secret
        self._client_key = client_key
        self._owned = http is None
        self.http = http or httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._metadata: dict[str, Any] | None = None
        self._keys: JwksCache | None = None
        self._nonces: dict[str, str] = {}  # RFC 9449 section 8: per server origin

    async def __aenter__(self) -> AsyncMissionClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owned:
            await self.http.aclose()
        if self._keys is not None:
            self._keys.close()

    @property
    def jkt(self) -> str:
        """The RFC 7638 thumbprint of the DPoP key: the ``cnf.jkt`` of this client's tokens."""
        return self.dpop_key.thumbprint()

    async def metadata(self) -> dict[str, Any]:
        """The AS's metadata (RFC 8414), read once."""
        if self._metadata is None:
            url = self.issuer + METADATA_PATH
            try:
                response = await self.http.get(url)
            except httpx.HTTPError as exc:
                raise MissionClientError(f"cannot reach {url}: {type(exc).__name__}") from exc
            if response.status_code != 200:
                raise MissionClientError(f"{url} answered HTTP {response.status_code}",
                                         status=response.status_code)
            metadata = json_or_none(response)
            if not isinstance(metadata, dict) or metadata.get("issuer") != self.issuer:
                # RFC 8414 section 3.3: the document must name the issuer it was asked of.
                raise MissionClientError(f"{url} is not this issuer's AS metadata")
            self._metadata = metadata
        return self._metadata

    async def keys(self) -> JwksCache:
        """The AS's signing keys (its ``jwks_uri``), fetched and cached as needed."""
        await self.metadata()
        return self.cached_keys()

    def cached_keys(self) -> JwksCache:
        """:meth:`keys` once the metadata was read (any request to the AS reads it)."""
        if self._metadata is None:
            raise MissionClientError("the AS's metadata has not been read yet")
        if self._keys is None:
            self._keys = JwksCache(str(self._metadata["jwks_uri"]))
        return self._keys

    # -- the authorization request --------------------------------------------------------

    async def submit_intent(self, intent: Mapping[str, Any] | str, *,
                            login_hint: str | None = None,
                            authorization_details: Sequence[Mapping[str, Any]] | None = None,
                            resources: Sequence[str] = (), scope: str | None = None,
                            ) -> PendingMission:
        """Push a Mission Intent (PAR, PROFILE.md section 3): the AS validates it, derives
        what it would grant and keeps the Mission ``pending_approval``. ``login_hint``
        names whose Mission it is; ``authorization_details`` is an optional structured
        proposal (``mission_resource_access`` entries). Refusals raise :class:`OAuthError`
        (``invalid_request``, ``invalid_authorization_details``, ...): nothing is stored."""
        metadata = await self.metadata()
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(18)
        form: list[tuple[str, str]] = [
            ("response_type", "code"), ("client_id", self.client_id),
            ("redirect_uri", self.redirect_uri), ("code_challenge", challenge),
            ("code_challenge_method", "S256"), ("state", state),
            ("mission_intent", intent if isinstance(intent, str) else json.dumps(intent)),
        ]
        if login_hint is not None:
            form.append(("login_hint", login_hint))
        if authorization_details is not None:
            form.append(("authorization_details", json.dumps(list(authorization_details))))
        if scope is not None:
            form.append(("scope", scope))
        form.extend(("resource", resource) for resource in resources)
        answer = await self._post_to_as(str(metadata["pushed_authorization_request_endpoint"]),
                                        form, expect=201, what="the pushed request")
        request_uri = str(answer["request_uri"])
        return PendingMission(
            consent_url=consent_url(str(metadata["authorization_endpoint"]), self.client_id,
                                    request_uri),
            request_uri=request_uri, expires_in=int(answer.get("expires_in", 0)),
            state=state, redirect_uri=self.redirect_uri, code_verifier=verifier)

    async def complete(self, pending: PendingMission, callback_url: str) -> AsyncMission:
        """Redeem the authorization response the approver's browser brought to the redirect
        URI (the full URL: ``code``, ``state``, ``iss``) for the Mission's tokens."""
        code = read_callback(callback_url, pending, issuer=self.issuer)
        tokens = await self.token_request([
            ("grant_type", "authorization_code"), ("code", code),
            ("redirect_uri", pending.redirect_uri), ("code_verifier", pending.code_verifier)])
        return AsyncMission(self, tokens)

    async def wait_for_approval(self, pending: PendingMission, *, timeout: float = 300.0
                                ) -> AsyncMission:
        """Listen on the (loopback) redirect URI until the approver's browser comes back,
        then :meth:`complete`. For agents that run in a terminal."""
        stop = threading.Event()
        try:
            # Abandoned on cancellation, and told to stop: the listener's port is freed
            # within a second instead of at the timeout.
            callback_url = await anyio.to_thread.run_sync(
                partial(wait_for_callback, pending.redirect_uri, timeout=timeout,
                        state=pending.state, stop=stop), abandon_on_cancel=True)
        finally:
            stop.set()
        return await self.complete(pending, callback_url)

    async def exchange(self, subject_token: str, *, resource: str | None = None,
                       scope: Sequence[str] | None = None) -> TokenSet:
        """As a delegate: exchange the token another agent handed over for a token of this
        client's own, bound to this client's key, holding only what the Mission lets it
        receive (RFC 8693, docs/delegation.md). No refresh token: ask the agent again."""
        form = [("grant_type", TOKEN_EXCHANGE), ("subject_token", subject_token),
                ("subject_token_type", ACCESS_TOKEN_TYPE)]
        if resource is not None:
            form.append(("resource", resource))
        if scope:
            form.append(("scope", " ".join(scope)))
        return await self.token_request(form)

    async def token_request(self, form: Sequence[tuple[str, str]]) -> TokenSet:
        """``POST /token`` with this client's authentication and a DPoP proof."""
        endpoint = str((await self.metadata())["token_endpoint"])
        return TokenSet.from_answer(await self._post_to_as(endpoint, form, expect=200,
                                                           what="the token request"))

    # -- requests to Resource Servers -----------------------------------------------------

    async def request(self, method: str, url: str, *, access_token: str,
                      json: Any = None, params: Mapping[str, str] | None = None
                      ) -> httpx.Response:
        """A request to a Resource Server with ``Authorization: DPoP <access_token>`` and a
        fresh proof (nonce retry once). A refusal of the enforcement point (401, 403, 503
        with an error body) raises its typed error; any other answer is returned."""
        for attempt in range(2):
            sent_nonce = self._nonces.get(origin_of(url))
            headers = {"Authorization": f"DPoP {access_token}",
                       "DPoP": self._proof(method, url, sent_nonce, access_token=access_token)}
            try:
                response = await self.http.request(method, url, json=json, params=params,
                                                    headers=headers)
            except httpx.HTTPError as exc:
                raise MissionClientError(f"{method} {url}: {type(exc).__name__}") from exc
            new_nonce = self._learn_nonce(url, response)
            if attempt == 0 and new_nonce not in (None, sent_nonce) \
                    and response.status_code == 401 \
                    and "use_dpop_nonce" in response.headers.get("WWW-Authenticate", ""):
                continue
            break
        if response.status_code in _REFUSALS:
            raise refusal(response.status_code, json_or_none(response),
                          what=f"{method} {url}")
        return response

    # -- internals ------------------------------------------------------------------------

    async def _post_to_as(self, url: str, form: Sequence[tuple[str, str]], *, expect: int,
                          what: str) -> dict[str, Any]:
        """POST a form to the AS with client authentication and a DPoP proof; once more
        with the AS's nonce when it asks for one (RFC 9449 section 8). Every answer's
        ``DPoP-Nonce`` is remembered; the retry happens when the nonce the AS wants is not
        the one this request carried (another task may have learnt it meanwhile)."""
        auth = (self.client_id, self._secret) if self._secret is not None else None
        body = list(form) if auth is not None or any(k == "client_id" for k, _ in form) \
            else [*form, ("client_id", self.client_id)]
        for attempt in range(2):
            sent_nonce = self._nonces.get(origin_of(url))
            sent = body if self._client_key is None \
                else [*body, *client_assertion(self._client_key, self.client_id, self.issuer)]
            try:
                response = await self.http.post(
                    url, content=urlencode(sent), auth=auth or httpx.USE_CLIENT_DEFAULT,
                    headers={"DPoP": self._proof("POST", url, sent_nonce),
                             "Content-Type": "application/x-www-form-urlencoded"})
            except httpx.HTTPError as exc:
                raise MissionClientError(f"{what}: cannot reach {url}: "
                                         f"{type(exc).__name__}") from exc
            answer = json_or_none(response)
            new_nonce = self._learn_nonce(url, response)
            if attempt == 0 and new_nonce not in (None, sent_nonce) \
                    and response.status_code == 400 and isinstance(answer, dict) \
                    and answer.get("error") == "use_dpop_nonce":
                continue
            break
        if response.status_code != expect or not isinstance(answer, dict):
            raise refusal(response.status_code, answer, what=what, from_as=True)
        return answer

    def _proof(self, method: str, url: str, nonce: str | None, *,
               access_token: str | None = None) -> str:
        return create_dpop_proof(self.dpop_key, method=method, url=url,
                                 access_token=access_token, nonce=nonce)

    def _learn_nonce(self, url: str, response: httpx.Response) -> str | None:
        """Remember the nonce a server sent (the newest wins, RFC 9449 section 8.2)."""
        nonce: str | None = response.headers.get("DPoP-Nonce")
        if nonce:
            self._nonces[origin_of(url)] = nonce
        return nonce


def client_assertion(key: Key, client_id: str, issuer: str) -> list[tuple[str, str]]:
    """``private_key_jwt`` (RFC 7523 section 2.2): a JWT of the client's key for the issuer
    (its identifier is the only audience the AS accepts: rfc7523bis), single use,
    short-lived."""
    now = int(time.time())
    header = {"alg": default_alg(key), "typ": "JWT"}
    if key.kid:
        header["kid"] = key.kid
    claims = {"iss": client_id, "sub": client_id, "aud": issuer, "iat": now,
              "exp": now + CLIENT_ASSERTION_SECONDS, "jti": secrets.token_urlsafe(16)}
    return [("client_assertion_type", JWT_BEARER_ASSERTION),
            ("client_assertion", jwt.encode(header, claims, key))]


class AsyncMission:
    """One approved Mission in the agent's hands: its tokens and what the agent does with
    them. Made by :meth:`AsyncMissionClient.complete`."""

    def __init__(self, client: AsyncMissionClient, tokens: TokenSet) -> None:
        if tokens.mission_id is None:
            raise MissionClientError("the token answer names no mission_id: this AS does "
                                     "not issue Mission-bound tokens")
        self.client = client
        self.mission_id: str = tokens.mission_id
        self.tokens = tokens
        self._lock = anyio.Lock()

    async def access_token(self) -> str:
        """The current access token, refreshed first when it is about to expire (once, for
        any number of tasks asking at the same time)."""
        if self.tokens.expires_within(REFRESH_MARGIN_SECONDS):
            async with self._lock:
                if self.tokens.expires_within(REFRESH_MARGIN_SECONDS):
                    self.tokens = await self._refresh_grant([])
        return self.tokens.access_token

    async def refresh(self) -> TokenSet:
        """A new access token (refresh grant); the AS rotates the refresh token on every
        use and this keeps the new one (a rotated token used again revokes the grant).
        Gated on the Mission: a revoked Mission raises :class:`MissionRevoked`."""
        async with self._lock:
            self.tokens = await self._refresh_grant([])
            return self.tokens

    async def narrow(self, resource: str, *, scope: Sequence[str] | None = None) -> TokenSet:
        """A token for one resource only (RFC 8707 ``resource``, optionally fewer actions
        with ``scope``): ``aud`` is that resource and ``authorization_details`` its entries.
        Hand it to a component that needs no more: it comes without a refresh token. The
        Mission's own tokens are kept (with the refresh token the request rotated to)."""
        form = [("resource", resource)]
        if scope:
            form.append(("scope", " ".join(scope)))
        async with self._lock:
            narrowed = await self._refresh_grant(form)
            # The refresh token rotated: keep the new one, and the Mission-wide access token.
            self.tokens = replace(self.tokens, refresh_token=narrowed.refresh_token)
        # Never hand the refresh token out with the narrowed token: it refreshes to the whole
        # Mission, and its use by another would revoke the agent's grant (reuse detection).
        return replace(narrowed, refresh_token=None)

    async def delegate(self, delegate: AsyncMissionClient, *, resource: str,
                       scope: Sequence[str] | None = None) -> TokenSet:
        """Hand part of the work to ``delegate`` (another client, its own key): it exchanges
        this Mission's access token for its own narrowed token (RFC 8693)."""
        return await delegate.exchange(await self.access_token(), resource=resource,
                                       scope=scope)

    async def request(self, method: str, url: str, *, json: Any = None,
                      params: Mapping[str, str] | None = None) -> httpx.Response:
        """Call an API protected by the Mission (the RS kit); see
        :meth:`AsyncMissionClient.request`."""
        return await self.client.request(method, url, access_token=await self.access_token(),
                                         json=json, params=params)

    async def permit(self, resource: str, action: str, arguments: Mapping[str, Any], *,
                     pep: PepCredentials, capability_source: Mapping[str, Any] | None = None
                     ) -> Permit:
        """Ask the PDP about ``action`` on ``resource`` with exactly ``arguments``; a deny
        raises its typed error. See :func:`missionbound.client.tools.ask_for_permit`."""
        from missionbound.client.tools import ask_for_permit

        return await ask_for_permit(self, resource, action, arguments, pep=pep,
                                    capability_source=capability_source)

    def local_tools(self, resource: str, *, pep: PepCredentials) -> AsyncLocalTools:
        """A local tool runner for ``resource``'s tools: each consequential tool runs only
        with a permit of the PDP for exactly its arguments, presented with this agent's key."""
        from missionbound.client.tools import AsyncLocalTools

        return AsyncLocalTools(self, resource, pep=pep)

    @asynccontextmanager
    async def mcp(self, url: str) -> AsyncIterator[AsyncMcpTools]:
        """An MCP session with the Mission-aware gateway at ``url`` (streamable HTTP)."""
        from missionbound.client.tools import open_mcp

        async with open_mcp(self, url) as tools:
            yield tools

    async def _refresh_grant(self, extra: Sequence[tuple[str, str]]) -> TokenSet:
        if self.tokens.refresh_token is None:
            raise MissionClientError("no refresh token: this token cannot be refreshed")
        return await self.client.token_request(
            [("grant_type", "refresh_token"), ("refresh_token", self.tokens.refresh_token),
             *extra])

    def __repr__(self) -> str:
        return f"AsyncMission({self.mission_id!r}, expires_at={self.tokens.expires_at})"
