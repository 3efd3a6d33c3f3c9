"""The Mission enforcement point for MCP tool calls (PROFILE.md section 13; runtime-digest
sections 2.5, 4.3, 4.5, 5.8), shared by the gateway (:mod:`.gateway`) and the in-process
middleware (:mod:`.middleware`).

Per request: :meth:`McpPep.authenticate` (the Resource Server kit's RS-B credential checks:
a DPoP-bound Mission token for this resource, before any JSON-RPC is read). Per
``tools/list``: :meth:`McpPep.visible_tools`, the upstream's tools cut to the actions the
token's ``authorization_details`` grant here (exposure only: a tool left out can still be
called by name, and the PDP then refuses it). Per ``tools/call``,
:meth:`McpPep.authorize_call`, in order:

1. the arguments are a JSON object without non-integer numbers (decimals travel as
   strings); for a tool this token may see, they also fit the tool's ``inputSchema`` and
   name no member it does not declare (the SDK's servers drop unknown arguments silently,
   so the PDP would decide on a member that never reaches the tool): else ``-32602``. A tool
   the token may not see is not checked against its schema, so the answer tells nothing of
   tools the agent was not shown;
2. the PDP's decision, asked every time, also for tools not granted or unknown (it denies
   them and keeps Decision Evidence): the tool as the action, the arguments as the
   parameters with their ``parameter_digest``, ``context.capability_source`` the digest of
   the tool's definition as the upstream lists it *now* (so a changed definition is
   ``capability_drift``), Mission, actor and credential from the verified token only;
3. the answer checked (:func:`~missionbound.enforce.rs.pdp_client.judge`), then the signed
   permit verified as the tool runtime would: this resource, this tool, exactly these
   arguments, the token's key, and spent once in a bounded in-memory single-use store
   (the gateway asked for it and is its only holder; a permit never leaves it). A permit
   refused here is reported ``suppressed``, which gives back what it reserved.

:meth:`McpPep.call_tool` wraps the three around the upstream call and reports its outcome
(``completed``, or ``failed`` for a tool error, a JSON-RPC error or no answer) to the PDP's
execution intake, and counts it in the metrics.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final, Protocol, cast

import anyio
import anyio.to_thread
import structlog
from jsonschema.validators import validator_for  # type: ignore[import-untyped]
from mcp_types import CallToolResult, Tool
from starlette.requests import Request

from missionbound.enforce.local import PermitVerifierLike, jwt_permit_verifier
from missionbound.enforce.mcp.definitions import definition_of
from missionbound.enforce.mcp.errors import InvalidToolArguments, ToolRefused, UpstreamFailed
from missionbound.enforce.mcp.metrics import GatewayMetrics
from missionbound.enforce.rs.guard import MissionGuard
from missionbound.enforce.rs.pdp_client import (
    PDP_UNREACHABLE,
    PdpDenied,
    PdpUnavailable,
    PermitSuppressed,
    judge,
    mission_evaluation,
)
from missionbound.enforce.rs.pdp_gate import send_report
from missionbound.enforce.rs.replay import MemoryReplayCache, ReplayCacheFull
from missionbound.mission.authority import ENTRY_TYPE, Entry
from missionbound.mission.delegation import delegable_entries
from missionbound.protocol.access_tokens import AccessToken
from missionbound.protocol.jwks import JwksUnavailable, KeySource
from missionbound.protocol.permits import (
    DEFAULT_LEEWAY_SECONDS,
    MAX_PERMIT_LIFETIME,
    PermitRefused,
    arguments_digest,
)
from missionbound.protocol.tool_manifest import (
    CapabilitySource,
    ToolDefinitionError,
    operation_ref,
    tool_id,
)

log = structlog.get_logger("missionbound.enforce.mcp")

RESOURCE_TYPE: Final = "mcp_tool"
# The AuthZEN request's bound on names (runtime/request.py MAX_NAME).
MAX_TOOL_NAME: Final = 255
# The metrics label of calls of a tool the upstream does not list (bounded cardinality).
UNLISTED_TOOL: Final = "_unlisted"
# The reason of a call the gateway failed to decide (never the failure's detail).
GATEWAY_ERROR: Final = "gateway_error"
# request.scope key: the verified Mission token of an authenticated MCP request.
TOKEN_KEY: Final = "missionbound.mcp.token"
DEFAULT_WORKER_THREADS: Final = 16
DEFAULT_MAX_PERMITS: Final = 100_000
# The Execution Evidence errors the PDP's intake takes (runtime-digest 3.8); a permit refused
# for any other reason (not a permit of the PDP, keys unavailable) is reported as the
# executor's inability to fulfil it.
_EVIDENCE_ERRORS: Final = frozenset({"parameter_mismatch", "permit_expired", "permit_consumed",
                                     "binding_mismatch", "obligation_unfulfilled"})
_UNFULFILLED: Final = "obligation_unfulfilled"
# How long a spent permit is remembered: past any permit's exp plus the verifier's leeway
# (exp <= iat + 60 s, iat <= now + leeway), after which the verifier refuses it as expired
# before the single-use store is asked.
_PERMIT_MEMORY: Final = MAX_PERMIT_LIFETIME + timedelta(seconds=2 * DEFAULT_LEEWAY_SECONDS + 60)


class PdpLike(Protocol):
    """The PDP as the PEP uses it (:class:`~missionbound.enforce.rs.PdpClient` is one):
    blocking, called in worker threads."""

    def evaluate(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The decision object; raises :class:`PdpUnavailable` when there is none."""
        ...

    def report(self, *, evaluation_id: str, outcome: str, error: str | None = None,
               effective_parameter_digest: str | None = None) -> Any:
        """Execution Evidence to the intake; raises :class:`ReportFailed`."""
        ...


class MemoryPermitStore:
    """Single use of permits in this process: bounded, thread-safe. Full of permits still
    live, it refuses (the call is refused, never a permit forgotten)."""

    def __init__(self, *, max_entries: int = DEFAULT_MAX_PERMITS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._seen = MemoryReplayCache(max_entries=max_entries, clock=clock)

    def consume(self, jti: str, remember_until: datetime) -> bool:
        """True the first time ``jti`` is spent, False ever after (``remember_until`` is the
        verifier's horizon; this store needs only :data:`_PERMIT_MEMORY`)."""
        del remember_until  # longer than needed in memory: see _PERMIT_MEMORY
        try:
            return self._seen.first_use(jti, remember_seconds=_PERMIT_MEMORY.total_seconds())
        except ReplayCacheFull:
            log.warning("mcp_permit_store_full")
            return False

    def __len__(self) -> int:
        return len(self._seen)


@dataclass(frozen=True)
class PermittedCall:
    """A ``tools/call`` the PEP let through: run it with exactly ``arguments``."""

    tool: str
    arguments: dict[str, Any] = field(repr=False)
    parameter_digest: str
    evaluation_id: str | None
    mission_id: str
    # A permit with conditions is a consequential one: its execution is reported.
    reportable: bool


def granted_tools(token: AccessToken, resource: str) -> frozenset[str]:
    """The actions the token's ``authorization_details`` grant at ``resource``; for a
    delegated token only those of entries whose ``delegation`` lets the immediate actor
    (read from ``act``) act at the chain's depth (PROFILE.md section 9)."""
    entries = [entry for entry in token.authorization_details
               if entry.get("type") == ENTRY_TYPE and entry.get("resource") == resource]
    if token.actors:
        entries = list(delegable_entries(cast(list[Entry], entries),
                                         delegate_client_id=token.actors[0].sub,
                                         depth=len(token.actors)).kept)
    granted: set[str] = set()
    for entry in entries:
        actions = entry.get("actions")
        if isinstance(actions, list):
            granted.update(action for action in actions if isinstance(action, str))
    return frozenset(granted)


# Checked schemas and their validators, by the schema's JSON text: checking a schema against
# its metaschema costs far more than checking arguments against it, and a tool's schema
# seldom changes. Bounded (emptied when full) against a server that changes them per call.
_VALIDATORS: dict[str, Any] = {}
_MAX_VALIDATORS = 256


def _validator(input_schema: Mapping[str, Any]) -> Any:
    """The validator of ``input_schema`` in its own dialect, the schema itself checked first
    (raises ``SchemaError``)."""
    key = json.dumps(input_schema, sort_keys=True, separators=(",", ":"), default=str)
    validator = _VALIDATORS.get(key)
    if validator is None:
        validator_class = validator_for(input_schema)
        validator_class.check_schema(input_schema)
        validator = validator_class(input_schema)
        if len(_VALIDATORS) >= _MAX_VALIDATORS:
            _VALIDATORS.clear()
        _VALIDATORS[key] = validator
    return validator


def check_arguments(arguments: Mapping[str, Any], input_schema: Mapping[str, Any]) -> None:
    """``arguments`` fit ``input_schema`` (its own JSON Schema dialect) and name only
    properties it declares; raises :class:`InvalidToolArguments`."""
    declared = input_schema.get("properties")
    declared = declared if isinstance(declared, Mapping) else {}
    undeclared = sorted(name for name in arguments if name not in declared)
    if undeclared:
        raise InvalidToolArguments(f"the tool does not declare the argument "
                                   f"{undeclared[0][:64]!r}")
    try:
        error = next(iter(_validator(input_schema).iter_errors(dict(arguments))), None)
    except Exception as exc:
        # An invalid schema (SchemaError), a $ref that cannot be resolved, a pattern the
        # regex engine refuses: the tool server's fault, said without its detail (a remote
        # $ref may name an internal address).
        log.warning("mcp_input_schema_unusable", detail=f"{type(exc).__name__}: {exc}"[:300])
        raise InvalidToolArguments("the tool's input schema cannot be checked") from None
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "arguments"
        # The location only: the message may echo the caller's values.
        raise InvalidToolArguments(f"the arguments do not fit the tool's input schema at "
                                   f"{where[:100]} ({error.validator})")


class McpPep:
    """The enforcement point of one MCP resource (``resource``: what tokens carry as ``aud``
    and ``authorization_details`` name, and the permits' ``aud``).

    ``guard`` checks the credentials (its ``resource`` must be the same). ``pdp`` decides
    (:class:`PdpLike`). The permits are verified with ``permit_verifier``, by default
    :func:`~missionbound.enforce.local.jwt_permit_verifier` over ``permit_keys`` (the PDP's
    keys) and ``permit_issuer`` (its ``iss``, default: the guard's Mission origin) with a
    :class:`MemoryPermitStore`. ``metrics`` counts every call.
    """

    def __init__(self, *, resource: str, guard: MissionGuard, pdp: PdpLike,
                 permit_keys: KeySource | None = None, permit_issuer: str | None = None,
                 permit_verifier: PermitVerifierLike | None = None,
                 metrics: GatewayMetrics | None = None,
                 worker_threads: int = DEFAULT_WORKER_THREADS,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        if guard.resource != resource:
            raise ValueError(f"the guard protects {guard.resource!r}, not {resource!r}")
        if permit_verifier is None:
            if permit_keys is None:
                raise ValueError("give the PDP's keys (permit_keys) or a permit_verifier")
            permit_verifier = jwt_permit_verifier(
                key_for=permit_keys, issuer=permit_issuer or guard.mission_origin,
                consume=MemoryPermitStore().consume)
        self.resource = resource
        self.guard = guard
        self.pdp = pdp
        self.metrics = metrics if metrics is not None else GatewayMetrics()
        self._verify_permit = permit_verifier
        self._threads = anyio.CapacityLimiter(worker_threads)
        self._clock = clock

    # -- authentication ------------------------------------------------------------------

    async def authenticate(self, request: Request) -> AccessToken:
        """The request's verified Mission token; raises
        :class:`~missionbound.enforce.rs.errors.RSRefusal` (answer it with
        ``guard.refusal_response``)."""
        return await self.guard.authenticate(request)

    # -- tools/list ----------------------------------------------------------------------

    def visible_tools(self, token: AccessToken, tools: Sequence[Tool]) -> list[Tool]:
        """``tools`` cut to those the token grants here, in the upstream's order."""
        granted = granted_tools(token, self.resource)
        return [tool for tool in tools if tool.name in granted]

    # -- tools/call ----------------------------------------------------------------------

    async def call_tool(self, token: AccessToken, name: str,
                        arguments: Mapping[str, Any] | None, tools: Sequence[Tool],
                        run: Callable[[str, dict[str, Any]], Awaitable[CallToolResult]]
                        ) -> CallToolResult:
        """Decide the call of ``name`` with ``arguments`` against the upstream's current
        ``tools``; run it with ``run(name, arguments)`` when permitted; report and count
        it. Raises :class:`ToolRefused`, :class:`InvalidToolArguments` or
        :class:`UpstreamFailed`."""
        started = time.perf_counter()
        # Metrics name tools the upstream lists; a made-up name must not become a label.
        label = name if any(tool.name == name for tool in tools) else UNLISTED_TOOL
        try:
            call = await self.authorize_call(token, name, arguments, tools)
        except ToolRefused as refused:
            self._count(label, refused.decision, refused.reason, started)
            raise
        except InvalidToolArguments:
            self._count(label, "refused", "invalid_arguments", started)
            raise
        except Exception as exc:
            # Fail closed, and tell the agent nothing of it: a bug or an unforeseen input
            # must neither run the tool nor put exception text on the wire.
            log.error("mcp_gateway_failed", resource=self.resource, tool=name[:64],
                      mission=token.mission.id, detail=f"{type(exc).__name__}: {exc}"[:300])
            self._count(label, "error", GATEWAY_ERROR, started)
            raise ToolRefused(GATEWAY_ERROR, "the gateway could not decide this call",
                              evaluation_id=None) from None
        try:
            result = await run(call.tool, call.arguments)
        except Exception as exc:
            await self._report_outcome(call, "failed")
            self._count(label, "error", "upstream_failed", started)
            log.warning("mcp_upstream_failed", resource=self.resource, tool=name,
                        mission=call.mission_id, evaluation_id=call.evaluation_id,
                        detail=f"{type(exc).__name__}: {str(exc)[:300]}")
            raise UpstreamFailed() from None
        # A tool error (isError) is an answer of the tool that did not do what was asked.
        await self._report_outcome(call, "failed" if result.is_error else "completed")
        self._count(label, "permit", None, started)
        return result

    async def authorize_call(self, token: AccessToken, name: str,
                             arguments: Mapping[str, Any] | None,
                             tools: Sequence[Tool]) -> PermittedCall:
        """Steps 1 to 3 of the module docstring: the call the PEP lets through, or the
        refusal."""
        if len(name) > MAX_TOOL_NAME:
            # The PDP would refuse the request as malformed: say so here, not "unreachable".
            raise InvalidToolArguments(f"a tool name has at most {MAX_TOOL_NAME} characters")
        frozen = copy.deepcopy(dict(arguments or {}))  # what is checked is what runs
        listed = [tool for tool in tools if tool.name == name]
        if len(listed) > 1:
            # Which of the two was approved cannot be told: neither runs.
            raise ToolRefused("tool_definition_ambiguous", f"the tool server lists "
                              f"{name[:64]!r} more than once", evaluation_id=None)
        tool = listed[0] if listed else None
        if tool is not None and name in granted_tools(token, self.resource):
            # In a worker thread: a schema's pattern may backtrack for long on some input.
            await anyio.to_thread.run_sync(check_arguments, frozen, tool.input_schema,
                                           limiter=self._threads)
        try:
            digest = arguments_digest(frozen)
        except PermitRefused:
            raise InvalidToolArguments("the arguments must be a JSON object without "
                                       "non-integer numbers (send decimals as strings)") from None
        try:
            source = (CapabilitySource.for_tool(self.resource, name, definition_of(tool))
                      if tool is not None else
                      CapabilitySource(tool_id=tool_id(self.resource, name),
                                       operation_ref=operation_ref(name)))
        except ToolDefinitionError:
            # No digest can be presented for what the tool server now says the tool is.
            raise ToolRefused("tool_definition_invalid", f"the tool server's definition of "
                              f"{name[:64]!r} cannot be digested", evaluation_id=None) from None
        body = mission_evaluation(
            token=token, action=name, parameters=frozen, parameter_digest=digest,
            resource={"type": RESOURCE_TYPE, "id": name,
                      "properties": {"audience": self.resource}},
            context={"capability_source": source.to_json()})
        try:
            answer = await anyio.to_thread.run_sync(partial(self.pdp.evaluate, body),
                                                    limiter=self._threads)
            decision = judge(answer, parameters=frozen, parameter_digest=digest,
                             now=self._clock())
        except PdpUnavailable as exc:
            log.warning("mcp_pdp_unreachable", resource=self.resource, tool=name,
                        detail=str(exc)[:300])
            raise ToolRefused(PDP_UNREACHABLE, "the policy decision point cannot be asked "
                              "just now; try again shortly", evaluation_id=None) from None
        except PermitSuppressed as suppressed:
            await self._report(token.mission.id, suppressed.evaluation_id, "suppressed",
                               error=suppressed.error, digest=digest)
            raise self._refused(name, suppressed.reason, suppressed.evaluation_id) from None
        except PdpDenied as denied:
            log.info("mcp_tool_denied", resource=self.resource, tool=name,
                     mission=token.mission.id, reason=denied.reason,
                     evaluation_id=denied.evaluation_id)
            raise ToolRefused(denied.reason, f"the Mission does not permit this call of "
                              f"{name[:64]!r} ({denied.reason})",
                              evaluation_id=denied.evaluation_id, decision="deny") from None
        call = PermittedCall(tool=name, arguments=frozen, parameter_digest=digest,
                             evaluation_id=decision.evaluation_id, mission_id=token.mission.id,
                             reportable=bool(decision.conditions))
        if decision.permit is not None or "parameter_digest" in decision.conditions:
            await self._check_permit(token, call, decision.permit)
        return call

    async def _check_permit(self, token: AccessToken, call: PermittedCall,
                            permit: str | None) -> None:
        """The tool runtime's checks (runtime-digest 4.5) on the permit the PDP just gave:
        a parameter-bound permit must come signed, and hold for this call, once."""
        error, reason = None, None
        if permit is None:
            error, reason = _UNFULFILLED, "permit_missing"
        else:
            try:
                await anyio.to_thread.run_sync(partial(
                    self._verify_permit, permit, audience=self.resource,
                    tool_id=tool_id(self.resource, call.tool),
                    arguments=call.arguments, presenter_jkt=token.jkt, now=self._clock()),
                    limiter=self._threads)
            except PermitRefused as refused:
                error, reason = refused.error, refused.error
            except JwksUnavailable:
                error, reason = _UNFULFILLED, "permit_keys_unavailable"
        if error is None:
            return
        log.warning("mcp_permit_suppressed", resource=self.resource, tool=call.tool,
                    mission=call.mission_id, evaluation_id=call.evaluation_id, error=reason)
        await self._report(call.mission_id, call.evaluation_id, "suppressed",
                           error=error if error in _EVIDENCE_ERRORS else _UNFULFILLED,
                           digest=call.parameter_digest)
        raise self._refused(call.tool, reason or error, call.evaluation_id)

    @staticmethod
    def _refused(name: str, reason: str, evaluation_id: str | None) -> ToolRefused:
        return ToolRefused(reason, f"the gateway does not act on the permit for "
                           f"{name[:64]!r} ({reason})", evaluation_id=evaluation_id)

    # -- execution reports ---------------------------------------------------------------

    async def _report_outcome(self, call: PermittedCall, outcome: str) -> None:
        if call.reportable:
            await self._report(call.mission_id, call.evaluation_id, outcome,
                               digest=call.parameter_digest)

    async def _report(self, mission_id: str, evaluation_id: str | None, outcome: str, *,
                      error: str | None = None, digest: str | None = None) -> None:
        """Never raises: a report the PDP did not take is logged with the Mission and
        ``evaluation_id`` (the answer already decided stands)."""
        if not evaluation_id:
            return
        detail = await send_report(
            partial(self.pdp.report, evaluation_id=evaluation_id, outcome=outcome,
                    error=error, effective_parameter_digest=digest), self._threads)
        if detail is None:
            log.info("mcp_execution_reported", resource=self.resource, mission=mission_id,
                     evaluation_id=evaluation_id, outcome=outcome, error=error)
            return
        log.error("mcp_execution_unreported", resource=self.resource, mission=mission_id,
                  evaluation_id=evaluation_id, outcome=outcome, error=error,
                  detail=detail[:300])

    def _count(self, tool: str, decision: str, reason: str | None, started: float) -> None:
        self.metrics.record(tool, decision, reason, time.perf_counter() - started)


__all__ = [
    "RESOURCE_TYPE", "TOKEN_KEY", "McpPep", "MemoryPermitStore", "PdpLike", "PermittedCall",
    "check_arguments", "granted_tools",
]
