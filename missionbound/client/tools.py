"""What an agent does with its Mission at runtime: ask the PDP for permits, run its own
tools through the local tool runner, call MCP tools through the Mission-aware gateway.

- :func:`ask_for_permit`: an AuthZEN Access Evaluation (PROFILE.md section 12) about one
  action with exactly its arguments, built from the agent's own access token *after*
  verifying it with the AS's keys (the same request body a Resource Server builds:
  :func:`missionbound.enforce.rs.pdp_client.mission_evaluation`). The PDP answers PEPs
  only: the call authenticates with a PEP credential (:class:`PepCredentials`; the demo
  tenant's ``demo-rs``), as the process hosting the agent's local tools is one.
- :class:`AsyncLocalTools`: :class:`missionbound.enforce.local.LocalToolRunner` for one
  resource, verifying permits with the AS's published keys, spending each once (in this
  process's memory: one agent process is one runner), bound to the agent's DPoP key, and
  reporting Execution Evidence to the PDP's intake (``POST /mission/executions``).
- :class:`AsyncMcpTools`: an MCP session through the gateway with ``DPoPAuth``; the
  gateway's refusals (JSON-RPC ``-32001`` with ``data.reason``) become typed errors.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import anyio
import httpx
import httpx2
from mcp import Client
from mcp.shared.exceptions import MCPError

from missionbound.client.errors import (
    InvalidToolArguments,
    MissionClientError,
    PdpUnavailable,
    PermitRefused,
    ToolNotGranted,
    error_for,
)
from missionbound.client.mcp_auth import DPoPAuth, mission_mcp_client
from missionbound.client.oauth import json_or_none, refusal
from missionbound.enforce.local import (
    ExecutionSuppressed,
    LocalToolRunner,
    Outcome,
    PermitRequired,
    UnknownTool,
    jwt_permit_verifier,
)
from missionbound.enforce.mcp.definitions import definition_of, list_all_tools
from missionbound.enforce.mcp.errors import TOOL_REFUSED
from missionbound.enforce.mcp.pep import MemoryPermitStore
from missionbound.enforce.rs.pdp_client import (
    EVALUATION_PATH,
    PdpClient,
    ReportFailed,
    mission_evaluation,
)
from missionbound.mission.canonical import digest_json
from missionbound.mission.errors import InvalidRequest
from missionbound.protocol.access_tokens import (
    WRONG_AUDIENCE,
    AccessTokenRejected,
    verify_access_token,
)
from missionbound.protocol.permits import PERMIT_CONSUMED
from missionbound.protocol.tool_manifest import CapabilitySource, ToolDefinitionsUnavailable

if TYPE_CHECKING:
    from missionbound.client.agent import AsyncMission

# The AuthZEN resource type of an agent's permit requests (the PDP decides on the Mission
# resource in properties.audience; the type names the object for resource policies).
TOOL_RESOURCE_TYPE: Final = "tool"
INVALID_PARAMS: Final = -32602  # JSON-RPC: the gateway's schema check
# How long a reported permit stays spent in memory: past any permit's lifetime (the PDP
# issues them for about a minute), after which its expiry refuses it anyway.
SPENT_PERMIT_MEMORY: Final = timedelta(hours=1)


@dataclass(frozen=True)
class PepCredentials:
    """A PEP's credential at the PDP (HTTP Basic, docs/authzen.md "Who may call"): a
    registered client whose ``audiences`` include the resource asked about."""

    client_id: str
    client_secret: str = field(repr=False)


@dataclass(frozen=True)
class Permit:
    """The PDP's permit for one action with exactly :attr:`arguments`. :attr:`token` is the
    signed single-use permit (``mission-permit+jwt``) a tool runtime verifies; the PDP
    issues one for writes and other consequential effects, and none for plain reads."""

    evaluation_id: str
    resource: str
    action: str
    arguments: Mapping[str, Any]
    parameter_digest: str
    token: str | None = field(default=None, repr=False)
    conditions: Mapping[str, Any] = field(default_factory=dict)


async def ask_for_permit(mission: AsyncMission, resource: str, action: str,
                         arguments: Mapping[str, Any], *, pep: PepCredentials,
                         capability_source: Mapping[str, Any] | None = None) -> Permit:
    """Ask the PDP whether the agent may do ``action`` on ``resource`` with ``arguments``.
    A deny raises its typed error (``ToolNotGranted``, ``ConstraintExceeded``,
    ``MissionInactive``, ...) with the PDP's ``evaluation_id``; an unreachable PDP raises
    :class:`PdpUnavailable`. ``capability_source`` is for tools bound to a definition
    digest at approval (what an MCP gateway sends, docs/mcp.md)."""
    client = mission.client
    access_token = await mission.access_token()
    keys = await client.keys()
    try:
        token = await anyio.to_thread.run_sync(partial(
            verify_access_token, access_token, keys=keys, issuer=client.issuer,
            audience=resource))
    except AccessTokenRejected as exc:
        if exc.reason == WRONG_AUDIENCE:  # the Mission grants nothing on that resource
            raise ToolNotGranted(f"the Mission's token is not for {resource}",
                                 error=exc.reason) from None
        raise MissionClientError(f"the Mission's access token does not verify with the "
                                 f"AS's keys: {exc.description}", error=exc.reason) from None
    parameters = copy.deepcopy(dict(arguments))
    try:
        digest = digest_json(parameters)
    except InvalidRequest as exc:
        raise InvalidToolArguments(f"the arguments cannot be digested: {exc}") from None
    body = mission_evaluation(
        token=token, action=action, parameters=parameters, parameter_digest=digest,
        resource={"type": TOOL_RESOURCE_TYPE, "id": action,
                  "properties": {"audience": resource}},
        context={"capability_source": dict(capability_source)} if capability_source else None)
    endpoint = client.issuer + EVALUATION_PATH
    try:
        response = await client.http.post(endpoint, json=body,
                                            auth=(pep.client_id, pep.client_secret))
    except httpx.HTTPError as exc:
        raise PdpUnavailable(f"cannot reach the PDP at {endpoint}: "
                             f"{type(exc).__name__}") from None
    if response.status_code >= 500:
        raise PdpUnavailable(f"the PDP answered HTTP {response.status_code}",
                             status=response.status_code)
    answer = json_or_none(response)
    if response.status_code != 200 or not isinstance(answer, dict) \
            or not isinstance(answer.get("decision"), bool):
        raise MissionClientError(f"the PDP refused the request (HTTP {response.status_code}): "
                                 f"{str(answer)[:200]}", status=response.status_code)
    context = answer.get("context") or {}
    if not answer["decision"]:
        raise error_for(f"the PDP denied {action} on {resource}",
                        reason=str(context.get("reason", "denied")),
                        evaluation_id=context.get("evaluation_id"))
    return Permit(evaluation_id=str(context.get("evaluation_id")), resource=resource,
                  action=action, arguments=parameters, parameter_digest=digest,
                  token=context.get("permit"), conditions=context.get("conditions") or {})


class PdpExecutionReporter:
    """The local runner's evidence recorder for a runner outside the PDP's process: each
    outcome goes to the PDP's execution intake over HTTP with the PEP credential, which
    records it against the permit's Decision Evidence (docs/permits.md). Retries once on
    no answer or a 5xx (the intake applies a report once).

    Every report is the permit's final disposition, so the permit is also spent in
    ``permits`` (the runner's single-use ledger): a permit refused for other arguments
    cannot run later, as the corrected call needs a fresh permit (docs/local-tools.md). A
    ``permit_consumed`` refusal is not reported: the permit's disposition is its earlier
    run's, and the intake would refuse a second one."""

    def __init__(self, pdp: PdpClient, permits: MemoryPermitStore) -> None:
        self._pdp = pdp
        self._permits = permits

    def record_execution(self, *, mission_id: str, evaluation_id: str, audience: str,
                         authorized_parameter_digest: str | None,
                         effective_parameter_digest: str | None, outcome: Outcome,
                         error: str | None, emitter_id: str, now: datetime,
                         tool_id: str | None = None) -> Any:
        self._permits.consume(evaluation_id, now + SPENT_PERMIT_MEMORY)
        if error == PERMIT_CONSUMED:
            return None
        for attempt in range(2):
            try:
                return self._pdp.report(evaluation_id=evaluation_id, outcome=outcome,
                                        error=error,
                                        effective_parameter_digest=effective_parameter_digest)
            except ReportFailed as failed:
                if not failed.retryable or attempt == 1:
                    raise MissionClientError(f"the PDP did not take the execution report of "
                                             f"{evaluation_id}: {failed}") from None
        return None


class AsyncLocalTools:
    """The agent's own tools for ``resource`` (the Mission resource they are), run only
    through :class:`~missionbound.enforce.local.LocalToolRunner`. Register each tool, then
    :meth:`run`: without a permit given, the PDP is asked first for exactly these
    arguments; a refused permit raises :class:`ArgumentsChanged` (``parameter_mismatch``) or
    :class:`PermitRefused`, and the tool is not called."""

    def __init__(self, mission: AsyncMission, resource: str, *, pep: PepCredentials,
                 emitter_id: str | None = None) -> None:
        client = mission.client
        self.mission = mission
        self.resource = resource
        self._pep = pep
        self._pdp = PdpClient(client.issuer, client_id=pep.client_id,
                              client_secret=pep.client_secret)
        permits = MemoryPermitStore()
        self._sources: dict[str, dict[str, str] | None] = {}
        self._runner = LocalToolRunner(
            resource,
            jwt_permit_verifier(key_for=client.cached_keys(), issuer=client.issuer,
                                consume=permits.consume),
            PdpExecutionReporter(self._pdp, permits), presenter_key=client.dpop_key,
            emitter_id=emitter_id or f"{client.client_id}-local-tools")

    def register(self, name: str, fn: Callable[..., Any], *, consequential: bool = True,
                 definition: Mapping[str, Any] | None = None) -> None:
        """Register ``fn`` as tool ``name`` (the action name the Mission grants).

        ``definition``: the tool's definition object (as an MCP ``tools/list`` carries it,
        :meth:`AsyncMcpTools.definitions`) when the Mission bound this tool to its
        definition at approval (tool-manifest binding, docs/mcp.md): every permit request
        then names it (``capability_source``), and one the approver never saw is refused
        ``capability_drift``."""
        source = (CapabilitySource.for_tool(self.resource, name, definition).to_json()
                  if definition is not None else None)
        self._runner.register(name, fn, consequential=consequential)
        self._sources[name] = source

    async def permit(self, name: str, arguments: Mapping[str, Any]) -> Permit:
        """The PDP's permit for running ``name`` with exactly ``arguments``."""
        return await self.mission.permit(self.resource, name, arguments, pep=self._pep,
                                         capability_source=self._sources.get(name))

    async def run(self, name: str, arguments: Mapping[str, Any], *,
                  permit: Permit | None = None) -> Any:
        """Run tool ``name``; returns what it returns (in a worker thread)."""
        if permit is None and self._runner.tools.get(name):
            permit = await self.permit(name, arguments)
        token = permit.token if permit is not None else None
        try:
            return await anyio.to_thread.run_sync(
                partial(self._runner.run, name, arguments, permit=token))
        except ExecutionSuppressed as refused:
            raise error_for(f"the runner refused the permit for {name}: {refused}",
                            reason=refused.error,
                            evaluation_id=permit.evaluation_id if permit else None) from None
        except PermitRequired as missing:
            raise PermitRefused(str(missing), reason="permit_required") from None
        except UnknownTool as unknown:
            raise MissionClientError(str(unknown), error=UnknownTool.error) from None
        except InvalidRequest as invalid:  # arguments that are not a JSON object
            raise InvalidToolArguments(str(invalid), error=invalid.error) from None

    def close(self) -> None:
        """Close the HTTP client that reports executions to the PDP."""
        self._pdp.close()

    async def __aenter__(self) -> AsyncLocalTools:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class AsyncMcpTools:
    """An MCP session through the Mission-aware gateway. :meth:`call_tool` returns the
    tool's structured result (or ``{"content": [...]}``) and raises the gateway's refusal
    as its typed error; the access token is refreshed before each request as needed."""

    def __init__(self, mission: AsyncMission, session: Client, auth: DPoPAuth) -> None:
        self.mission = mission
        self._session = session
        self._auth = auth

    async def list_tools(self) -> list[str]:
        """The names of the tools the gateway shows this Mission (its grants only)."""
        return list(await self.definitions())

    async def definitions(self) -> dict[str, dict[str, Any]]:
        """Tool name -> its definition object as the gateway lists it (name, description,
        ``inputSchema``, ...): what the Mission's tool-manifest binding digests. Every page
        of ``tools/list``, fresh (the client's cache is not used)."""
        self._auth.access_token = await self.mission.access_token()
        try:
            tools = await list_all_tools(self._session)
        except MCPError as exc:
            raise _mcp_error(exc, "tools/list") from None
        except ToolDefinitionsUnavailable as exc:
            raise MissionClientError(f"tools/list: {exc}") from None
        return {tool.name: definition_of(tool) for tool in tools}

    async def call_tool(self, name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
        self._auth.access_token = await self.mission.access_token()
        try:
            result = await self._session.call_tool(name, dict(arguments))
        except MCPError as exc:
            raise _mcp_error(exc, name) from None
        if result.is_error:
            text = " ".join(getattr(part, "text", "") for part in result.content)
            raise MissionClientError(f"tool {name} failed: {text[:300]}")
        if result.structured_content is not None:
            return dict(result.structured_content)
        return {"content": [part.model_dump(mode="json") for part in result.content]}


@asynccontextmanager
async def open_mcp(mission: AsyncMission, url: str) -> AsyncIterator[AsyncMcpTools]:
    """Open an MCP session with the gateway at ``url``. What ends the session reaches the
    caller as one exception, never an ``ExceptionGroup`` of the mcp client's task groups:
    an exception of the caller's own block as it was raised, a gateway refusing the token
    before any JSON-RPC (a revoked Mission: 401 ``invalid_token``) as its typed error, a
    gateway that cannot be reached or does not speak MCP there as
    :class:`MissionClientError`."""
    auth = DPoPAuth(await mission.access_token(), mission.client.dpop_key)
    raised: Exception | None = None  # by the caller's block, given back after the session
    try:
        async with mission_mcp_client(url, auth) as session:
            try:
                yield AsyncMcpTools(mission, session, auth)
            except Exception as exc:  # cancellation and KeyboardInterrupt pass through
                raised = exc
    except Exception as exc:
        raise _session_error(exc, url) from None
    if raised is not None:
        raise raised


def _session_error(exc: Exception, url: str) -> BaseException:
    """The one error that says why the session with the gateway at ``url`` ended."""
    leaves = _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    for leaf in leaves:
        if isinstance(leaf, MissionClientError):
            return leaf
        if isinstance(leaf, httpx2.HTTPStatusError):
            return _http_refusal(leaf.response, url)
        if isinstance(leaf, MCPError):
            return _mcp_error(leaf, f"the MCP session at {url}")
        if isinstance(leaf, httpx2.TransportError):
            return MissionClientError(f"cannot reach the gateway at {url}: "
                                      f"{type(leaf).__name__}")
    return leaves[0] if len(leaves) == 1 else exc


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _mcp_error(exc: MCPError, what: str) -> MissionClientError:
    data = exc.error.data if isinstance(exc.error.data, dict) else {}
    if exc.error.code == TOOL_REFUSED:
        return error_for(f"the gateway refused {what}: {exc.error.message}",
                         error="tool_refused", reason=data.get("reason"),
                         evaluation_id=data.get("evaluation_id"))
    if exc.error.code == INVALID_PARAMS:
        return InvalidToolArguments(f"{what}: {exc.error.message}", error="invalid_params")
    return MissionClientError(f"{what}: {exc.error.message} (JSON-RPC {exc.error.code})")


def _http_refusal(response: httpx2.Response, url: str) -> MissionClientError:
    return refusal(response.status_code, json_or_none(response),
                   what=f"the gateway at {url}")
