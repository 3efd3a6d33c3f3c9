"""RS-D: the Resource Server asks the PDP about every consequential action (PROFILE.md
sections 2 and 12, runtime-digest sections 2.5 and 4.5).

At RS-D the Resource Server is the executor: the last controllable boundary for the effect
its route performs (runtime-digest 2.5). Once the RS-B (and, with a state source, RS-C)
checks have passed, :class:`MissionGuard <missionbound.enforce.rs.guard.MissionGuard>` builds
an AuthZEN Access Evaluation request (AuthZEN Authorization API 1.0 section 6) from the
verified token facts only and posts it to the PDP with this API's client credentials (HTTP
Basic), in a worker thread, within a bounded timeout:

- ``subject``: ``{"type": "user", "id": sub, "properties": {"iss": iss}}``;
- ``resource``: ``{"type": "http_route", "id": "<METHOD> <path>", "properties":
  {"audience": <this resource>}}``;
- ``action``: ``{"name": <the route's action>, "properties": {"parameters", "parameter_digest"}}``
  where ``parameters`` is the object the route will act on (:func:`route_parameters` by
  default) and ``parameter_digest`` its ``sha-256:`` JCS digest (runtime-digest 4.3);
- ``context.mission`` ``{id, issuer (= origin), authority_hash}``, ``context.actor``
  ``{client_id[, act (root -> leaf)]}``, ``context.credential`` ``{issuer, expires_at[,
  confirmation {jkt}]}`` (the key only once the DPoP proof has verified it).

The answer (runtime-digest 3.5 and 4.5):

- ``decision: false``: refused 403 ``insufficient_scope`` with the PDP's ``reason`` and
  ``evaluation_id`` in the body (:class:`PdpDenied`);
- ``decision: true``: the RS checks every ``conditions`` member is one it understands
  (``parameter_digest``, ``valid_until``, ``use_limit``: anything else is not released), that
  ``parameter_digest`` is the digest of what it will execute and that ``valid_until`` has
  not passed, then lets the route run once (which is within any ``use_limit``);
- no answer, a 5xx, a timeout, an answer that is not an AuthZEN decision: 503
  ``temporarily_unavailable`` reason ``pdp_unreachable`` with ``Retry-After`` (fail closed).

The outcome goes back to the PDP (runtime-digest 5.3 and 7.4: Execution Evidence delivered
to the PDP's intake settles what the permit reserved): :meth:`PdpClient.report` posts it to
``/mission/executions`` with the same credential. ``completed`` or ``failed`` after the
route ran; ``suppressed`` with the error when the RS refuses a permit at its condition
checks (:class:`PermitSuppressed`: ``parameter_mismatch``, ``permit_expired``, or
``obligation_unfulfilled`` for a condition it cannot meet).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
import structlog

from missionbound.enforce.rs.errors import (
    InsufficientScopeRefusal,
    InvalidRequestRefusal,
    UnavailableRefusal,
)
from missionbound.enforce.rs.request import MISSING, Extractor, RequestFacts
from missionbound.mission.canonical import digest_json
from missionbound.mission.errors import InvalidRequest
from missionbound.protocol.access_tokens import AccessToken

log = structlog.get_logger("missionbound.enforce.rs")

EVALUATION_PATH: Final = "/access/v1/evaluation"  # AuthZEN Authorization API 1.0 section 6
EXECUTIONS_PATH: Final = "/mission/executions"  # the PDP's execution intake
DEFAULT_TIMEOUT_SECONDS: Final = 2.0
MAX_ANSWER_BYTES: Final = 64 * 1024
# runtime-digest 3.5: the conditions a PEP of this kit understands; any other member means the
# effect must not be released (there is no must-understand marker).
UNDERSTOOD_CONDITIONS: Final = frozenset({"parameter_digest", "valid_until", "use_limit"})
PDP_UNREACHABLE: Final = "pdp_unreachable"
RESOURCE_TYPE: Final = "http_route"
# A permit's valid_until is compared with this much tolerance for clocks running apart
# (runtime-digest 4.5 item 3: "skew <= published max").
VALID_UNTIL_SKEW: Final = timedelta(seconds=5)
# Consumption bounds (runtime-digest 7.2-7.4): only the PDP can meter them, atomically across
# every enforcement point. At RS-D the kit leaves them to the PDP it asks; below RS-D it
# refuses them (it cannot enforce them, docs/resource-servers.md).
PDP_METERED: Final = frozenset({"max_calls", "max_total_value", "max_duration"})
# Execution Evidence errors (runtime-digest 3.8) of the permits this kit refuses.
PARAMETER_MISMATCH: Final = "parameter_mismatch"
PERMIT_EXPIRED: Final = "permit_expired"
OBLIGATION_UNFULFILLED: Final = "obligation_unfulfilled"


class PdpUnavailable(Exception):
    """The PDP gave no usable answer (transport error, timeout, a status other than 200, a
    body that is not an AuthZEN decision). The guard refuses 503 (fail closed)."""


@dataclass(frozen=True)
class PdpDecision:
    """A PDP permit the guard checked and acted on: the route may run once."""

    evaluation_id: str
    parameter_digest: str
    parameters: Mapping[str, Any] = field(repr=False)
    conditions: Mapping[str, Any] = field(default_factory=dict)
    # The signed permit (context.permit), when the PDP issued one; the RS does not need it
    # (it asked on its own authenticated channel) but may keep it with its records.
    permit: str | None = field(default=None, repr=False)


class PdpDenied(InsufficientScopeRefusal):
    """The PDP said no: 403 ``insufficient_scope`` with its reason and ``evaluation_id``."""

    def __init__(self, reason: str, description: str, *, evaluation_id: str | None) -> None:
        super().__init__(reason, description)
        self.evaluation_id = evaluation_id

    def body(self) -> dict[str, Any]:
        out = super().body()
        if self.evaluation_id is not None:
            out["evaluation_id"] = self.evaluation_id
        return out


class PermitSuppressed(PdpDenied):
    """The PDP permitted, and this executor refuses to act on the permit (runtime-digest
    4.5): refused like a deny, and reported to the PDP as ``suppressed`` with ``error``,
    a value of the Execution Evidence error set (section 3.8)."""

    def __init__(self, reason: str, description: str, *, evaluation_id: str,
                 error: str) -> None:
        super().__init__(reason, description, evaluation_id=evaluation_id)
        self.error = error


class ReportFailed(Exception):
    """The PDP did not take an execution report. ``retryable``: no answer or a 5xx (the
    same report may be sent again: the intake applies it once); otherwise the PDP refused
    it (404 unknown decision, 409 conflicting report, 400/401/403) and sending it again
    cannot help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class PdpClient:
    """AuthZEN client of one PDP: ``pdp`` is its base URL (``https://as.example``, the
    evaluation endpoint is ``pdp + /access/v1/evaluation``); ``client_id`` /
    ``client_secret`` this Resource Server's credential there (HTTP Basic, the PDP's
    ``PepCaller``). ``http_client`` is used as given (the caller owns it); else one is made
    and :meth:`close` closes it. Blocking: the guard calls it in a worker thread."""

    def __init__(self, pdp: str, *, client_id: str, client_secret: str,
                 http_client: httpx.Client | None = None,
                 timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        if not pdp.startswith(("https://", "http://")):
            raise ValueError(f"the PDP must be an http(s) URL, not {pdp!r}")
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self.endpoint = pdp.rstrip("/") + EVALUATION_PATH
        self.executions_endpoint = pdp.rstrip("/") + EXECUTIONS_PATH
        self._auth = httpx.BasicAuth(client_id, client_secret)
        self._timeout = httpx.Timeout(timeout_seconds)
        self._owned = http_client is None
        self._http = http_client if http_client is not None else httpx.Client()

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def evaluate(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The PDP's decision object for ``request``; raises :class:`PdpUnavailable`."""
        try:
            response = self._http.post(self.endpoint, json=dict(request), auth=self._auth,
                                       timeout=self._timeout, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise PdpUnavailable(f"POST {self.endpoint}: {type(exc).__name__}") from exc
        if response.status_code != 200:
            # 5xx: the PDP is down. 4xx: it refuses this API's credential or request, which
            # this API cannot fix per request either: no verdict, fail closed.
            raise PdpUnavailable(f"POST {self.endpoint}: HTTP {response.status_code} "
                                 f"{response.text[:200]!r}")
        if len(response.content) > MAX_ANSWER_BYTES:
            raise PdpUnavailable("the PDP's answer is too large")
        try:
            answer = response.json()
        except ValueError:
            raise PdpUnavailable("the PDP's answer is not JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("decision"), bool):
            raise PdpUnavailable('the PDP\'s answer has no boolean "decision"')
        return answer

    def report(self, *, evaluation_id: str, outcome: str, error: str | None = None,
               effective_parameter_digest: str | None = None,
               measured_duration_seconds: int | None = None) -> dict[str, Any]:
        """Report the outcome of permit ``evaluation_id`` to the PDP's intake; returns its
        answer (the record's ids). Raises :class:`ReportFailed`."""
        body: dict[str, Any] = {"evaluation_id": evaluation_id, "outcome": outcome}
        if error is not None:
            body["error"] = error
        if effective_parameter_digest is not None:
            body["effective_parameter_digest"] = effective_parameter_digest
        if measured_duration_seconds is not None:
            body["measured_duration_seconds"] = measured_duration_seconds
        endpoint = self.executions_endpoint
        try:
            response = self._http.post(endpoint, json=body, auth=self._auth,
                                       timeout=self._timeout, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise ReportFailed(f"POST {endpoint}: {type(exc).__name__}",
                               retryable=True) from exc
        if response.status_code in (200, 201):
            try:
                answer = response.json()
            except ValueError:
                answer = None
            return answer if isinstance(answer, dict) else {}
        raise ReportFailed(f"POST {endpoint}: HTTP {response.status_code} "
                           f"{response.text[:200]!r}", retryable=response.status_code >= 500)


# -- what the route acts on ----------------------------------------------------------------


@dataclass(frozen=True)
class RouteParameters:
    """The default operation parameters of a route: the JSON body's members, the path
    parameters and the query parameters, in one object (a name in two places is refused:
    the PDP must see exactly what the route will use)."""

    @property
    def needs_json_body(self) -> bool:
        return True

    def read(self, facts: RequestFacts) -> Any:
        merged: dict[str, Any] = {}
        body = facts.json_body
        if body is not MISSING:
            if not isinstance(body, dict):
                return body  # refused by parameters_of: not an object
            merged.update(body)
        for source in (facts.path_params, facts.query):
            for name, value in source.items():
                if name in merged:
                    return _Conflict(name, "is sent in two places of the request")
                if isinstance(value, list):
                    # A repeated query parameter: never check one value and run another.
                    return _Conflict(name, "is sent more than once")
                merged[name] = value
        return merged

    def describe(self) -> str:
        return "the JSON body, path and query parameters"


@dataclass(frozen=True)
class _Conflict:
    name: str
    problem: str


def route_parameters() -> Extractor:
    """The default ``parameters`` of an RS-D route (:class:`RouteParameters`)."""
    return RouteParameters()


def parameters_of(extractor: Extractor, facts: RequestFacts) -> tuple[dict[str, Any], str]:
    """The parameter object and its digest; raises :class:`InvalidRequestRefusal`
    (``parameter_invalid``) for what cannot be a parameter object."""
    value = extractor.read(facts)
    if isinstance(value, _Conflict):
        raise InvalidRequestRefusal("parameter_invalid",
                                    f"the parameter {value.name[:100]!r} {value.problem}")
    if value is MISSING:
        value = {}
    if not isinstance(value, dict):
        raise InvalidRequestRefusal("parameter_invalid", f"{extractor.describe()} must be a "
                                    "JSON object")
    try:
        # runtime-digest 4.3: sha-256 over the JCS form of exactly what is executed.
        # Floats are refused: decimals travel as strings (PROFILE.md section 3).
        digest = _strict_digest(value)
    except InvalidRequest as exc:
        raise InvalidRequestRefusal("parameter_invalid", exc.description) from None
    return value, digest


def _strict_digest(value: dict[str, Any]) -> str:
    _refuse_floats(value)
    return digest_json(value)


def _refuse_floats(value: Any) -> None:
    if isinstance(value, float):
        raise InvalidRequest("a parameter is a non-integer number; send decimals as strings")
    if isinstance(value, dict):
        for member in value.values():
            _refuse_floats(member)
    elif isinstance(value, list):
        for member in value:
            _refuse_floats(member)


def without_metered(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    """``entry`` as the kit checks it at RS-D: the constraints the PDP meters
    (:data:`PDP_METERED`) removed, every other key still checked here first."""
    constraints = entry.get("constraints")
    if not isinstance(constraints, Mapping) or not PDP_METERED & set(constraints):
        return entry
    kept = {key: value for key, value in constraints.items() if key not in PDP_METERED}
    return {**entry, "constraints": kept}


# -- the request and the answer ------------------------------------------------------------


def evaluation_request(*, token: AccessToken, audience: str, action: str, method: str,
                       path: str, parameters: Mapping[str, Any],
                       parameter_digest: str) -> dict[str, Any]:
    """The AuthZEN request for this route's action, from verified facts only
    (:func:`mission_evaluation` with the route as the ``http_route`` resource)."""
    return mission_evaluation(
        token=token, resource={"type": RESOURCE_TYPE, "id": f"{method} {path}",
                               "properties": {"audience": audience}},
        action=action, parameters=parameters, parameter_digest=parameter_digest)


def mission_evaluation(*, token: AccessToken, resource: Mapping[str, Any], action: str,
                       parameters: Mapping[str, Any], parameter_digest: str,
                       context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An AuthZEN request about ``action`` on ``resource`` (an AuthZEN resource object whose
    ``properties.audience`` is the Mission resource) from verified facts only
    (runtime-digest 3.2, 3.3: never an unverified claim; ``confirmation`` only after the
    proof of possession). ``context`` adds members of the enforcement point's own (an MCP
    gateway's ``capability_source``); it cannot replace the Mission, actor or credential."""
    actor: dict[str, Any] = {"client_id": token.client_id}
    if token.actors:
        # The token's act nests the immediate actor outermost; AuthZEN wants root -> leaf.
        actor["act"] = [{"sub": a.sub, "iss": a.iss} for a in reversed(token.actors)]
    credential: dict[str, Any] = {"issuer": token.issuer,
                                  "expires_at": _rfc3339(token.expires_at)}
    if token.jkt is not None:
        credential["confirmation"] = {"jkt": token.jkt}
    return {
        "subject": {"type": "user", "id": token.subject, "properties": {"iss": token.issuer}},
        "resource": dict(resource),
        "action": {"name": action, "properties": {"parameters": dict(parameters),
                                                  "parameter_digest": parameter_digest}},
        "context": {
            **(context or {}),
            "mission": {"id": token.mission.id, "issuer": token.mission.origin,
                        "authority_hash": token.mission.authority_hash},
            "actor": actor,
            "credential": credential,
        },
    }


def judge(answer: Mapping[str, Any], *, parameters: Mapping[str, Any], parameter_digest: str,
          now: datetime) -> PdpDecision:
    """The PDP's answer as a :class:`PdpDecision` the route may act on, or a refusal:
    :class:`PdpDenied` for a deny or a permit whose conditions this executor cannot meet,
    :class:`PdpUnavailable` for an answer that is not a decision object."""
    context = answer.get("context", {})
    if not isinstance(context, Mapping):
        raise PdpUnavailable('the PDP\'s "context" is not an object')
    evaluation_id = context.get("evaluation_id")
    if evaluation_id is not None and not isinstance(evaluation_id, str):
        raise PdpUnavailable('the PDP\'s "evaluation_id" is not a string')
    if answer.get("decision") is not True:
        reason = context.get("reason")
        reason = reason if isinstance(reason, str) and reason else "pdp_denied"
        raise PdpDenied(reason[:100], f"the Mission's policy does not permit this action "
                        f"({reason[:100]})", evaluation_id=evaluation_id)
    if evaluation_id is None:
        raise PdpUnavailable("the PDP's permit has no evaluation_id")
    conditions = context.get("conditions", {})
    if not isinstance(conditions, Mapping):
        raise PdpUnavailable('the PDP\'s "conditions" is not an object')
    unknown = sorted(set(conditions) - UNDERSTOOD_CONDITIONS)
    if unknown:
        # A condition this executor cannot fulfil: Execution Evidence error
        # obligation_unfulfilled (runtime-digest 4.5 items 2 and 7; decision M145).
        raise PermitSuppressed("conditions_not_understood", "the permit carries conditions "
                               f"this resource does not enforce ({', '.join(unknown)[:200]}): "
                               "not executed", evaluation_id=evaluation_id,
                               error=OBLIGATION_UNFULFILLED)
    if "parameter_digest" in conditions and conditions["parameter_digest"] != parameter_digest:
        # runtime-digest 4.5 item 6: the permit is for other parameters than ours.
        raise PermitSuppressed("parameter_mismatch", "the permit is for other parameters "
                               "than this request's", evaluation_id=evaluation_id,
                               error=PARAMETER_MISMATCH)
    if "valid_until" in conditions:
        until = _parse_instant(conditions["valid_until"])
        if until is None:
            raise PdpUnavailable("the permit's valid_until is not an RFC 3339 time")
        if now > until + VALID_UNTIL_SKEW:
            raise PermitSuppressed("permit_expired", "the permit expired before it could be "
                                   "used", evaluation_id=evaluation_id, error=PERMIT_EXPIRED)
    use_limit = conditions.get("use_limit")
    if use_limit is not None and (isinstance(use_limit, bool) or not isinstance(use_limit, int)
                                  or use_limit < 1):
        raise PermitSuppressed("conditions_not_understood", "the permit's use_limit is not a "
                               "positive integer: not executed", evaluation_id=evaluation_id,
                               error=OBLIGATION_UNFULFILLED)
    permit = context.get("permit")
    return PdpDecision(evaluation_id=evaluation_id, parameter_digest=parameter_digest,
                       parameters=parameters, conditions=dict(conditions),
                       permit=permit if isinstance(permit, str) else None)


def unreachable(exc: PdpUnavailable, endpoint: str) -> UnavailableRefusal:
    log.warning("rs_pdp_unreachable", pdp=endpoint, detail=str(exc))
    return UnavailableRefusal(PDP_UNREACHABLE, "the policy decision point cannot be asked "
                              "just now; try again shortly")


def _rfc3339(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_instant(value: Any) -> datetime | None:
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "PDP_METERED",
    "PDP_UNREACHABLE",
    "PdpClient",
    "PdpDecision",
    "PdpDenied",
    "PdpUnavailable",
    "PermitSuppressed",
    "ReportFailed",
    "RouteParameters",
    "evaluation_request",
    "judge",
    "mission_evaluation",
    "parameters_of",
    "route_parameters",
    "without_metered",
]
