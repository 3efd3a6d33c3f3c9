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
