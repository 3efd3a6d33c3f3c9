"""Errors of the PDP's wire surfaces, carrying the HTTP status AuthZEN gives them.

AuthZEN Authorization API 1.0 section 12 (HTTPS binding): a malformed or incomplete request
is 400, a caller without credentials 401, a caller not allowed to ask 403; the body is a
plain string. A *deny* is never an error: it is HTTP 200 with ``"decision": false``.
"""

from __future__ import annotations


class AuthZenError(Exception):
    """A request the PDP cannot evaluate; ``status`` and ``message`` go on the wire."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class MalformedRequest(AuthZenError):
    """A missing or malformed member (400)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class CallerUnauthenticated(AuthZenError):
    """No usable caller credentials (401); the HTTP layer adds the Basic challenge."""

    def __init__(self, message: str) -> None:
        super().__init__(401, message)


class CallerForbidden(AuthZenError):
    """An authenticated caller that may not ask this question (403)."""

    def __init__(self, message: str) -> None:
        super().__init__(403, message)


class BatchTooLarge(AuthZenError):
    """More ``evaluations`` items than the PDP takes in one request (413): runtime-digest
    section 3.7, the PEP splits the batch and resends."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


class NotConfigured(AuthZenError):
    """The decision point asked for is not configured on this server (503 for the Mission
    PDP, 404 for an unknown tenant)."""


class MissionContextMissing(MalformedRequest):
    """An evaluation at the Mission PDP without ``context.mission`` (runtime-digest 1.6):
    400, never evaluated against anything else, and a Refusal Record
    ``mission_context_missing``."""
