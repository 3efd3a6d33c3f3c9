"""Dynamic Client Registration (RFC 7591), as an Authlib endpoint.

Registration is open: no initial access token (RFC 7591 section 3). What a registered
client can ever obtain is still bounded three times over: by the catalog (its
``mission_resources`` ceiling must lie inside it), by a person approving every Mission on
the consent page, and by the derivation gate. Registration never makes a client an
audience for introspection (``audiences`` is operator configuration), never takes an id the
tenant file uses (configured clients win, issuer/clients.py), and never fetches anything:
``jwks_uri`` is refused and keys are registered inline as ``jwks``.

The request is JSON (section 3.1); members this AS does not know are ignored (section 2:
"The authorization server MUST ignore any client metadata sent by the client that it does
not understand"), so the response (section 3.2.1) lists exactly what was registered. The
``client_secret`` is returned once and only its hash is stored.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc7591 import (
    ClientRegistrationEndpoint,
    InvalidClientMetadataError,
    InvalidRedirectURIError,
    UnapprovedSoftwareStatementError,
)
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from missionbound import audit
from missionbound.issuer.clients import SUPPORTED_GRANT_TYPES
from missionbound.mission.canonical import parse_strict
from missionbound.mission.catalog import Catalog
from missionbound.mission.errors import InvalidRequest
from missionbound.store.clients import get_client, put_client
from missionbound.store.keys import PRIVATE_JWK_MEMBERS
from missionbound.tenant import SecretHash

if TYPE_CHECKING:
    from missionbound.issuer.server import OAuthRequest

CLIENT_REGISTRATION = "client_registration"
AUDIT_REGISTERED = "client.registered"

# RFC 7591 section 2: the methods a registered client may use. private_key_jwt needs jwks.
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
SECRET_METHODS = frozenset({"client_secret_basic", "client_secret_post"})
# What a registration request may hold, in octets (the whole body is capped by the
# app's request size limit too).
MAX_REGISTRATION_SIZE = 65_536
MAX_REDIRECT_URIS = 10
MAX_REDIRECT_URI_LENGTH = 2048  # the authorization_codes.redirect_uri column
MAX_CLIENT_NAME_LENGTH = 100
MAX_KEYS = 10
MAX_LIST = 100
# Keys that can verify a private_key_jwt assertion (client_auth.ASSERTION_ALGS).
ASSERTION_KEY_CURVES = frozenset({"P-256", "P-384"})
MIN_RSA_BITS = 2048
# Registered client ids name their origin; 128 random bits.
CLIENT_ID_PREFIX = "dcr_"


def _safe(text: str) -> str:
    """An error description fit for the wire (RFC 6749 section 5.2 allows %x20-21 /
    %x23-5B / %x5D-7E): what a client sent may hold anything."""
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "?" for c in text)[:300]


def _refuse(description: str) -> InvalidClientMetadataError:
    return InvalidClientMetadataError(_safe(description))


# -- validation ----------------------------------------------------------------------------


def validate_client_metadata(raw: Any, *, catalog: Catalog) -> dict[str, Any]:
    """The metadata to register for the request ``raw`` (a parsed JSON value), defaults
    applied and unknown members dropped; raises ``invalid_client_metadata`` or
    ``invalid_redirect_uri`` (RFC 7591 section 3.2.2)."""
    if not isinstance(raw, dict):
        raise _refuse("the registration request must be a JSON object")
    if "software_statement" in raw:
        raise UnapprovedSoftwareStatementError("This server approves no software statements.")
    if "jwks_uri" in raw:
        raise _refuse(
            "jwks_uri is not supported: this server never fetches URLs a client supplies; "
            "register the public keys inline as jwks"
        )
    metadata: dict[str, Any] = {}

    grant_types = _string_list(raw.get("grant_types", ["authorization_code"]), "grant_types")
    unsupported = [name for name in grant_types if name not in SUPPORTED_GRANT_TYPES]
    if unsupported:
        raise _refuse(f"grant_types may only name {', '.join(SUPPORTED_GRANT_TYPES)}")
    if "authorization_code" not in grant_types:
        # Every grant here starts with a code (PROFILE.md section 8); RFC 7591 section 2.1
        # ties response_types code to it.
        raise _refuse("grant_types must include authorization_code")
    metadata["grant_types"] = grant_types

    response_types = _string_list(raw.get("response_types", ["code"]), "response_types")
    if response_types != ["code"]:
        raise _refuse("response_types must be exactly [code]")
    metadata["response_types"] = response_types

    metadata["redirect_uris"] = _redirect_uris(raw.get("redirect_uris"))

    method = raw.get("token_endpoint_auth_method", "client_secret_basic")
    if method not in AUTH_METHODS:
        raise _refuse(f"token_endpoint_auth_method must be one of {', '.join(AUTH_METHODS)}")
    metadata["token_endpoint_auth_method"] = method
    if "jwks" in raw:
        if method != "private_key_jwt":
            raise _refuse("jwks is used only with token_endpoint_auth_method private_key_jwt")
        metadata["jwks"] = _public_jwks(raw["jwks"])
    elif method == "private_key_jwt":
        raise _refuse("private_key_jwt needs the client's public keys as jwks")

    if "client_name" in raw:
        name = raw["client_name"]
        if (
            not isinstance(name, str)
            or not 0 < len(name) <= MAX_CLIENT_NAME_LENGTH
            or not name.isprintable()
        ):
            raise _refuse(
                f"client_name must be 1 to {MAX_CLIENT_NAME_LENGTH} printable characters"
            )
        metadata["client_name"] = name

    if "dpop_bound_access_tokens" in raw:
        if not isinstance(raw["dpop_bound_access_tokens"], bool):
            raise _refuse("dpop_bound_access_tokens must be true or false")
        metadata["dpop_bound_access_tokens"] = raw["dpop_bound_access_tokens"]

    if "authorization_details_types" in raw:
        types = _string_list(raw["authorization_details_types"], "authorization_details_types")
        if set(types) - {"mission_resource_access"}:
            raise _refuse("authorization_details_types may only name mission_resource_access")
        metadata["authorization_details_types"] = types

    if "mission_purposes_registered" in raw:
        purposes = _string_list(
            raw["mission_purposes_registered"], "mission_purposes_registered"
        )
        if any(purpose not in catalog.purposes for purpose in purposes):
            raise _refuse("mission_purposes_registered names a purpose not in the catalog")
        metadata["mission_purposes_registered"] = purposes

    # Absent = an empty ceiling: the client may propose nothing until it declares what it
    # needs. Fail closed rather than default to the whole catalog.
    metadata["mission_resources"] = _ceiling(raw.get("mission_resources", {}), catalog)
    return metadata


def _string_list(value: Any, name: str) -> list[str]:
    if (
        not isinstance(value, list)
        or len(value) > MAX_LIST
        or not all(isinstance(item, str) and item for item in value)
    ):
        raise _refuse(f"{name} must be an array of non-empty strings")
    if len(set(value)) != len(value):
        raise _refuse(f"{name} lists a value twice")
    return list(value)


def _redirect_uris(value: Any) -> list[str]:
    """RFC 6749 section 3.1.2 and RFC 8252 section 7.3: absolute ``https`` URIs, or ``http``
    on a loopback IP literal (for native apps); no fragment, no user info. Private-use URI
    schemes (RFC 8252 section 7.1) are not offered."""
    if value is None:
        # RFC 7591 section 2: clients using redirect-based flows MUST register them.
        raise InvalidRedirectURIError("redirect_uris is required for authorization_code.")
    if not isinstance(value, list) or not 0 < len(value) <= MAX_REDIRECT_URIS:
        raise InvalidRedirectURIError(
            f"redirect_uris must be an array of 1 to {MAX_REDIRECT_URIS} URIs."
        )
    for uri in value:
        problem = _redirect_uri_problem(uri)
        if problem is not None:
            raise InvalidRedirectURIError(_safe(problem))
    if len(set(value)) != len(value):
        raise InvalidRedirectURIError("redirect_uris lists a URI twice.")
    return list(value)


def _redirect_uri_problem(uri: Any) -> str | None:
    if not isinstance(uri, str) or not 0 < len(uri) <= MAX_REDIRECT_URI_LENGTH:
        return f"a redirect URI must be a string of 1 to {MAX_REDIRECT_URI_LENGTH} characters"
    if not uri.isascii() or any(c.isspace() or not c.isprintable() for c in uri):
        return "a redirect URI must be ASCII without spaces or control characters"
    if "#" in uri:
        return "a redirect URI must not have a fragment (RFC 6749 section 3.1.2)"
    try:
        parts = urlsplit(uri)
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        return "a redirect URI must be a valid absolute URI"
    if "@" in parts.netloc:
        return "a redirect URI must not carry user information"
    if parts.scheme == "https" and host:
        return None
    if parts.scheme == "http" and host is not None and _is_loopback_literal(host):
        return None
    if parts.scheme == "http" and host == "localhost":
        # RFC 8252 section 8.3: localhost is NOT RECOMMENDED; the IP literal is.
        return "use http://127.0.0.1 or http://[::1] rather than localhost (RFC 8252 8.3)"
    return "a redirect URI must be https, or http on a loopback IP (RFC 8252 section 7.3)"


def _is_loopback_literal(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _public_jwks(value: Any) -> dict[str, Any]:
    """A JWK Set of public keys that can verify a private_key_jwt assertion (RFC 7523,
    client_auth.ASSERTION_ALGS): EC P-256/P-384 or RSA of at least 2048 bits."""
    keys = value.get("keys") if isinstance(value, dict) else None
    if not isinstance(keys, list) or not 0 < len(keys) <= MAX_KEYS:
        raise _refuse(f"jwks must be a JWK Set: an object whose keys holds 1 to {MAX_KEYS} JWKs")
    for key in keys:
        if not isinstance(key, dict):
            raise _refuse("every member of jwks.keys must be a JWK object")
        if PRIVATE_JWK_MEMBERS & set(key):
            # RFC 7591 section 2: jwks holds the client's public keys; a private member
            # means the client leaked its key.
            raise _refuse("jwks must hold public keys only: a private key member was sent")
        kty, crv = key.get("kty"), key.get("crv")
        if not ((kty == "EC" and crv in ASSERTION_KEY_CURVES) or kty == "RSA"):
            raise _refuse("jwks keys must be EC P-256, EC P-384 or RSA keys")
        if kty == "RSA" and _modulus_bits(key.get("n")) < MIN_RSA_BITS:
            # Checked before joserfc sees the key: it would only warn about a short one.
            raise _refuse(f"RSA keys must have at least {MIN_RSA_BITS} bits")
    try:
        imported = KeySet.import_key_set({"keys": keys})
    except (JoseError, ValueError, TypeError, KeyError) as error:
        raise _refuse("jwks holds a key that cannot be imported") from error
    if len(imported.keys) != len(keys):
        raise _refuse("jwks holds a key of a type this server does not understand")
    if any(key_object.is_private for key_object in imported.keys):
        raise _refuse("jwks must hold public keys only")
    return {"keys": [dict(key) for key in keys]}


def _modulus_bits(modulus: Any) -> int:
    if not isinstance(modulus, str):
        return 0
    try:
        raw = base64.urlsafe_b64decode(modulus + "=" * (-len(modulus) % 4))
    except (ValueError, binascii.Error):
        return 0
    return int.from_bytes(raw, "big").bit_length()


def _ceiling(value: Any, catalog: Catalog) -> dict[str, list[str]]:
    """``mission_resources``: catalog resource URI -> the actions the client may ever hold
    there, ``"*"`` standing for all of them (the tenant file's shape, tenant.py)."""
    if not isinstance(value, Mapping):
        raise _refuse("mission_resources must be an object: resource URI -> actions")
    ceiling: dict[str, list[str]] = {}
    for uri, actions in value.items():
        resource = catalog.resource(uri)
        if resource is None:
            raise _refuse("mission_resources names a resource that is not in the catalog")
        names = _string_list(actions, "each mission_resources entry")
        if not names:
            raise _refuse("a mission_resources entry must name at least one action")
        chosen = set(resource.actions) if "*" in names else set(names)
        if chosen - set(resource.actions):
            raise _refuse("mission_resources names an action the catalog resource lacks")
        ceiling[uri] = sorted(chosen)
    return ceiling


# -- the endpoint --------------------------------------------------------------------------


class MissionClientRegistrationEndpoint(ClientRegistrationEndpoint):  # type: ignore[misc]
    """Authlib's RFC 7591 endpoint (the request -> metadata -> info -> save -> 201 order
    and the error classes); validation, ids, secrets and storage are this deployment's.

    Authlib's metadata claims check URIs only loosely, issue a secret to every client
    (``none`` clients included) and stamp ``time.time()``; each of those is replaced. The
    response is Authlib's: 201, the registered metadata plus the client information, and
    ``Cache-Control: no-store`` (it carries the secret).
    """

    def create_endpoint_request(self, request: OAuthRequest) -> OAuthRequest:
        # Authlib would wrap a framework request in a JsonRequest; the route has built the
        # OAuthRequest already, with the JSON body unparsed in ``registration_body``.
        return request

    def authenticate_token(self, request: OAuthRequest) -> bool:
        # Open registration (module docstring): no initial access token is asked for.
        return True

    def extract_client_metadata(self, request: OAuthRequest) -> dict[str, Any]:
        try:
            raw = parse_strict(request.registration_body, max_size=MAX_REGISTRATION_SIZE,
                               what="the registration request")
        except InvalidRequest as error:
            raise _refuse(error.description) from None
        metadata = validate_client_metadata(raw, catalog=self.server.tenant.catalog)
        # generate_client_info, next in Authlib's order, decides on a secret by it.
        request.registration_method = metadata["token_endpoint_auth_method"]
        return metadata

    def generate_client_id(self, request: OAuthRequest) -> str:
        session = request.session()
        configured = self.server.tenant.clients
        while True:
            client_id = CLIENT_ID_PREFIX + secrets.token_urlsafe(16)
            # Never an id the tenant file uses (those win anyway) or one registered before.
            if client_id not in configured and get_client(session, client_id) is None:
                return client_id

    def generate_client_info(self, request: OAuthRequest) -> dict[str, Any]:
        info: dict[str, Any] = {
            "client_id": self.generate_client_id(request),
            "client_id_issued_at": int(request.now.timestamp()),
        }
        # RFC 7591 section 3.2.1: a secret only for a client that authenticates with one;
        # client_secret_expires_at 0 = it does not expire.
        if request.registration_method in SECRET_METHODS:
            info["client_secret"] = secrets.token_urlsafe(32)
            info["client_secret_expires_at"] = 0
        return info

    def save_client(
        self, client_info: dict[str, Any], client_metadata: dict[str, Any],
        request: OAuthRequest,
    ) -> str:
        session = request.session()
        client_id = client_info["client_id"]
        secret = client_info.get("client_secret")
        put_client(
            session,
            client_id=client_id,
            metadata=client_metadata,
            # sha256, as for configured client secrets (tenant.SecretHash: they are
            # 256-bit random machine credentials checked on every request).
            secret_hash=SecretHash.of(secret, "sha256").encode() if secret else None,
            now=request.now,
        )
        audit.append(
            session,
            event=AUDIT_REGISTERED,
            mission_id=None,
            actor={"client_id": client_id},
            anchors=None,
            policy_version=None,
            data={
                "token_endpoint_auth_method": client_metadata["token_endpoint_auth_method"],
                "grant_types": client_metadata["grant_types"],
                "redirect_uris": client_metadata["redirect_uris"],
                "mission_resources": client_metadata["mission_resources"],
            },
            at=request.now,
        )
        return str(client_id)
