"""How far the ``mcp`` SDK's own OAuth client (``mcp.client.auth.OAuthClientProvider``, mcp
2.3.0) gets against our Authorization Server and the MCP gateway at ``<issuer>/demo/mcp``,
on a real ``missionbound serve`` process.

What works (asserted here):

1. the gateway's 401 carries ``resource_metadata`` (RFC 9728 section 5.1), and the SDK reads
   the protected resource metadata from exactly that URL, accepts its ``resource`` as the
   server it talks to, and takes the first of its ``authorization_servers``;
2. it reads our RFC 8414 metadata at ``/.well-known/oauth-authorization-server`` and
   accepts its ``issuer`` (SEP-2468 / RFC 8414 section 3.3);
3. it registers itself at our open Dynamic Client Registration endpoint (RFC 7591);
4. it builds an authorization URL for our ``authorization_endpoint`` with PKCE S256, a
   ``state`` and ``resource`` = the gateway (RFC 8707).

What does not (asserted too, so a future SDK that changes shows here):

5. that authorization request is a front-channel one: no PAR (RFC 9126), no
   ``mission_intent``, no ``authorization_details``; our AS requires pushed requests
   (``require_pushed_authorization_requests``) and refuses it with a page, so no code and
   no token come out of the SDK's flow;
6. even with a Mission token obtained by our own flow handed to it in its token storage,
   the SDK sends it as ``Authorization: Bearer`` with no DPoP proof: the gateway refuses a
   DPoP-bound token used as a bearer token (RFC 9449 section 7.1), and the SDK starts its
   authorization flow over. (It also models ``token_type`` as ``Bearer`` only, so a token
   response with ``token_type: DPoP`` would not even parse: checked on the model.)

So an agent uses our own flow (PAR + DPoP, see tests/e2e/test_mcp_gateway_e2e.py) and
:class:`missionbound.client.mcp_auth.DPoPAuth` on the SDK's transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)
from pydantic import AnyUrl, ValidationError

from tests.e2e.test_replicas import grant_through
from tests.e2e_support import ServerHandle, running_server

MCP_PATH = "/demo/mcp"
REDIRECT_URI = "http://127.0.0.1:8765/callback"
TIMEOUT = 20.0


class MemoryStorage:
    """The SDK's ``TokenStorage`` protocol, in memory."""

    def __init__(self, tokens: OAuthToken | None = None) -> None:
        self.tokens = tokens
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class StopAtAuthorization(Exception):
    """Raised by the callback handler: the flow goes no further than the AS's answer."""


class Recorder:
    """What the SDK sent, in order, and what the user agent met at the authorization URL."""

    def __init__(self) -> None:
        self.exchanges: list[tuple[str, str, int, httpx2.Headers, httpx2.Headers]] = []
        self.authorization_urls: list[str] = []
        self.authorization_answers: list[httpx.Response] = []

    async def on_response(self, response: httpx2.Response) -> None:
        request = response.request
        self.exchanges.append((request.method, str(request.url), response.status_code,
                               request.headers, response.headers))

    async def redirect(self, url: str) -> None:
        self.authorization_urls.append(url)

    async def callback(self) -> AuthorizationCodeResult:
        # The user agent follows the authorization URL, as a browser would.
        answer = httpx.get(self.authorization_urls[-1], follow_redirects=False, timeout=TIMEOUT)
        self.authorization_answers.append(answer)
        raise StopAtAuthorization(answer.status_code)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    with running_server(tmp_path_factory.mktemp("sdk-oauth")) as handle:
        yield handle


def run_sdk(url: str, storage: MemoryStorage, recorder: Recorder) -> BaseException:
    """Connect the SDK's client with its OAuth provider to ``url``; the error it ends with."""
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            redirect_uris=[AnyUrl(REDIRECT_URI)], client_name="mcp SDK OAuth client (test)",
            grant_types=["authorization_code", "refresh_token"],
            token_endpoint_auth_method="client_secret_basic"),
        storage=storage, redirect_handler=recorder.redirect, callback_handler=recorder.callback)

    async def connect() -> None:
        async with httpx2.AsyncClient(auth=provider, timeout=TIMEOUT,
                                      event_hooks={"response": [recorder.on_response]}) as http, \
                Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            await client.list_tools()

    try:
        asyncio.run(asyncio.wait_for(connect(), TIMEOUT))
    except BaseException as exc:  # an ExceptionGroup from the SDK's task group, usually
        return exc
    pytest.fail("the SDK connected: update this test and docs/mcp.md")


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc] + (leaves(exc.__cause__) if exc.__cause__ is not None else [])


def test_the_sdk_discovers_registers_and_is_refused_at_the_front_channel(
        server: ServerHandle) -> None:
    issuer = server.base_url
    resource = issuer + MCP_PATH
    recorder = Recorder()
    storage = MemoryStorage()
    error = run_sdk(resource, storage, recorder)
    assert any(isinstance(leaf, StopAtAuthorization) for leaf in leaves(error)), error

    (method, url, status, _, challenge_headers), *discovery = recorder.exchanges
    # The first MCP request, without credentials: our 401 points at the metadata.
    assert (method, url, status) == ("POST", resource, 401)
    challenges = challenge_headers.get_list("www-authenticate")
    metadata_url = f"{issuer}/.well-known/oauth-protected-resource{MCP_PATH}"
    assert any(f'resource_metadata="{metadata_url}"' in value for value in challenges), challenges
    # 1-3: the resource's metadata from that very URL, then the AS's, then registration.
    assert [(m, u, s) for m, u, s, _, _ in discovery] == [
        ("GET", metadata_url, 200),
        ("GET", f"{issuer}/.well-known/oauth-authorization-server", 200),
        ("POST", f"{issuer}/register", 201),
    ]
    assert storage.client_info is not None and storage.client_info.client_id
    # 4: the authorization request it built.
    [authorization_url] = recorder.authorization_urls
    parts = urlsplit(authorization_url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{issuer}/authorize"
    assert query["client_id"] == storage.client_info.client_id
    assert query["resource"] == resource
    assert query["code_challenge_method"] == "S256" and query["code_challenge"]
    assert query["redirect_uri"] == REDIRECT_URI and query["state"]
    # 5: a front-channel request with no Mission: refused by a page, no code (no redirect).
    assert "request_uri" not in query and "mission_intent" not in query
    assert "authorization_details" not in query
    [answer] = recorder.authorization_answers
    assert answer.status_code == 400, answer.text[:500]
    assert "requires pushed authorization requests" in answer.text


def test_the_sdk_sends_a_mission_token_as_a_bearer_token_without_a_proof(
        server: ServerHandle) -> None:
    issuer = server.base_url
    resource = issuer + MCP_PATH
    with httpx.Client(base_url=issuer, follow_redirects=False, timeout=TIMEOUT) as http:
        granted = grant_through(http, issuer)
    recorder = Recorder()
    storage = MemoryStorage(OAuthToken(access_token=granted.access_token, expires_in=300))
    error = run_sdk(resource, storage, recorder)
    assert any(isinstance(leaf, StopAtAuthorization) for leaf in leaves(error)), error

    method, url, status, sent, answered = recorder.exchanges[0]
    assert (method, url) == ("POST", resource)
    assert sent["authorization"] == f"Bearer {granted.access_token}"
    assert "dpop" not in sent  # no proof: the SDK has no DPoP key
    # 6: refused at once, by the RS checks, before any JSON-RPC; the SDK then starts over.
    assert status == 401
    challenges = " ".join(answered.get_list("www-authenticate"))
    assert "DPoP" in challenges and 'error="invalid_token"' in challenges, challenges
    assert recorder.authorization_urls, "the SDK did not restart its authorization flow"


def test_the_sdk_token_model_has_no_dpop_token_type() -> None:
    # RFC 9449 section 5: a DPoP-bound token is issued with token_type "DPoP".
    with pytest.raises(ValidationError):
        OAuthToken.model_validate({"access_token": "x", "token_type": "DPoP"})
