"""Mission Intent validation, PROFILE.md section 3 (issuance-digest.md section 16, 3-12)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from missionbound.mission.catalog import Catalog
from missionbound.mission.errors import InvalidRequest
from missionbound.mission.intent import validate_intent

from .conftest import ERP, NOW, intent_json, make_intent


def refused(catalog: Catalog, text: str, fragment: str, **kwargs: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_intent(text, catalog=catalog, now=NOW, **kwargs)
    assert caught.value.error == "invalid_request"
    assert fragment in caught.value.description, caught.value.description


def test_valid_intent_keeps_the_parsed_value_verbatim(catalog: Catalog) -> None:
    intent = make_intent(catalog, context={"acr": "urn:acr:mfa", "max_derivations": 20},
                         constraints=["only Q3"], success_criteria=["all reconciled"],
                         purpose="https://purposes.example.com/ap", x_trace="abc")
    assert intent.goal == "Reconcile Q3 invoices"
    assert intent.resources == (ERP,)
    assert intent.mission_expiry == datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert intent.max_derivations == 20 and intent.acr == "urn:acr:mfa"
    assert intent.value["x_trace"] == "abc"
    assert intent.mission_constraints() == {}


@pytest.mark.parametrize("text", ["not json", "[1]", '"a string"', "42", "null"])
def test_not_a_json_object(catalog: Catalog, text: str) -> None:
    refused(catalog, text, "mission_intent")


@pytest.mark.parametrize("member", ["goal", "resources", "mission_expiry"])
def test_required_members(catalog: Catalog, member: str) -> None:
    value = json.loads(intent_json())
    del value[member]
    refused(catalog, json.dumps(value), f"mission_intent.{member} is required")


def test_goal_length_counts_code_points(catalog: Catalog) -> None:
    make_intent(catalog, goal="é" * 4096)  # 8192 octets, 4096 characters: accepted
    emoji = intent_json(goal="😀" * 4096)  # astral characters count once each
    validate_intent(emoji, catalog=catalog, now=NOW, max_size=len(emoji.encode()))
    refused(catalog, intent_json(goal="é" * 4097), "4097 characters; the limit is 4096")
    refused(catalog, intent_json(goal=""), "must not be empty")
    refused(catalog, intent_json(goal="a\x00b"), "control character")
    refused(catalog, intent_json(goal=5), "goal must be a string")


@pytest.mark.parametrize("value", [0, -1, True, "5", None])
def test_max_derivations_must_be_positive_integer(catalog: Catalog, value: Any) -> None:
    refused(catalog, intent_json(context={"max_derivations": value}), "max_derivations")


def test_max_derivations_float_refused_even_when_integral(catalog: Catalog) -> None:
    base = intent_json()[:-1]
    refused(catalog, base + ',"context":{"max_derivations":1.5}}', "not an integer")
    refused(catalog, base + ',"context":{"max_derivations":1.0}}', "not an integer")
    assert make_intent(catalog, context={"max_derivations": 1}).max_derivations == 1


def test_duplicate_member_names(catalog: Catalog) -> None:
    refused(catalog, '{"goal":"a","goal":"b","resources":["https://erp.example.com"],'
                     '"mission_expiry":"2026-12-31T23:59:59Z"}', "duplicate member name 'goal'")
    refused(catalog, intent_json()[:-1] + ',"context":{"acr":"a","acr":"b"}}', "duplicate")


@pytest.mark.parametrize(
    "resources, fragment",
    [
        (["/relative/path"], "absolute http(s) URI"),
        (["https://erp.example.com#frag"], "fragment"),
        (["urn:example:erp"], "absolute http(s) URI"),
        ([], "non-empty array"),
        ("https://erp.example.com", "non-empty array"),
        ([ERP, ERP], "twice"),
        ([5], "absolute URI"),
    ],
)
def test_resources_syntax(catalog: Catalog, resources: Any, fragment: str) -> None:
    refused(catalog, intent_json(resources=resources), fragment)


@pytest.mark.parametrize(
    "expiry, fragment",
    [
        ("2026-12-31", "RFC 3339"),
        ("2026-12-31T23:59:59", "RFC 3339"),  # no offset: ambiguous
        ("2026-13-01T00:00:00Z", "not a valid date-time"),
        ("2026-11-26T11:59:59Z", "in the future"),
        ("2026-11-26T12:00:00Z", "in the future"),
        (1798761599, "RFC 3339"),
        ("9999-12-31T23:59:59-01:00", "not a valid date-time"),  # beyond year 9999 in UTC
        ("0001-01-01T00:00:00+01:00", "not a valid date-time"),
    ],
)
def test_mission_expiry(catalog: Catalog, expiry: Any, fragment: str) -> None:
    refused(catalog, intent_json(mission_expiry=expiry), fragment)


def test_mission_expiry_with_offset_is_normalised_to_utc(catalog: Catalog) -> None:
    intent = make_intent(catalog, mission_expiry="2026-12-31T23:59:59+02:00")
    assert intent.mission_expiry == datetime(2026, 12, 31, 21, 59, 59, tzinfo=UTC)
    assert intent.value["mission_expiry"] == "2026-12-31T23:59:59+02:00"  # stored verbatim


def test_oversize_intent(catalog: Catalog) -> None:
    text = intent_json(constraints=["x" * 1000] * 10)
    refused(catalog, text, "octets; the limit is 2000", max_size=2000)
    validate_intent(text, catalog=catalog, now=NOW, max_size=len(text.encode()))


@pytest.mark.parametrize("member", ["purpose", "constraints", "success_criteria", "context"])
def test_optional_members_are_absent_or_valued_never_null(catalog: Catalog, member: str) -> None:
    text = intent_json()[:-1] + f',"{member}":null}}'
    refused(catalog, text, f"{member} must not be null")


def test_null_context_members_are_refused(catalog: Catalog) -> None:
    refused(catalog, intent_json(context={"acr": None}), "context.acr must not be null")
    make_intent(catalog, x_note=None, context={"x_note": None})  # extensions may be anything


def test_unknown_members_refused_but_extensions_accepted(catalog: Catalog) -> None:
    refused(catalog, intent_json(authority_hash="sha-256:planted"),
            "unknown mission_intent member 'authority_hash'")
    refused(catalog, intent_json(context={"budget": 5}), "unknown context member 'budget'")
    make_intent(catalog, x_vendor_note={"any": ["thing"]}, context={"x_trace": 1})


def test_array_members(catalog: Catalog) -> None:
    refused(catalog, intent_json(constraints="not a list"), "constraints must be an array")
    refused(catalog, intent_json(success_criteria=[1]), "success_criteria[0] must be a string")
    refused(catalog, intent_json(constraints=["a"] * 33), "33 items; the limit is 32")
    refused(catalog, intent_json(constraints=["x" * 1025]), "1025 characters")


def test_purpose(catalog: Catalog) -> None:
    refused(catalog, intent_json(purpose="https://purposes.example.com/unknown"),
            "not in the deployment purpose registry")
    refused(catalog, intent_json(purpose="not a uri"), "absolute URI")
    ap = "https://purposes.example.com/ap"
    refused(catalog, intent_json(purpose=ap), "not registered for this client",
            client_purposes=frozenset({"https://purposes.example.com/read"}))
    validate_intent(intent_json(purpose=ap), catalog=catalog, now=NOW,
                    client_purposes=frozenset({ap}))


def test_context_common_constraints(catalog: Catalog) -> None:
    intent = make_intent(catalog, context={
        "max_value": {"amount": "500.00", "currency": "USD"}, "vendors": ["acme"],
        "max_calls": 10, "max_duration": "PT8H", "geo": ["US"],
        "aal": {"value": "urn:acr:mfa", "freshness_seconds": 300},
    })
    assert set(intent.mission_constraints()) == {
        "max_value", "vendors", "max_calls", "max_duration", "geo", "aal"}
    refused(catalog, intent_json(context={"max_value": {"amount": 500, "currency": "USD"}}),
            "decimal string")
    refused(catalog, intent_json(context={"max_value": {"amount": "5", "currency": "usd"}}),
            "ISO 4217")
    refused(catalog, intent_json(context={"max_duration": "P1M"}), "ISO 8601 duration")
    refused(catalog, intent_json(context={"geo": ["usa"]}), "ISO 3166")
    refused(catalog, intent_json(context={"vendors": []}), "non-empty array")
