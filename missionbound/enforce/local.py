"""The local tool runner: the enforcement point for tools an agent's own process drives
(PROFILE.md section 12, "The orchestrator cannot execute consequential actions inline";
runtime-digest sections 2.5 and 4.5).

An orchestrator registers its Python tools with a :class:`LocalToolRunner` and from then on
can only *run* them: a consequential tool runs only after the runner has verified a permit
of the PDP for exactly this tool and exactly these arguments, presented by the key the
permit is bound to, and consumed its single use; a non-consequential tool runs without one.
Every consequential run leaves Execution Evidence (runtime-digest 5.3) through the injected
recorder: ``completed`` or ``failed`` after the call, ``suppressed`` with the ``error``
(``parameter_mismatch``, ``permit_consumed``, ``permit_expired``, ``binding_mismatch``) when
the permit does not hold, in which case the tool is never called.

The registered callables are not reachable through the runner: there is no attribute or
method that returns one, and :meth:`LocalToolRunner.register` returns a :class:`ToolHandle`
that can only call :meth:`LocalToolRunner.run`. (Python cannot stop code that goes looking
through private attributes; what the runner guarantees is that the SDK offers no path to a
consequential effect without a permit.)

The runner imports nothing of the PDP or the store (DESIGN.md layering): the permit verifier
and the evidence recorder are injected (:class:`PermitVerifierLike`,
:class:`ExecutionRecorderLike`). :func:`jwt_permit_verifier` builds a verifier from
:func:`missionbound.protocol.permits.verify_permit_jwt` and a ``consume`` callable (single
use); with the Mission runtime, ``missionbound.runtime.permits.verify_permit`` (the same
checks, the ``jti`` consumed in the shared database) makes every replica's runner agree.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol

import structlog
from joserfc.jwk import Key

from missionbound.mission.canonical import digest_json
from missionbound.mission.errors import InvalidRequest, MissionError
from missionbound.protocol.jose_segments import read_compact
from missionbound.protocol.jwks import KeySource
from missionbound.protocol.permits import (
    BINDING_MISMATCH,
    MAX_PERMIT_LENGTH,
    MISSION_INACTIVE,
    PARAMETER_MISMATCH,
    PERMIT_CONSUMED,
    PERMIT_EXPIRED,
    Consume,
    KeyLookup,
    PermitClaims,
    PermitRefused,
    verify_permit_jwt,
)
from missionbound.protocol.tool_manifest import tool_id

log = structlog.get_logger("missionbound.enforce.local")

Outcome = Literal["completed", "failed", "suppressed"]
# runtime-digest 4.5: the permit refusals that are Execution Evidence ``suppressed``.
SUPPRESSION_ERRORS: Final = frozenset({PARAMETER_MISMATCH, PERMIT_CONSUMED, PERMIT_EXPIRED,
                                       BINDING_MISMATCH, MISSION_INACTIVE})
DEFAULT_EMITTER: Final = "local-tool-runner"


class PermitVerifierLike(Protocol):
    """Verifies ``permit`` for running ``tool_id`` with ``arguments`` at ``audience``,
    presented by the key ``presenter_jkt`` (RFC 7638 thumbprint), and consumes its single
    use; raises :class:`~missionbound.protocol.permits.PermitRefused`."""

    def __call__(self, permit: str, *, audience: str, tool_id: str,
                 arguments: Mapping[str, Any], presenter_jkt: str | None,
                 now: datetime) -> PermitClaims: ...


class ExecutionRecorderLike(Protocol):
    """Records Execution Evidence (runtime-digest 5.3) durably before returning; the
    runtime's adapter opens a transaction around ``EvidenceLog.record_execution``."""

    def record_execution(self, *, mission_id: str, evaluation_id: str, audience: str,
                         authorized_parameter_digest: str | None,
                         effective_parameter_digest: str | None, outcome: Outcome,
                         error: str | None, emitter_id: str, now: datetime,
                         tool_id: str | None = None) -> Any: ...


class UnknownTool(MissionError, LookupError):
    error = "unknown_tool"
    status = 404


class PermitRequired(MissionError):
    """A consequential tool was asked to run without a permit (nothing ran, nothing to
    record: no decision names the attempt)."""

    error = "permit_required"
    status = 403


class ExecutionSuppressed(MissionError):
    """The permit does not hold for this run; the tool was not called. ``error`` is the
    Execution Evidence error (``parameter_mismatch``, ``permit_consumed``,
    ``permit_expired``, ``binding_mismatch``, or ``permit_invalid`` for a permit that is not
    one of the PDP's at all)."""

    status = 403

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error


@dataclass(frozen=True)
class _Tool:
    name: str
    fn: Callable[..., Any]
    consequential: bool


class ToolHandle:
    """What :meth:`LocalToolRunner.register` gives back: a way to run the tool through the
    runner, and nothing that reaches the callable."""

    __slots__ = ("_run", "name")

    def __init__(self, name: str, run: Callable[..., Any]) -> None:
        self.name = name
        self._run = run

    def __call__(self, arguments: Mapping[str, Any], *, permit: str | None = None) -> Any:
        return self._run(self.name, arguments, permit=permit)

    def __repr__(self) -> str:
        return f"ToolHandle({self.name!r})"


class LocalToolRunner:
    """Runs registered tools for ``audience`` (the Mission resource the tools are, the
    ``aud`` every permit must carry), verifying permits with ``verifier`` and recording
    Execution Evidence with ``recorder`` (None: no evidence kept, for tests and tools that
    are all non-consequential; a consequential run then still needs its permit).

    ``presenter_key`` is the private key of the agent this runner executes for (its DPoP
    key, whose thumbprint the PDP puts in each permit's ``cnf``): a permit bound to any
    other key is ``binding_mismatch``. It is fixed here, never passed per call, so holding
    another agent's permit is not enough to run it: one must hold that agent's private key.
    Without it only permits bound to no key run."""

    def __init__(self, audience: str, verifier: PermitVerifierLike,
                 recorder: ExecutionRecorderLike | None = None, *,
                 presenter_key: Key | None = None,
                 emitter_id: str = DEFAULT_EMITTER,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        if not audience:
            raise ValueError("the runner needs the audience its permits are issued for")
        if presenter_key is not None and not presenter_key.is_private:
            raise ValueError("presenter_key must be the agent's private key: a public key "
                             "proves nothing about who presents the permit")
        self.__presenter_jkt = presenter_key.thumbprint() if presenter_key else None
        self.audience = audience
        self.emitter_id = emitter_id
        self.__verifier = verifier
        self.__recorder = recorder
        self.__clock = clock
        self.__tools: dict[str, _Tool] = {}
        self.__lock = threading.Lock()

    def register(self, name: str, fn: Callable[..., Any], *,
                 consequential: bool = True) -> ToolHandle:
        """Register ``fn`` as tool ``name`` (the ``tool_id`` its permits name), called with
        the arguments as keywords. Consequential unless said otherwise (fail closed)."""
        if not isinstance(name, str) or not name:
            raise ValueError("a tool needs a name")
        if not callable(fn):
            raise TypeError(f"tool {name!r} is not callable")
        with self.__lock:
            if name in self.__tools:
                # Replacing a tool after its permits were issued would run other code
                # under them.
                raise ValueError(f"tool {name!r} is already registered")
            self.__tools[name] = _Tool(name, fn, consequential)
        return ToolHandle(name, self.run)

    @property
    def tools(self) -> dict[str, bool]:
        """Tool name -> consequential (names only: never the callables)."""
        return {name: tool.consequential for name, tool in self.__tools.items()}

    def run(self, name: str, arguments: Mapping[str, Any], *, permit: str | None = None
            ) -> Any:
        """Run tool ``name`` with ``arguments``; a consequential tool only under ``permit``,
        bound to this runner's presenter key (or to none). Returns what the tool returns; raises
        :class:`UnknownTool`, :class:`PermitRequired`, :class:`ExecutionSuppressed`, or
        what the tool raised (recorded ``failed``)."""
        tool = self.__tools.get(name)
        if tool is None:
            raise UnknownTool(f"no tool {name[:100]!r} is registered with this runner")
        if not isinstance(arguments, Mapping) or not all(isinstance(k, str) for k in arguments):
            raise InvalidRequest("tool arguments must be an object with string member names")
        # The very object verified is the one executed: a copy no caller holds, so nothing
        # can change it between the check and the call (runtime-digest 4.5, TOCTOU).
        frozen = copy.deepcopy(dict(arguments))
        if not tool.consequential:
            return tool.fn(**frozen)
        if not permit:
            log.warning("local_tool_refused", tool=name, error="permit_required")
            raise PermitRequired(f"tool {name!r} is consequential: it runs only under a "
                                 "permit of the PDP")
        effective = _digest_or_none(frozen)
        now = self.__clock()
        try:
            claims = self.__verifier(permit, audience=self.audience,
                                     tool_id=tool_id(self.audience, name),
                                     arguments=frozen, presenter_jkt=self.__presenter_jkt,
                                     now=now)
        except PermitRefused as refused:
            self._suppressed(refused, permit, tool=name, effective=effective, now=now)
            raise ExecutionSuppressed(refused.error, refused.description) from None
        try:
            result = tool.fn(**frozen)
        except Exception:
            self._record(claims, tool=name, effective=effective, outcome="failed", error=None)
            raise
        self._record(claims, tool=name, effective=effective, outcome="completed", error=None)
        return result

    # -- evidence ----------------------------------------------------------------------

    def _suppressed(self, refused: PermitRefused, permit: str, *, tool: str,
                    effective: str | None, now: datetime) -> None:
        facts = _signed_facts(permit) if refused.error in SUPPRESSION_ERRORS else None
        log.warning("local_tool_suppressed", tool=tool, error=refused.error,
                    mission=facts.mission_id if facts is not None else None,
                    evaluation_id=facts.evaluation_id if facts is not None else None)
        if facts is None:
            # permit_invalid: no permit of the PDP names a Mission or a decision, so there
            # is nothing to join Execution Evidence to (runtime-digest 5.3); the log line is
            # the trace.
            return
        self._record(facts, tool=tool, effective=effective, outcome="suppressed",
                     error=refused.error, now=now)

    def _record(self, facts: PermitClaims | _PermitFacts, *, tool: str,
                effective: str | None, outcome: Outcome, error: str | None,
                now: datetime | None = None) -> None:
        recorder = self.__recorder
        if recorder is None:
            return
        recorder.record_execution(
            mission_id=facts.mission.id, evaluation_id=facts.evaluation_id,
            audience=self.audience, authorized_parameter_digest=facts.parameter_digest,
            effective_parameter_digest=effective, outcome=outcome, error=error,
            emitter_id=self.emitter_id, now=now or self.__clock(),
            tool_id=tool_id(self.audience, tool))


@dataclass(frozen=True)
class _PermitFacts:
    mission: Any  # MissionEvidence-like: .id
    evaluation_id: str
    parameter_digest: str | None

    @property
    def mission_id(self) -> str:
        return str(self.mission.id)


@dataclass(frozen=True)
class _MissionId:
    id: str


def _signed_facts(permit: str) -> _PermitFacts | None:
    """The Mission, decision and authorized digest of a permit that was refused for one of
    :data:`SUPPRESSION_ERRORS`. ``verify_permit_jwt`` raises those only after the signature,
    ``typ``, ``iss`` and every required claim have verified (``permit_invalid`` comes
    first), so these claims are the PDP's own."""
    try:
        _, claims = read_compact(permit, "permit", ValueError, max_length=MAX_PERMIT_LENGTH)
    except ValueError:
        return None
    mission, jti = claims.get("mission"), claims.get("jti")
    digest = claims.get("parameter_digest")
    if not isinstance(mission, dict) or not isinstance(mission.get("id"), str) \
            or not isinstance(jti, str):
        return None
    return _PermitFacts(_MissionId(mission["id"]), jti,
                        digest if isinstance(digest, str) else None)


def _digest_or_none(arguments: Mapping[str, Any]) -> str | None:
    try:
        return digest_json(dict(arguments))
    except InvalidRequest:
        return None


def jwt_permit_verifier(*, key_for: KeySource | KeyLookup, issuer: str,
                        consume: Consume) -> PermitVerifierLike:
    """A verifier from :func:`~missionbound.protocol.permits.verify_permit_jwt` (signature
    by a key of ``issuer``, ``typ``, ``aud``, ``tool_id``, ``parameter_digest``, expiry,
    ``cnf``) and ``consume(jti, remember_until)``, True the first time a permit is used and
    False ever after. It must be atomic across every runner that accepts the same permits
    (a database unique key, not a process's memory, once there is more than one):
    ``missionbound.runtime.permits.PermitConsumer`` is that for the Mission runtime.

    Every permit is spent, with or without ``use_limit``: the local runner runs a tool
    once per permit (stricter than a permit without a PDP-enforced limit needs)."""

    def verify(permit: str, *, audience: str, tool_id: str, arguments: Mapping[str, Any],
               presenter_jkt: str | None, now: datetime) -> PermitClaims:
        claims = verify_permit_jwt(permit, key_for=key_for, issuer=issuer, audience=audience,
                                   tool_id=tool_id, arguments=arguments,
                                   presenter_jkt=presenter_jkt, now=now)
        if not consume(claims.evaluation_id, claims.remember_until):
            raise PermitRefused(PERMIT_CONSUMED, "the permit was used already")
        return claims

    return verify


__all__ = [
    "ExecutionRecorderLike", "ExecutionSuppressed", "LocalToolRunner", "PermitRequired",
    "PermitVerifierLike", "ToolHandle", "UnknownTool", "jwt_permit_verifier",
]
