"""The OAuth pieces of the agent SDK that need no network: PKCE, the pushed request's
answer, the authorization response, token sets and OAuth error answers.

Kept apart from :mod:`missionbound.client.agent` so the sync and async clients, and the
tests, read the same rules: RFC 7636 (PKCE S256), RFC 9126 (PAR), RFC 9207 (``iss`` in the
authorization response), RFC 6749 section 5 (token answers and errors).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit

from missionbound.client.errors import (
    ConsentRejected,
    MissionClientError,
    OAuthError,
    error_for,
)

# The demo tenant's registered redirect URI for demo-agent; a CLI agent listens there.
DEFAULT_REDIRECT_URI: Final = "http://127.0.0.1:8765/callback"
TOKEN_EXCHANGE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"


def pkce_pair() -> tuple[str, str]:
    """A fresh ``(code_verifier, code_challenge)`` for S256 (RFC 7636 section 4.1-4.2)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class PendingMission:
    """A Mission Intent the AS accepted (PAR, RFC 9126): the Mission waits for approval.

    Send the approver to :attr:`consent_url`; the answer comes back to :attr:`redirect_uri`
    with a code, which :meth:`AsyncMissionClient.complete` redeems with the PKCE verifier
    kept here."""

    consent_url: str
    request_uri: str
    expires_in: int
    state: str
    redirect_uri: str
    code_verifier: str = field(repr=False)


@dataclass(frozen=True)
class TokenSet:
    """One token answer of ``/token``. ``claims`` are the access token's claims, decoded
    without verification: for display and for choosing what to do, never for trusting (the
    Resource Servers verify)."""

    access_token: str = field(repr=False)
    token_type: str
    expires_at: datetime
    refresh_token: str | None = field(default=None, repr=False)
    mission_id: str | None = None
    authorization_details: tuple[Mapping[str, Any], ...] = ()
    issued_token_type: str | None = None

    @classmethod
    def from_answer(cls, answer: Mapping[str, Any], *, now: datetime | None = None
                    ) -> TokenSet:
        """Read a successful token answer (RFC 6749 section 5.1)."""
        token = answer.get("access_token")
        lifetime = answer.get("expires_in")
        if not isinstance(token, str) or not isinstance(lifetime, int):
            raise MissionClientError("the token answer has no access_token or expires_in")
        details = answer.get("authorization_details") or ()
        return cls(
            access_token=token, token_type=str(answer.get("token_type", "")),
            expires_at=(now or datetime.now(UTC)) + timedelta(seconds=lifetime),
            refresh_token=answer.get("refresh_token"), mission_id=answer.get("mission_id"),
            authorization_details=tuple(details),
            issued_token_type=answer.get("issued_token_type"))

    @property
    def claims(self) -> dict[str, Any]:
        return unverified_claims(self.access_token)

    def expires_within(self, seconds: float, *, now: datetime | None = None) -> bool:
        return self.expires_at - (now or datetime.now(UTC)) <= timedelta(seconds=seconds)

    def granted(self, resource: str) -> list[str]:
        """The actions this token holds on ``resource`` (its authorization_details)."""
        return [action for entry in self.authorization_details
                if entry.get("resource") == resource for action in entry.get("actions", ())]


def unverified_claims(jwt: str) -> dict[str, Any]:
    """The payload of a compact JWS, not verified (see :attr:`TokenSet.claims`)."""
    try:
        payload = jwt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as exc:
        raise MissionClientError("the access token is not a JWT") from exc
    if not isinstance(claims, dict):
        raise MissionClientError("the access token's payload is not a JSON object")
    return claims


def consent_url(authorization_endpoint: str, client_id: str, request_uri: str) -> str:
    """Where the approver goes: ``/authorize`` with only the pushed request's reference
    (RFC 9126 section 4)."""
    query = urlencode({"client_id": client_id, "request_uri": request_uri})
    return f"{authorization_endpoint}?{query}"


def read_callback(callback_url: str, pending: PendingMission, *, issuer: str) -> str:
    """The code of the authorization response at ``callback_url``, after checking that it
    answers ``pending`` (``state``) and comes from ``issuer`` (RFC 9207 ``iss``: a mix-up
    attack sends another AS's answer); raises :class:`ConsentRejected` when the approver
    said no, another :class:`OAuthError` for any other error answer."""
    parts = urlsplit(callback_url)
    if f"{parts.scheme}://{parts.netloc}{parts.path}" != pending.redirect_uri:
        raise MissionClientError(f"{callback_url!r} is not an answer at "
                                 f"{pending.redirect_uri}")
    answer = {name: values[0] for name, values in parse_qs(parts.query).items()}
    if answer.get("state") != pending.state:
        raise MissionClientError("the authorization response's state is not this request's")
    if answer.get("iss") != issuer:
        raise MissionClientError(f"the authorization response comes from "
                                 f"{answer.get('iss')!r}, not {issuer!r} (RFC 9207)")
    if "error" in answer:
        description = answer.get("error_description") or "the authorization was refused"
        if answer["error"] == "access_denied":  # RFC 6749 4.1.2.1: the approver said no
            raise ConsentRejected(description, error="access_denied")
        raise OAuthError(description, error=answer["error"])
    if not answer.get("code"):
        raise MissionClientError("the authorization response has no code")
    return answer["code"]


def refusal(status: int, body: Any, *, what: str, from_as: bool = False
            ) -> MissionClientError:
    """The typed error for a refused request: an OAuth error answer of the AS (``from_as``:
    ``error``, ``error_description``, ``mission_state``) or an enforcement point's refusal
    (plus ``reason`` and ``evaluation_id``); anything else is reported with its status."""
    if isinstance(body, Mapping) and isinstance(body.get("error"), str):
        return error_for(str(body.get("error_description") or f"{what} was refused"),
                         error=body["error"], reason=_str_or_none(body.get("reason")),
                         evaluation_id=_str_or_none(body.get("evaluation_id")),
                         mission_state=_str_or_none(body.get("mission_state")),
                         status=status, oauth=from_as)
    return MissionClientError(f"{what} answered HTTP {status}", status=status)


def json_or_none(response: Any) -> Any:
    """The JSON body of an ``httpx`` response, or None when it has none."""
    try:
        return response.json()
    except ValueError:
        return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
