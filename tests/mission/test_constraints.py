"""Common Constraints (PROFILE.md section 6): each key's validation and subset comparison."""

from __future__ import annotations

from typing import Any

import pytest

from missionbound.mission.constraints import (
    ConstraintRegistry,
    constraints_no_broader,
    duration_seconds,
)
from missionbound.mission.errors import InvalidAuthorizationDetails

REG = ConstraintRegistry(frozenset({"vendors", "recipients"}),
                         ("urn:acr:pwd", "urn:acr:mfa"))


def usd(amount: str, currency: str = "USD") -> dict[str, str]:
    return {"amount": amount, "currency": currency}


@pytest.mark.parametrize(
    "key, candidate, reference, expected",
    [
        ("max_value", usd("500.00"), usd("500"), True),
        ("max_value", usd("499.999"), usd("500"), True),
        ("max_value", usd("500.01"), usd("500"), False),
        ("max_value", usd("1", "EUR"), usd("500"), False),  # currencies never compare
        ("max_total_value", usd("100"), usd("1000"), True),
        ("max_calls", 3, 5, True),
        ("max_calls", 6, 5, False),
        ("max_derivations", 5, 5, True),
        ("max_duration", "PT8H", "P1D", True),
        ("max_duration", "P1W", "P6D", False),
        ("max_duration", "PT90M", "PT1H30M", True),
        ("data_classification", ["public"], ["public", "internal"], True),
        ("data_classification", ["secret"], ["public"], False),
        ("geo", ["US"], ["US", "CA"], True),
        ("geo", ["FR"], ["US"], False),
        ("vendors", ["acme"], ["acme", "globex"], True),
        ("vendors", ["acme", "initech"], ["acme"], False),
        ("aal", {"value": "urn:acr:mfa"}, {"value": "urn:acr:pwd"}, True),
        ("aal", {"value": "urn:acr:pwd"}, {"value": "urn:acr:mfa"}, False),
        ("aal", {"value": "urn:acr:mfa", "freshness_seconds": 60},
         {"value": "urn:acr:mfa", "freshness_seconds": 300}, True),
        ("aal", {"value": "urn:acr:mfa"}, {"value": "urn:acr:mfa", "freshness_seconds": 300},
         False),
        ("aal", {"value": "urn:other"}, {"value": "urn:acr:pwd"}, False),  # not in the order
        ("unknown_key", 1, 1, False),  # fail closed
    ],
)
def test_no_broader(key: str, candidate: Any, reference: Any, expected: bool) -> None:
    assert REG.no_broader(key, candidate, reference) is expected


@pytest.mark.parametrize(
    "key, value",
    [
        ("max_value", {"amount": "500.00"}),
        ("max_value", usd("5e2")),
        ("max_value", usd("-1")),
        ("max_value", usd("01.5")),
        ("max_value", {"amount": "1", "currency": "USD", "extra": 1}),
        ("max_calls", 0),
        ("max_calls", True),
        ("max_duration", "P1Y"),
        ("max_duration", "PT0S"),
        ("max_duration", "P"),
        ("max_duration", "PT"),
        ("geo", ["us"]),
        ("vendors", ["acme", "acme"]),
        ("vendors", "acme"),
        ("aal", {"value": ""}),
        ("aal", {"value": "x", "freshness_seconds": -1}),
        ("aal", {"value": "urn:not-in-the-declared-order"}),
        ("nonsense", 1),
    ],
)
def test_validation_refuses(key: str, value: Any) -> None:
    with pytest.raises(InvalidAuthorizationDetails) as caught:
        REG.validate(key, value, where="entry")
    assert caught.value.description.startswith("entry: ")


def test_durations() -> None:
    assert duration_seconds("P1W") == 604800
    assert duration_seconds("P1DT2H3M4S") == 93784
    with pytest.raises(ValueError):
        duration_seconds("PT1.5H")


def test_narrower_meets_or_refuses() -> None:
    assert REG.narrower("max_value", usd("700"), usd("500")) == usd("500")
    assert REG.narrower("max_value", usd("700", "EUR"), usd("500")) is None
    assert REG.narrower("vendors", ["a", "b"], ["b", "c"]) == ["b"]
    assert REG.narrower("vendors", ["a"], ["c"]) == []
    assert REG.narrower("aal", {"value": "urn:x"}, {"value": "urn:y"}) is None


def test_dropped_key_fails_and_added_key_must_be_known() -> None:
    reference = {"max_value": usd("500")}
    assert constraints_no_broader(REG, {"max_value": usd("100")}, reference)
    assert not constraints_no_broader(REG, {}, reference)
    assert constraints_no_broader(REG, {"max_value": usd("1"), "vendors": ["a"]}, reference)
    assert not constraints_no_broader(REG, {"max_value": usd("1"), "mystery": 1}, reference)
    # a key only the candidate has must still hold a valid value
    assert not constraints_no_broader(REG, {"max_value": usd("1"), "vendors": 5}, reference)
    assert not constraints_no_broader(REG, {"max_value": usd("1"), "vendors": []}, reference)


def test_aal_without_a_declared_order_compares_by_equality() -> None:
    unordered = ConstraintRegistry(frozenset())
    unordered.validate("aal", {"value": "urn:anything"}, where="entry")
    assert unordered.no_broader("aal", {"value": "urn:a"}, {"value": "urn:a"})
    assert not unordered.no_broader("aal", {"value": "urn:a"}, {"value": "urn:b"})


def test_allow_list_key_may_not_shadow_a_common_constraint() -> None:
    with pytest.raises(ValueError):
        ConstraintRegistry(frozenset({"max_value"}))
