"""Resource-policy tenants (runtime/tenants.py): what stops a server from starting with a
tenant it cannot serve, the settings that name tenants, and a tenant as the Mission PDP's
ResourcePolicy. Real Cedar (cedarpy) and the example tenant folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from missionbound.config import ConfigError, load_settings
from missionbound.runtime.decision import ResourcePolicy
from missionbound.runtime.request import request_from_authzen
from missionbound.runtime.tenants import Tenant, TenantError, load_tenants
from missionbound.web.app import create_app
from tests.runtime.authzen_support import TENANTS

SEARCH = TENANTS["search"]
TODO = TENANTS["todo"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A copy of the search tenant (policies, entities, schema) to break."""
    copy = tmp_path / "records"
    shutil.copytree(SEARCH, copy)
    return copy


def refused(folder: Path, *fragments: str, name: str = "records") -> None:
    with pytest.raises(TenantError) as caught:
        Tenant.load(name, folder)
    message = str(caught.value)
    assert f"PDP tenant {name!r}" in message
    for fragment in fragments:
        assert fragment in message, message


def test_the_examples_load(folder: Path) -> None:
    tenants = load_tenants({"todo": TODO, "records": folder})
    assert sorted(tenants) == ["records", "todo"]
    assert tenants["records"].folder == folder


def test_a_missing_folder(tmp_path: Path) -> None:
    refused(tmp_path / "nope", "no such folder")


def test_a_folder_without_policies(folder: Path) -> None:
    (folder / "records.cedar").unlink()
    refused(folder, "no *.cedar policy file")


def test_a_policy_that_is_not_cedar_names_its_file(folder: Path) -> None:
    (folder / "zz-extra.cedar").write_text("permit (principal, action, resource) when { ;")
    refused(folder, "zz-extra.cedar is not valid Cedar")


def test_a_policy_the_schema_refuses(folder: Path) -> None:
    (folder / "zz-extra.cedar").write_text(
        'permit (principal is user, action == Action::"view", resource is record) '
        "when { resource.colour == \"red\" };")
    refused(folder, "zz-extra.cedar does not match schema.cedarschema")


def test_a_schema_that_is_not_cedar(folder: Path) -> None:
    (folder / "schema.cedarschema").write_text("entity user = {")
    refused(folder, "schema.cedarschema is not a valid Cedar schema")


def test_missing_entities(folder: Path) -> None:
    (folder / "entities.json").unlink()
    refused(folder, "entities.json is missing")


@pytest.mark.parametrize(("content", "fragment"), [
    ("[{", "is not JSON"),
    ('{"uid": {"type": "user", "id": "a"}}', "must be a JSON array"),
    ('[{"type": "user", "id": "a"}]', 'entity 0 needs "uid"'),
    ('[{"uid": {"type": "user", "id": "a"}, "attrs": [], "parents": []}]', "needs attrs"),
])
def test_entities_that_are_not_cedar_entity_json(folder: Path, content: str,
                                                 fragment: str) -> None:
    (folder / "entities.json").write_text(content)
    refused(folder, fragment)


def test_an_entity_listed_twice(folder: Path) -> None:
    entities = json.loads((folder / "entities.json").read_text())
    (folder / "entities.json").write_text(json.dumps(entities + entities[-1:]))
    refused(folder, 'record::"120" appears twice')


def test_entities_the_schema_refuses(folder: Path) -> None:
    entities: list[dict[str, Any]] = json.loads((folder / "entities.json").read_text())
    user = next(entity for entity in entities if entity["uid"]["type"] == "user")
    user["attrs"]["department"] = 7
    (folder / "entities.json").write_text(json.dumps(entities))
    refused(folder, "entities.json is not valid Cedar entity JSON for the schema")


def test_without_a_schema_entities_are_only_parsed(folder: Path) -> None:
    (folder / "schema.cedarschema").unlink()
    (folder / "entities.json").write_text('[{"uid": {"type": "user", "id": "a"}, '
                                          '"attrs": {"x": null}, "parents": []}]')
    refused(folder, "entities.json is not valid Cedar entity JSON:")


@pytest.mark.parametrize("name", ["", "Todo", "a/b", "-x", "x" * 64])
def test_a_name_that_is_no_path_segment(name: str) -> None:
    with pytest.raises(TenantError, match="use 1-63 lowercase letters"):
        Tenant.load(name, TODO)


def test_the_app_does_not_start_with_a_broken_tenant(folder: Path, tmp_path: Path) -> None:
    (folder / "records.cedar").write_text("forbid (")
    settings = load_settings(data_dir=tmp_path, pdp_tenants={"records": str(folder)})
    with pytest.raises(TenantError, match=r"records\.cedar is not valid Cedar"):
        create_app(settings)


# -- settings ----------------------------------------------------------------------------------


def test_tenant_folders_in_a_config_file_are_relative_to_it(tmp_path: Path) -> None:
    config = tmp_path / "conf" / "mb.toml"
    config.parent.mkdir()
    config.write_text('[pdp_tenants]\ntodo = "tenants/todo"\n\n'
                      '[pdp_resource_policies]\n"https://api.example/erp" = "todo"\n')
    settings = load_settings(config_file=config, data_dir=tmp_path)
    assert settings.pdp_tenants == {"todo": config.parent / "tenants" / "todo"}
    assert settings.pdp_resource_policies == {"https://api.example/erp": "todo"}


def test_a_resource_policy_must_name_a_configured_tenant(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="names the tenant 'ghost', which is not in pdp_tenants"):
        load_settings(data_dir=tmp_path, pdp_resource_policies={"https://api.example": "ghost"})


def test_tenants_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISSIONBOUND_PDP_TENANTS", json.dumps({"todo": str(TODO)}))
    assert load_settings(data_dir=tmp_path).pdp_tenants == {"todo": TODO}


# -- a tenant as the Mission PDP's resource policy -------------------------------------------


def mission_request(subject: str, action: str, record: str, **properties: Any) -> Any:
    return request_from_authzen({
        "subject": {"type": "user", "id": subject},
        "action": {"name": action},
        "resource": {"type": "record", "id": record,
                     "properties": {"audience": "https://api.example/records", **properties}},
        "context": {"mission": {"id": "mis_1", "issuer": "https://as.example",
                                "authority_hash": "sha-256:x"},
                    "credential": {"expires_at": "2026-11-27T12:00:00Z"}},
    })


def test_permits_maps_the_mission_request_to_cedar() -> None:
    # The example tenant has a schema: the Mission envelope's audience never reaches it.
    tenant: ResourcePolicy = Tenant.load("records", SEARCH)  # the protocol, checked by mypy
    assert tenant.permits(mission_request("bob", "edit", "102")) is True  # bob owns 102
    assert tenant.permits(mission_request("bob", "edit", "101")) is False  # alice's
    assert tenant.permits(mission_request("carol", "view", "104")) is False
    assert tenant.permits(mission_request("carol", "view", "104", department="Legal")) is True


def test_permits_fails_closed_when_the_request_cannot_be_evaluated() -> None:
    # A property the tenant's schema does not declare: a refusal, never an exception.
    tenant = Tenant.load("records", SEARCH)
    assert tenant.permits(mission_request("bob", "edit", "102", color="red")) is False
