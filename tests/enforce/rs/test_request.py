"""Extractors and the strict body parser of missionbound.enforce.rs.request."""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from missionbound.enforce.rs.request import (
    MAX_JSON_DEPTH,
    MISSING,
    Extractor,
    RequestFacts,
    header,
    json_field,
    money,
    parse_json_body,
    path_param,
    query_param,
)
from missionbound.mission.errors import InvalidRequest


def facts(body: Any = MISSING, *, path_params: dict[str, Any] | None = None,
          query: dict[str, str] | None = None,
          headers: dict[str, str] | None = None) -> RequestFacts:
    return RequestFacts(method="POST", path="/journal-entries", path_params=path_params or {},
                        query=query or {}, headers=headers or {}, json_body=body)


BODY = {
    "invoice_id": "inv-acme-1",
    "amount": "120.00",
    "payee": {"vendor": "acme", "address": {"country": "US"}},
    "lines": [{"amount": "100.00"}, {"amount": "20.00"}],
    "note": None,
    "rate": 1.5,
    "count": 3,
}


# ---------------------------------------------------------------- json_field


@pytest.mark.parametrize(
    "path, expected",
    [
        (("invoice_id",), "inv-acme-1"),
        (("payee", "vendor"), "acme"),
        (("payee", "address", "country"), "US"),
        (("lines", 0, "amount"), "100.00"),
        (("lines", 1, "amount"), "20.00"),
        # Values of the wrong shape come back as they are, for the evaluator to refuse.
        (("payee",), {"vendor": "acme", "address": {"country": "US"}}),
        (("lines",), [{"amount": "100.00"}, {"amount": "20.00"}]),
        (("note",), None),
        (("rate",), 1.5),
        (("count",), 3),
    ],
)
def test_json_field_reads_members_nested_members_and_array_items(
        path: tuple[str | int, ...], expected: Any) -> None:
    assert json_field(*path).read(facts(BODY)) == expected


@pytest.mark.parametrize(
    "path",
    [
        ("absent",),
        ("payee", "absent"),
        ("lines", 2, "amount"),          # index past the end
        ("lines", "0", "amount"),        # a string never indexes an array
        ("payee", 0),                    # an integer never names a member
        ("invoice_id", "x"),             # through a string
        ("note", "x"),                   # through null
        ("count", 0),                    # through a number
        ("lines", 0, "amount", "more"),  # past a leaf
    ],
)
def test_json_field_is_missing_when_the_path_leads_nowhere(path: tuple[str | int, ...]) -> None:
    assert json_field(*path).read(facts(BODY)) is MISSING


def test_json_field_null_member_is_a_value_not_missing() -> None:
    assert json_field("note").read(facts(BODY)) is None


def test_json_field_without_a_body_or_with_an_array_body() -> None:
    assert json_field("amount").read(facts()) is MISSING
    assert json_field("amount").read(facts([{"amount": "1"}])) is MISSING
    assert json_field(0, "amount").read(facts([{"amount": "1"}])) == "1"
    assert json_field("amount").read(facts("a string body")) is MISSING


def test_json_field_describes_its_path() -> None:
    assert json_field("amount").describe() == "JSON member 'amount'"
    assert json_field("payee", "vendor").describe() == "JSON member 'payee.vendor'"
    assert json_field("lines", 0, "amount").describe() == "JSON member 'lines[0].amount'"
    assert json_field(1).describe() == "JSON member '[1]'"


@pytest.mark.parametrize("path", [(), ("a", -1), ("a", True), ("a", 1.0), ("a", None)])
def test_json_field_refuses_a_bad_path_when_built(path: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        json_field(*path)


scalars = (st.none() | st.booleans() | st.integers() | st.text()
           | st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner,
                                                                 max_size=4),
    max_leaves=20,
)
steps = st.lists(st.one_of(st.text(max_size=3), st.integers(min_value=0, max_value=4)),
                 min_size=1, max_size=4)


def parts(value: Any) -> list[Any]:
    """``value`` and everything inside it."""
    inside = value.values() if isinstance(value, dict) else value if isinstance(
        value, list) else []
    return [value, *(part for item in inside for part in parts(item))]


@given(body=json_values, path=steps)
def test_json_field_never_raises_and_reads_only_the_body(body: Any,
                                                         path: list[str | int]) -> None:
    value = json_field(*path).read(facts(body))
    assert value is MISSING or any(value is part for part in parts(body)[1:])


# ---------------------------------------------------------------- other parameters


def test_path_param() -> None:
    extractor = path_param("invoice_id")
    assert extractor.read(facts(path_params={"invoice_id": "inv-acme-1"})) == "inv-acme-1"
    assert extractor.read(facts(path_params={"other": "x"})) is MISSING
    # A converted path parameter (Starlette's {id:int}) comes back as it is.
    assert extractor.read(facts(path_params={"invoice_id": 7})) == 7
    assert extractor.describe() == "path parameter 'invoice_id'"
    assert extractor.needs_json_body is False


def test_query_param() -> None:
    extractor = query_param("vendor")
    assert extractor.read(facts(query={"vendor": "acme"})) == "acme"
    assert extractor.read(facts(query={"Vendor": "acme"})) is MISSING  # names are exact
    assert extractor.read(facts(BODY)) is MISSING  # never from the body
    assert extractor.describe() == "query parameter 'vendor'"
    assert extractor.needs_json_body is False


def test_header_is_read_by_lower_case_name() -> None:
    extractor = header("X-Vendor")
    assert extractor.read(facts(headers={"x-vendor": "acme"})) == "acme"
    assert extractor.read(facts(headers={"x-other": "acme"})) is MISSING
    assert extractor.describe() == "header 'x-vendor'"
    assert extractor.needs_json_body is False


def test_only_body_extractors_need_the_body() -> None:
    assert json_field("amount").needs_json_body is True
    both_outside = money(query_param("amount"), header("x-currency"))
    assert both_outside.needs_json_body is False
    assert money(query_param("amount"), json_field("currency")).needs_json_body is True
    assert money(json_field("amount"), header("x-currency")).needs_json_body is True


# ---------------------------------------------------------------- money


AMOUNT_AND_CURRENCY = money(json_field("amount"), json_field("currency"))


def test_money_reads_both_parts() -> None:
    body = {"amount": "120.00", "currency": "USD"}
    assert AMOUNT_AND_CURRENCY.read(facts(body)) == {"amount": "120.00", "currency": "USD"}


def test_money_from_different_places() -> None:
    extractor = money(query_param("amount"), header("X-Currency"))
    read = extractor.read(facts(query={"amount": "9.99"}, headers={"x-currency": "EUR"}))
    assert read == {"amount": "9.99", "currency": "EUR"}


def test_money_keeps_a_missing_part_so_the_evaluator_can_name_it() -> None:
    assert AMOUNT_AND_CURRENCY.read(facts({"amount": "1.00"})) == {
        "amount": "1.00", "currency": MISSING}
    assert AMOUNT_AND_CURRENCY.read(facts({"currency": "USD"})) == {
        "amount": MISSING, "currency": "USD"}


def test_money_is_missing_when_both_parts_are() -> None:
    assert AMOUNT_AND_CURRENCY.read(facts({"other": 1})) is MISSING
    assert AMOUNT_AND_CURRENCY.read(facts()) is MISSING


def test_money_returns_parts_of_the_wrong_shape_as_they_are() -> None:
    read = AMOUNT_AND_CURRENCY.read(facts({"amount": 120.5, "currency": ["USD"]}))
    assert read == {"amount": 120.5, "currency": ["USD"]}


def test_money_describes_both_parts() -> None:
    assert AMOUNT_AND_CURRENCY.describe() == (
        "the amount (JSON member 'amount') and currency (JSON member 'currency')")


def test_every_extractor_meets_the_protocol() -> None:
    extractors: list[Extractor] = [json_field("a"), path_param("a"), query_param("a"),
                                   header("a"), AMOUNT_AND_CURRENCY]
    for extractor in extractors:
        assert extractor.read(facts()) is MISSING
        assert isinstance(extractor.describe(), str)


# ---------------------------------------------------------------- MISSING and RequestFacts


def test_missing_stays_itself_through_copies() -> None:
    assert copy.deepcopy(MISSING) is MISSING
    assert pickle.loads(pickle.dumps(MISSING)) is MISSING
    assert copy.deepcopy(facts()).json_body is MISSING
    assert repr(MISSING) == "MISSING"


def test_request_facts_body_defaults_to_missing() -> None:
    assert RequestFacts(method="GET", path="/").json_body is MISSING


# ---------------------------------------------------------------- parse_json_body


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b'{"amount": "500.00", "currency": "USD"}', {"amount": "500.00", "currency": "USD"}),
        (b'[1, 2, {"a": null}]', [1, 2, {"a": None}]),
        (b'{"rate": 1.25, "big": 9007199254740991}', {"rate": 1.25, "big": 9007199254740991}),
        ('{"vendor": "caf\u00e9"}'.encode(), {"vendor": "caf\u00e9"}),
        (b'{"pair": "\\ud83d\\ude00"}', {"pair": "\U0001f600"}),  # a valid surrogate pair
        (b' \n{"a": {}}\n ', {"a": {}}),
        (b"{}", {}),
    ],
)
def test_parse_json_body_reads_objects_and_arrays(raw: bytes, expected: Any) -> None:
    assert parse_json_body(raw) == expected


def test_parse_json_body_of_an_empty_body_is_missing() -> None:
    assert parse_json_body(b"") is MISSING


def nested(depth: int) -> bytes:
    """A JSON array whose innermost value is at ``depth``."""
    return b"[" * depth + b"1" + b"]" * depth


def test_parse_json_body_depth_limit_is_exact() -> None:
    assert parse_json_body(nested(MAX_JSON_DEPTH)) is not MISSING
    with pytest.raises(InvalidRequest, match="nested deeper than 32 levels"):
        parse_json_body(nested(MAX_JSON_DEPTH + 1))


@pytest.mark.parametrize(
    "raw, words",
    [
        (b'{"amount": "1", "amount": "2"}', "duplicate member name 'amount'"),
        (b'{"a": [{"b": 1, "b": 1}]}', "duplicate member name 'b'"),
        (b'{"amount": NaN}', "non-finite number NaN is not JSON"),
        (b'[Infinity]', "non-finite number Infinity is not JSON"),
        (b'[-Infinity]', "non-finite number -Infinity is not JSON"),
        (b'{"vendor": "\xff"}', "not valid UTF-8"),
        (b"\xef\xbb\xbf{}", "not valid JSON"),  # a byte order mark
        (b"amount=5", "not valid JSON"),
        (b'{"a": 1,}', "not valid JSON"),
        (b'{"a": 1} {"b": 2}', "not valid JSON"),
        (b" ", "not valid JSON"),
        (b'"a string"', "must be a JSON object or array"),
        (b"42", "must be a JSON object or array"),
        (b"null", "must be a JSON object or array"),
        (b'["\\ud800"]', "lone surrogate"),
        (b"[12345678901234567]", "integer outside the I-JSON range"),
        (b"[" + b"9" * 5000 + b"]", "integer outside the I-JSON range"),
        (b"[9007199254740993]", "integer outside the I-JSON range"),
        (nested(100), "nested deeper than 32 levels"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_parse_json_body_refusals_name_the_problem(raw: bytes, words: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_json_body(raw)
    # The shared strict parser (mission/canonical.py) words it; the refusal reaches the
    # client as the error_description of a 400 invalid_request.
    assert words in refused.value.description
    assert refused.value.error == "invalid_request"


@given(json_values)
def test_parse_json_body_reads_what_json_writes(value: Any) -> None:
    body = {"v": value}
    raw = json.dumps(body).encode()
    try:
        parsed = parse_json_body(raw)
    except InvalidRequest as refused:
        # Only the I-JSON limits may refuse what the json module writes.
        assert "I-JSON" in refused.description or "lone surrogate" in refused.description
    else:
        assert parsed == body
