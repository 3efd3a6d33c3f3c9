"""Refusals of a Mission-aware Resource Server and how they go on the wire.

Each refusal is a :class:`RSRefusal` subclass carrying its RFC 6750 / RFC 9449 error code and
HTTP status, a machine ``reason`` (logged, returned in the body, named in
docs/resource-servers.md) and a description for ``error_description``.

On the wire (RFC 6750 section 3, RFC 9449 section 7.1, RFC 9728 section 5.1):

- a JSON body ``{"error", "error_description", "reason"[, "mission_state"]}``;
- a ``WWW-Authenticate`` challenge in the scheme the request used (``DPoP`` for proof errors
  and DPoP-bound tokens), with ``error`` and ``error_description``, ``algs`` on a DPoP
  challenge and ``resource_metadata`` pointing to the RFC 9728 document. A request that
  carried no credentials gets a challenge per accepted scheme and no error code (RFC 6750
  section 3.1: "SHOULD NOT include an error code");
- ``DPoP-Nonce`` with ``use_dpop_nonce`` (RFC 9449 section 9); ``Retry-After`` with a 503.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from missionbound.mission.errors import MissionError, wire_text


class Scheme(StrEnum):
    BEARER = "Bearer"
    DPOP = "DPoP"


class RSRefusal(MissionError):
    """The request is refused before the route runs."""

    error = "invalid_request"
    status = 400

    def __init__(self, reason: str, description: str, *,
                 scheme: Scheme | None = None, mission_state: str | None = None) -> None:
        super().__init__(description)
        self.reason = reason
        # The scheme of the challenge: None = the one the request used (set by the guard).
        self.scheme = scheme
        self.mission_state = mission_state

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.to_wire(), "reason": self.reason}
        if self.mission_state is not None:
            out["mission_state"] = self.mission_state
        return out

    def extra_headers(self) -> list[tuple[str, str]]:
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, {self.description!r})"


class NoCredentials(RSRefusal):
    """RFC 6750 section 3.1: the request carried no access token (or an auth scheme this
    resource does not take). The challenge carries no error code."""

    error = ""
    status = 401

    def body(self) -> dict[str, Any]:
        return {"error_description": wire_text(self.description), "reason": self.reason}


class InvalidTokenRefusal(RSRefusal):
    """RFC 6750 section 3.1 ``invalid_token``: expired, revoked, malformed or not for us,
    including a token whose Mission is no longer active (RS-C)."""

    error = "invalid_token"
    status = 401


class InsufficientScopeRefusal(RSRefusal):
    """RFC 6750 section 3.1 ``insufficient_scope``: the token is good but its Mission's
    authority does not cover this request (action, constraint, delegation)."""

    error = "insufficient_scope"
    status = 403


class InvalidRequestRefusal(RSRefusal):
    """RFC 6750 section 3.1 ``invalid_request``: the request itself is malformed (two
    Authorization headers, a body the constraints cannot be read from)."""

    error = "invalid_request"
    status = 400


class BodyTooLarge(InvalidRequestRefusal):
    status = 413


class InvalidDPoPProofRefusal(RSRefusal):
    """RFC 9449 section 7.1 ``invalid_dpop_proof``: the proof is missing, invalid, replayed
    or made with another key than the token's ``cnf.jkt``."""

    error = "invalid_dpop_proof"
    status = 401

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(reason, description, scheme=Scheme.DPOP)


class UseDPoPNonceRefusal(RSRefusal):
    """RFC 9449 section 9: the proof must carry the nonce sent in ``DPoP-Nonce``."""

    error = "use_dpop_nonce"
    status = 401

    def __init__(self, nonce: str, description: str) -> None:
        super().__init__("use_dpop_nonce", description, scheme=Scheme.DPOP)
        self.nonce = nonce

    def extra_headers(self) -> list[tuple[str, str]]:
        return [("DPoP-Nonce", self.nonce)]


class UnavailableRefusal(RSRefusal):
    """The resource cannot tell just now (the issuer's keys or the Mission's state cannot be
    had): fail closed with 503 and ``Retry-After``, never a verdict on the token."""

    error = "temporarily_unavailable"
    status = 503

    def __init__(self, reason: str, description: str, *, retry_after: int = 5) -> None:
        super().__init__(reason, description)
        self.retry_after = retry_after

    def extra_headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after))]


def _quoted(value: str) -> str:
    # RFC 9110 section 5.6.4 quoted-string; wire_text already removed '"' and '\\'.
    return f'"{wire_text(value)}"'


def challenges(refusal: RSRefusal, *, accepted: Sequence[Scheme], dpop_algs: Sequence[str],
               resource_metadata: str | None) -> list[str]:
    """The ``WWW-Authenticate`` values for ``refusal`` (none for a 413 or a 503: neither
    says anything about the credentials)."""
    if refusal.status not in (400, 401, 403):
        return []
    schemes = [refusal.scheme] if refusal.scheme is not None else list(accepted)
    out = []
    for scheme in schemes:
        params: list[str] = []
        if refusal.error:
            params.append(f"error={_quoted(refusal.error)}")
            params.append(f"error_description={_quoted(refusal.description)}")
        if scheme is Scheme.DPOP:
            params.append(f"algs={_quoted(' '.join(dpop_algs))}")
        if resource_metadata is not None:
            params.append(f"resource_metadata={_quoted(resource_metadata)}")
        out.append(f"{scheme.value} " + ", ".join(params) if params else scheme.value)
    return out
