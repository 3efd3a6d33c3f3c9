"""mission_resource_access entries and the subset rule (PROFILE.md section 4)."""

from __future__ import annotations

from typing import Any

import pytest

from missionbound.mission.authority import (
    is_subset,
    is_subset_of_set,
    parse_authorization_details,
    parse_entry,
    sort_authority_set,
)
from missionbound.mission.constraints import ConstraintRegistry
from missionbound.mission.errors import InvalidAuthorizationDetails

REG = ConstraintRegistry(frozenset({"vendors"}))
R = "https://erp.example.com"


def entry(actions: list[str], resource: str = R, **extra: Any) -> dict[str, Any]:
    return {"type": "mission_resource_access", "resource": resource, "actions": actions,
            **extra}


def test_parse_normalizes_order() -> None:
    parsed = parse_entry(entry(["b.write", "a.read"], constraints={"vendors": ["z", "a"]},
                               delegation={"max_depth": 1, "allowed_delegates": [
                                   {"client_id": "y"}, {"client_id": "x"}]}), REG)
    assert parsed["actions"] == ["a.read", "b.write"]
    assert parsed["constraints"]["vendors"] == ["a", "z"]
    assert parsed["delegation"]["allowed_delegates"] == [{"client_id": "x"}, {"client_id": "y"}]


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ("x", "must be a JSON object"),
        ({**entry(["a"]), "type": "resource_access"}, "type must be"),
        ({**entry(["a"]), "locations": ["x"]}, "unknown member"),
        (entry([]), "non-empty array"),
        (entry(["bad action"]), "not a valid action name"),
        (entry(["a", "a"]), "repeats"),
        (entry(["a"], resource=""), "resource must be"),
        (entry(["a"], constraints={"mystery": 1}), "unknown constraint key 'mystery'"),
        (entry(["a"], constraints={"max_derivations": 3}), "only valid in mission_intent"),
        (entry(["a"], constraints=[]), "constraints must be a JSON object"),
        (entry(["a"], delegation={"max_depth": 0}), "max_depth must be an integer >= 1"),
        (entry(["a"], delegation={"max_depth": 1, "allowed_delegates": [{"sub_profile": "x"}]}),
         "client_id"),
        (entry(["a"], delegation={"max_depth": 1, "extra": 1}), "delegation must be"),
    ],
)
def test_parse_refuses(raw: Any, fragment: str) -> None:
    with pytest.raises(InvalidAuthorizationDetails) as caught:
        parse_entry(raw, REG)
    assert fragment in caught.value.description
    assert caught.value.error == "invalid_authorization_details"


def test_parse_authorization_details_array() -> None:
    with pytest.raises(InvalidAuthorizationDetails, match="JSON array"):
        parse_authorization_details({"type": "x"}, REG)
    with pytest.raises(InvalidAuthorizationDetails, match=r"authorization_details\[1\]"):
        parse_authorization_details([entry(["a"]), entry([])], REG)


MAX = {"max_value": {"amount": "500", "currency": "USD"}}
DELEG = {"max_depth": 2, "allowed_delegates": [{"client_id": "a"}, {"client_id": "b"}]}


@pytest.mark.parametrize(
    "candidate, reference, expected",
    [
        (entry(["r"]), entry(["r", "w"]), True),
        (entry(["r", "x"]), entry(["r", "w"]), False),
        (entry(["r"], resource=R + "/"), entry(["r"]), False),  # byte-equal, no normalization
        (entry(["w"], constraints=MAX), entry(["w"], constraints=MAX), True),
        (entry(["w"]), entry(["w"], constraints=MAX), False),  # dropped key = broadest
        (entry(["w"], constraints={"max_value": {"amount": "9", "currency": "USD"},
                                   "vendors": ["a"]}), entry(["w"], constraints=MAX), True),
        (entry(["w"], constraints={"max_value": {"amount": "501", "currency": "USD"}}),
         entry(["w"], constraints=MAX), False),
        (entry(["r"], delegation=DELEG), entry(["r"]), False),  # delegation introduced
        (entry(["r"]), entry(["r"], delegation=DELEG), True),
        (entry(["r"], delegation={"max_depth": 3, "allowed_delegates": [{"client_id": "a"}]}),
         entry(["r"], delegation=DELEG), False),
        (entry(["r"], delegation={"max_depth": 1, "allowed_delegates": [{"client_id": "c"}]}),
         entry(["r"], delegation=DELEG), False),
        (entry(["r"], delegation={"max_depth": 1}), entry(["r"], delegation=DELEG), False),
        (entry(["r"], delegation={"max_depth": 1, "allowed_delegates": [{"client_id": "a"}]}),
         entry(["r"], delegation={"max_depth": 1}), True),
        ({**entry(["r"]), "type": "other"}, entry(["r"]), False),
    ],
)
def test_subset_rule(candidate: dict[str, Any], reference: dict[str, Any], expected: bool
                     ) -> None:
    assert is_subset(candidate, reference, REG) is expected


def test_subset_of_set_needs_one_single_covering_entry() -> None:
    reference = [entry(["r"]), entry(["w"], constraints=MAX)]
    assert is_subset_of_set(entry(["w"], constraints=MAX), reference, REG)
    # r from one entry and w from another never combine into one entry
    assert not is_subset_of_set(entry(["r", "w"], constraints=MAX), reference, REG)


def test_sort_authority_set() -> None:
    entries = [entry(["z"], resource="https://b"), entry(["b"]), entry(["a"])]
    # by resource first ("https://b" sorts before "https://erp..."), then first action
    assert [e["actions"][0] for e in sort_authority_set(entries)] == ["z", "a", "b"]
