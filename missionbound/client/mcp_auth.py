"""DPoP-bound access tokens on the official ``mcp`` client's HTTP requests.

The ``mcp`` SDK's streamable HTTP transport sends every JSON-RPC message as its own HTTP
request through an ``httpx2.AsyncClient`` it is given. :class:`DPoPAuth` is that client's
authentication flow: each request (``POST`` of a message, ``GET`` of the event stream,
``DELETE`` of a session, and every redirect the SDK follows) gets ``Authorization: DPoP
<token>`` and a fresh proof for exactly that method and URL (RFC 9449 section 7.1).

Server nonces (RFC 9449 sections 8 and 9): a Resource Server that wants one answers 401 with
a ``DPoP`` challenge ``error="use_dpop_nonce"`` and the nonce in ``DPoP-Nonce``; the flow
sends the request once more with a proof carrying it. A nonce is remembered per origin (a
nonce is one server's) and replaced whenever a response brings a newer one (section 8.2),
so later requests carry it from the start. The AS's token endpoint signals the same with a
400 JSON body, which this flow does not read (it never buffers a response: MCP answers may
be event streams); it is for Resource Servers and MCP gateways.

Usage::

    auth = DPoPAuth(access_token, dpop_private_key)
    async with mission_mcp_client(f"{issuer}/demo/mcp", auth) as client:
        tools = await client.list_tools()
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from joserfc.jwk import Key
from mcp import Client
from mcp.client._transport import TransportStreams
from mcp.client.streamable_http import streamable_http_client

from missionbound.client.dpop import create_dpop_proof, default_alg, origin_of

# The MCP transports' defaults (mcp.shared._httpx_utils): 30 s to connect and send, and a
# long read, because a server may hold an event stream open.
DEFAULT_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
# RFC 9449 section 9 / RFC 6750 section 3: the error of a challenge, quoted or as a token.
_NONCE_ERROR = re.compile(r'(?:^|[\s,])error\s*=\s*"?use_dpop_nonce"?(?:[\s,]|$)', re.IGNORECASE)


class DPoPAuth(httpx2.Auth):
    """``Authorization: DPoP <access_token>`` and a fresh DPoP proof of ``key`` on every
    request; one retry with the server's nonce when it asks for one.

    ``key`` is the private key the token is bound to (its RFC 7638 thumbprint is the token's
    ``cnf.jkt``: :attr:`jkt`); ``alg`` defaults to the key's usual algorithm
    (:func:`missionbound.client.dpop.default_alg`). Assign :attr:`access_token` after a
    refresh: the next request uses the new token. ``clock`` gives Unix seconds for ``iat``.
    One instance may serve concurrent requests.
    """

    # The body is read before the first send, so the retry can send it again.
    requires_request_body = True

    def __init__(self, access_token: str, key: Key, *, alg: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.alg = alg or default_alg(key)
        # Fails now, not at the first request, on a public-only key, an algorithm servers
        # refuse for proofs, or a token that cannot be hashed for ath.
        create_dpop_proof(key, method="GET", url="http://localhost/", alg=self.alg,
                          access_token=access_token)
        self.access_token = access_token
        self._key = key
        self._clock = clock
        self._nonces: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def jkt(self) -> str:
        """The key's RFC 7638 thumbprint: the ``cnf.jkt`` of the tokens bound to it."""
        return self._key.thumbprint()

    def nonce_for(self, url: str | httpx2.URL) -> str | None:
        """The last nonce the server at ``url``'s origin sent, if any."""
        return self._nonces.get(origin_of(str(url)))

    def auth_flow(self, request: httpx2.Request
                  ) -> Generator[httpx2.Request, httpx2.Response, None]:
        origin = origin_of(str(request.url))
        with self._lock:
            sent_nonce = self._nonces.get(origin)
        token = self.access_token  # the same token on the retry, whatever a refresh does
        self._sign(request, token, sent_nonce)
        response = yield request
        new_nonce = response.headers.get("DPoP-Nonce")
        if not new_nonce:
            return
        with self._lock:
            self._nonces[origin] = new_nonce
        # Once only: a server that refuses a proof carrying the nonce it just sent is not
        # asking for a nonce, and a loop would never end.
        if response.status_code == 401 and new_nonce != sent_nonce \
                and _asks_for_nonce(response):
            self._sign(request, token, new_nonce)
            yield request

    def _sign(self, request: httpx2.Request, token: str, nonce: str | None) -> None:
        request.headers["Authorization"] = f"DPoP {token}"
        request.headers["DPoP"] = create_dpop_proof(
            self._key, method=request.method, url=str(request.url), access_token=token,
            nonce=nonce, alg=self.alg, issued_at=int(self._clock()))


def mission_mcp_client(url: str, auth: DPoPAuth, *,
                       timeout: httpx2.Timeout = DEFAULT_TIMEOUT, **options: Any) -> Client:
    """An ``mcp`` :class:`~mcp.Client` for the streamable HTTP endpoint ``url`` whose every
    request carries ``auth``; ``options`` go to ``Client`` (e.g. ``read_timeout_seconds``).
    The HTTP client lives as long as the ``async with`` block of the returned client."""
    return Client(_dpop_transport(url, auth, timeout), **options)


@asynccontextmanager
async def _dpop_transport(url: str, auth: DPoPAuth,
                          timeout: httpx2.Timeout) -> AsyncIterator[TransportStreams]:
    """``streamable_http_client`` over an ``httpx2.AsyncClient`` opened and closed with the
    transport (the SDK leaves a client it is given open)."""
    async with httpx2.AsyncClient(auth=auth, timeout=timeout) as http, \
            streamable_http_client(url, http_client=http) as streams:
        yield streams


def _asks_for_nonce(response: httpx2.Response) -> bool:
    """RFC 9449 section 9: a challenge with ``error="use_dpop_nonce"`` (an error only the
    ``DPoP`` scheme defines; one header line may hold several challenges)."""
    return any(_NONCE_ERROR.search(value) is not None
               for value in response.headers.get_list("WWW-Authenticate"))
