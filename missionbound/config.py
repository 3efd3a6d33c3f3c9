"""Deployment settings: defaults, then a TOML file, then ``MISSIONBOUND_*`` environment
variables, then command-line flags (each later source wins).

The configuration file is the same TOML file that may also carry the tenant (``[tenant]``,
``[[users]]``, ``[[clients]]``, ``[catalog]``, see :mod:`missionbound.tenant`). Settings are its
top-level keys::

    issuer = "https://as.example.com"
    database_url = "postgresql+psycopg://missionbound@db/missionbound"

    [tenant]
    name = "acme"

Every setting and its environment variable is documented in ``docs/configuration.md``.
"""

from __future__ import annotations

import ipaddress
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import make_url

from missionbound.mission.errors import InvalidRequest
from missionbound.mission.intent import check_resource_uri
from missionbound.store.engine import DatabaseUrlError, normalize_url

ENV_PREFIX = "MISSIONBOUND_"

# Tables of the configuration file that belong to the tenant, not to the settings.
TENANT_TABLES = frozenset({"tenant", "users", "clients", "catalog"})

# Settings whose value is a path: when they come from the configuration file they are
# relative to that file's folder, so a config file and its tenant file can move together.
_PATH_SETTINGS = ("data_dir", "tenant_file")


class ConfigError(Exception):
    """The configuration cannot be used; the message says what to change and where."""


# Ten years: longer than any task an agent should hold authority for, far from overflow.
MAX_MISSION_LIFETIME = timedelta(days=3650)


class ResourceAuthority(BaseModel):
    """A Resource AS of another trust domain (issuer role): ID-JAGs with ``audience`` =
    ``issuer`` carry only the Mission's entries for ``resources`` (PROFILE.md section 11)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str
    resources: tuple[str, ...] = Field(min_length=1)

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        check_issuer(value)
        return value


class TrustedOrigin(BaseModel):
    """A Mission Issuer this Resource AS trusts (resource_as role). Its ID-JAGs are verified
    with the keys at ``jwks_uri`` (default ``<issuer>/jwks``); the Mission's state is asked
    of ``status_endpoint`` (default ``<issuer>/mission/status``) with HTTP Basic
    ``status_client_id`` / ``status_client_secret``, a client the origin registered with this
    AS's resources as its ``audiences``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str
    jwks_uri: str = ""
    status_endpoint: str = ""
    status_client_id: str
    status_client_secret: str = Field(repr=False)

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        check_issuer(value)
        return value

    @field_validator("jwks_uri", "status_endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
                raise ValueError(f"{value!r} must be an absolute http(s) URL without fragment")
        return value

    @model_validator(mode="after")
    def _defaults(self) -> TrustedOrigin:
        if not self.jwks_uri:
            object.__setattr__(self, "jwks_uri", f"{self.issuer}/jwks")
        if not self.status_endpoint:
            object.__setattr__(self, "status_endpoint", f"{self.issuer}/mission/status")
        return self


class Settings(BaseSettings):
    """Everything a deployment can set. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        # Unknown MISSIONBOUND_* variables are left alone (tests and tools use their own);
        # unknown keys in the configuration file are refused by _ConfigFileSource instead.
        extra="ignore",
        validate_default=True,
        frozen=True,
    )

    config_file: Path | None = Field(
        default=None, description="TOML file with settings and optionally the tenant."
    )
    issuer: str = Field(
        default="",
        description="The AS issuer identifier (RFC 8414). Empty: http://<host>:<port>.",
    )
    host: str = Field(default="127.0.0.1", description="Interface `serve` listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port `serve` listens on.")
    data_dir: Path = Field(
        default=Path("var"),
        description="Folder for the SQLite database and the demo payments ledger (signing "
        "keys live in the database).",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL. Empty: sqlite:///<data_dir>/missionbound.db.",
    )
    tenant_file: Path | None = Field(
        default=None, description="A tenant TOML file (users, clients, catalog)."
    )
    mission_intent_max_size: int = Field(
        default=16384, ge=256, le=1_048_576,
        description="Largest accepted mission_intent, in octets.",
    )
    max_mission_lifetime: timedelta = Field(
        default=timedelta(days=30), description="Cap on mission_expiry - now at submission."
    )
    consent_window_seconds: int = Field(
        default=600, ge=1, le=7 * 86400, description="How long a Mission may wait for approval."
    )
    expiry_sweep_seconds: float = Field(
        default=30, ge=0, le=86400, allow_inf_nan=False,
        description="How often `serve` persists the expiry of lapsed Missions; 0 turns it off.",
    )
    max_request_body_size: int = Field(
        default=1_048_576, ge=1024, description="Largest accepted HTTP request body, in octets."
    )
    registration_enabled: bool = Field(
        default=True,
        description="Serve open Dynamic Client Registration (RFC 7591) at /register.",
    )
    dpop_nonce_required: bool = Field(
        default=False,
        description="Require a server-provided DPoP nonce at PAR and token (RFC 9449 section 8).",
    )
    mission_status_lifetime_seconds: int = Field(
        default=60, ge=1, le=3600,
        description="Lifetime (exp - iat) of a signed Mission Status response.",
    )
    signals_delivery_seconds: float = Field(
        default=1.0, ge=0, le=3600, allow_inf_nan=False,
        description="How often `serve` looks for Shared Signals events to deliver when no "
        "change notification woke it; 0 turns delivery off.",
    )
    signals_push_timeout_seconds: float = Field(
        default=5.0, gt=0, le=120, allow_inf_nan=False,
        description="How long one RFC 8935 push waits for the receiver's answer.",
    )
    signals_max_backoff_seconds: float = Field(
        default=300.0, gt=0, le=86400, allow_inf_nan=False,
        description="Longest wait between two push attempts to a failing receiver.",
    )
    mission_cache_max_age_seconds: float = Field(
        default=5.0, ge=0, le=3600, allow_inf_nan=False,
        description="Longest a replica trusts its cached Mission state without reading it "
        "again, even with no change notification; 0 turns the cache off.",
    )
    demo_erp_staleness_seconds: float = Field(
        default=5.0, ge=0, le=3600, allow_inf_nan=False,
        description="Demo tenant: the published staleness bound (RS-C) of the demo ERP API "
        "and the demo MCP gateway: the longest they act on a Mission state the AS told them "
        "earlier.",
    )
    demo_erp_signals: bool = Field(
        default=True,
        description="Demo tenant: `serve` subscribes the demo ERP API to the AS's Mission "
        "lifecycle events (Shared Signals push), so a revocation is refused at once.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    role: Literal["issuer", "resource_as"] = Field(
        default="issuer",
        description="What this process is: 'issuer' (the Mission Issuer, the origin of "
        "Missions) or 'resource_as' (a Resource AS of another trust domain that redeems the "
        "origins' ID-JAGs and never holds a Mission itself; docs/cross-domain.md).",
    )
    resource_authorities: tuple[ResourceAuthority, ...] = Field(
        default=(),
        description="Issuer role: the Resource ASes of other trust domains this AS issues "
        "ID-JAGs for, each with the resources it is authoritative for (docs/cross-domain.md).",
    )
    trusted_origins: tuple[TrustedOrigin, ...] = Field(
        default=(),
        description="Resource AS role: the Mission Issuers whose ID-JAGs this AS redeems, "
        "with how to reach their keys and their Mission Status endpoint.",
    )
    id_jag_lifetime_seconds: int = Field(
        default=300, ge=10, le=300,
        description="Lifetime of an ID-JAG (never past mission_expiry; PROFILE.md 11).",
    )
    txn_token_lifetime_seconds: int = Field(
        default=60, ge=1, le=300,
        description="Lifetime of a Transaction Token (never past its subject token's exp).",
    )
    txn_token_trust_domain: str = Field(
        default="",
        description="The trust domain named in Transaction Tokens' aud. Empty: the issuer.",
    )
    pdp_tenants: dict[str, Path] = Field(
        default_factory=dict,
        description="Resource-policy tenants of the PDP: tenant name -> folder with *.cedar "
        "policies, entities.json and optionally schema.cedarschema, served at "
        "/pdp/<name>/access/v1/... (docs/authzen.md). Loaded and validated at start.",
    )
    pdp_resource_policies: dict[str, str] = Field(
        default_factory=dict,
        description="Resource URI -> name of the pdp_tenants tenant whose policies must also "
        "permit every Mission decision for that resource (fail closed when it is missing).",
    )
    mcp_upstreams: dict[str, str] = Field(
        default_factory=dict,
        description="Issuer role: resource URI of an MCP gateway -> streamable HTTP URL of "
        "the upstream MCP server behind it, whose tools/list the AS reads at approval to bind "
        "each granted tool to its definition (tool-manifest binding, docs/mcp.md).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env or secrets-dir reading: one file and the environment are the whole story.
        return (
            init_settings,
            env_settings,
            _ConfigFileSource(settings_cls, _locate_config_file(init_settings, env_settings)),
        )

    @field_validator(
        "port", "mission_intent_max_size", "consent_window_seconds", "max_request_body_size",
        "expiry_sweep_seconds", "max_mission_lifetime", "mission_status_lifetime_seconds",
        "signals_delivery_seconds", "signals_push_timeout_seconds", "signals_max_backoff_seconds",
        "mission_cache_max_age_seconds", "id_jag_lifetime_seconds", "txn_token_lifetime_seconds",
        "demo_erp_staleness_seconds",
        mode="before",
    )
    @classmethod
    def _no_booleans(cls, value: Any) -> Any:
        # pydantic reads `true` as 1: `port = true` in a file would serve on port 1.
        if isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("max_mission_lifetime")
    @classmethod
    def _positive_lifetime(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be a positive duration (e.g. P30D or 2592000)")
        if value > MAX_MISSION_LIFETIME:  # beyond it, now + lifetime overflows datetime
            raise ValueError(f"must be at most {MAX_MISSION_LIFETIME.days} days")
        return value

    @field_validator("expiry_sweep_seconds")
    @classmethod
    def _sweep_interval(cls, value: float) -> float:
        if 0 < value < 0.1:  # a busy loop holding the database's write lock
            raise ValueError("must be 0 (off) or at least 0.1 seconds")
        return value

    @field_validator("issuer")
    @classmethod
    def _check_issuer(cls, value: str) -> str:
        if value:
            check_issuer(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if value:
            try:
                normalize_url(value)
            except DatabaseUrlError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("mcp_upstreams")
    @classmethod
    def _check_mcp_upstreams(cls, value: dict[str, str]) -> dict[str, str]:
        for resource, url in value.items():
            # The rule a Mission's resource indicators follow (RFC 8707 section 2): a key
            # no Mission can name would never be read.
            try:
                check_resource_uri(resource, f"resource {resource!r}")
            except InvalidRequest as exc:
                raise ValueError(exc.description) from None
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
                raise ValueError(f"the upstream of {resource!r}, {url!r}, must be an "
                                 "absolute http(s) URL without fragment")
        return value

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        # frozen=True: fill the derived values through object.__setattr__, once, here.
        data_dir = self.data_dir.expanduser().resolve()
        object.__setattr__(self, "data_dir", data_dir)
        if not self.issuer:
            object.__setattr__(self, "issuer", f"http://{_url_host(self.host)}:{self.port}")
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{data_dir / 'missionbound.db'}")
        if not self.txn_token_trust_domain:
            object.__setattr__(self, "txn_token_trust_domain", self.issuer)
        if self.role == "resource_as" and self.resource_authorities:
            raise ValueError("resource_authorities is an issuer setting; a resource_as "
                             "never issues ID-JAGs")
        if self.role == "resource_as" and not self.trusted_origins:
            raise ValueError("role = 'resource_as' needs at least one [[trusted_origins]] "
                             "entry: the Mission Issuers whose ID-JAGs this AS redeems "
                             "(docs/resource-as.md)")
        if self.role == "issuer" and self.trusted_origins:
            raise ValueError("trusted_origins is a resource_as setting (role = 'resource_as')")
        if self.role == "resource_as" and self.mcp_upstreams:
            # A Resource AS approves no Mission, so it never reads a tool definition.
            raise ValueError("mcp_upstreams is an issuer setting; a resource_as approves "
                             "no Mission")
        for resource, tenant in self.pdp_resource_policies.items():
            if tenant not in self.pdp_tenants:
                raise ValueError(f"pdp_resource_policies: {resource!r} names the tenant "
                                 f"{tenant!r}, which is not in pdp_tenants")
        return self

    def resource_authority(self, issuer: str) -> ResourceAuthority | None:
        """The configured Resource AS whose issuer identifier is ``issuer`` (byte-equal)."""
        return next((ra for ra in self.resource_authorities if ra.issuer == issuer), None)

    def trusted_origin(self, issuer: str) -> TrustedOrigin | None:
        """The configured origin whose issuer identifier is ``issuer`` (byte-equal)."""
        return next((o for o in self.trusted_origins if o.issuer == issuer), None)

    @property
    def is_sqlite(self) -> bool:
        return make_url(self.database_url).get_backend_name() == "sqlite"

    @property
    def database_url_for_display(self) -> str:
        """The URL with any password masked, for banners, logs and error messages."""
        return make_url(self.database_url).render_as_string(hide_password=True)


def check_issuer(value: str) -> None:
    """RFC 8414 section 2: an http(s) URL with no query or fragment. We also refuse a
    trailing slash, because resource URIs are built as ``{issuer}/demo/...`` and because
    issuer comparison is byte-for-byte (RFC 8414 section 3.3)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"issuer {value!r} must be an absolute http(s) URL")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError(f"issuer {value!r} must not have a query or fragment")
    if value.endswith("/"):
        raise ValueError(f"issuer {value!r} must not end with '/'")


def _url_host(host: str) -> str:
    """The host part of the default issuer. A wildcard bind address is not a place a client
    can reach, so the default issuer names the loopback interface instead."""
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass  # a host name
    return host


def _locate_config_file(
    init_settings: PydanticBaseSettingsSource, env_settings: PydanticBaseSettingsSource
) -> Path | None:
    """``--config`` (an init argument) wins over ``MISSIONBOUND_CONFIG_FILE``."""
    init_kwargs: dict[str, Any] = getattr(init_settings, "init_kwargs", {})
    value = init_kwargs.get("config_file") or env_settings().get("config_file")
    return Path(value) if value else None


class _ConfigFileSource(PydanticBaseSettingsSource):
    """The top-level keys of the configuration file, with relative paths resolved against
    the file's folder. Tenant tables are skipped here; :mod:`missionbound.tenant` reads them."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._values = read_config_settings(path, set(settings_cls.model_fields)) if path else {}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file, turning every way it can fail into a :class:`ConfigError`."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def read_config_settings(path: Path, known: set[str]) -> dict[str, Any]:
    data = read_toml(path)
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in TENANT_TABLES:
            continue
        if key not in known or key == "config_file":
            settings = ", ".join(sorted(known - {"config_file"}))
            raise ConfigError(
                f"{path}: unknown setting {key!r} (settings: {settings}; "
                f"tenant tables: {', '.join(sorted(TENANT_TABLES))})"
            )
        values[key] = value
    for key in _PATH_SETTINGS:
        if isinstance(values.get(key), str):
            values[key] = str(path.parent / Path(values[key]).expanduser())
    tenants = values.get("pdp_tenants")
    if isinstance(tenants, dict):
        # Tenant folders, like the other paths, are relative to the configuration file.
        values["pdp_tenants"] = {
            name: str(path.parent / Path(folder).expanduser()) if isinstance(folder, str)
            else folder for name, folder in tenants.items()}
    return values


def load_settings(**overrides: Any) -> Settings:
    """Build the settings; ``overrides`` are command-line flags (``None`` = not given).

    Raises :class:`ConfigError` with a readable message instead of pydantic's report.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    unknown = set(given) - set(Settings.model_fields)
    if unknown:
        raise TypeError(f"unknown settings: {sorted(unknown)}")
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        location = error["loc"]
        message = error["msg"].removeprefix("Value error, ")
        field = str(location[0]) if location else ""
        if field in Settings.model_fields:
            # A member of a table array reads as trusted_origins[0].status_client_id.
            where = field + "".join(
                f"[{part}]" if isinstance(part, int) else f".{part}" for part in location[1:])
            lines.append(f"invalid setting {where} ({ENV_PREFIX}{field.upper()}): {message}")
        else:
            lines.append(f"invalid settings: {message}")
    return "; ".join(lines)
