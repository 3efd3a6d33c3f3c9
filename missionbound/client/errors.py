"""What the agent SDK raises: one class per thing that can happen to an agent, so that an
agent can ``except MissionRevoked`` rather than read status codes.

Every error carries what the server said: ``error`` (the wire code: an OAuth ``error``, an
RFC 6750 challenge error, a JSON-RPC refusal), ``reason`` (the PDP's or enforcement
point's machine reason, when there is one: runtime-digest section 1.10), ``description``
(the human text) and ``evaluation_id`` (names the PDP's signed Decision Evidence, when a
decision was made). :func:`error_for` turns those facts into the most specific class, the
same way for every surface (token endpoint, API, PDP, MCP gateway, local tool runner).
"""

from __future__ import annotations

from typing import Final

# Reasons (runtime-digest 1.10, the RS kit's refusals) that mean "this Mission stopped".
INACTIVE_REASONS: Final = frozenset({"mission_inactive", "mission_revoked", "mission_state"})
# Reasons that mean "within the Mission's authority, but over one of its limits".
CONSTRAINT_REASONS: Final = frozenset({"parameter_violation", "constraint_exceeded",
                                       "quota_exceeded", "budget_exhausted"})
# Execution Evidence errors (runtime-digest 3.8) of a tool runtime refusing a permit.
PERMIT_ERRORS: Final = frozenset({"permit_consumed", "permit_expired", "binding_mismatch",
                                  "permit_invalid"})


class MissionClientError(Exception):
    """Something the Authorization Server, the PDP or an enforcement point refused."""

    def __init__(self, description: str, *, error: str | None = None,
                 reason: str | None = None, evaluation_id: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.error = error
        self.reason = reason
        self.evaluation_id = evaluation_id
        self.status = status

    def __str__(self) -> str:
        said = ", ".join(f"{name} {value}" for name, value in (
            ("error", self.error), ("reason", self.reason),
            ("evaluation_id", self.evaluation_id)) if value)
        return f"{self.description} ({said})" if said else self.description


class OAuthError(MissionClientError):
    """An OAuth error answer (RFC 6749 section 5.2, RFC 9126, RFC 8693): ``error`` is its
    code, ``status`` the HTTP status."""


class ConsentRejected(OAuthError):
    """The approver rejected the Mission (``access_denied`` at the redirect URI)."""


class MissionInactive(MissionClientError):
    """The Mission is not active (suspended, revoked, completed, expired): nothing new comes
    out of it. ``mission_state`` is its state when the server said."""

    def __init__(self, description: str, *, mission_state: str | None = None,
                 error: str | None = None, reason: str | None = None,
                 evaluation_id: str | None = None, status: int | None = None) -> None:
        super().__init__(description, error=error, reason=reason,
                         evaluation_id=evaluation_id, status=status)
        self.mission_state = mission_state


class MissionRevoked(MissionInactive):
    """The Mission was revoked: final, it will never be active again."""


class ActionDenied(MissionClientError):
    """The PDP or an enforcement point refused one action of the agent (``reason``)."""


class ToolNotGranted(ActionDenied):
    """The Mission grants no such action or tool on that resource (``out_of_authority``;
    an API says ``action_not_granted`` or ``resource_not_granted``)."""


class ConstraintExceeded(ActionDenied):
    """Within the Mission's authority but over one of its limits: a cap, an allow-list, a
    budget (``parameter_violation``, ``constraint_exceeded``, ``quota_exceeded``)."""


class CapabilityDrift(ActionDenied):
    """The tool's definition changed since the Mission was approved (``capability_drift``)."""


class ArgumentsChanged(ActionDenied):
    """A permit was presented for other arguments than those it was issued for
    (``parameter_mismatch``): ask for a permit for what you mean to run."""


class PermitRefused(ActionDenied):
    """A tool runtime refused the permit itself: used already, expired, bound to another
    key or tool (``permit_consumed``, ``permit_expired``, ``binding_mismatch``)."""


class PdpUnavailable(MissionClientError):
    """The PDP (or the enforcement point in front of it) could not decide just now: retry
    later. Nothing was permitted."""


class InvalidToolArguments(MissionClientError):
    """The tool's input schema refuses these arguments (JSON-RPC -32602)."""


def error_for(description: str, *, error: str | None = None, reason: str | None = None,
              evaluation_id: str | None = None, status: int | None = None,
              mission_state: str | None = None, oauth: bool = False) -> MissionClientError:
    """The most specific error for what a server said. Mission state first (a stopped
    Mission explains every other refusal), then the PDP's or enforcement point's reason,
    then the wire code: ``oauth`` says the answer came from the AS's OAuth endpoints, whose
    every ``error`` is an OAuth error (``invalid_client`` on a 401 included)."""
    if mission_state not in (None, "active") or reason in INACTIVE_REASONS:
        kind = MissionRevoked if mission_state == "revoked" else MissionInactive
        return kind(description, mission_state=mission_state, error=error, reason=reason,
                    evaluation_id=evaluation_id, status=status)
    return _class_for(error, reason, oauth)(
        description, error=error, reason=reason, evaluation_id=evaluation_id, status=status)


_BY_REASON: Final[dict[str, type[MissionClientError]]] = {
    # the PDP's reason, and the RS kit's two for the same fact at an API
    "out_of_authority": ToolNotGranted, "action_not_granted": ToolNotGranted,
    "resource_not_granted": ToolNotGranted, "capability_drift": CapabilityDrift,
    "parameter_mismatch": ArgumentsChanged, "pdp_unreachable": PdpUnavailable,
    **{reason: ConstraintExceeded for reason in CONSTRAINT_REASONS},
    **{reason: PermitRefused for reason in PERMIT_ERRORS},
}


def _class_for(error: str | None, reason: str | None,
               oauth: bool) -> type[MissionClientError]:
    if reason in _BY_REASON:
        return _BY_REASON[reason]
    if oauth and error is not None:
        return OAuthError
    if reason is not None or error == "insufficient_scope":
        return ActionDenied
    if error == "temporarily_unavailable":  # an enforcement point failing closed (503)
        return PdpUnavailable
    return MissionClientError  # e.g. an API's 401 invalid_token: the token, not the Mission


__all__ = [
    "ActionDenied", "ArgumentsChanged", "CapabilityDrift", "ConsentRejected",
    "ConstraintExceeded", "InvalidToolArguments", "MissionClientError", "MissionInactive",
    "MissionRevoked", "OAuthError", "PdpUnavailable", "PermitRefused", "ToolNotGranted",
    "error_for",
]
