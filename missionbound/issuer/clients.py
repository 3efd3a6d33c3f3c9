"""OAuth clients as Authlib sees them (``ClientMixin``), from the tenant file or from RFC 7591
registration (the ``clients`` table).

Configured clients win over registered ones with the same id: registration can never take
over a client an operator configured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import ClientMixin

from missionbound.mission.derivation import ClientCeiling
from missionbound.store.clients import get_client
from missionbound.store.transactions import Store
from missionbound.tenant import Client as ConfiguredClient
from missionbound.tenant import SecretHash, Tenant

# RFC 8252 section 8.3: loopback IP literals, never "localhost".
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1"})

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # RFC 8693
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"  # RFC 7523 section 2.1

# The grants the issuer role implements (PROFILE.md sections 8 and 9); a client may be
# limited to fewer. Token exchange covers delegation, ID-JAGs and Transaction Tokens.
SUPPORTED_GRANT_TYPES = ("authorization_code", "refresh_token", TOKEN_EXCHANGE)
# The grants of the resource_as role (PROFILE.md section 11): ID-JAG redemption, and
# Transaction Tokens for its local tokens.
RESOURCE_AS_GRANT_TYPES = (JWT_BEARER, TOKEN_EXCHANGE)
# A configured client without grant_types may use every grant its server's role serves.
CONFIGURED_GRANT_TYPES = (*SUPPORTED_GRANT_TYPES, JWT_BEARER)


@dataclass(frozen=True)
class OAuthClient(ClientMixin):  # type: ignore[misc]
    client_id: str
    client_name: str
    auth_methods: tuple[str, ...]
    redirect_uris: tuple[str, ...]
    grant_types: tuple[str, ...]
    ceiling: ClientCeiling
    purposes: frozenset[str] | None
    secret: SecretHash | None = field(repr=False)
    jwks: Mapping[str, Any] | None = None
    # RFC 9449 section 5.2: this client's access tokens must always be DPoP-bound.
    dpop_bound_access_tokens: bool = False
    # Resources this client serves (introspection and status audience minimization).
    audiences: frozenset[str] = frozenset()

    @property
    def is_public(self) -> bool:
        return self.auth_methods == ("none",)

    # -- Authlib ClientMixin -------------------------------------------------------------

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        # RFC 6749 section 3.1.2.3: only an unambiguous registration may be defaulted.
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str) -> str:
        return scope

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # RFC 9700 section 2.1: exact string comparison, no patterns, no prefixes; the one
        # exception is the port of a loopback IP redirect (RFC 8252 section 7.3: a native
        # app listens on whatever port it gets).
        if redirect_uri in self.redirect_uris:
            return True
        candidate = _loopback_without_port(redirect_uri)
        return candidate is not None and any(
            _loopback_without_port(registered) == candidate for registered in self.redirect_uris
        )

    def check_client_secret(self, client_secret: str) -> bool:
        return self.secret is not None and self.secret.matches(client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in self.auth_methods

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


def _loopback_without_port(uri: str) -> tuple[str, str, str, str] | None:
    """An ``http`` loopback IP URI without its port, or None for any other URI."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS or port is None:
        return None
    if parts.username or parts.password or parts.fragment:
        return None
    return (parts.scheme, parts.hostname, parts.path, parts.query)


def from_configured(client: ConfiguredClient) -> OAuthClient:
    metadata = client.metadata
    return OAuthClient(
        client_id=client.client_id,
        client_name=client.client_name,
        auth_methods=tuple(client.token_endpoint_auth_methods),
        redirect_uris=tuple(client.redirect_uris),
        grant_types=tuple(metadata.get("grant_types", CONFIGURED_GRANT_TYPES)),
        ceiling=ClientCeiling(client.client_id, client.mission_resources),
        purposes=client.mission_purposes_registered,
        secret=client.secret_hash,
        jwks=metadata.get("jwks"),
        dpop_bound_access_tokens=bool(metadata.get("dpop_bound_access_tokens", False)),
        audiences=client.audiences,
    )


def from_registration(
    client_id: str, metadata: Mapping[str, Any], secret_hash: str | None
) -> OAuthClient:
    """A client stored by RFC 7591 registration (metadata as registered and validated)."""
    resources = metadata.get("mission_resources") or {}
    purposes = metadata.get("mission_purposes_registered")
    return OAuthClient(
        client_id=client_id,
        client_name=str(metadata.get("client_name", client_id)),
        auth_methods=(str(metadata.get("token_endpoint_auth_method", "client_secret_basic")),),
        redirect_uris=tuple(metadata.get("redirect_uris", ())),
        grant_types=tuple(metadata.get("grant_types", SUPPORTED_GRANT_TYPES)),
        ceiling=ClientCeiling(
            client_id, {uri: frozenset(actions) for uri, actions in resources.items()}
        ),
        purposes=frozenset(purposes) if purposes is not None else None,
        secret=SecretHash.decode(secret_hash) if secret_hash else None,
        jwks=metadata.get("jwks"),
        dpop_bound_access_tokens=bool(metadata.get("dpop_bound_access_tokens", False)),
    )


class ClientDirectory:
    """Finds a client by id: the tenant's configured clients, then registered ones."""

    def __init__(self, tenant: Tenant, store: Store) -> None:
        self._configured = {
            client_id: from_configured(client) for client_id, client in tenant.clients.items()
        }
        self._store = store

    def find(self, client_id: Any) -> OAuthClient | None:
        if not isinstance(client_id, str) or not 0 < len(client_id) <= 255:
            return None
        configured = self._configured.get(client_id)
        if configured is not None:
            return configured
        with self._store.read() as session, session.begin():
            row = get_client(session, client_id)
            if row is None:
                return None
            return from_registration(row.client_id, row.client_metadata, row.secret_hash)
