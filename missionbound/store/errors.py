"""Typed errors raised by the store, each carrying the wire ``error`` code it maps to.

They extend :class:`missionbound.mission.errors.MissionError` so the HTTP layers map every
store refusal exactly as they map the core's: ``error``, ``status``, ``to_wire()``.
"""

from __future__ import annotations

from missionbound.mission.errors import InvalidState, MissionError


class DerivationRefused(MissionError):
    """PROFILE.md section 8: a code redemption, refresh, token exchange or ID-JAG issuance
    refused by the derivation gate (Mission not effectively ``active``, or the
    ``max_derivations`` cap reached).

    ``mission_state`` is the effective state the gate saw; ``mission_error`` a machine
    reason (``derivations_exhausted``, ``mission_revoked``, ``mission_expired``, ...).
    """

    error = "invalid_grant"
    status = 400

    def __init__(
        self,
        description: str,
        *,
        mission_state: str | None,
        mission_error: str | None = None,
    ) -> None:
        super().__init__(description)
        self.mission_state = mission_state
        self.mission_error = mission_error

    def to_wire(self) -> dict[str, str]:
        wire = super().to_wire()
        if self.mission_state is not None:
            wire["mission_state"] = self.mission_state
        if self.mission_error is not None:
            wire["mission_error"] = self.mission_error
        return wire


class MissionNotFound(MissionError):
    """No Mission with this id. Surfaces that must not be an enumeration oracle (status,
    lifecycle: PROFILE.md section 10) map it to the same 404 as "not yours"."""

    error = "not_found"
    status = 404


class InvalidGrant(MissionError):
    """RFC 6749 section 5.2: an authorization code or refresh token that is unknown,
    expired, already used, revoked or issued to another client."""

    error = "invalid_grant"
    status = 400


class RefreshTokenReused(InvalidGrant):
    """A rotated refresh token was presented again (PROFILE.md section 8): the whole family
    is revoked, and the revocation survives the caller's rollback (see ``Store.begin``)."""


class InvalidRequestUri(MissionError):
    """RFC 9126 section 4 / RFC 9101 section 6.2: the ``request_uri`` is unknown, expired,
    already used or belongs to another client."""

    error = "invalid_request_uri"
    status = 400


class MissionRecordTampered(InvalidState):
    """The stored record is not the one the Mission's last lifecycle audit record committed
    to (its ``record_digest``): it was rewritten outside the AS. Recording another event
    over it would commit the rewritten record to the log, so the event is refused (409,
    fail closed) and nothing is written; ``missionbound audit verify`` names the break."""

    def __init__(self, mission_id: str, audit_seq: int | None, event: str) -> None:
        committed = (
            "has no lifecycle audit record"
            if audit_seq is None
            else f"does not match its last lifecycle audit record (audit record {audit_seq})"
        )
        super().__init__(
            f"stored Mission {mission_id} {committed}; refusing to record {event!r} over it "
            "(fail closed; run missionbound audit verify)"
        )
        self.mission_id = mission_id
        self.audit_seq = audit_seq
