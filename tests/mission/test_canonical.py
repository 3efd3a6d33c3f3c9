"""Strict JSON intake and RFC 8785 canonical form (vectors from RFC 8785 itself)."""

from __future__ import annotations

import json
import struct

import pytest

from missionbound.mission.canonical import canonicalize, digest_bytes, digest_json, parse_strict
from missionbound.mission.errors import InvalidRequest


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('{"goal":"a","goal":"b"}', "duplicate member name 'goal'"),
        ('{"a":{"b":[{"c":1,"c":1}]}}', "duplicate member name 'c'"),
        ('{"a":1.0}', "not an integer"),
        ('{"a":1e3}', "not an integer"),
        ('{"a":NaN}', "non-finite"),
        ('{"a":-Infinity}', "non-finite"),
        ('"\\ud800"', "lone surrogate"),
        ('{"\\udfff":1}', "lone surrogate"),
        ('{"a":9007199254740993}', "I-JSON"),
        ('{"a":', "not valid JSON"),
        ("", "not valid JSON"),
    ],
)
def test_strict_parser_refuses(text: str, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_strict(text, max_size=1000)
    assert fragment in caught.value.description
    assert caught.value.error == "invalid_request"


def test_strict_parser_refuses_oversize_by_octets_not_characters() -> None:
    text = json.dumps({"goal": "é" * 10}, ensure_ascii=False)  # 10 characters, 20 octets
    assert parse_strict(text, max_size=len(text.encode())) == {"goal": "é" * 10}
    with pytest.raises(InvalidRequest, match="octets; the limit is"):
        parse_strict(text, max_size=len(text.encode()) - 1)


def test_huge_integers_are_refused_before_conversion() -> None:
    with pytest.raises(InvalidRequest, match="I-JSON"):
        parse_strict('{"a":' + "9" * 5000 + "}", max_size=16384)
    with pytest.raises(InvalidRequest, match="I-JSON"):
        parse_strict('[-' + "1" * 17 + "]", max_size=100)
    assert parse_strict("[-9007199254740991]", max_size=100) == [-(2**53) + 1]


def test_strict_parser_refuses_invalid_utf8_and_deep_nesting() -> None:
    with pytest.raises(InvalidRequest, match="UTF-8"):
        parse_strict(b'{"a":"\xff"}', max_size=100)
    with pytest.raises(InvalidRequest, match="nested"):
        parse_strict("[" * 20 + "]" * 20, max_size=100, max_depth=8)


def test_strict_parser_accepts_plain_json() -> None:
    value = parse_strict('{"b":[1,true,null,"x"],"a":{"c":-5}}', max_size=100)
    assert value == {"b": [1, True, None, "x"], "a": {"c": -5}}


def test_rfc8785_section_3_2_2_example() -> None:
    text = (
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonicalize(json.loads(text)) == expected.encode("utf-8")


def test_rfc8785_section_3_2_3_utf16_key_order() -> None:
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    order = list(json.loads(canonicalize(value)).values())
    assert order == [
        "Carriage Return", "One", "Control", "Latin Small Letter O With Diaeresis",
        "Euro Sign", "Emoji: Grinning Face", "Hebrew Letter Dalet With Dagesh",
    ]


# RFC 8785 Appendix B: IEEE-754 bit patterns and their JCS serialization.
APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize("bits, expected", APPENDIX_B)
def test_rfc8785_appendix_b_numbers(bits: str, expected: str) -> None:
    (number,) = struct.unpack(">d", bytes.fromhex(bits))
    assert canonicalize(number) == expected.encode()


@pytest.mark.parametrize("bits", ["7fffffffffffffff", "7ff0000000000000"])
def test_rfc8785_appendix_b_non_finite_refused(bits: str) -> None:
    (number,) = struct.unpack(">d", bytes.fromhex(bits))
    with pytest.raises(InvalidRequest):
        canonicalize(number)


def test_digest_format() -> None:
    # SHA-256 of the empty string, base64url without padding.
    assert digest_bytes(b"") == "sha-256:47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
    assert digest_json({"b": 1, "a": 2}) == digest_json({"a": 2, "b": 1})
    assert len(digest_json([]).removeprefix("sha-256:")) == 43
