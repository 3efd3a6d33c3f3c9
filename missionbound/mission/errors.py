"""Typed errors of the Mission core, each carrying the wire error code it maps to.

The HTTP layers never invent codes: they read ``error``, ``description`` and ``status``
from these exceptions. Codes follow the protocol that owns the surface: RFC 6749 / RFC 9126
(``invalid_request``), RFC 9396 (``invalid_authorization_details``), RFC 8707
(``invalid_target``) and PROFILE.md section 7 (the two 409 lifecycle errors).
"""

from __future__ import annotations


class MissionError(Exception):
    """Base class: an error with an OAuth-style ``error`` code and a human description."""

    error: str = "invalid_request"
    status: int = 400

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description

    def to_wire(self) -> dict[str, str]:
        return {"error": self.error, "error_description": wire_text(self.description)}


# RFC 6749 section 5.2: error_description is %x20-21 / %x23-5B / %x5D-7E (no '"' or '\\').
_WIRE_SAFE = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}
MAX_DESCRIPTION = 500


def wire_text(description: str) -> str:
    """``description`` as RFC 6749 allows it on the wire: double quotes become single ones,
    backslashes slashes, anything else outside printable ASCII a ``?``; at most 500
    characters (descriptions may quote client input)."""
    text = description.replace('"', "'").replace("\\", "/")
    text = "".join(char if char in _WIRE_SAFE else "?" for char in text)
    return text[:MAX_DESCRIPTION]


class InvalidRequest(MissionError):
    """Malformed input: bad JSON, wrong types, unknown members, out-of-range values."""

    error = "invalid_request"


class InvalidAuthorizationDetails(MissionError):
    """RFC 9396 section 5: authority that cannot be derived, named or bounded."""

    error = "invalid_authorization_details"


class InvalidTarget(MissionError):
    """RFC 8707 section 2: a requested ``resource`` outside what may be granted."""

    error = "invalid_target"


class InvalidState(MissionError):
    """PROFILE.md section 7: the event is illegal from the Mission's current state."""

    error = "invalid_state"
    status = 409


class ConcurrentModification(MissionError):
    """PROFILE.md section 7: the Mission is terminal, or ``expected_version`` is stale."""

    error = "mission_concurrent_modification"
    status = 409


class TransitionForbidden(MissionError):
    """The principal is not one of those section 7 allows to trigger this event."""

    error = "access_denied"
    status = 403
