"""Settings (file, environment, flags) and the tenant loader (missionbound.config,
missionbound.tenant)."""

from __future__ import annotations

import os
import pickle
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from missionbound.config import ENV_PREFIX, ConfigError, Settings, load_settings
from missionbound.tenant import DEMO_TENANT_FILE, Tenant, demo_credentials, load_tenant

DEMO_SECRETS = ["alice", "bob", "demo-agent-secret", "demo-subagent-secret", "demo-rs-secret"]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Defaults resolve against the working directory; a developer's MISSIONBOUND_* must
    # not leak in.
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# A small tenant of our own: one resource, one purpose, two users, two clients.
OWN_TENANT = """
    [tenant]
    name = "acme"

    [[users]]
    username = "carol"
    password = "carol-long-passphrase"
    may_approve_for = ["dave"]
    roles = ["admin"]

    [[users]]
    username = "dave"
    password = "dave-long-passphrase"

    [[clients]]
    client_id = "acme-agent"
    client_secret = "acme-agent-secret-0123456789"
    mission_purposes_registered = ["https://acme.example/purposes/books"]
    mission_resources = { "{issuer}/books" = ["*"] }

    [[clients]]
    client_id = "acme-public"
    token_endpoint_auth_methods = ["none"]
    mission_resources = { "{issuer}/books" = ["books.read"] }

    [catalog]
    version = "acme:1"

    [[catalog.resources]]
    uri = "{issuer}/books"
    title = "Books at {issuer}"

    [[catalog.resources.actions]]
    name = "books.read"
    class = "consequential_read"

    [[catalog.resources.actions]]
    name = "books.close"
    class = "irreversible"

    [[catalog.purposes]]
    uri = "https://acme.example/purposes/books"
    resources = { "{issuer}/books" = ["books.read"] }
"""


# --------------------------------------------------------------------------- settings


def test_defaults_are_the_local_demo_setup(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.config_file is None
    assert settings.issuer == "http://127.0.0.1:8000"
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.data_dir == tmp_path.resolve() / "var"
    assert settings.database_url == f"sqlite:///{tmp_path.resolve()}/var/missionbound.db"
    assert settings.mission_intent_max_size == 16384
    assert settings.max_mission_lifetime == timedelta(days=30)
    assert settings.consent_window_seconds == 600
    assert (settings.log_level, settings.role) == ("info", "issuer")


def test_file_then_environment_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(
        tmp_path / "etc" / "missionbound.toml",
        """
        issuer = "https://file.example"
        port = 9001
        log_level = "warning"
        consent_window_seconds = 120
        max_mission_lifetime = "P7D"
        """,
    )
    from_file = load_settings(config_file=config)
    assert from_file.issuer == "https://file.example"
    assert from_file.port == 9001
    assert from_file.consent_window_seconds == 120
    assert from_file.max_mission_lifetime == timedelta(days=7)

    monkeypatch.setenv("MISSIONBOUND_ISSUER", "https://env.example")
    monkeypatch.setenv("MISSIONBOUND_PORT", "9002")
    env_wins = load_settings(config_file=config)
    assert (env_wins.issuer, env_wins.port) == ("https://env.example", 9002)
    assert env_wins.log_level == "warning"  # not overridden: the file still counts

    flag_wins = load_settings(config_file=config, issuer="https://flag.example", port=None)
    assert flag_wins.issuer == "https://flag.example"
    assert flag_wins.port == 9002  # a flag not given (None) does not override


def test_config_file_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path / "c.toml", 'issuer = "https://via-env.example"\n')
    monkeypatch.setenv("MISSIONBOUND_CONFIG_FILE", str(config))
    assert load_settings().issuer == "https://via-env.example"
    other = write(tmp_path / "d.toml", 'issuer = "https://via-flag.example"\n')
    assert load_settings(config_file=other).issuer == "https://via-flag.example"


def test_paths_in_the_file_are_relative_to_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "deploy" / "mb.toml", 'data_dir = "state"\n')
    settings = load_settings(config_file=config)
    assert settings.data_dir == (tmp_path / "deploy" / "state").resolve()
    assert settings.database_url == f"sqlite:///{settings.data_dir}/missionbound.db"


def test_environment_paths_are_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISSIONBOUND_DATA_DIR", "elsewhere")
    assert load_settings().data_dir == tmp_path.resolve() / "elsewhere"


def test_an_explicit_database_url_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+psycopg://mb:pw@db.example/missionbound"
    monkeypatch.setenv("MISSIONBOUND_DATABASE_URL", url)
    settings = load_settings()
    assert settings.database_url == url
    assert (
        settings.database_url_for_display == "postgresql+psycopg://mb:***@db.example/missionbound"
    )
    assert not settings.is_sqlite


@pytest.mark.parametrize(
    ("host", "port", "issuer"),
    [
        ("127.0.0.1", 8123, "http://127.0.0.1:8123"),
        ("0.0.0.0", 8000, "http://127.0.0.1:8000"),  # a wildcard is not an address to call
        ("::1", 8000, "http://[::1]:8000"),
        ("as.internal", 80, "http://as.internal:80"),
    ],
)
def test_the_default_issuer_follows_host_and_port(host: str, port: int, issuer: str) -> None:
    assert load_settings(host=host, port=port).issuer == issuer


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"port": 70000}, "port"),
        ({"issuer": "https://as.example/"}, "issuer"),
        ({"issuer": "https://as.example?x=1"}, "issuer"),
        ({"issuer": "ftp://as.example"}, "issuer"),
        ({"log_level": "chatty"}, "log_level"),
        ({"database_url": "mysql://db/x"}, "database_url"),
        ({"database_url": "sqlite://"}, "database_url"),
        ({"max_mission_lifetime": "P0D"}, "max_mission_lifetime"),
        ({"consent_window_seconds": 0}, "consent_window_seconds"),
        # bounds that keep date arithmetic from overflowing and the sweep from spinning
        ({"consent_window_seconds": 10**11}, "consent_window_seconds"),
        ({"max_mission_lifetime": "P3000000D"}, "max_mission_lifetime"),
        ({"expiry_sweep_seconds": float("inf")}, "expiry_sweep_seconds"),
        ({"expiry_sweep_seconds": 1e-9}, "expiry_sweep_seconds"),
        ({"mission_intent_max_size": 10**9}, "mission_intent_max_size"),
    ],
)
def test_bad_values_are_a_config_error_naming_the_setting(
    overrides: dict[str, object], names: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    message = str(caught.value)
    assert names in message and f"MISSIONBOUND_{names.upper()}" in message


@pytest.mark.parametrize(
    "setting", ["port", "consent_window_seconds", "mission_intent_max_size",
                "max_request_body_size", "expiry_sweep_seconds", "max_mission_lifetime"])
def test_a_boolean_is_not_a_number(tmp_path: Path, setting: str) -> None:
    # pydantic alone reads `port = true` as port 1.
    config = write(tmp_path / "c.toml", f"{setting} = true\n")
    with pytest.raises(ConfigError, match=setting):
        load_settings(config_file=config)


def test_bad_environment_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISSIONBOUND_PORT", "eighty")
    with pytest.raises(ConfigError, match="MISSIONBOUND_PORT"):
        load_settings()


def test_unknown_missionbound_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tools and tests use their own MISSIONBOUND_TEST_* variables.
    monkeypatch.setenv("MISSIONBOUND_TEST_SOMETHING", "1")
    assert load_settings().port == 8000


def test_unknown_key_in_the_file_is_refused(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", 'isuer = "https://typo.example"\n')
    with pytest.raises(ConfigError, match="unknown setting 'isuer'"):
        load_settings(config_file=config)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), ("issuer = ", "not valid TOML")],
)
def test_unreadable_config_file(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "c.toml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(config_file=path)


# --------------------------------------------------------------------------- the demo tenant


def test_no_configuration_means_the_demo_tenant() -> None:
    tenant = load_tenant(load_settings())
    assert tenant.is_demo and tenant.name == "demo"
    assert tenant.source == DEMO_TENANT_FILE
    assert set(tenant.users) == {"alice", "bob"}
    assert set(tenant.clients) == {"demo-agent", "demo-subagent", "demo-rs"}
    assert tenant.users["bob"].is_admin and tenant.users["bob"].may_approve_missions_of("alice")
    assert not tenant.users["alice"].may_approve_missions_of("bob")
    # The demo secrets work in the demo tenant.
    assert tenant.authenticate_user("alice", "alice") is tenant.users["alice"]
    assert tenant.authenticate_client("demo-rs", "demo-rs-secret") is tenant.clients["demo-rs"]


def test_a_config_file_with_settings_only_keeps_the_demo_tenant(tmp_path: Path) -> None:
    # E.g. the demo on PostgreSQL: settings change, the tenant stays the demo.
    config = write(tmp_path / "c.toml", 'database_url = "postgresql://db/x"\n')
    assert load_tenant(load_settings(config_file=config)).is_demo


def test_the_banner_lists_exactly_the_demo_secrets() -> None:
    assert sorted(c.secret for c in demo_credentials()) == sorted(DEMO_SECRETS)


def test_issuer_is_substituted_in_the_catalog_and_client_ceilings() -> None:
    issuer = "https://as.example.org/tenant-a"
    tenant = load_tenant(load_settings(issuer=issuer))
    erp, mcp = f"{issuer}/demo/erp", f"{issuer}/demo/mcp"
    assert set(tenant.catalog.resources) == {erp, mcp}
    assert set(tenant.catalog.purposes["https://missionbound.dev/purposes/reporting"].ceiling) == {
        erp,
        mcp,
    }
    agent = tenant.clients["demo-agent"]
    assert set(agent.mission_resources) == {erp, mcp}
    # "*" is expanded to what the catalog offers at that resource.
    assert agent.mission_resources[mcp] == frozenset(tenant.catalog.resources[mcp].actions)
    assert tenant.clients["demo-subagent"].mission_resources[erp] == {"invoices.read"}
    assert "{issuer}" not in repr(tenant.catalog)


# --------------------------------------------------------------------------- own tenants


def own_tenant(tmp_path: Path, text: str = OWN_TENANT) -> Tenant:
    config = write(
        tmp_path / "acme.toml", 'issuer = "https://acme.example"\n' + textwrap.dedent(text)
    )
    return load_tenant(load_settings(config_file=config))


def test_a_config_file_can_carry_its_own_tenant(tmp_path: Path) -> None:
    tenant = own_tenant(tmp_path)
    assert not tenant.is_demo and tenant.name == "acme"
    assert set(tenant.catalog.resources) == {"https://acme.example/books"}
    assert tenant.catalog.resources["https://acme.example/books"].title == (
        "Books at https://acme.example"
    )
    agent = tenant.clients["acme-agent"]
    assert agent.mission_resources == {
        "https://acme.example/books": frozenset({"books.read", "books.close"})
    }
    assert agent.mission_purposes_registered == {"https://acme.example/purposes/books"}
    assert agent.token_endpoint_auth_methods == ("client_secret_basic",)
    assert tenant.clients["acme-public"].mission_purposes_registered is None
    assert not tenant.clients["acme-public"].is_confidential


def test_a_config_file_can_point_to_a_tenant_file(tmp_path: Path) -> None:
    write(tmp_path / "tenants" / "acme.toml", OWN_TENANT)
    config = write(tmp_path / "mb.toml", 'tenant_file = "tenants/acme.toml"\n')
    tenant = load_tenant(load_settings(config_file=config))
    assert tenant.name == "acme" and tenant.source == tmp_path / "tenants" / "acme.toml"


def test_tenant_file_and_inline_tenant_together_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "t.toml", OWN_TENANT)
    config = write(tmp_path / "mb.toml", 'tenant_file = "t.toml"\n' + textwrap.dedent(OWN_TENANT))
    with pytest.raises(ConfigError, match="keep one"):
        load_tenant(load_settings(config_file=config))


@pytest.mark.parametrize("demo_secret", DEMO_SECRETS)
@pytest.mark.parametrize("where", ["password", "client_secret"])
def test_demo_secrets_are_refused_outside_the_demo_tenant(
    tmp_path: Path, demo_secret: str, where: str
) -> None:
    if where == "password":
        text = OWN_TENANT.replace('"dave-long-passphrase"', f'"{demo_secret}"')
        culprit = "user 'dave'"
    else:
        text = OWN_TENANT.replace('"acme-agent-secret-0123456789"', f'"{demo_secret}"')
        culprit = "client 'acme-agent'"
    with pytest.raises(ConfigError) as caught:
        own_tenant(tmp_path, text)
    assert culprit in str(caught.value) and "demo" in str(caught.value)


def test_demo_secrets_are_refused_in_a_tenant_file_too(tmp_path: Path) -> None:
    write(tmp_path / "t.toml", OWN_TENANT.replace('"carol-long-passphrase"', '"bob"'))
    with pytest.raises(ConfigError, match="user 'carol'"):
        load_tenant(load_settings(tenant_file=tmp_path / "t.toml"))


def test_authentication_checks_hashes_and_keeps_no_plaintext(tmp_path: Path) -> None:
    tenant = own_tenant(tmp_path)
    carol = tenant.authenticate_user("carol", "carol-long-passphrase")
    assert carol is not None and carol.username == "carol"
    assert tenant.authenticate_user("carol", "carol-long-passphrasE") is None
    assert tenant.authenticate_user("nobody", "carol-long-passphrase") is None
    assert tenant.authenticate_client("acme-agent", "acme-agent-secret-0123456789") is not None
    assert tenant.authenticate_client("acme-agent", "acme-agent-secret-012345678") is None
    assert tenant.authenticate_client("nobody", "acme-agent-secret-0123456789") is None
    # A public client has no secret: no secret authenticates it, not even an empty one.
    assert tenant.authenticate_client("acme-public", "") is None
    # No user or client object holds a plaintext (pickle walks everything they reach).
    dump = pickle.dumps((dict(tenant.users), dict(tenant.clients), tenant.name))
    for plaintext in ("carol-long-passphrase", "dave-long-passphrase", "acme-agent-secret"):
        assert plaintext.encode() not in dump
    assert carol.password_hash.algorithm == "scrypt"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('= ["*"]', '= ["books.burn"]'), "has no actions"),
        (('"{issuer}/books" = ["*"]', '"{issuer}/films" = ["*"]'), "not a catalog resource"),
        (('["https://acme.example/purposes/books"]', '["https://x.example/p"]'), "purposes not in"),
        (('may_approve_for = ["dave"]', 'may_approve_for = ["erin"]'), "unknown users"),
        (('roles = ["admin"]', 'roles = ["root"]'), "unknown roles"),
        (('client_id = "acme-public"', 'client_id = "acme-agent"'), "appears twice"),
        (('class = "irreversible"', 'class = "dangerous"'), "class must be one of"),
        (('methods = ["none"]', 'methods = ["client_secret_post"]'), "has none"),
        (('name = "acme"', 'name = "acme"\ncolour = "red"'), "unknown keys"),
    ],
)
def test_tenant_mistakes_are_config_errors_naming_the_file(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    old, new = edit
    assert old in OWN_TENANT
    with pytest.raises(ConfigError) as caught:
        own_tenant(tmp_path, OWN_TENANT.replace(old, new, 1))
    assert message in str(caught.value)
    assert "acme.toml" in str(caught.value)


def test_a_tenant_without_catalog_is_refused(tmp_path: Path) -> None:
    text = OWN_TENANT[: OWN_TENANT.index("[catalog]")]
    with pytest.raises(ConfigError, match=r"no \[catalog\]"):
        own_tenant(tmp_path, text)


def test_settings_are_immutable() -> None:
    settings: Settings = load_settings()
    with pytest.raises(ValueError):
        settings.port = 1  # type: ignore[misc]


# -- cross-domain settings (docs/cross-domain.md, docs/resource-as.md) ----------------------


def test_resource_authorities_are_read_from_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", """
        issuer = "https://origin.example"

        [[resource_authorities]]
        issuer = "https://ras.partner.example"
        resources = ["https://api.partner.example/ledger"]
    """)
    settings = load_settings(config_file=config)
    authority = settings.resource_authority("https://ras.partner.example")
    assert authority is not None
    assert authority.resources == ("https://api.partner.example/ledger",)
    # Issuer identifiers compare byte for byte (RFC 8414 section 3.3).
    assert settings.resource_authority("https://ras.partner.example/") is None
    assert settings.txn_token_trust_domain == "https://origin.example"


def test_a_trusted_origin_gets_its_default_endpoints(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", """
        role = "resource_as"

        [[trusted_origins]]
        issuer = "https://origin.example"
        status_client_id = "partner-ras"
        status_client_secret = "a-long-secret-for-the-status-endpoint"
    """)
    origin = load_settings(config_file=config).trusted_origin("https://origin.example")
    assert origin is not None
    assert origin.jwks_uri == "https://origin.example/jwks"
    assert origin.status_endpoint == "https://origin.example/mission/status"
    # The secret never shows in a repr (logs, tracebacks).
    assert "a-long-secret" not in repr(origin)


def test_trusted_origins_come_from_the_environment_as_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MISSIONBOUND_ROLE", "resource_as")
    monkeypatch.setenv(
        "MISSIONBOUND_TRUSTED_ORIGINS",
        '[{"issuer": "https://origin.example", "status_client_id": "ras",'
        ' "status_client_secret": "s3cret-s3cret"}]',
    )
    settings = load_settings()
    assert settings.role == "resource_as"
    assert [origin.issuer for origin in settings.trusted_origins] == ["https://origin.example"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[trusted_origins]]\nissuer = "https://o.example"\nstatus_client_id = "a"\n'
         'status_client_secret = "b"\n', "resource_as setting"),
        ('role = "resource_as"\n[[resource_authorities]]\nissuer = "https://r.example"\n'
         'resources = ["https://r.example/api"]\n', "issuer setting"),
        ('[[resource_authorities]]\nissuer = "https://r.example/"\n'
         'resources = ["https://r.example/api"]\n', "must not end with"),
        ('[[resource_authorities]]\nissuer = "https://r.example"\nresources = []\n',
         "resource_authorities"),
        ('[[resource_authorities]]\nissuer = "https://r.example"\nresources = ["x"]\n'
         'audience = "typo"\n', "resource_authorities"),
        ('role = "resource_as"\n[[trusted_origins]]\nissuer = "https://o.example"\n',
         "trusted_origins"),
        ('role = "resource_as"\n[[trusted_origins]]\nissuer = "https://o.example"\n'
         'status_client_id = "a"\nstatus_client_secret = "b"\n'
         'status_endpoint = "ftp://o.example/status"\n', "status_endpoint"),
        ('role = "gateway"\n', "role"),
        ('role = "resource_as"\n', "needs at least one"),
    ],
)
def test_cross_domain_mistakes_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    config = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError, match=message):
        load_settings(config_file=config)
