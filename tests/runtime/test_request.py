"""Reading an AuthZEN evaluation envelope into a DecisionRequest (runtime-digest 3.2, 3.3):
what is read from where, and a 400 naming the member for anything missing or mistyped."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from missionbound.runtime.errors import AuthZenError, MalformedRequest
from missionbound.runtime.request import request_from_authzen
from tests.runtime.table_support import DELETE, ERP, apply_overrides, authzen_body, make_mission

PARAMS = {"invoice_id": "inv-acme-1", "amount": "120.00", "currency": "USD"}


def body(**overrides: Any) -> dict[str, Any]:
    base = authzen_body(make_mission(), action="journal-entries.write", audience=ERP,
                        parameters=PARAMS)
    return apply_overrides(base, overrides)


def test_every_member_is_read_from_its_place() -> None:
    raw = apply_overrides(body(), {
        "action.properties.parameter_digest": "sha-256:abc",
        "action.properties.idempotency_key": "idk_1",
        "context.mission.policy_version": "sha-256:pv",
        "context.mission_state_observation": {"state": "active", "version": 2, "mode": "fresh"},
        "context.actor": {"client_id": "demo-subagent",
                          "act": [{"sub": "demo-agent", "iss": "https://as"},
                                  {"sub": "demo-subagent"}]},
        "context.credential.confirmation": {"jkt": "abc"},
        "context.unknown_member": {"ignored": True},
    })
    request = request_from_authzen(raw)
    assert (request.subject_type, request.subject_id, request.subject_iss) == (
        "user", "alice", "https://as.table.example")
    assert (request.audience, request.resource_type, request.resource_id) == (
        ERP, "invoice", "inv-acme-1")
    assert request.action_name == "journal-entries.write"
    assert request.parameters == PARAMS
    assert (request.parameter_digest, request.idempotency_key) == ("sha-256:abc", "idk_1")
    assert request.policy_version == "sha-256:pv"
    assert (request.observed_state, request.observed_version) == ("active", 2)
    assert request.client_id == "demo-subagent"
    assert request.act == ({"sub": "demo-agent", "iss": "https://as"}, {"sub": "demo-subagent"})
    assert request.credential_expires_at == datetime(2026, 11, 26, 13, 0, tzinfo=UTC)
    assert request.confirmation == {"jkt": "abc"}


def test_optional_members_may_be_absent() -> None:
    raw = body(**{"action.properties": DELETE, "context.actor": DELETE,
                  "context.credential.issuer": DELETE,
                  "context.credential.confirmation": DELETE, "subject.properties": DELETE})
    request = request_from_authzen(raw)
    assert request.parameters is None and request.parameter_digest is None
    assert request.client_id is None and request.act == ()
    assert request.credential_issuer is None and request.subject_iss is None


@pytest.mark.parametrize(("overrides", "words"), [
    ({"subject": DELETE}, "subject is required"),
    ({"subject.id": 7}, "subject.id must be"),
    ({"subject.type": ""}, "subject.type must be"),
    ({"resource.properties": DELETE}, "resource.properties is required"),
    ({"resource.properties.audience": DELETE}, "resource.properties.audience is required"),
    ({"resource.id": None}, "resource.id"),
    ({"action": "journal-entries.write"}, "action must be a JSON object"),
    ({"action.name": ["x"]}, "action.name"),
    ({"action.properties.parameters": "amount=1"}, "action.properties.parameters"),
    ({"action.properties.parameters": None}, "action.properties.parameters"),
    ({"action.properties.parameter_digest": 5}, "parameter_digest"),
    ({"context": DELETE}, "context is required"),
    ({"context.mission": DELETE}, "context.mission is required"),
    # A permit must never outlive the token: its exp is required (runtime-digest 3.3).
    ({"context.credential": DELETE}, "context.credential.expires_at is required"),
    ({"context.credential.expires_at": DELETE}, "context.credential.expires_at is required"),
    # Bounded before the evidence log or a log line sees them.
    ({"action.name": "a" * 256}, "action.name is longer than 255"),
    ({"subject.id": "s" * 1025}, "subject.id is longer than 1024"),
    ({"action.properties.parameter_digest": "sha-256:" + "A" * 200}, "longer than 128"),
    ({"context.mission.authority_hash": DELETE}, "context.mission.authority_hash"),
    ({"context.mission.issuer": 1}, "context.mission.issuer"),
    ({"context.mission_state_observation": {"mode": "fresh"}}, "state"),
    ({"context.mission_state_observation": {"state": "active", "version": "2"}}, "version"),
    ({"context.mission_state_observation": {"state": "active", "version": True}}, "version"),
    ({"context.actor.act": {"sub": "x"}}, "act must be a non-empty array"),
    ({"context.actor.act": []}, "act must be a non-empty array"),
    ({"context.actor.act": [{"sub": "x", "act": {"sub": "y"}}]}, "act[0]"),
    ({"context.actor.act": [{"iss": "x"}]}, "act[0].sub"),
    ({"context.actor.act": [{"sub": "x"}] * 17}, "longer than 16"),
    ({"context.actor.client_id": 3}, "client_id"),
    ({"context.credential.expires_at": 1764158400}, "expires_at"),
    ({"context.credential.expires_at": "2026-11-26 13:00"}, "expires_at"),
    ({"context.credential.confirmation": "jkt"}, "confirmation"),
])
def test_malformed_members_are_400s_naming_them(overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(MalformedRequest) as refused:
        request_from_authzen(body(**overrides))
    assert refused.value.status == 400
    assert isinstance(refused.value, AuthZenError)
    assert words in refused.value.message


@pytest.mark.parametrize("raw", [None, [], "x", 3])
def test_the_body_must_be_an_object(raw: Any) -> None:
    with pytest.raises(MalformedRequest, match="JSON object"):
        request_from_authzen(raw)
