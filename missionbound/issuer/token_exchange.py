"""OAuth 2.0 Token Exchange (RFC 8693) at the token endpoint, as an Authlib grant.

One grant type, three uses, told apart by ``requested_token_type`` (issuance digest 6.7):

* ``urn:ietf:params:oauth:token-type:access_token`` (the default): **delegation** inside the
  Mission (PROFILE.md section 9, :mod:`missionbound.issuer.delegation`);
* ``urn:ietf:params:oauth:token-type:id-jag``: the **cross-domain grant** for a Resource AS
  (PROFILE.md section 11, :mod:`missionbound.issuer.id_jag`);
* ``urn:ietf:params:oauth:token-type:txn_token``: a **Transaction Token** for calls inside
  this trust domain (draft-ietf-oauth-transaction-tokens, :mod:`missionbound.issuer.txn_tokens`).

This module reads and checks the request's parameters (RFC 8693 section 2.1) and
authenticates the client; each use is its own module. The requesting client is always
authenticated: a delegate, the agent asking for an ID-JAG and an internal service asking
for a Transaction Token are each named by their own credentials, never by a token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import InvalidRequestError, OAuth2Error
from authlib.oauth2.rfc6749.grants import BaseGrant, TokenEndpointMixin

from missionbound.issuer.client_auth import CONFIDENTIAL_AUTH_METHODS
from missionbound.issuer.clients import TOKEN_EXCHANGE
from missionbound.issuer.token_endpoint import authenticate_grant_client
from missionbound.mission.errors import MissionError

if TYPE_CHECKING:
    from missionbound.issuer.server import OAuthRequest

# RFC 8693 section 3 token type identifiers, and the two this profile adds.
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
REFRESH_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:refresh_token"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ID_JAG_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id-jag"
TXN_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:txn_token"

# Parameters that RFC 8693 section 2.1 defines once each; ``resource`` and ``audience`` may
# repeat. A repeated single-valued parameter is malformed (RFC 6749 section 3.2).
SINGLE_VALUED = (
    "subject_token", "subject_token_type", "actor_token", "actor_token_type",
    "requested_token_type", "scope", "authorization_details", "request_context",
    "request_details",
)
MAX_TOKEN_PARAMETER = 200_000


@dataclass(frozen=True)
class ExchangeRequest:
    """The parameters of one token exchange request, checked for shape only."""

    subject_token: str
    subject_token_type: str
    requested_token_type: str
    actor_token: str | None
    actor_token_type: str | None
    audiences: tuple[str, ...]
    resources: tuple[str, ...]
    scope: str | None
    # The raw authorization_details parameter (RFC 9396 section 6.2), parsed by the use.
    authorization_details: str | None
    # Transaction Tokens (draft-ietf-oauth-transaction-tokens section 7.1).
    request_context: str | None
    request_details: str | None


def parse_exchange_request(request: OAuthRequest) -> ExchangeRequest:
    """RFC 8693 section 2.1: ``subject_token`` and ``subject_token_type`` are required,
    ``actor_token_type`` comes with ``actor_token`` and only with it. ``invalid_request``
    otherwise."""
    for name in SINGLE_VALUED:
        if len(request.values(name)) > 1:
            raise InvalidRequestError(f"Parameter '{name}' appears more than once.")
    form = request.form
    subject_token = form.get("subject_token")
    subject_token_type = form.get("subject_token_type")
    if not subject_token:
        raise InvalidRequestError("Missing 'subject_token' in request.")
    if not subject_token_type:
        raise InvalidRequestError("Missing 'subject_token_type' in request.")
    if len(subject_token) > MAX_TOKEN_PARAMETER:
        raise InvalidRequestError("The 'subject_token' is too large.")
    actor_token = form.get("actor_token") or None
    actor_token_type = form.get("actor_token_type") or None
    if (actor_token is None) != (actor_token_type is None):
        raise InvalidRequestError(
            "'actor_token' and 'actor_token_type' must be sent together (RFC 8693 2.1).")
    if actor_token is not None and len(actor_token) > MAX_TOKEN_PARAMETER:
        raise InvalidRequestError("The 'actor_token' is too large.")
    return ExchangeRequest(
        subject_token=subject_token,
        subject_token_type=subject_token_type,
        requested_token_type=form.get("requested_token_type") or ACCESS_TOKEN_TYPE,
        actor_token=actor_token,
        actor_token_type=actor_token_type,
        audiences=tuple(request.values("audience")),
        resources=tuple(request.values("resource")),
        scope=form.get("scope") or None,
        authorization_details=form.get("authorization_details"),
        request_context=form.get("request_context"),
        request_details=form.get("request_details"),
    )


# What a use of the exchange returns: Authlib's (status, body, headers).
ExchangeResponse = tuple[int, dict[str, Any], list[tuple[str, str]]]
ExchangeHandler = Callable[["MissionTokenExchangeGrant", ExchangeRequest], ExchangeResponse]


def _handlers() -> dict[str, ExchangeHandler]:
    # Imported here: each use imports this module for ExchangeRequest.
    from missionbound.issuer.delegation import exchange_for_delegate
    from missionbound.issuer.id_jag import issue_id_jag
    from missionbound.issuer.txn_tokens import issue_txn_token

    return {
        ACCESS_TOKEN_TYPE: exchange_for_delegate,
        ID_JAG_TOKEN_TYPE: issue_id_jag,
        TXN_TOKEN_TYPE: issue_txn_token,
    }


class MissionTokenExchangeGrant(BaseGrant, TokenEndpointMixin):  # type: ignore[misc]
    """RFC 8693 token exchange. Confidential clients only: each use names its requester by
    the client's own credentials (a public client's ``client_id`` proves nothing)."""

    GRANT_TYPE = TOKEN_EXCHANGE
    TOKEN_ENDPOINT_AUTH_METHODS = list(CONFIDENTIAL_AUTH_METHODS)  # noqa: RUF012
    # Uses the Resource AS role serves (a resource_as has no delegation of its own yet,
    # and never issues ID-JAGs); set on the subclass the server registers.
    REQUESTED_TOKEN_TYPES: frozenset[str] = frozenset(
        {ACCESS_TOKEN_TYPE, ID_JAG_TOKEN_TYPE, TXN_TOKEN_TYPE})

    def validate_token_request(self) -> None:
        request = self.request
        authenticate_grant_client(self)
        request.exchange = parse_exchange_request(request)
        if request.exchange.requested_token_type not in self.REQUESTED_TOKEN_TYPES:
            raise InvalidRequestError(
                "Unsupported 'requested_token_type'; this server issues: "
                + ", ".join(sorted(self.REQUESTED_TOKEN_TYPES)))

    def create_token_response(self) -> ExchangeResponse:
        exchange: ExchangeRequest = self.request.exchange
        return _handlers()[exchange.requested_token_type](self, exchange)


class ResourceASTokenExchangeGrant(MissionTokenExchangeGrant):
    """The exchanges a Resource AS serves: Transaction Tokens for its own local tokens.

    Two phases, like the ID-JAG redemption (issuer/jwt_bearer.py): :meth:`prepare`, before
    the request's transaction, authenticates the client, checks the request and asks the
    origin about the Mission; the grant then runs in the transaction with that answer. The
    client is authenticated once (a ``private_key_jwt`` assertion is single-use)."""

    REQUESTED_TOKEN_TYPES = frozenset({TXN_TOKEN_TYPE})

    def prepare(self) -> None:
        request = self.request
        try:
            super().validate_token_request()
            from missionbound.issuer.txn_tokens import learn_remote_state

            request.remote_state = learn_remote_state(self, request.exchange)
        except (OAuth2Error, MissionError) as error:
            request.prepared_error = error
        request.prepared = True

    def validate_token_request(self) -> None:
        request = self.request
        if not getattr(request, "prepared", False):
            # The origin is never asked inside the transaction: the route prepares.
            raise RuntimeError("a Resource AS's token exchange was not prepared")
        error = getattr(request, "prepared_error", None)
        if error is not None:
            raise error


def prepare_exchange(issuer: Any, request: OAuthRequest) -> None:
    """Phase 1 of a Resource AS's token exchange (call it before ``MissionIssuer.run``);
    anything else is left alone."""
    if request.form.get("grant_type") != TOKEN_EXCHANGE:
        return
    grant = issuer.get_token_grant(request)
    if isinstance(grant, ResourceASTokenExchangeGrant):
        grant.prepare()
