"""check_constraints: each Common Constraint an RS-B Resource Server evaluates, and the fail-closed
refusal of everything it cannot (PROFILE.md sections 4 and 6)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, NamedTuple

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from missionbound.enforce.rs.constraints import (
    CONSTRAINT_EXCEEDED,
    CONSTRAINT_UNEVALUABLE,
    CONSTRAINT_UNKNOWN,
    PARAMETER_INVALID,
    REASONS,
    ConstraintRefusal,
    check_constraints,
)
from missionbound.enforce.rs.request import (
    MISSING,
    Extractor,
    RequestFacts,
    header,
    json_field,
    money,
    path_param,
    query_param,
)
from missionbound.mission.constraints import DECIMAL
from missionbound.mission.errors import MAX_DESCRIPTION

EXCEEDED, UNKNOWN, UNEVALUABLE, INVALID = (
    CONSTRAINT_EXCEEDED, CONSTRAINT_UNKNOWN, CONSTRAINT_UNEVALUABLE, PARAMETER_INVALID)

MONEY = money(json_field("amount"), json_field("currency"))
BINDINGS: dict[str, Extractor] = {
    "max_value": MONEY,
    "vendors": json_field("payee", "vendor"),
    "recipients": path_param("recipient"),
    "geo": header("X-Country"),
    # Bound by the route, yet never evaluable by a stateless Resource Server.
    "max_calls": query_param("n"),
    "max_total_value": MONEY,
    "max_duration": query_param("d"),
    "aal": header("x-acr"),
    "max_derivations": query_param("n"),
}


def usd(amount: str, currency: str = "USD") -> dict[str, str]:
    return {"amount": amount, "currency": currency}


def body(amount: Any = MISSING, currency: Any = "USD", vendor: Any = "acme") -> dict[str, Any]:
    out: dict[str, Any] = {"invoice_id": "inv-acme-1", "payee": {"vendor": vendor}}
    if amount is not MISSING:
        out["amount"] = amount
    if currency is not MISSING:
        out["currency"] = currency
    if vendor is MISSING:
        del out["payee"]
    return out


def request(json_body: Any = MISSING, *, headers: dict[str, str] | None = None,
            path_params: dict[str, Any] | None = None) -> RequestFacts:
    return RequestFacts(method="POST", path="/journal-entries",
                        path_params=path_params or {"recipient": "ap@acme.example"},
                        query={"n": "1", "d": "PT1H"},
                        headers={"x-country": "US", **(headers or {})}, json_body=json_body)


class Case(NamedTuple):
    constraints: Any
    facts: RequestFacts
    reason: str | None  # None: allowed
    key: str = ""
    words: str = ""  # a part of the description
    labels: tuple[str, ...] = ("internal",)
    bindings: dict[str, Extractor] = BINDINGS


CASES: dict[str, Case] = {
    # ------------------------------------------------ no constraints
    "no constraints member": Case(MISSING, request(), None),
    "empty constraints": Case({}, request(), None),
    "constraints null": Case(None, request(), UNEVALUABLE, "constraints", "not a JSON object"),
    "constraints an array": Case([], request(), UNEVALUABLE, "constraints", "not a JSON object"),
    # ------------------------------------------------ max_value: below, at, above
    "max_value below": Case({"max_value": usd("500.00")}, request(body("499.99")), None),
    "max_value at": Case({"max_value": usd("500.00")}, request(body("500.00")), None),
    "max_value at, other scale": Case({"max_value": usd("500.00")}, request(body("500")), None),
    "max_value at, longer scale": Case(
        {"max_value": usd("500")}, request(body("500.000000000000000000")), None),
    "max_value zero": Case({"max_value": usd("500.00")}, request(body("0")), None),
    "max_value above": Case(
        {"max_value": usd("500.00")}, request(body("600.00")), EXCEEDED, "max_value",
        "amount 600.00 USD exceeds the Mission's max_value 500.00 USD for this action"),
    "max_value above by the least": Case(
        {"max_value": usd("500.00")}, request(body("500.000000000000000001")), EXCEEDED,
        "max_value", "exceeds"),
    # A float comparison would call these equal; a string comparison would allow 1000.
    "max_value above, beyond float precision": Case(
        {"max_value": usd("0.1")}, request(body("0.100000000000000001")), EXCEEDED, "max_value"),
    "max_value above, more digits": Case(
        {"max_value": usd("500.00")}, request(body("1000.00")), EXCEEDED, "max_value"),
    "max_value above, big integers": Case(
        {"max_value": usd("9007199254740993")}, request(body("9007199254740993.01")), EXCEEDED,
        "max_value"),
    "max_value wrong currency": Case(
        {"max_value": usd("500.00")}, request(body("1.00", "EUR")), EXCEEDED, "max_value",
        "amount 1.00 EUR is not in the currency of the Mission's max_value 500.00 USD"),
    "max_value bound in EUR, request in USD": Case(
        {"max_value": usd("500.00", "EUR")}, request(body("1.00", "USD")), EXCEEDED,
        "max_value", "no currency conversion"),
    # ------------------------------------------------ max_value: the request parameter
    "max_value no body": Case(
        {"max_value": usd("500.00")}, request(), INVALID, "max_value",
        "the request does not carry the amount (JSON member 'amount') and currency "
        "(JSON member 'currency'), which max_value 500.00 USD bounds"),
    "max_value amount missing": Case(
        {"max_value": usd("500.00")}, request(body()), INVALID, "max_value",
        "the amount is missing"),
    "max_value currency missing": Case(
        {"max_value": usd("500.00")}, request(body("1.00", MISSING)), INVALID, "max_value",
        "the currency is missing"),
    "max_value amount a number": Case(
        {"max_value": usd("500.00")}, request(body(100)), INVALID, "max_value",
        "decimals travel as strings"),
    "max_value amount a float": Case(
        {"max_value": usd("500.00")}, request(body(99.5)), INVALID, "max_value",
        "must be a decimal string such as 500.00, not a number"),
    "max_value amount null": Case(
        {"max_value": usd("500.00")}, request(body(None)), INVALID, "max_value", "not null"),
    "max_value amount with exponent": Case(
        {"max_value": usd("500.00")}, request(body("1e2")), INVALID, "max_value",
        "the amount 1e2 is not a decimal string"),
    "max_value amount negative": Case(
        {"max_value": usd("500.00")}, request(body("-600.00")), INVALID, "max_value",
        "not a decimal string"),
    "max_value amount leading zero": Case(
        {"max_value": usd("500.00")}, request(body("0500.00")), INVALID, "max_value"),
    "max_value amount with spaces": Case(
        {"max_value": usd("500.00")}, request(body(" 1.00")), INVALID, "max_value"),
    "max_value amount NaN text": Case(
        {"max_value": usd("500.00")}, request(body("NaN")), INVALID, "max_value"),
    "max_value currency lower case": Case(
        {"max_value": usd("500.00")}, request(body("1.00", "usd")), INVALID, "max_value",
        "ISO 4217 code such as USD"),
    "max_value currency a number": Case(
        {"max_value": usd("500.00")}, request(body("1.00", 840)), INVALID, "max_value"),
    "max_value bound to a plain member": Case(
        {"max_value": usd("500.00")}, request(body("1.00")), INVALID, "max_value",
        "JSON member 'amount' must be an amount and a currency, not a string",
        bindings={"max_value": json_field("amount")}),
    "max_value bound to a money object, below": Case(
        {"max_value": usd("500.00")}, request({"total": usd("10.00")}), None,
        bindings={"max_value": json_field("total")}),
    "max_value bound to a money object, above": Case(
        {"max_value": usd("500.00")}, request({"total": usd("510.00")}), EXCEEDED, "max_value",
        bindings={"max_value": json_field("total")}),
    "max_value bound to a money object, missing amount": Case(
        {"max_value": usd("500.00")}, request({"total": {"currency": "USD"}}), INVALID,
        "max_value", "JSON member 'total': the amount is missing",
        bindings={"max_value": json_field("total")}),
    "max_value from query and header": Case(
        {"max_value": usd("5")}, RequestFacts(method="GET", path="/", query={"amount": "6"},
                                              headers={"x-currency": "USD"}),
        EXCEEDED, "max_value",
        bindings={"max_value": money(query_param("amount"), header("x-currency"))}),
    # ------------------------------------------------ max_value: the route and the token
    "max_value not bound by the route": Case(
        {"max_value": usd("500.00")}, request(body("1.00")), UNEVALUABLE, "max_value",
        "bounded by max_value 500.00 USD, but this resource binds no request parameter",
        bindings={}),
    "max_value bound with a float amount": Case(
        {"max_value": {"amount": 500.0, "currency": "USD"}}, request(body("1.00")), UNEVALUABLE,
        "max_value", "malformed"),
    "max_value bound with an integer amount": Case(
        {"max_value": {"amount": 500, "currency": "USD"}}, request(body("1.00")), UNEVALUABLE,
        "max_value", "malformed"),
    "max_value bound without currency": Case(
        {"max_value": {"amount": "500.00"}}, request(body("1.00")), UNEVALUABLE, "max_value"),
    "max_value bound with an extra member": Case(
        {"max_value": {**usd("500.00"), "per": "day"}}, request(body("1.00")), UNEVALUABLE,
        "max_value"),
    "max_value bound with a bad currency": Case(
        {"max_value": usd("500.00", "usd")}, request(body("1.00")), UNEVALUABLE, "max_value"),
    "max_value bound as text": Case(
        {"max_value": "500.00 USD"}, request(body("1.00")), UNEVALUABLE, "max_value"),
    "max_value bound with an exponent": Case(
        {"max_value": usd("5E2")}, request(body("1.00")), UNEVALUABLE, "max_value"),
    # ------------------------------------------------ allow-lists
    "vendors in the list": Case({"vendors": ["acme", "globex"]}, request(body()), None),
    "vendors the only one": Case({"vendors": ["acme"]}, request(body()), None),
    "vendors not in the list": Case(
        {"vendors": ["globex"]}, request(body(vendor="initech")), EXCEEDED, "vendors",
        "initech (JSON member 'payee.vendor') is not in the Mission's vendors allow-list"),
    "vendors differs in case": Case(
        {"vendors": ["acme"]}, request(body(vendor="ACME")), EXCEEDED, "vendors"),
    "vendors missing": Case(
        {"vendors": ["acme"]}, request(body(vendor=MISSING)), INVALID, "vendors",
        "the request does not carry JSON member 'payee.vendor'"),
    "vendors a number": Case(
        {"vendors": ["acme"]}, request(body(vendor=7)), INVALID, "vendors",
        "must be a string, not a number"),
    "vendors null": Case({"vendors": ["acme"]}, request(body(vendor=None)), INVALID, "vendors"),
    "vendors an array holding an allowed one": Case(
        {"vendors": ["acme"]}, request(body(vendor=["acme"])), INVALID, "vendors",
        "not an array"),
    "recipients from a path parameter": Case(
        {"recipients": ["ap@acme.example"]}, request(), None),
    "recipients from a path parameter, outside": Case(
        {"recipients": ["ap@acme.example"]},
        request(path_params={"recipient": "ceo@evil.example"}), EXCEEDED, "recipients",
        "path parameter 'recipient'"),
    "allow-list not bound by the route": Case(
        {"vendors": ["acme"]}, request(body()), UNKNOWN, "vendors",
        "a constraint vendors that this resource does not know", bindings={}),
    "allow-list bound as text": Case(
        {"vendors": "acme"}, request(body()), UNEVALUABLE, "vendors", "malformed"),
    "allow-list empty": Case({"vendors": []}, request(body()), UNEVALUABLE, "vendors"),
    "allow-list of numbers": Case({"vendors": [1]}, request(body()), UNEVALUABLE, "vendors"),
    "allow-list with a repeat": Case(
        {"vendors": ["acme", "acme"]}, request(body()), UNEVALUABLE, "vendors"),
    # ------------------------------------------------ data_classification
    "data_classification within": Case(
        {"data_classification": ["internal", "public"]}, request(), None),
    "data_classification all labels within": Case(
        {"data_classification": ["internal", "public"]}, request(), None,
        labels=("public", "internal")),
    "data_classification outside": Case(
        {"data_classification": ["public"]}, request(), EXCEEDED, "data_classification",
        "this resource is labelled internal, outside the Mission's data_classification"),
    "data_classification one label outside": Case(
        {"data_classification": ["internal"]}, request(), EXCEEDED, "data_classification",
        "labelled confidential,", labels=("internal", "confidential")),
    "data_classification without labels": Case(
        {"data_classification": ["internal"]}, request(), UNEVALUABLE, "data_classification",
        "declares no data classification labels", labels=()),
    "data_classification malformed": Case(
        {"data_classification": "internal"}, request(), UNEVALUABLE, "data_classification"),
    # ------------------------------------------------ geo
    "geo within": Case({"geo": ["CA", "US"]}, request(), None),
    "geo outside": Case(
        {"geo": ["FR"]}, request(), EXCEEDED, "geo",
        "country US (header 'x-country') is outside the Mission's geo"),
    "geo lower case": Case(
        {"geo": ["US"]}, request(headers={"x-country": "us"}), INVALID, "geo",
        "ISO 3166 alpha-2 country code"),
    "geo three letters": Case(
        {"geo": ["US"]}, request(headers={"x-country": "USA"}), INVALID, "geo"),
    "geo missing": Case(
        {"geo": ["US"]}, RequestFacts(method="GET", path="/"), INVALID, "geo",
        "does not carry header 'x-country'"),
    "geo not bound by the route": Case(
        {"geo": ["US"]}, request(), UNEVALUABLE, "geo", "binds no request parameter to geo",
        bindings={}),
    "geo malformed bound": Case({"geo": ["usa"]}, request(), UNEVALUABLE, "geo", "malformed"),
    # ------------------------------------------------ known but not evaluable here
    "max_calls": Case({"max_calls": 5}, request(), UNEVALUABLE, "max_calls", "metered"),
    "max_total_value": Case(
        {"max_total_value": usd("1000")}, request(body("1.00")), UNEVALUABLE, "max_total_value",
        "metered"),
    "max_duration": Case({"max_duration": "PT8H"}, request(), UNEVALUABLE, "max_duration",
                         "metered"),
    "aal": Case({"aal": {"value": "urn:acr:mfa"}}, request(), UNEVALUABLE, "aal", "step-up"),
    "max_derivations": Case({"max_derivations": 3}, request(), UNEVALUABLE, "max_derivations",
                            "the Mission as a whole"),
    "max_calls unbound": Case({"max_calls": 5}, request(), UNEVALUABLE, "max_calls",
                              bindings={}),
    # ------------------------------------------------ unknown
    "unknown key": Case({"frobnicate": 1}, request(), UNKNOWN, "frobnicate",
                        "does not know; refused (fail closed)"),
    # ------------------------------------------------ several keys: sorted, first refusal
    "several keys, all allow": Case(
        {"vendors": ["acme"], "max_value": usd("500.00"), "geo": ["US"],
         "data_classification": ["internal"]}, request(body("10.00")), None),
    "several keys, two refuse, the first sorted wins": Case(
        {"vendors": ["globex"], "max_value": usd("500.00")}, request(body("600.00")), EXCEEDED,
        "max_value"),
    "several keys, first passes, second refuses": Case(
        {"vendors": ["globex"], "max_value": usd("500.00")}, request(body("10.00")), EXCEEDED,
        "vendors"),
    "several keys, unevaluable sorts first": Case(
        {"max_value": usd("500.00"), "aal": {"value": "x"}}, request(body("600.00")),
        UNEVALUABLE, "aal"),
    "several keys, unknown after an allowed one": Case(
        {"zzz": 1, "max_value": usd("500.00")}, request(body("1.00")), UNKNOWN, "zzz"),
    "several keys, invalid parameter before exceeded": Case(
        {"vendors": ["acme"], "geo": ["FR"]}, request(body(vendor=3)), EXCEEDED, "geo"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_check_constraints(case: Case) -> None:
    entry: dict[str, Any] = {"type": "mission_resource_access", "resource": "https://erp",
                             "actions": ["journal-entries.write"]}
    if case.constraints is not MISSING:
        entry["constraints"] = case.constraints
    refusal = check_constraints(entry, bindings=case.bindings, facts=case.facts,
                                labels=case.labels)
    if case.reason is None:
        assert refusal is None
        return
    assert refusal is not None
    assert (refusal.reason, refusal.key) == (case.reason, case.key), refusal.description
    assert case.words in refusal.description
    # Fit for error_description as it is: no double quotes to rewrite, well under the limit.
    assert '"' not in refusal.description
    assert len(refusal.description) < MAX_DESCRIPTION


def test_every_reason_is_exercised() -> None:
    assert {case.reason for case in CASES.values()} - {None} == REASONS


def test_the_first_refusal_does_not_depend_on_member_order() -> None:
    forward = {"vendors": ["globex"], "max_value": usd("500.00"), "geo": ["FR"]}
    backward = dict(reversed(forward.items()))
    facts = request(body("600.00", vendor="initech"))
    answers = [check_constraints({"constraints": c}, bindings=BINDINGS, facts=facts,
                                 labels=()) for c in (forward, backward)]
    assert answers[0] == answers[1]
    assert isinstance(answers[0], ConstraintRefusal)
    assert (answers[0].reason, answers[0].key) == (EXCEEDED, "geo")


def test_request_values_are_shortened_in_descriptions() -> None:
    long_vendor = "v" * 5000
    refusal = check_constraints({"constraints": {"vendors": ["acme"]}}, bindings=BINDINGS,
                                facts=request(body(vendor=long_vendor)), labels=())
    assert refusal is not None and refusal.reason == EXCEEDED
    assert long_vendor not in refusal.description
    assert "v" * 64 + "..." in refusal.description


def test_the_entry_is_not_changed() -> None:
    constraints = {"max_value": usd("500.00"), "vendors": ["acme"]}
    entry = {"constraints": constraints}
    check_constraints(entry, bindings=BINDINGS, facts=request(body("1.00")), labels=())
    assert entry == {"constraints": {"max_value": usd("500.00"), "vendors": ["acme"]}}


# ---------------------------------------------------------------- max_value, as a property

decimal_strings = st.from_regex(DECIMAL, fullmatch=True)
currencies = st.sampled_from(["USD", "EUR"])


@st.composite
def amount_near(draw: st.DrawFn, cap: str) -> str:
    """A decimal string equal to ``cap`` written differently, or a step either side of it."""
    value = Decimal(cap)
    choice = draw(st.sampled_from(["same", "zeros", "up", "down"]))
    if choice == "zeros":
        text = cap + ("0" * draw(st.integers(1, 3)) if "." in cap else ".00")
        return text if DECIMAL.fullmatch(text) else cap
    if choice in ("up", "down"):
        step = Decimal(1).scaleb(-draw(st.integers(0, 18)))
        value = value + step if choice == "up" else value - step
        if value < 0:
            return cap
        text = format(value, "f")
        return text if DECIMAL.fullmatch(text) else cap
    return cap


@st.composite
def money_pairs(draw: st.DrawFn) -> tuple[str, str, str, str]:
    cap = draw(decimal_strings)
    amount = draw(st.one_of(decimal_strings, amount_near(cap)))
    return amount, draw(currencies), cap, draw(currencies)


@given(money_pairs())
@example(("500.01", "USD", "500.00", "USD"))
@example(("500.00", "USD", "500", "USD"))
@example(("0.100000000000000001", "USD", "0.1", "USD"))
@example(("1000", "USD", "999.999999999999999999", "USD"))
@example(("1", "EUR", "500", "USD"))
def test_max_value_allows_exactly_within_the_cap_in_the_same_currency(
        pair: tuple[str, str, str, str]) -> None:
    amount, currency, cap, cap_currency = pair
    refusal = check_constraints(
        {"constraints": {"max_value": usd(cap, cap_currency)}}, bindings=BINDINGS,
        facts=request({"amount": amount, "currency": currency}), labels=())
    allowed = currency == cap_currency and Decimal(amount) <= Decimal(cap)
    if allowed:
        assert refusal is None
    else:
        assert refusal is not None
        assert (refusal.reason, refusal.key) == (EXCEEDED, "max_value")
