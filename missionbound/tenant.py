"""The tenant: who can log in, which clients exist and what they may ever ask for, and the
resource catalog (DESIGN.md "The demo tenant"; PROFILE.md sections 3 and 12).

With nothing configured the tenant is the packaged demo tenant (``missionbound/demo/tenant.toml``).
A deployment gives its own either inline in the configuration file or in ``tenant_file``; the
shape is the same as the demo file. Passwords and client secrets are hashed as the tenant loads
and their plaintext is dropped; the demo secrets are refused anywhere but in the demo tenant.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from missionbound.config import TENANT_TABLES, ConfigError, Settings, read_toml
from missionbound.mission.catalog import Catalog, CatalogError, load_catalog

DEMO_TENANT_FILE = Path(__file__).parent / "demo" / "tenant.toml"

KNOWN_ROLES = frozenset({"admin"})
TOKEN_ENDPOINT_AUTH_METHODS = frozenset(
    {"client_secret_basic", "client_secret_post", "private_key_jwt", "none"}
)
_SECRET_METHODS = frozenset({"client_secret_basic", "client_secret_post"})

# RFC 7591 section 2 (and RFC 9449 section 5.2) client metadata the loader keeps as-is for the
# issuer to interpret (e.g. ``jwks`` for private_key_jwt). Anything else is a typo: refused.
_RFC7591_METADATA = frozenset(
    {
        "jwks", "jwks_uri", "grant_types", "response_types", "scope", "contacts",
        "logo_uri", "client_uri", "policy_uri", "tos_uri", "software_id",
        "software_version", "dpop_bound_access_tokens",
    }
)  # fmt: skip
_USER_KEYS = frozenset({"username", "password", "display_name", "roles", "may_approve_for"})
_CLIENT_KEYS = frozenset(
    {
        "client_id", "client_name", "client_secret", "token_endpoint_auth_methods",
        "redirect_uris", "mission_resources", "mission_purposes_registered", "audiences",
    }
) | _RFC7591_METADATA  # fmt: skip

# scrypt cost for user passwords (RFC 7914; n=2**14, r=8 is 16 MiB and ~50 ms per check).
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


# --------------------------------------------------------------------------- secrets


@dataclass(frozen=True, repr=False)
class SecretHash:
    """A salted hash of a password or client secret. The plaintext is never stored.

    ``scrypt`` for user passwords: they are low-entropy and checked only at login.
    ``sha256`` for client secrets: they are machine credentials checked on every token,
    introspection and AuthZEN request, where a memory-hard KDF would cost ~50 ms per call.
    """

    algorithm: str
    salt: bytes
    digest: bytes

    @classmethod
    def of(cls, plaintext: str, algorithm: str) -> SecretHash:
        salt = secrets.token_bytes(16)
        return cls(algorithm, salt, _digest(algorithm, salt, plaintext))

    @classmethod
    def unmatchable(cls, algorithm: str) -> SecretHash:
        """A hash no input matches, checked at the same cost as a real one, so an unknown
        username or client_id takes as long to refuse as a wrong password."""
        return cls(algorithm, secrets.token_bytes(16), secrets.token_bytes(32))

    def matches(self, candidate: str) -> bool:
        return hmac.compare_digest(self.digest, _digest(self.algorithm, self.salt, candidate))

    def encode(self) -> str:
        """``algorithm$salt$digest`` (base64url): how a registered client's secret hash is
        stored (``clients.secret_hash``)."""
        return "$".join((self.algorithm, _b64(self.salt), _b64(self.digest)))

    @classmethod
    def decode(cls, value: str) -> SecretHash:
        algorithm, salt, digest = value.split("$")
        return cls(algorithm, _unb64(salt), _unb64(digest))

    def __repr__(self) -> str:
        return f"SecretHash({self.algorithm}, ...)"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _digest(algorithm: str, salt: bytes, plaintext: str) -> bytes:
    data = plaintext.encode("utf-8")
    if algorithm == "scrypt":
        return hashlib.scrypt(data, salt=salt, **_SCRYPT)
    if algorithm == "sha256":
        return hashlib.sha256(salt + data).digest()
    raise ValueError(f"unknown secret hash algorithm {algorithm!r}")


_UNKNOWN_USER = SecretHash.unmatchable("scrypt")
_UNKNOWN_CLIENT = SecretHash.unmatchable("sha256")


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class User:
    username: str
    display_name: str
    roles: frozenset[str]
    # Subjects this user may approve Missions for, besides themself (PROFILE.md section 5).
    may_approve_for: frozenset[str]
    password_hash: SecretHash = field(repr=False)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def may_approve_missions_of(self, subject: str) -> bool:
        return subject == self.username or subject in self.may_approve_for


@dataclass(frozen=True)
class Client:
    client_id: str
    client_name: str
    token_endpoint_auth_methods: tuple[str, ...]
    redirect_uris: tuple[str, ...]
    # The client's ceiling: resource -> actions it may ever hold there ("*" already expanded
    # to the catalog's actions). A resource not listed is never granted to this client.
    mission_resources: Mapping[str, frozenset[str]]
    # Purposes the client declared (PROFILE.md section 3); None = it declared none.
    mission_purposes_registered: frozenset[str] | None
    secret_hash: SecretHash | None = field(repr=False)
    # The resources this client serves as a Resource Server or PEP: introspection and Mission
    # Status show it only what concerns these audiences (PROFILE.md section 10).
    audiences: frozenset[str] = frozenset()
    # Other RFC 7591 metadata (jwks, grant_types, ...), uninterpreted here.
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_confidential(self) -> bool:
        return any(method != "none" for method in self.token_endpoint_auth_methods)


@dataclass(frozen=True)
class Tenant:
    name: str
    is_demo: bool
    source: Path
    issuer: str
    users: Mapping[str, User]
    clients: Mapping[str, Client]
    catalog: Catalog

    def authenticate_user(self, username: str, password: str) -> User | None:
        """The user if the password is theirs. Same cost for an unknown username."""
        user = self.users.get(username)
        matched = (user.password_hash if user else _UNKNOWN_USER).matches(password)
        return user if user is not None and matched else None

    def authenticate_client(self, client_id: str, secret: str) -> Client | None:
        """The client if ``secret`` is its secret. Same cost for an unknown client_id."""
        client = self.clients.get(client_id)
        stored = client.secret_hash if client is not None else None
        matched = (stored or _UNKNOWN_CLIENT).matches(secret)
        return client if client is not None and stored is not None and matched else None


# --------------------------------------------------------------------------- loading


def load_tenant(settings: Settings) -> Tenant:
    """The configured tenant, or the demo tenant when none is configured.

    Raises :class:`ConfigError` naming the file and the entry at fault.
    """
    source, raw, is_demo = _locate(settings)
    where = str(source)
    for key in raw:
        if key not in TENANT_TABLES:
            raise ConfigError(f"{where}: unknown tenant table {key!r}")
    if not is_demo:
        _refuse_demo_secrets(raw, where)

    tenant_table = _table(raw.get("tenant", {}), f"{where}: [tenant]")
    _only(tenant_table, {"name"}, f"{where}: [tenant]")
    name = _string(tenant_table.get("name", source.stem), f"{where}: [tenant].name")

    if "catalog" not in raw:
        raise ConfigError(f"{where}: the tenant has no [catalog]")
    catalog_raw = _substitute_issuer(_table(raw["catalog"], f"{where}: [catalog]"), settings.issuer)
    try:
        catalog = load_catalog(catalog_raw)
    except CatalogError as exc:
        raise ConfigError(f"{where}: {exc}") from None

    users = _load_users(_array(raw.get("users", []), f"{where}: users"), where)
    clients = _load_clients(
        _array(raw.get("clients", []), f"{where}: clients"), catalog, settings.issuer, where
    )
    return Tenant(
        name=name,
        is_demo=is_demo,
        source=source,
        issuer=settings.issuer,
        users=users,
        clients=clients,
        catalog=catalog,
    )


def _locate(settings: Settings) -> tuple[Path, dict[str, Any], bool]:
    inline: dict[str, Any] = {}
    if settings.config_file is not None:
        data = read_toml(settings.config_file)
        inline = {key: value for key, value in data.items() if key in TENANT_TABLES}
    if settings.tenant_file is not None:
        if inline:
            raise ConfigError(
                f"{settings.config_file}: has tenant tables and also names tenant_file "
                f"{settings.tenant_file}; keep one"
            )
        return settings.tenant_file, read_toml(settings.tenant_file), False
    if inline:
        assert settings.config_file is not None
        return settings.config_file, inline, False
    return DEMO_TENANT_FILE, read_toml(DEMO_TENANT_FILE), True


def _load_users(entries: list[Any], where: str) -> dict[str, User]:
    users: dict[str, User] = {}
    for i, entry in enumerate(entries):
        at = f"{where}: users[{i}]"
        entry = _table(entry, at)
        _only(entry, _USER_KEYS, at)
        username = _string(entry.get("username"), f"{at}.username")
        if username in users:
            raise ConfigError(f"{at}: username {username!r} appears twice")
        password = _string(entry.get("password"), f"{at}.password")
        roles = frozenset(_strings(entry.get("roles", []), f"{at}.roles"))
        if not roles <= KNOWN_ROLES:
            raise ConfigError(f"{at}: unknown roles {sorted(roles - KNOWN_ROLES)}")
        users[username] = User(
            username=username,
            display_name=_string(entry.get("display_name", username), f"{at}.display_name"),
            roles=roles,
            may_approve_for=frozenset(
                _strings(entry.get("may_approve_for", []), f"{at}.may_approve_for")
            ),
            password_hash=SecretHash.of(password, "scrypt"),
        )
    for user in users.values():
        unknown = user.may_approve_for - users.keys()
        if unknown:
            raise ConfigError(
                f"{where}: user {user.username!r} may_approve_for unknown users {sorted(unknown)}"
            )
    return users


def _load_clients(
    entries: list[Any], catalog: Catalog, issuer: str, where: str
) -> dict[str, Client]:
    clients: dict[str, Client] = {}
    for i, entry in enumerate(entries):
        at = f"{where}: clients[{i}]"
        entry = _table(entry, at)
        _only(entry, _CLIENT_KEYS, at)
        client_id = _string(entry.get("client_id"), f"{at}.client_id")
        if client_id in clients:
            raise ConfigError(f"{at}: client_id {client_id!r} appears twice")
        secret = entry.get("client_secret")
        if secret is not None:
            secret = _string(secret, f"{at}.client_secret")
        default_methods = ["client_secret_basic"] if secret is not None else ["none"]
        methods = _strings(entry.get("token_endpoint_auth_methods", default_methods), at)
        unknown = set(methods) - TOKEN_ENDPOINT_AUTH_METHODS
        if unknown:
            raise ConfigError(f"{at}: unknown token_endpoint_auth_methods {sorted(unknown)}")
        if _SECRET_METHODS & set(methods) and secret is None:
            raise ConfigError(f"{at}: {client_id!r} authenticates with a secret but has none")
        if secret is not None and not _SECRET_METHODS & set(methods):
            raise ConfigError(
                f"{at}: {client_id!r} has a client_secret but no client_secret_* method"
            )
        resources_raw = _table(
            _substitute_issuer(entry.get("mission_resources", {}), issuer),
            f"{at}.mission_resources",
        )
        purposes = entry.get("mission_purposes_registered")
        registered = None
        if purposes is not None:
            registered = frozenset(_strings(purposes, f"{at}.mission_purposes_registered"))
            not_in_catalog = registered - catalog.purposes.keys()
            if not_in_catalog:
                raise ConfigError(f"{at}: purposes not in the catalog: {sorted(not_in_catalog)}")
        clients[client_id] = Client(
            client_id=client_id,
            client_name=_string(entry.get("client_name", client_id), f"{at}.client_name"),
            token_endpoint_auth_methods=tuple(methods),
            redirect_uris=tuple(_strings(entry.get("redirect_uris", []), f"{at}.redirect_uris")),
            mission_resources=_client_ceiling(resources_raw, catalog, at),
            mission_purposes_registered=registered,
            audiences=frozenset(
                _strings(_substitute_issuer(entry.get("audiences", []), issuer), f"{at}.audiences")
            ),
            secret_hash=SecretHash.of(secret, "sha256") if secret is not None else None,
            metadata={key: value for key, value in entry.items() if key in _RFC7591_METADATA},
        )
    return clients


def _client_ceiling(raw: Mapping[str, Any], catalog: Catalog, at: str) -> dict[str, frozenset[str]]:
    ceiling: dict[str, frozenset[str]] = {}
    for uri, actions in raw.items():
        resource = catalog.resource(uri)
        if resource is None:
            raise ConfigError(f"{at}.mission_resources: {uri!r} is not a catalog resource")
        names = frozenset(_strings(actions, f"{at}.mission_resources[{uri!r}]"))
        if "*" in names:
            names = frozenset(resource.actions)
        unknown = names - resource.actions.keys()
        if unknown:
            raise ConfigError(f"{at}.mission_resources: {uri!r} has no actions {sorted(unknown)}")
        ceiling[uri] = names
    return ceiling


# --------------------------------------------------------------------------- demo secrets


@dataclass(frozen=True)
class DemoCredential:
    kind: str  # "user" or "client"
    name: str
    secret: str
    note: str


@cache
def demo_credentials() -> tuple[DemoCredential, ...]:
    """The demo tenant's passwords and secrets, read from the demo file (the one source of
    truth), for the banner ``serve`` prints and for refusing them elsewhere."""
    raw = read_toml(DEMO_TENANT_FILE)
    found = [
        DemoCredential("user", user["username"], user["password"], user.get("display_name", ""))
        for user in raw.get("users", [])
    ]
    found += [
        DemoCredential("client", client["client_id"], client["client_secret"],
                       client.get("client_name", ""))
        for client in raw.get("clients", []) if "client_secret" in client
    ]  # fmt: skip
    return tuple(found)


def _refuse_demo_secrets(raw: Mapping[str, Any], where: str) -> None:
    demo = {credential.secret for credential in demo_credentials()}
    offenders = [
        f"user {entry.get('username')!r}"
        for entry in _entries(raw.get("users"))
        if entry.get("password") in demo
    ] + [
        f"client {entry.get('client_id')!r}"
        for entry in _entries(raw.get("clients"))
        if entry.get("client_secret") in demo
    ]
    if offenders:
        raise ConfigError(
            f"{where}: {', '.join(offenders)} use a demo password or secret. Demo secrets are "
            "public and only allowed in the built-in demo tenant; set your own."
        )


# --------------------------------------------------------------------------- helpers


def _substitute_issuer(value: Any, issuer: str) -> Any:
    """Replace ``{issuer}`` in every string and table key (resource URIs are written as
    ``{issuer}/demo/erp`` so the same tenant works at any issuer URL)."""
    if isinstance(value, str):
        return value.replace("{issuer}", issuer)
    if isinstance(value, Mapping):
        return {
            _substitute_issuer(k, issuer): _substitute_issuer(v, issuer) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_substitute_issuer(item, issuer) for item in value]
    return value


def _entries(value: Any) -> Iterable[Mapping[str, Any]]:
    if not isinstance(value, list):
        return []
    return [entry for entry in value if isinstance(entry, Mapping)]


def _table(value: Any, at: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{at} must be a table")
    return dict(value)


def _array(value: Any, at: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{at} must be an array of tables")
    return value


def _only(entry: Mapping[str, Any], allowed: frozenset[str] | set[str], at: str) -> None:
    unknown = set(entry) - allowed
    if unknown:
        raise ConfigError(f"{at}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")


def _string(value: Any, at: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{at} must be a non-empty string")
    return value


def _strings(value: Any, at: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ConfigError(f"{at} must be an array of non-empty strings")
    return list(value)
