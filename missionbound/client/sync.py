"""The agent SDK, synchronous: the same client as :mod:`missionbound.client.agent` for
scripts and agents that do not run an event loop.

Each :class:`MissionClient` runs its :class:`~missionbound.client.agent.AsyncMissionClient`
on an event loop of its own in a background (daemon) thread, reached through an ``anyio``
blocking portal, so the two cannot disagree: the sync methods are the async ones, waited
for. Close the client (or use ``with``) to close its connections and stop that thread.

::

    with MissionClient("http://127.0.0.1:8000", "demo-agent",
                       client_secret="demo-agent-secret") as client:
        pending = client.submit_intent(intent, login_hint="alice")
        print("approve at", pending.consent_url)
        mission = client.wait_for_approval(pending)
        invoices = mission.request("GET", "http://127.0.0.1:8000/demo/erp/invoices").json()
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, Final, ParamSpec, TypeVar

import anyio
import httpx
from anyio.from_thread import BlockingPortal
from joserfc.jwk import Key

from missionbound.client.agent import AsyncMission, AsyncMissionClient
from missionbound.client.callback import wait_for_callback
from missionbound.client.oauth import DEFAULT_REDIRECT_URI, PendingMission, TokenSet
from missionbound.client.tools import AsyncLocalTools, AsyncMcpTools, PepCredentials, Permit

P = ParamSpec("P")
T = TypeVar("T")
PORTAL_START_SECONDS: Final = 10.0


class _EventLoopThread:
    """An event loop of its own in a daemon thread, reached through an anyio blocking
    portal. A daemon thread, unlike anyio's ``start_blocking_portal`` (whose worker the
    interpreter joins at exit), so a script that never closes its client still exits."""

    def __init__(self) -> None:
        started: Future[BlockingPortal] = Future()
        self._thread = threading.Thread(target=anyio.run, args=(self._serve, started),
                                        name="missionbound-client", daemon=True)
        self._thread.start()
        self.portal = started.result(timeout=PORTAL_START_SECONDS)

    @staticmethod
    async def _serve(started: Future[BlockingPortal]) -> None:
        async with BlockingPortal() as portal:
            started.set_result(portal)
            await portal.sleep_until_stopped()

    def stop(self) -> None:
        self.portal.call(self.portal.stop, True)  # cancel what still runs there
        self._thread.join(PORTAL_START_SECONDS)


class _OnPortal:
    """Calls coroutine functions on one blocking portal and waits for them."""

    def __init__(self, portal: BlockingPortal) -> None:
        self._portal = portal

    def _wait(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        return self._portal.call(lambda: fn(*args, **kwargs))


class MissionClient(_OnPortal):
    """One OAuth client of a Mission-bound AS; see
    :class:`~missionbound.client.agent.AsyncMissionClient` for every argument."""

    def __init__(self, issuer: str, client_id: str, *, client_secret: str | None = None,
                 client_key: Key | None = None, redirect_uri: str = DEFAULT_REDIRECT_URI,
                 dpop_key: Key | None = None, timeout: float = 10.0) -> None:
        # The async client first: a bad argument then leaves no event-loop thread behind.
        self.aio = AsyncMissionClient(issuer, client_id, client_secret=client_secret,
                                      client_key=client_key, redirect_uri=redirect_uri,
                                      dpop_key=dpop_key, timeout=timeout)
        self._loop = _EventLoopThread()
        self._closed = False
        super().__init__(self._loop.portal)

    def __enter__(self) -> MissionClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP client and stop the background event loop; again is a no-op."""
        if self._closed:
            return
        self._closed = True
        try:
            self._wait(self.aio.aclose)
        finally:
            self._loop.stop()

    @property
    def issuer(self) -> str:
        return self.aio.issuer

    @property
    def client_id(self) -> str:
        return self.aio.client_id

    @property
    def jkt(self) -> str:
        return self.aio.jkt

    def metadata(self) -> dict[str, Any]:
        return self._wait(self.aio.metadata)

    def submit_intent(self, intent: Mapping[str, Any] | str, *,
                      login_hint: str | None = None,
                      authorization_details: Sequence[Mapping[str, Any]] | None = None,
                      resources: Sequence[str] = (), scope: str | None = None
                      ) -> PendingMission:
        """Push a Mission Intent; see :meth:`AsyncMissionClient.submit_intent`."""
        return self._wait(self.aio.submit_intent, intent, login_hint=login_hint,
                          authorization_details=authorization_details, resources=resources,
                          scope=scope)

    def complete(self, pending: PendingMission, callback_url: str) -> Mission:
        """Redeem the authorization response; see :meth:`AsyncMissionClient.complete`."""
        return Mission(self, self._wait(self.aio.complete, pending, callback_url))

    def wait_for_approval(self, pending: PendingMission, *, timeout: float = 300.0
                          ) -> Mission:
        """Listen on the redirect URI, then complete; see
        :meth:`AsyncMissionClient.wait_for_approval`. The listener runs in the calling
        thread, so Ctrl-C stops the wait at once."""
        callback_url = wait_for_callback(pending.redirect_uri, timeout=timeout,
                                         state=pending.state)
        return self.complete(pending, callback_url)

    def exchange(self, subject_token: str, *, resource: str | None = None,
                 scope: Sequence[str] | None = None) -> TokenSet:
        """As a delegate; see :meth:`AsyncMissionClient.exchange`."""
        return self._wait(self.aio.exchange, subject_token, resource=resource, scope=scope)

    def request(self, method: str, url: str, *, access_token: str, json: Any = None,
                params: Mapping[str, str] | None = None) -> httpx.Response:
        """A DPoP-bound request; see :meth:`AsyncMissionClient.request`."""
        return self._wait(self.aio.request, method, url, access_token=access_token,
                          json=json, params=params)


class Mission(_OnPortal):
    """One approved Mission in the agent's hands; see
    :class:`~missionbound.client.agent.AsyncMission`."""

    def __init__(self, client: MissionClient, aio: AsyncMission) -> None:
        super().__init__(client._portal)
        self.client = client
        self.aio = aio

    @property
    def mission_id(self) -> str:
        return self.aio.mission_id

    @property
    def tokens(self) -> TokenSet:
        return self.aio.tokens

    def access_token(self) -> str:
        return self._wait(self.aio.access_token)

    def refresh(self) -> TokenSet:
        return self._wait(self.aio.refresh)

    def narrow(self, resource: str, *, scope: Sequence[str] | None = None) -> TokenSet:
        return self._wait(self.aio.narrow, resource, scope=scope)

    def delegate(self, delegate: MissionClient, *, resource: str,
                 scope: Sequence[str] | None = None) -> TokenSet:
        """``delegate`` exchanges this Mission's access token for its own narrowed one."""
        return delegate.exchange(self.access_token(), resource=resource, scope=scope)

    def request(self, method: str, url: str, *, json: Any = None,
                params: Mapping[str, str] | None = None) -> httpx.Response:
        return self._wait(self.aio.request, method, url, json=json, params=params)

    def permit(self, resource: str, action: str, arguments: Mapping[str, Any], *,
               pep: PepCredentials, capability_source: Mapping[str, Any] | None = None
               ) -> Permit:
        return self._wait(self.aio.permit, resource, action, arguments, pep=pep,
                          capability_source=capability_source)

    def local_tools(self, resource: str, *, pep: PepCredentials) -> LocalTools:
        return LocalTools(self._portal, self.aio.local_tools(resource, pep=pep))

    @contextmanager
    def mcp(self, url: str) -> Iterator[McpTools]:
        """An MCP session with the gateway at ``url``, open for the ``with`` block."""
        with self._portal.wrap_async_context_manager(self.aio.mcp(url)) as tools:
            yield McpTools(self._portal, tools)

    def __repr__(self) -> str:
        return f"Mission({self.mission_id!r}, expires_at={self.tokens.expires_at})"


class LocalTools(_OnPortal):
    """The agent's own tools, run through the local tool runner; see
    :class:`~missionbound.client.tools.AsyncLocalTools`."""

    def __init__(self, portal: BlockingPortal, aio: AsyncLocalTools) -> None:
        super().__init__(portal)
        self.aio = aio

    def register(self, name: str, fn: Callable[..., Any], *, consequential: bool = True,
                 definition: Mapping[str, Any] | None = None) -> None:
        self.aio.register(name, fn, consequential=consequential, definition=definition)

    def permit(self, name: str, arguments: Mapping[str, Any]) -> Permit:
        return self._wait(self.aio.permit, name, arguments)

    def run(self, name: str, arguments: Mapping[str, Any], *, permit: Permit | None = None
            ) -> Any:
        return self._wait(self.aio.run, name, arguments, permit=permit)

    def close(self) -> None:
        self.aio.close()

    def __enter__(self) -> LocalTools:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class McpTools(_OnPortal):
    """An MCP session through the gateway; see :class:`~missionbound.client.tools.AsyncMcpTools`."""

    def __init__(self, portal: BlockingPortal, aio: AsyncMcpTools) -> None:
        super().__init__(portal)
        self.aio = aio

    def list_tools(self) -> list[str]:
        return self._wait(self.aio.list_tools)

    def definitions(self) -> dict[str, dict[str, Any]]:
        return self._wait(self.aio.definitions)

    def call_tool(self, name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
        return self._wait(self.aio.call_tool, name, arguments)
